//! `aiosctl budgets status`, run as the built binary against a control
//! plane in this process:
//!
//! - a tenant's budgets show their current window (in UTC; a budget in
//!   `Europe/Paris` starts at Paris midnight), limit, and nothing spent;
//!   `-o json` is `aios.v1.BudgetStatus` in the proto3 JSON mapping;
//! - spend a node settles (`BudgetService.Allowances`) shows up as SPENT,
//!   what it holds as RESERVED, and the rest as REMAINING, up to EXCEEDED;
//! - an unknown budget fails naming it, another tenant's budgets are
//!   refused to a tenant's key, and a tenant without budgets says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::{Instant, SystemTime};

use aios_client::BudgetClient;
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient,
    budget_service_client::BudgetServiceClient, resource::Spec,
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, api_key, budget, tenant},
    cli::{aiosctl, from_proto_json},
    telemetry::WAIT,
};

/// Runs `aiosctl` and expects it to succeed.
fn ok(url: &str, key: &str, args: &[&str]) -> String {
    let run = aiosctl(url, key, args);
    assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
    run.stdout
}

/// The table's rows (after the header), as cells, by budget name.
fn rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "TENANT",
            "BUDGET",
            "SUBJECT",
            "WINDOW",
            "LIMIT",
            "SPENT",
            "RESERVED",
            "REMAINING",
            "USED%",
            "EXCEEDED"
        ]),
        "{table}"
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// The row of budget `name` (no subject), from TENANT to EXCEEDED.
fn row(table: &str, name: &str) -> Vec<String> {
    rows(table)
        .into_iter()
        .find(|cells| cells[1] == name)
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
}

/// Reads a JSON array of `aios.v1.BudgetStatus` through the contract's
/// descriptors, as a script consuming `-o json` would.
fn read_statuses(json: &str) -> Vec<pb::BudgetStatus> {
    let values: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    values
        .iter()
        .map(|value| from_proto_json(value, "aios.v1.BudgetStatus"))
        .collect()
}

/// A DAY budget of `limit` USD on the whole tenant, in `time_zone`.
fn daily(tenant: &str, name: &str, limit: f64, time_zone: &str) -> pb::Resource {
    let mut resource = budget(tenant, name);
    if let Some(Spec::Budget(spec)) = resource.spec.as_mut() {
        spec.limit_usd = limit;
        spec.time_zone = time_zone.into();
    }
    resource
}

/// The window `resource` is in now, computed like both planes do, as the
/// table shows it.
fn window_now(resource: &pb::Resource) -> (aios_model::Window, String) {
    let aios_model::Spec::Budget(budget) = aios_model::validate(resource).unwrap().spec else {
        panic!("not a budget");
    };
    let window = budget.window_at(SystemTime::now().try_into().unwrap());
    let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let text = format!("{}→{}", at(window.start), at(window.end.unwrap()));
    (window, text)
}

async fn apply(
    admin: &mut AdminServiceClient<aios_client::AuthChannel>,
    r: pb::Resource,
) -> String {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(r),
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner()
        .api_key_secret
}

/// One settlement line from node `node-a` for budget `acme/name`.
fn line(name: &str, window_start: i64, seq: u64, amounts: [i64; 3]) -> pb::AllowanceLine {
    let [spent_micros, release_micros, want_micros] = amounts;
    pb::AllowanceLine {
        budget: Some(pb::ResourceRef {
            kind: pb::Kind::Budget as i32,
            tenant: "acme".into(),
            name: name.into(),
        }),
        subject: String::new(),
        window_start,
        seq,
        spent_micros,
        release_micros,
        want_micros,
        incarnation: "cli-budgets-test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_status_shows_each_windows_limit_spend_and_what_is_left() {
    let plane = TestPlane::embedded().await;
    let url = plane.url();
    let channel = aios_client::connect(&url, Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    apply(&mut admin, tenant("acme")).await;
    apply(&mut admin, tenant("globex")).await;
    let viewer = apply(&mut admin, api_key("acme", "viewer", pb::Role::Viewer)).await;
    let node_key = apply(&mut admin, api_key("system", "nodes", pb::Role::Node)).await;

    // Nothing yet: a friendly line, and an empty list for scripts.
    let text = ok(&url, &viewer, &["budgets", "status"]);
    assert_eq!(text, "No budgets in the key's tenant.\n");
    let text = ok(
        &url,
        ADMIN_KEY,
        &["budgets", "status", "--tenant", "globex"],
    );
    assert_eq!(text, "No budgets in tenant globex.\n");
    assert_eq!(
        ok(&url, &viewer, &["-o", "json", "budgets", "status"]),
        "[]\n"
    );

    let utc = daily("acme", "daily", 2.5, "");
    let paris = daily("acme", "paris", 10.0, "Europe/Paris");
    apply(&mut admin, utc.clone()).await;
    apply(&mut admin, paris.clone()).await;
    // The control plane reads budgets from its config cache: wait for both.
    let mut budgets = BudgetClient::connect(&url, Some(&viewer), WAIT)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while budgets.get_status("", "").await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the budgets never showed up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The table: one row per budget, its current window in UTC, nothing spent.
    let (utc_window, utc_text) = window_now(&utc);
    let (paris_window, paris_text) = window_now(&paris);
    let table = ok(&url, &viewer, &["budgets", "status"]);
    assert_eq!(rows(&table).len(), 2, "{table}");
    assert_eq!(
        row(&table, "daily"),
        [
            "acme", "daily", "-", &utc_text, "$2.50", "$0.00", "$0.00", "$2.50", "0%", "no"
        ],
        "{table}"
    );
    assert_eq!(
        row(&table, "paris"),
        [
            "acme",
            "paris",
            "-",
            &paris_text,
            "$10.00",
            "$0.00",
            "$0.00",
            "$10.00",
            "0%",
            "no"
        ],
        "{table}"
    );
    // Paris midnight is 23:00 UTC in winter, 22:00 in summer; a day there
    // lasts 23 to 25 hours.
    assert_eq!(utc_window.start % 86_400, 0, "{table}");
    assert!(
        [22 * 3_600, 23 * 3_600].contains(&paris_window.start.rem_euclid(86_400)),
        "{table}"
    );
    let paris_hours = (paris_window.end.unwrap() - paris_window.start) / 3_600;
    assert!((23..=25).contains(&paris_hours), "{table}");

    // -o json: the same, as BudgetStatus messages.
    let json = ok(&url, &viewer, &["-o", "json", "budgets", "status"]);
    let statuses = read_statuses(&json);
    assert_eq!(statuses.len(), 2, "{json}");
    let status = &statuses[0];
    assert_eq!(status.budget.as_ref().unwrap().name, "daily", "{json}");
    assert_eq!(status.budget.as_ref().unwrap().tenant, "acme", "{json}");
    assert_eq!(status.limit_usd, 2.5, "{json}");
    assert_eq!(status.spent_usd, 0.0, "{json}");
    assert_eq!(status.remaining_usd, 2.5, "{json}");
    assert_eq!(status.window_start.unwrap().seconds, utc_window.start);
    assert_eq!(
        statuses[1].window_start.unwrap().seconds,
        paris_window.start
    );
    let yaml = ok(&url, &viewer, &["-o", "yaml", "budgets", "status", "paris"]);
    assert!(yaml.starts_with("budget:\n"), "{yaml}");
    assert!(yaml.contains("limitUsd: 10"), "{yaml}");

    // One budget by name; an unknown one fails naming it.
    let table = ok(&url, &viewer, &["budgets", "status", "daily"]);
    assert_eq!(rows(&table).len(), 1, "{table}");
    let run = aiosctl(&url, &viewer, &["budgets", "status", "nope"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_eq!(
        run.stderr.trim_end(),
        "error: budget nope not found in tenant acme"
    );
    // A tenant's key reads only its own tenant; the platform reads any.
    let run = aiosctl(&url, &viewer, &["budgets", "status", "--tenant", "globex"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stderr.starts_with("error: PERMISSION_DENIED"),
        "{}",
        run.stderr
    );
    let table = ok(&url, ADMIN_KEY, &["budgets", "status", "--tenant", "*"]);
    assert_eq!(rows(&table).len(), 2, "{table}");
    let table = ok(&url, ADMIN_KEY, &["budgets", "status", "-A", "paris"]);
    assert_eq!(row(&table, "paris")[0], "acme", "{table}");

    // A node settles $0.75 and holds $0.50 more: 30% used, $1.25 left.
    let channel = aios_client::connect(&url, Some(&node_key), WAIT)
        .await
        .unwrap();
    let mut node = BudgetServiceClient::new(channel);
    let mut settle = async |line: pb::AllowanceLine| {
        let grants = node
            .allowances(pb::AllowancesRequest {
                node_id: "node-a".into(),
                lines: vec![line],
            })
            .await
            .unwrap()
            .into_inner()
            .grants;
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].error, "", "{grants:?}");
        grants[0].clone()
    };
    let grant = settle(line("daily", utc_window.start, 1, [750_000, 0, 500_000])).await;
    assert_eq!((grant.spent_micros, grant.held_micros), (750_000, 500_000));
    let table = ok(&url, &viewer, &["budgets", "status"]);
    assert_eq!(
        row(&table, "daily")[4..],
        ["$2.50", "$0.75", "$0.50", "$1.25", "30%", "no"],
        "{table}"
    );
    assert_eq!(row(&table, "paris")[5], "$0.00", "{table}");

    // $2.00 more settled, the rest given back: over the limit.
    settle(line("daily", utc_window.start, 2, [2_000_000, 500_000, 0])).await;
    let table = ok(&url, &viewer, &["budgets", "status", "daily"]);
    assert_eq!(
        row(&table, "daily")[4..],
        ["$2.50", "$2.75", "$0.00", "$0.00", "110%", "yes"],
        "{table}"
    );
    let json = ok(&url, &viewer, &["-o", "json", "budgets", "status", "daily"]);
    let statuses = read_statuses(&json);
    assert_eq!(statuses.len(), 1, "{json}");
    assert_eq!(statuses[0].spent_usd, 2.75, "{json}");
    assert_eq!(statuses[0].remaining_usd, 0.0, "{json}");
    assert_eq!(statuses[0].percent_used, 110, "{json}");
    assert!(statuses[0].exceeded, "{json}");

    plane.stop().await;
}
