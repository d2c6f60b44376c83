//! One live plugin instance: a `Store` with its limits and deadline, and the typed exports.
//! Every hook call goes through here, so this is the one place a trap, a deadline or a memory
//! overrun is turned into a [`PluginFault`].

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{Call, Completion, Hooks, Outcome, Plugin, Tool, Usage};
use super::deadline::{HardBound, Tick};
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
    /// True while a hook runs. Still true when the instance comes back means the hook's future
    /// was dropped mid-run (the call was cancelled): its guest state is torn, so it is not reused.
    in_hook: bool,
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
        // Fires only while the guest runs; the deadline re-arms one tick past the epoch at
        // resume, so waiting for a worker thread is not charged (see `deadline`).
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            match s.clock.on_tick() {
                Tick::Yield(resume) => Ok(UpdateDeadline::YieldCustom(1, resume)),
                Tick::Over => {
                    s.timed_out = true;
                    Ok(UpdateDeadline::Interrupt)
                }
            }
        });
        store.data_mut().start_hook();
        let timer = store.data().clock.timer();
        let bindings = match timer.run(plugin.pre.instantiate_async(&mut store)).await {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(fault_of(&store, e, true)),
            None => return Err(PluginFault::Timeout(s.deadline)),
        };
        let mut inst = Instance {
            store,
            bindings,
            _permit: permit,
            calls: 0,
            broken: false,
            in_hook: false,
        };
        let timer = inst.begin_hook();
        let init = inst.bindings.palisade_policy_policy();
        let init = timer
            .run(init.call_init(&mut inst.store, &s.config_json))
            .await;
        match inst.finish(init)? {
            Ok(hooks) => Ok((inst, hooks)),
            Err(msg) => Err(PluginFault::Init(msg)),
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

    /// Whether the plugin called `declare-stateless` on this instance (in `init`).
    pub fn declared_stateless(&self) -> bool {
        self.store.data().declared_stateless
    }

    /// The kinds of call the plugin declared it decides about (`declare-kinds`, in `init`).
    pub fn declared_kinds(&self) -> super::host::CallKinds {
        self.store.data().declared_kinds
    }

    /// Peak linear memory this instance has grown to.
    pub fn peak_memory(&self) -> usize {
        self.store.data().limiter.peak_bytes
    }

    /// Whether this instance may serve another call: it neither faulted nor was left mid-hook.
    pub fn reusable(&self) -> bool {
        !self.broken && !self.in_hook
    }

    /// Start a hook's clock; the returned timer holds it to its hard bound.
    fn begin_hook(&mut self) -> HardBound {
        // A hook left mid-run by a cancelled call tore the guest's state: never reuse it after.
        self.broken |= self.in_hook;
        self.in_hook = true;
        self.store.data_mut().start_hook();
        self.store.set_epoch_deadline(1);
        self.store.data().clock.timer()
    }

    /// A hook's result, or the fault it ended in (`None`: it ran past its hard bound, and its
    /// call future was dropped mid-run, so the instance is not entered again).
    fn finish<R>(&mut self, r: Option<wasmtime::Result<R>>) -> Result<R, PluginFault> {
        self.in_hook = false;
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                self.broken = true;
                Err(fault_of(&self.store, e, false))
            }
            None => {
                self.broken = true;
                self.store.data_mut().timed_out = true;
                Err(PluginFault::Timeout(self.store.data().clock.deadline))
            }
        }
    }

    pub async fn on_request(&mut self, call: &Call) -> Result<Outcome, PluginFault> {
        let timer = self.begin_hook();
        let hooks = self.bindings.palisade_policy_policy();
        let r = timer
            .run(hooks.call_on_request(&mut self.store, call))
            .await;
        self.finish(r)
    }

    pub async fn on_response(&mut self, call: &Call, body: &str) -> Result<Outcome, PluginFault> {
        let timer = self.begin_hook();
        let hooks = self.bindings.palisade_policy_policy();
        let r = timer
            .run(hooks.call_on_response(&mut self.store, call, body))
            .await;
        self.finish(r)
    }

    pub async fn on_text(
        &mut self,
        call: &Call,
        delta: &str,
        last: bool,
    ) -> Result<String, PluginFault> {
        let timer = self.begin_hook();
        let hooks = self.bindings.palisade_policy_policy();
        let r = timer
            .run(hooks.call_on_text(&mut self.store, call, delta, last))
            .await;
        self.finish(r)
    }

    pub async fn on_complete(
        &mut self,
        call: &Call,
        usage: &Usage,
        status: &Completion,
    ) -> Result<(), PluginFault> {
        let timer = self.begin_hook();
        let hooks = self.bindings.palisade_policy_policy();
        let r = timer
            .run(hooks.call_on_complete(&mut self.store, call, usage, status))
            .await;
        self.finish(r)
    }

    pub async fn filter_tools(
        &mut self,
        call: &Call,
        tools: &[Tool],
    ) -> Result<Vec<String>, PluginFault> {
        let timer = self.begin_hook();
        let hooks = self.bindings.palisade_policy_policy();
        let r = timer
            .run(hooks.call_filter_tools(&mut self.store, call, tools))
            .await;
        self.finish(r)
    }
}

fn fault_of(store: &Store<HostState>, e: wasmtime::Error, instantiating: bool) -> PluginFault {
    let s = store.data();
    if s.timed_out {
        PluginFault::Timeout(s.clock.deadline)
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
