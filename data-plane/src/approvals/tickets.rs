//! Tickets: how the approval gate tells the policy stage that one request
//! was approved, without a field on the pipeline's request.
//!
//! The gate issues a ticket (what was approved, and the [`Claim`] that will
//! execute the approval, under a random 128-bit nonce) and puts the nonce
//! in the request's metadata. The policy stage takes the ticket (once:
//! taking removes it), admits the request only if the ticket matches what
//! it is about to run, and puts the claim on the call for the agent loop to
//! make right before the request runs. A caller cannot forge one: nonces
//! exist only in this process, and the gate strips any nonce a caller sends.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, MutexGuard},
};

use tonic::metadata::MetadataMap;

use super::claim::Claim;
/// Metadata key carrying a ticket's nonce inside the node.
pub const TICKET_METADATA: &str = "aios-approval-ticket";

/// Tickets issued and not yet taken, by nonce.
static ISSUED: LazyLock<Mutex<HashMap<String, Claim>>> = LazyLock::new(Default::default);

fn issued() -> MutexGuard<'static, HashMap<String, Claim>> {
    // A panic while holding the lock leaves a map that is still valid.
    ISSUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An issued ticket; dropping it withdraws the ticket if it was not taken
/// (the request failed before policy), so none outlives its request.
#[derive(Debug)]
pub struct Issued {
    nonce: String,
}

impl Drop for Issued {
    fn drop(&mut self) {
        issued().remove(&self.nonce);
    }
}

/// Issues a ticket for `claim` (what was approved: the claim's binding) and
/// puts its nonce in `metadata`.
pub fn issue(claim: Claim, metadata: &mut MetadataMap) -> Issued {
    let nonce = format!("{:032x}", rand::random::<u128>());
    issued().insert(nonce.clone(), claim);
    if let Ok(value) = nonce.parse() {
        metadata.insert(TICKET_METADATA, value);
    }
    Issued { nonce }
}

/// Removes any ticket nonce from `metadata` (what a caller sent).
pub fn strip(metadata: &mut MetadataMap) {
    metadata.remove(TICKET_METADATA);
}

/// Takes the ticket named in `metadata`, if one was issued and not taken:
/// the claim it was issued for.
pub fn take(metadata: &MetadataMap) -> Option<Claim> {
    let nonce = metadata.get(TICKET_METADATA)?.to_str().ok()?;
    issued().remove(nonce)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aios_model::Role;

    use super::*;
    use crate::pipeline::Caller;
    use crate::{
        ControlPlaneUrl,
        approvals::{ApprovalClient, claim::testing},
    };

    /// A ticket's claim of `apr_1` (acme, key `k`, agent `bot`, action
    /// `pay`, arguments `{}`); its client is never called.
    fn ticket() -> Claim {
        let client =
            ApprovalClient::new(&[ControlPlaneUrl("http://127.0.0.1:1".into())], None).unwrap();
        testing::claim(client)
    }

    fn taken(metadata: &MetadataMap) -> Option<String> {
        take(metadata).map(|t| t.approval_id().to_string())
    }

    fn caller() -> Caller {
        Caller {
            tenant: "acme".into(),
            key_name: "k".into(),
            role: Role::Caller,
            rate_limit: Default::default(),
            allowed_agents: vec![],
            user: None,
        }
    }

    #[tokio::test]
    async fn a_ticket_is_taken_once_and_withdrawn_when_dropped() {
        let mut metadata = MetadataMap::new();
        let issued = issue(ticket(), &mut metadata);
        let t = take(&metadata).unwrap();
        assert_eq!(t.approval_id(), "apr_1");
        assert!(t.made().is_none(), "taking a ticket claims nothing");
        assert_eq!(taken(&metadata), None, "taken once");
        drop(issued);

        let mut metadata = MetadataMap::new();
        let issued = issue(ticket(), &mut metadata);
        drop(issued);
        assert_eq!(taken(&metadata), None, "withdrawn");
    }

    #[tokio::test]
    async fn a_forged_nonce_admits_nothing() {
        let mut metadata = MetadataMap::new();
        metadata.insert(TICKET_METADATA, "0123".parse().unwrap());
        assert_eq!(taken(&metadata), None);
        let _issued = issue(ticket(), &mut metadata);
        strip(&mut metadata);
        assert_eq!(taken(&metadata), None);
    }

    #[tokio::test]
    async fn a_ticket_admits_only_what_was_approved() {
        let t = ticket();
        assert!(t.admits(&caller(), "bot", "pay", "{}"));
        assert!(!t.admits(&caller(), "bot", "pay", "{\"x\":1}"));
        assert!(!t.admits(&caller(), "other", "pay", "{}"));
        assert!(!t.admits(&caller(), "bot", "refund", "{}"));
        let other = Caller {
            key_name: "other".into(),
            ..caller()
        };
        assert!(!t.admits(&other, "bot", "pay", "{}"));
    }
}
