//! The chain: plugins in the order `palisade.toml` lists them, and a [`CallSession`] that runs
//! one call through it. A session makes each plugin's instance when its first hook is due, keeps
//! it for every later hook of the call (so a plugin may carry state across stream deltas), and
//! lets it go as soon as the plugin has no hook left to run.
//!
//! Verdicts: `allow` and `rewrite` go on (a rewrite replaces the body the next plugins and the
//! upstream see), the last `route` wins, the first `deny` or `hold` stops the chain. A plugin
//! that traps, runs out of time or memory fails the call closed, or is skipped for the rest of
//! the call when configured `on_error = "allow"`; either way the notes say so for the audit. A
//! call its agent's share of the plugin instances (`shares`) refuses fails closed whatever the
//! plugin's `on_error`: the refusal is the agent's limit, not the plugin's fault.

use std::sync::Arc;
use std::time::Duration;

use super::bindings::{Call, CallKind, Completion, Hooks, Outcome, Tool, Usage, Verdict};
use super::host::CallHolds;
use super::instance::Instance;
use super::loaded::LoadedPlugin;
use super::shares::{self, Ticket};
use crate::core::error::{CallError, PluginFault};
use crate::core::settings::OnError;

/// A loaded chain; immutable, swapped whole on reload.
pub struct Chain {
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Hash of the plugins' names, bytes, configs and settings (with the instance mode in
    /// effect): the "policy version" in the audit and `/admin/status`.
    pub version: String,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<LoadedPlugin>>) -> Chain {
        let mut h = String::new();
        for p in &plugins {
            let s = &p.settings;
            h.push_str(&format!(
                "{}\n{}\n{}\n{:?}\n{:?}\n{}\n{:?}\n{}\n",
                s.name,
                p.sha256,
                s.config_json,
                s.on_error,
                p.instances,
                s.max_calls,
                s.deadline,
                s.memory_bytes
            ));
        }
        let version = super::loaded::sha256_hex(h.as_bytes())[..16].to_string();
        Chain { plugins, version }
    }

    /// Start running a call of `agent` through this chain (its instances count in the agent's
    /// share of the pool).
    pub fn session_of(self: &Arc<Self>, request_id: &Arc<str>, agent: &str) -> CallSession {
        let mut s = self.session(request_id.clone());
        s.set_agent(agent);
        s
    }

    /// Start running a call through this chain.
    pub fn session(self: &Arc<Self>, request_id: Arc<str>) -> CallSession {
        CallSession {
            chain: self.clone(),
            instances: self.plugins.iter().map(|_| None).collect(),
            tickets: self.plugins.iter().map(|_| None).collect(),
            agent: Arc::from(""),
            refused: false,
            skipped: vec![false; self.plugins.len()],
            request_id,
            notes: Vec::new(),
            holds: Arc::default(),
            held: None,
        }
    }
}

/// What one plugin said in one hook, for the audit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginNote {
    pub plugin: Arc<str>,
    pub hook: &'static str,
    /// `allow`, `deny`, `rewrite`, `hold`, `route`, or `error` (with the fault's code).
    pub verdict: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the request side decided, when the call may go on.
#[derive(Debug, Default)]
pub struct RequestDecision {
    /// Provider targets in order, if a plugin routed the call.
    pub route: Option<Vec<String>>,
    /// True if some plugin rewrote the body.
    pub rewritten: bool,
}

pub struct CallSession {
    chain: Arc<Chain>,
    instances: Vec<Option<Instance>>,
    /// Each checked-out instance's place in its agent's share (`shares`): the first one the
    /// call took admitted it, the others came with it.
    tickets: Vec<Option<Ticket>>,
    /// The agent whose share the instances count in ("" until [`CallSession::set_agent`]).
    agent: Arc<str>,
    /// The agent's share refused the call an instance.
    refused: bool,
    skipped: Vec<bool>,
    request_id: Arc<str>,
    pub notes: Vec<PluginNote>,
    /// The ledger reservations the plugins hold in this call.
    holds: Arc<CallHolds>,
    /// Where `on-request` stopped on a hold: the holding plugin's index and what the plugins
    /// before it decided, so [`CallSession::resume_after_hold`] can go on once approved.
    held: Option<(usize, RequestDecision)>,
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny(_) => "deny",
        Verdict::Rewrite(_) => "rewrite",
        Verdict::Hold(_) => "hold",
        Verdict::Route(_) => "route",
    }
}

impl CallSession {
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// Indices of plugins that implement `hook`, decide about calls of `kind` (`declare-kinds`)
    /// and have not been skipped.
    fn due(&self, hook: Hooks, kind: CallKind) -> Vec<usize> {
        (0..self.chain.plugins.len())
            .filter(|&i| {
                let p = &self.chain.plugins[i];
                !self.skipped[i] && p.hooks.contains(hook) && p.kinds.contains(kind)
            })
            .collect()
    }

    /// The agent the call's instances count for in the fair shares of the pool.
    pub fn set_agent(&mut self, agent: &str) {
        self.agent = Arc::from(agent);
    }

    /// Give plugin `i` its place in the agent's share of the instance pool, unless it has one.
    /// The call's first instance waits for the share (up to [`shares::WAIT`]); the ones after
    /// it count without waiting, since a call holding instances must not wait on its agent's
    /// other calls. A refusal fails the call closed, even for an `on_error = "allow"` plugin:
    /// otherwise an agent could make its own plugins be skipped by keeping streams open.
    async fn admit(&mut self, i: usize, hook: &'static str) -> Result<(), CallError> {
        if self.tickets[i].is_some() {
            return Ok(());
        }
        let ticket = match self.tickets.iter().flatten().next() {
            Some(held) => held.another(),
            None => {
                let shares = self.chain.plugins[i].services.shares.clone();
                // Refused once, the call only has `on-complete` left: it does not wait again.
                let wait = if self.refused {
                    Duration::ZERO
                } else {
                    shares::WAIT
                };
                match shares.acquire(&self.agent, wait).await {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        self.refused = true;
                        self.notes.push(PluginNote {
                            plugin: self.chain.plugins[i].name.clone(),
                            hook,
                            verdict: "error".into(),
                            annotations: Vec::new(),
                            error: Some(format!("{}: {refused}", refused.code())),
                        });
                        return Err(refused);
                    }
                }
            }
        };
        self.tickets[i] = Some(ticket);
        Ok(())
    }

    /// Plugin `i`'s instance for this call, checked out on its first hook ([`Self::admit`]
    /// first).
    async fn instance(&mut self, i: usize) -> Result<&mut Instance, PluginFault> {
        if self.instances[i].is_none() {
            let plugin = &self.chain.plugins[i];
            let inst = plugin.checkout(&self.request_id, &self.holds).await?;
            self.instances[i] = Some(inst);
        }
        match self.instances[i].as_mut() {
            Some(inst) => Ok(inst),
            None => Err(PluginFault::Unavailable("instance vanished".into())),
        }
    }

    /// A plugin failed: skip it (fail-open) or fail the call (fail-closed).
    fn fault(&mut self, i: usize, hook: &'static str, fault: PluginFault) -> Result<(), CallError> {
        let plugin = self.chain.plugins[i].clone();
        self.instances[i] = None;
        self.tickets[i] = None;
        self.skipped[i] = true;
        // A full engine is the gateway's capacity, not the plugin's fault: never skipped.
        let open =
            plugin.settings.on_error == OnError::Allow && !matches!(fault, PluginFault::Busy(_));
        tracing::warn!(
            plugin = &*plugin.name,
            request_id = &*self.request_id,
            hook,
            fail_open = open,
            "plugin failed: {fault}"
        );
        self.notes.push(PluginNote {
            plugin: plugin.name.clone(),
            hook,
            verdict: if open {
                "error-skipped".into()
            } else {
                "error".into()
            },
            annotations: Vec::new(),
            error: Some(format!("{}: {fault}", fault.code())),
        });
        if open {
            Ok(())
        } else {
            Err(CallError::PluginFailed {
                plugin: plugin.name.to_string(),
                fault,
            })
        }
    }

    fn note(&mut self, i: usize, hook: &'static str, outcome: &mut Outcome) {
        self.notes.push(PluginNote {
            plugin: self.chain.plugins[i].name.clone(),
            hook,
            verdict: verdict_name(&outcome.verdict).into(),
            annotations: std::mem::take(&mut outcome.annotations),
            error: None,
        });
    }

    /// Drop instances of plugins with no hook left after `done`.
    fn release_after(&mut self, remaining: Hooks) {
        for (i, p) in self.chain.plugins.iter().enumerate() {
            if !p.hooks.intersects(remaining) {
                if let Some(inst) = self.instances[i].take() {
                    p.checkin(inst);
                }
                self.tickets[i] = None;
            }
        }
    }

    /// The chain stopped on a hold and the call now waits for humans: give back the
    /// instances of plugins with no hook left to run (the holding one, and every plugin before
    /// it that only decides requests), so a waiting call does not keep them from other calls.
    /// Plugins that still have a hook to run for this call (`on-complete`, `on-text`) keep
    /// theirs: it carries this call's state (a reservation to settle, stream carry-over).
    /// The plugins after the holding one take theirs when the call goes on.
    pub fn park(&mut self) {
        self.release_after(Hooks::ON_RESPONSE | Hooks::ON_TEXT | Hooks::ON_COMPLETE);
    }

    /// Run `on-request` through the chain. `call.body` is replaced by rewrites. A hold stops
    /// the chain with [`CallError::ApprovalRequired`]; once the approval lets the call go on,
    /// [`CallSession::resume_after_hold`] runs the plugins after the holding one.
    pub async fn on_request(&mut self, call: &mut Call) -> Result<RequestDecision, CallError> {
        self.request_from(call, 0, RequestDecision::default()).await
    }

    /// Go on with `on-request` after the plugin whose hold an approval has now cleared.
    /// Internal error if the chain did not stop on a hold.
    pub async fn resume_after_hold(
        &mut self,
        call: &mut Call,
    ) -> Result<RequestDecision, CallError> {
        let (at, decision) = self
            .held
            .take()
            .ok_or_else(|| CallError::Internal("no held request to resume".into()))?;
        self.request_from(call, at + 1, decision).await
    }

    async fn request_from(
        &mut self,
        call: &mut Call,
        from: usize,
        mut decision: RequestDecision,
    ) -> Result<RequestDecision, CallError> {
        for i in self
            .due(Hooks::ON_REQUEST, call.kind)
            .into_iter()
            .filter(|&i| i >= from)
        {
            self.admit(i, "on-request").await?;
            let result = match self.instance(i).await {
                Ok(inst) => inst.on_request(call).await,
                Err(f) => Err(f),
            };
            let mut outcome = match result {
                Ok(o) => o,
                Err(f) => {
                    self.fault(i, "on-request", f)?;
                    continue;
                }
            };
            self.note(i, "on-request", &mut outcome);
            let plugin = || self.chain.plugins[i].name.to_string();
            match outcome.verdict {
                Verdict::Allow => {}
                Verdict::Rewrite(body) => {
                    call.body = body;
                    decision.rewritten = true;
                }
                Verdict::Route(targets) => decision.route = Some(targets),
                Verdict::Deny(d) => {
                    return Err(CallError::Denied {
                        plugin: plugin(),
                        status: d.status,
                        code: d.code,
                        message: d.message,
                    });
                }
                Verdict::Hold(h) => {
                    self.held = Some((i, decision));
                    return Err(CallError::ApprovalRequired {
                        plugin: plugin(),
                        hold: Box::new(h.into()),
                    });
                }
            }
        }
        self.release_after(Hooks::ON_RESPONSE | Hooks::ON_TEXT | Hooks::ON_COMPLETE);
        Ok(decision)
    }

    /// Run `on-response` over a full answer; returns the body the agent gets.
    pub async fn on_response(
        &mut self,
        call: &Call,
        mut body: String,
    ) -> Result<String, CallError> {
        for i in self.due(Hooks::ON_RESPONSE, call.kind) {
            self.admit(i, "on-response").await?;
            let result = match self.instance(i).await {
                Ok(inst) => inst.on_response(call, &body).await,
                Err(f) => Err(f),
            };
            let mut outcome = match result {
                Ok(o) => o,
                Err(f) => {
                    self.fault(i, "on-response", f)?;
                    continue;
                }
            };
            self.note(i, "on-response", &mut outcome);
            let plugin = || self.chain.plugins[i].name.to_string();
            match outcome.verdict {
                Verdict::Allow | Verdict::Route(_) => {}
                Verdict::Rewrite(b) => body = b,
                Verdict::Deny(d) => {
                    return Err(CallError::Denied {
                        plugin: plugin(),
                        status: d.status,
                        code: d.code,
                        message: d.message,
                    });
                }
                Verdict::Hold(h) => {
                    return Err(CallError::ApprovalRequired {
                        plugin: plugin(),
                        hold: Box::new(h.into()),
                    });
                }
            }
        }
        Ok(body)
    }

    /// True if some plugin rewrites streamed text.
    pub fn wants_text(&self) -> bool {
        self.chain
            .plugins
            .iter()
            .any(|p| p.hooks.contains(Hooks::ON_TEXT))
    }

    /// Run one streamed text delta through `on-text`, plugin after plugin. With `last`, each
    /// plugin gets the text the plugins before it flushed, so carried-over text is not lost.
    pub async fn on_text(
        &mut self,
        call: &Call,
        delta: String,
        last: bool,
    ) -> Result<String, CallError> {
        let mut text = delta;
        for i in self.due(Hooks::ON_TEXT, call.kind) {
            self.admit(i, "on-text").await?;
            let result = match self.instance(i).await {
                Ok(inst) => inst.on_text(call, &text, last).await,
                Err(f) => Err(f),
            };
            match result {
                Ok(t) => text = t,
                Err(f) => self.fault(i, "on-text", f)?,
            }
        }
        Ok(text)
    }

    /// Run `on-complete`; failures are noted, never change the finished call.
    pub async fn on_complete(&mut self, call: &Call, usage: &Usage, status: &Completion) {
        for i in self.due(Hooks::ON_COMPLETE, call.kind) {
            // A refusal is noted; the finished call stands.
            if self.admit(i, "on-complete").await.is_err() {
                continue;
            }
            let result = match self.instance(i).await {
                Ok(inst) => inst.on_complete(call, usage, status).await,
                Err(f) => Err(f),
            };
            if let Err(f) = result {
                // The call is over: fail-closed cannot refuse it any more, so just record it.
                let _ = self.fault(i, "on-complete", f);
            }
        }
    }

    /// Run `filter-tools`: a tool is shown only if every plugin keeps it.
    pub async fn filter_tools(
        &mut self,
        call: &Call,
        mut tools: Vec<Tool>,
    ) -> Result<Vec<Tool>, CallError> {
        for i in self.due(Hooks::FILTER_TOOLS, call.kind) {
            self.admit(i, "filter-tools").await?;
            let result = match self.instance(i).await {
                Ok(inst) => inst.filter_tools(call, &tools).await,
                Err(f) => Err(f),
            };
            match result {
                Ok(keep) => tools.retain(|t| keep.contains(&t.name)),
                Err(f) => self.fault(i, "filter-tools", f)?,
            }
        }
        Ok(tools)
    }

    /// The ledger reservations the call's plugins hold, for growing them as a stream goes on.
    pub fn holds(&self) -> &Arc<CallHolds> {
        &self.holds
    }

    /// End the call: unsettled reservations are released and pooled instances go back.
    pub fn finish(mut self) {
        for (i, slot) in self.instances.iter_mut().enumerate() {
            if let Some(mut inst) = slot.take() {
                inst.end_call();
                self.chain.plugins[i].checkin(inst);
            }
            self.tickets[i] = None;
        }
    }
}
