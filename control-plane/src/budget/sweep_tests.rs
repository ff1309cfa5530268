#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;

use aios_model::Kind;
use aios_proto::v1 as pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    budget::{LedgerId, ledger_key},
    fleet::cache::ConfigCache,
    store::{Op, embedded::EmbeddedStore},
};

const HOUR: Duration = Duration::from_secs(3600);

fn budget(name: &str, window: pb::BudgetWindow) -> pb::Resource {
    pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: "acme".into(),
            ..Default::default()
        }),
        spec: Some(pb::resource::Spec::Budget(pb::BudgetSpec {
            scope: Some(pb::BudgetScope {
                kind: pb::BudgetScopeKind::User as i32,
                subject: String::new(),
            }),
            window: window as i32,
            limit_usd: 1.0,
            on_exceed: pb::OnExceed::Block as i32,
            ..Default::default()
        })),
    }
}

fn at(rfc3339: &str) -> Timestamp {
    rfc3339.parse().unwrap()
}

fn ledger(budget: &str, window_start: &str, subject: &str) -> String {
    let start = match window_start {
        "total" => 0,
        start => at(start).as_second(),
    };
    let id: LedgerId = ("acme".into(), budget.into(), start, subject.into());
    ledger_key(&id)
}

async fn put(store: &SharedStore, key: &str, value: Vec<u8>) {
    store
        .txn(
            vec![],
            vec![Op::Put {
                key: key.into(),
                value,
                lease: None,
            }],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn ledgers_go_once_their_window_is_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
            .await
            .unwrap(),
    );
    for (name, window) in [
        ("hourly", pb::BudgetWindow::Hour),
        ("forever", pb::BudgetWindow::Total),
    ] {
        put(
            &store,
            &keys::resource(Kind::Budget, "acme", name),
            budget(name, window).encode_to_vec(),
        )
        .await;
    }
    let spent = pb::BudgetLedger {
        spent_micros: 5,
        ..Default::default()
    }
    .encode_to_vec();
    let now = "2026-11-21T12:30:00Z";
    let gone = [
        // Ended at 10:00, more than an hour ago.
        ledger("hourly", "2026-11-21T09:00:00Z", "alice"),
        ledger("hourly", "2026-11-20T09:00:00Z", "bob/x"),
        // A deleted budget: started more than 31 days + 1 h ago.
        ledger("deleted", "2026-10-20T10:00:00Z", "carol"),
    ];
    let kept = [
        // Ended at 12:00, within the hour kept.
        ledger("hourly", "2026-11-21T11:00:00Z", "alice"),
        // The current window.
        ledger("hourly", "2026-11-21T12:00:00Z", "alice"),
        // TOTAL windows never end, deleted budget or not.
        ledger("forever", "total", "alice"),
        ledger("deleted-total", "total", "alice"),
        // A deleted budget's window that may still be within its month.
        ledger("deleted", "2026-10-21T12:00:00Z", "carol"),
    ];
    for key in gone.iter().chain(&kept) {
        put(&store, key, spent.clone()).await;
    }
    let shutdown = CancellationToken::new();
    let (cache, _) = ConfigCache::start(store.clone(), Duration::from_millis(1), shutdown.clone())
        .await
        .unwrap();

    let deleted = sweep(&store, &cache.current(), at(now), HOUR)
        .await
        .unwrap();
    assert_eq!(deleted, gone.len());
    for key in &gone {
        assert!(store.get(key).await.unwrap().is_none(), "{key} is gone");
    }
    for key in &kept {
        assert!(store.get(key).await.unwrap().is_some(), "{key} is kept");
    }
    // Nothing more to do.
    assert_eq!(
        sweep(&store, &cache.current(), at(now), HOUR)
            .await
            .unwrap(),
        0
    );
    // Other keys under the prefix are left alone.
    put(&store, &format!("{}junk", keys::BUDGET_LEDGERS), spent).await;
    assert_eq!(
        sweep(&store, &cache.current(), at(now), HOUR)
            .await
            .unwrap(),
        0
    );
    shutdown.cancel();
}
