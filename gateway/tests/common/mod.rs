//! Test harness: a real gateway on a loopback port, in this process, with real compiled plugin
//! components (from `make plugins`), in front of the in-process mock upstream, on a real SQLite
//! file or a fresh PostgreSQL schema.
#![allow(dead_code)]

pub mod pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::app::Gateway;
use palisade::plugins::Overrides;
use serde_json::{Value, json};

pub const SUPPORT_KEY: &str = "pk-test-support";
pub const RESEARCH_KEY: &str = "pk-test-research";
pub const ADMIN_TOKEN: &str = "ut-test-admin-token-0123456789";
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which database a test gateway uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database URL for a fresh, isolated store: a file in `dir`, or a new PostgreSQL schema.
pub async fn database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("palisade.db").display()),
        Db::Postgres => {
            let schema = format!("t_{:016x}", rand::random::<u64>());
            palisade_store::Store::connect_pg_schema(PG_URL, &schema)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {PG_URL} is needed for this test: {e}"))
                .close()
                .await;
            format!("{PG_URL}?options=-c%20search_path%3D{schema}")
        }
    }
}

/// A built plugin from `dist/plugins`.
pub fn dist_plugin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

/// A fresh folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "palisade-test-{tag}-{:016x}",
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Write a file atomically (temp file + rename), as a deployer would.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    std::fs::write(&tmp, bytes).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.json
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.json
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn content(&self) -> &str {
        self.json
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// `base` followed by `extra`, except that lines of `extra` reading `plugin_host.KEY = VALUE`
/// (or `server.KEY = VALUE`) go into the `[plugin_host]` (`[server]`) table of `base`,
/// replacing its line for the same key (TOML allows no second table and no duplicate key).
pub fn with_host_lines(base: &str, extra: &str) -> String {
    let mut base = base.to_string();
    let mut rest: Vec<&str> = extra.lines().collect();
    for table in ["plugin_host", "server"] {
        let prefix = format!("{table}.");
        let (mine, others): (Vec<&str>, Vec<&str>) = rest
            .iter()
            .partition(|l| l.trim_start().starts_with(prefix.as_str()));
        rest = others;
        base = into_table(&base, table, &mine, &prefix);
    }
    format!("{base}\n{}", rest.join("\n"))
}

fn into_table(base: &str, table: &str, lines: &[&str], prefix: &str) -> String {
    let header = format!("[{table}]");
    let host: String = lines
        .iter()
        .map(|l| format!("{}\n", l.trim_start().trim_start_matches(prefix)))
        .collect();
    // A key given here replaces the harness's own line for it (e.g. `max_instances`).
    let keys: Vec<String> = host
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(|k| format!("{} =", k.trim()))
        .collect();
    let mut in_table = false;
    let base: String = base
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                in_table = *l == header;
            }
            !(in_table && keys.iter().any(|k| l.starts_with(k.as_str())))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    base.replacen(&format!("{header}\n"), &format!("{header}\n{host}"), 1)
}

/// The config a test gateway runs: a database, two agents plus the given `[[plugins]]` tables.
pub fn config_text(dir: &Path, database: &str, plugins_toml: &str) -> String {
    format!(
        r#"
database = "{database}"

[upstream]
name = "mock"
base_url = "http://127.0.0.1:1"
timeout_ms = 5000

[server]
max_body_bytes = 65536

# Tests that are about deadlines set their own per plugin; elsewhere a loaded CI machine must
# not turn a descheduled hook into a timeout.
[plugin_host]
cache_dir = "{cache}"
max_instances = 200
deadline_ms = 1000

[[agents]]
id = "support-bot"
owner = "alice@example.com"
team = "support"
purpose = "answers customers, politely"
models = ["gpt-4o-mini"]
key = "{SUPPORT_KEY}"

[[agents]]
id = "research-bot"
owner = "bob@example.com"
team = "research"
key = "{RESEARCH_KEY}"

{plugins_toml}
"#,
        cache = dir.join("cache").display()
    )
}

pub fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub struct TestGateway {
    pub addr: std::net::SocketAddr,
    pub mock: mock_upstream::MockState,
    pub dir: PathBuf,
    pub gw: Arc<Gateway>,
    pub database: String,
    /// Extra config text appended after the plugins (e.g. `[audit]`).
    pub extra: String,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<()>,
    _watcher: Option<palisade::plugins::WatchHandle>,
}

impl TestGateway {
    /// Copy these dist plugins into a fresh folder (as `<name>.wasm`) and start a gateway on
    /// SQLite whose config lists `plugins_toml` (paths relative to that folder).
    pub async fn start(plugins: &[&str], plugins_toml: &str) -> TestGateway {
        Self::start_full(Db::Sqlite, plugins, plugins_toml, false, "").await
    }

    pub async fn start_with(plugins: &[&str], plugins_toml: &str, watch: bool) -> TestGateway {
        Self::start_full(Db::Sqlite, plugins, plugins_toml, watch, "").await
    }

    /// Full control: database, plugins, file watching, extra config text.
    pub async fn start_full(
        db: Db,
        plugins: &[&str],
        plugins_toml: &str,
        watch: bool,
        extra: &str,
    ) -> TestGateway {
        let dir = temp_dir("gw");
        let database = database_url(db, &dir).await;
        Self::start_at(dir, database, plugins, plugins_toml, watch, extra).await
    }

    /// Start a gateway on an existing database (a second replica of another test gateway).
    pub async fn start_on(
        database: &str,
        plugins: &[&str],
        plugins_toml: &str,
        extra: &str,
    ) -> TestGateway {
        let dir = temp_dir("gw");
        Self::start_at(
            dir,
            database.to_string(),
            plugins,
            plugins_toml,
            false,
            extra,
        )
        .await
    }

    async fn start_at(
        dir: PathBuf,
        database: String,
        plugins: &[&str],
        plugins_toml: &str,
        watch: bool,
        extra: &str,
    ) -> TestGateway {
        for p in plugins {
            std::fs::copy(dist_plugin(p), dir.join(format!("{p}.wasm"))).expect("copy plugin");
        }
        let config = dir.join("palisade.toml");
        let mock_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        // `{mock}` in the extra text is the mock's URL (e.g. for its MCP desk at `{mock}/mcp`).
        let mock_url = format!("http://{}", mock_listener.local_addr().expect("mock addr"));
        let extra = &extra.replace("{mock}", &mock_url);
        let text = with_host_lines(&config_text(&dir, &database, plugins_toml), extra);
        std::fs::write(&config, text).expect("write config");
        let (mock_addr, mock) = mock_upstream::spawn(mock_listener);
        let overrides = Overrides {
            upstream_url: Some(format!("http://{mock_addr}")),
            ..Overrides::default()
        };
        let gw = Gateway::start(&config, overrides)
            .await
            .expect("gateway starts");
        gw.store
            .ensure_admin("admin", ADMIN_TOKEN)
            .await
            .expect("first admin");
        let watcher = watch.then(|| gw.policy.watch().expect("watch"));
        let (listener, addr) = palisade::server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let server = tokio::spawn(palisade::server::serve(listener, gw.clone()));
        TestGateway {
            addr,
            mock,
            dir,
            gw,
            database,
            extra: extra.to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            server,
            _watcher: watcher,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("palisade.toml")
    }

    /// Replace the config's plugin tables (atomically).
    pub fn rewrite_config(&self, plugins_toml: &str) {
        let text = format!(
            "{}\n{}",
            config_text(&self.dir, &self.database, plugins_toml),
            self.extra
        );
        write_atomic(&self.config_path(), text.as_bytes());
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> (u16, http::HeaderMap, Bytes) {
        self.request_with(method, path, key, body, &[]).await
    }

    /// A request with extra headers; status, headers and the whole body.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, Bytes) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, headers, bytes)
    }

    /// A chat call with extra request headers.
    pub async fn chat_with(&self, key: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let body = Bytes::from(body.to_string());
        let (status, headers, bytes) = self
            .request_with("POST", "/v1/chat/completions", Some(key), body, headers)
            .await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }

    pub async fn chat(&self, key: &str, body: &Value) -> Reply {
        let (status, headers, bytes) = self
            .request(
                "POST",
                "/v1/chat/completions",
                Some(key),
                Bytes::from(body.to_string()),
            )
            .await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }

    /// A streamed chat: status and the `data:` payloads in order.
    pub async fn chat_stream(&self, key: &str, body: &Value) -> (u16, Vec<String>) {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let (status, _, bytes) = self
            .request(
                "POST",
                "/v1/chat/completions",
                Some(key),
                Bytes::from(body.to_string()),
            )
            .await;
        let text = String::from_utf8_lossy(&bytes).to_string();
        let events = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect();
        (status, events)
    }

    /// An admin API call with a user token; status and the JSON answer.
    pub async fn admin(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let (s, _, b) = self.request(method, path, Some(token), body).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub async fn status(&self) -> Value {
        self.admin("GET", "/admin/status", ADMIN_TOKEN, Value::Null)
            .await
            .1
    }

    /// Wait (bounded) until a reload attempt after `after_attempt` has happened.
    pub async fn wait_reload(
        &self,
        after_attempt: std::time::SystemTime,
    ) -> palisade::plugins::ReloadStatus {
        for _ in 0..200 {
            let st = self.gw.policy.status();
            if st.last_attempt_at > after_attempt {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no reload happened within 10 s");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Text of a stream: the content deltas joined.
pub fn stream_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// A real `palisade serve` process, killed when dropped (also when an assertion fails).
pub struct Proc {
    pub child: std::process::Child,
    pub addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_gateway(config: &std::path::Path, upstream: &str) -> Proc {
    let config = config.display().to_string();
    spawn_palisade(
        Path::new(env!("CARGO_BIN_EXE_palisade")),
        &["serve", "--config", &config, "--upstream-url", upstream],
        &[("PALISADE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

/// Run `bin` with `args` (plus `--listen 127.0.0.1:0`) and `envs`; returns once it listens.
pub fn spawn_palisade(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let after = line
                .split("listening on http://")
                .nth(1)
                .or_else(|| line.split("listening on https://").nth(1));
            if let Some(rest) = after {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gateway started");
    Proc { child, addr }
}

/// One HTTP request with a JSON body (`Null`: none) and a bearer token; status and JSON answer.
pub async fn http_json(method: &str, url: &str, token: &str, body: Value) -> (u16, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = client.request(req).await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
