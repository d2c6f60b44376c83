//! Hot reload through a Kubernetes ConfigMap volume (issue 16): `palisade.toml` is a link to
//! `..data/palisade.toml`, `..data` a link to a timestamped folder, and an update swaps `..data`
//! atomically (a new link renamed over the old one), so no event ever names `palisade.toml`.
//! The gateway must load the new config all the same, plugins in the volume included.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::{config_text, dist_plugin, temp_dir};
use palisade::app::Gateway;
use palisade::plugins::Overrides;

/// Write a new timestamped folder with these files and swap `..data` to it, as kubelet's
/// atomic writer does; then remove the old folder.
fn publish(volume: &Path, version: &str, files: &[(&str, &[u8])], old: Option<&str>) {
    let folder = volume.join(format!("..2026_12_03_{version}"));
    std::fs::create_dir(&folder).expect("data folder");
    for (name, bytes) in files {
        std::fs::write(folder.join(name), bytes).expect("write file");
    }
    let tmp = volume.join("..data_tmp");
    symlink(folder.file_name().expect("name"), &tmp).expect("new link");
    std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(format!("..2026_12_03_{old}"))).expect("old folder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_of_data_is_reloaded() {
    let volume = temp_dir("configmap");
    let state = temp_dir("configmap-state");
    let database = format!("sqlite://{}", state.join("palisade.db").display());
    let plugin = std::fs::read(dist_plugin("model-allow")).expect("plugin");
    let plugins = |models: &str| {
        format!(
            "[[plugins]]\nname = \"model-allow\"\npath = \"model-allow.wasm\"\n\
             [plugins.config]\ndefault = [{models}]\n"
        )
    };
    let v1 = config_text(&state, &database, &plugins("\"gpt-4o-mini\""));
    publish(
        &volume,
        "v1",
        &[
            ("palisade.toml", v1.as_bytes()),
            ("model-allow.wasm", &plugin),
        ],
        None,
    );
    for name in ["palisade.toml", "model-allow.wasm"] {
        symlink(format!("..data/{name}"), volume.join(name)).expect("file link");
    }
    let gw = Gateway::start(&volume.join("palisade.toml"), Overrides::default())
        .await
        .expect("gateway starts");
    let _watch = gw.policy.watch().expect("watch");
    let before = gw.policy.current();
    let version_before = before.chain.version.clone();
    assert!(before.settings.prices.is_empty());
    drop(before);
    let mut events = gw.policy.subscribe();
    events.borrow_and_update();

    // Version 2: another config; the swap renames `..data` only.
    let v2 = format!(
        "{}\n[prices.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n",
        config_text(&state, &database, &plugins("\"gpt-4o-mini\", \"gpt-4o\""))
    );
    publish(
        &volume,
        "v2",
        &[
            ("palisade.toml", v2.as_bytes()),
            ("model-allow.wasm", &plugin),
        ],
        Some("v1"),
    );
    tokio::time::timeout(Duration::from_secs(20), events.changed())
        .await
        .expect("the swap is noticed within 20 s")
        .expect("reload events");
    let status = gw.policy.status();
    assert!(status.last_ok, "{status:?}");
    assert_eq!(status.generation, 2);
    let now = gw.policy.current();
    assert!(
        now.settings.prices.contains_key("gpt-4o-mini"),
        "the new config"
    );
    assert_ne!(now.chain.version, version_before, "the new plugin config");
    drop(now);

    // Version 3 is the same as version 2: a swap with nothing new reloads nothing.
    publish(
        &volume,
        "v3",
        &[
            ("palisade.toml", v2.as_bytes()),
            ("model-allow.wasm", &plugin),
        ],
        Some("v2"),
    );
    // A fourth, different, proves events are still followed after the link moved twice.
    let v4 = v2.replace("0.15", "0.25");
    publish(
        &volume,
        "v4",
        &[
            ("palisade.toml", v4.as_bytes()),
            ("model-allow.wasm", &plugin),
        ],
        Some("v3"),
    );
    tokio::time::timeout(Duration::from_secs(20), events.changed())
        .await
        .expect("the second swap is noticed within 20 s")
        .expect("reload events");
    let status = gw.policy.status();
    assert!(status.last_ok, "{status:?}");
    assert_eq!(status.generation, 3, "v3 changed nothing, v4 did");
    let price = gw.policy.current().settings.prices["gpt-4o-mini"];
    assert!((price.input_per_mtok - 0.25).abs() < 1e-9);
    let _ = std::fs::remove_dir_all(&volume);
    let _ = std::fs::remove_dir_all(&state);
}
