//! One live plugin instance: a `Store` with its limits and deadline, and the typed exports.
//! Every hook call goes through here, so this is the one place a trap, a deadline or a memory
//! overrun is turned into a [`PluginFault`].

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{Call, Completion, Hooks, Outcome, Plugin, Tool, Usage};
use super::host::{CallHolds, HostState};
use super::loaded::LoadedPlugin;
use crate::core::error::PluginFault;

pub struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
    /// Holds one of the engine's instance slots while this instance lives.
    _permit: OwnedSemaphorePermit,
    /// Calls served (pooled instances are recycled after `max_calls`).
    pub calls: u32,
    /// Set after a fault: a trapped instance must not be entered again.
    pub broken: bool,
}

impl Instance {
    /// Instantiate and `init` a new instance for `plugin`.
    pub async fn create(
        plugin: &LoadedPlugin,
        request_id: &Arc<str>,
        holds: &Arc<CallHolds>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(Instance, Hooks), PluginFault> {
        let s = &plugin.settings;
        let mut state = HostState::new(
            plugin.name.clone(),
            plugin.services.clone(),
            s.memory_bytes,
            s.deadline,
        );
        state.request_id = request_id.clone();
        state.holds = holds.clone();
        let mut store = Store::new(plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if s.guest_time() >= s.deadline {
                s.timed_out = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other calls run on this thread while a slow hook is still within budget.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.data_mut().start_hook();
        let bindings = match plugin.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => return Err(fault_of(&store, e, true)),
        };
        let mut inst = Instance {
            store,
            bindings,
            _permit: permit,
            calls: 0,
            broken: false,
        };
        inst.begin_hook();
        let init = inst
            .bindings
            .palisade_policy_policy()
            .call_init(&mut inst.store, &s.config_json)
            .await;
        match init {
            Ok(Ok(hooks)) => Ok((inst, hooks)),
            Ok(Err(msg)) => Err(PluginFault::Init(msg)),
            Err(e) => Err(inst.fault(e)),
        }
    }

    /// Ready a (possibly reused) instance for a new call.
    pub fn rebind(&mut self, request_id: &Arc<str>, holds: &Arc<CallHolds>) {
        let s = self.store.data_mut();
        s.request_id = request_id.clone();
        s.holds = holds.clone();
        s.timed_out = false;
        s.limiter.hit = false;
    }

    /// Release what the plugin reserved in the ledger and did not settle.
    pub fn end_call(&mut self) {
        self.store.data_mut().release_reservations();
    }

    /// Peak linear memory this instance has grown to.
    pub fn peak_memory(&self) -> usize {
        self.store.data().limiter.peak_bytes
    }

    fn begin_hook(&mut self) {
        self.store.data_mut().start_hook();
        self.store.set_epoch_deadline(1);
    }

    fn fault(&mut self, e: wasmtime::Error) -> PluginFault {
        self.broken = true;
        fault_of(&self.store, e, false)
    }

    pub async fn on_request(&mut self, call: &Call) -> Result<Outcome, PluginFault> {
        self.begin_hook();
        let r = self
            .bindings
            .palisade_policy_policy()
            .call_on_request(&mut self.store, call)
            .await;
        r.map_err(|e| self.fault(e))
    }

    pub async fn on_response(&mut self, call: &Call, body: &str) -> Result<Outcome, PluginFault> {
        self.begin_hook();
        let r = self
            .bindings
            .palisade_policy_policy()
            .call_on_response(&mut self.store, call, body)
            .await;
        r.map_err(|e| self.fault(e))
    }

    pub async fn on_text(
        &mut self,
        call: &Call,
        delta: &str,
        last: bool,
    ) -> Result<String, PluginFault> {
        self.begin_hook();
        let r = self
            .bindings
            .palisade_policy_policy()
            .call_on_text(&mut self.store, call, delta, last)
            .await;
        r.map_err(|e| self.fault(e))
    }

    pub async fn on_complete(
        &mut self,
        call: &Call,
        usage: &Usage,
        status: &Completion,
    ) -> Result<(), PluginFault> {
        self.begin_hook();
        let r = self
            .bindings
            .palisade_policy_policy()
            .call_on_complete(&mut self.store, call, usage, status)
            .await;
        r.map_err(|e| self.fault(e))
    }

    pub async fn filter_tools(
        &mut self,
        call: &Call,
        tools: &[Tool],
    ) -> Result<Vec<String>, PluginFault> {
        self.begin_hook();
        let r = self
            .bindings
            .palisade_policy_policy()
            .call_filter_tools(&mut self.store, call, tools)
            .await;
        r.map_err(|e| self.fault(e))
    }
}

fn fault_of(store: &Store<HostState>, e: wasmtime::Error, instantiating: bool) -> PluginFault {
    let s = store.data();
    if s.timed_out {
        PluginFault::Timeout(s.deadline)
    } else if s.limiter.hit {
        PluginFault::Memory(s.limiter.max_bytes)
    } else if instantiating {
        PluginFault::Unavailable(format!("{:#}", e.root_cause()))
    } else {
        let trap = e.downcast_ref::<wasmtime::Trap>().map(|t| t.to_string());
        PluginFault::Trap(trap.unwrap_or_else(|| e.root_cause().to_string()))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Whatever the plugin reserved and did not settle goes back to the ledger.
        self.store.data_mut().release_reservations();
    }
}
