//! `aiosctl fleet ls` and `aiosctl fleet describe NODE`: the data-plane
//! nodes the control plane knows, what each runs, and why a node rejected
//! a resource (its parked NACKs, error text in full).

use std::{cmp::Ordering, time::SystemTime};

use aios_client::{ClientError, FleetClient, kind, manifest};
use aios_proto::v1::{HeldResource, Kind, Node, ParkedNack, ResourceRef};
use tonic::Code;

use crate::{
    Globals,
    output::{self, Format},
    resources::{Failure, age, or_dash},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List nodes: connection, applied revision and lag, resources, NACKs, heartbeat.
    #[command(visible_alias = "list")]
    Ls {
        /// Only nodes in this region.
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        /// Label selector over node labels: `k=v,k!=v,k,!k`.
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Show one node: identity, connection, what it runs and what it rejected (with the error).
    Describe {
        /// The node's id (its `--node-id`).
        node: String,
    },
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let now = SystemTime::now();
    let text = match &args.command {
        Command::Ls { region, selector } => {
            let mut client = connect(globals).await?;
            let nodes = client
                .list_nodes(
                    region.as_deref().unwrap_or_default(),
                    selector.as_deref().unwrap_or_default(),
                )
                .await?;
            match globals.output {
                Format::Json => manifest::to_json_list(&nodes)?,
                Format::Yaml => manifest::to_yaml_list(&nodes)?,
                Format::Table if nodes.is_empty() => "No nodes found.\n".into(),
                Format::Table => list_table(&nodes, now),
            }
        }
        Command::Describe { node } => {
            let mut client = connect(globals).await?;
            let found = client
                .get_node(node)
                .await
                .map_err(|error| not_found_as(error, node))?;
            match globals.output {
                Format::Json => manifest::to_json(&found)?,
                Format::Yaml => manifest::to_yaml(&found)?,
                Format::Table => describe(&found, now),
            }
        }
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// A `FleetService` client; like the resource commands, it needs an API key.
async fn connect(globals: &Globals) -> Result<FleetClient, Failure> {
    let Some(key) = globals.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(Failure::usage(
            "no API key: pass --api-key or set AIOS_API_KEY",
        ));
    };
    Ok(FleetClient::connect(&globals.endpoint, Some(key), globals.timeout).await?)
}

/// `NOT_FOUND` names the node; every other failure reads as for the other
/// commands.
fn not_found_as(error: ClientError, node: &str) -> Failure {
    match &error {
        ClientError::Rpc(status) if status.code() == Code::NotFound => {
            Failure::server(format!("node {node} not found"))
        }
        _ => error.into(),
    }
}

// === fleet ls ===

const LIST_HEADERS: [&str; 10] = [
    "NODE",
    "REGION",
    "ZONE",
    "CONNECTED",
    "APPLIED",
    "LAG",
    "RESOURCES",
    "NACKS",
    "HEARTBEAT",
    "VERSION",
];

fn list_table(nodes: &[Node], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = nodes.iter().map(|node| list_row(node, now)).collect();
    output::table(&LIST_HEADERS, &rows)
}

/// The cells under [`LIST_HEADERS`].
fn list_row(node: &Node, now: SystemTime) -> Vec<String> {
    vec![
        node.node_id.clone(),
        or_dash(&node.region),
        or_dash(&node.zone),
        connected(node),
        revision(node.applied_revision),
        node.lag_revisions.to_string(),
        node.applied.len().to_string(),
        node.parked.len().to_string(),
        ago(node.last_heartbeat_time.as_ref(), now),
        or_dash(&node.agent_version),
    ]
}

/// The replica holding the node's stream; `-` when it has none.
fn connected(node: &Node) -> String {
    match (node.connected, node.connected_replica.is_empty()) {
        (false, _) => "-".into(),
        // Connected, but the replica did not say who it is.
        (true, true) => "yes".into(),
        (true, false) => node.connected_replica.clone(),
    }
}

/// A store revision; 0 (nothing yet) as `-`.
fn revision(revision: i64) -> String {
    if revision == 0 {
        "-".into()
    } else {
        revision.to_string()
    }
}

/// `3s ago`, `12m ago`; `-` if unset.
fn ago(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match age(time, now).as_str() {
        "-" => "-".into(),
        age => format!("{age} ago"),
    }
}

// === fleet describe ===

/// Identity, capabilities, connection, sync state, then the applied
/// resources and the parked NACKs as tables.
fn describe(node: &Node, now: SystemTime) -> String {
    let mut labels: Vec<String> = node
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    labels.sort();
    let capabilities = node.capabilities.clone().unwrap_or_default();
    let gpu = match (capabilities.gpu, capabilities.gpu_name.is_empty()) {
        (false, _) => "none".to_string(),
        (true, true) => "yes".to_string(),
        (true, false) => capabilities.gpu_name.clone(),
    };
    let memory = match capabilities.memory_bytes {
        0 => "unknown".to_string(),
        bytes => format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
    };
    let cpu_cores = match capabilities.cpu_cores {
        0 => "unknown".to_string(),
        cores => cores.to_string(),
    };
    let connection = match connected(node).as_str() {
        "-" => "no".to_string(),
        "yes" => "yes".to_string(),
        replica => format!("yes, to replica {replica}"),
    };
    let lag = match node.lag_revisions {
        0 => "up to date".to_string(),
        1 => "1 revision behind".to_string(),
        n => format!("{n} revisions behind"),
    };

    let mut text = output::fields(
        &[
            ("Node", node.node_id.clone()),
            ("Region", or_dash(&node.region)),
            ("Zone", or_dash(&node.zone)),
            ("Labels", or_dash(&labels.join(", "))),
            ("Agent version", or_dash(&node.agent_version)),
        ],
        0,
    );
    text.push_str("Capabilities:\n");
    text.push_str(&output::fields(
        &[
            (
                "Models loaded",
                or_dash(&capabilities.models_loaded.join(", ")),
            ),
            ("GPU", gpu),
            ("CPU cores", cpu_cores),
            ("Memory", memory),
        ],
        2,
    ));
    text.push_str("Connection:\n");
    text.push_str(&output::fields(
        &[
            ("Connected", connection),
            (
                "Connected since",
                time_and_age(node.connect_time.as_ref(), now),
            ),
            (
                "Last heartbeat",
                time_and_age(node.last_heartbeat_time.as_ref(), now),
            ),
            ("In-flight requests", node.in_flight_requests.to_string()),
        ],
        2,
    ));
    text.push_str(&output::fields(
        &[(
            "Applied revision",
            format!("{} ({lag})", revision(node.applied_revision)),
        )],
        0,
    ));

    text.push_str(&format!("\nApplied resources ({}):\n", node.applied.len()));
    if node.applied.is_empty() {
        text.push_str("  none\n");
    } else {
        let mut applied: Vec<&HeldResource> = node.applied.iter().collect();
        applied.sort_by(|a, b| by_ref(a.resource.as_ref(), b.resource.as_ref()));
        let rows: Vec<Vec<String>> = applied
            .iter()
            .map(|held| {
                let (kind, name) = kind_and_name(held.resource.as_ref());
                vec![kind, name, held.version.to_string()]
            })
            .collect();
        text.push_str(&output::table(&["KIND", "TENANT/NAME", "VERSION"], &rows));
    }

    text.push_str(&format!("\nParked NACKs ({}):\n", node.parked.len()));
    if node.parked.is_empty() {
        text.push_str("  none\n");
    } else {
        text.push_str(&nack_table(&node.parked, now));
    }
    text
}

/// KIND, TENANT/NAME, VERSION, AGE and the node's ERROR, in full: a
/// multi-line error continues under the ERROR column.
fn nack_table(parked: &[ParkedNack], now: SystemTime) -> String {
    let mut parked: Vec<&ParkedNack> = parked.iter().collect();
    parked.sort_by(|a, b| by_ref(a.resource.as_ref(), b.resource.as_ref()));
    let headers = ["KIND", "TENANT/NAME", "VERSION", "AGE", "ERROR"];
    let rows: Vec<Vec<String>> = parked
        .iter()
        .map(|nack| {
            let (kind, name) = kind_and_name(nack.resource.as_ref());
            let first_line = nack.error.lines().next().unwrap_or_default();
            vec![
                kind,
                name,
                nack.version.to_string(),
                age(nack.time.as_ref(), now),
                first_line.to_string(),
            ]
        })
        .collect();
    let table = output::table(&headers, &rows);
    let indent = table.find("ERROR").unwrap_or_default();
    let mut text = String::new();
    for (i, line) in table.lines().enumerate() {
        text.push_str(line);
        text.push('\n');
        // Line 0 is the header; line i answers parked[i - 1].
        let Some(nack) = i.checked_sub(1).and_then(|row| parked.get(row)) else {
            continue;
        };
        for more in nack.error.lines().skip(1) {
            text.push_str(&format!("{:indent$}{more}", ""));
            text.push('\n');
        }
    }
    text
}

/// `2025-01-02T03:04:05Z (3s ago)`; `-` if unset.
fn time_and_age(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match time {
        None => "-".into(),
        Some(t) => format!(
            "{} ({})",
            // Whole seconds: this is for reading; -o json keeps the nanos.
            prost_types::Timestamp { nanos: 0, ..*t },
            ago(Some(t), now)
        ),
    }
}

/// `budget`, `acme/daily` (a tenant's own objects: `tenant/name`).
fn kind_and_name(resource: Option<&ResourceRef>) -> (String, String) {
    let Some(resource) = resource else {
        return ("-".into(), "-".into());
    };
    let kind = Kind::try_from(resource.kind).unwrap_or(Kind::Unspecified);
    let name = if resource.tenant.is_empty() {
        resource.name.clone()
    } else {
        format!("{}/{}", resource.tenant, resource.name)
    };
    (kind::kind_name(kind).to_string(), name)
}

/// Kind (in the contract's order), then tenant, then name.
fn by_ref(a: Option<&ResourceRef>, b: Option<&ResourceRef>) -> Ordering {
    let key = |r: Option<&ResourceRef>| r.map(|r| (r.kind, r.tenant.clone(), r.name.clone()));
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use aios_proto::v1::NodeCapabilities;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn ago_ts(seconds: u64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: (NOW - seconds) as i64,
            nanos: 0,
        })
    }

    fn reference(kind: Kind, tenant: &str, name: &str) -> Option<ResourceRef> {
        Some(ResourceRef {
            kind: kind.into(),
            tenant: tenant.into(),
            name: name.into(),
        })
    }

    const LONG_ERROR: &str = "budget.limit_usd: must be > 0; budget.window: required; \
        budget.scope.subject: an agent scope names the agent, and this sentence goes on \
        well past any terminal width to prove that nothing is cut";

    fn node() -> Node {
        Node {
            node_id: "edge-1".into(),
            region: "eu-west".into(),
            zone: "eu-west-1a".into(),
            labels: HashMap::from([
                ("tier".to_string(), "edge".to_string()),
                ("gpu".to_string(), "true".to_string()),
            ]),
            capabilities: Some(NodeCapabilities {
                models_loaded: vec!["llama".into(), "mini".into()],
                gpu: true,
                gpu_name: "NVIDIA H100".into(),
                cpu_cores: 16,
                memory_bytes: 64 << 30,
            }),
            connected_replica: "cp-0".into(),
            connected: true,
            applied: vec![
                HeldResource {
                    resource: reference(Kind::Model, "acme", "mini"),
                    version: 12,
                },
                HeldResource {
                    resource: reference(Kind::Tenant, "", "acme"),
                    version: 3,
                },
            ],
            parked: vec![ParkedNack {
                resource: reference(Kind::Budget, "acme", "daily"),
                version: 14,
                error: LONG_ERROR.into(),
                time: ago_ts(120),
            }],
            last_heartbeat_time: ago_ts(3),
            applied_revision: 14,
            lag_revisions: 2,
            agent_version: "0.1.0".into(),
            connect_time: ago_ts(600),
            in_flight_requests: 5,
        }
    }

    #[test]
    fn list_rows_show_connection_sync_state_and_heartbeat_age() {
        let disconnected = Node {
            node_id: "edge-2".into(),
            region: "us-east".into(),
            connected: false,
            connected_replica: String::new(),
            last_heartbeat_time: ago_ts(7_200),
            ..Default::default()
        };
        assert_eq!(
            list_table(&[node(), disconnected], now()),
            "NODE    REGION   ZONE        CONNECTED  APPLIED  LAG  RESOURCES  NACKS  HEARTBEAT  VERSION\n\
             edge-1  eu-west  eu-west-1a  cp-0       14       2    2          1      3s ago     0.1.0\n\
             edge-2  us-east  -           -          -        0    0          0      2h ago     -\n"
        );
    }

    #[test]
    fn heartbeat_ages_read_like_kubectl_with_ago() {
        assert_eq!(ago(ago_ts(0).as_ref(), now()), "0s ago");
        assert_eq!(ago(ago_ts(45).as_ref(), now()), "45s ago");
        assert_eq!(ago(ago_ts(600).as_ref(), now()), "10m ago");
        assert_eq!(ago(ago_ts(3 * 86_400).as_ref(), now()), "3d ago");
        assert_eq!(ago(None, now()), "-");
        let never = Node {
            node_id: "n".into(),
            ..Default::default()
        };
        assert_eq!(list_row(&never, now())[8], "-");
    }

    #[test]
    fn connected_without_a_replica_id_is_still_connected() {
        let node = Node {
            connected: true,
            ..Default::default()
        };
        assert_eq!(connected(&node), "yes");
    }

    #[test]
    fn describe_shows_identity_connection_resources_and_full_nack_errors() {
        let text = describe(&node(), now());
        let expected_head = "\
Node:           edge-1
Region:         eu-west
Zone:           eu-west-1a
Labels:         gpu=true, tier=edge
Agent version:  0.1.0
Capabilities:
  Models loaded:  llama, mini
  GPU:            NVIDIA H100
  CPU cores:      16
  Memory:         64.0 GiB
Connection:
  Connected:           yes, to replica cp-0
  Connected since:     1970-01-12T13:36:40Z (10m ago)
  Last heartbeat:      1970-01-12T13:46:37Z (3s ago)
  In-flight requests:  5
Applied revision:  14 (2 revisions behind)

Applied resources (2):
KIND    TENANT/NAME  VERSION
tenant  acme         3
model   acme/mini    12

Parked NACKs (1):
KIND    TENANT/NAME  VERSION  AGE  ERROR
";
        assert!(
            text.starts_with(expected_head),
            "got:\n{text}\nexpected to start with:\n{expected_head}"
        );
        let nack_line = text.lines().last().unwrap();
        assert_eq!(
            nack_line,
            format!("budget  acme/daily   14       2m   {LONG_ERROR}")
        );
    }

    #[test]
    fn multi_line_errors_continue_under_the_error_column() {
        let parked = [ParkedNack {
            resource: reference(Kind::Model, "acme", "big"),
            version: 9,
            error: "first problem\nsecond problem".into(),
            time: None,
        }];
        assert_eq!(
            nack_table(&parked, now()),
            "KIND   TENANT/NAME  VERSION  AGE  ERROR\n\
             model  acme/big     9        -    first problem\n\
             \x20                                 second problem\n"
        );
    }

    #[test]
    fn an_idle_disconnected_node_reads_plainly() {
        let node = Node {
            node_id: "lonely".into(),
            ..Default::default()
        };
        let text = describe(&node, now());
        assert!(text.contains("Labels:         -\n"), "{text}");
        assert!(text.contains("  GPU:            none\n"), "{text}");
        assert!(text.contains("  Memory:         unknown\n"), "{text}");
        assert!(text.contains("  Connected:           no\n"), "{text}");
        assert!(text.contains("  Last heartbeat:      -\n"), "{text}");
        assert!(
            text.contains("Applied revision:  - (up to date)\n"),
            "{text}"
        );
        assert!(text.ends_with("Parked NACKs (0):\n  none\n"), "{text}");
    }

    #[test]
    fn not_found_names_the_node_and_other_errors_read_as_usual() {
        let failure = not_found_as(
            ClientError::Rpc(tonic::Status::not_found("no such node")),
            "edge-9",
        );
        assert_eq!(failure.message, "node edge-9 not found");
        assert_eq!(failure.code, aios_runtime::cli::EXIT_FAILURE);
        let failure = not_found_as(
            ClientError::Rpc(tonic::Status::permission_denied("needs OPERATOR")),
            "edge-9",
        );
        assert_eq!(failure.message, "PERMISSION_DENIED: needs OPERATOR");
    }
}
