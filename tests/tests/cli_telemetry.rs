//! The telemetry commands of `aiosctl`, run as the built binary against a
//! control plane and two data-plane nodes in this process:
//!
//! - `traces get ID -o json` exports a request's whole trace in the proto3
//!   JSON mapping: it reads back as an `aios.v1.Trace` whose spans link to
//!   their parents and whose costs add up to what the response said; the
//!   table shows the same tree; malformed and unknown ids fail clearly.
//! - `top`, its output piped, prints plain frames whose rows count each
//!   agent's and each node's requests; Ctrl-C ends it cleanly; `-n 2`
//!   prints two frames and exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use aios_proto::v1 as pb;
use aios_runtime::hex;
use aios_tests::{
    Process,
    admin::{ADMIN_KEY, TestPlane},
    bin,
    cli::{aiosctl, from_proto_json},
    fake_provider::{FakeProvider, Reply},
    telemetry::{WAIT, ask, node, ready, seed, summary_reaching, telemetry},
};

/// Reads JSON as an `aios.v1.Trace` through the contract's descriptors:
/// what an importer of the export would do.
fn read_trace(json: &str) -> pb::Trace {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON: {e}\n{json}"));
    from_proto_json(&value, "aios.v1.Trace")
}

fn assert_cost(seen: f64, sent: f64) {
    assert!(sent > 0.0, "the fake provider's answers cost something");
    assert!(
        (seen - sent).abs() <= sent * 1e-9,
        "the trace holds ${seen}, the response cost ${sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_get_exports_each_requests_trace_with_its_tree_and_costs() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    let plane = TestPlane::embedded().await;
    let url = plane.url();
    let keys = seed(&plane, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let east = node(&url, "node-east", dir.path()).await;
    ready(&east).await;

    let responses = ask(&east, &keys.caller, 3).await;
    // Once the summary counts them, their spans are indexed too.
    let mut client = telemetry(&url, &keys.viewer).await;
    assert_eq!(summary_reaching(&mut client, 3).await.requests, 3);

    for response in &responses {
        let id = &response.trace_id;
        let run = aiosctl(&url, &keys.viewer, &["-o", "json", "traces", "get", id]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let trace = read_trace(&run.stdout);
        assert_eq!(&trace.trace_id, id);
        assert!(
            trace.spans.len() >= 2,
            "a request span and its model call: {trace:?}"
        );
        assert!(trace.spans.iter().all(|s| hex::encode(&s.trace_id) == *id));
        // One request span, the root (no traceparent was sent); every other
        // span's parent is in the trace.
        let roots: Vec<&pb::Span> = trace
            .spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "{trace:?}");
        assert_eq!(roots[0].operation, "invoke_agent");
        assert_eq!(roots[0].name, "invoke_agent support");
        for span in &trace.spans {
            assert!(
                span.parent_span_id.is_empty()
                    || trace.spans.iter().any(|p| p.span_id == span.parent_span_id),
                "{} has a parent outside the trace",
                span.name
            );
        }
        let chats: Vec<&pb::Span> = trace
            .spans
            .iter()
            .filter(|s| s.operation == "chat")
            .collect();
        assert!(
            chats
                .iter()
                .all(|c| c.parent_span_id == roots[0].span_id && c.model == "a"),
            "{trace:?}"
        );
        // Each span holds its own cost: together, what the response cost.
        assert_cost(
            trace.spans.iter().map(|s| s.cost_usd).sum(),
            response.cost_usd,
        );
        assert!(trace.spans.iter().all(|s| s.tenant == "acme"));

        // The table is the same tree.
        let run = aiosctl(&url, &keys.viewer, &["traces", "get", id]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(
            run.stdout.starts_with(&format!("Trace:     {id}\n")),
            "{}",
            run.stdout
        );
        let tree: Vec<&str> = run
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("SPAN "))
            .skip(1)
            .collect();
        assert_eq!(tree.len(), trace.spans.len(), "{}", run.stdout);
        assert!(
            tree[0].starts_with("invoke_agent support "),
            "{}",
            run.stdout
        );
        assert!(
            tree[1..]
                .iter()
                .all(|l| l.starts_with("├─ ") || l.starts_with("└─ ")),
            "{}",
            run.stdout
        );
        assert!(
            tree.iter().any(|l| l.starts_with("└─ chat a ")),
            "{}",
            run.stdout
        );
    }

    // Malformed ids fail before any call (exit 2); unknown ones say why a
    // trace can be missing (exit 1), as can another tenant's key.
    let run = aiosctl(&url, &keys.viewer, &["traces", "get", "not-a-trace"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid trace id 'not-a-trace'"),
        "{}",
        run.stderr
    );
    let unknown = "0af7651916cd43dd8448eb211c80319c";
    let run = aiosctl(&url, &keys.viewer, &["traces", "get", unknown]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "trace {unknown} not found: the control plane keeps only recent traces"
        )),
        "{}",
        run.stderr
    );
    // A whole traceparent works too, in capitals.
    let traceparent = format!(
        "00-{}-00f067aa0ba902b7-01",
        responses[0].trace_id.to_uppercase()
    );
    let run = aiosctl(
        &url,
        ADMIN_KEY,
        &["-o", "yaml", "traces", "get", &traceparent],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with(&format!("traceId: {}\n", responses[0].trace_id)),
        "{}",
        run.stdout
    );

    east.shutdown(Duration::from_secs(5)).await;
    plane.stop().await;
}

// === top ===

/// `aiosctl top` with its stdout piped (so plain frames), and its lines.
fn top(url: &str, key: &str, args: &[&str]) -> (Process, Receiver<String>) {
    let mut all = vec!["--endpoint", url, "--api-key", key, "top"];
    all.extend(args);
    let mut process = Process::spawn(&bin("aiosctl").unwrap(), &all).unwrap();
    let lines = process.stdout_lines().unwrap();
    (process, lines)
}

/// The next whole frame: the title line, the figures, a blank line, the
/// table; a blank line ends it.
fn next_frame(lines: &Receiver<String>, deadline: Instant) -> Option<Vec<String>> {
    let mut frame: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        assert!(
            !line.contains('\x1b'),
            "an escape code in plain output: {line:?}"
        );
        let blanks = frame.iter().filter(|l| l.is_empty()).count();
        if frame.is_empty() {
            assert!(
                line.starts_with("aiosctl top · "),
                "a frame starts with its title: {line:?}"
            );
        }
        if line.is_empty() && blanks == 1 {
            return Some(frame);
        }
        frame.push(line);
    }
}

/// A frame's rows: the first column, then the rest.
fn rows(frame: &[String]) -> Vec<(String, Vec<String>)> {
    frame
        .iter()
        .skip_while(|l| !l.is_empty())
        .skip(2)
        .map(|line| {
            let mut cells = line.split_whitespace().map(String::from);
            (cells.next().unwrap_or_default(), cells.collect())
        })
        .collect()
}

/// The REQS column (requests since `top` started) of `key`'s row.
fn total(frame: &[String], key: &str) -> Option<u64> {
    let (_, cells) = rows(frame).into_iter().find(|(k, _)| k == key)?;
    cells.get(6)?.parse().ok()
}

/// Reads frames until one satisfies `done`, and returns it; panics with the
/// last one after [`WAIT`].
fn frame_where(lines: &Receiver<String>, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut last = Vec::new();
    while let Some(frame) = next_frame(lines, deadline) {
        if done(&frame) {
            return frame;
        }
        last = frame;
    }
    panic!(
        "no such frame within {WAIT:?}; the last one:\n{}",
        last.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_counts_each_agents_and_nodes_requests_and_stops_cleanly() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    let plane = TestPlane::embedded().await;
    let url = plane.url();
    let keys = seed(&plane, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (
        node(&url, "node-east", dir.path()).await,
        node(&url, "node-west", dir.path()).await,
    );
    ready(&east).await;
    ready(&west).await;

    // Two operators watch: a tenant's viewer by agent, the platform by node.
    let (mut by_agent, agent_lines) = top(&url, &keys.viewer, &[]);
    let (mut by_node, node_lines) = top(&url, ADMIN_KEY, &["--tenant", "acme", "--by", "node"]);
    // A first frame means each has subscribed: the traffic comes after.
    let deadline = Instant::now() + WAIT;
    let first = next_frame(&agent_lines, deadline).expect("a first frame");
    assert!(
        first[0].starts_with("aiosctl top · live · the key's tenant · by agent · window "),
        "{first:#?}"
    );
    assert!(first.iter().any(|l| l.starts_with("AGENT ")), "{first:#?}");
    let first = next_frame(&node_lines, deadline).expect("a first frame");
    assert!(
        first[0].starts_with("aiosctl top · live · tenant acme · by node · "),
        "{first:#?}"
    );

    ask(&east, &keys.caller, 3).await;
    ask(&west, &keys.caller, 2).await;

    let frame = frame_where(&agent_lines, |f| total(f, "support") == Some(5));
    assert_eq!(rows(&frame).len(), 1, "only the agent that ran: {frame:#?}");
    assert!(
        frame[2].ends_with(" · nodes -"),
        "a tenant's key cannot read the fleet: {frame:#?}"
    );
    let frame = frame_where(&node_lines, |f| {
        total(f, "node-east") == Some(3) && total(f, "node-west") == Some(2)
    });
    assert_eq!(rows(&frame).len(), 2, "{frame:#?}");
    assert!(frame[2].ends_with(" · nodes 2"), "{frame:#?}");

    // Ctrl-C ends both cleanly, with nothing said on stderr (no reconnects).
    for top in [&mut by_agent, &mut by_node] {
        top.signal("INT").unwrap();
        let status = top.wait(WAIT).unwrap();
        assert!(status.success(), "{status:?}: {:#?}", top.stderr);
        assert!(top.stderr.is_empty(), "{:#?}", top.stderr);
    }

    // `-n 2`: two frames, then exit 0. (Totals count from `top`'s start:
    // the traffic above is in no frame of this one.)
    let run = aiosctl(&url, ADMIN_KEY, &["top", "--tenant", "acme", "-n", "2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout
            .matches("aiosctl top · live · tenant acme · by agent")
            .count(),
        2,
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains('\x1b'));
    // `-o json`: the rollups themselves.
    let run = aiosctl(&url, &keys.viewer, &["-o", "json", "top", "--once"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rollup: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        rollup["windowStart"].is_string() && rollup["windowEnd"].is_string(),
        "{rollup}"
    );
    // Another tenant's figures are refused, once, with the reason.
    let run = aiosctl(&url, &keys.viewer, &["top", "--tenant", "globex", "--once"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stderr.starts_with("error: PERMISSION_DENIED"),
        "{}",
        run.stderr
    );

    east.shutdown(Duration::from_secs(5)).await;
    west.shutdown(Duration::from_secs(5)).await;
    plane.stop().await;
}
