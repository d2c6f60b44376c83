//! `/mcp` in-process, with the real `tool-acl` plugin and the real npm `server-filesystem` over
//! stdio (installed by `make setup` into tests/e2e/mcp-servers): sessions sealed into their ids
//! survive onto a second replica and stay bound to their agent; list and call agree; the
//! modern (2026-07-28) stateless revision works without a session.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{RESEARCH_KEY, SUPPORT_KEY, TestGateway};
use serde_json::{Value, json};

fn filesystem_js() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/mcp-servers/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    assert!(
        p.is_file(),
        "{} is missing: run `make setup` (npm ci in tests/e2e/mcp-servers)",
        p.display()
    );
    p
}

const ACL: &str = r#"
[[plugins]]
name = "tool-acl"
path = "tool-acl.wasm"
[[plugins.config.rules]]
agents = ["support-bot"]
allow = ["fs__read_text_file", "fs__list_allowed_directories"]
[[plugins.config.rules.args]]
tool = "fs__read_text_file"
path = "$.path"
regex = ".*/public/.*"
[[plugins.config.rules]]
agents = ["research-bot"]
allow = ["fs__*"]
deny = ["fs__write_*", "fs__edit_file", "fs__move_file"]
"#;

struct Setup {
    root: PathBuf,
    extra: String,
}

fn setup() -> Setup {
    let root = common::temp_dir("mcp-files");
    std::fs::create_dir_all(root.join("public")).unwrap();
    std::fs::write(root.join("public/faq.txt"), "hours: 9-17\n").unwrap();
    std::fs::write(root.join("salaries.txt"), "Marcus: 123456\n").unwrap();
    // SAFETY of set_var: every test of this binary sets the same value.
    let extra = format!(
        r#"
[chain]
key_env = "PALISADE_MCP_TEST_CHAIN_KEY"

[[mcp_servers]]
name = "fs"
transport = "stdio"
command = "node"
args = ["{}", "{}"]
"#,
        filesystem_js().display(),
        root.display()
    );
    Setup { root, extra }
}

fn set_chain_key() {
    // The same value in every test of this binary, so concurrent setting is harmless.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(
            "PALISADE_MCP_TEST_CHAIN_KEY",
            "mcp-test-chain-key-0123456789",
        );
    }
}

struct Mcp<'a> {
    gw: &'a TestGateway,
}

impl Mcp<'_> {
    async fn post(
        &self,
        key: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, Value) {
        let mut h = vec![("accept", "application/json, text/event-stream")];
        h.extend_from_slice(headers);
        let (status, headers, bytes) = self
            .gw
            .request_with("POST", "/mcp", Some(key), Bytes::from(body.to_string()), &h)
            .await;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn initialize(&self, key: &str) -> String {
        let (status, headers, body) = self
            .post(
                key,
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "test", "version": "0"}}}),
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["protocolVersion"], "2025-11-25");
        headers["mcp-session-id"].to_str().unwrap().to_string()
    }

    async fn rpc(&self, key: &str, sid: &str, method: &str, params: Value) -> (u16, Value) {
        let (status, _, body) = self
            .post(
                key,
                json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}),
                &[
                    ("mcp-session-id", sid),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
            )
            .await;
        (status, body)
    }
}

fn tool_names(body: &Value) -> Vec<String> {
    let mut v: Vec<String> = body["result"]["tools"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_call_agree_and_arguments_are_checked() {
    set_chain_key();
    let s = setup();
    let gw = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, &s.extra).await;
    let mcp = Mcp { gw: &gw };
    let sid = mcp.initialize(SUPPORT_KEY).await;
    let (status, list) = mcp.rpc(SUPPORT_KEY, &sid, "tools/list", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        tool_names(&list),
        ["fs__list_allowed_directories", "fs__read_text_file"]
    );
    // A tool hidden from the list is not callable, and looks like a missing one.
    let (_, hidden) = mcp
        .rpc(
            SUPPORT_KEY,
            &sid,
            "tools/call",
            json!({"name": "fs__write_file", "arguments": {"path": "x", "content": "y"}}),
        )
        .await;
    assert_eq!(hidden["error"]["code"], -32602);
    assert_eq!(hidden["error"]["message"], "Unknown tool: fs__write_file");
    assert!(!s.root.join("x").exists());
    let faq = s.root.join("public/faq.txt");
    let (_, ok) = mcp
        .rpc(
            SUPPORT_KEY,
            &sid,
            "tools/call",
            json!({"name": "fs__read_text_file", "arguments": {"path": faq}}),
        )
        .await;
    assert_eq!(ok["result"]["content"][0]["text"], "hours: 9-17\n", "{ok}");
    let secret = s.root.join("salaries.txt");
    let (_, refused) = mcp
        .rpc(
            SUPPORT_KEY,
            &sid,
            "tools/call",
            json!({"name": "fs__read_text_file", "arguments": {"path": secret}}),
        )
        .await;
    assert_eq!(refused["result"]["isError"], true);
    let text = refused["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("'path'") && !text.contains("Marcus"),
        "{text}"
    );

    // The research agent sees the read tools but none of the write ones.
    let rsid = mcp.initialize(RESEARCH_KEY).await;
    let (_, rlist) = mcp.rpc(RESEARCH_KEY, &rsid, "tools/list", json!({})).await;
    let names = tool_names(&rlist);
    assert!(
        names.contains(&"fs__directory_tree".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("fs__write") || n == "fs__move_file")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_another_replica_but_not_to_another_agent() {
    set_chain_key();
    let s = setup();
    let a = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, &s.extra).await;
    let sid = Mcp { gw: &a }.initialize(SUPPORT_KEY).await;
    // A second replica on the same database and chain key: it never saw this session.
    let b = TestGateway::start_on(&a.database, &["tool-acl"], ACL, &s.extra).await;
    let mb = Mcp { gw: &b };
    let faq = s.root.join("public/faq.txt");
    let call = json!({"name": "fs__read_text_file", "arguments": {"path": faq}});
    let (status, ok) = mb.rpc(SUPPORT_KEY, &sid, "tools/call", call.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(ok["result"]["content"][0]["text"], "hours: 9-17\n", "{ok}");
    // Bound to its agent: research-bot presenting support-bot's session is refused.
    let (status, other) = mb.rpc(RESEARCH_KEY, &sid, "tools/call", call.clone()).await;
    assert_eq!(status, 404, "{other}");
    // A forged session id is unknown.
    let forged = format!("{}x", &sid[..sid.len() - 1]);
    let (status, _) = mb.rpc(SUPPORT_KEY, &forged, "tools/call", call).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_revision_needs_no_session_and_checks_headers() {
    set_chain_key();
    let s = setup();
    let gw = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, &s.extra).await;
    let mcp = Mcp { gw: &gw };
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}});
    let v = [("mcp-protocol-version", "2026-07-28")];
    let (status, _, disc) = mcp
        .post(
            SUPPORT_KEY,
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
            &[v[0], ("mcp-method", "server/discover")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(disc["result"]["supportedVersions"], json!(["2026-07-28"]));
    let (status, _, list) = mcp
        .post(
            SUPPORT_KEY,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta}}),
            &[v[0], ("mcp-method", "tools/list")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["result"]["cacheScope"], "private");
    assert_eq!(tool_names(&list).len(), 2);
    let faq = s.root.join("public/faq.txt");
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "fs__read_text_file", "arguments": {"path": faq}, "_meta": meta}});
    let (status, _, missing) = mcp
        .post(
            SUPPORT_KEY,
            call.clone(),
            &[v[0], ("mcp-method", "tools/call")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(missing["error"]["code"], -32020, "Mcp-Name is required");
    let (status, _, ok) = mcp
        .post(
            SUPPORT_KEY,
            call,
            &[
                v[0],
                ("mcp-method", "tools/call"),
                ("mcp-name", "fs__read_text_file"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ok["result"]["content"][0]["text"], "hours: 9-17\n");
    assert_eq!(ok["result"]["resultType"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_results_pass_on_response_so_pii_redacts_them() {
    set_chain_key();
    let s = setup();
    std::fs::write(
        s.root.join("public/contact.txt"),
        "write to marcus@example.com\n",
    )
    .unwrap();
    let plugins = format!(
        "{ACL}\n[[plugins]]\nname = \"pii\"\npath = \"pii.wasm\"\n[plugins.config]\nrequest = false\nhigh_entropy = false\n"
    );
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &["tool-acl", "pii"],
        &plugins,
        false,
        &s.extra,
    )
    .await;
    let mcp = Mcp { gw: &gw };
    let sid = mcp.initialize(SUPPORT_KEY).await;
    let path = s.root.join("public/contact.txt");
    let (status, body) = mcp
        .rpc(
            SUPPORT_KEY,
            &sid,
            "tools/call",
            json!({"name": "fs__read_text_file", "arguments": {"path": path}}),
        )
        .await;
    assert_eq!(status, 200);
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, "write to [EMAIL_1]\n", "{body}");
    assert!(!body.to_string().contains("marcus@example.com"), "{body}");
}
