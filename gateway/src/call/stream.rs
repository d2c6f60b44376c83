//! Relaying a streamed answer: canonical OpenAI chunks in (from the serving provider's dialect,
//! through [`ChunkStream`], already past its first content), plugin-rewritten chunks out, written
//! in the caller's format by the relay's [`super::format::Egress`].
//!
//! Each text delta passes `on-text` (on the call's own plugin instances, so a plugin can carry
//! text across deltas); before the finishing chunk the plugins flush what they carried. The
//! usage chunk the gateway asked for is read for `on-complete` and passed on only if the agent
//! asked for it. If the upstream cuts the stream, or a plugin fails closed mid-way, the agent gets
//! an error event and never a `[DONE]`, so a truncated answer cannot pass as complete. With sync
//! audit durability the `[DONE]` is held back until the call's event is committed.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::life::{CallLife, Ending, tokens_of};
use super::spend_guard::SpendGuard;
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::core::settings::Durability;
use crate::plugins::CallSession;
use crate::plugins::bindings::Call;
use crate::providers::chunks::{ChunkStream, Next};
use crate::wire::GatewayBody;

pub struct Relay {
    /// The call's session, plugins' view and audit draft, finished once when the relay ends
    /// (or, if the relay task dies, when it is dropped).
    pub life: CallLife,
    pub wants_usage: bool,
    /// The price of the call's target, to cost what it used.
    pub price: Option<crate::core::settings::Price>,
    /// Keeps the plugins' reservations ahead of the stream (`None`: let it overrun).
    pub guard: Option<SpendGuard>,
    /// The target that serves the stream (`provider/model`).
    pub served_by: String,
    /// What goes to the agent.
    pub out: Out,
}

/// The agent's side of a stream.
pub struct Out {
    /// Writes the canonical chunks in the caller's format.
    pub egress: super::format::Egress,
    /// An approved call's claim, and the answer as sent so far, stored when the stream ends.
    pub record: Option<(crate::approvals::ExecutionClaim, super::replay::Assembler)>,
}

impl Out {
    /// A chunk's events in the caller's format, kept for the record if there is one.
    fn emit(&mut self, chunk: &Value) -> Vec<Bytes> {
        if let Some((_, a)) = self.record.as_mut() {
            a.push(chunk);
        }
        self.egress.chunk(chunk)
    }
}

/// Start relaying in a task; returns the body to send to the agent.
pub fn start(gw: Arc<Gateway>, relay: Relay, upstream: ChunkStream) -> GatewayBody {
    let (tx, body) = GatewayBody::channel(32);
    gw.drain.clone().spawn(run(gw, relay, upstream, tx));
    body
}

/// Send events in order; false once the agent went away, or stopped reading: an event that
/// waits longer than `[server] write_timeout_ms` for room (the connection's buffers are full
/// and, on HTTP/2, the stream's window is closed) ends the stream as `client_closed`.
async fn send_all(tx: &Sender, events: Vec<Bytes>) -> bool {
    for e in events {
        match tokio::time::timeout(tx.timeout, tx.tx.send(e)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::info!(
                    "the client read nothing of its stream for {} ms; cutting it",
                    tx.timeout.as_millis()
                );
                return false;
            }
        }
    }
    true
}

/// The agent's side of the relay, and how long a send may wait for it.
struct Sender {
    tx: mpsc::Sender<Bytes>,
    timeout: std::time::Duration,
}

impl Sender {
    async fn send(&self, e: Bytes) {
        let _ = tokio::time::timeout(self.timeout, self.tx.send(e)).await;
    }
}

enum End {
    /// `[DONE]` arrived.
    Done,
    /// The agent went away.
    ClientGone,
    /// Upstream or a plugin failed.
    Failed(CallError),
}

async fn run(gw: Arc<Gateway>, mut r: Relay, mut upstream: ChunkStream, tx: mpsc::Sender<Bytes>) {
    let tx = Sender {
        tx,
        timeout: gw.policy.current().settings.server.write_timeout,
    };
    let provider = r.life.draft.event.provider.clone().unwrap_or_default();
    let request_id = r.life.request_id.clone();
    let mut usage = super::empty_usage();
    let mut saw_usage = false;
    let (Some(call), Some(session)) = (r.life.call.as_ref(), r.life.session.as_mut()) else {
        let e = CallError::Internal("a stream without its call".into());
        tx.send(r.out.egress.error(&e, &request_id)).await;
        let _ = r.life.finish(Ending::failed(&e, usage)).await;
        return;
    };
    let input_tokens = call.input_tokens;
    let mut text_call = call.clone();
    // `on-text` gets the call without its body: the instance saw the body in `on-request`.
    text_call.body.clear();
    let wants_text = session.wants_text();
    let mut flushed = false;
    // A graceful shutdown past its drain time cuts the stream.
    let cut = gw.drain.cut_signal();
    tokio::pin!(cut);

    let end = 'relay: loop {
        let waited = std::time::Instant::now();
        let next = tokio::select! {
            biased;
            () = &mut cut => break 'relay End::Failed(CallError::ShuttingDown),
            next = upstream.next() => next,
        };
        r.life.draft.upstream_time += waited.elapsed();
        let mut chunk = match next {
            Next::Done => {
                if wants_text
                    && !flushed
                    && let Err(e) = flush(&mut r.out, session, &text_call, &tx, None).await
                {
                    break 'relay e;
                }
                // `[DONE]` is sent after the audit below, so sync durability can hold it back.
                break 'relay End::Done;
            }
            Next::Failed(e) => break 'relay End::Failed(e),
            Next::Chunk(c) => c,
        };
        {
            if chunk.get("usage").is_some_and(|u| !u.is_null()) {
                saw_usage |= super::estimate::has_usage(&chunk);
                usage = super::usage_from_value(&chunk, &provider);
                usage.served_by = r.served_by.clone();
                let only_usage = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_none_or(|c| c.is_empty());
                if only_usage && !r.wants_usage {
                    continue;
                }
                if !r.wants_usage
                    && let Some(o) = chunk.as_object_mut()
                {
                    o.remove("usage");
                }
            }
            let finishing = chunk
                .pointer("/choices/0/finish_reason")
                .is_some_and(|f| !f.is_null());
            if wants_text {
                if let Some(Value::String(delta)) = chunk.pointer_mut("/choices/0/delta/content") {
                    let text = std::mem::take(delta);
                    match session.on_text(&text_call, text, false).await {
                        Ok(t) => *delta = t,
                        Err(e) => break 'relay End::Failed(e),
                    }
                }
                if finishing && !flushed {
                    flushed = true;
                    if let Err(e) = flush(&mut r.out, session, &text_call, &tx, Some(&chunk)).await
                    {
                        break 'relay e;
                    }
                }
            }
            let out_chars = r.life.spend.out_chars;
            let sending = out_chars + output_chars(&chunk);
            if sending > out_chars
                && let Some(guard) = r.guard.as_mut()
                && let Err(e) = guard.cover(&gw.services.ledger, tokens_of(sending)).await
            {
                break 'relay End::Failed(e);
            }
            r.life.spend.out_chars = sending;
            if !send_all(&tx, r.out.emit(&chunk)).await {
                break 'relay End::ClientGone;
            }
        }
    };

    let (status, error, truncated) = match &end {
        End::Done => (200, None, false),
        End::ClientGone => (499, Some(CallError::ClientClosed), true),
        End::Failed(e) => {
            tx.send(r.out.egress.error(e, &request_id)).await;
            (e.status(), None, true)
        }
    };
    if let (End::Done, Some((claim, answer))) = (&end, r.out.record.take()) {
        let answer = answer.completion().to_string();
        super::held::record(&gw, claim, http::StatusCode::OK, &answer).await;
    }
    let sync = gw.audit.settings().durability == Durability::Sync;
    if matches!(end, End::Done) && !sync {
        send_all(&tx, r.out.egress.done()).await;
    }
    if !saw_usage || (truncated && usage.output_tokens == 0) {
        // A cut stream, or one whose provider sent no usage: settle from the input estimate
        // and what was sent (missing usage is never zero).
        usage.output_tokens = u32::try_from(tokens_of(r.life.spend.out_chars)).unwrap_or(u32::MAX);
        usage.input_tokens = input_tokens;
        if let Some(session) = r.life.session.as_mut() {
            super::note_estimated_usage(session);
        }
    }
    usage.served_by = r.served_by.clone();
    usage.cost = super::cost_of(r.price.as_ref(), &usage);
    let mut ending = match (&end, &error) {
        (End::Failed(e), _) | (_, Some(e)) => Ending::failed(e, usage),
        _ => Ending::ok(status, usage),
    };
    ending.status = status;
    ending.truncated = truncated;
    let recorded = r.life.finish(ending).await;
    if matches!(end, End::Done) && sync {
        let last = match recorded {
            Ok(()) => r.out.egress.done(),
            Err(e) => vec![r.out.egress.error(&e, &request_id)],
        };
        send_all(&tx, last).await;
    }
}

/// Output characters in a chunk, over all its choices (`n` > 1 streams them interleaved):
/// text and tool-call arguments.
fn output_chars(chunk: &Value) -> usize {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let delta_chars = |delta: &Value| {
        let text = delta
            .get("content")
            .and_then(Value::as_str)
            .map_or(0, str::len);
        let args: usize = delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .map_or(0, |calls| {
                calls
                    .iter()
                    .filter_map(|c| c.pointer("/function/arguments").and_then(Value::as_str))
                    .map(str::len)
                    .sum()
            });
        text + args
    };
    choices
        .iter()
        .filter_map(|c| c.get("delta"))
        .map(delta_chars)
        .sum()
}

/// Ask the text plugins for what they carried and send it as one more content chunk, shaped
/// like `like` (or a minimal chunk).
async fn flush(
    out: &mut Out,
    session: &mut CallSession,
    text_call: &Call,
    tx: &Sender,
    like: Option<&Value>,
) -> Result<(), End> {
    let rest = session
        .on_text(text_call, String::new(), true)
        .await
        .map_err(End::Failed)?;
    if rest.is_empty() {
        return Ok(());
    }
    let mut chunk = serde_json::json!({
        "id": like.and_then(|c| c.get("id")).cloned().unwrap_or(Value::Null),
        "object": "chat.completion.chunk",
        "created": like.and_then(|c| c.get("created")).cloned().unwrap_or(Value::Null),
        "model": like.and_then(|c| c.get("model")).cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "delta": {"content": rest}, "finish_reason": null}],
    });
    if let Some(o) = chunk.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    if send_all(tx, out.emit(&chunk)).await {
        Ok(())
    } else {
        Err(End::ClientGone)
    }
}
