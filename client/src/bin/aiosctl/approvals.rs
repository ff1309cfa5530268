//! `aiosctl approvals ls|approve|reject|watch`: the approval queue as an
//! approver sees it (most critical first, then oldest first), verdicts with
//! a comment for the audit log, and a live feed of open approvals.

use std::time::SystemTime;

use aios_client::{ApprovalClient, manifest};
use aios_proto::v1::{Approval, ApprovalState, Criticality, Verdict};
use tokio_stream::StreamExt;

use crate::{
    Globals,
    output::{self, Format},
    resources::{Failure, age, or_dash, short_enum},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Which tenant's approvals.
#[derive(Debug, clap::Args)]
struct TenantArgs {
    /// Tenant (default: the API key's own).
    #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
    tenant: Option<String>,
    /// Every tenant (platform admin keys only).
    #[arg(short = 'A', long)]
    all_tenants: bool,
}

impl TenantArgs {
    fn tenant(&self) -> String {
        if self.all_tenants {
            "*".into()
        } else {
            self.tenant.clone().unwrap_or_default()
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the queue: open approvals (or those in --state), most critical first, then oldest.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        tenant: TenantArgs,
        /// Only approvals in this state (pending, approved, rejected, expired, escalated, executed); repeatable.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only approvals for this agent.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
    /// Approve an approval.
    Approve(DecideArgs),
    /// Reject an approval.
    Reject(DecideArgs),
    /// Stream the open approvals, then each change, until Ctrl-C.
    Watch {
        #[command(flatten)]
        tenant: TenantArgs,
        /// Also show changes after an approval closed (APPROVED → EXECUTED).
        #[arg(long)]
        include_decided: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DecideArgs {
    /// The approval's id (`apr_…`).
    id: String,
    /// Why; recorded in the audit log.
    #[arg(long, short = 'm', value_name = "TEXT", default_value = "")]
    comment: String,
    /// Tenant of the approval (default: the API key's own).
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    match &args.command {
        Command::Ls {
            tenant,
            states,
            agent,
        } => {
            let states = states
                .iter()
                .map(|s| parse_state(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::usage)?;
            let mut client = connect(globals).await?;
            let approvals = client
                .list(
                    &tenant.tenant(),
                    &states,
                    agent.as_deref().unwrap_or_default(),
                )
                .await?;
            let text = match globals.output {
                Format::Json => manifest::to_json_list(&approvals)?,
                Format::Yaml => manifest::to_yaml_list(&approvals)?,
                Format::Table if approvals.is_empty() => "No approvals found.\n".into(),
                Format::Table => list_table(&approvals, SystemTime::now()),
            };
            output::write_stdout(&text)?;
            Ok(0)
        }
        Command::Approve(decide) => decide_one(globals, decide, Verdict::Approve).await,
        Command::Reject(decide) => decide_one(globals, decide, Verdict::Reject).await,
        Command::Watch {
            tenant,
            include_decided,
        } => watch(globals, &tenant.tenant(), *include_decided).await,
    }
}

async fn decide_one(
    globals: &Globals,
    args: &DecideArgs,
    verdict: Verdict,
) -> Result<i32, Failure> {
    let mut client = connect(globals).await?;
    let approval = client
        .decide(
            args.tenant.as_deref().unwrap_or_default(),
            &args.id,
            verdict,
            &args.comment,
        )
        .await?;
    let text = match globals.output {
        Format::Json => manifest::to_json(&approval)?,
        Format::Yaml => manifest::to_yaml(&approval)?,
        Format::Table => format!("approval {}: {}\n", approval.id, progress(&approval)),
    };
    output::write_stdout(&text)?;
    Ok(0)
}

async fn watch(globals: &Globals, tenant: &str, include_decided: bool) -> Result<i32, Failure> {
    let mut client = connect(globals).await?;
    let mut events = client.watch(tenant, include_decided).await?;
    if globals.output == Format::Table {
        output::write_stdout(&format!(
            "{:<20}  {:<38}  {:<8}  {:<14}  ACTION\n",
            "TIME", "ID", "CRIT", "STATE"
        ))?;
    }
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            event = events.next() => event,
        };
        let Some(event) = event else {
            return Err(Failure::server("the control plane ended the watch"));
        };
        let approval = event
            .map_err(|status| Failure::server(aios_client::describe_status(&status)))?
            .approval
            .unwrap_or_default();
        let text = match globals.output {
            Format::Json => manifest::to_json(&approval)?,
            Format::Yaml => format!("---\n{}", manifest::to_yaml(&approval)?),
            Format::Table => watch_line(&approval),
        };
        output::write_stdout(&text)?;
    }
}

async fn connect(globals: &Globals) -> Result<ApprovalClient, Failure> {
    let Some(key) = globals.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(Failure::usage(
            "no API key: pass --api-key or set AIOS_API_KEY",
        ));
    };
    Ok(ApprovalClient::connect(&globals.endpoint, Some(key), globals.timeout).await?)
}

fn parse_state(text: &str) -> Result<ApprovalState, String> {
    let name = format!("APPROVAL_STATE_{}", text.trim().to_uppercase());
    match ApprovalState::from_str_name(&name) {
        Some(ApprovalState::Unspecified) | None => Err(format!(
            "unknown --state '{text}': pending, approved, rejected, expired, escalated or executed"
        )),
        Some(state) => Ok(state),
    }
}

fn state(approval: &Approval) -> String {
    let state = ApprovalState::try_from(approval.state).unwrap_or(ApprovalState::Unspecified);
    short_enum(state.as_str_name(), "APPROVAL_STATE_")
}

fn criticality(approval: &Approval) -> String {
    let value = Criticality::try_from(approval.criticality).unwrap_or(Criticality::Unspecified);
    short_enum(value.as_str_name(), "CRITICALITY_")
}

/// `pending (1/2 approvals)`, `rejected by bob: "why"`, `approved (2/2 approvals)`.
fn progress(approval: &Approval) -> String {
    let approvals = approval
        .decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Approve as i32)
        .count();
    let state = state(approval);
    match approval
        .decisions
        .iter()
        .find(|d| d.verdict == Verdict::Reject as i32)
    {
        Some(d) if d.comment.is_empty() => format!("{state} by {}", d.approver),
        Some(d) => format!("{state} by {}: {:?}", d.approver, d.comment),
        None => format!(
            "{state} ({approvals}/{} approvals)",
            approval.required_approvals
        ),
    }
}

/// ID, TENANT, CRITICALITY, STATE, APPROVALS, AGENT, ACTION, CALLER, AGE, EXPIRES IN.
fn list_table(approvals: &[Approval], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = approvals
        .iter()
        .map(|a| {
            let approvals = a
                .decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Approve as i32)
                .count();
            vec![
                a.id.clone(),
                or_dash(&a.tenant),
                criticality(a),
                state(a),
                format!("{approvals}/{}", a.required_approvals),
                or_dash(&a.agent),
                or_dash(&a.action),
                or_dash(&a.caller),
                age(a.create_time.as_ref(), now),
                expires_in(a, now),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "TENANT",
            "CRITICALITY",
            "STATE",
            "APPROVALS",
            "AGENT",
            "ACTION",
            "CALLER",
            "AGE",
            "EXPIRES IN",
        ],
        &rows,
    )
}

fn expires_in(approval: &Approval, now: SystemTime) -> String {
    approval
        .expire_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .and_then(|t| t.duration_since(now).ok())
        .map_or_else(|| "-".into(), output::duration)
}

fn watch_line(approval: &Approval) -> String {
    let time = approval.update_time.map_or_else(
        || "-".to_string(),
        |t| prost_types::Timestamp { nanos: 0, ..t }.to_string(),
    );
    format!(
        "{time:<20}  {:<38}  {:<8}  {:<14}  {} on {}/{} by {}\n",
        approval.id,
        criticality(approval),
        state(approval),
        approval.action,
        approval.tenant,
        approval.agent,
        approval.caller,
    )
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::Decision;

    use super::*;

    #[test]
    fn states_parse_in_any_case_and_unknown_ones_are_refused() {
        assert_eq!(parse_state("pending"), Ok(ApprovalState::Pending));
        assert_eq!(parse_state("EXECUTED"), Ok(ApprovalState::Executed));
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("done").is_err());
    }

    #[test]
    fn progress_counts_approvals_and_names_the_rejecter() {
        let mut approval = Approval {
            id: "apr_1".into(),
            state: ApprovalState::Pending as i32,
            required_approvals: 2,
            decisions: vec![Decision {
                approver: "alice".into(),
                verdict: Verdict::Approve as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(progress(&approval), "pending (1/2 approvals)");
        approval.state = ApprovalState::Rejected as i32;
        approval.decisions.push(Decision {
            approver: "bob".into(),
            verdict: Verdict::Reject as i32,
            comment: "no".into(),
            ..Default::default()
        });
        assert_eq!(progress(&approval), "rejected by bob: \"no\"");
    }
}
