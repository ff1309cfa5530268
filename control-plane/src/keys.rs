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
}
