//! The control plane's key layout in the store, in one place. See
//! ARCHITECTURE.md, "Key layout".

use aios_model::Kind;

/// Root of everything aios writes.
pub const ROOT: &str = "/aios/v1/";
/// Prefix of every resource.
pub const RESOURCES: &str = "/aios/v1/resources/";
/// Marker: the first platform admin key has been created.
pub const BOOTSTRAP: &str = "/aios/v1/bootstrap";
/// Held by the elected leader replica, under its lease.
pub const LEADER: &str = "/aios/v1/leader";
/// Prefix of fleet membership records, one per node: `/aios/v1/nodes/{node_id}`.
pub const NODES: &str = "/aios/v1/nodes/";
/// Prefix of budget ledgers:
/// `/aios/v1/budgets/ledger/{tenant}/{budget}/{window start:020}/{subject}`.
pub const BUDGET_LEDGERS: &str = "/aios/v1/budgets/ledger/";
/// Prefix of telemetry acknowledgements:
/// `/aios/v1/telemetry/acked/{node}/{incarnation}` → highest sequence taken.
pub const TELEMETRY_ACKED: &str = "/aios/v1/telemetry/acked/";
/// Prefix of stored span batches:
/// `/aios/v1/telemetry/batches/{unix_minute:012}/{node}/{incarnation}/{seq:020}[-{part:03}]`.
pub const TELEMETRY_BATCHES: &str = "/aios/v1/telemetry/batches/";
/// Prefix of approvals: `/aios/v1/approvals/{tenant}/{id}` → the encoded `Approval`.
pub const APPROVALS: &str = "/aios/v1/approvals/";
/// Prefix of the approval id index: `/aios/v1/approval-ids/{id}` → its tenant.
pub const APPROVAL_IDS: &str = "/aios/v1/approval-ids/";
/// Tenant segment used for Tenant objects themselves (not a valid name, so no clash).
pub const NO_TENANT: &str = "-";

/// `/aios/v1/resources/{kind}/{tenant}/{name}`.
pub fn resource(kind: Kind, tenant: &str, name: &str) -> String {
    format!("{}{name}", tenant_prefix(kind, tenant))
}

/// Every resource of `kind`.
pub fn kind_prefix(kind: Kind) -> String {
    format!("{RESOURCES}{}/", kind.as_str())
}

/// Every resource of `kind` in `tenant` (ignored for Tenant objects).
pub fn tenant_prefix(kind: Kind, tenant: &str) -> String {
    let tenant = if kind.is_tenant_scoped() {
        tenant
    } else {
        NO_TENANT
    };
    format!("{RESOURCES}{}/{tenant}/", kind.as_str())
}

/// Parses a resource key back into (kind, tenant, name).
pub fn parse_resource(key: &str) -> Option<(Kind, String, String)> {
    let rest = key.strip_prefix(RESOURCES)?;
    let mut parts = rest.splitn(3, '/');
    let kind = parts.next()?.parse::<Kind>().ok()?;
    let tenant = parts.next()?;
    let name = parts.next()?;
    let tenant = if tenant == NO_TENANT {
        String::new()
    } else {
        tenant.to_string()
    };
    Some((kind, tenant, name.to_string()))
}

/// `/aios/v1/nodes/{node_id}`: a node's membership record.
pub fn node(node_id: &str) -> String {
    format!("{NODES}{node_id}")
}

/// `/aios/v1/auth/key-hash/{hash}`: which ApiKey has this secret hash.
pub fn key_hash(hash: &str) -> String {
    format!("{ROOT}auth/key-hash/{}", hash.trim_start_matches("sha256:"))
}

/// Prefix of a tenant's audit events.
pub fn audit_prefix(tenant: &str) -> String {
    format!(
        "{ROOT}audit/{}/",
        if tenant.is_empty() { NO_TENANT } else { tenant }
    )
}

/// Every audit event.
pub fn audit_root() -> String {
    format!("{ROOT}audit/")
}

/// An audit event key: ordered by time, unique by `id`.
pub fn audit(tenant: &str, unix_nanos: u128, id: &str) -> String {
    format!("{}{unix_nanos:020}-{id}", audit_prefix(tenant))
}

/// `/aios/v1/approvals/{tenant}/{id}`: one approval.
pub fn approval(tenant: &str, id: &str) -> String {
    format!("{APPROVALS}{tenant}/{id}")
}

/// Every approval of `tenant`.
pub fn approvals_of(tenant: &str) -> String {
    format!("{APPROVALS}{tenant}/")
}

/// `/aios/v1/approval-ids/{id}`: which tenant holds approval `id`.
pub fn approval_id(id: &str) -> String {
    format!("{APPROVAL_IDS}{id}")
}

/// `/aios/v1/telemetry/acked/{node}/{incarnation}`: the highest sequence
/// taken from a node's incarnation, in decimal.
pub fn telemetry_acked(node: &str, incarnation: &str) -> String {
    format!("{TELEMETRY_ACKED}{node}/{incarnation}")
}

/// One stored span batch (or one part of a split batch), written in
/// `unix_minute`. Node ids may contain `/`; the other segments never do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchKey<'a> {
    /// Minute (Unix seconds / 60) the batch was taken in.
    pub unix_minute: u64,
    /// Node id.
    pub node: &'a str,
    /// The node's incarnation.
    pub incarnation: &'a str,
    /// The batch's sequence.
    pub sequence: u64,
    /// Part number when the batch was split; `None` when it was not.
    pub part: Option<u32>,
}

impl BatchKey<'_> {
    /// The store key.
    pub fn key(&self) -> String {
        let BatchKey {
            unix_minute,
            node,
            incarnation,
            sequence,
            part,
        } = self;
        match part {
            None => {
                format!("{TELEMETRY_BATCHES}{unix_minute:012}/{node}/{incarnation}/{sequence:020}")
            }
            Some(part) => format!(
                "{TELEMETRY_BATCHES}{unix_minute:012}/{node}/{incarnation}/{sequence:020}-{part:03}"
            ),
        }
    }
}

/// Parses a batch key back; `None` for anything else.
pub fn parse_telemetry_batch(key: &str) -> Option<BatchKey<'_>> {
    let rest = key.strip_prefix(TELEMETRY_BATCHES)?;
    let (minute, rest) = rest.split_once('/')?;
    let (rest, last) = rest.rsplit_once('/')?;
    let (node, incarnation) = rest.rsplit_once('/')?;
    let (sequence, part) = match last.split_once('-') {
        Some((sequence, part)) => (sequence, Some(part.parse().ok()?)),
        None => (last, None),
    };
    if node.is_empty() || incarnation.is_empty() {
        return None;
    }
    Some(BatchKey {
        unix_minute: minute.parse().ok()?,
        node,
        incarnation,
        sequence: sequence.parse().ok()?,
        part,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_round_trip() {
        let key = resource(Kind::Agent, "acme", "support-bot");
        assert_eq!(key, "/aios/v1/resources/agent/acme/support-bot");
        assert_eq!(
            parse_resource(&key),
            Some((Kind::Agent, "acme".into(), "support-bot".into()))
        );
        let key = resource(Kind::Tenant, "ignored", "acme");
        assert_eq!(key, "/aios/v1/resources/tenant/-/acme");
        assert_eq!(
            parse_resource(&key),
            Some((Kind::Tenant, String::new(), "acme".into()))
        );
        assert!(parse_resource("/aios/v1/audit/x").is_none());
    }

    #[test]
    fn prefixes_do_not_overlap_between_tenants() {
        // "acme" must not match "acme-labs": prefixes end with '/'.
        assert!(
            !resource(Kind::Model, "acme-labs", "m")
                .starts_with(&tenant_prefix(Kind::Model, "acme"))
        );
    }

    #[test]
    fn telemetry_batch_keys_round_trip_and_sort_by_minute() {
        let whole = BatchKey {
            unix_minute: 29_000_000,
            node: "pool/node-1",
            incarnation: "9f2c",
            sequence: 42,
            part: None,
        };
        let key = whole.key();
        assert_eq!(
            key,
            "/aios/v1/telemetry/batches/000029000000/pool/node-1/9f2c/00000000000000000042"
        );
        assert_eq!(parse_telemetry_batch(&key), Some(whole.clone()));
        let part = BatchKey {
            part: Some(3),
            ..whole.clone()
        };
        assert!(part.key().ends_with("/00000000000000000042-003"));
        assert_eq!(parse_telemetry_batch(&part.key()), Some(part));
        // Fixed-width numbers: key order is time order, then sequence order.
        let later = BatchKey {
            unix_minute: 29_000_001,
            node: "a",
            sequence: 1,
            ..whole.clone()
        };
        assert!(later.key() > key);
        assert!(parse_telemetry_batch("/aios/v1/telemetry/batches/x/n/i/1").is_none());
        assert!(parse_telemetry_batch(&telemetry_acked("n", "i")).is_none());
        assert_eq!(
            telemetry_acked("n1", "inc"),
            "/aios/v1/telemetry/acked/n1/inc"
        );
    }
}
