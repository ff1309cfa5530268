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
use crate::pipeline::Caller;

/// Metadata key carrying a ticket's nonce inside the node.
pub const TICKET_METADATA: &str = "aios-approval-ticket";

/// What an approval was bound to, and the claim that executes it.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The approval.
    pub approval_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The caller's key name.
    pub caller: String,
    /// The agent.
    pub agent: String,
    /// The action.
    pub action: String,
    /// SHA-256 of the approved arguments.
    pub arguments_sha256: [u8; 32],
    /// The claim of the approval, not made yet.
    pub claim: Claim,
}

impl Ticket {
    /// Whether this ticket covers `caller` running `action` of `agent`
    /// with `arguments`.
    pub fn admits(&self, caller: &Caller, agent: &str, action: &str, arguments: &str) -> bool {
        self.tenant == caller.tenant
            && self.caller == caller.key_name
            && self.agent == agent
            && self.action == action
            && self.arguments_sha256 == aios_runtime::keys::arguments_sha256(arguments)
    }
}

/// Tickets issued and not yet taken, by nonce.
static ISSUED: LazyLock<Mutex<HashMap<String, Ticket>>> = LazyLock::new(Default::default);

fn issued() -> MutexGuard<'static, HashMap<String, Ticket>> {
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

/// Issues `ticket` and puts its nonce in `metadata`.
pub fn issue(ticket: Ticket, metadata: &mut MetadataMap) -> Issued {
    let nonce = format!("{:032x}", rand::random::<u128>());
    issued().insert(nonce.clone(), ticket);
    if let Ok(value) = nonce.parse() {
        metadata.insert(TICKET_METADATA, value);
    }
    Issued { nonce }
}

/// Removes any ticket nonce from `metadata` (what a caller sent).
pub fn strip(metadata: &mut MetadataMap) {
    metadata.remove(TICKET_METADATA);
}

/// Takes the ticket named in `metadata`, if one was issued and not taken.
pub fn take(metadata: &MetadataMap) -> Option<Ticket> {
    let nonce = metadata.get(TICKET_METADATA)?.to_str().ok()?;
    issued().remove(nonce)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aios_model::Role;

    use super::*;
    use crate::{
        ControlPlaneUrl,
        approvals::{ApprovalClient, claim::testing},
    };

    /// A ticket for `apr_1`; its claim's client is never called.
    fn ticket() -> Ticket {
        let client =
            ApprovalClient::new(&[ControlPlaneUrl("http://127.0.0.1:1".into())], None).unwrap();
        Ticket {
            approval_id: "apr_1".into(),
            tenant: "acme".into(),
            caller: "ci".into(),
            agent: "bot".into(),
            action: "pay".into(),
            arguments_sha256: aios_runtime::keys::arguments_sha256("{}"),
            claim: testing::claim(client),
        }
    }

    fn taken(metadata: &MetadataMap) -> Option<String> {
        take(metadata).map(|t| t.approval_id)
    }

    fn caller() -> Caller {
        Caller {
            tenant: "acme".into(),
            key_name: "ci".into(),
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
        assert_eq!(t.approval_id, "apr_1");
        assert!(t.claim.made().is_none(), "taking a ticket claims nothing");
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
