//! Budget alert thresholds on the telemetry stream.
//!
//! The writer records each threshold a ledger's spend crosses in the ledger
//! itself (`alerted_percents`), in the same compare-and-swap that moves the
//! spend, so a crossing is stored once, whichever replica applied it. Every
//! replica follows the ledgers and turns the highest threshold newly
//! recorded in a ledger into a FIRING [`pb::AlertEvent`] for its own
//! subscribers (metric BUDGET_SPENT, rule `budget/NAME[/SUBJECT]`); it
//! stays on the board until the window ends, then resolves. A replica that
//! starts mid-window puts the highest threshold already crossed in each
//! current ledger on its board, so dashboards see the same set everywhere.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_model::{AlertMetric, AlertSeverity, Budget, BudgetScope, Usd};
use aios_proto::v1 as pb;
use jiff::Timestamp;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{Clock, decode_subject, in_force, now};
use crate::{
    fleet::cache::{ConfigCache, Snapshot},
    keys,
    store::{
        Event, EventKind, KeyValue, RangeRequest, SharedStore, StoreError,
        watch::{Follower, follow},
    },
    telemetry::{
        Telemetry,
        alerts::{RuleId, Transition},
    },
};

/// How often ended windows are resolved.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Lists the ledgers, then raises their thresholds on `telemetry`'s alert
/// stream until `shutdown`.
pub async fn start(
    store: SharedStore,
    cache: ConfigCache,
    telemetry: Telemetry,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let listing = store
        .range(RangeRequest::prefix(keys::BUDGET_LEDGERS))
        .await?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut follower = Follow {
        tracker: tracker.clone(),
        cache,
        telemetry: telemetry.clone(),
        clock: clock.clone(),
    };
    follower.replace(&listing.kvs);
    let follow = follow(
        store,
        keys::BUDGET_LEDGERS.to_string(),
        listing,
        follower,
        shutdown.clone(),
    );
    Ok(tokio::spawn(async move {
        let resolve = async {
            let mut tick = tokio::time::interval(RESOLVE_EVERY);
            loop {
                tick.tick().await;
                let ended = lock(&tracker).resolve_ended(now(&clock));
                telemetry.publish_alerts(ended);
            }
        };
        tokio::select! {
            _ = follow => {}
            _ = resolve => {}
            _ = shutdown.cancelled() => {}
        }
    }))
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The store side: decodes ledgers and hands them to the tracker.
struct Follow {
    tracker: Arc<Mutex<Tracker>>,
    cache: ConfigCache,
    telemetry: Telemetry,
    clock: Clock,
}

impl Follower for Follow {
    fn replace(&mut self, kvs: &[KeyValue]) {
        let snapshot = self.cache.current();
        let now = now(&self.clock);
        let mut tracker = lock(&self.tracker);
        let mut raised = Vec::new();
        let mut seen = HashSet::new();
        for kv in kvs {
            if let Some((id, ledger)) = parse(kv) {
                raised.extend(tracker.update(&id, &ledger, budget(&snapshot, &id), now));
                seen.insert(kv.key.as_str());
            }
        }
        tracker.alerted.retain(|key, _| seen.contains(key.as_str()));
        drop(tracker);
        self.telemetry.publish_alerts(raised);
    }

    fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::Put => {
                let Some((id, ledger)) = parse(&event.kv) else {
                    return;
                };
                let snapshot = self.cache.current();
                let raised = lock(&self.tracker).update(
                    &id,
                    &ledger,
                    budget(&snapshot, &id),
                    now(&self.clock),
                );
                self.telemetry.publish_alerts(raised.into_iter().collect());
            }
            EventKind::Delete => {
                lock(&self.tracker).alerted.remove(&event.kv.key);
            }
        }
    }
}

fn budget(snapshot: &Snapshot, id: &LedgerId) -> Option<Budget> {
    in_force(snapshot, &id.tenant, &id.budget)
}

/// Which ledger a key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerId {
    /// Its store key.
    pub key: String,
    /// Tenant of the budget.
    pub tenant: String,
    /// The budget.
    pub budget: String,
    /// Window start, Unix seconds.
    pub window_start: i64,
    /// User, agent or key counted separately; empty for one ledger.
    pub subject: String,
}

/// Which ledger `key` names, or `None` if it names none.
pub fn ledger_id(key: &str) -> Option<LedgerId> {
    let rest = key.strip_prefix(keys::BUDGET_LEDGERS)?;
    let mut parts = rest.splitn(4, '/');
    let (tenant, budget, window, subject) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(LedgerId {
        key: key.to_string(),
        tenant: tenant.to_string(),
        budget: budget.to_string(),
        window_start: window.parse().ok()?,
        subject: decode_subject(subject),
    })
}

/// The ledger stored at `kv`, or `None` (logged) if the key or value is not
/// one.
fn parse(kv: &KeyValue) -> Option<(LedgerId, pb::BudgetLedger)> {
    let Some(id) = ledger_id(&kv.key) else {
        tracing::error!(key = %kv.key, "not a budget ledger key; ignored");
        return None;
    };
    match pb::BudgetLedger::decode(kv.value.as_slice()) {
        Ok(ledger) => Some((id, ledger)),
        Err(error) => {
            tracing::error!(key = %kv.key, %error, "undecodable budget ledger; ignored");
            None
        }
    }
}

/// What was raised, per ledger and per alert; pure, so tests drive it.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Thresholds already raised, by ledger key.
    alerted: HashMap<String, Vec<u32>>,
    /// Firing alerts and when their window ends (Unix seconds; `None` for
    /// TOTAL budgets, which never roll over).
    firing: BTreeMap<RuleId, (Option<i64>, pb::AlertEvent)>,
}

impl Tracker {
    /// Takes a ledger as stored now; returns the FIRING event of the
    /// highest threshold it records that was not raised before, if its
    /// budget is in force and its window has not ended.
    pub fn update(
        &mut self,
        id: &LedgerId,
        ledger: &pb::BudgetLedger,
        budget: Option<Budget>,
        now: Timestamp,
    ) -> Option<Transition> {
        let before = self
            .alerted
            .insert(id.key.clone(), ledger.alerted_percents.clone())
            .unwrap_or_default();
        let percent = ledger
            .alerted_percents
            .iter()
            .filter(|p| !before.contains(p))
            .max()
            .copied()?;
        let budget = budget?;
        let start = Timestamp::from_second(id.window_start).ok()?;
        let end = budget.window_at(start).end;
        if end.is_some_and(|end| end <= now.as_second()) {
            return None;
        }
        let rule = rule_name(id);
        let rule_id = RuleId {
            tenant: id.tenant.clone(),
            name: rule.clone(),
        };
        let limit = budget.limit.micros();
        let spent = Usd::from_micros(ledger.spent_micros);
        let whose = match id.subject.is_empty() {
            true => String::new(),
            false => format!(" for {}", id.subject),
        };
        let when = match end {
            Some(_) => format!("in the window from {start}"),
            None => "in total".to_string(),
        };
        let event = pb::AlertEvent {
            rule,
            severity: match percent {
                100.. => AlertSeverity::Critical,
                _ => AlertSeverity::Warning,
            }
            .to_proto() as i32,
            state: pb::AlertState::Firing as i32,
            message: format!(
                "budget {}{whose} reached {percent}% of its {} limit: {spent} spent {when}",
                id.budget, budget.limit
            ),
            value: match limit {
                0 => 0.0,
                limit => ledger.spent_micros as f64 / limit as f64,
            },
            threshold: f64::from(percent) / 100.0,
            time: Some(timestamp(now)),
            scope: Some(pb::SummaryFilter {
                tenant: id.tenant.clone(),
                agent: match budget.scope {
                    BudgetScope::Agent(_) => id.subject.clone(),
                    _ => String::new(),
                },
                ..Default::default()
            }),
            metric: AlertMetric::BudgetSpent.to_proto() as i32,
            requests: 0,
        };
        self.firing.insert(rule_id.clone(), (end, event.clone()));
        Some(Transition { id: rule_id, event })
    }

    /// RESOLVED events for the firing alerts whose window ended by `now`.
    pub fn resolve_ended(&mut self, now: Timestamp) -> Vec<Transition> {
        let now_s = now.as_second();
        let ended: Vec<RuleId> = self
            .firing
            .iter()
            .filter(|(_, (end, _))| end.is_some_and(|end| end <= now_s))
            .map(|(id, _)| id.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|id| {
                let (_, mut event) = self.firing.remove(&id)?;
                event.state = pb::AlertState::Resolved as i32;
                event.message = format!("{}: the window ended; spend starts again", event.rule);
                event.time = Some(timestamp(now));
                Some(Transition { id, event })
            })
            .collect()
    }
}

/// `budget/NAME`, or `budget/NAME/SUBJECT`.
fn rule_name(id: &LedgerId) -> String {
    match id.subject.is_empty() {
        true => format!("budget/{}", id.budget),
        false => format!("budget/{}/{}", id.budget, id.subject),
    }
}

fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
