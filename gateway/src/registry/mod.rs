//! The agent registry: who may call. Agents and their keys live in the store; agents declared
//! in `palisade.toml` are synced into it at start and on every reload (GitOps), the rest are
//! managed through the admin API.
//!
//! Keys are looked up by their SHA-256 only, with a short-lived cache in front of the store so a
//! call does not pay a database round trip. Changes made through this gateway clear the cache at
//! once; changes made through another replica are seen within [`CACHE_TTL`].
//!
//! The cache is a bounded LRU ([`CACHE_MAX`] keys; the least recently used goes first, so a
//! flood of random keys cannot evict the working set all at once). A key the store does not
//! know is remembered as unknown for [`NEGATIVE_TTL`] (a second LRU), so an agent retrying a
//! revoked or mistyped key costs no store lookup. A key never seen before is first checked
//! against a directory of every live key's hash (read from the store at most once per
//! [`DIRECTORY_TTL`], and at once after a change made here): a key not in it is refused with no
//! store lookup, so a flood of random keys costs one directory read a second, not one lookup
//! each. Lookups of keys in the directory run at most [`MISS_LOOKUPS`] at a time. Failed
//! authentications are counted ([`failures::AuthFailures`]) rather than audited one row each.

pub mod failures;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LruCache;

use palisade_store::{ConfigAgent, KeyAuth, NewAgent, Store, StoreError, SyncReport};

use crate::core::error::CallError;
use crate::core::settings::AgentSettings;

/// How long a key lookup is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Known keys kept in the cache, at most.
pub const CACHE_MAX: usize = 50_000;
/// How long a key the store did not know is refused without asking it again. Short: a key
/// created through another replica works here after at most this long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Unknown keys remembered, at most.
pub const NEGATIVE_MAX: usize = 100_000;
/// Store lookups of uncached keys running at once, at most.
pub const MISS_LOOKUPS: usize = 8;
/// How long the directory of live key hashes is trusted: a key created through another
/// replica works here after at most this long.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(1);

/// Every live key's hash, as last read from the store.
#[derive(Default)]
struct Directory {
    hashes: std::collections::HashSet<String>,
    read_at: Option<Instant>,
}

impl Directory {
    /// `Some(known)` while the directory is fresh enough to answer.
    fn answer(&self, hash: &str) -> Option<bool> {
        if self.hashes.contains(hash) {
            return Some(true);
        }
        self.read_at
            .filter(|t| t.elapsed() < DIRECTORY_TTL)
            .map(|_| false)
    }
}

type Flights = Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<Found>>>>;

/// Takes a finished (or abandoned) lookup off the map of lookups under way.
struct Landed<'a> {
    flights: &'a Flights,
    hash: &'a str,
    flight: &'a Arc<tokio::sync::OnceCell<Found>>,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(self.hash)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            flights.remove(self.hash);
        }
    }
}

/// A registered agent, as the plugins' `call.agent` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub team: String,
    pub labels: Vec<(String, String)>,
    /// Its own rate and concurrency limits (the host enforces them; plugins do not see them).
    #[serde(skip)]
    pub limits: palisade_store::AgentLimits,
}

/// The label under which plugins see the budgets the registry holds for an agent (set with
/// the admin API or `[[agents]] budgets`), as JSON in the `budget` plugin's limits format,
/// e.g. `{"usd":{"day":0.01}}`. The `budget` plugin enforces them.
pub const BUDGETS_LABEL: &str = "palisade.budgets";

impl From<&palisade_store::Agent> for Agent {
    fn from(a: &palisade_store::Agent) -> Self {
        let mut labels: Vec<(String, String)> = a
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != BUDGETS_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if a.budgets.as_object().is_some_and(|o| !o.is_empty()) {
            labels.push((BUDGETS_LABEL.to_string(), a.budgets.to_string()));
        }
        Agent {
            id: a.id.clone(),
            name: a.name.clone(),
            owner: a.owner.clone(),
            team: a.team.clone(),
            labels,
            limits: a.limits,
        }
    }
}

/// A key's lookup, with the plugins' view of its agent built once (labels, registry budgets),
/// not on every call.
type Cached = (Instant, (KeyAuth, Arc<Agent>));
/// What a lookup finds: the key's agent, or nothing.
type Found = Option<(KeyAuth, Arc<Agent>)>;

pub struct Registry {
    store: Store,
    cache: Mutex<LruCache<String, Cached>>,
    /// Key hashes the store did not know, and when it said so.
    unknown: Mutex<LruCache<String, Instant>>,
    misses: tokio::sync::Semaphore,
    /// Store lookups under way, by key hash, so concurrent requests with one key share one.
    flights: Flights,
    directory: Mutex<Directory>,
    /// One directory read at a time; the others wait for it and use what it read.
    reading: tokio::sync::Mutex<()>,
    failures: Arc<failures::AuthFailures>,
}

impl Registry {
    pub fn new(store: Store) -> Registry {
        Registry {
            store,
            cache: Mutex::new(LruCache::new(CACHE_MAX)),
            unknown: Mutex::new(LruCache::new(NEGATIVE_MAX)),
            misses: tokio::sync::Semaphore::new(MISS_LOOKUPS),
            flights: Mutex::new(std::collections::HashMap::new()),
            directory: Mutex::new(Directory::default()),
            reading: tokio::sync::Mutex::new(()),
            failures: Arc::new(failures::AuthFailures::default()),
        }
    }

    /// Failed authentications, counted (for `/metrics`).
    pub fn failures(&self) -> &Arc<failures::AuthFailures> {
        &self.failures
    }

    /// Forget cached lookups (after a change to agents or keys).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.dir().read_at = None;
    }

    fn dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a key with this hash may exist: from the directory, read again when stale.
    async fn may_exist(&self, hash: &str) -> Result<bool, CallError> {
        if let Some(known) = self.dir().answer(hash) {
            return Ok(known);
        }
        let _one = self.reading.lock().await;
        // Another request may have read it while this one waited.
        if let Some(known) = self.dir().answer(hash) {
            return Ok(known);
        }
        self.failures.looked_up();
        let hashes = self
            .store
            .live_key_hashes()
            .await
            .map_err(|e| CallError::Internal(format!("agent registry unavailable: {e}")))?;
        let mut d = self.dir();
        d.hashes = hashes.into_iter().collect();
        d.read_at = Some(Instant::now());
        Ok(d.hashes.contains(hash))
    }

    /// Store lookups made for keys since start (cache misses), for tests and `/metrics`.
    pub fn store_lookups(&self) -> u64 {
        self.failures.lookups()
    }

    /// The active agent holding this key, or why not. A refusal is counted in
    /// [`Registry::failures`].
    pub async fn authenticate(&self, key: &str) -> Result<(Arc<Agent>, String), CallError> {
        let found = self.lookup(key).await?;
        let refused = |reason: failures::Reason, message: &'static str| {
            self.failures.note(reason);
            Err(CallError::Unauthorized(message))
        };
        match found {
            None => refused(failures::Reason::UnknownKey, "unknown or revoked agent key"),
            Some((a, _)) if !a.is_active() => {
                refused(failures::Reason::Suspended, "agent is suspended")
            }
            Some((a, view)) => Ok((view, a.agent.id.clone())),
        }
    }

    /// A request that carried no key at all: counted like the other refusals.
    pub fn missing_key(&self) -> CallError {
        self.failures.note(failures::Reason::MissingKey);
        CallError::Unauthorized("missing API key: send `Authorization: Bearer <agent key>`")
    }

    /// The key's agent from the caches, else from the store (and cached either way).
    async fn lookup(&self, key: &str) -> Result<Found, CallError> {
        let hash = palisade_store::hash_secret(key);
        if let Some(found) = self.cached(&hash) {
            return Ok(found);
        }
        // One store lookup per key however many requests carry it at once (the others wait
        // for its answer), and at most MISS_LOOKUPS keys looked up at a time.
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            flights
                .entry(hash.clone())
                .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                .clone()
        };
        // Whoever ends first (or is cancelled) takes the flight off the map.
        let _landed = Landed {
            flights: &self.flights,
            hash: &hash,
            flight: &flight,
        };
        flight
            .get_or_try_init(|| self.lookup_store(key, &hash))
            .await
            .cloned()
    }

    async fn lookup_store(&self, key: &str, hash: &str) -> Result<Found, CallError> {
        // Not even in the directory: unknown, without a lookup (and without filling the
        // negative cache with a flood's keys). Checked before queueing for a lookup, so known
        // keys whose cache entry aged never wait behind a flood.
        if !self.may_exist(hash).await? {
            return Ok(None);
        }
        let _turn = self
            .misses
            .acquire()
            .await
            .map_err(|_| CallError::Internal("agent registry closed".into()))?;
        if let Some(found) = self.cached(hash) {
            return Ok(found);
        }
        self.failures.looked_up();
        let found = self
            .store
            .authenticate(key)
            .await
            .map_err(|e| CallError::Internal(format!("agent registry unavailable: {e}")))?;
        let found = found.map(|a| {
            let view = Arc::new(Agent::from(&a.agent));
            (a, view)
        });
        match &found {
            Some(f) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(hash.to_string(), (Instant::now(), f.clone()));
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                unknown.insert(hash.to_string(), Instant::now());
            }
        }
        Ok(found)
    }

    /// `Some` when a cache answers: `Some(None)` for a key known to be unknown.
    #[allow(clippy::option_option)]
    fn cached(&self, hash: &str) -> Option<Found> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, found)) = cache.get(hash) {
                if at.elapsed() < CACHE_TTL {
                    return Some(Some(found.clone()));
                }
                cache.remove(hash);
            }
        }
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        match unknown.get(hash) {
            Some(at) if at.elapsed() < NEGATIVE_TTL => Some(None),
            Some(_) => {
                unknown.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Make the store's config-declared agents match the config.
    pub async fn sync_config(&self, agents: &[AgentSettings]) -> Result<SyncReport, StoreError> {
        let declared: Vec<ConfigAgent> = agents
            .iter()
            .map(|a| ConfigAgent {
                agent: NewAgent {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    owner: a.owner.clone(),
                    team: a.team.clone(),
                    description: a.description.clone(),
                    purpose: a.purpose.clone(),
                    labels: a.labels.iter().cloned().collect(),
                    models: a.models.clone(),
                    tools: a.tools.clone(),
                    budgets: a.budgets.clone(),
                    limits: palisade_store::AgentLimits {
                        rpm: a.limits.rpm,
                        tpm: a.limits.tpm,
                        concurrent: a.limits.concurrent,
                    },
                },
                key_sha256: vec![hex::encode(a.key_sha256)],
            })
            .collect();
        let report = self.store.sync_config_agents(&declared).await?;
        self.invalidate();
        Ok(report)
    }
}
