//! `aiosctl budgets status [NAME]`: spend against each budget's current
//! window (limit, settled spend, what nodes hold in reserve, what is left),
//! as a table or, with `-o json|yaml`, as `aios.v1.BudgetStatus` messages
//! in the proto3 JSON mapping.

use aios_client::{BudgetClient, ClientError, manifest};
use aios_proto::v1::BudgetStatus;
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
    /// Show each budget's current window: limit, spent, reserved, remaining, percent used.
    Status {
        /// One budget's name; without it, every budget of the tenant.
        name: Option<String>,
        /// Tenant to read (default: the API key's own); `*` for every tenant (platform keys only).
        #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
        tenant: Option<String>,
        /// Every tenant, like `--tenant '*'` (platform keys only).
        #[arg(short = 'A', long)]
        all_tenants: bool,
    },
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let Command::Status {
        name,
        tenant,
        all_tenants,
    } = &args.command;
    let tenant = match (all_tenants, tenant) {
        (true, _) => "*".to_string(),
        (false, tenant) => tenant.clone().unwrap_or_default(),
    };
    let name = name.as_deref().unwrap_or_default();
    let key = crate::traces::api_key(globals)?;
    let mut client = BudgetClient::connect(&globals.endpoint, Some(key), globals.timeout).await?;
    let statuses = client
        .get_status(&tenant, name)
        .await
        .map_err(|error| not_found_as(error, name, &tenant))?;
    let text = match globals.output {
        Format::Json => manifest::to_json_list(&statuses)?,
        Format::Yaml => manifest::to_yaml_list(&statuses)?,
        Format::Table if statuses.is_empty() => format!("No budgets in {}.\n", where_(&tenant)),
        Format::Table => table(&statuses),
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// `NOT_FOUND` names the budget and where it was looked for (the server
/// resolves the key's own tenant); every other failure reads as for the
/// other commands.
fn not_found_as(error: ClientError, name: &str, tenant: &str) -> Failure {
    match &error {
        ClientError::Rpc(status) if status.code() == Code::NotFound => match status.message() {
            "" => Failure::server(format!("budget {name} not found in {}", where_(tenant))),
            message => Failure::server(message.to_string()),
        },
        _ => error.into(),
    }
}

/// `tenant acme`, `the key's tenant`, `any tenant`.
fn where_(tenant: &str) -> String {
    match tenant {
        "" => "the key's tenant".into(),
        "*" => "any tenant".into(),
        tenant => format!("tenant {tenant}"),
    }
}

// === The table ===

const HEADERS: [&str; 10] = [
    "TENANT",
    "BUDGET",
    "SUBJECT",
    "WINDOW",
    "LIMIT",
    "SPENT",
    "RESERVED",
    "REMAINING",
    "USED%",
    "EXCEEDED",
];

fn table(statuses: &[BudgetStatus]) -> String {
    let rows: Vec<Vec<String>> = statuses.iter().map(row).collect();
    output::table(&HEADERS, &rows)
}

/// The cells under [`HEADERS`].
fn row(status: &BudgetStatus) -> Vec<String> {
    let budget = status.budget.clone().unwrap_or_default();
    vec![
        or_dash(&budget.tenant),
        or_dash(&budget.name),
        or_dash(&status.subject),
        window(status),
        usd(status.limit_usd),
        usd(status.spent_usd),
        usd(status.reserved_usd),
        usd(status.remaining_usd),
        format!("{}%", status.percent_used),
        if status.exceeded { "yes" } else { "no" }.into(),
    ]
}

/// `2025-01-02T00:00:00Z→2025-01-03T00:00:00Z` (UTC, whatever the budget's
/// time zone); `total` for a budget with one window for all time.
fn window(status: &BudgetStatus) -> String {
    // Windows start and end on whole seconds; -o json keeps the nanos.
    let whole = |t: &prost_types::Timestamp| prost_types::Timestamp { nanos: 0, ..*t };
    match (&status.window_start, &status.window_end) {
        (Some(start), Some(end)) => format!("{}→{}", whole(start), whole(end)),
        (Some(start), None) => format!("{}→", whole(start)),
        (None, _) => "total".into(),
    }
}

/// Budget amounts are exact micro-USD: cents always, and the micro-dollars
/// when there are any, so nothing is rounded away: `$2.50`, `$1.234567`,
/// `$0.000045`.
fn usd(amount: f64) -> String {
    if !amount.is_finite() {
        return "-".into();
    }
    let micros = (amount * 1e6).round() as i128;
    let sign = if micros < 0 { "-" } else { "" };
    let micros = micros.unsigned_abs();
    let fraction = format!("{:06}", micros % 1_000_000);
    let trimmed = fraction.trim_end_matches('0');
    let fraction = if trimmed.len() < 2 {
        &fraction[..2]
    } else {
        trimmed
    };
    format!("{sign}${}.{fraction}", micros / 1_000_000)
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::{Kind, ResourceRef};

    use super::*;

    fn status(tenant: &str, name: &str) -> BudgetStatus {
        BudgetStatus {
            budget: Some(ResourceRef {
                kind: Kind::Budget.into(),
                tenant: tenant.into(),
                name: name.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn amounts_keep_cents_and_every_micro_dollar() {
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(2.5), "$2.50");
        assert_eq!(usd(1.234567), "$1.234567");
        assert_eq!(usd(0.000045), "$0.000045");
        assert_eq!(usd(0.1), "$0.10");
        assert_eq!(usd(1234.0), "$1234.00");
        assert_eq!(usd(-0.25), "-$0.25");
        assert_eq!(usd(f64::NAN), "-");
    }

    #[test]
    fn rows_show_the_window_in_utc_and_the_spend() {
        let day = BudgetStatus {
            window_start: Some(prost_types::Timestamp {
                seconds: 86_400 - 3_600,
                nanos: 0,
            }),
            window_end: Some(prost_types::Timestamp {
                seconds: 2 * 86_400 - 3_600,
                nanos: 0,
            }),
            limit_usd: 2.5,
            spent_usd: 0.75,
            reserved_usd: 0.5,
            remaining_usd: 1.25,
            percent_used: 30,
            ..status("acme", "paris")
        };
        let total = BudgetStatus {
            subject: "alice".into(),
            limit_usd: 1.0,
            spent_usd: 1.000001,
            percent_used: 100,
            exceeded: true,
            ..status("acme", "per-user")
        };
        assert_eq!(
            table(&[day, total]),
            "TENANT  BUDGET    SUBJECT  WINDOW                                     LIMIT  SPENT      RESERVED  REMAINING  USED%  EXCEEDED\n\
             acme    paris     -        1970-01-01T23:00:00Z→1970-01-02T23:00:00Z  $2.50  $0.75      $0.50     $1.25      30%    no\n\
             acme    per-user  alice    total                                      $1.00  $1.000001  $0.00     $0.00      100%   yes\n"
        );
    }

    #[test]
    fn not_found_names_the_budget_and_other_errors_read_as_usual() {
        let failure = not_found_as(
            ClientError::Rpc(tonic::Status::not_found(
                "budget nope not found in tenant acme",
            )),
            "nope",
            "",
        );
        assert_eq!(failure.message, "budget nope not found in tenant acme");
        assert_eq!(failure.code, aios_runtime::cli::EXIT_FAILURE);
        let failure = not_found_as(ClientError::Rpc(tonic::Status::not_found("")), "nope", "");
        assert_eq!(failure.message, "budget nope not found in the key's tenant");
        let failure = not_found_as(
            ClientError::Rpc(tonic::Status::permission_denied("cross tenant")),
            "nope",
            "globex",
        );
        assert_eq!(failure.message, "PERMISSION_DENIED: cross tenant");
    }
}
