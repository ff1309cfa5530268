//! Tickets: how the approval gate tells the policy stage that one request
//! was approved and claimed, without a field on the pipeline's request.
//!
//! The gate claims the approval on the control plane, then issues a ticket
//! (what was approved, under a random 128-bit nonce) and puts the nonce in
//! the request's metadata. The policy stage takes the ticket (once: taking
//! removes it) and admits the request only if the ticket matches what it is
//! about to run. A caller cannot forge one: nonces exist only in this
//! process, and the gate strips any nonce a caller sends.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, MutexGuard},
};

use tonic::metadata::MetadataMap;

use crate::pipeline::Caller;

/// Metadata key carrying a ticket's nonce inside the node.
pub const TICKET_METADATA: &str = "aios-approval-ticket";

/// What an executed approval was bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    fn ticket() -> Ticket {
        Ticket {
            approval_id: "apr_1".into(),
            tenant: "acme".into(),
            caller: "ci".into(),
            agent: "bot".into(),
            action: "pay".into(),
            arguments_sha256: aios_runtime::keys::arguments_sha256("{}"),
        }
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

    #[test]
    fn a_ticket_is_taken_once_and_withdrawn_when_dropped() {
        let mut metadata = MetadataMap::new();
        let issued = issue(ticket(), &mut metadata);
        assert_eq!(take(&metadata), Some(ticket()));
        assert_eq!(take(&metadata), None, "taken once");
        drop(issued);

        let mut metadata = MetadataMap::new();
        let issued = issue(ticket(), &mut metadata);
        drop(issued);
        assert_eq!(take(&metadata), None, "withdrawn");
    }

    #[test]
    fn a_forged_nonce_admits_nothing() {
        let mut metadata = MetadataMap::new();
        metadata.insert(TICKET_METADATA, "0123".parse().unwrap());
        assert_eq!(take(&metadata), None);
        let _issued = issue(ticket(), &mut metadata);
        strip(&mut metadata);
        assert_eq!(take(&metadata), None);
    }

    #[test]
    fn a_ticket_admits_only_what_was_approved() {
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
