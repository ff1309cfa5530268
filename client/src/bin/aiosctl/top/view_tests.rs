use aios_proto::v1::{AgentBreakdown, SpanStatus};

use super::*;

/// 2026-01-01T10:04:05Z.
const T: i64 = 1_767_225_600 + 10 * 3600 + 4 * 60 + 5;

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn ms(millis: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: millis * 1_000_000,
    })
}

fn agent(name: &str, requests: u64, errors: u64, cost_usd: f64) -> AgentBreakdown {
    AgentBreakdown {
        agent: name.into(),
        requests,
        errors,
        latency_p95: ms(300),
        input_tokens: requests * 100,
        output_tokens: requests * 20,
        cost_usd,
        cache_hits: 0,
        savings_usd: 0.0,
    }
}

/// The window [start, start + 1) with 12 requests: `support` 9 (one
/// failed), `triage` 3.
fn summary(start: i64, per_agent: Vec<AgentBreakdown>) -> Summary {
    let requests = per_agent.iter().map(|a| a.requests).sum();
    let errors = per_agent.iter().map(|a| a.errors).sum();
    Summary {
        window_start: ts(start),
        window_end: ts(start + 1),
        requests,
        errors,
        error_rate: errors as f64 / requests.max(1) as f64,
        latency_p50: ms(120),
        latency_p95: ms(310),
        latency_p99: ms(450),
        input_tokens: requests * 100,
        output_tokens: requests * 20,
        cost_usd: per_agent.iter().map(|a| a.cost_usd).sum(),
        cache_hits: requests / 4,
        cache_hit_rate: (requests / 4) as f64 / requests.max(1) as f64,
        savings_usd: 0.0001,
        dropped_spans: 0,
        per_agent,
    }
}

fn busy() -> Summary {
    summary(
        T,
        vec![
            agent("support", 9, 1, 0.0009),
            agent("triage", 3, 0, 0.0003),
        ],
    )
}

fn view(by: Dimension) -> View {
    let filter = SummaryFilter {
        tenant: "acme".into(),
        ..Default::default()
    };
    View::new(by, SortKey::Requests, &filter)
}

#[test]
fn a_frame_is_the_fleet_totals_then_the_busiest_agents() {
    let mut view = view(Dimension::Agent);
    view.set_nodes(Some(2));
    view.rollup(busy());
    assert_eq!(
        view.render(None).join("\n"),
        "\
aiosctl top · live · tenant acme · by agent · window 10:04:05–10:04:06 UTC · totals since 10:04:05
Requests 12/s · errors 8.3% (1) · latency p50 120.0ms p95 310.0ms p99 450.0ms
Tokens 1.4k/s · cost $4.32/h · savings $0.36/h · cache hits 25.0% · nodes 2

AGENT    REQ/S  ERR%   P95      TOK/S  COST/H  CACHE%  REQS  COST
support  9      11.1%  300.0ms  1.1k   $3.24   0.0%    9     $0.0009
triage   3      0.0%   300.0ms  360    $1.08   0.0%    3     $0.0003"
    );
}

#[test]
fn quiet_agents_stay_listed_with_their_totals_since_start() {
    let mut view = view(Dimension::Agent);
    view.rollup(busy());
    view.rollup(summary(T + 1, vec![agent("triage", 2, 0, 0.0002)]));
    let lines = view.render(None);
    assert_eq!(
        lines[5],
        "triage   2      0.0%  300.0ms  240    $0.72   0.0%    5     $0.0005"
    );
    assert_eq!(
        lines[6],
        "support  0      -     -        0      $0      -       9     $0.0009"
    );
    // Before any window, and with nothing counted, the frame still reads.
    let empty = super::View::new(
        Dimension::Agent,
        SortKey::Requests,
        &SummaryFilter::default(),
    );
    let lines = empty.render(None);
    assert!(
        lines[0].starts_with("aiosctl top · connecting… · the key's tenant · "),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "Requests 0/s · errors 0.0% (0) · latency p50 - p95 - p99 -"
    );
    assert!(lines[2].ends_with("nodes -"), "{lines:?}");
}

#[test]
fn the_control_planes_totals_replace_the_sum_of_the_windows() {
    let mut view = view(Dimension::Agent);
    view.rollup(busy());
    assert_eq!(view.since(), Some(T));
    // A span of `support` was folded after its window's rollup went out.
    view.agent_totals(&[
        agent("support", 10, 1, 0.001),
        agent("triage", 3, 0, 0.0003),
    ]);
    let lines = view.render(None);
    assert!(lines[5].starts_with("support  9 "), "{lines:#?}");
    assert!(lines[5].ends_with(" 10    $0.001"), "{lines:#?}");
    // By other dimensions the totals come from spans; agents' are ignored.
    let mut by_node = super::View::new(
        Dimension::Node,
        SortKey::Requests,
        &SummaryFilter::default(),
    );
    by_node.agent_totals(&[agent("support", 10, 1, 0.001)]);
    assert_eq!(by_node.render(None).len(), 5, "no rows");
}

#[test]
fn rows_sort_by_the_chosen_figure() {
    let filter = SummaryFilter::default();
    let window = summary(
        T,
        vec![
            agent("cheap-busy", 9, 0, 0.0001),
            agent("pricey", 1, 0, 0.01),
            agent("flaky", 2, 2, 0.0),
        ],
    );
    let order = |sort| {
        let mut view = View::new(Dimension::Agent, sort, &filter);
        view.rollup(window.clone());
        view.render(None)[5..]
            .iter()
            .map(|line| {
                line.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(order(SortKey::Requests), ["cheap-busy", "flaky", "pricey"]);
    assert_eq!(order(SortKey::Cost), ["pricey", "cheap-busy", "flaky"]);
    assert_eq!(order(SortKey::Errors), ["flaky", "cheap-busy", "pricey"]);
}

#[test]
fn a_terminal_cuts_the_table_to_its_height_and_lines_to_its_width() {
    let mut view = view(Dimension::Agent);
    let agents = (0..30)
        .map(|i| agent(&format!("agent-{i:02}"), 30 - i, 0, 0.0))
        .collect();
    view.rollup(summary(T, agents));
    let lines = view.render(Some((12, 40)));
    // 3 header lines, a blank, the table's header, 5 rows, "… more", and
    // the last line of the terminal left free.
    assert_eq!(lines.len(), 11, "{lines:#?}");
    assert!(lines[5].starts_with("agent-00 "), "{lines:#?}");
    assert_eq!(lines[10], "… 25 more");
    assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:#?}");
    // Without a terminal, every row.
    assert_eq!(view.render(None).len(), 5 + 30);
}

#[test]
fn the_header_says_when_the_stream_is_reconnecting_and_which_alerts_fire() {
    let mut view = view(Dimension::Agent);
    view.rollup(busy());
    let alert = |rule: &str, state: AlertState| AlertEvent {
        rule: rule.into(),
        severity: AlertSeverity::Critical as i32,
        state: state as i32,
        message: "error rate 8.3% above 5%".into(),
        ..Default::default()
    };
    view.alert(alert("error_rate_high", AlertState::Firing));
    view.alert(alert("budget_threshold", AlertState::Firing));
    view.alert(alert("budget_threshold", AlertState::Resolved));
    view.set_connection(Connection::Reconnecting {
        attempt: 3,
        error: "cannot connect to http://cp:7070: connection refused".into(),
    });
    let lines = view.render(None);
    assert!(
        lines[0].starts_with("aiosctl top · reconnecting… · "),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "Reconnecting (attempt 3): cannot connect to http://cp:7070: connection refused"
    );
    assert_eq!(
        lines[4],
        "Alerts firing: error_rate_high (critical): error rate 8.3% above 5%"
    );
    // The last window's figures stay on screen meanwhile.
    assert!(lines[2].starts_with("Requests 12/s"), "{lines:?}");
}

// === Rows from spans ===

fn request(node: &str, end: i64, millis: u64, error: bool) -> Span {
    let end_nanos = end as u64 * 1_000_000_000 + 500_000_000;
    Span {
        operation: "invoke_agent".into(),
        tenant: "acme".into(),
        agent: "support".into(),
        model: "mini".into(),
        node: node.into(),
        start_time_unix_nano: end_nanos - millis * 1_000_000,
        end_time_unix_nano: end_nanos,
        status: error.then(|| SpanStatus {
            code: SpanStatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model_call(node: &str, end: i64, cost_usd: f64) -> Span {
    Span {
        operation: "chat".into(),
        cost_usd,
        input_tokens: 100,
        output_tokens: 20,
        ..request(node, end, 10, false)
    }
}

#[test]
fn rows_by_node_come_from_the_spans_of_each_window() {
    let mut view = view(Dimension::Node);
    for (i, millis) in [100, 200, 300, 400].into_iter().enumerate() {
        view.span(&request("east", T, millis, i == 0));
        view.span(&model_call("east", T, 0.001));
    }
    view.span(&request("west", T, 50, false));
    view.span(&model_call("west", T, 0.002));
    // A span of the next window waits for it.
    view.span(&request("west", T + 1, 50, false));
    view.rollup(summary(T, vec![agent("support", 5, 1, 0.006)]));
    let lines = view.render(None);
    assert_eq!(
        lines[4],
        "NODE  REQ/S  ERR%   P95      TOK/S  COST/H  CACHE%  REQS  COST"
    );
    assert_eq!(
        lines[5],
        "east  4      25.0%  400.0ms  480    $14.40  0.0%    4     $0.004"
    );
    // `west` has two requests in its totals: the one of the next window
    // is counted as it arrives.
    assert_eq!(
        lines[6],
        "west  1      0.0%   50.0ms   120    $7.20   0.0%    2     $0.002"
    );
    assert_eq!(
        lines.len(),
        7,
        "every request of the window is in a row: {lines:#?}"
    );

    view.rollup(summary(T + 1, vec![agent("support", 2, 0, 0.0)]));
    let lines = view.render(None);
    assert!(lines[6].starts_with("west  1 "), "{lines:#?}");
    // The rollup counted a request whose span never came: the header says so.
    assert_eq!(
        lines[3],
        "Rows by node count 1 of the window's 2 requests (spans arrived late or were skipped)"
    );
    // A late span of a closed window counts in the totals only.
    view.span(&request("south", T, 50, false));
    let lines = view.render(None);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("south  0 ") && l.contains(" 1 ")),
        "{lines:#?}"
    );
}

#[test]
fn rows_by_agent_ignore_spans() {
    let mut view = view(Dimension::Agent);
    view.span(&request("east", T, 100, false));
    view.rollup(summary(T, vec![]));
    assert_eq!(
        view.render(None).len(),
        5,
        "no rows: the rollup had no agents"
    );
}

#[test]
fn helpers_read_plainly() {
    assert_eq!(clock(T), "10:04:05");
    assert_eq!(label(""), "(none)");
    let filter = SummaryFilter {
        tenant: "*".into(),
        model: "mini".into(),
        node: "east".into(),
        ..Default::default()
    };
    assert_eq!(scope(&filter), "all tenants, model mini, node east");
}
