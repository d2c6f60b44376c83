//! `palisade plugin` for authors, run as the real binary on the real components of
//! dist/plugins (Rust, Python and JavaScript): `check` validates the world, runs `init` and
//! lists hooks and imports; `test` runs the hooks on fixture calls and prints verdicts; `new`
//! scaffolds a Rust plugin crate that builds for wasm32-wasip2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// One compile cache for every test here, so each component is compiled once.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cli-cache")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins")
}

fn palisade(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(args);
    if args.get(1) != Some(&"new") {
        cmd.arg("--cache-dir").arg(cache_dir());
    }
    let out = cmd.output().expect("run palisade");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn check_lists_hooks_and_imports_of_a_rust_plugin() {
    let wasm = dist_plugin("budget");
    let (ok, out, err) = palisade(&["plugin", "check", path(&wasm)]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("fits palisade:policy/plugin"), "{out}");
    assert!(
        out.contains("hooks:    on-request, on-complete"),
        "budget settles in on-complete: {out}"
    );
    // A Rust wasip2 component imports WASI; check says how it is satisfied.
    assert!(out.contains("palisade:policy/host@0.1.2"), "{out}");
    assert!(out.contains("wasi:"), "{out}");
    // `init` declared the plugin stateless, so the gateway will reuse its instances.
    assert!(out.contains("pooling:  declared stateless"), "{out}");
    // A listing costs nothing: budget declared it decides about LLM and tool calls only.
    assert!(out.contains("kinds:    llm-call, tool-call\n"), "{out}");
}

#[test]
fn check_loads_a_plugin_built_against_0_1_0_and_says_it_gets_fresh_instances() {
    let wasm = dist_plugin("legacy");
    let (ok, out, err) = palisade(&["plugin", "check", path(&wasm)]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("palisade:policy/host@0.1.0"), "{out}");
    assert!(out.contains("pooling:  fresh per call"), "{out}");
    // It predates `declare-kinds`: every hook runs for every kind of call.
    assert!(
        out.contains("kinds:    llm-call, tool-call, tool-list"),
        "{out}"
    );
}

#[test]
fn check_runs_init_with_the_config_and_shows_its_error() {
    let wasm = dist_plugin("model-allow");
    let (ok, out, err) = palisade(&[
        "plugin",
        "check",
        path(&wasm),
        "--config",
        r#"{"defualt": []}"#,
    ]);
    assert!(!ok, "a bad config must fail the check: {out}");
    assert!(err.contains("model-allow config"), "{err}");
    assert!(err.contains("defualt"), "{err}");

    let (ok, _, err) = palisade(&["plugin", "check", path(&wasm), "--config", "[1]"]);
    assert!(!ok);
    assert!(err.contains("--config must be a JSON object"), "{err}");
}

#[test]
fn check_refuses_a_component_of_another_world_and_garbage() {
    let (ok, _, err) = palisade(&["plugin", "check", path(&dist_plugin("wrong-world"))]);
    assert!(!ok);
    assert!(
        err.contains("does not fit the palisade:policy/plugin world"),
        "{err}"
    );

    let dir = temp_dir("cli-garbage");
    let bad = dir.join("bad.wasm");
    std::fs::write(&bad, b"not wasm").unwrap();
    let (ok, _, err) = palisade(&["plugin", "check", path(&bad)]);
    assert!(!ok);
    assert!(err.contains("is not a valid Wasm component"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn python_plugin_checks_and_denies_a_blocked_customer_on_a_fixture() {
    let wasm = dist_plugin("customer-guard-py");
    let config = format!("@{}", path(&examples().join("python/config.json")));
    let (ok, out, err) = palisade(&["plugin", "check", path(&wasm), "--config", &config]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("hooks:    on-request"), "{out}");
    // Built with WASI stubbed out: the host interface is its only import.
    assert!(!out.contains("wasi:"), "{out}");

    let fixture = examples().join("python/fixtures/blocked-customer.json");
    let (ok, out, err) = palisade(&[
        "plugin",
        "test",
        path(&wasm),
        "--config",
        &config,
        "--call",
        path(&fixture),
        "--json",
        "--expect",
        "deny",
    ]);
    assert!(ok, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).expect("--json prints JSON");
    let outcome = &doc["results"][0]["outcome"];
    assert_eq!(doc["results"][0]["hook"], "on-request");
    assert_eq!(outcome["verdict"], "deny");
    assert_eq!(outcome["status"], 403);
    assert_eq!(outcome["code"], "customer_blocked");
    assert_eq!(outcome["annotations"][0][1], "cust-1001");

    let other = examples().join("python/fixtures/other-customer.json");
    let (ok, out, err) = palisade(&[
        "plugin",
        "test",
        path(&wasm),
        "--config",
        &config,
        "--call",
        path(&other),
        "--expect",
        "deny",
    ]);
    assert!(!ok, "--expect deny must fail on an allowed call: {out}");
    assert!(out.contains("on-request    allow"), "{out}");
    assert!(
        err.contains("expected on-request to deny, it said allow"),
        "{err}"
    );

    // init's error (a Python `Err`) reaches the author.
    let (ok, _, err) = palisade(&[
        "plugin",
        "check",
        path(&wasm),
        "--config",
        r#"{"blocked": ["X"], "tool": []}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("unknown key(s) tool"), "{err}");
}

#[test]
fn javascript_plugin_holds_a_risky_tool_outside_hours_on_a_fixture() {
    let wasm = dist_plugin("business-hours-js");
    let fixture = examples().join("js/fixtures/refund.json");
    let closed = r#"{"risky": ["payments__*"], "days": [], "group": "finance", "approvals": 2}"#;
    let (ok, out, err) = palisade(&[
        "plugin",
        "test",
        path(&wasm),
        "--config",
        closed,
        "--call",
        path(&fixture),
        "--json",
        "--expect",
        "hold",
    ]);
    assert!(ok, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).expect("--json prints JSON");
    let outcome = &doc["results"][0]["outcome"];
    assert_eq!(outcome["verdict"], "hold");
    assert_eq!(outcome["rule"], "business-hours");
    assert_eq!(outcome["group"], "finance");
    assert_eq!(outcome["approvals"], 2);
    assert!(
        outcome["summary"]
            .as_str()
            .unwrap()
            .contains("support-bot calls payments__refund outside business hours"),
        "{outcome}"
    );

    let open = r#"{"risky": ["payments__*"], "days": ["sun","mon","tue","wed","thu","fri","sat"], "open": "00:00", "close": "24:00"}"#;
    let (ok, out, err) = palisade(&[
        "plugin",
        "test",
        path(&wasm),
        "--config",
        open,
        "--call",
        path(&fixture),
        "--expect",
        "allow",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("note business-hours.rule = payments__*"),
        "{out}"
    );

    // A thrown string from init is the error the author sees.
    let (ok, _, err) = palisade(&[
        "plugin",
        "check",
        path(&wasm),
        "--config",
        r#"{"risky": ["x"], "open": "25:00"}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("`open` must be a time"), "{err}");
}

#[test]
fn test_runs_every_hook_a_rust_plugin_lists() {
    // pii: on-request rewrites, on-text redacts the stream.
    let dir = temp_dir("cli-fixture");
    let fixture = dir.join("call.json");
    std::fs::write(
        &fixture,
        r#"{"call": {"kind": "llm-call", "target": "gpt-4o-mini", "stream": true,
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "mail me at jane@example.com"}]}},
            "stream": ["write to jane", "@example.com now"]}"#,
    )
    .unwrap();
    let (ok, out, err) = palisade(&[
        "plugin",
        "test",
        path(&dist_plugin("pii")),
        "--call",
        path(&fixture),
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).expect("--json prints JSON");
    let hooks: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hook"].as_str().unwrap())
        .collect();
    assert!(hooks.contains(&"on-request"), "{out}");
    assert!(hooks.contains(&"on-text"), "{out}");
    let text = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hook"] == "on-text")
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !text.contains("jane@example.com"),
        "the stream must be redacted: {text}"
    );

    // A fixture with a typo is refused with the field named.
    std::fs::write(&fixture, r#"{"call": {"kind": "llm-call", "targt": "x"}}"#).unwrap();
    let (ok, _, err) = palisade(&[
        "plugin",
        "test",
        path(&dist_plugin("pii")),
        "--call",
        path(&fixture),
    ]);
    assert!(!ok);
    assert!(err.contains("targt"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn new_scaffolds_a_plugin_crate_that_compiles_for_wasm() {
    let dir = temp_dir("cli-new");
    let crate_dir = dir.join("no-gpt4");
    let (ok, out, err) = palisade(&["plugin", "new", "no-gpt4", "--dir", path(&crate_dir)]);
    assert!(ok, "{out}{err}");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        ".cargo/config.toml",
        "fixture.json",
    ] {
        assert!(crate_dir.join(f).exists(), "{f} missing");
    }
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("pub struct NoGpt4"), "{lib}");
    assert!(lib.contains("export_plugin!(NoGpt4);"), "{lib}");

    // A second `new` into the same folder refuses; a bad name is refused.
    let (ok, _, err) = palisade(&["plugin", "new", "no-gpt4", "--dir", path(&crate_dir)]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, _, err) = palisade(&["plugin", "new", "No_GPT"]);
    assert!(!ok);
    assert!(err.contains("lowercase letters"), "{err}");

    // The scaffold type-checks for the plugin target (a full Wasm build is `make`-sized).
    let check = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--target", "wasm32-wasip2", "--offline"])
        .current_dir(&crate_dir)
        // Kept between runs, so only the first run compiles the SDK's dependencies.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"),
        )
        .output()
        .expect("run cargo");
    assert!(
        check.status.success(),
        "the scaffold must compile: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
