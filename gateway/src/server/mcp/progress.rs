//! Progress while a tool call waits. A `tools/call` whose client gave a `progressToken` and
//! accepts `text/event-stream` is answered over SSE once it has taken longer than [`FIRST`]
//! (typically a call held for human approval): `notifications/progress` at once and every
//! [`EVERY`] after, then the call's response, so clients that reset their timeout on progress
//! keep waiting. A faster call is answered as usual.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::mcp::jsonrpc::{self, error};
use crate::wire::GatewayBody;

/// How long a call may take before its answer becomes a stream with progress.
pub const FIRST: Duration = Duration::from_millis(500);
/// Between two progress notifications.
pub const EVERY: Duration = Duration::from_secs(5);

/// The request's progress token, where the client asked for progress and accepts SSE.
pub fn wanted(headers: &http::HeaderMap, params: &Value) -> Option<Value> {
    let sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    params
        .pointer("/_meta/progressToken")
        .filter(|t| sse && (t.is_string() || t.is_number()))
        .cloned()
}

/// A dispatched call's answer: its reply and chain token when it came within [`FIRST`],
/// otherwise a stream of progress and then the reply.
pub enum Progress {
    Done(Value, Option<String>),
    Streaming(Response<GatewayBody>),
}

fn event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

fn reply_of(
    id: &Value,
    r: Result<(Value, Option<String>), tokio::task::JoinError>,
) -> (Value, Option<String>) {
    r.unwrap_or_else(|e| {
        let msg = format!("the tool call failed inside the gateway: {e}");
        (error(id, jsonrpc::INTERNAL_ERROR, msg, None), None)
    })
}

/// Wait for `work` (a spawned dispatch of request `id`), streaming progress once it is slow.
pub async fn follow(
    mut work: JoinHandle<(Value, Option<String>)>,
    id: Value,
    token: Value,
) -> Progress {
    tokio::select! {
        r = &mut work => {
            let (reply, chain) = reply_of(&id, r);
            return Progress::Done(reply, chain);
        }
        _ = tokio::time::sleep(FIRST) => {}
    }
    let (tx, body) = GatewayBody::channel(4);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut n: u64 = 0;
        loop {
            n += 1;
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {
                    "progressToken": token,
                    "progress": n,
                    "message": format!(
                        "still waiting after {} s (a held call waits for human approval)",
                        started.elapsed().as_secs() + FIRST.as_secs()
                    ),
                },
            });
            // A client gone away does not stop the call: an approved one still runs once.
            let _ = tx.send(event(&note)).await;
            tokio::select! {
                r = &mut work => {
                    let (reply, _) = reply_of(&id, r);
                    let _ = tx.send(event(&reply)).await;
                    return;
                }
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    });
    Progress::Streaming(super::jsonrpc::event_stream(body))
}
