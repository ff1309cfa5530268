#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use aios_proto::v1 as pb;

use super::*;

fn key() -> LedgerKey {
    LedgerKey {
        tenant: "acme".into(),
        budget: "daily".into(),
        window_start: 0,
        subject: String::new(),
    }
}

fn grant(held: i64, spent: i64, limit: i64) -> pb::AllowanceGrant {
    pb::AllowanceGrant {
        held_micros: held,
        ttl_ms: 10_000,
        remaining_micros: limit - spent - held,
        spent_micros: spent,
        limit_micros: limit,
        error: String::new(),
    }
}

impl Purse {
    /// As if the control plane had just answered for `key`: this node holds
    /// `held` of a budget that has `spent` of its `limit` spent, fleet-wide.
    /// For the budget stage's tests, which run without a control plane.
    pub(crate) fn answer_for_test(&self, key: &LedgerKey, held: i64, spent: i64, limit: i64) {
        let sent = {
            let mut ledgers = self.ledgers();
            let now = Instant::now();
            let ledger = ledgers
                .entry(key.clone())
                .or_insert_with(|| Ledger::new(now));
            ledger.seq += 1;
            let sent = Sent {
                seq: ledger.seq,
                spent: 0,
                release: 0,
                want: 0,
                at: now,
            };
            ledger.sending = Some(sent.clone());
            sent
        };
        self.answered(&[(key.clone(), sent)], &[grant(held, spent, limit)]);
    }
}

/// Plays the control plane for one round: answers every line with `answer`.
async fn round(purse: &Purse, answer: impl Fn(&Sent) -> pb::AllowanceGrant) -> Vec<Sent> {
    tokio::time::timeout(Duration::from_secs(5), purse.woken())
        .await
        .expect("a call wakes the reporter");
    let lines = purse.lines(Some(Duration::from_secs(10)));
    let grants: Vec<_> = lines.iter().map(|(_, sent)| answer(sent)).collect();
    purse.answered(&lines, &grants);
    lines.into_iter().map(|(_, sent)| sent).collect()
}

#[tokio::test]
async fn a_call_waits_for_allowance_then_settles_what_it_cost() {
    let purse = Purse::new();
    let keys = vec![(key(), true)];
    let waiting = {
        let (purse, keys) = (purse.clone(), keys.clone());
        tokio::spawn(async move {
            purse
                .reserve(&keys, 300, 50, Instant::now() + Duration::from_secs(5))
                .await
        })
    };
    let sent = round(&purse, |sent| grant(sent.want, 0, 1_000)).await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0].want >= 300, "{sent:?}");
    assert_eq!(waiting.await.unwrap(), Ok(300));

    // The call cost 120 of its 300: the next line settles 120.
    purse.settle(&keys, 300, 120);
    let sent = round(&purse, |sent| grant(sent.want, 120, 1_000)).await;
    assert_eq!((sent[0].seq, sent[0].spent), (2, 120));
}

#[tokio::test]
async fn a_spent_budget_refuses_and_a_nearly_spent_one_gives_what_is_left() {
    let purse = Purse::new();
    let keys = vec![(key(), true)];
    let call = |amount, min| {
        let (purse, keys) = (purse.clone(), keys.clone());
        tokio::spawn(async move {
            purse
                .reserve(&keys, amount, min, Instant::now() + Duration::from_secs(5))
                .await
        })
    };
    // 80 left in the whole budget, all held here: a call that needs at
    // least 50 gets 80 once answered, without waiting for more that
    // cannot come.
    let first = call(300, 50);
    round(&purse, |_| grant(80, 920, 1_000)).await;
    let first = tokio::time::timeout(MAX_WAIT / 2, first).await;
    assert_eq!(first.expect("granted at once").unwrap(), Ok(80));
    // Nothing left: refused as exhausted, naming the budget.
    purse.settle(&keys, 80, 80);
    let second = call(300, 50);
    // The call asks before the round that answers it.
    tokio::task::yield_now().await;
    round(&purse, |_| grant(0, 1_000, 1_000)).await;
    let second = tokio::time::timeout(MAX_WAIT / 2, second).await;
    assert_eq!(
        second.expect("refused once answered").unwrap(),
        Err(Shortfall::Exhausted {
            key: key(),
            remaining: 0
        })
    );
    assert!(purse.known_short(&key(), 50));
}

#[tokio::test(start_paused = true)]
async fn without_an_answer_a_call_gives_up_by_its_deadline() {
    let purse = Purse::new();
    let keys = vec![(key(), true)];
    let result = purse
        .reserve(&keys, 300, 50, Instant::now() + Duration::from_millis(500))
        .await;
    assert_eq!(result, Err(Shortfall::Unanswered { key: key() }));
}

#[tokio::test(start_paused = true)]
async fn a_call_abandoned_while_waiting_stops_asking_for_allowance() {
    let purse = Purse::new();
    let keys = vec![(key(), true)];
    // Answered once: nothing held, money left.
    purse.answer_for_test(&key(), 0, 0, 1_000);
    let far = Instant::now() + Duration::from_secs(5);
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        purse.reserve(&keys, 300, 50, far),
    )
    .await;
    assert!(waited.is_err(), "still waiting when abandoned");
    // Nothing waits any more: the node asks for nothing, and a spent
    // budget is known as spent again.
    let lines = purse.lines(Some(Duration::from_secs(10)));
    assert!(lines.iter().all(|(_, sent)| sent.want == 0), "{lines:?}");
    purse.answer_for_test(&key(), 0, 1_000, 1_000);
    assert!(purse.known_short(&key(), 1));
}
