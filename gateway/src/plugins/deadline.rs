//! A hook's deadline measures the plugin's own work, not the gateway's load.
//!
//! The engine's epoch advances every [`super::engine::EPOCH_TICK`]; a store's epoch deadline is
//! one tick ahead, and the epoch callback ([`HookClock::on_tick`]) runs only while the guest
//! executes. After each callback the hook yields to the runtime and wasmtime re-arms the deadline
//! one tick past the epoch *at resume* (wasmtime 48, `new_epoch` in `vm/libcalls.rs`), so time
//! the task spends waiting for a worker thread is never observed as a tick.
//!
//! The guest time charged to a hook is the smaller of two upper bounds of what it really ran:
//! - ticks observed while running, times the tick (immune to the thread being descheduled by
//!   the OS, and to waiting for a worker, but up to one tick high per yield);
//! - wall time since the hook started, less time inside host imports (the ledger, the kv store)
//!   and less time parked after an epoch yield until a worker resumed it.
//!
//! A hard bound of [`HARD_FACTOR`] times the deadline, over the same wall time less host imports
//! and parking, still ends a hook whose ticks lag (a starved ticker thread) or that is blocked
//! outside guest code, e.g. asleep on a WASI clock: [`HookClock::bounded`] runs the hook under
//! a timer that re-arms while the time is the host's or the scheduler's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Wall-time bound on a hook, as a multiple of its deadline.
pub const HARD_FACTOR: u32 = 10;

/// The future a hook awaits after an epoch callback: a yield to the runtime that records how
/// long the hook stayed parked.
pub type YieldFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the epoch callback should do.
pub enum Tick {
    /// Within budget: yield to other tasks, then go on.
    Yield(YieldFuture),
    /// Past the deadline (or the hard bound): interrupt the guest.
    Over,
}

/// The running hook's times, in nanoseconds since `base` (plus one, so 0 means "none"); shared
/// with the yield futures and the hard-bound timer.
#[derive(Debug)]
struct Times {
    base: Instant,
    started: AtomicU64,
    /// Time inside host imports that have returned.
    host: AtomicU64,
    /// When the host import running now began, or 0.
    in_host_since: AtomicU64,
    /// Time parked after epoch yields until a worker resumed the hook.
    parked: AtomicU64,
}

impl Times {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Wall time since the hook started, less host imports (including one running now).
    fn wall(&self) -> Duration {
        let now = self.now();
        let since = self.in_host_since.load(Relaxed);
        let running = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        Duration::from_nanos(
            now.saturating_sub(self.started.load(Relaxed))
                .saturating_sub(self.host.load(Relaxed))
                .saturating_sub(running),
        )
    }

    /// [`Times::wall`] less parking: what the hard bound measures.
    fn busy(&self) -> Duration {
        self.wall()
            .saturating_sub(Duration::from_nanos(self.parked.load(Relaxed)))
    }
}

/// The deadline bookkeeping of the running hook.
#[derive(Debug)]
pub struct HookClock {
    pub deadline: Duration,
    tick: Duration,
    times: Arc<Times>,
    /// Epoch callbacks seen in this hook: ticks that passed while the guest ran.
    ticks: u32,
}

impl HookClock {
    pub fn new(deadline: Duration, tick: Duration) -> HookClock {
        let times = Times {
            base: Instant::now(),
            started: AtomicU64::new(1),
            host: AtomicU64::new(0),
            in_host_since: AtomicU64::new(0),
            parked: AtomicU64::new(0),
        };
        HookClock {
            deadline,
            tick,
            times: Arc::new(times),
            ticks: 0,
        }
    }

    /// Start the clock for a hook (or instantiation).
    pub fn start(&mut self) {
        let t = &self.times;
        t.started.store(t.now(), Relaxed);
        t.host.store(0, Relaxed);
        t.in_host_since.store(0, Relaxed);
        t.parked.store(0, Relaxed);
        self.ticks = 0;
    }

    /// A host import begins: its time is the host's, not the plugin's.
    pub fn enter_host(&self) {
        self.times.in_host_since.store(self.times.now(), Relaxed);
    }

    /// The host import begun by [`HookClock::enter_host`] returns.
    pub fn leave_host(&self) {
        let t = &self.times;
        let since = t.in_host_since.swap(0, Relaxed);
        if since != 0 {
            t.host.fetch_add(t.now().saturating_sub(since), Relaxed);
        }
    }

    /// Guest time used by the running hook (see the module doc).
    pub fn guest_time(&self) -> Duration {
        self.times.busy().min(self.tick * self.ticks)
    }

    fn hard_bound(&self) -> Duration {
        self.deadline * HARD_FACTOR
    }

    /// An epoch tick passed while the guest ran: interrupt it, or yield and go on.
    pub fn on_tick(&mut self) -> Tick {
        self.ticks = self.ticks.saturating_add(1);
        if self.guest_time() >= self.deadline || self.times.busy() >= self.hard_bound() {
            tracing::debug!(
                ticks = self.ticks,
                busy_us = self.times.busy().as_micros() as u64,
                wall_us = self.times.wall().as_micros() as u64,
                "hook past its deadline"
            );
            return Tick::Over;
        }
        let times = self.times.clone();
        let at = times.now();
        Tick::Yield(Box::pin(async move {
            // Let other calls run on this thread while a slow hook is still within budget.
            tokio::task::yield_now().await;
            times
                .parked
                .fetch_add(times.now().saturating_sub(at), Relaxed);
        }))
    }

    /// The hard-bound timer for the hook just started.
    pub fn timer(&self) -> HardBound {
        HardBound {
            times: self.times.clone(),
            bound: self.hard_bound(),
        }
    }
}

/// Runs a hook under its hard bound (see the module doc).
pub struct HardBound {
    times: Arc<Times>,
    bound: Duration,
}

impl HardBound {
    /// `None` if `hook` ran past the bound. The timer re-arms for what is left whenever it
    /// fires while the time went to host imports or to parking.
    pub async fn run<F: Future>(self, hook: F) -> Option<F::Output> {
        let mut hook = std::pin::pin!(hook);
        loop {
            let left = self.bound.saturating_sub(self.times.busy());
            if left.is_zero() {
                return None;
            }
            tokio::select! {
                biased;
                r = &mut hook => return Some(r),
                () = tokio::time::sleep(left) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn over(t: Tick) -> bool {
        matches!(t, Tick::Over)
    }

    #[tokio::test]
    async fn waiting_for_a_worker_is_not_guest_time() {
        let mut c = HookClock::new(20 * MS, MS);
        c.start();
        // Three ticks observed running, each followed by a 30 ms wait for a worker.
        for _ in 0..3 {
            let Tick::Yield(f) = c.on_tick() else {
                panic!("timed out after waiting, not running")
            };
            tokio::time::sleep(30 * MS).await;
            f.await;
        }
        assert!(c.times.wall() >= 90 * MS);
        assert!(c.guest_time() <= 3 * MS, "{:?}", c.guest_time());
        // The wall-time measure alone excludes the waits as well.
        assert!(c.times.busy() < 10 * MS, "{:?}", c.times.busy());
    }

    #[test]
    fn ticks_bound_a_descheduled_thread() {
        let mut c = HookClock::new(20 * MS, MS);
        c.start();
        // The OS kept the thread off the CPU for 25 ms: one tick seen, not 25.
        std::thread::sleep(25 * MS);
        assert!(!over(c.on_tick()));
        assert_eq!(c.guest_time(), MS);
    }

    #[test]
    fn a_running_guest_reaches_its_deadline() {
        let mut c = HookClock::new(5 * MS, MS);
        c.start();
        let mut ticks = 0;
        loop {
            std::thread::sleep(MS);
            ticks += 1;
            if over(c.on_tick()) {
                break;
            }
            assert!(ticks < 50, "never timed out");
        }
        assert_eq!(ticks, 5);
    }

    #[test]
    fn host_time_is_not_guest_time_nor_hard_bound() {
        let mut c = HookClock::new(2 * MS, MS);
        c.start();
        c.enter_host();
        std::thread::sleep(30 * MS);
        assert!(c.times.wall() < 2 * MS);
        c.leave_host();
        assert!(!over(c.on_tick()));
    }

    #[test]
    fn the_hard_bound_ends_a_hook_whose_ticks_lag() {
        let mut c = HookClock::new(2 * MS, MS);
        c.start();
        // One tick seen in 25 ms of wall time (a starved ticker): past 10 x 2 ms.
        std::thread::sleep(25 * MS);
        assert!(over(c.on_tick()));
    }

    #[tokio::test]
    async fn the_hard_bound_ends_a_hook_blocked_outside_guest_code() {
        let mut c = HookClock::new(2 * MS, MS);
        c.start();
        let t = Instant::now();
        let r = c.timer().run(std::future::pending::<()>()).await;
        assert!(r.is_none());
        assert!(t.elapsed() >= 20 * MS, "{:?}", t.elapsed());
        assert!(t.elapsed() < 500 * MS, "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn the_hard_bound_waits_out_a_slow_host_import() {
        let mut c = HookClock::new(2 * MS, MS);
        c.start();
        let times = c.times.clone();
        let hook = async move {
            times.in_host_since.store(times.now(), Relaxed);
            tokio::time::sleep(60 * MS).await;
            7
        };
        assert_eq!(c.timer().run(hook).await, Some(7));
    }

    #[test]
    fn start_resets_the_hook() {
        let mut c = HookClock::new(20 * MS, MS);
        c.start();
        c.enter_host();
        c.on_tick();
        c.start();
        assert_eq!(c.ticks, 0);
        assert_eq!(c.times.in_host_since.load(Relaxed), 0);
        assert_eq!(c.guest_time(), Duration::ZERO);
    }
}
