//! The command line against a real `palisade serve`: `init` makes the first admin, and the
//! auditor's two commands (`agents export`, `audit export`) answer "every agent, its owner and
//! access, and this bot's log for a date range".

mod common;

use std::process::Command;

use common::*;

fn palisade(args: &[&str], url: &str, token: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_URL", url)
        .env("PALISADE_TOKEN", token)
        .output()
        .expect("run palisade");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_the_auditors_two_commands() {
    let dir = temp_dir("cli");
    std::fs::copy(dist_plugin("model-allow"), dir.join("model-allow.wasm")).unwrap();
    let config = dir.join("palisade.toml");
    let database = format!("sqlite://{}", dir.join("palisade.db").display());
    let plugins = "[[plugins]]\nname = \"model-allow\"\npath = \"model-allow.wasm\"\n[plugins.config]\ndefault = [\"gpt-4o-mini\"]\n";
    std::fs::write(&config, config_text(&dir, &database, plugins)).unwrap();

    // init: the first admin's token, printed once.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.len() > 20, "{token:?}");
    // A second init refuses rather than minting another admin.
    let again = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let (mock_addr, _mock) =
        mock_upstream::spawn(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let gw = spawn_gateway(&config, &format!("http://{mock_addr}"));
    let url = format!("http://{}", gw.addr);

    // Register an agent from the CLI and call with its key.
    let (ok, stdout, stderr) = palisade(
        &[
            "agents",
            "create",
            "--id",
            "chatbot",
            "--owner",
            "dana@example.com",
            "--team",
            "web",
            "--purpose",
            "customer chat, FAQ",
            "--model",
            "gpt-4o-mini",
        ],
        &url,
        &token,
    );
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let key = created["key"]["secret"].as_str().unwrap().to_string();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    for model in ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"] {
        let req = http::Request::post(format!("{url}/v1/chat/completions"))
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                chat_body(model, "hi").to_string(),
            )))
            .unwrap();
        client.request(req).await.unwrap();
    }

    let (ok, list, _) = palisade(&["agents", "list"], &url, &token);
    assert!(
        ok && list.contains("chatbot") && list.contains("support-bot"),
        "{list}"
    );

    // Command one: the inventory.
    let inventory = dir.join("agents.csv");
    let (ok, _, stderr) = palisade(
        &["agents", "export", "--out", inventory.to_str().unwrap()],
        &url,
        &token,
    );
    assert!(ok, "{stderr}");
    let csv = std::fs::read_to_string(&inventory).unwrap();
    assert!(csv.lines().next().unwrap().contains("owner"), "{csv}");
    assert!(
        csv.contains("chatbot")
            && csv.contains("dana@example.com")
            && csv.contains("\"customer chat, FAQ\""),
        "{csv}"
    );

    // Command two: the bot's log for today (waiting out the batched flush, bounded).
    let today = palisade_store::time::format_rfc3339_ms(palisade::app::now_ms())[..10].to_string();
    let mut rows = 0;
    for _ in 0..50 {
        let (ok, out, stderr) = palisade(
            &[
                "audit", "export", "--agent", "chatbot", "--from", &today, "--to", &today,
                "--format", "jsonl",
            ],
            &url,
            &token,
        );
        assert!(ok, "{stderr}");
        rows = out.lines().count();
        if rows == 3 {
            assert!(out.contains("model_not_allowed"), "{out}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(rows, 3);

    let (ok, out, _) = palisade(&["audit", "verify"], &url, &token);
    assert!(ok && out.contains("intact"), "{out}");

    // Wrong token: a clear error, non-zero exit.
    let (ok, _, stderr) = palisade(&["agents", "list"], &url, "pt_wrong");
    assert!(!ok && stderr.contains("401"), "{stderr}");
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

/// `make demo` end to end, on a copy of the example config in a fresh folder (its own SQLite
/// file and plugin cache): every scene's `expect` holds, or the command fails.
#[test]
fn the_demo_runs_every_scene() {
    let dir = temp_dir("demo");
    let examples = dir.join("examples");
    let plugins = dir.join("dist/plugins");
    std::fs::create_dir_all(&examples).unwrap();
    std::fs::create_dir_all(&plugins).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        repo.join("examples/palisade.toml"),
        examples.join("palisade.toml"),
    )
    .unwrap();
    for p in ["model-allow", "depth", "budget", "tool-acl", "approvals"] {
        std::fs::copy(dist_plugin(p), plugins.join(format!("{p}.wasm"))).unwrap();
    }
    // Twice: a newcomer runs `make demo` again, and the held email of the first run (approved
    // and sent) must not turn the second run's scene into a replay.
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["demo", "--config"])
            .arg(examples.join("palisade.toml"))
            .output()
            .expect("run palisade demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for scene in [
            "== 1.",
            "== 5.",
            "== 6.",
            "== 7.",
            "== 8.",
            "== 9.",
            "== 10.",
            "== 11.",
            "intact: true",
        ] {
            assert!(stdout.contains(scene), "{scene} missing:\n{stdout}");
        }
        assert!(
            stdout.contains("palisade-provider: mock/gpt-4o-mini"),
            "{stdout}"
        );
    }
}
