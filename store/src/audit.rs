//! The audit log: one event per call and per admin action, hash-chained so that a changed or
//! removed row is found by [`Store::verify_audit`].
//!
//! # The chain
//!
//! Rows are numbered `seq = 1, 2, 3, ...` without gaps. Each row stores `prev_hash` (the `hash`
//! of row `seq - 1`, or [`GENESIS_HASH`] for row 1) and its own `hash`:
//!
//! ```text
//! hash = lowercase_hex(SHA-256(
//!     "palisade-audit-v1\n" || prev_hash (64 ASCII hex digits) ||
//!     field(seq) || field(time_ms) || field(request_id) || field(run_id) || field(chain) ||
//!     field(agent) || field(owner) || field(team) || field(kind) || field(target) ||
//!     field(provider) || field(decided_by) || field(verdicts) || field(policy_version) ||
//!     field(input_tokens) || field(output_tokens) || field(cost_micro_usd) ||
//!     field(latency_us) || field(status) || field(error_code) || field(truncated) || field(body)
//! ))
//! ```
//!
//! where each field is encoded from its stored column value:
//! - NULL (an absent optional field): the byte `0x00`;
//! - an integer: `0x01` then the value as 8 bytes, big-endian two's complement (`truncated` is
//!   the integer 0 or 1);
//! - text: `0x02`, the UTF-8 length as 8 bytes big-endian, then the UTF-8 bytes. `chain` and
//!   `verdicts` are text: the JSON exactly as stored (`chain` is a JSON array of strings).
//!
//! One table row, `audit_head`, holds the last `seq` and its `hash`. An append locks it, inserts
//! its rows after it and advances it in the same transaction (a row lock on PostgreSQL, the write
//! lock on SQLite), so any number of gateway processes appending to one database form one chain.
//! The head also reveals a deleted tail. What no chain can reveal is a rewrite of the whole log
//! from some row on, head included: anchor [`VerifyReport::last_hash`] somewhere else (a ticket,
//! a log shipper) if that matters.

use futures_util::{Stream, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Database, Pool, QueryBuilder};

use crate::lease::{LeaseReport, LeaseSync, sync_in_tx};
use crate::{BeginWrite, Store, StoreError, on_pool};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows per INSERT statement when appending a batch.
const INSERT_CHUNK: usize = 100;
/// Rows the stream reads ahead of its consumer.
const STREAM_BUFFER: usize = 256;

/// An event to append; the store adds `seq` and the hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewAuditEvent {
    /// When it happened, unix milliseconds.
    pub time_ms: i64,
    pub request_id: String,
    /// The agent run this call belongs to.
    pub run_id: String,
    /// The delegation chain: who acted for whom, outermost first.
    pub chain: Vec<String>,
    pub agent: Option<String>,
    /// The person accountable (the agent's owner, or the admin acting).
    pub owner: Option<String>,
    pub team: Option<String>,
    /// What kind of event: `llm`, `mcp`, `admin`, ...
    pub kind: String,
    /// What was reached: a model, a tool, an admin resource.
    pub target: String,
    pub provider: Option<String>,
    /// The plugin whose verdict decided the outcome, if one did.
    pub decided_by: Option<String>,
    /// Each plugin's verdict, as the gateway records them.
    pub verdicts: serde_json::Value,
    pub policy_version: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micro_usd: i64,
    pub latency_us: i64,
    /// The HTTP status answered.
    pub status: i64,
    pub error_code: Option<String>,
    /// Whether the answer was cut short.
    pub truncated: bool,
    /// The request or answer body, when the config asks to keep it.
    pub body: Option<String>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub time_ms: i64,
    pub request_id: String,
    pub run_id: String,
    pub chain: Vec<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub kind: String,
    pub target: String,
    pub provider: Option<String>,
    pub decided_by: Option<String>,
    pub verdicts: serde_json::Value,
    pub policy_version: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micro_usd: i64,
    pub latency_us: i64,
    pub status: i64,
    pub error_code: Option<String>,
    pub truncated: bool,
    pub body: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// Which events to read; every set field must match. Times: `from_ms` inclusive, `to_ms`
/// exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditFilter {
    pub agent: Option<String>,
    pub team: Option<String>,
    pub owner: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub status: Option<i64>,
    pub run_id: Option<String>,
    pub request_id: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only rows after this seq (to page through the log).
    pub after_seq: Option<i64>,
    /// At most this many rows.
    pub limit: Option<i64>,
}

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Rows checked (up to the first bad one).
    pub rows: u64,
    pub ok: bool,
    pub first_bad: Option<BadRow>,
    /// The head when verification started: the last seq and its hash, worth keeping elsewhere.
    pub last_seq: i64,
    pub last_hash: String,
}

/// The first row at which the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub seq: i64,
    pub reason: String,
}

const AUDIT_COLUMNS: &str = "seq, time_ms, request_id, run_id, chain, agent, owner, team, kind, \
     target, provider, decided_by, verdicts, policy_version, input_tokens, output_tokens, \
     cost_micro_usd, latency_us, status, error_code, truncated, body, prev_hash, hash";

/// A row as stored, `chain` and `verdicts` as their JSON text.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    time_ms: i64,
    request_id: String,
    run_id: String,
    chain: String,
    agent: Option<String>,
    owner: Option<String>,
    team: Option<String>,
    kind: String,
    target: String,
    provider: Option<String>,
    decided_by: Option<String>,
    verdicts: String,
    policy_version: String,
    input_tokens: i64,
    output_tokens: i64,
    cost_micro_usd: i64,
    latency_us: i64,
    status: i64,
    error_code: Option<String>,
    truncated: bool,
    body: Option<String>,
    prev_hash: String,
    hash: String,
}

/// The canonical encoding of the module doc, fed straight into SHA-256.
struct Canon(Sha256);

impl Canon {
    fn int(&mut self, v: i64) {
        self.0.update([1u8]);
        self.0.update(v.to_be_bytes());
    }
    fn text(&mut self, s: &str) {
        self.0.update([2u8]);
        self.0.update((s.len() as u64).to_be_bytes());
        self.0.update(s.as_bytes());
    }
    fn opt(&mut self, s: &Option<String>) {
        match s {
            None => self.0.update([0u8]),
            Some(s) => self.text(s),
        }
    }
}

impl AuditRow {
    /// The row for `e`, its strings made safe for both backends ([`crate::safe`]) before
    /// anything is hashed, so the hash covers exactly what is stored.
    fn from_event(e: &NewAuditEvent) -> Result<AuditRow, StoreError> {
        if e.kind.is_empty() {
            return Err(StoreError::Invalid(
                "audit event kind must not be empty".into(),
            ));
        }
        let mut e = e.clone();
        crate::safe::audit_event(&mut e);
        let json = |v: Result<String, serde_json::Error>| {
            v.map_err(|e| StoreError::Invalid(format!("audit event JSON: {e}")))
        };
        Ok(AuditRow {
            seq: 0,
            time_ms: e.time_ms,
            request_id: e.request_id,
            run_id: e.run_id,
            chain: json(serde_json::to_string(&e.chain))?,
            agent: e.agent,
            owner: e.owner,
            team: e.team,
            kind: e.kind,
            target: e.target,
            provider: e.provider,
            decided_by: e.decided_by,
            verdicts: json(serde_json::to_string(&e.verdicts))?,
            policy_version: e.policy_version,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cost_micro_usd: e.cost_micro_usd,
            latency_us: e.latency_us,
            status: e.status,
            error_code: e.error_code,
            truncated: e.truncated,
            body: e.body,
            prev_hash: String::new(),
            hash: String::new(),
        })
    }

    /// The row's hash, from its fields and `self.prev_hash`.
    fn compute_hash(&self) -> String {
        let mut c = Canon(Sha256::new());
        c.0.update(b"palisade-audit-v1\n");
        c.0.update(self.prev_hash.as_bytes());
        c.int(self.seq);
        c.int(self.time_ms);
        c.text(&self.request_id);
        c.text(&self.run_id);
        c.text(&self.chain);
        c.opt(&self.agent);
        c.opt(&self.owner);
        c.opt(&self.team);
        c.text(&self.kind);
        c.text(&self.target);
        c.opt(&self.provider);
        c.opt(&self.decided_by);
        c.text(&self.verdicts);
        c.text(&self.policy_version);
        c.int(self.input_tokens);
        c.int(self.output_tokens);
        c.int(self.cost_micro_usd);
        c.int(self.latency_us);
        c.int(self.status);
        c.opt(&self.error_code);
        c.int(i64::from(self.truncated));
        c.opt(&self.body);
        hex::encode(c.0.finalize())
    }

    fn into_record(self) -> Result<AuditRecord, StoreError> {
        let corrupt = |what: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("audit row {}: {what}: {e}", self.seq))
        };
        let chain = serde_json::from_str(&self.chain).map_err(|e| corrupt("chain", e))?;
        let verdicts = serde_json::from_str(&self.verdicts).map_err(|e| corrupt("verdicts", e))?;
        Ok(AuditRecord {
            seq: self.seq,
            time_ms: self.time_ms,
            request_id: self.request_id,
            run_id: self.run_id,
            chain,
            agent: self.agent,
            owner: self.owner,
            team: self.team,
            kind: self.kind,
            target: self.target,
            provider: self.provider,
            decided_by: self.decided_by,
            verdicts,
            policy_version: self.policy_version,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_micro_usd: self.cost_micro_usd,
            latency_us: self.latency_us,
            status: self.status,
            error_code: self.error_code,
            truncated: self.truncated,
            body: self.body,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// Walks the rows in seq order and stops at the first break.
struct Checker {
    head_seq: i64,
    head_hash: String,
    rows: u64,
    last_seq: i64,
    last_hash: String,
}

impl Checker {
    fn new(head_seq: i64, head_hash: String) -> Checker {
        Checker {
            head_seq,
            head_hash,
            rows: 0,
            last_seq: 0,
            last_hash: GENESIS_HASH.to_string(),
        }
    }

    /// Check the next row; the first break, if this row shows one.
    fn check(&mut self, row: &AuditRow) -> Option<BadRow> {
        let expected = self.last_seq + 1;
        if row.seq != expected {
            let reason = if row.seq == expected + 1 {
                format!("row {expected} is missing (deleted)")
            } else {
                format!("rows {expected} to {} are missing (deleted)", row.seq - 1)
            };
            return Some(BadRow {
                seq: expected,
                reason,
            });
        }
        if row.compute_hash() != row.hash {
            return Some(BadRow {
                seq: row.seq,
                reason: format!("row {} does not match its hash (changed)", row.seq),
            });
        }
        if row.prev_hash != self.last_hash {
            // The row is consistent in itself but chained to another predecessor: the one before
            // was rewritten with a new hash (or this one was forged whole).
            return Some(if self.last_seq == 0 {
                BadRow {
                    seq: row.seq,
                    reason: "the first row does not start from the genesis hash".into(),
                }
            } else {
                BadRow {
                    seq: self.last_seq,
                    reason: format!(
                        "row {} was rewritten: its hash is not the one row {} was chained to",
                        self.last_seq, row.seq
                    ),
                }
            });
        }
        self.rows += 1;
        self.last_seq = row.seq;
        self.last_hash.clone_from(&row.hash);
        None
    }

    /// After the last row: does the log reach the head?
    fn finish(&self) -> Option<BadRow> {
        if self.last_seq < self.head_seq {
            let first = self.last_seq + 1;
            let reason = if first == self.head_seq {
                format!("row {first} is missing (deleted from the end of the log)")
            } else {
                format!(
                    "rows {first} to {} are missing (deleted from the end of the log)",
                    self.head_seq
                )
            };
            return Some(BadRow { seq: first, reason });
        }
        if self.last_hash != self.head_hash {
            return Some(BadRow {
                seq: self.last_seq,
                reason: format!(
                    "row {} was rewritten: its hash is not the one the head records",
                    self.last_seq
                ),
            });
        }
        None
    }

    fn report(self, first_bad: Option<BadRow>) -> VerifyReport {
        VerifyReport {
            rows: self.rows,
            ok: first_bad.is_none(),
            first_bad,
            last_seq: self.head_seq,
            last_hash: self.head_hash,
        }
    }
}

/// A query builder for `pool`'s database (lets the generic bodies below name the backend).
fn builder<'a, DB: Database>(_pool: &Pool<DB>, sql: &str) -> QueryBuilder<'a, DB> {
    QueryBuilder::new(sql)
}

/// Append `AND column = value` for each set field of `f`, values bound as parameters.
macro_rules! push_filter {
    ($qb:expr, $f:expr) => {{
        let f = $f;
        for (column, value) in [
            ("agent", &f.agent),
            ("team", &f.team),
            ("owner", &f.owner),
            ("kind", &f.kind),
            ("target", &f.target),
            ("run_id", &f.run_id),
            ("request_id", &f.request_id),
        ] {
            if let Some(v) = value {
                // As stored: a search for what the agent sent finds the row.
                $qb.push(" AND ")
                    .push(column)
                    .push(" = ")
                    .push_bind(crate::safe::text(v).into_owned());
            }
        }
        if let Some(v) = f.status {
            $qb.push(" AND status = ").push_bind(v);
        }
        if let Some(v) = f.from_ms {
            $qb.push(" AND time_ms >= ").push_bind(v);
        }
        if let Some(v) = f.to_ms {
            $qb.push(" AND time_ms < ").push_bind(v);
        }
        if let Some(v) = f.after_seq {
            $qb.push(" AND seq > ").push_bind(v);
        }
    }};
}

/// Lock the head, chain `rows` after it (`n` of them), insert them and advance the head: one
/// transaction. The last seq.
async fn insert_chained(
    store: &Store,
    mut rows: Vec<AuditRow>,
    n: i64,
    insert: &str,
    sync: Option<&LeaseSync>,
) -> Result<(i64, LeaseReport), StoreError> {
    on_pool!(store, |pool| {
        let mut tx = pool.begin_write().await?;
        // Locks the head until commit: appenders queue here.
        let (end, head_hash): (i64, String) =
            sqlx::query_as("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
                .bind(n)
                .fetch_one(&mut *tx)
                .await?;
        let mut prev = head_hash;
        for (seq, row) in (end - n + 1..).zip(rows.iter_mut()) {
            row.seq = seq;
            row.prev_hash = std::mem::take(&mut prev);
            row.hash = row.compute_hash();
            prev.clone_from(&row.hash);
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut qb = builder(pool, insert);
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.seq)
                    .push_bind(r.time_ms)
                    .push_bind(&r.request_id)
                    .push_bind(&r.run_id)
                    .push_bind(&r.chain)
                    .push_bind(&r.agent)
                    .push_bind(&r.owner)
                    .push_bind(&r.team)
                    .push_bind(&r.kind)
                    .push_bind(&r.target)
                    .push_bind(&r.provider)
                    .push_bind(&r.decided_by)
                    .push_bind(&r.verdicts)
                    .push_bind(&r.policy_version)
                    .push_bind(r.input_tokens)
                    .push_bind(r.output_tokens)
                    .push_bind(r.cost_micro_usd)
                    .push_bind(r.latency_us)
                    .push_bind(r.status)
                    .push_bind(&r.error_code)
                    .push_bind(r.truncated)
                    .push_bind(&r.body)
                    .push_bind(&r.prev_hash)
                    .push_bind(&r.hash);
            });
            qb.build().execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
        let results = match sync {
            Some(sync) => sync_in_tx!(tx, sync)?,
            None => LeaseReport::default(),
        };
        tx.commit().await?;
        Ok((end, results))
    })
}

impl Store {
    /// Append events, in order, in one transaction; their seqs. Each row is chained to the one
    /// before, whichever process wrote it.
    pub async fn append_audit(&self, events: &[NewAuditEvent]) -> Result<Vec<i64>, StoreError> {
        self.append_audit_with(events, None)
            .await
            .map(|(seqs, _)| seqs)
    }

    /// [`Store::append_audit`], and in the same transaction a ledger [`LeaseSync`] (the spend
    /// the calls of these events settled), so both commit or neither does.
    pub async fn append_audit_with(
        &self,
        events: &[NewAuditEvent],
        sync: Option<LeaseSync>,
    ) -> Result<(Vec<i64>, LeaseReport), StoreError> {
        if events.is_empty() {
            return match sync {
                Some(sync) => Ok((Vec::new(), self.sync_leases(sync).await?)),
                None => Ok((Vec::new(), LeaseReport::default())),
            };
        }
        let mut sync = sync;
        if let Some(sync) = &mut sync {
            sync.changes.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let rows = events
            .iter()
            .map(AuditRow::from_event)
            .collect::<Result<Vec<_>, _>>()?;
        let n = i64::try_from(rows.len())
            .map_err(|_| StoreError::Invalid("too many audit events in one batch".into()))?;
        let insert = format!("INSERT INTO audit_events ({}) ", AUDIT_COLUMNS);
        let (end, results) = self
            .detached(move |store| async move {
                insert_chained(&store, rows, n, &insert, sync.as_ref()).await
            })
            .await?;
        Ok(((end - n + 1..=end).collect(), results))
    }

    /// The chain's head: the last seq (0 when empty) and its hash.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let head: Option<(i64, String)> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_optional(pool)
                .await?
        });
        head.ok_or_else(|| StoreError::Corrupt("the audit_head row is missing".into()))
    }

    /// Walk the whole chain, streaming, and report the first changed or removed row: a row
    /// that no longer matches its hash, a gap in seq, a row chained to a different predecessor,
    /// or rows missing from the end of the log. Rows appended while it runs are not checked.
    pub async fn verify_audit(&self) -> Result<VerifyReport, StoreError> {
        let (head_seq, head_hash) = self.audit_head().await?;
        let mut checker = Checker::new(head_seq, head_hash);
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq <= $1 ORDER BY seq");
        let bad = on_pool!(self, |pool| {
            let mut rows = sqlx::query_as::<_, AuditRow>(&sql)
                .bind(head_seq)
                .fetch(pool);
            let mut bad = None;
            while let Some(row) = rows.try_next().await? {
                bad = checker.check(&row);
                if bad.is_some() {
                    break;
                }
            }
            bad
        });
        let bad = bad.or_else(|| checker.finish());
        Ok(checker.report(bad))
    }

    /// The events matching `filter`, in seq order, streamed from the database: rows are read as
    /// the consumer takes them (a bounded read-ahead), so an export of any size runs in constant
    /// memory. Dropping the stream ends the query. Must be called within a Tokio runtime.
    pub fn audit_stream(
        &self,
        filter: AuditFilter,
    ) -> impl Stream<Item = Result<AuditRecord, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.stream_into(&filter, &tx).await {
                // The consumer may be gone already; then nobody needs the error.
                let _ = tx.send(Err(e)).await;
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    async fn stream_into(
        &self,
        f: &AuditFilter,
        tx: &tokio::sync::mpsc::Sender<Result<AuditRecord, StoreError>>,
    ) -> Result<(), StoreError> {
        let select = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1");
        on_pool!(self, |pool| {
            let mut qb = builder(pool, &select);
            push_filter!(qb, f);
            qb.push(" ORDER BY seq");
            if let Some(limit) = f.limit {
                qb.push(" LIMIT ").push_bind(limit.max(0));
            }
            let mut rows = qb.build_query_as::<AuditRow>().fetch(pool);
            while let Some(row) = rows.try_next().await? {
                if tx.send(row.into_record()).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str) -> AuditRow {
        let mut r = AuditRow::from_event(&NewAuditEvent {
            time_ms: 1000 + seq,
            kind: "llm".into(),
            target: "gpt".into(),
            ..Default::default()
        })
        .unwrap();
        r.seq = seq;
        r.prev_hash = prev.to_string();
        r.hash = r.compute_hash();
        r
    }

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let r = row(seq, &prev);
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    fn run(rows: &[AuditRow], head: (i64, &str)) -> VerifyReport {
        let mut c = Checker::new(head.0, head.1.to_string());
        let mut bad = None;
        for r in rows {
            bad = c.check(r);
            if bad.is_some() {
                break;
            }
        }
        let bad = bad.or_else(|| c.finish());
        c.report(bad)
    }

    #[test]
    fn canonical_hash_is_stable() {
        // Pinned: a change to the canonical form breaks every stored chain.
        let r = row(1, GENESIS_HASH);
        assert_eq!(r.chain, "[]");
        assert_eq!(r.verdicts, "null");
        let mut h = Sha256::new();
        h.update(b"palisade-audit-v1\n");
        h.update(GENESIS_HASH.as_bytes());
        let int = |h: &mut Sha256, v: i64| {
            h.update([1u8]);
            h.update(v.to_be_bytes());
        };
        let text = |h: &mut Sha256, s: &str| {
            h.update([2u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        int(&mut h, 1);
        int(&mut h, 1001);
        text(&mut h, "");
        text(&mut h, "");
        text(&mut h, "[]");
        h.update([0u8, 0, 0]);
        text(&mut h, "llm");
        text(&mut h, "gpt");
        h.update([0u8, 0]);
        text(&mut h, "null");
        text(&mut h, "");
        for _ in 0..5 {
            int(&mut h, 0);
        }
        h.update([0u8]);
        int(&mut h, 0);
        h.update([0u8]);
        assert_eq!(r.hash, hex::encode(h.finalize()));
    }

    #[test]
    fn none_and_empty_hash_differently() {
        let mut a = row(1, GENESIS_HASH);
        let mut b = a.clone();
        a.agent = None;
        b.agent = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
        // Moving bytes between adjacent fields changes the hash.
        a.agent = Some("ab".into());
        a.owner = Some("c".into());
        b.agent = Some("a".into());
        b.owner = Some("bc".into());
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        let report = run(&rows, (5, &rows[4].hash));
        assert!(report.ok, "{report:?}");
        assert_eq!(report.rows, 5);
        assert!(run(&[], (0, GENESIS_HASH)).ok);
    }

    #[test]
    fn finds_each_kind_of_break() {
        let rows = chain(5);
        let head = (5, rows[4].hash.as_str());

        let mut changed = rows.clone();
        changed[2].status = 500;
        assert_eq!(run(&changed, head).first_bad.unwrap().seq, 3);

        let mut rehashed = rows.clone();
        rehashed[2].status = 500;
        rehashed[2].hash = rehashed[2].compute_hash();
        assert_eq!(run(&rehashed, head).first_bad.unwrap().seq, 3);

        let mut middle = rows.clone();
        middle.remove(1);
        assert_eq!(run(&middle, head).first_bad.unwrap().seq, 2);

        let mut first = rows.clone();
        first.remove(0);
        assert_eq!(run(&first, head).first_bad.unwrap().seq, 1);

        let mut tail = rows.clone();
        tail.truncate(3);
        let bad = run(&tail, head).first_bad.unwrap();
        assert_eq!(bad.seq, 4);
        assert!(bad.reason.contains("4 to 5"), "{}", bad.reason);

        let mut last = rows.clone();
        last[4].body = Some("x".into());
        last[4].hash = last[4].compute_hash();
        assert_eq!(run(&last, head).first_bad.unwrap().seq, 5);
    }
}
