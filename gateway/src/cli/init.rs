//! `palisade init`: a starter config (if there is none) and the first admin, straight in the
//! store, since there is no one yet to call the admin API.

use std::path::Path;

use palisade_store::{Role, Store};

use super::CliError;
use crate::core::settings::Settings;

const STARTER: &str = r#"# Palisade: see examples/palisade.toml for every setting.
database = "sqlite://palisade.db"

[server]
listen = "127.0.0.1:8080"

[upstream]
name = "openai"
base_url = "https://api.openai.com"
api_key_env = "OPENAI_API_KEY"

# [[agents]]
# id = "support-bot"
# owner = "you@example.com"
# key_sha256 = "..."   # sha256 of the key; or create agents with `palisade agents create`

# [[plugins]]
# name = "model-allow"
# path = "dist/plugins/model-allow.wasm"
# [plugins.config]
# default = ["gpt-4o-mini"]
"#;

pub async fn run(config: &Path, admin: &str) -> Result<(), CliError> {
    if !config.exists() {
        std::fs::write(config, STARTER)?;
        eprintln!("wrote {}", config.display());
    }
    let settings = match Settings::load(config) {
        Ok(s) => s,
        // The starter names a provider key that may not be set yet; the store is all init needs.
        Err(crate::core::settings::ConfigError::Invalid { .. }) => {
            let text = std::fs::read_to_string(config)?;
            let text = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("api_key_env"))
                .collect::<Vec<_>>()
                .join("\n");
            Settings::from_toml(config, &text)?
        }
        Err(e) => return Err(e.into()),
    };
    let store = Store::connect(&settings.database).await?;
    if store.find_user(admin).await?.is_some() {
        return Err(CliError::Invalid(format!(
            "user {admin:?} exists already; create more tokens with `palisade users token`"
        )));
    }
    let user = store.create_user(admin, "", &[Role::Admin]).await?;
    let token = store.create_user_token(&user.id).await?;
    println!("{}", token.secret);
    eprintln!(
        "Created admin {admin:?} in {}. The token above is shown once: export PALISADE_TOKEN=<it>.",
        settings.database
    );
    Ok(())
}
