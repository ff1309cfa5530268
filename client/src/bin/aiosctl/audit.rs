//! `aiosctl audit`: the most recent audit events, in the log's
//! chronological order (like `tail`).

use std::{
    str::FromStr,
    time::{Duration, SystemTime},
};

use aios_client::{kind, manifest};
use aios_proto::v1::{AuditAction, AuditEvent, Kind, ListAuditEventsRequest};

use crate::{
    Globals,
    output::{self, Format},
    resources::{self, Failure, or_dash, short_enum},
};

/// Largest page the server returns.
const MAX_PAGE: u32 = 1000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenant whose events to show (default: the API key's own).
    #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
    tenant: Option<String>,
    /// Events of every tenant (platform admin keys only).
    #[arg(short = 'A', long)]
    all_tenants: bool,
    /// Only events by this API key (its name).
    #[arg(long, value_name = "KEY")]
    actor: Option<String>,
    /// Only events on this kind (tenant, apikey, budget, …).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Only events on resources with this name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Only events this recent (`30m`, `1h`, `7d`) or since an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", default_value = "7d")]
    since: Option<String>,
    /// Show at most the N most recent events.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: u32,
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let kind = args
        .kind
        .as_deref()
        .map(kind::parse_kind)
        .transpose()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let start_time = args
        .since
        .as_deref()
        .map(|since| parse_since(since, SystemTime::now()))
        .transpose()
        .map_err(Failure::usage)?;
    let mut client = resources::connect(globals).await?;
    let mut request = ListAuditEventsRequest {
        tenant: if args.all_tenants {
            "*".into()
        } else {
            args.tenant.clone().unwrap_or_default()
        },
        actor: args.actor.clone().unwrap_or_default(),
        kind: kind.unwrap_or(Kind::Unspecified).into(),
        name: args.name.clone().unwrap_or_default(),
        start_time,
        end_time: None,
        page_size: MAX_PAGE as i32,
        page_token: String::new(),
    };
    // The log is chronological: read it from --since to the end and keep
    // the last `limit` events, so the most recent ones show.
    let limit = args.limit as usize;
    let mut events = std::collections::VecDeque::with_capacity(limit + 1);
    loop {
        let page = client.list_audit_events(request.clone()).await?;
        for event in page.events {
            events.push_back(event);
            if events.len() > limit {
                events.pop_front();
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let events: Vec<AuditEvent> = events.into();
    let text = match globals.output {
        Format::Json => manifest::to_json_list(&events)?,
        Format::Yaml => manifest::to_yaml_list(&events)?,
        Format::Table if events.is_empty() => "No audit events found.\n".into(),
        Format::Table => {
            let rows: Vec<Vec<String>> = events.iter().map(row).collect();
            output::table(
                &["TIME", "ACTOR", "ACTION", "TARGET", "VERSIONS", "DETAIL"],
                &rows,
            )
        }
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// `--since`: a duration back from `now` (`ms`, `s`, `m`, `h`, or `d`), or
/// an RFC 3339 timestamp.
fn parse_since(text: &str, now: SystemTime) -> Result<prost_types::Timestamp, String> {
    if let Ok(time) = prost_types::Timestamp::from_str(text) {
        return Ok(time);
    }
    let ago = match text.strip_suffix('d') {
        Some(days) => days
            .parse::<f64>()
            .ok()
            .and_then(|d| Duration::try_from_secs_f64(d * 86_400.0).ok())
            .ok_or_else(|| format!("invalid --since '{text}': expected e.g. 7d"))?,
        None => aios_runtime::config::parse_duration(text).map_err(|e| {
            format!("invalid --since '{text}': a duration (30m, 1h, 7d) or an RFC 3339 time ({e})")
        })?,
    };
    let since = now
        .checked_sub(ago)
        .ok_or_else(|| format!("invalid --since '{text}': too far back"))?;
    Ok(since.into())
}

/// TIME, ACTOR, ACTION, TARGET, VERSIONS, DETAIL.
fn row(event: &AuditEvent) -> Vec<String> {
    let time = event.time.map_or_else(
        || "-".to_string(),
        // Whole seconds: a table is for reading, JSON keeps the nanos.
        |t| prost_types::Timestamp { nanos: 0, ..t }.to_string(),
    );
    let actor = if event.actor_tenant.is_empty() {
        or_dash(&event.actor)
    } else {
        format!("{}/{}", event.actor_tenant, event.actor)
    };
    let action = AuditAction::try_from(event.action).unwrap_or(AuditAction::Unspecified);
    let mut action = short_enum(action.as_str_name(), "AUDIT_ACTION_");
    if event.dry_run {
        action.push_str(" (dry run)");
    }
    let target = event.target.clone().unwrap_or_default();
    let target_kind = Kind::try_from(target.kind).unwrap_or(Kind::Unspecified);
    let target = match target_kind {
        // Approval events name the approval, with no kind.
        Kind::Unspecified => format!("approval/{}", target.name),
        kind => format!("{}/{}", kind::kind_name(kind), target.name),
    };
    let version = |v: i64| {
        if v == 0 {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        time,
        actor,
        action,
        target,
        format!(
            "{}→{}",
            version(event.before_version),
            version(event.after_version)
        ),
        event
            .detail
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    ]
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::ResourceRef;

    use super::*;

    #[test]
    fn since_takes_durations_days_and_timestamps() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86_400);
        assert_eq!(parse_since("1h", now).unwrap().seconds, 10 * 86_400 - 3600);
        assert_eq!(parse_since("7d", now).unwrap().seconds, 3 * 86_400);
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", now).unwrap().seconds,
            86_400
        );
        assert!(
            parse_since("soon", now)
                .unwrap_err()
                .contains("--since 'soon'")
        );
        assert!(parse_since("xd", now).is_err());
    }

    #[test]
    fn rows_show_actor_action_target_and_versions() {
        let event = AuditEvent {
            id: "1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 86_400,
                nanos: 5,
            }),
            actor: "bootstrap-admin".into(),
            actor_tenant: "system".into(),
            action: AuditAction::Apply.into(),
            target: Some(ResourceRef {
                kind: Kind::RoutingTable.into(),
                tenant: "acme".into(),
                name: "default".into(),
            }),
            before_version: 0,
            after_version: 12,
            dry_run: true,
            detail: "created\nspec".into(),
        };
        assert_eq!(
            row(&event),
            [
                "1970-01-02T00:00:00Z",
                "system/bootstrap-admin",
                "apply (dry run)",
                "routingtable/default",
                "-→12",
                "created spec",
            ]
        );
    }
}
