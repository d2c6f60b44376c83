//! `make dist`'s tarball, as an operator meets it: `scripts/dist.sh` packs the binary this test
//! was built with; the tarball is unpacked into an empty folder and serves a call from there,
//! loading its plugins from the compiled cache it ships (nothing is compiled at start), with an
//! agent registered through the admin API; SIGTERM then stops it cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Files in `dir` by name, with their inode: a file compiled again is written anew (a new
/// inode) even when its bytes are the same.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("metadata").ino(),
            )
        })
        .collect();
    files.sort();
    files
}

fn pack(out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = Command::new("bash")
        .arg(root.join("scripts/dist.sh"))
        .env("PALISADE_BIN", env!("CARGO_BIN_EXE_palisade"))
        .env("DIST_OUT", out)
        .env("OPENAI_API_KEY", "sk-unused-at-build")
        .output()
        .expect("run scripts/dist.sh");
    assert!(
        made.status.success(),
        "dist.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tarball = PathBuf::from(String::from_utf8_lossy(&made.stdout).trim());
    assert!(tarball.is_file(), "no tarball at {}", tarball.display());
    tarball
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tarball_unpacks_and_serves_a_call() {
    let work = temp_dir("dist");
    let tarball = pack(&work.join("out"));
    let site = work.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&site)
        .status()
        .unwrap();
    assert!(untar.success());
    let root = std::fs::read_dir(&site)
        .unwrap()
        .next()
        .expect("one folder in the tarball")
        .unwrap()
        .path();
    for f in [
        "bin/palisade",
        "palisade.toml",
        "palisade.service",
        "DEPLOY.md",
        "plugins/budget.wasm",
        "plugins/pii.wasm",
    ] {
        assert!(root.join(f).is_file(), "{f} is not in the tarball");
    }
    let unit = std::fs::read_to_string(root.join("palisade.service")).unwrap();
    assert!(unit.contains("KillSignal=SIGTERM") && unit.contains("palisade serve"));
    // One compiled entry per shipped plugin.
    let cache = listing(&root.join("cache"));
    assert_eq!(
        cache.iter().filter(|(n, _)| n.ends_with(".cwasm")).count(),
        listing(&root.join("plugins")).len(),
        "{cache:?}"
    );

    // `check` refuses a config with a typo before it could take a replica down.
    let broken = root.join("broken.toml");
    let text = std::fs::read_to_string(root.join("palisade.toml")).unwrap();
    std::fs::write(&broken, text.replace("drain_secs", "drain_sec")).unwrap();
    let checked = Command::new(root.join("bin/palisade"))
        .args(["check", "--config"])
        .arg(&broken)
        .env("OPENAI_API_KEY", "sk-mock")
        .output()
        .unwrap();
    assert!(!checked.status.success());
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("drain_sec"),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    let (mock_addr, _mock) =
        mock_upstream::spawn(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let config = root.join("palisade.toml").display().to_string();
    let database = format!("sqlite://{}", work.join("state.db").display());
    let upstream = format!("http://{mock_addr}");
    let mut gw = spawn_palisade(
        &root.join("bin/palisade"),
        &["serve", "--config", &config, "--upstream-url", &upstream],
        &[
            ("PALISADE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("OPENAI_API_KEY", "sk-mock"),
            ("PALISADE_DATABASE_URL", &database),
        ],
    );
    let url = format!("http://{}", gw.addr);
    // It loaded the shipped cache: nothing was compiled or written there at start.
    assert_eq!(listing(&root.join("cache")), cache);

    let (s, v) = http_json(
        "POST",
        &format!("{url}/admin/api/agents"),
        ADMIN_TOKEN,
        json!({"id": "ops-bot", "owner": "ops@example.com", "team": "ops"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"]["secret"].as_str().expect("a key").to_string();
    let (s, v) = http_json(
        "POST",
        &format!("{url}/v1/chat/completions"),
        &key,
        chat_body("gpt-4o-mini", "hello from the tarball"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    // The state went where the environment said, not into the config's /var/lib path.
    assert!(work.join("state.db").is_file());

    // A deploy's SIGTERM: drained and stopped with success.
    let pid = gw.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || {
        let status = gw.child.wait();
        (gw, status)
    });
    let (_gw, status) = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .expect("it exits within 30 s of SIGTERM")
        .expect("the wait task");
    let status = status.expect("wait for palisade");
    assert!(status.success(), "{status:?}");
}
