//! The per-instance host state (a `Store`'s data) and the host imports a plugin may call:
//! `log`, `now-ms`, the ledger, the key-value store and `declare-stateless`. Nothing else is
//! granted: the WASI context every instance gets has no preopened files, no environment, no
//! arguments, no sockets and no stdio, because Rust, Python and JavaScript guests import WASI
//! interfaces by default even when they never use them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::palisade::policy::{host, types};
use super::bindings::{Amount, CallKind, Level, ReserveError, Unit, Window};
use super::deadline::HookClock;
use super::engine::EPOCH_TICK;
use super::kv::Kv;
use crate::plugins::ledger::Ledger;

/// Shared services behind the host imports, one per gateway.
#[derive(Default)]
pub struct HostServices {
    pub ledger: Ledger,
    pub kv: Kv,
    /// Each agent's share of the instance pool (`super::shares`).
    pub shares: Arc<super::shares::Shares>,
}

/// One reservation a plugin holds in the running call, with what it reserved, so the host can
/// grow it while a stream outruns it (the call pipeline's spend guard).
#[derive(Debug, Clone)]
pub struct Held {
    pub id: u64,
    pub amounts: Vec<Amount>,
    /// Further reservations the host added on the plugin's behalf; released when the plugin
    /// settles or the call ends, since the plugin's settlement charges the real spend.
    pub extra: Vec<u64>,
    /// How much the extra reservations added, per amount of `amounts`.
    pub grown: Vec<u64>,
}

/// The reservations of one call, across all its plugins' instances.
#[derive(Debug, Default)]
pub struct CallHolds(Mutex<Vec<Held>>);

impl CallHolds {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, id: u64, amounts: Vec<Amount>) {
        let grown = vec![0; amounts.len()];
        self.lock().push(Held {
            id,
            amounts,
            extra: Vec::new(),
            grown,
        });
    }

    /// Forget reservation `id`; returns the extra reservations made for it.
    fn remove(&self, id: u64) -> Vec<u64> {
        let mut held = self.lock();
        let mut extra = Vec::new();
        held.retain_mut(|h| {
            if h.id == id {
                extra.append(&mut h.extra);
                false
            } else {
                true
            }
        });
        extra
    }
}

/// Caps an instance's memory and remembers whether it hit the cap.
pub struct Limiter {
    pub max_bytes: usize,
    pub hit: bool,
    /// The largest memory the instance has had, for recycling pooled instances.
    pub peak_bytes: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} bytes reached",
                self.max_bytes
            )));
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A `Store`'s data: which plugin and call it serves, its deadline bookkeeping, its limits.
pub struct HostState {
    pub plugin: Arc<str>,
    pub request_id: Arc<str>,
    pub services: Arc<HostServices>,
    pub limiter: Limiter,
    /// The running hook's deadline bookkeeping: guest time only, see [`HookClock`].
    pub clock: HookClock,
    pub timed_out: bool,
    /// Reservations opened by this instance in this call, released at the end if unsettled.
    pub reservations: Vec<u64>,
    /// The running call's reservations, shared with the call (for stream growth).
    pub holds: Arc<CallHolds>,
    /// Set by `declare-stateless`; read once, after the load check's `init`.
    pub declared_stateless: bool,
    /// Set by `declare-kinds`; read once, after the load check's `init`.
    pub declared_kinds: CallKinds,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        services: Arc<HostServices>,
        max_bytes: usize,
        deadline: Duration,
    ) -> Self {
        HostState {
            plugin,
            request_id: Arc::from(""),
            services,
            limiter: Limiter {
                max_bytes,
                hit: false,
                peak_bytes: 0,
            },
            clock: HookClock::new(deadline, EPOCH_TICK),
            timed_out: false,
            reservations: Vec::new(),
            holds: Arc::default(),
            declared_stateless: false,
            declared_kinds: CallKinds::ALL,
            // No preopens, env, args, network or stdio: a capability-free WASI.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }

    /// Start the clock for a hook.
    pub fn start_hook(&mut self) {
        self.clock.start();
    }

    /// Release reservations the plugin left unsettled; called when the call ends.
    pub fn release_reservations(&mut self) {
        for id in self.reservations.drain(..) {
            for extra in self.holds.remove(id) {
                self.services.ledger.release(extra);
            }
            self.services.ledger.release(id);
        }
    }

    fn timed<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.clock.enter_host();
        let r = f(self);
        self.clock.leave_host();
        r
    }
}

/// Most bytes in a ledger scope.
const MAX_SCOPE_BYTES: usize = 256;

/// A scope is a short, printable key (`agent:<id>`, `team:<name>`, `run:<id>`): no control
/// characters, not empty, at most [`MAX_SCOPE_BYTES`].
fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_BYTES || scope.chars().any(char::is_control) {
        return Err(format!(
            "invalid ledger scope {:?}: 1 to {MAX_SCOPE_BYTES} bytes with no control characters",
            scope.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let (plugin, request_id) = (&*self.plugin, &*self.request_id);
        // Bound what a plugin can push into the gateway's log.
        let message: String = message.chars().take(4096).collect();
        match level {
            Level::Trace => tracing::trace!(plugin, request_id, "{message}"),
            Level::Debug => tracing::debug!(plugin, request_id, "{message}"),
            Level::Info => tracing::info!(plugin, request_id, "{message}"),
            Level::Warn => tracing::warn!(plugin, request_id, "{message}"),
            Level::Error => tracing::error!(plugin, request_id, "{message}"),
        }
    }

    async fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    async fn reserve(&mut self, amounts: Vec<Amount>) -> Result<u64, ReserveError> {
        if let Some(bad) = amounts.iter().find_map(|a| check_scope(&a.scope).err()) {
            return Err(ReserveError::Unavailable(bad));
        }
        self.clock.enter_host();
        let r = self.services.ledger.reserve(&amounts).await;
        self.clock.leave_host();
        let id = r?;
        self.reservations.push(id);
        self.holds.add(id, amounts);
        Ok(id)
    }

    async fn settle(
        &mut self,
        reservation: u64,
        micro_usd: u64,
        tokens: u64,
    ) -> Result<(), String> {
        // A plugin settles only what it reserved in this call: ids are guessable, and settling
        // another call's reservation would free (or charge) someone else's budget.
        if !self.reservations.contains(&reservation) {
            return Err(format!(
                "reservation {reservation} was not made by this plugin in this call"
            ));
        }
        self.clock.enter_host();
        let r = self
            .services
            .ledger
            .settle(reservation, micro_usd, tokens)
            .await;
        self.clock.leave_host();
        r?;
        self.reservations.retain(|r| *r != reservation);
        // The settlement charged the real spend: what the host added while streaming goes back.
        for extra in self.holds.remove(reservation) {
            self.services.ledger.release(extra);
        }
        Ok(())
    }

    async fn spent(&mut self, scope: String, unit: Unit, window: Window) -> Result<u64, String> {
        self.clock.enter_host();
        let r = self.services.ledger.spent(&scope, unit, window).await;
        self.clock.leave_host();
        r
    }

    async fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.timed(|s| s.services.kv.get(&s.plugin, &key))
    }

    async fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_secs: u32) {
        self.timed(|s| {
            if !s.services.kv.set(&s.plugin, &key, &value, ttl_secs) {
                tracing::warn!(
                    plugin = &*s.plugin,
                    "kv-set refused: value too large or store full"
                );
            }
        })
    }

    async fn kv_incr(&mut self, key: String, delta: i64, ttl_secs: u32) -> i64 {
        self.timed(|s| s.services.kv.incr(&s.plugin, &key, delta, ttl_secs))
    }

    async fn kv_delete(&mut self, key: String) {
        self.timed(|s| s.services.kv.delete(&s.plugin, &key))
    }

    async fn declare_stateless(&mut self) {
        self.declared_stateless = true;
    }

    async fn declare_kinds(&mut self, kinds: Vec<CallKind>) {
        self.declared_kinds = CallKinds::of(&kinds);
    }
}

/// A set of call kinds: the ones a plugin decides about (`declare-kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallKinds(u8);

impl CallKinds {
    /// Every kind: a plugin that declared nothing, or an empty list.
    pub const ALL: CallKinds = CallKinds(0b111);

    fn bit(kind: CallKind) -> u8 {
        match kind {
            CallKind::LlmCall => 1,
            CallKind::ToolCall => 2,
            CallKind::ToolList => 4,
        }
    }

    /// The set of `kinds`; an empty list is every kind.
    pub fn of(kinds: &[CallKind]) -> CallKinds {
        match kinds.iter().fold(0, |m, k| m | Self::bit(*k)) {
            0 => Self::ALL,
            m => CallKinds(m),
        }
    }

    pub fn contains(self, kind: CallKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// The kinds' WIT names, for status pages and `palisade plugin check`.
    pub fn names(self) -> Vec<&'static str> {
        [
            (CallKind::LlmCall, "llm-call"),
            (CallKind::ToolCall, "tool-call"),
            (CallKind::ToolList, "tool-list"),
        ]
        .into_iter()
        .filter(|(k, _)| self.contains(*k))
        .map(|(_, n)| n)
        .collect()
    }
}
