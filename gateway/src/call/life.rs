//! The end of a call's life, as a guard: [`CallLife`] owns what the end needs (the audit
//! draft, the call's plugin session, the plugins' view of the call) from the moment identity
//! is known, and [`CallLife::finish`] runs the last two steps exactly once: `on-complete` (the
//! plugins settle their reservations), then the audit event. Every ingress (OpenAI, Anthropic,
//! MCP) and the stream relay end their calls through it.
//!
//! A `CallLife` dropped without `finish` (its future was cancelled: a panic, a graceful
//! shutdown cutting a call that outlived the drain) finishes anyway, in a task the shutdown
//! waits for: status 499 `client_closed` (503 `gateway_draining` when the shutdown cut it),
//! spend settled conservatively for what reached the provider ([`Spend::conservative`]).
//!
//! An agent that hangs up does not cancel its call: the server runs every request as a
//! detached task (see `crate::server`), so a tool call under way sends its email once and a
//! completion is billed from the provider's real usage; the finish then records status 499
//! `client_closed`, and the answer it would have had in a `palisade.client` note.

use std::sync::Arc;
use std::time::Instant;

use palisade_store::NewAuditEvent;
use serde_json::Value;

use crate::app::Gateway;
use crate::core::clock::now_ms;
use crate::core::drain::ClientGone;
use crate::core::error::CallError;
use crate::core::settings::Price;
use crate::plugins::bindings::{Call, Completion, Usage};
use crate::plugins::chain::PluginNote;
use crate::plugins::{CallSession, Runtime};

/// What the audit needs to know about a call, filled in as it goes.
pub struct Draft {
    pub started: Instant,
    pub event: NewAuditEvent,
    /// Time spent waiting on providers (for the gateway-overhead metric).
    pub upstream_time: std::time::Duration,
}

impl Draft {
    pub fn new(request_id: &str, rt: &Runtime, kind: &str) -> Draft {
        Draft {
            upstream_time: std::time::Duration::ZERO,
            started: Instant::now(),
            event: NewAuditEvent {
                time_ms: now_ms(),
                request_id: request_id.to_string(),
                kind: kind.to_string(),
                policy_version: rt.chain.version.clone(),
                verdicts: Value::Array(Vec::new()),
                ..Default::default()
            },
        }
    }

    /// Complete the event (status, outcome, verdicts) and hand it to the audit sink; with sync
    /// durability this returns once it is committed.
    async fn record(
        mut self,
        gw: &Gateway,
        notes: Vec<PluginNote>,
        extras: Vec<Value>,
        end: &Ending,
    ) -> Result<(), CallError> {
        self.event.latency_us = self.started.elapsed().as_micros() as i64;
        self.event.status = i64::from(end.status);
        let mut verdicts = serde_json::to_value(notes).unwrap_or(Value::Array(Vec::new()));
        if let Value::Array(v) = &mut verdicts {
            v.extend(extras);
        }
        self.event.verdicts = verdicts;
        if end.code.is_some() {
            self.event.error_code = end.code.clone();
        }
        if end.plugin.is_some() {
            self.event.decided_by = end.plugin.clone();
        }
        self.event.output_tokens = i64::from(end.usage.output_tokens);
        self.event.cost_micro_usd = i64::try_from(end.usage.cost).unwrap_or(i64::MAX);
        if end.usage.input_tokens > 0 {
            self.event.input_tokens = i64::from(end.usage.input_tokens);
        }
        self.event.truncated = end.truncated;
        gw.metrics.observe_call(&crate::metrics::CallObservation {
            kind: &self.event.kind,
            status: end.status,
            agent: self.event.agent.as_deref(),
            provider: self.event.provider.as_deref(),
            total: self.started.elapsed(),
            upstream: self.upstream_time,
            input_tokens: u64::try_from(self.event.input_tokens).unwrap_or(0),
            output_tokens: u64::try_from(self.event.output_tokens).unwrap_or(0),
            cost_micro_usd: u64::try_from(self.event.cost_micro_usd).unwrap_or(0),
        });
        gw.audit.record(self.event).await
    }
}

/// How a call ended, as its finish records it.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The HTTP status the agent got (MCP: 200, with the outcome in `code`).
    pub status: u16,
    /// The stable error code, if it did not succeed.
    pub code: Option<String>,
    /// The plugin that decided or failed, if any.
    pub plugin: Option<String>,
    /// What it used, costed.
    pub usage: Usage,
    /// A stream that did not reach its end.
    pub truncated: bool,
}

impl Ending {
    pub fn ok(status: u16, usage: Usage) -> Ending {
        Ending {
            status,
            code: None,
            plugin: None,
            usage,
            truncated: false,
        }
    }

    pub fn failed(e: &CallError, usage: Usage) -> Ending {
        Ending {
            status: e.status(),
            code: Some(e.code().to_string()),
            plugin: e.plugin().map(str::to_string),
            usage,
            truncated: false,
        }
    }
}

/// Usage of nothing.
pub fn no_usage() -> Usage {
    Usage {
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        cost: 0,
        served_by: String::new(),
    }
}

/// What reached the provider so far, for settling a call that ends without the provider's
/// usage.
#[derive(Debug, Clone, Default)]
pub struct Spend {
    /// The request went to a provider (it may bill it).
    pub reached_upstream: bool,
    /// The price used for the worst case, or of the target that served.
    pub price: Option<Price>,
    /// Output characters streamed to the agent.
    pub out_chars: usize,
}

pub use super::estimate::tokens_of;

impl Spend {
    /// What to charge a call that ended with no usage from the provider: nothing if the request
    /// never left the gateway; the input estimate plus what was streamed, if anything was;
    /// else the whole worst case it reserved (the provider may have produced all of it).
    pub fn conservative(&self, call: Option<&Call>) -> Usage {
        let mut u = no_usage();
        let Some(call) = call else { return u };
        if !self.reached_upstream {
            return u;
        }
        u.input_tokens = call.input_tokens;
        if self.out_chars > 0 {
            u.output_tokens = u32::try_from(tokens_of(self.out_chars)).unwrap_or(u32::MAX);
            u.cost = crate::call::cost_of(self.price.as_ref(), &u);
        } else {
            u.output_tokens = call.max_output_tokens;
            u.cost = call
                .max_cost
                .max(crate::call::cost_of(self.price.as_ref(), &u));
        }
        u
    }
}

/// The guard of one call's end; see the module doc.
pub struct CallLife {
    gw: Arc<Gateway>,
    pub request_id: Arc<str>,
    pub draft: Draft,
    /// The plugin chain's session, once the chain runs.
    pub session: Option<CallSession>,
    /// The plugins' view of the call, once the body is read.
    pub call: Option<Call>,
    pub spend: Spend,
    /// What an ingress records beside the plugins' notes (MCP: method, server, item).
    pub facts: Option<Value>,
    /// The call's admission under the rate and concurrency limits, settled at its end.
    pub limits: Option<crate::limits::Admitted>,
    gone: ClientGone,
    finished: bool,
}

impl CallLife {
    /// Begin a call of `kind` on the runtime `rt`; `gone` tells whether its client hung up.
    pub fn begin(
        gw: &Arc<Gateway>,
        rt: &Runtime,
        request_id: Arc<str>,
        kind: &str,
        gone: ClientGone,
    ) -> CallLife {
        CallLife {
            gw: gw.clone(),
            draft: Draft::new(&request_id, rt, kind),
            request_id,
            session: None,
            call: None,
            spend: Spend::default(),
            facts: None,
            limits: None,
            gone,
            finished: false,
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// The session, started on `rt`'s chain if it was not yet.
    pub fn session(&mut self, rt: &Runtime) -> &mut CallSession {
        self.session
            .get_or_insert_with(|| rt.chain.session(self.request_id.clone()))
    }

    /// Admit the call of `agent` under the rate and concurrency limits (see
    /// [`crate::call::admit`]); the admission is settled when the call ends.
    pub async fn admit(
        &mut self,
        rt: &Arc<Runtime>,
        agent: &crate::registry::Agent,
        tokens: Option<u64>,
    ) -> Result<(), CallError> {
        let gw = self.gw.clone();
        let admitted =
            super::admit(&gw, rt, agent, tokens, &mut self.draft, &mut self.session).await?;
        self.limits = admitted;
        Ok(())
    }

    /// The plugin that decided, for ingresses whose refusals carry no [`CallError`]: the last
    /// one whose verdict was not `allow`.
    pub fn decider(&self) -> Option<String> {
        self.session.as_ref().and_then(|s| {
            s.notes
                .iter()
                .rev()
                .find(|n| n.verdict != "allow")
                .map(|n| n.plugin.to_string())
        })
    }

    /// End a call that never became one: its agent key was refused before anything ran, so
    /// nothing was reserved and nothing is audited (the registry counted the refusal).
    pub fn dismiss(mut self) {
        self.finished = true;
    }

    /// The last two steps of the call, once: `on-complete`, then the audit event. With sync
    /// durability, an error if the event could not be committed.
    pub async fn finish(mut self, end: Ending) -> Result<(), CallError> {
        self.finished = true;
        let parts = Parts::take(&mut self);
        parts.finish(end).await
    }
}

/// What a finish consumes, taken out of the guard.
struct Parts {
    gw: Arc<Gateway>,
    request_id: Arc<str>,
    draft: Draft,
    session: Option<CallSession>,
    call: Option<Call>,
    /// Recorded after the plugins' notes.
    extras: Vec<Value>,
    limits: Option<crate::limits::Admitted>,
    gone: ClientGone,
}

impl Parts {
    fn take(life: &mut CallLife) -> Parts {
        Parts {
            gw: life.gw.clone(),
            request_id: life.request_id.clone(),
            draft: std::mem::replace(&mut life.draft, placeholder()),
            session: life.session.take(),
            call: life.call.take(),
            extras: life.facts.take().into_iter().collect(),
            limits: life.limits.take(),
            gone: life.gone.clone(),
        }
    }

    async fn finish(mut self, mut end: Ending) -> Result<(), CallError> {
        if self.gone.is_gone() && end.status != 499 {
            // The agent went away before its answer: say so, and keep what it would have had.
            let note = PluginNote {
                plugin: Arc::from("palisade.client"),
                hook: "answer",
                verdict: "client_closed".into(),
                annotations: vec![
                    ("answer_status".into(), end.status.to_string()),
                    ("answer_code".into(), end.code.clone().unwrap_or_default()),
                ],
                error: None,
            };
            match self.session.as_mut() {
                Some(s) => s.notes.push(note),
                None => self
                    .extras
                    .push(serde_json::to_value(note).unwrap_or_default()),
            }
            end.status = 499;
            end.code = Some("client_closed".into());
        }
        if let (Some(s), Some(c)) = (self.session.as_mut(), self.call.as_ref()) {
            let done = Completion {
                status: end.status,
                error_code: end.code.clone(),
                truncated: end.truncated,
            };
            s.on_complete(c, &end.usage, &done).await;
        }
        if let Some(admitted) = self.limits.take() {
            // Tokens per minute count what the call really used; its place in flight ends.
            let used = u64::from(end.usage.input_tokens) + u64::from(end.usage.output_tokens);
            admitted.settle(used).await;
        }
        let notes = self
            .session
            .as_mut()
            .map(|s| std::mem::take(&mut s.notes))
            .unwrap_or_default();
        let recorded = self.draft.record(&self.gw, notes, self.extras, &end).await;
        if let Err(e) = &recorded {
            tracing::error!(request_id = &*self.request_id, "call not audited: {e}");
        }
        if let Some(s) = self.session {
            s.finish();
        }
        recorded
    }
}

fn placeholder() -> Draft {
    Draft {
        started: Instant::now(),
        event: NewAuditEvent::default(),
        upstream_time: std::time::Duration::ZERO,
    }
}

impl Drop for CallLife {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let usage = self.spend.conservative(self.call.as_ref());
        let parts = Parts::take(self);
        let drain = parts.gw.drain.clone();
        let e = if drain.is_cut() {
            CallError::ShuttingDown
        } else {
            CallError::ClientClosed
        };
        let mut end = Ending::failed(&e, usage);
        end.truncated = self.spend.reached_upstream;
        if tokio::runtime::Handle::try_current().is_ok() {
            drain.spawn(async move {
                let _ = parts.finish(end).await;
            });
        } else {
            tracing::error!(
                request_id = &*parts.request_id,
                "call dropped outside the runtime: not audited"
            );
        }
    }
}
