#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::embedded::EmbeddedStore;

struct Fixture {
    _dir: tempfile::TempDir,
    store: SharedStore,
    budgets: Budgets,
    now: Arc<Mutex<SystemTime>>,
    _shutdown: tokio_util::sync::DropGuard,
}

fn at(rfc3339: &str) -> SystemTime {
    SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
}

async fn fixture(window: pb::BudgetWindow, on_exceed: pb::OnExceed) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
            .await
            .unwrap(),
    );
    let resource = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: "daily".into(),
            tenant: "acme".into(),
            ..Default::default()
        }),
        spec: Some(pb::resource::Spec::Budget(pb::BudgetSpec {
            scope: Some(pb::BudgetScope {
                kind: pb::BudgetScopeKind::User as i32,
                subject: String::new(),
            }),
            window: window as i32,
            limit_usd: 0.001, // 1,000 micro-USD
            on_exceed: on_exceed as i32,
            alert_threshold_percents: vec![50, 100],
            ..Default::default()
        })),
    };
    store
        .txn(
            vec![],
            vec![Op::Put {
                key: keys::resource(Kind::Budget, "acme", "daily"),
                value: resource.encode_to_vec(),
                lease: None,
            }],
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let (cache, _) = ConfigCache::start(store.clone(), Duration::from_millis(1), shutdown.clone())
        .await
        .unwrap();
    let now = Arc::new(Mutex::new(at("2026-11-21T10:59:59.500Z")));
    let clock_now = now.clone();
    let budgets = Budgets::with_clock(
        store.clone(),
        cache,
        Duration::from_secs(10),
        Arc::new(move || *clock_now.lock().unwrap()),
    );
    Fixture {
        _dir: dir,
        store,
        budgets,
        now,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Fixture {
    fn set(&self, time: &str) {
        *self.now.lock().unwrap() = at(time);
    }

    fn window(&self) -> i64 {
        let now = jiff::Timestamp::try_from(*self.now.lock().unwrap()).unwrap();
        now.as_second() - now.as_second().rem_euclid(3600)
    }

    async fn send(&self, node: &str, line: pb::AllowanceLine) -> pb::AllowanceGrant {
        let mut grants = self
            .budgets
            .allowances(pb::AllowancesRequest {
                node_id: node.into(),
                lines: vec![line],
            })
            .await
            .unwrap();
        grants.pop().unwrap()
    }
}

fn line(window_start: i64, seq: u64, spent: i64, release: i64, want: i64) -> pb::AllowanceLine {
    pb::AllowanceLine {
        budget: Some(pb::ResourceRef {
            kind: pb::Kind::Budget as i32,
            tenant: "acme".into(),
            name: "daily".into(),
        }),
        subject: "alice".into(),
        window_start,
        seq,
        spent_micros: spent,
        release_micros: release,
        want_micros: want,
        incarnation: "i1".into(),
    }
}

async fn statuses(f: &Fixture) -> Vec<pb::BudgetStatus> {
    f.budgets
        .status(&Scope::Tenant("acme".into()), "")
        .await
        .unwrap()
}

#[tokio::test]
async fn hour_windows_roll_over_with_the_clock() {
    let f = fixture(pb::BudgetWindow::Hour, pb::OnExceed::Block).await;
    let ten = f.window();
    let g = f.send("n1", line(ten, 1, 0, 0, 600)).await;
    assert_eq!(
        (g.held_micros, g.remaining_micros, g.error.as_str()),
        (600, 400, "")
    );
    let g = f.send("n1", line(ten, 2, 600, 0, 0)).await;
    assert_eq!((g.held_micros, g.spent_micros), (0, 600));
    let s = statuses(&f).await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].subject, "alice");
    assert_eq!(s[0].percent_used, 60);
    assert_eq!(s[0].window_start.unwrap().seconds, ten);

    // Past the top of the hour (and the 5 s allowed for node clocks): a
    // fresh window, nothing spent.
    f.set("2026-11-21T11:00:06Z");
    let eleven = f.window();
    assert_eq!(eleven, ten + 3600);
    assert!(
        statuses(&f).await.is_empty(),
        "no subject has spent in the new window"
    );
    let g = f.send("n1", line(eleven, 3, 0, 0, 1_000)).await;
    assert_eq!(
        (g.held_micros, g.spent_micros, g.remaining_micros),
        (1_000, 0, 0)
    );
    // Late spend from the old window still settles there; it leases nothing.
    let g = f.send("n1", line(ten, 4, 100, 0, 50)).await;
    assert_eq!((g.held_micros, g.spent_micros), (0, 700));
    assert!(g.error.contains("not the current window"), "{}", g.error);
    // A node clock a few seconds ahead may already lease in the next window.
    f.set("2026-11-21T11:59:57Z");
    let g = f.send("n2", line(eleven + 3600, 1, 0, 0, 10)).await;
    assert_eq!((g.held_micros, g.error.as_str()), (10, ""));
}

#[tokio::test]
async fn a_crashed_nodes_allowance_comes_back_after_the_ttl() {
    let f = fixture(pb::BudgetWindow::Day, pb::OnExceed::Block).await;
    let day = jiff::Timestamp::try_from(*f.now.lock().unwrap())
        .unwrap()
        .as_second()
        / 86_400
        * 86_400;
    let g = f.send("crashed", line(day, 1, 0, 0, 900)).await;
    assert_eq!(g.held_micros, 900);
    let g = f.send("n2", line(day, 1, 0, 0, 900)).await;
    assert_eq!(g.held_micros, 100);
    let s = statuses(&f).await;
    assert_eq!((s[0].reserved_usd, s[0].remaining_usd), (0.001, 0.0));
    // n2 renews; the crashed node never does, and 10 s after its grant
    // its allowance is free.
    f.set("2026-11-21T11:00:05Z");
    f.send("n2", line(day, 2, 0, 0, 0)).await;
    f.set("2026-11-21T11:00:09.600Z");
    let g = f.send("n2", line(day, 3, 0, 0, 900)).await;
    assert_eq!(g.held_micros, 1_000);
}

#[tokio::test]
async fn alert_only_budgets_count_spend_and_lease_nothing() {
    let f = fixture(pb::BudgetWindow::Total, pb::OnExceed::AlertOnly).await;
    let g = f.send("n1", line(0, 1, 1_500, 0, 100)).await;
    assert_eq!(
        (g.held_micros, g.spent_micros, g.remaining_micros),
        (0, 1_500, 0)
    );
    let s = statuses(&f).await;
    assert!(s[0].exceeded);
    assert_eq!(s[0].percent_used, 150);
    assert!(s[0].window_start.is_none());
}

#[tokio::test]
async fn bad_lines_are_refused_field_by_field_and_unknown_budgets_per_line() {
    let f = fixture(pb::BudgetWindow::Hour, pb::OnExceed::Block).await;
    let mut bad = line(f.window(), 0, -1, 0, 0);
    bad.incarnation.clear();
    let error = f
        .budgets
        .allowances(pb::AllowancesRequest {
            node_id: String::new(),
            lines: vec![bad],
        })
        .await
        .unwrap_err();
    let BudgetError::Invalid(fields) = error else {
        panic!("{error:?}")
    };
    let fields: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "node_id",
            "lines[0].incarnation",
            "lines[0].seq",
            "lines[0].spent_micros"
        ]
    );

    let mut unknown = line(f.window(), 1, 0, 0, 10);
    unknown.budget.as_mut().unwrap().name = "nope".into();
    let g = f.send("n1", unknown).await;
    assert!(g.error.contains("not in force"), "{}", g.error);
    let error = f
        .budgets
        .status(&Scope::Tenant("acme".into()), "nope")
        .await
        .unwrap_err();
    assert!(matches!(error, BudgetError::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn concurrent_nodes_never_lease_more_than_the_limit() {
    let f = Arc::new(fixture(pb::BudgetWindow::Hour, pb::OnExceed::Block).await);
    let window = f.window();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = 0;
            let mut spent = 0;
            for seq in 1..=20u64 {
                // Spend most of what is held, ask for more.
                let spend = held * 3 / 4;
                let g = f
                    .send(&format!("n{n}"), line(window, seq, spend, 0, 37))
                    .await;
                spent += spend;
                held = g.held_micros;
            }
            spent
        }));
    }
    let mut spent_by_nodes = 0;
    for task in tasks {
        spent_by_nodes += task.await.unwrap();
    }
    let s = statuses(&f).await;
    let spent = (s[0].spent_usd * 1e6).round() as i64;
    let reserved = (s[0].reserved_usd * 1e6).round() as i64;
    assert_eq!(spent, spent_by_nodes, "every settle counted exactly once");
    assert!(
        spent + reserved <= 1_000,
        "spent {spent} + reserved {reserved}"
    );
    assert!(spent > 500, "the budget was mostly used: {spent}");
    drop(f.store.clone());
}

#[test]
fn subjects_round_trip_through_keys() {
    for subject in ["", "alice", "a/b c%d", "ünï"] {
        assert_eq!(decode_subject(&encode_subject(subject)), subject);
    }
    assert_eq!(encode_subject("a/b"), "=a%2Fb");
}
