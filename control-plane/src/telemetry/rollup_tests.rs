#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use super::*;

/// A fixed "now", in Unix seconds (2026-01-01T00:00:00Z + 30 min 10 s).
const NOW: i64 = 1_767_225_600 + 1810;

/// Builds spans tersely: every field a test does not set is empty.
#[derive(Clone)]
struct S {
    tenant: &'static str,
    agent: &'static str,
    operation: &'static str,
    end: i64,
    latency_ms: u64,
    cost: f64,
    baseline: f64,
    tokens: (u64, u64),
    error: bool,
    cache_hit: bool,
}

fn s(tenant: &'static str, agent: &'static str, operation: &'static str) -> S {
    S {
        tenant,
        agent,
        operation,
        end: NOW - 5,
        latency_ms: 100,
        cost: 0.0,
        baseline: 0.0,
        tokens: (0, 0),
        error: false,
        cache_hit: false,
    }
}

impl S {
    fn span(&self) -> pb::Span {
        let end = self.end as u64 * 1_000_000_000;
        pb::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: format!("{} {}", self.operation, self.agent),
            start_time_unix_nano: end - self.latency_ms * 1_000_000,
            end_time_unix_nano: end,
            tenant: self.tenant.into(),
            agent: self.agent.into(),
            model: "gpt".into(),
            node: "n1".into(),
            region: "eu".into(),
            operation: self.operation.into(),
            input_tokens: self.tokens.0,
            output_tokens: self.tokens.1,
            cost_usd: self.cost,
            cache_hit: self.cache_hit,
            baseline_cost_usd: self.baseline,
            status: Some(pb::SpanStatus {
                code: if self.error {
                    pb::SpanStatusCode::Error
                } else {
                    pb::SpanStatusCode::Ok
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn batch(spans: &[S], dropped: u64) -> pb::SpanBatch {
    pb::SpanBatch {
        sequence: 1,
        spans: spans.iter().map(S::span).collect(),
        dropped_spans: dropped,
    }
}

/// Folds `batch` as the feed does: encoded, then read in place.
fn fold(rollups: &mut Rollups, node: &str, unix_minute: u64, batch: &pb::SpanBatch, now: i64) {
    use prost::Message;
    let encoded =
        super::super::wire::Encoded::read(node, unix_minute, batch.encode_to_vec().into()).unwrap();
    let spans = encoded.views().map(|(_, span)| span);
    rollups.fold(node, unix_minute, spans, encoded.layout.dropped_spans, now);
}

fn minute_of(t: i64) -> Vec<(Granularity, i64)> {
    vec![(Granularity::Minute, Granularity::Minute.floor(t))]
}

fn acme() -> Filter {
    Filter::tenant(TenantScope::One("acme".into()))
}

#[test]
fn requests_come_from_request_spans_and_money_from_every_span() {
    let mut rollups = Rollups::new();
    let spans = [
        // One agent request whose model call cost money against a baseline.
        s("acme", "bot", "invoke_agent"),
        S {
            cost: 0.002,
            baseline: 0.010,
            tokens: (100, 20),
            ..s("acme", "bot", "chat")
        },
        S {
            error: true,
            ..s("acme", "bot", "execute_tool")
        },
        // A failed request: the request span itself carries the error.
        S {
            error: true,
            latency_ms: 900,
            ..s("acme", "bot", "invoke_agent")
        },
        // A cached request answered alone: its own cost, no baseline.
        S {
            cache_hit: true,
            latency_ms: 3,
            cost: 0.0005,
            tokens: (10, 5),
            ..s("acme", "bot", "invoke_agent")
        },
        // Direct embeddings are requests too.
        S {
            tokens: (40, 0),
            ..s("acme", "", "embeddings")
        },
    ];
    fold(&mut rollups, "n1", 0, &batch(&spans, 0), NOW);
    let totals = rollups.totals(&acme(), &minute_of(NOW - 5));
    let all = &totals.all;
    assert_eq!((all.requests, all.errors, all.cache_hits), (4, 1, 1));
    assert_eq!((all.input_tokens, all.output_tokens), (150, 25));
    assert!((all.cost_usd - 0.0025).abs() < 1e-12, "{}", all.cost_usd);
    assert!(
        (all.savings_usd - 0.008).abs() < 1e-12,
        "{}",
        all.savings_usd
    );
    assert_eq!(all.latency.count(), 4);
    let p99 = all.latency.quantile(0.99);
    assert!(p99.abs_diff(Duration::from_millis(900)) < Duration::from_millis(9));
    let agents: Vec<(&str, u64)> = totals
        .per_agent
        .iter()
        .map(|(agent, cell)| (agent.as_str(), cell.requests))
        .collect();
    assert_eq!(agents, [("bot", 3), ("", 1)], "by descending cost");
}

#[test]
fn spans_land_in_the_windows_of_their_end_time() {
    let mut rollups = Rollups::new();
    let minute = Granularity::Minute.floor(NOW);
    let spans = [
        S {
            end: minute + 1,
            ..s("acme", "bot", "invoke_agent")
        },
        S {
            end: minute + 1,
            ..s("acme", "bot", "invoke_agent")
        },
        S {
            end: minute + 2,
            ..s("acme", "bot", "invoke_agent")
        },
        S {
            end: minute - 1,
            ..s("acme", "bot", "invoke_agent")
        },
    ];
    fold(&mut rollups, "n1", 0, &batch(&spans, 0), NOW);
    let requests = |windows: &[(Granularity, i64)]| rollups.totals(&acme(), windows).all.requests;
    assert_eq!(requests(&[(Granularity::Second, minute + 1)]), 2);
    assert_eq!(requests(&[(Granularity::Second, minute + 2)]), 1);
    assert_eq!(requests(&[(Granularity::Minute, minute)]), 3);
    assert_eq!(requests(&[(Granularity::Minute, minute - 60)]), 1);
    assert_eq!(
        requests(&[(Granularity::Hour, Granularity::Hour.floor(NOW))]),
        4
    );
}

#[test]
fn dropped_spans_belong_to_the_node_and_only_platform_scopes_see_them() {
    let mut rollups = Rollups::new();
    let spans = [S {
        end: NOW - 30,
        ..s("acme", "bot", "invoke_agent")
    }];
    fold(&mut rollups, "n7", 0, &batch(&spans, 12), NOW);
    // A batch of drops alone lands in the minute it was taken.
    let taken = (NOW / 60 - 2) as u64;
    fold(&mut rollups, "n7", taken, &batch(&[], 3), NOW);
    let hour = [(Granularity::Hour, Granularity::Hour.floor(NOW))];
    let everyone = Filter::tenant(TenantScope::All);
    assert_eq!(rollups.totals(&everyone, &hour).all.dropped_spans, 15);
    assert_eq!(rollups.totals(&acme(), &hour).all.dropped_spans, 0);
    let node = Filter {
        node: "n7".into(),
        ..everyone.clone()
    };
    assert_eq!(rollups.totals(&node, &hour).all.dropped_spans, 15);
    let dropped_in = |t: i64| rollups.totals(&everyone, &minute_of(t)).all.dropped_spans;
    assert_eq!(dropped_in(NOW - 30), 12);
    assert_eq!(dropped_in(taken as i64 * 60), 3);
    assert!(
        rollups
            .totals(&everyone, &hour)
            .per_agent
            .iter()
            .all(|(a, _)| a == "bot"),
        "drops alone do not make an agent"
    );
}

#[test]
fn filters_narrow_by_every_dimension() {
    let mut rollups = Rollups::new();
    let spans = [
        s("acme", "bot", "invoke_agent"),
        s("acme", "helper", "invoke_agent"),
        s("globex", "bot", "invoke_agent"),
    ];
    fold(&mut rollups, "n1", 0, &batch(&spans, 0), NOW);
    let windows = minute_of(NOW - 5);
    let requests = |filter: &Filter| rollups.totals(filter, &windows).all.requests;
    assert_eq!(requests(&acme()), 2);
    assert_eq!(requests(&Filter::tenant(TenantScope::All)), 3);
    let bot = |tenant| Filter {
        agent: "bot".into(),
        ..Filter::tenant(tenant)
    };
    assert_eq!(requests(&bot(TenantScope::One("acme".into()))), 1);
    assert_eq!(requests(&bot(TenantScope::All)), 2);
    let unknown = Filter {
        model: "never-seen".into(),
        ..acme()
    };
    assert_eq!(requests(&unknown), 0);
    assert_eq!(
        requests(&Filter::tenant(TenantScope::One("initech".into()))),
        0
    );
    let span = s("acme", "bot", "chat").span();
    assert!(bot(TenantScope::All).matches(&span));
    assert!(!bot(TenantScope::One("globex".into())).matches(&span));
}

#[test]
fn windows_expire_with_their_granularity() {
    let mut rollups = Rollups::new();
    fold(
        &mut rollups,
        "n1",
        0,
        &batch(&[s("acme", "bot", "invoke_agent")], 0),
        NOW,
    );
    assert_eq!(rollups.windows(), [1, 1, 1]);
    // 20 minutes later the second window is gone, the others stay.
    rollups.prune(NOW + 1200);
    assert_eq!(rollups.windows(), [0, 1, 1]);
    rollups.prune(NOW + 2 * 24 * 3600);
    assert_eq!(rollups.windows(), [0, 0, 1]);
    // Spans too old for a granularity are not folded into it at all.
    let old = S {
        end: NOW - 3600,
        ..s("acme", "bot", "invoke_agent")
    };
    let mut rollups = Rollups::new();
    fold(&mut rollups, "n1", 0, &batch(&[old], 0), NOW);
    assert_eq!(rollups.windows(), [0, 1, 1]);
}
