//! `aiosctl traces get TRACE_ID`: one recent trace, as a tree of spans
//! (children indented under their parents) or, with `-o json|yaml`, whole
//! in the proto3 JSON mapping, for export.

use std::{collections::HashMap, time::Duration};

use aios_client::{ClientError, TelemetryClient, manifest, telemetry::parse_trace_id};
use aios_proto::v1::{Span, SpanStatusCode, Trace};
use tonic::Code;

use crate::{
    Globals,
    output::{self, Format},
    resources::{Failure, or_dash},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show one recent trace: its spans as a tree, or whole with -o json|yaml.
    Get {
        /// The trace id: 32 hex characters (an ExecuteResponse's `trace_id`,
        /// or the middle of a `traceparent`; a whole traceparent works too).
        trace_id: String,
    },
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let Command::Get { trace_id } = &args.command;
    let trace_id = parse_trace_id(trace_id).map_err(|e| Failure::usage(e.to_string()))?;
    let mut client = connect(globals).await?;
    let trace = client
        .get_trace(&trace_id)
        .await
        .map_err(|error| not_found_as(error, &trace_id))?;
    let text = match globals.output {
        Format::Json => manifest::to_json(&trace)?,
        Format::Yaml => manifest::to_yaml(&trace)?,
        Format::Table => describe(&trace),
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// A `TelemetryService` client.
async fn connect(globals: &Globals) -> Result<TelemetryClient, Failure> {
    let key = api_key(globals)?;
    Ok(TelemetryClient::connect(&globals.endpoint, Some(key), globals.timeout).await?)
}

/// Like the other commands, the telemetry ones need an API key.
pub fn api_key(globals: &Globals) -> Result<&str, Failure> {
    globals
        .api_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Failure::usage("no API key: pass --api-key or set AIOS_API_KEY"))
}

/// `NOT_FOUND` says why a trace can be missing; every other failure reads
/// as for the other commands.
fn not_found_as(error: ClientError, trace_id: &str) -> Failure {
    match &error {
        ClientError::Rpc(status) if status.code() == Code::NotFound => Failure::server(format!(
            "trace {trace_id} not found: the control plane keeps only recent traces \
             (the last 100,000 spans on each replica), a key sees only its own tenant's spans, \
             and a span reaches the control plane a moment after its request ends"
        )),
        _ => error.into(),
    }
}

// === The tree ===

/// A summary line, then the spans as a table whose first column is the
/// tree.
fn describe(trace: &Trace) -> String {
    let spans = &trace.spans;
    let start = spans.iter().map(|s| s.start_time_unix_nano).min();
    let end = spans.iter().map(|s| s.end_time_unix_nano).max();
    let took = match (start, end) {
        (Some(start), Some(end)) => {
            output::duration(Duration::from_nanos(end.saturating_sub(start)))
        }
        _ => "-".into(),
    };
    let mut tenants: Vec<&str> = spans.iter().map(|s| s.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let cost: f64 = spans.iter().map(|s| s.cost_usd).sum();
    let input: u64 = spans.iter().map(|s| s.input_tokens).sum();
    let output_tokens: u64 = spans.iter().map(|s| s.output_tokens).sum();
    let errors = spans.iter().filter(|s| is_error(s)).count();
    let mut text = output::fields(
        &[
            ("Trace", trace.trace_id.clone()),
            ("Tenant", or_dash(&tenants.join(", "))),
            ("Started", start.map_or("-".into(), time)),
            ("Duration", took),
            (
                "Spans",
                match errors {
                    0 => spans.len().to_string(),
                    n => format!("{} ({n} failed)", spans.len()),
                },
            ),
            ("Tokens", format!("{input} in, {output_tokens} out")),
            ("Cost", output::usd(cost)),
        ],
        0,
    );
    text.push('\n');
    let rows: Vec<Vec<String>> = tree(spans)
        .into_iter()
        .map(|(prefix, span)| row(&prefix, span))
        .collect();
    text.push_str(&output::table(
        &[
            "SPAN",
            "DURATION",
            "MODEL",
            "TOKENS IN/OUT",
            "COST",
            "STATUS",
        ],
        &rows,
    ));
    text
}

/// Spans in tree order (depth first, siblings by start time) with the
/// prefix that draws the tree. A span whose parent is not in the trace
/// (the caller's own span, or one not reported) is a root.
fn tree(spans: &[Span]) -> Vec<(String, &Span)> {
    let by_id: HashMap<&[u8], usize> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.span_id.is_empty())
        .map(|(i, s)| (s.span_id.as_slice(), i))
        .collect();
    let parent = |i: usize| {
        by_id
            .get(spans[i].parent_span_id.as_slice())
            .copied()
            .filter(|&p| p != i)
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for i in 0..spans.len() {
        match parent(i) {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    for &root in &roots {
        walk(root, "", None, &children, spans, &mut seen, &mut out);
    }
    // Spans on a parent cycle (a broken report) are reachable from no root:
    // show them at the top level rather than lose them.
    for i in 0..spans.len() {
        if !seen[i] {
            walk(i, "", None, &children, spans, &mut seen, &mut out);
        }
    }
    out
}

/// Appends span `i` and its subtree. `last` is `None` for a root, else
/// whether `i` is its parent's last child.
fn walk<'a>(
    i: usize,
    indent: &str,
    last: Option<bool>,
    children: &HashMap<usize, Vec<usize>>,
    spans: &'a [Span],
    seen: &mut [bool],
    out: &mut Vec<(String, &'a Span)>,
) {
    if std::mem::replace(&mut seen[i], true) {
        return;
    }
    let (branch, more) = match last {
        None => ("", ""),
        Some(true) => ("└─ ", "   "),
        Some(false) => ("├─ ", "│  "),
    };
    out.push((format!("{indent}{branch}"), &spans[i]));
    let kids = children.get(&i).map_or(&[][..], Vec::as_slice);
    let indent = format!("{indent}{more}");
    for (n, &kid) in kids.iter().enumerate() {
        walk(
            kid,
            &indent,
            Some(n + 1 == kids.len()),
            children,
            spans,
            seen,
            out,
        );
    }
}

/// The cells of one span.
fn row(prefix: &str, span: &Span) -> Vec<String> {
    let attribute = |key: &str| span.attributes.get(key).map(String::as_str);
    let mut name = format!("{prefix}{}", span.name);
    if let Some(attempt) = attribute("aios.attempt").filter(|a| *a != "1") {
        name.push_str(&format!(" (attempt {attempt})"));
    }
    if attribute("aios.fallback") == Some("true") {
        name.push_str(" (fallback)");
    }
    let took = Duration::from_nanos(
        span.end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano),
    );
    vec![
        name,
        output::duration(took),
        or_dash(&span.model),
        format!("{}/{}", span.input_tokens, span.output_tokens),
        output::usd(span.cost_usd),
        status(span),
    ]
}

fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == SpanStatusCode::Error as i32)
}

/// `ok`, `ok, cache hit`, `error timeout: the provider did not answer in 30s`.
fn status(span: &Span) -> String {
    let mut text = match (&span.status, is_error(span)) {
        (Some(status), true) => {
            let mut text = "error".to_string();
            if !status.error_type.is_empty() {
                text.push(' ');
                text.push_str(&status.error_type);
            }
            if !status.message.is_empty() {
                text.push_str(": ");
                text.push_str(status.message.lines().next().unwrap_or_default());
            }
            text
        }
        // Unset counts as OK, as in OpenTelemetry.
        _ => "ok".to_string(),
    };
    if span.cache_hit {
        text.push_str(", cache hit");
    }
    if span
        .attributes
        .get("aios.skipped_forensic")
        .map(String::as_str)
        == Some("true")
    {
        text.push_str(", skipped (forensic)");
    }
    text
}

/// A span time in RFC 3339, to the millisecond.
fn time(unix_nanos: u64) -> String {
    let seconds = (unix_nanos / 1_000_000_000) as i64;
    let millis = (unix_nanos / 1_000_000 % 1_000) as i32;
    prost_types::Timestamp {
        seconds,
        nanos: millis * 1_000_000,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::SpanStatus;

    use super::*;

    const ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const T0: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

    fn span(id: u8, parent: Option<u8>, name: &str, start_ms: u64, end_ms: u64) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            start_time_unix_nano: T0 + start_ms * 1_000_000,
            end_time_unix_nano: T0 + end_ms * 1_000_000,
            tenant: "acme".into(),
            ..Default::default()
        }
    }

    /// A request whose first model call timed out, then a retry that called
    /// a tool; the request span's parent is the caller's (not reported).
    fn trace() -> Trace {
        let mut root = span(1, Some(9), "invoke_agent support", 0, 1_250);
        root.model = "mini".into();
        let mut first = span(2, Some(1), "chat mini", 5, 505);
        first.model = "mini".into();
        first.status = Some(SpanStatus {
            code: SpanStatusCode::Error as i32,
            error_type: "timeout".into(),
            message: "no answer in 500ms\nmore detail".into(),
        });
        let mut retry = span(3, Some(1), "chat mini", 510, 900);
        retry.model = "mini".into();
        retry.input_tokens = 120;
        retry.output_tokens = 30;
        retry.cost_usd = 0.000_045;
        retry.attributes.insert("aios.attempt".into(), "2".into());
        let mut tool = span(4, Some(3), "execute_tool refund", 800, 850);
        tool.cache_hit = true;
        let mut last = span(5, Some(1), "chat big", 905, 1_240);
        last.model = "big".into();
        last.cost_usd = 0.012_5;
        last.attributes
            .insert("aios.fallback".into(), "true".into());
        Trace {
            trace_id: ID.into(),
            spans: vec![root, first, retry, tool, last],
        }
    }

    #[test]
    fn spans_show_as_a_tree_with_their_figures() {
        assert_eq!(
            describe(&trace()),
            "\
Trace:     0af7651916cd43dd8448eb211c80319c
Tenant:    acme
Started:   2026-01-01T00:00:00Z
Duration:  1.25s
Spans:     5 (1 failed)
Tokens:    120 in, 30 out
Cost:      $0.0125

SPAN                       DURATION  MODEL  TOKENS IN/OUT  COST       STATUS
invoke_agent support       1.25s     mini   0/0            $0         ok
├─ chat mini               500.0ms   mini   0/0            $0         error timeout: no answer in 500ms
├─ chat mini (attempt 2)   390.0ms   mini   120/30         $0.000045  ok
│  └─ execute_tool refund  50.0ms    -      0/0            $0         ok, cache hit
└─ chat big (fallback)     335.0ms   big    0/0            $0.0125    ok
"
        );
    }

    #[test]
    fn orphans_and_cycles_are_shown_at_the_top_level() {
        let mut trace = trace();
        // A span whose parent was never reported, and two that name each
        // other as parents.
        trace.spans.push(span(6, Some(42), "chat lost", 10, 20));
        trace.spans.push(span(7, Some(8), "a", 30, 40));
        trace.spans.push(span(8, Some(7), "b", 50, 60));
        let names: Vec<String> = tree(&trace.spans)
            .into_iter()
            .map(|(prefix, span)| format!("{prefix}{}", span.name))
            .collect();
        assert_eq!(names.len(), trace.spans.len(), "{names:?}");
        assert_eq!(names[0], "invoke_agent support");
        assert!(names.contains(&"chat lost".to_string()), "{names:?}");
        assert!(names.contains(&"a".to_string()), "{names:?}");
        assert!(names.contains(&"└─ b".to_string()), "{names:?}");
    }

    #[test]
    fn not_found_says_why_a_trace_can_be_missing() {
        let failure = not_found_as(ClientError::Rpc(tonic::Status::not_found("gone")), ID);
        assert!(
            failure.message.starts_with(&format!(
                "trace {ID} not found: the control plane keeps only recent traces"
            )),
            "{}",
            failure.message
        );
        assert_eq!(failure.code, aios_runtime::cli::EXIT_FAILURE);
        let failure = not_found_as(
            ClientError::Rpc(tonic::Status::permission_denied("needs VIEWER")),
            ID,
        );
        assert_eq!(failure.message, "PERMISSION_DENIED: needs VIEWER");
    }
}
