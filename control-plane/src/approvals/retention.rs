//! Closed approvals go. REJECTED, EXPIRED and EXECUTED approvals are
//! deleted `--approval-retention` (default 30 days) after they closed
//! (`update_time`), hourly by every replica, by compare-and-swap
//! ([`store::sweep`]). The audit log keeps every request and decision. A
//! request that names a deleted approval is refused as NOT_FOUND, so
//! deleting one never lets its action run again.

use std::time::{Duration, SystemTime};

use super::{decode, machine};
use crate::{
    keys,
    store::{self, KeyValue, SharedStore, StoreError},
};

/// How long a closed approval is kept (the default of
/// `--approval-retention`).
pub const DEFAULT_APPROVAL_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// How often each replica sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Whether the approval at `kv` closed before `cutoff`.
fn expired(kv: &KeyValue, cutoff: SystemTime) -> bool {
    let Ok(approval) = decode(kv) else {
        return false;
    };
    let closed_at = approval
        .update_time
        .and_then(|t| SystemTime::try_from(t).ok());
    !machine::is_live(machine::state(&approval)) && closed_at.is_some_and(|t| t < cutoff)
}

/// Deletes every approval closed more than `retention` before `now`;
/// returns how many went.
pub async fn sweep(
    store: &SharedStore,
    now: SystemTime,
    retention: Duration,
) -> Result<usize, StoreError> {
    let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    // With each approval goes its id's index entry.
    store::sweep::delete_expired(store, keys::APPROVALS, |kv| {
        let id = kv.key.rsplit('/').next()?;
        expired(kv, cutoff).then(|| vec![keys::approval_id(id)])
    })
    .await
}

/// Sweeps every [`SWEEP_EVERY`] until `shutdown`.
pub fn start(
    store: SharedStore,
    retention: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        store::sweep::every(SWEEP_EVERY, "closed approvals", shutdown, || {
            let store = store.clone();
            async move { sweep(&store, SystemTime::now(), retention).await }
        })
        .await;
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use std::sync::Arc;

    use aios_proto::v1::{self as pb, ApprovalState};
    use prost::Message;

    use super::*;
    use crate::store::{Op, embedded::EmbeddedStore};

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn closed_approvals_go_after_the_retention_with_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
                .await
                .unwrap(),
        );
        let now = SystemTime::now();
        let cases = [
            ("apr_old_executed", ApprovalState::Executed, 40, false),
            ("apr_old_rejected", ApprovalState::Rejected, 31, false),
            ("apr_new_expired", ApprovalState::Expired, 10, true),
            // Live ones stay whatever their age (the sweeper times them out).
            ("apr_old_pending", ApprovalState::Pending, 40, true),
            ("apr_old_approved", ApprovalState::Approved, 40, true),
        ];
        for (id, state, age_days, _) in cases {
            let approval = pb::Approval {
                id: id.into(),
                tenant: "acme".into(),
                state: state as i32,
                update_time: Some((now - DAY * age_days).into()),
                ..Default::default()
            };
            store
                .txn(
                    vec![],
                    vec![
                        Op::Put {
                            key: keys::approval("acme", id),
                            value: approval.encode_to_vec(),
                            lease: None,
                        },
                        Op::Put {
                            key: keys::approval_id(id),
                            value: b"acme".to_vec(),
                            lease: None,
                        },
                    ],
                )
                .await
                .unwrap();
        }

        assert_eq!(sweep(&store, now, DAY * 30).await.unwrap(), 2);
        for (id, _, _, kept) in cases {
            let approval = store.get(&keys::approval("acme", id)).await.unwrap();
            let index = store.get(&keys::approval_id(id)).await.unwrap();
            assert_eq!((approval.is_some(), index.is_some()), (kept, kept), "{id}");
        }
        assert_eq!(sweep(&store, now, DAY * 30).await.unwrap(), 0);
    }
}
