//! Budgets: the authoritative spend per budget, subject and window, and the
//! allowances nodes lease against it (reserve-then-settle).
//!
//! A node never asks per request. It reserves each model call from an
//! allowance it holds, settles the real cost afterwards, and a few times a
//! second sends one [`pb::AllowancesRequest`] for every ledger it touched:
//! spend to settle, allowance to give back, more allowance wanted. This
//! module applies those lines to the ledgers in the store by
//! compare-and-swap (one transaction per request, retried on conflict), so
//! replicas sharing a store never double-count nor over-grant. See
//! [`ledger`] for the arithmetic and ARCHITECTURE.md ("Budgets") for the
//! protocol.

pub mod alerts;
pub mod error;
pub mod ledger;
pub mod sweep;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aios_model::{Budget, Kind, OnExceed, Spec};
use aios_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

pub use self::error::BudgetError;
use self::ledger::{Line, Terms};
use crate::{
    auth::Scope,
    fleet::cache::{ConfigCache, Snapshot},
    keys,
    store::{Compare, Op, RangeRequest, SharedStore, TxnOutcome},
};

/// Most lines in one Allowances request.
pub const MAX_LINES: usize = 256;
/// How long an allowance lives unless renewed (the default of
/// `--budget-allowance-ttl`).
pub const DEFAULT_ALLOWANCE_TTL: Duration = Duration::from_secs(15);
/// Compare-and-swap attempts before a request gives up (UNAVAILABLE).
const MAX_ATTEMPTS: u32 = 32;
/// Distinct ledgers per transaction (store limit 128 operations).
const LEDGERS_PER_TXN: usize = 100;
/// A node whose clock is this far ahead may lease in the next window.
const WINDOW_SKEW: Duration = Duration::from_secs(5);

/// Where "now" comes from; tests move it by hand.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The budget ledgers of one replica. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    /// What both the writer and status reads use.
    ledgers: Arc<Ledgers>,
    writer: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("ttl", &self.ledgers.ttl)
            .finish()
    }
}

/// `(tenant, budget, window start, subject)`.
type LedgerId = (String, String, i64, String);

impl Budgets {
    /// Ledgers in `store`, budgets read from `cache`, allowances living
    /// `ttl`. Starts the writer task, which ends when every clone is gone.
    pub fn new(store: SharedStore, cache: ConfigCache, ttl: Duration) -> Self {
        Self::with_clock(store, cache, ttl, Arc::new(SystemTime::now))
    }

    /// [`Budgets::new`] reading time from `clock` (tests move it by hand).
    pub fn with_clock(store: SharedStore, cache: ConfigCache, ttl: Duration, clock: Clock) -> Self {
        let (writer, jobs) = mpsc::channel(1024);
        let ledgers = Arc::new(Ledgers {
            store,
            cache,
            ttl,
            clock,
        });
        tokio::spawn(write(ledgers.clone(), jobs));
        Self { ledgers, writer }
    }

    /// Deletes ledgers `retention` after their window ends, once an hour,
    /// until `shutdown` (see [`sweep`]).
    pub fn sweep_ledgers(
        &self,
        retention: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sweep::run(self.ledgers.clone(), retention, shutdown))
    }

    /// Applies a node's lines; one grant per line, in order. Requests
    /// arriving together are applied together: one writer per replica
    /// takes every request waiting and updates their ledgers in one
    /// transaction, so nodes served by the same replica never race each
    /// other; replicas sharing a store race by compare-and-swap.
    pub async fn allowances(
        &self,
        request: pb::AllowancesRequest,
    ) -> Result<Vec<pb::AllowanceGrant>, BudgetError> {
        check(&request)?;
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { request, reply })
            .await
            .map_err(|_| BudgetError::Unavailable("the budget writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| BudgetError::Unavailable("the budget writer has stopped".into()))?
    }

    /// The current window of every budget in `scope` (or the one named).
    pub async fn status(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Vec<pb::BudgetStatus>, BudgetError> {
        let Ledgers {
            store,
            cache,
            clock,
            ..
        } = self.ledgers.as_ref();
        let snapshot = cache.current();
        let now = now(clock);
        let now_ms = now.as_millisecond();
        let mut statuses = Vec::new();
        let mut found = false;
        for object in snapshot.objects.values() {
            if object.kind != Kind::Budget
                || !matches!(scope, Scope::All)
                    && !matches!(scope, Scope::Tenant(t) if *t == object.tenant)
                || !name.is_empty() && object.name != name
            {
                continue;
            }
            let Some(budget) = in_force(&snapshot, &object.tenant, &object.name) else {
                continue;
            };
            found = true;
            let window = budget.window_at(now);
            let prefix = ledger_prefix(&object.tenant, &object.name, window.start);
            let listing = store.range(RangeRequest::prefix(prefix.clone())).await?;
            let mut rows: Vec<(String, pb::BudgetLedger)> = Vec::new();
            for kv in &listing.kvs {
                let subject = decode_subject(&kv.key[prefix.len()..]);
                let ledger = pb::BudgetLedger::decode(kv.value.as_slice())
                    .map_err(|e| BudgetError::Corrupt(format!("{}: {e}", kv.key)))?;
                rows.push((subject, ledger));
            }
            // A budget with one subject always has a row, spent or not.
            if rows.is_empty()
                && (budget.scope.subject().is_some()
                    || budget.scope == aios_model::BudgetScope::Tenant)
            {
                rows.push((String::new(), pb::BudgetLedger::default()));
            }
            for (subject, ledger) in rows {
                statuses.push(status_of(
                    object, &budget, window, &subject, &ledger, now_ms,
                ));
            }
        }
        // A budget counting each subject separately has no rows until one
        // spends; it still exists.
        if !name.is_empty() && !found {
            let tenant = match scope {
                Scope::Tenant(t) => t.clone(),
                Scope::All => "*".into(),
            };
            return Err(BudgetError::NotFound {
                tenant,
                name: name.into(),
            });
        }
        statuses.sort_by(|a, b| {
            let key = |s: &pb::BudgetStatus| {
                let r = s.budget.clone().unwrap_or_default();
                (r.tenant, r.name, s.subject.clone())
            };
            key(a).cmp(&key(b))
        });
        Ok(statuses)
    }
}

/// One Allowances request waiting for the writer.
struct Job {
    request: pb::AllowancesRequest,
    reply: oneshot::Sender<Result<Vec<pb::AllowanceGrant>, BudgetError>>,
}

/// Most requests the writer applies in one round.
const JOBS_PER_ROUND: usize = 64;

/// The writer: takes every waiting request, applies them together.
async fn write(ledgers: Arc<Ledgers>, mut jobs: mpsc::Receiver<Job>) {
    let mut round = Vec::with_capacity(JOBS_PER_ROUND);
    while jobs.recv_many(&mut round, JOBS_PER_ROUND).await > 0 {
        let lines: Vec<(&str, &pb::AllowanceLine)> = round
            .iter()
            .flat_map(|job| {
                job.request
                    .lines
                    .iter()
                    .map(|line| (job.request.node_id.as_str(), line))
            })
            .collect();
        let result = ledgers.apply(&lines).await;
        drop(lines);
        match result {
            Ok(grants) => {
                let mut grants = grants.into_iter();
                for job in round.drain(..) {
                    let mine = grants.by_ref().take(job.request.lines.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                let text = error.to_string();
                let mut first = Some(error);
                for job in round.drain(..) {
                    let error = first
                        .take()
                        .unwrap_or_else(|| BudgetError::Unavailable(text.clone()));
                    let _ = job.reply.send(Err(error));
                }
            }
        }
    }
}

/// What the writer needs to apply lines.
struct Ledgers {
    store: SharedStore,
    cache: ConfigCache,
    ttl: Duration,
    clock: Clock,
}

impl Ledgers {
    /// Applies `(node id, line)` pairs; one grant per pair, in order.
    async fn apply(
        &self,
        lines: &[(&str, &pb::AllowanceLine)],
    ) -> Result<Vec<pb::AllowanceGrant>, BudgetError> {
        let snapshot = self.cache.current();
        let now = now(&self.clock);
        let now_ms = now.as_millisecond();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);

        // Lines by ledger, keeping arrival order within each ledger.
        let mut grants: Vec<pb::AllowanceGrant> = vec![pb::AllowanceGrant::default(); lines.len()];
        let mut by_ledger: BTreeMap<LedgerId, Vec<usize>> = BTreeMap::new();
        let mut budgets: HashMap<(String, String), Budget> = HashMap::new();
        for (i, (_, line)) in lines.iter().enumerate() {
            let (tenant, name) = line
                .budget
                .as_ref()
                .map_or(("", ""), |r| (r.tenant.as_str(), r.name.as_str()));
            match in_force(&snapshot, tenant, name) {
                Some(b) => {
                    budgets.insert((tenant.into(), name.into()), b);
                    by_ledger
                        .entry((
                            tenant.into(),
                            name.into(),
                            line.window_start,
                            line.subject.clone(),
                        ))
                        .or_default()
                        .push(i);
                }
                None => {
                    grants[i].error = format!(
                        "budget {tenant}/{name} is not in force (deleted, or not yet applied)"
                    );
                }
            }
        }

        let ledgers: Vec<(LedgerId, Vec<usize>)> = by_ledger.into_iter().collect();
        for chunk in ledgers.chunks(LEDGERS_PER_TXN) {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let keys: Vec<String> = chunk.iter().map(|(id, _)| ledger_key(id)).collect();
                let reads =
                    futures::future::try_join_all(keys.iter().map(|key| self.store.get(key)))
                        .await?;
                let mut compares = Vec::with_capacity(chunk.len());
                let mut ops = Vec::with_capacity(chunk.len());
                let mut answers = Vec::new();
                for (((id, indexes), read), key) in chunk.iter().zip(reads).zip(keys) {
                    let (mut ledger, revision) = match &read {
                        Some(kv) => (
                            pb::BudgetLedger::decode(kv.value.as_slice())
                                .map_err(|e| BudgetError::Corrupt(format!("{key}: {e}")))?,
                            kv.mod_revision,
                        ),
                        None => (pb::BudgetLedger::default(), 0),
                    };
                    let Some(budget) = budgets.get(&(id.0.clone(), id.1.clone())) else {
                        continue;
                    };
                    let terms = Terms {
                        limit: budget.limit.micros(),
                        leasable: budget.on_exceed != OnExceed::AlertOnly
                            && current(budget, now, id.2),
                        now_ms,
                        ttl_ms,
                    };
                    let mut changed = false;
                    for &i in indexes {
                        let (node, line) = lines[i];
                        let applied = ledger::apply(
                            &mut ledger,
                            &Line {
                                holder: format!("{node}/{}", line.incarnation),
                                seq: line.seq,
                                spent: line.spent_micros,
                                release: line.release_micros,
                                want: line.want_micros,
                            },
                            terms,
                            &budget.alert_threshold_percents,
                        );
                        changed |= applied.fresh;
                        for percent in &applied.crossed {
                            tracing::warn!(
                                tenant = %id.0, budget = %id.1, subject = %id.3, percent,
                                "budget alert threshold crossed"
                            );
                        }
                        let error =
                            match (line.want_micros > 0 && !terms.leasable, &budget.on_exceed) {
                                (false, _) => String::new(),
                                (true, OnExceed::AlertOnly) => {
                                    "ALERT_ONLY budgets lease nothing".into()
                                }
                                (true, _) => format!("window {} is not the current window", id.2),
                            };
                        answers.push((
                            i,
                            pb::AllowanceGrant {
                                held_micros: applied.held,
                                ttl_ms,
                                remaining_micros: applied.remaining,
                                spent_micros: applied.spent,
                                limit_micros: terms.limit,
                                error,
                            },
                        ));
                    }
                    if changed {
                        compares.push(Compare::ModRevision {
                            key: key.clone(),
                            equals: revision,
                        });
                        ops.push(Op::Put {
                            key,
                            value: ledger.encode_to_vec(),
                            lease: None,
                        });
                    }
                }
                let committed = ops.is_empty()
                    || matches!(
                        self.store.txn(compares, ops).await?,
                        TxnOutcome::Committed { .. }
                    );
                if committed {
                    for (i, grant) in answers {
                        grants[i] = grant;
                    }
                    break;
                }
                if attempt >= MAX_ATTEMPTS {
                    return Err(BudgetError::Contended(attempt));
                }
                // Another replica wrote the same ledgers: back off a little
                // (full jitter) so the two do not collide again.
                let ceiling = 1u64 << attempt.min(6);
                let pause = rand::random::<u64>() % ceiling + 1;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(grants)
    }
}

fn now(clock: &Clock) -> jiff::Timestamp {
    jiff::Timestamp::try_from(clock()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn status_of(
    object: &crate::fleet::cache::CachedObject,
    budget: &Budget,
    window: aios_model::Window,
    subject: &str,
    ledger: &pb::BudgetLedger,
    now_ms: i64,
) -> pb::BudgetStatus {
    let limit = budget.limit.micros();
    let spent = ledger.spent_micros;
    let reserved = ledger::reserved(ledger, now_ms);
    let remaining = ledger::remaining(ledger, limit, now_ms);
    let usd = |micros: i64| aios_model::Usd::from_micros(micros).to_f64();
    let timestamp = |seconds: i64| prost_types::Timestamp { seconds, nanos: 0 };
    pb::BudgetStatus {
        budget: Some(pb::ResourceRef {
            kind: pb::Kind::Budget as i32,
            tenant: object.tenant.clone(),
            name: object.name.clone(),
        }),
        window_start: window.end.map(|_| timestamp(window.start)),
        window_end: window.end.map(timestamp),
        limit_usd: usd(limit),
        spent_usd: usd(spent),
        reserved_usd: usd(reserved),
        remaining_usd: usd(remaining),
        percent_used: u32::try_from(i128::from(spent) * 100 / i128::from(limit.max(1)))
            .unwrap_or(u32::MAX),
        exceeded: spent >= limit,
        subject: subject.to_string(),
    }
}

/// The budget `tenant/name` in `snapshot`, if it validates.
fn in_force(snapshot: &Snapshot, tenant: &str, name: &str) -> Option<Budget> {
    let object = snapshot
        .objects
        .get(&keys::resource(Kind::Budget, tenant, name))?;
    match aios_model::validate(&object.resource) {
        Ok(valid) => match valid.spec {
            Spec::Budget(budget) => Some(budget),
            _ => None,
        },
        Err(error) => {
            tracing::warn!(%tenant, budget = %name, %error, "stored budget no longer validates");
            None
        }
    }
}

/// Whether `window_start` is the budget's current window (allowing a node
/// clock a little ahead of or behind ours).
fn current(budget: &Budget, now: jiff::Timestamp, window_start: i64) -> bool {
    let skew = jiff::SignedDuration::try_from(WINDOW_SKEW).unwrap_or_default();
    [
        now,
        now.saturating_add(skew).unwrap_or(now),
        now.saturating_sub(skew).unwrap_or(now),
    ]
    .iter()
    .any(|t| budget.window_at(*t).start == window_start)
}

/// Checks a request; every bad field at once.
fn check(request: &pb::AllowancesRequest) -> Result<(), BudgetError> {
    let mut bad = Vec::new();
    if request.node_id.is_empty() {
        bad.push(("node_id".to_string(), "is required".to_string()));
    }
    if request.lines.len() > MAX_LINES {
        bad.push((
            "lines".to_string(),
            format!(
                "{} lines; at most {MAX_LINES} per request",
                request.lines.len()
            ),
        ));
    }
    for (i, line) in request.lines.iter().enumerate() {
        let field = |name: &str| format!("lines[{i}].{name}");
        match &line.budget {
            None => bad.push((field("budget"), "is required".into())),
            Some(r) => {
                if r.kind != pb::Kind::Budget as i32 {
                    bad.push((field("budget.kind"), "must be KIND_BUDGET".into()));
                }
                if r.tenant.is_empty() {
                    bad.push((field("budget.tenant"), "is required".into()));
                }
                if r.name.is_empty() {
                    bad.push((field("budget.name"), "is required".into()));
                }
            }
        }
        if line.incarnation.is_empty() {
            bad.push((field("incarnation"), "is required".into()));
        }
        if line.seq == 0 {
            bad.push((field("seq"), "must be ≥ 1".into()));
        }
        for (name, value) in [
            ("spent_micros", line.spent_micros),
            ("release_micros", line.release_micros),
            ("want_micros", line.want_micros),
        ] {
            if value < 0 {
                bad.push((field(name), format!("{value} is negative")));
            }
        }
        if line.window_start < 0 {
            bad.push((field("window_start"), "must be ≥ 0".into()));
        }
    }
    match bad.is_empty() {
        true => Ok(()),
        false => Err(BudgetError::Invalid(bad)),
    }
}

fn ledger_prefix(tenant: &str, budget: &str, window_start: i64) -> String {
    format!(
        "{}{tenant}/{budget}/{window_start:020}/",
        keys::BUDGET_LEDGERS
    )
}

fn ledger_key(id: &LedgerId) -> String {
    format!(
        "{}{}",
        ledger_prefix(&id.0, &id.1, id.2),
        encode_subject(&id.3)
    )
}

/// Subjects are free-form (user ids): `-` for none, else `=` and the
/// subject with every byte outside `[A-Za-z0-9._@-]` percent-encoded.
fn encode_subject(subject: &str) -> String {
    if subject.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(subject.len() + 1);
    out.push('=');
    for byte in subject.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'@' | b'-' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn decode_subject(encoded: &str) -> String {
    let Some(rest) = encoded.strip_prefix('=') else {
        return String::new();
    };
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = rest
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
