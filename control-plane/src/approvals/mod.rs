//! Human approvals of dangerous actions (see ARCHITECTURE.md, "Approvals").
//!
//! A data-plane node asks for an approval when policy rates an action HIGH
//! or CRITICAL ([`Approvals::request`]); approvers decide it
//! ([`Approvals::decide`]); the node claims an approved one just before it
//! runs the action ([`Approvals::claim`]), which moves it to EXECUTED
//! exactly once. Each approval is one store key,
//! `/aios/v1/approvals/{tenant}/{id}`, and every change is a
//! compare-and-swap on its `mod_revision` that also writes the audit event,
//! so replicas can race freely. The rules live in [`machine`] (pure); this
//! module reads, applies a rule and writes. [`board`] follows the store to
//! serve `Watch` and to time approvals out.

pub mod board;
pub mod error;
pub mod list;
pub mod machine;
pub mod retention;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aios_model::{Kind, MAX_APPROVAL_TIMEOUT, SYSTEM_TENANT};
use aios_proto::v1::{self as pb, ApprovalState, Verdict, resource::Spec};
use prost::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use self::machine::{Approver, Binding};
pub use self::{board::Board, error::ApprovalError, list::ListFilter};
use crate::{
    admin::audit::random_id,
    auth::{Access, Principal, Role, Scope},
    keys,
    store::{Compare, KeyValue, Op, SharedStore, StoreError, TxnOutcome},
};

/// Largest `arguments_json` an approval holds.
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Largest decision comment.
pub const MAX_COMMENT_BYTES: usize = 4096;
/// Compare-and-swap attempts before a contended change gives up (ABORTED).
const MAX_ATTEMPTS: usize = 16;
/// Prefix of approval ids.
pub const ID_PREFIX: &str = "apr_";
/// Actor of timeouts in the audit log.
const SYSTEM_ACTOR: &str = "system";
/// Longest long poll of `Get` (`wait_while_open`).
pub const MAX_GET_WAIT: Duration = Duration::from_secs(60);

/// Approvals in this replica; cheap to clone.
#[derive(Clone, Debug)]
pub struct Approvals {
    store: SharedStore,
    board: Board,
}

impl Approvals {
    /// Loads the live approvals and starts following the store and timing
    /// approvals out, until `shutdown`: two tasks.
    pub async fn start(
        store: SharedStore,
        shutdown: CancellationToken,
    ) -> Result<(Self, Vec<tokio::task::JoinHandle<()>>), StoreError> {
        let (board, follower) = Board::start(store.clone(), shutdown).await?;
        let approvals = Self { store, board };
        let sweeper = tokio::spawn(approvals.board.clone().sweep(approvals.clone()));
        Ok((approvals, vec![follower, sweeper]))
    }

    /// The replica's live approvals and their changes.
    pub fn board(&self) -> &Board {
        &self.board
    }

    // === Node calls ===

    /// Creates a PENDING approval for a node's request.
    pub async fn request(
        &self,
        who: &Principal,
        request: pb::RequestApprovalRequest,
    ) -> Result<pb::Approval, ApprovalError> {
        who.authorize_node()?;
        let approval = new_approval(request, SystemTime::now())?;
        let key = keys::approval(&approval.tenant, &approval.id);
        let detail = format!(
            "{} asks to run {} on agent {} ({}, {} approval(s) needed; arguments sha256 {})",
            approval.caller,
            approval.action,
            approval.agent,
            criticality_name(approval.criticality),
            approval.required_approvals,
            aios_runtime::hex::encode(&approval.arguments_sha256),
        );
        let ops = vec![
            Op::Put {
                key: key.clone(),
                value: approval.encode_to_vec(),
                lease: None,
            },
            Op::Put {
                key: keys::approval_id(&approval.id),
                value: approval.tenant.clone().into_bytes(),
                lease: None,
            },
            audit(
                (&approval.caller, &approval.tenant),
                pb::AuditAction::ApprovalRequested,
                &approval,
                0,
                detail,
            ),
        ];
        let compare = Compare::ModRevision { key, equals: 0 };
        match self.store.txn(vec![compare], ops).await? {
            TxnOutcome::Committed { .. } => Ok(approval),
            // 128 random bits collided: vanishingly unlikely; the node retries.
            TxnOutcome::Conflict { .. } => Err(ApprovalError::Contended(approval.id)),
        }
    }

    /// Moves an APPROVED approval to EXECUTED if the node's request matches it.
    pub async fn claim(
        &self,
        who: &Principal,
        request: pb::ClaimApprovalRequest,
    ) -> Result<pb::Approval, ApprovalError> {
        who.authorize_node()?;
        let mut bad = Vec::new();
        check_id(&request.id, &mut bad);
        for (field, value) in [
            ("tenant", &request.tenant),
            ("caller", &request.caller),
            ("agent", &request.agent),
            ("action", &request.action),
        ] {
            if value.is_empty() {
                bad.push((field.to_string(), "required".to_string()));
            }
        }
        if request.arguments_sha256.len() != 32 {
            bad.push(("arguments_sha256".into(), "must be 32 bytes".into()));
        }
        if !bad.is_empty() {
            return Err(ApprovalError::Invalid(bad));
        }
        let binding = Binding {
            tenant: request.tenant.clone(),
            caller: request.caller,
            agent: request.agent,
            action: request.action,
            arguments_sha256: request.arguments_sha256,
            policy_version: request.policy_version,
        };
        self.update(&request.tenant, &request.id, |approval, now| {
            machine::claim(approval, &binding, now)?;
            Ok(Some(Change {
                actor: (approval.caller.clone(), approval.tenant.clone()),
                action: pb::AuditAction::ApprovalExecuted,
                detail: format!("executed {} on agent {}", approval.action, approval.agent),
            }))
        })
        .await
    }

    // === Approver calls ===

    /// One approval, for readers of its tenant (and nodes); while it is
    /// open, answered once it closes or after `wait_while_open` (zero: at
    /// once).
    pub async fn get(
        &self,
        who: &Principal,
        tenant: &str,
        id: &str,
        wait_while_open: Duration,
    ) -> Result<pb::Approval, ApprovalError> {
        let tenant = if who.role == Role::Node && who.tenant == SYSTEM_TENANT {
            // Nodes poll the approvals they asked for, in the caller's tenant.
            if tenant.is_empty() {
                return Err(ApprovalError::invalid("tenant", "required for node keys"));
            }
            check_id_only(id)?;
            tenant.to_string()
        } else {
            who.authorize(Access::Read)?;
            self.locate(who, tenant, id).await?
        };
        // Follow changes before reading, so a decision between the read and
        // the wait is not missed.
        let changes = (!wait_while_open.is_zero()).then(|| self.board.changes());
        let approval = decode(&self.read(&tenant, id).await?)?;
        match changes {
            Some(changes) if machine::is_open(machine::state(&approval)) => {
                self.wait_while_open(changes, &tenant, id, wait_while_open)
                    .await
            }
            _ => Ok(approval),
        }
    }

    /// The approval once it is no longer open, or as it is after `wait`.
    async fn wait_while_open(
        &self,
        mut changes: broadcast::Receiver<board::Change>,
        tenant: &str,
        id: &str,
        wait: Duration,
    ) -> Result<pb::Approval, ApprovalError> {
        let until = tokio::time::Instant::now() + wait.min(MAX_GET_WAIT);
        loop {
            match tokio::time::timeout_at(until, changes.recv()).await {
                Ok(Ok(change)) => {
                    let approval = &change.approval;
                    if approval.id == id
                        && approval.tenant == tenant
                        && !machine::is_open(machine::state(approval))
                    {
                        return Ok(approval.as_ref().clone());
                    }
                }
                // Some changes were missed: the store has the truth.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let approval = decode(&self.read(tenant, id).await?)?;
                    if !machine::is_open(machine::state(&approval)) {
                        return Ok(approval);
                    }
                }
                // Time is up, or the replica is shutting down.
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    return decode(&self.read(tenant, id).await?);
                }
            }
        }
    }

    /// Records a verdict of an APPROVER (or ADMIN) of the approval's tenant.
    pub async fn decide(
        &self,
        who: &Principal,
        tenant: &str,
        id: &str,
        verdict: Verdict,
        comment: &str,
    ) -> Result<pb::Approval, ApprovalError> {
        if !matches!(who.role, Role::Approver | Role::Admin) {
            return Err(crate::auth::AuthError::Forbidden {
                role: who.role,
                action: "decide approvals (needs role approver or admin)".into(),
            }
            .into());
        }
        let mut bad = Vec::new();
        if verdict == Verdict::Unspecified {
            bad.push((
                "verdict".to_string(),
                "required: APPROVE or REJECT".to_string(),
            ));
        }
        if comment.len() > MAX_COMMENT_BYTES {
            bad.push((
                "comment".to_string(),
                format!("at most {MAX_COMMENT_BYTES} bytes"),
            ));
        }
        check_id(id, &mut bad);
        if !bad.is_empty() {
            return Err(ApprovalError::Invalid(bad));
        }
        let tenant = self.locate(who, tenant, id).await?;
        // Groups matter only once escalated; read them once, before the loop.
        let approver = Approver {
            tenant: who.tenant.clone(),
            key_name: who.key_name.clone(),
            groups: self.groups_of(who).await?,
        };
        self.update(&tenant, id, |approval, now| {
            let next = machine::decide(approval, &approver, verdict, comment, now)?;
            let verdict_name = match verdict {
                Verdict::Approve => "APPROVE",
                Verdict::Reject => "REJECT",
                Verdict::Unspecified => "-",
            };
            Ok(Some(Change {
                actor: (who.key_name.clone(), who.tenant.clone()),
                action: pb::AuditAction::ApprovalDecision,
                detail: format!(
                    "{verdict_name} ({}); now {}{}",
                    if comment.is_empty() {
                        "no comment"
                    } else {
                        comment
                    },
                    machine::state_name(next),
                    if next == ApprovalState::Pending {
                        format!(
                            ", {} of {} approvals",
                            approval
                                .decisions
                                .iter()
                                .filter(|d| d.verdict == Verdict::Approve as i32)
                                .count(),
                            approval.required_approvals
                        )
                    } else {
                        String::new()
                    }
                ),
            }))
        })
        .await
    }

    /// Approvals matching `filter`, by criticality then age, one page.
    pub async fn list(
        &self,
        who: &Principal,
        filter: &ListFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<pb::Approval>, String), ApprovalError> {
        who.authorize(Access::Read)?;
        let scope = who.scope(&filter.tenant)?;
        list::list(&self.store, &scope, filter, page_size, page_token).await
    }

    /// Which tenants a watch covers, checked before anything is read.
    pub fn watch_scope(&self, who: &Principal, tenant: &str) -> Result<Scope, ApprovalError> {
        who.authorize(Access::Read)?;
        Ok(who.scope(tenant)?)
    }

    // === Timeouts ===

    /// Times out one due approval (escalates or expires it); a no-op if
    /// another replica got there first. Returns whether this call did it.
    pub async fn time_out(&self, tenant: &str, id: &str) -> Result<bool, ApprovalError> {
        let mut changed = false;
        let result = self
            .update(tenant, id, |approval, now| {
                let before = machine::state_name(machine::state(approval));
                Ok(machine::expire(approval, now).map(|timeout| {
                    changed = true;
                    Change {
                        actor: (SYSTEM_ACTOR.into(), SYSTEM_TENANT.into()),
                        action: pb::AuditAction::ApprovalTimeout,
                        detail: match timeout {
                            machine::Timeout::Escalated => format!(
                                "{before} timed out; escalated to group {}",
                                approval.escalation_group
                            ),
                            machine::Timeout::Expired => format!("{before} timed out; expired"),
                        },
                    }
                }))
            })
            .await;
        match result {
            Ok(_) => Ok(changed),
            Err(ApprovalError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // === Store I/O ===

    /// The tenant holding approval `id` for this caller: the requested one
    /// (checked against the caller's scope before anything is read), or,
    /// for a platform key naming none, whichever tenant holds it.
    async fn locate(
        &self,
        who: &Principal,
        tenant: &str,
        id: &str,
    ) -> Result<String, ApprovalError> {
        if tenant.is_empty() && who.is_platform_admin() {
            check_id_only(id)?;
            let Some(kv) = self.store.get(&keys::approval_id(id)).await? else {
                return Err(ApprovalError::NotFound {
                    tenant: "*".into(),
                    id: id.into(),
                });
            };
            return String::from_utf8(kv.value).map_err(|_| {
                StoreError::Internal(format!("corrupt approval index of {id}")).into()
            });
        }
        match who.scope(tenant)? {
            Scope::Tenant(tenant) => {
                check_id_only(id)?;
                Ok(tenant)
            }
            Scope::All => Err(ApprovalError::invalid(
                "tenant",
                "`*` names no single approval: name its tenant or leave it empty",
            )),
        }
    }

    async fn read(&self, tenant: &str, id: &str) -> Result<KeyValue, ApprovalError> {
        self.store
            .get(&keys::approval(tenant, id))
            .await?
            .ok_or_else(|| ApprovalError::NotFound {
                tenant: tenant.into(),
                id: id.into(),
            })
    }

    /// The approver groups of the caller's key.
    async fn groups_of(&self, who: &Principal) -> Result<Vec<String>, ApprovalError> {
        let key = keys::resource(Kind::ApiKey, &who.tenant, &who.key_name);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(Vec::new());
        };
        let resource = pb::Resource::decode(kv.value.as_slice())
            .map_err(|e| StoreError::Internal(format!("corrupt ApiKey {key}: {e}")))?;
        Ok(match resource.spec {
            Some(Spec::ApiKey(spec)) => spec.groups,
            _ => Vec::new(),
        })
    }

    /// Reads the approval, applies `rule` and writes the result with its
    /// audit event by compare-and-swap; on a lost race, reads and applies
    /// again. A rule returning `None` changes nothing.
    async fn update<F>(
        &self,
        tenant: &str,
        id: &str,
        mut rule: F,
    ) -> Result<pb::Approval, ApprovalError>
    where
        F: FnMut(&mut pb::Approval, SystemTime) -> Result<Option<Change>, ApprovalError>,
    {
        let key = keys::approval(tenant, id);
        for _ in 0..MAX_ATTEMPTS {
            let kv = self.read(tenant, id).await?;
            let mut approval = decode(&kv)?;
            let Some(change) = rule(&mut approval, SystemTime::now())? else {
                return Ok(approval);
            };
            let ops = vec![
                Op::Put {
                    key: key.clone(),
                    value: approval.encode_to_vec(),
                    lease: None,
                },
                audit(
                    (&change.actor.0, &change.actor.1),
                    change.action,
                    &approval,
                    kv.mod_revision,
                    change.detail,
                ),
            ];
            let compare = Compare::ModRevision {
                key: key.clone(),
                equals: kv.mod_revision,
            };
            match self.store.txn(vec![compare], ops).await? {
                TxnOutcome::Committed { .. } => return Ok(approval),
                TxnOutcome::Conflict { .. } => continue,
            }
        }
        Err(ApprovalError::Contended(id.into()))
    }
}

/// What one change records in the audit log.
struct Change {
    /// (key name, tenant) of the actor.
    actor: (String, String),
    action: pb::AuditAction,
    detail: String,
}

/// The approval a valid node request creates, PENDING from `now`.
pub fn new_approval(
    request: pb::RequestApprovalRequest,
    now: SystemTime,
) -> Result<pb::Approval, ApprovalError> {
    let mut bad: Vec<(String, String)> = Vec::new();
    let mut required = |field: &str, value: &str| {
        if value.is_empty() {
            bad.push((field.into(), "required".into()));
        }
    };
    required("tenant", &request.tenant);
    required("agent", &request.agent);
    required("action", &request.action);
    required("caller", &request.caller);
    let criticality =
        pb::Criticality::try_from(request.criticality).unwrap_or(pb::Criticality::Unspecified);
    let required_approvals = machine::required_approvals(criticality);
    if required_approvals.is_none() {
        bad.push(("criticality".into(), "must be HIGH or CRITICAL".into()));
    }
    if request.arguments_json.len() > MAX_ARGUMENTS_BYTES {
        bad.push((
            "arguments_json".into(),
            format!("at most {MAX_ARGUMENTS_BYTES} bytes"),
        ));
    }
    let timeout = match request.timeout.map(Duration::try_from) {
        None => aios_model::DEFAULT_APPROVAL_TIMEOUT,
        Some(Ok(t)) if !t.is_zero() && t <= MAX_APPROVAL_TIMEOUT => t,
        Some(_) => {
            bad.push(("timeout".into(), "must be > 0 and at most 7 days".into()));
            Duration::ZERO
        }
    };
    if request.trace_id.len() > 64 {
        bad.push(("trace_id".into(), "at most 64 characters".into()));
    }
    if !bad.is_empty() {
        return Err(ApprovalError::Invalid(bad));
    }
    Ok(pb::Approval {
        id: format!("{ID_PREFIX}{}", random_id()),
        arguments_sha256: aios_runtime::keys::arguments_sha256(&request.arguments_json).to_vec(),
        tenant: request.tenant,
        agent: request.agent,
        action: request.action,
        caller: request.caller,
        arguments_json: request.arguments_json,
        criticality: criticality as i32,
        policy_version: request.policy_version,
        create_time: Some(now.into()),
        expire_time: Some((now + timeout).into()),
        state: ApprovalState::Pending as i32,
        required_approvals: required_approvals.unwrap_or(1),
        decisions: Vec::new(),
        escalation_group: String::new(),
        user: request.user,
        trace_id: request.trace_id,
        update_time: Some(now.into()),
        escalate_to: request.escalate_to,
        timeout: prost_types::Duration::try_from(timeout).ok(),
    })
}

/// Decodes a stored approval.
pub fn decode(kv: &KeyValue) -> Result<pb::Approval, ApprovalError> {
    pb::Approval::decode(kv.value.as_slice())
        .map_err(|e| StoreError::Internal(format!("corrupt approval {}: {e}", kv.key)).into())
}

/// Ids are `apr_` and 32 lowercase hex characters.
fn valid_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn check_id(id: &str, bad: &mut Vec<(String, String)>) {
    if id.is_empty() {
        bad.push(("id".into(), "required".into()));
    } else if !valid_id(id) {
        bad.push((
            "id".into(),
            "not an approval id (apr_ and 32 hex characters)".into(),
        ));
    }
}

fn check_id_only(id: &str) -> Result<(), ApprovalError> {
    let mut bad = Vec::new();
    check_id(id, &mut bad);
    match bad.is_empty() {
        true => Ok(()),
        false => Err(ApprovalError::Invalid(bad)),
    }
}

fn criticality_name(value: i32) -> &'static str {
    match pb::Criticality::try_from(value) {
        Ok(pb::Criticality::Critical) => "CRITICAL",
        Ok(pb::Criticality::High) => "HIGH",
        Ok(pb::Criticality::Medium) => "MEDIUM",
        Ok(pb::Criticality::Low) => "LOW",
        _ => "UNSPECIFIED",
    }
}

/// The audit event of one approval change, in the approval tenant's log;
/// written in the same transaction as the change.
fn audit(
    (actor, actor_tenant): (&str, &str),
    action: pb::AuditAction,
    approval: &pb::Approval,
    before: i64,
    detail: String,
) -> Op {
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let id = random_id();
    let event = pb::AuditEvent {
        id: id.clone(),
        time: Some(now.into()),
        actor: actor.to_string(),
        actor_tenant: actor_tenant.to_string(),
        action: action as i32,
        // Approval events name the approval, with no kind.
        target: Some(pb::ResourceRef {
            kind: pb::Kind::Unspecified as i32,
            tenant: approval.tenant.clone(),
            name: approval.id.clone(),
        }),
        before_version: before,
        after_version: 0,
        dry_run: false,
        detail,
    };
    Op::Put {
        key: keys::audit(&approval.tenant, nanos, &id),
        value: event.encode_to_vec(),
        lease: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request() -> pb::RequestApprovalRequest {
        pb::RequestApprovalRequest {
            tenant: "acme".into(),
            agent: "refunder".into(),
            action: "payments.refund".into(),
            caller: "ci".into(),
            arguments_json: "abc".into(),
            criticality: pb::Criticality::Critical as i32,
            policy_version: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_approval_is_pending_bound_and_digested() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let a = new_approval(request(), now).unwrap();
        assert!(valid_id(&a.id), "{}", a.id);
        assert_eq!(machine::state(&a), ApprovalState::Pending);
        assert_eq!(a.required_approvals, 2);
        assert_eq!(
            aios_runtime::hex::encode(&a.arguments_sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            a.expire_time,
            Some((now + aios_model::DEFAULT_APPROVAL_TIMEOUT).into())
        );
    }

    #[test]
    fn a_bad_request_lists_every_bad_field() {
        let err = new_approval(
            pb::RequestApprovalRequest {
                criticality: pb::Criticality::Medium as i32,
                timeout: Some(prost_types::Duration {
                    seconds: 8 * 24 * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
            SystemTime::now(),
        )
        .unwrap_err();
        let ApprovalError::Invalid(fields) = err else {
            panic!("not invalid: {err}");
        };
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "agent",
                "action",
                "caller",
                "criticality",
                "timeout"
            ]
        );
    }

    #[test]
    fn ids_are_checked_before_any_read() {
        assert!(valid_id("apr_0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("apr_0123"));
        assert!(!valid_id("../../resources/api_key/x"));
        assert!(!valid_id("apr_0123456789ABCDEF0123456789abcdef"));
    }
}
