//! `List`: the queue as approvers see it, most critical first, then oldest
//! first, filtered and paginated. The order is over every matching
//! approval, so pages are read whole from the tenant's prefix and sorted;
//! the page token is the sort key of the last approval returned.

use std::cmp::Ordering;

use aios_proto::v1::{self as pb, ApprovalState};

use super::{ApprovalError, decode, machine};
use crate::{
    auth::Scope,
    keys,
    store::{RangeRequest, SharedStore},
};

/// Store keys read per range call while listing.
const READ_BATCH: usize = 1000;

/// Filters of `List`.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Tenant (empty = the caller's; `*` = all, platform admins only).
    pub tenant: String,
    /// Only these states; empty = open ones (PENDING, ESCALATED).
    pub states: Vec<ApprovalState>,
    /// Only this agent; empty = any.
    pub agent: String,
}

impl ListFilter {
    /// Whether `approval` passes the filter.
    pub fn matches(&self, approval: &pb::Approval) -> bool {
        let state = machine::state(approval);
        let state_ok = if self.states.is_empty() {
            machine::is_open(state)
        } else {
            self.states.contains(&state)
        };
        state_ok && (self.agent.is_empty() || approval.agent == self.agent)
    }
}

/// Queue order: higher criticality first, then older first, then by id.
pub fn order(a: &pb::Approval, b: &pb::Approval) -> Ordering {
    b.criticality
        .cmp(&a.criticality)
        .then_with(|| time(a).cmp(&time(b)))
        .then_with(|| a.id.cmp(&b.id))
}

fn time(a: &pb::Approval) -> (i64, i32) {
    a.create_time.map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// The page token after `a`: its sort key.
fn token(a: &pb::Approval) -> String {
    let (seconds, nanos) = time(a);
    format!("{}.{seconds}.{nanos}.{}", a.criticality, a.id)
}

/// A token parsed back into a sort key (an approval with just those fields).
fn parse_token(token: &str) -> Option<pb::Approval> {
    let mut parts = token.splitn(4, '.');
    let criticality = parts.next()?.parse().ok()?;
    let seconds = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_string();
    Some(pb::Approval {
        criticality,
        create_time: Some(prost_types::Timestamp { seconds, nanos }),
        id,
        ..Default::default()
    })
}

/// One page of `approvals` (already filtered) after `page_token`, and the
/// next token (empty on the last page).
pub fn page(
    mut approvals: Vec<pb::Approval>,
    page_size: usize,
    page_token: &str,
) -> Result<(Vec<pb::Approval>, String), ApprovalError> {
    approvals.sort_by(order);
    let start = if page_token.is_empty() {
        0
    } else {
        let after = parse_token(page_token)
            .ok_or_else(|| ApprovalError::invalid("page_token", "not a token from this listing"))?;
        approvals.partition_point(|a| order(a, &after) != Ordering::Greater)
    };
    let rest = approvals.split_off(start.min(approvals.len()));
    let more = rest.len() > page_size;
    let page: Vec<pb::Approval> = rest.into_iter().take(page_size).collect();
    let next = match page.last() {
        Some(last) if more => token(last),
        _ => String::new(),
    };
    Ok((page, next))
}

/// Reads every approval in `scope` that passes `filter`, and pages them.
pub async fn list(
    store: &SharedStore,
    scope: &Scope,
    filter: &ListFilter,
    page_size: usize,
    page_token: &str,
) -> Result<(Vec<pb::Approval>, String), ApprovalError> {
    let prefix = match scope {
        Scope::Tenant(tenant) => keys::approvals_of(tenant),
        Scope::All => keys::APPROVALS.to_string(),
    };
    let mut matching = Vec::new();
    let mut after = String::new();
    loop {
        let range = store
            .range(RangeRequest {
                prefix: prefix.clone(),
                after: after.clone(),
                limit: READ_BATCH,
            })
            .await?;
        for kv in &range.kvs {
            let approval = decode(kv)?;
            if filter.matches(&approval) {
                matching.push(approval);
            }
        }
        match (range.more, range.kvs.last()) {
            (true, Some(last)) => after.clone_from(&last.key),
            _ => break,
        }
    }
    page(matching, page_size, page_token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn approval(id: &str, criticality: pb::Criticality, created: i64) -> pb::Approval {
        pb::Approval {
            id: id.into(),
            criticality: criticality as i32,
            create_time: Some(prost_types::Timestamp {
                seconds: created,
                nanos: 0,
            }),
            state: ApprovalState::Pending as i32,
            ..Default::default()
        }
    }

    fn ids(page: &[pb::Approval]) -> Vec<&str> {
        page.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn the_queue_is_most_critical_first_then_oldest_first_across_pages() {
        use pb::Criticality::{Critical, High};
        let all = vec![
            approval("h-new", High, 30),
            approval("c-new", Critical, 20),
            approval("h-old", High, 10),
            approval("c-old", Critical, 15),
        ];
        let (first, token) = page(all.clone(), 3, "").unwrap();
        assert_eq!(ids(&first), ["c-old", "c-new", "h-old"]);
        assert!(!token.is_empty());
        let (second, token) = page(all.clone(), 3, &token).unwrap();
        assert_eq!(ids(&second), ["h-new"]);
        assert!(token.is_empty(), "last page");
        assert!(page(all, 3, "garbage").is_err());
    }

    #[test]
    fn the_default_filter_lists_open_approvals() {
        let mut closed = approval("x", pb::Criticality::High, 1);
        closed.state = ApprovalState::Rejected as i32;
        let open = approval("y", pb::Criticality::High, 1);
        let filter = ListFilter::default();
        assert!(!filter.matches(&closed));
        assert!(filter.matches(&open));
        let rejected = ListFilter {
            states: vec![ApprovalState::Rejected],
            ..Default::default()
        };
        assert!(rejected.matches(&closed));
        let other_agent = ListFilter {
            agent: "other".into(),
            ..Default::default()
        };
        assert!(!other_agent.matches(&open));
    }
}
