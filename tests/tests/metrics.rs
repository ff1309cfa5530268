//! Prometheus metrics end to end: both planes' `/metrics` parse with the
//! Prometheus project's own parser (`tests/python/metrics_check.py`), count
//! the requests a node served, their model calls, tokens and cost exactly,
//! carry no id-like label values, and export only declared series; and the
//! alert rules and Grafana dashboard in `deploy/` parse (PromQL with a real
//! parser) and use only series the planes export.
//!
//! The recorder is process-wide, so one test here sends traffic; the other
//! only reads files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Write,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use aios_control_plane::Secret;
use aios_data_plane::{
    DataPlane,
    fleet::ResourceKey,
    pipeline::{RemoteProviders, Settings},
};
use aios_model::{Kind as ResourceKind, Usd};
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient,
    resource::Spec,
};
use aios_runtime::metrics::{Kind, LATENCY_BUCKETS, Series};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, agent, api_key, model, routing_table, tenant},
    fake_provider::{FakeProvider, Fault, Reply},
    http_get, python, repo_root,
};
use promql_parser::{
    label::MatchOp,
    parser::{Expr, ast::VectorSelector},
    util::{ExprVisitor, walk_expr},
};

const WAIT: Duration = Duration::from_secs(30);
/// A tenant name that no label may carry.
const TENANT: &str = "tenant-5e7c1d9a4b";
/// An agent that does not exist: what a caller typed must not become a label.
const GHOST_AGENT: &str = "ghost-agent-3f9b2c7d";

// === the series the planes declare ===

/// Every declared series, by name.
fn declared() -> HashMap<&'static str, &'static Series> {
    let mut all = HashMap::new();
    for list in [
        aios_runtime::metrics::SERIES,
        aios_control_plane::series::SERIES,
        aios_data_plane::series::SERIES,
    ] {
        for series in list {
            assert!(
                all.insert(series.name, series).is_none(),
                "{} is declared twice",
                series.name
            );
        }
    }
    all
}

/// The declared series a sample or selector name belongs to
/// (`x_bucket`, `x_sum` and `x_count` belong to histogram `x`).
fn series_of<'a>(declared: &HashMap<&str, &'a Series>, name: &str) -> Option<&'a Series> {
    if let Some(series) = declared.get(name) {
        return Some(series);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let series = declared.get(name.strip_suffix(suffix)?)?;
        (series.kind == Kind::Histogram).then_some(*series)
    })
}

// === parsing an exposition ===

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Exposition {
    /// Family name (as the parser names it) → its type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

/// Parses `text` with `prometheus_client.parser`; panics if it does not parse.
fn parse(text: &str) -> Exposition {
    let mut child = Command::new(python().unwrap())
        .arg(repo_root().join("tests/python/metrics_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for (name, count) in report["type_lines"].as_object().unwrap() {
        assert_eq!(count, 1, "{name} has {count} # TYPE lines");
    }
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for family in report["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap().to_string();
        types.insert(name, family["type"].as_str().unwrap().to_string());
        for s in family["samples"].as_array().unwrap() {
            let value = match &s["value"] {
                serde_json::Value::String(v) if v == "inf" => f64::INFINITY,
                v => v.as_f64().expect("a finite value"),
            };
            let labels = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            samples.push(Sample {
                name: s["name"].as_str().unwrap().to_string(),
                labels,
                value,
            });
        }
    }
    Exposition { types, samples }
}

impl Exposition {
    /// The sum of `name`'s samples whose labels include `labels`; there
    /// must be one at least (a series shown as 0 is there).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self.matching(name, labels).map(|s| s.value).collect();
        assert!(!matching.is_empty(), "no {name} with {labels:?}");
        matching.iter().sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// The `aios_*` series are declared, with their type and labels.
fn assert_declared(exposition: &Exposition, declared: &HashMap<&str, &Series>) {
    for sample in exposition
        .samples
        .iter()
        .filter(|s| s.name.starts_with("aios_"))
    {
        let series = series_of(declared, &sample.name)
            .unwrap_or_else(|| panic!("{} is exported but not declared", sample.name));
        for label in sample.labels.keys() {
            let bucket = series.kind == Kind::Histogram && label == "le";
            assert!(
                bucket || series.labels.contains(&label.as_str()),
                "{} carries label {label}, not declared",
                sample.name
            );
        }
    }
    for (family, kind) in &exposition.types {
        if let Some(series) = declared
            .get(family.as_str())
            .or_else(|| declared.get(format!("{family}_total").as_str()))
        {
            assert_eq!(kind, series.kind.as_str(), "type of {family}");
        }
    }
}

/// A latency histogram's buckets are the configured ones, cumulative, and
/// the `+Inf` bucket equals the count.
fn assert_histogram(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = exposition
        .matching(&bucket, labels)
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    let mut want = LATENCY_BUCKETS.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(bounds, want, "{name} buckets");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = exposition.value(&format!("{name}_count"), labels);
    assert_eq!(buckets.last().unwrap().1, count);
    count
}

// === PromQL in deploy/ ===

/// Grafana's built-in interval variables, as a real query would get them.
fn grafana_expr(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m");
    assert!(!expr.contains('$'), "unknown Grafana variable in {expr}");
    expr
}

/// Every selector in `expr` as (metric name, label names it matches on).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    struct Collect(Vec<(String, Vec<String>)>);
    impl Collect {
        fn add(&mut self, vs: &VectorSelector) {
            let name = vs.name.clone().or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                    .map(|m| m.value.clone())
            });
            let labels = vs
                .matchers
                .matchers
                .iter()
                .map(|m| m.name.clone())
                .filter(|l| l != "__name__")
                .collect();
            self.0
                .push((name.expect("a selector names its metric"), labels));
        }
    }
    impl ExprVisitor for Collect {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(vs) => self.add(vs),
                Expr::MatrixSelector(ms) => self.add(&ms.vs),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed =
        promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}"));
    let mut collect = Collect(Vec::new());
    walk_expr(&mut collect, &parsed).unwrap();
    collect.0
}

/// Labels Prometheus adds to every scraped series (see deploy/prometheus/prometheus.yaml).
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace"];

/// Every PromQL expression in the alert rules and the dashboard, each with
/// where it is; checks each file's own shape on the way.
fn deploy_exprs() -> Vec<(String, String)> {
    let root = repo_root().join("deploy");
    let mut exprs = Vec::new();

    // Alert rules (Prometheus rule-file format).
    let text = std::fs::read_to_string(root.join("prometheus/aios-alerts.yaml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = BTreeSet::new();
    let groups = rules["groups"].as_sequence().expect("groups");
    assert!(!groups.is_empty());
    for group in groups {
        let group_name = group["name"].as_str().expect("a group has a name");
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("an alerting rule");
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("page" | "warning" | "info")),
                "{alert}: severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            if let Some(duration) = rule.get("for") {
                let d = duration.as_str().unwrap();
                assert!(
                    d.len() > 1
                        && d[..d.len() - 1].bytes().all(|b| b.is_ascii_digit())
                        && d.ends_with(['s', 'm', 'h']),
                    "{alert}: for {d}"
                );
            }
            let expr = rule["expr"].as_str().expect("expr").to_string();
            exprs.push((format!("{group_name}/{alert}"), expr));
        }
    }
    for seed in [
        "AiosHighErrorRate",
        "AiosHighLatencyP95",
        "AiosCostAbove100UsdPerHour",
        "AiosNodeDown",
        "AiosLowCacheHitRate",
    ] {
        assert!(alerts.contains(seed), "alert {seed} is missing");
    }

    // Node-down rules name the scrape jobs of the example configuration.
    let config: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("prometheus/prometheus.yaml")).unwrap(),
    )
    .unwrap();
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|job| job["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        config["rule_files"][0].as_str(),
        Some("aios-alerts.yaml"),
        "prometheus.yaml loads the rules"
    );
    for (_, expr) in &exprs {
        for job in expr.split("job=\"").skip(1) {
            let job = &job[..job.find('"').unwrap()];
            assert!(jobs.contains(job), "job {job} is not scraped");
        }
    }

    // The Grafana dashboard.
    let text = std::fs::read_to_string(root.join("grafana/aios-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["title", "uid"] {
        assert!(
            dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
            "{key}"
        );
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus datasource variable"
    );
    let mut ids = BTreeSet::new();
    let mut cells: Vec<(u64, u64, u64, u64, u64)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let kind = panel["type"].as_str().expect("panel type");
        let title = panel["title"].as_str().expect("panel title");
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos");
        for &(other, oh, ow, ox, oy) in &cells {
            let apart = x + w <= ox || ox + ow <= x || y + h <= oy || oy + oh <= y;
            assert!(apart, "{title} overlaps panel {other}");
        }
        cells.push((id, h, w, x, y));
        if kind == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert!(target["refId"].is_string(), "{title}: refId");
            let expr = grafana_expr(target["expr"].as_str().expect("expr"));
            exprs.push((format!("dashboard/{title}"), expr));
        }
    }
    exprs
}

/// Metric names `exprs` select, other than Prometheus's own `up`; each one
/// declared, matched only on its declared labels.
fn deploy_names(exprs: &[(String, String)]) -> BTreeSet<String> {
    let declared = declared();
    let mut names = BTreeSet::new();
    for (place, expr) in exprs {
        for (name, labels) in selectors(expr) {
            if name == "up" {
                continue;
            }
            let series = series_of(&declared, &name)
                .unwrap_or_else(|| panic!("{place}: {name} is not a series aios exports"));
            for label in labels {
                assert!(
                    series.labels.contains(&label.as_str())
                        || TARGET_LABELS.contains(&label.as_str())
                        || (label == "le" && name.ends_with("_bucket")),
                    "{place}: {name} has no label {label}"
                );
            }
            names.insert(name);
        }
    }
    names
}

#[test]
fn alert_rules_and_the_dashboard_parse_and_use_only_exported_series() {
    let exprs = deploy_exprs();
    let names = deploy_names(&exprs);
    for wanted in [
        "aios_requests_total",
        "aios_request_duration_seconds_bucket",
        "aios_cost_micro_usd_total",
        "aios_tokens_total",
        "aios_cache_lookups_total",
        "aios_fleet_connected_nodes",
        "aios_telemetry_spans_total",
        "aios_telemetry_spans_dropped_total",
    ] {
        assert!(names.contains(wanted), "nothing in deploy/ shows {wanted}");
    }
}

// === both planes, end to end ===

type Admin = AdminServiceClient<aios_client::AuthChannel>;
type Agents = AgentServiceClient<aios_client::AuthChannel>;

/// Applies tenant [`TENANT`] with model `a` (the fake provider), table
/// `std` and agent `support`; returns the caller key's secret and how many
/// resources were applied.
async fn seed(plane: &TestPlane, fake: &FakeProvider) -> (String, usize) {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    let mut m = model(TENANT, "a");
    if let Some(Spec::Model(spec)) = m.spec.as_mut() {
        spec.provider = pb::ModelProvider::OpenaiCompatible as i32;
        spec.provider_model = "a-v1".into();
        spec.endpoint = format!("{}/v1", fake.url());
        spec.api_key_env = String::new();
    }
    for resource in [
        tenant(TENANT),
        m,
        routing_table(TENANT, "std", "a"),
        agent(TENANT, "support", "std"),
    ] {
        apply(&mut admin, resource).await;
    }
    let caller = apply(&mut admin, api_key(TENANT, "caller", pb::Role::Caller)).await;
    (caller.api_key_secret, 5)
}

async fn apply(admin: &mut Admin, resource: pb::Resource) -> pb::ApplyResponse {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// `Execute` of `text` by `agent`, in trace `trace` (32 hex digits).
async fn execute(
    agents: &mut Agents,
    agent: &str,
    text: &str,
    trace: &str,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::ExecuteRequest {
        agent: agent.into(),
        input: Some(pb::execute_request::Input::Messages(pb::Messages {
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: text.into(),
                ..Default::default()
            }],
        })),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    agents
        .execute(request)
        .await
        .map(tonic::Response::into_inner)
}

/// What the responses said, summed.
#[derive(Debug, Default)]
struct Sent {
    micro_usd: i64,
    input_tokens: u64,
    output_tokens: u64,
}

impl Sent {
    fn add(&mut self, response: &pb::ExecuteResponse) {
        self.micro_usd += Usd::from_f64(response.cost_usd).unwrap().micros();
        let usage = response.usage.unwrap_or_default();
        self.input_tokens += usage.input_tokens;
        self.output_tokens += usage.output_tokens;
    }
}

/// The value of an unlabelled sample, read without the parser (for polling).
fn plain_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_planes_export_parseable_request_cost_and_token_series_without_ids_in_labels() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    // The node starts first, as in a process of its own, so it is what
    // installs the recorder: its handles must count from the start.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = aios_data_plane::Config::local(
        format!("http://{addr}").parse().unwrap(),
        dir.path().join("node"),
    );
    config.node.node_id = "node-metrics".into();
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    let node = DataPlane::start_with(
        &config,
        Arc::new(RemoteProviders::new().unwrap()),
        Settings::default(),
    )
    .await
    .unwrap();
    let plane = TestPlane::embedded_on(dir.path(), addr).await;
    let (caller, applied) = seed(&plane, &fake).await;
    let last = ResourceKey::new(ResourceKind::ApiKey, TENANT, "caller");
    let mut changes = node.node_config().subscribe();
    tokio::time::timeout(WAIT, changes.wait_for(|c| c.get(&last).is_some()))
        .await
        .expect("the node receives the config")
        .unwrap();

    let url = format!("http://{}", node.grpc_addr());
    let mut agents = AgentServiceClient::new(
        aios_client::connect(&url, Some(&caller), WAIT)
            .await
            .unwrap(),
    );
    let mut sent = Sent::default();
    let mut traces = Vec::new();
    let mut trace = || {
        let id = format!("{:032x}", rand::random::<u128>() | 1);
        traces.push(id.clone());
        id
    };
    // Five distinct questions, then the first again (a cache hit).
    for i in 0..5 {
        let r = execute(
            &mut agents,
            "support",
            &format!("What is {i}+{i}?"),
            &trace(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, pb::ExecutionStatus::Succeeded as i32, "{r:?}");
        assert!(!r.cache_hit);
        sent.add(&r);
    }
    let r = execute(&mut agents, "support", "What is 0+0?", &trace())
        .await
        .unwrap();
    assert!(r.cache_hit, "{r:?}");
    sent.add(&r);
    // A 503, retried: two calls to the model, one request.
    fake.script(vec![Fault::Status(503)]);
    let r = execute(&mut agents, "support", "Retry me", &trace())
        .await
        .unwrap();
    assert_eq!(r.status, pb::ExecutionStatus::Succeeded as i32, "{r:?}");
    sent.add(&r);
    // A 400: the model refuses the request, which fails (not retried).
    fake.script(vec![Fault::Status(400)]);
    let r = execute(&mut agents, "support", "Refuse me", &trace())
        .await
        .unwrap();
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32, "{r:?}");
    sent.add(&r);
    // An agent that does not exist: NOT_FOUND, after authentication.
    let error = execute(&mut agents, GHOST_AGENT, "Anyone?", &trace())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    // A key nobody issued: refused before its tenant is known.
    let forged = "aios_forgedforgedforgedforgedforgedforgedforg";
    let mut strangers = AgentServiceClient::new(
        aios_client::connect(&url, Some(forged), WAIT)
            .await
            .unwrap(),
    );
    let error = execute(&mut strangers, "support", "Let me in", &trace())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unauthenticated);
    assert!(sent.micro_usd > 0 && sent.input_tokens > 0 && sent.output_tokens > 0);

    // Spans: 5 × (request + call), the hit's request span, the retried
    // request with its two calls, the refused one with its call, NOT_FOUND.
    let spans = 5 * 2 + 1 + 3 + 2 + 1;
    let deadline = tokio::time::Instant::now() + WAIT;
    let control = loop {
        let (code, text) = http_get(plane.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let taken = plain_value(&text, "aios_telemetry_spans_total");
        if taken >= f64::from(spans) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (code, data) = http_get(node.admin_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let control = parse(&control);
    let data = parse(&data);

    let declared = declared();
    for exposition in [&control, &data] {
        assert_declared(exposition, &declared);
    }
    // Both planes share this process's recorder; the plane label tells
    // their series apart.
    let d = &data;
    let dp = ("plane", "data-plane");
    let agent_requests = [dp, ("operation", "invoke_agent")];
    let requests = |status| d.value("aios_requests_total", &[dp, ("status", status)]);
    assert_eq!(
        requests("ok"),
        7.0,
        "5 answers, a cache hit, a retried answer"
    );
    assert_eq!(requests("model_rejected_request"), 1.0);
    assert_eq!(requests("not_found"), 1.0);
    assert_eq!(d.value("aios_requests_total", &agent_requests), 9.0);
    assert_eq!(
        assert_histogram(d, "aios_request_duration_seconds", &agent_requests),
        9.0
    );
    assert_eq!(
        d.value("aios_requests_total", &[dp, ("operation", "embeddings")]),
        0.0,
        "shown before any embedding"
    );
    let calls = |outcome| {
        d.value(
            "aios_model_calls_total",
            &[("model", "a"), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("ok"), 6.0);
    assert_eq!(calls("unavailable"), 1.0, "the 503");
    assert_eq!(calls("invalid_request"), 1.0, "the 400");
    assert_eq!(
        d.value("aios_cost_micro_usd_total", &[("model", "a")]),
        sent.micro_usd as f64,
        "cost equals the responses' cost"
    );
    assert_eq!(
        d.value("aios_cost_micro_usd_total", &[]),
        sent.micro_usd as f64
    );
    let tokens = |direction| {
        d.value(
            "aios_tokens_total",
            &[("model", "a"), ("direction", direction)],
        )
    };
    assert_eq!(tokens("input"), sent.input_tokens as f64);
    assert_eq!(tokens("output"), sent.output_tokens as f64);
    let lookups = |result| d.value("aios_cache_lookups_total", &[("result", result)]);
    assert_eq!((lookups("hit"), lookups("miss")), (1.0, 7.0));
    let execute_calls = |code| {
        d.value(
            "aios_grpc_server_handled_total",
            &[
                dp,
                ("service", "aios.v1.AgentService"),
                ("method", "Execute"),
                ("code", code),
            ],
        )
    };
    assert_eq!(execute_calls("OK"), 8.0, "a failed execution is an OK call");
    assert_eq!(execute_calls("NOT_FOUND"), 1.0);
    assert_eq!(execute_calls("UNAUTHENTICATED"), 1.0);

    let c = &control;
    let cp = ("plane", "control-plane");
    assert_eq!(
        c.value(
            "aios_grpc_server_handled_total",
            &[cp, ("method", "Apply"), ("code", "OK")]
        ),
        applied as f64
    );
    assert_eq!(c.value("aios_fleet_connected_nodes", &[]), 1.0);
    assert_eq!(c.value("aios_telemetry_spans_total", &[]), f64::from(spans));
    assert!(
        c.value(
            "aios_telemetry_batches_total",
            &[cp, ("outcome", "written")]
        ) >= 1.0
    );
    assert_eq!(
        c.value(
            "aios_telemetry_batches_total",
            &[cp, ("outcome", "duplicate")]
        ),
        0.0
    );
    assert_eq!(c.value("aios_ready", &[cp]), 1.0);
    assert_eq!(d.value("aios_ready", &[dp]), 1.0);

    // No label value is an id, a secret or something a caller typed.
    let mut secrets = vec![
        TENANT.to_string(),
        GHOST_AGENT.to_string(),
        caller.clone(),
        forged.to_string(),
        ADMIN_KEY.to_string(),
    ];
    secrets.extend(traces);
    for exposition in [&control, &data] {
        for sample in &exposition.samples {
            for (label, value) in &sample.labels {
                let hex_id = value.len() >= 16 && value.bytes().all(|b| b.is_ascii_hexdigit());
                assert!(
                    !hex_id
                        && !value.starts_with("aios_")
                        && !secrets.iter().any(|s| value.contains(s.as_str())),
                    "{}{{{label}={value:?}}} looks like an id or a secret",
                    sample.name
                );
            }
        }
    }

    // What deploy/ charts and alerts on is here.
    let exported: BTreeSet<&str> = control.names().union(&data.names()).copied().collect();
    for name in deploy_names(&deploy_exprs()) {
        assert!(
            exported.contains(name.as_str()),
            "deploy/ uses {name}, not exported"
        );
    }

    node.shutdown(Duration::from_secs(5)).await;
    plane.stop().await;
}
