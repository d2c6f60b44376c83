//! `palisade demo`: the mock upstream (an LLM provider and an MCP server) and the gateway, in
//! this process, on the example config, and the calls agents and humans would make, each showing
//! one failure the policy prevents: a forbidden model, a stolen key, a delegation loop, a provider
//! outage, a hidden tool, an unapproved email, a burst past a rate limit, and the audit that
//! shows it all. Every scene is a
//! real HTTP call over loopback through the real plugin chain, checked with `expect`.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::app::Gateway;
use crate::plugins::Overrides;
use palisade_store::Role;

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

/// An answer: status, the headers the demo shows, and the body.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Client2 {
    async fn send(
        &self,
        req: http::request::Builder,
        bearer: &str,
        body: Bytes,
    ) -> Result<Answer, DemoError> {
        let call = |e: &dyn std::fmt::Display| DemoError::Call(e.to_string());
        let req = req
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| call(&e))?;
        let resp = self.http.request(req).await.map_err(|e| call(&e))?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| call(&e))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn get(&self, token: &str, path: &str) -> Result<(u16, String), DemoError> {
        let a = self
            .send(
                http::Request::get(format!("{}{path}", self.base)),
                token,
                Bytes::new(),
            )
            .await?;
        Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
    }

    async fn mcp(&self, key: &str, sid: Option<&str>, body: &Value) -> Result<Answer, DemoError> {
        let mut req = http::Request::post(format!("{}/mcp", self.base))
            .header("accept", "application/json, text/event-stream");
        if let Some(sid) = sid {
            req = req
                .header("mcp-session-id", sid)
                .header("mcp-protocol-version", "2025-11-25");
        }
        self.send(req, key, Bytes::from(body.to_string())).await
    }

    async fn post(&self, token: &str, path: &str, body: &Value) -> Result<(u16, Value), DemoError> {
        let req = http::Request::post(format!("{}{path}", self.base));
        let a = self.send(req, token, Bytes::from(body.to_string())).await?;
        Ok((
            a.status,
            serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        ))
    }

    async fn chat(&self, key: &str, body: Value) -> Result<(u16, Value, String), DemoError> {
        let (s, v, p, _) = self.chat_in_chain(key, body, None).await?;
        Ok((s, v, p))
    }

    /// A call made on behalf of a delegation chain; returns the extended chain token too.
    async fn chat_in_chain(
        &self,
        key: &str,
        body: Value,
        chain: Option<&str>,
    ) -> Result<(u16, Value, String, Option<String>), DemoError> {
        let mut req = http::Request::post(format!("{}/v1/chat/completions", self.base));
        if let Some(c) = chain {
            req = req.header("palisade-chain", c);
        }
        let a = self.send(req, key, Bytes::from(body.to_string())).await?;
        let json = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        let provider = a.header("palisade-provider").unwrap_or_else(|| "-".into());
        Ok((a.status, json, provider, a.header("palisade-chain")))
    }
}

/// An agent's MCP session through the gateway's `/mcp` (Streamable HTTP, JSON answers).
struct McpSession<'a> {
    client: &'a Client2,
    key: &'static str,
    sid: String,
    next_id: std::cell::Cell<u64>,
}

impl<'a> McpSession<'a> {
    async fn open(client: &'a Client2, key: &'static str) -> Result<Self, DemoError> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "palisade-demo", "version": "0"}}});
        let a = client.mcp(key, None, &init).await?;
        let sid = a.header("mcp-session-id").ok_or_else(|| {
            DemoError::Call(format!("initialize: HTTP {} {:?}", a.status, a.body))
        })?;
        let session = McpSession {
            client,
            key,
            sid,
            next_id: std::cell::Cell::new(1),
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        client.mcp(key, Some(&session.sid), &note).await?;
        Ok(session)
    }

    async fn rpc(&self, method: &str, params: Value) -> Result<Value, DemoError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let a = self.client.mcp(self.key, Some(&self.sid), &msg).await?;
        Ok(serde_json::from_slice(&a.body).unwrap_or(Value::Null))
    }

    async fn tool_names(&self) -> Result<Vec<String>, DemoError> {
        let list = self.rpc("tools/list", json!({})).await?;
        Ok(list
            .pointer("/result/tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// What a tools/call answered, in one line: the JSON-RPC error, or the result's first text.
fn tool_answer(v: &Value) -> (bool, String) {
    if let Some(e) = v.get("error") {
        return (
            true,
            format!(
                "JSON-RPC {} {}",
                e["code"],
                e["message"].as_str().unwrap_or("")
            ),
        );
    }
    let text = v
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    (
        v.pointer("/result/isError") == Some(&Value::Bool(true)),
        text,
    )
}

/// Scene 5: an agent stuck in a loop spends until its dollar cap (the registry's `budgets` of
/// intern-bot in the example config) stops it; what it spent, and what a weekend at that rate
/// would have cost without the cap.
async fn runaway(client: &Client2, gw: &Gateway) -> Result<(), DemoError> {
    say(
        "5. A runaway agent: intern-bot re-summarises the same report in a loop until its $0.25 cap stops it",
    );
    let report =
        "Quarterly revenue grew in every region; churn fell; costs rose slightly. ".repeat(80);
    let started = std::time::Instant::now();
    let (mut served, mut stop) = (0u32, None);
    for i in 0..200 {
        let body = json!({"model": "gpt-4o", "max_tokens": 1500, "messages": [
            {"role": "user", "content": format!("Summarise this report again (attempt {i}): {report}")}]});
        let (status, body, _) = client.chat("pk-demo-intern-bot", body).await?;
        if status == 200 {
            served += 1;
        } else {
            stop = Some((status, body));
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    let spent = gw
        .store
        .spent(
            "agent:intern-bot",
            palisade_store::Unit::MicroUsd,
            palisade_store::Window::Day,
        )
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let usd = spent as f64 / 1e6;
    let weekend = usd / elapsed * 60.0 * 3600.0;
    let code = stop
        .as_ref()
        .and_then(|(_, b)| b.pointer("/error/code").and_then(Value::as_str))
        .unwrap_or("");
    println!(
        "   {served} calls in {elapsed:.1} s, then HTTP {} {code}",
        stop.as_ref().map_or(0, |s| s.0)
    );
    println!(
        "   spent ${usd:.4} of its $0.25 day; uncapped, a weekend (60 h) of this loop at the mock's speed: ${weekend:.0}"
    );
    expect(
        "runaway agent",
        served > 0 && code == "budget_exceeded" && usd <= 0.25,
        || format!("{served} served, spent {usd}, {stop:?}"),
    )
}

/// Scene 10: an agent's burst meets its requests-per-minute limit (burst-bot's `limits` in the
/// example config): the calls past the limit get 429 with `Retry-After`, whichever replica
/// they reach, and cost no plugin work or provider call.
async fn flood(client: &Client2) -> Result<(), DemoError> {
    say("10. A flood: burst-bot fires 25 calls at once against its limit of 10 a minute");
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]});
    let calls = (0..25).map(|_| {
        let req = http::Request::post(format!("{}/v1/chat/completions", client.base));
        client.send(req, "pk-demo-burst-bot", Bytes::from(body.to_string()))
    });
    let answers = futures_util::future::join_all(calls).await;
    let (mut served, mut refused, mut retry) = (0, 0, None);
    for a in answers {
        let a = a?;
        let code = serde_json::from_slice::<Value>(&a.body).ok().and_then(|v| {
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        match (a.status, code.as_deref()) {
            (200, _) => served += 1,
            (429, Some("rate_limit_rpm")) => {
                refused += 1;
                retry = retry.or(a.header("retry-after"));
            }
            (s, c) => {
                return expect("flood", false, || format!("unexpected answer {s} {c:?}"));
            }
        }
    }
    println!(
        "   {served} served, {refused} refused with 429 rate_limit_rpm (Retry-After: {} s)",
        retry.as_deref().unwrap_or("-")
    );
    // A burst across a minute's end may see two minutes' worth.
    expect(
        "flood",
        served <= 20 && refused >= 5 && retry.is_some(),
        || format!("{served} served, {refused} refused, retry-after {retry:?}"),
    )
}

/// Ask for a slow streamed answer over a raw connection, read its first event, and hang up;
/// returns how many bytes the agent read.
async fn hang_up_mid_stream(addr: &SocketAddr) -> Result<usize, DemoError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| DemoError::Gateway(format!("hang-up scene: {e}"));
    let body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 200,
        "messages": [{"role": "user", "content":
            "[mock:chunk_delay_ms=100] Tell me everything about my order, slowly please"}]})
    .to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer pk-demo-support-bot\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.map_err(io)?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(seen.len())
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
    let (mock_addr, mock_state) = mock_upstream::try_spawn(mock).map_err(DemoError::Mock)?;
    // A fresh database each run: the scenes hold and approve the same email every time, and
    // an approval once used replays its stored result rather than running again.
    let db_dir = std::env::temp_dir().join(format!(
        "palisade-demo-{}-{}",
        std::process::id(),
        crate::core::clock::now_ms()
    ));
    std::fs::create_dir_all(&db_dir).map_err(|e| DemoError::Gateway(e.to_string()))?;
    let database = format!("sqlite://{}", db_dir.join("palisade.db").display());
    let overrides = Overrides {
        upstream_url: Some(format!("http://{mock_addr}")),
        // The example config's MCP server is the mock's MCP face.
        mcp_urls: vec![("desk".into(), format!("http://{mock_addr}/mcp"))],
        database: Some(database.clone()),
    };
    let gw = Gateway::start(config, overrides)
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let rt = gw.policy.current();
    let (listener, addr) = crate::server::bind(listen)
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    println!("Palisade demo: gateway on http://{addr}, mock provider on http://{mock_addr}");
    println!("database (fresh for this run): {database}");
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
    let server = tokio::spawn(crate::server::serve(listener, gw.clone()));
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

    say(
        "4. A delegation loop: support-bot asks research-bot asks planner-bot asks support-bot ...",
    );
    // Each agent forwards the `palisade-chain` token it got back, as a real agent framework would;
    // the gateway signs it and appends the authenticated caller at each hop.
    let ring = [
        ("support-bot", "pk-demo-support-bot"),
        ("research-bot", "pk-demo-research-bot"),
        ("planner-bot", "pk-demo-planner-bot"),
    ];
    let mut chain: Option<String> = None;
    let mut stopped = None;
    for hop in 0..12 {
        let (agent, key) = ring[hop % ring.len()];
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hop {hop}: please ask the next agent")}]});
        let (status, body, _, next) = client.chat_in_chain(key, body, chain.as_deref()).await?;
        if status != 200 {
            let msg = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            let code = body
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("");
            println!("   hop {hop}: {agent} -> HTTP {status} {code}: {msg}");
            stopped = Some((hop, code.to_string()));
            break;
        }
        println!("   hop {hop}: {agent} -> HTTP 200");
        chain = next;
    }
    expect(
        "delegation loop",
        stopped
            .as_ref()
            .is_some_and(|(_, c)| c == "delegation_limit"),
        || format!("{stopped:?}"),
    )?;
    println!("   The loop cost a few calls, not a weekend.");

    runaway(&client, &gw).await?;

    say("6. A provider outage: the `resilient` route's primary is down; the call fails over");
    let (status, body, provider) = client
        .chat(
            "pk-demo-support-bot",
            json!({"model": "resilient", "messages": [{"role": "user", "content": "Is the service up?"}]}),
        )
        .await?;
    println!("   HTTP {status}, palisade-provider: {provider} (the backup)");
    // The gateway's own count of what it skipped, as Prometheus sees it.
    let (_, metrics) = client.get("", "/metrics").await?;
    let failed_over = metrics
        .lines()
        .find(|l| l.starts_with("palisade_failovers_total{from=\"primary/gpt-4o-mini\"}"))
        .unwrap_or("")
        .to_string();
    println!("   primary (127.0.0.1:9) refused the connection; GET /metrics: {failed_over}");
    expect(
        "fail over",
        status == 200
            && provider == "mock/gpt-4o-mini"
            && body.get("error").is_none()
            && !failed_over.is_empty(),
        || format!("{provider}: {body} / {failed_over:?}"),
    )?;

    say(
        "7. Tools: each agent sees and uses only the tools and resources tool-acl grants (MCP at /mcp)",
    );
    let support = McpSession::open(&client, "pk-demo-support-bot").await?;
    let research = McpSession::open(&client, "pk-demo-research-bot").await?;
    let seen_by_support = support.tool_names().await?;
    let seen_by_research = research.tool_names().await?;
    println!("   research-bot sees: {}", seen_by_research.join(", "));
    println!("   support-bot sees:  {}", seen_by_support.join(", "));
    let hr = json!({"name": "desk__hr_salary", "arguments": {"employee": "Marcus"}});
    let (hr_refused, hr_text) = tool_answer(&support.rpc("tools/call", hr.clone()).await?);
    println!("   support-bot  hr_salary {{employee: Marcus}} -> {hr_text}");
    let salaries = json!({"name": "desk__crm_query", "arguments": {"table": "salaries", "q": "*"}});
    let (sal_refused, sal_text) = tool_answer(&support.rpc("tools/call", salaries.clone()).await?);
    println!("   support-bot  crm_query {{table: salaries}} -> {sal_text}");
    let orders = json!({"name": "desk__crm_query", "arguments": {"table": "orders", "q": "Ada"}});
    let (orders_refused, orders_text) = tool_answer(&support.rpc("tools/call", orders).await?);
    println!("   support-bot  crm_query {{table: orders}}   -> {orders_text}");
    let (r_refused, r_text) = tool_answer(&research.rpc("tools/call", hr).await?);
    println!("   research-bot hr_salary {{employee: Marcus}} -> {r_text}");
    // Resources pass the same decision: the salary sheet is not there for support-bot.
    let read = |uri: &str| json!({ "uri": uri });
    let sheet = support
        .rpc("resources/read", read("desk+desk://hr/salaries"))
        .await?;
    let (sheet_refused, sheet_text) = tool_answer(&sheet);
    println!("   support-bot  read desk+desk://hr/salaries   -> {sheet_text}");
    let policy = support
        .rpc("resources/read", read("desk+desk://policies/refunds"))
        .await?;
    let policy_text = policy
        .pointer("/result/contents/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    println!("   support-bot  read desk+desk://policies/refunds -> {policy_text}");
    expect(
        "hide a tool",
        !seen_by_support.iter().any(|t| t.contains("hr_salary"))
            && sheet_refused
            && !sheet.to_string().contains("Marcus")
            && policy_text.starts_with("Refunds")
            && seen_by_research.iter().any(|t| t.contains("hr_salary"))
            && hr_refused
            && sal_refused
            && !sal_text.contains("rows")
            && !orders_refused
            && !r_refused
            && r_text.contains("USD"),
        || {
            format!(
                "{seen_by_support:?} {seen_by_research:?} {hr_text} | {sal_text} | {orders_text} | {r_text} | {sheet_text} | {policy_text}"
            )
        },
    )?;

    say("8. A human in the loop: support-bot's email waits for an approver, then goes out once");
    let email = json!({"name": "desk__send_email", "arguments": {
        "to": "ada@example.com", "subject": "Your refund", "body": "Refund of 120 EUR approved."}});
    let (_, held) = tool_answer(&support.rpc("tools/call", email.clone()).await?);
    println!("   support-bot send_email -> {held}");
    println!("   emails sent so far: {}", mock_state.emails_sent());
    let sent_while_held = mock_state.emails_sent();
    // The demo makes itself an approver; in production: `palisade users create --role approver`
    // and `PUT /admin/api/users/{id}/groups`.
    let name = format!("demo-approver-{:08x}", rand::random::<u32>());
    let store_err = |e: palisade_store::StoreError| DemoError::Gateway(e.to_string());
    let approver = gw
        .store
        .create_user(&name, "", &[Role::Approver])
        .await
        .map_err(store_err)?;
    gw.store
        .set_user_groups(&approver.id, &["approvers".to_string()])
        .await
        .map_err(store_err)?;
    let approver_token = gw
        .store
        .create_user_token(&approver.id)
        .await
        .map_err(store_err)?
        .secret;
    let (_, pending) = client
        .get(&approver_token, "/admin/api/approvals?status=pending")
        .await?;
    let pending: Value = serde_json::from_str(&pending).unwrap_or(Value::Null);
    let held_id = pending.as_array().and_then(|list| {
        list.iter()
            .find(|a| {
                a["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("send_email"))
            })
            .and_then(|a| a["id"].as_str().map(str::to_string))
    });
    let Some(id) = held_id else {
        return Err(DemoError::Unexpected {
            scene: "hold an email",
            detail: format!("no pending approval for the held email: {held}"),
        });
    };
    let (status, decided) = client
        .post(
            &approver_token,
            &format!("/admin/api/approvals/{id}/decisions"),
            &json!({"decision": "approve", "reason": "refund confirmed"}),
        )
        .await?;
    println!("   {name} approves {id}: HTTP {status}");
    expect("hold an email", status == 200, || decided.to_string())?;
    let (_, first) = tool_answer(&support.rpc("tools/call", email.clone()).await?);
    println!("   support-bot retries the identical call -> {first}");
    let (_, again) = tool_answer(&support.rpc("tools/call", email).await?);
    println!("   ... and once more -> {again}");
    println!("   emails sent: {}", mock_state.emails_sent());
    expect(
        "hold an email",
        sent_while_held == 0 && mock_state.emails_sent() == 1,
        || format!("held: {held} | {first} | {again}"),
    )?;

    say("9. An agent hangs up mid-answer: the call is still charged and audited, once");
    let hung = hang_up_mid_stream(&addr).await?;
    // The gateway finishes the call after the agent left; wait for it, then for its audit row.
    gw.drain.wait_idle(std::time::Duration::from_secs(10)).await;
    gw.audit
        .flush()
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let filter = palisade_store::AuditFilter {
        agent: Some("support-bot".into()),
        status: Some(499),
        ..Default::default()
    };
    let rows: Vec<palisade_store::AuditRecord> =
        futures_util::TryStreamExt::try_collect(gw.store.audit_stream(filter))
            .await
            .map_err(store_err)?;
    let row = rows.last();
    println!("   the agent read {hung} bytes of the stream, then closed the connection");
    if let Some(r) = row {
        println!(
            "   audited: {} {} · {} output tokens streamed · {} micro-USD settled",
            r.status,
            r.error_code.as_deref().unwrap_or(""),
            r.output_tokens,
            r.cost_micro_usd
        );
    }
    expect(
        "hang up",
        rows.len() == 1 && rows[0].truncated && rows[0].cost_micro_usd > 0,
        || format!("{rows:?}"),
    )?;

    flood(&client).await?;

    say("11. The auditor asks: every agent and its owner, and support-bot's log for today");
    // The demo makes itself an auditor; in production: `palisade users create --role auditor`.
    let name = format!("demo-auditor-{:08x}", rand::random::<u32>());
    let auditor = gw
        .store
        .create_user(&name, "", &[Role::Auditor])
        .await
        .map_err(store_err)?;
    let token = gw
        .store
        .create_user_token(&auditor.id)
        .await
        .map_err(store_err)?
        .secret;
    let (_, inventory) = client
        .get(&token, "/admin/api/agents/export?format=csv")
        .await?;
    for line in inventory.lines() {
        let cols: Vec<&str> = line.splitn(5, ',').collect();
        println!("   {}", cols[..cols.len().min(4)].join(" | "));
    }
    // Batched audit writes land within milliseconds; flush them before reading.
    gw.audit
        .flush()
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let today =
        palisade_store::time::format_rfc3339_ms(crate::core::clock::now_ms())[..10].to_string();
    let path =
        format!("/admin/api/audit/export?agent=support-bot&from={today}&to={today}&format=jsonl");
    let (status, log) = client.get(&token, &path).await?;
    let rows: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    println!("   support-bot today: {} calls; the last ones:", rows.len());
    for r in rows.iter().rev().take(3).rev() {
        println!(
            "     {} {} -> {} {}",
            r["time"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["status"],
            r["error_code"].as_str().unwrap_or("")
        );
    }
    let (_, verify) = client.get(&token, "/admin/api/audit/verify").await?;
    let verify: Value = serde_json::from_str(&verify).unwrap_or(Value::Null);
    println!(
        "   hash chain: {} rows checked, intact: {}",
        verify["rows"], verify["ok"]
    );
    expect(
        "audit export",
        status == 200 && rows.len() >= 2 && verify["ok"] == true,
        || log.clone(),
    )?;

    println!(
        "\nEvery call above went through the Wasm plugin chain and into the hash-chained audit log."
    );
    println!(
        "From a shell: palisade agents export; palisade audit export --agent support-bot --from 2026-03-08 --to 2026-03-15"
    );
    if keep {
        let admin_name = format!("demo-admin-{:08x}", rand::random::<u32>());
        let admin = gw
            .store
            .create_user(&admin_name, "", &[Role::Admin])
            .await
            .map_err(store_err)?;
        let admin_token = gw
            .store
            .create_user_token(&admin.id)
            .await
            .map_err(store_err)?
            .secret;
        println!("\nConsole: http://{addr}/console");
        println!("   sign in as {admin_name} (admin) with {admin_token}");
        println!("   or as {name} (auditor) with {token}");
        println!("Serving on http://{addr} until Ctrl-C (try: curl http://{addr}/admin/status)");
        let _ = tokio::signal::ctrl_c().await;
    }
    server.abort();
    Ok(())
}
