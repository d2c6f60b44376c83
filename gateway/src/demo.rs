//! `palisade demo`: the mock upstream and the gateway, in this process, on the example config,
//! and a few calls an agent would make, each showing one thing the policy does. Every scene is
//! a real HTTP call over loopback through the real plugin chain.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::app::Gateway;
use crate::plugins::Overrides;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the mock upstream: {0}")]
    Mock(std::io::Error),
    #[error("cannot start the gateway: {0}")]
    Gateway(String),
    #[error("demo call failed: {0}")]
    Call(String),
    #[error("scene '{scene}' did not go as expected: {detail}")]
    Unexpected { scene: &'static str, detail: String },
}

struct Client2 {
    base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client2 {
    async fn chat(&self, key: &str, body: Value) -> Result<(u16, Value, String), DemoError> {
        let req = http::Request::post(format!("{}/v1/chat/completions", self.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| DemoError::Call(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| DemoError::Call(e.to_string()))?;
        let status = resp.status().as_u16();
        let provider = resp
            .headers()
            .get("palisade-provider")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| DemoError::Call(e.to_string()))?;
        let json = serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null);
        Ok((status, json, provider))
    }
}

fn say(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn expect(scene: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Unexpected {
            scene,
            detail: detail(),
        })
    }
}

/// Run the demo; `keep` serves on until Ctrl-C.
pub async fn run(config: &Path, listen: SocketAddr, keep: bool) -> Result<(), DemoError> {
    let mock = std::net::TcpListener::bind("127.0.0.1:0").map_err(DemoError::Mock)?;
    let (mock_addr, _mock_state) = mock_upstream::try_spawn(mock).map_err(DemoError::Mock)?;
    let overrides = Overrides {
        upstream_url: Some(format!("http://{mock_addr}")),
    };
    let gw = Gateway::start(config, overrides)
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let rt = gw.policy.current();
    let (listener, addr) = crate::server::bind(listen)
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    println!("Palisade demo: gateway on http://{addr}, mock provider on http://{mock_addr}");
    println!(
        "config {} · policy version {} · plugins: {}",
        config.display(),
        rt.chain.version,
        rt.chain
            .plugins
            .iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(rt);
    let server = tokio::spawn(crate::server::serve(listener, gw));
    let client = Client2 {
        base: format!("http://{addr}"),
        http: Client::builder(TokioExecutor::new()).build_http(),
    };

    say("1. An allowed call: support-bot asks gpt-4o-mini, which its policy allows");
    let (status, body, provider) = client
        .chat(
            "pk-demo-support-bot",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Where is my order?"}]}),
        )
        .await?;
    let text = body
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    println!("   HTTP {status} via {provider}: {text}");
    expect("allowed call", status == 200, || body.to_string())?;

    say("2. A denied call: support-bot asks gpt-4o; the model-allow plugin refuses it");
    let (status, body, _) = client
        .chat(
            "pk-demo-support-bot",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise this contract"}]}),
        )
        .await?;
    let msg = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    println!("   HTTP {status} {code}: {msg}");
    expect(
        "denied call",
        status == 403 && code == "model_not_allowed",
        || body.to_string(),
    )?;

    say("3. An unknown key: refused before any plugin runs");
    let (status, body, _) = client
        .chat(
            "pk-stolen",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    let msg = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    println!("   HTTP {status}: {msg}");
    expect("unknown key", status == 401, || body.to_string())?;

    println!(
        "\nEvery call above went through the Wasm plugin chain and left an audit line in the log."
    );
    if keep {
        println!("Serving on http://{addr} until Ctrl-C (try: curl http://{addr}/admin/status)");
        let _ = tokio::signal::ctrl_c().await;
    }
    server.abort();
    Ok(())
}
