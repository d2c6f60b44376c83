//! `palisade check`: load a config and its plugins the way `serve` would, then exit, so a
//! deploy can refuse a bad config before it replaces a running gateway (as `nginx -t` does).
//! Loading compiles every plugin into `plugin_host.cache_dir`, which is also how `make dist`
//! ships the compiled cache beside the plugins: the first start loads instead of compiling.

use std::path::Path;
use std::sync::Arc;

use super::CliError;
use crate::plugins::{HostServices, Overrides, Policy};

/// Load `config` and its chain; print what loaded. The store is not opened.
pub async fn run(config: &Path) -> Result<(), CliError> {
    let policy = Policy::start(
        config,
        Arc::new(HostServices::default()),
        Overrides::default(),
    )
    .await
    .map_err(|e| CliError::Invalid(format!("{}: {e}", config.display())))?;
    let rt = policy.current();
    println!("ok: {} loads", config.display());
    println!("  policy version: {}", rt.chain.version);
    for p in &rt.chain.plugins {
        println!(
            "  plugin {:<16} {} ({})",
            p.name,
            &p.sha256[..16],
            super::plugin::hook_names(p.hooks).join(", ")
        );
    }
    println!(
        "  compiled plugins cached in {}",
        rt.settings.host.cache_dir.display()
    );
    Ok(())
}
