//! The claim of an approval by the request it approved, made at the point
//! of execution.
//!
//! The gate hands the policy stage a [`Claim`] with the ticket; the policy
//! stage puts it on the call, and the agent loop makes it right before the
//! request's action runs (or its first model call). Claiming moves the
//! approval from APPROVED to EXECUTED on the control plane, so a request
//! refused before that point (a rate limit, a budget, a guardrail) leaves
//! the approval APPROVED for a retry, instead of burning it.
//!
//! A claim is made at most once per request; its result is kept, so the
//! gate can tell afterwards whether the approval was used, and why the
//! control plane refused it if it did.

use std::sync::Arc;

use aios_proto::v1 as pb;
use tokio::sync::OnceCell;
use tonic::Status;

use super::ApprovalClient;
use crate::pipeline::{Caller, ExecError, Outcome};

/// The claim of one approval by one request; cheap to clone (clones share
/// the claim and its result).
#[derive(Clone, Debug)]
pub struct Claim(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    client: ApprovalClient,
    request: pb::ClaimApprovalRequest,
    made: OnceCell<Result<(), Status>>,
}

impl Claim {
    /// A claim, not made yet, of what `request` binds, through `client`.
    pub fn new(client: ApprovalClient, request: pb::ClaimApprovalRequest) -> Self {
        Self(Arc::new(Inner {
            client,
            request,
            made: OnceCell::new(),
        }))
    }

    /// The approval it claims.
    pub fn approval_id(&self) -> &str {
        &self.0.request.id
    }

    /// Claims the approval, unless this claim was made already (then it
    /// answers as it did the first time). A refusal is the error the
    /// request ends with; the gate reads the control plane's own status
    /// from [`Claim::made`].
    pub async fn make(&self) -> Result<(), ExecError> {
        let inner = &self.0;
        let made = inner
            .made
            .get_or_init(|| async {
                let claimed = inner.client.claim(inner.request.clone()).await;
                match &claimed {
                    Ok(_) => {
                        tracing::info!(approval = %inner.request.id, "approval claimed; executing")
                    }
                    Err(status) => tracing::info!(
                        approval = %inner.request.id,
                        code = ?status.code(),
                        error = %status.message(),
                        "approval claim refused"
                    ),
                }
                claimed.map(drop)
            })
            .await;
        match made {
            Ok(()) => Ok(()),
            Err(status) => Err(super::claim_error(&inner.request.id, status)),
        }
    }

    /// Whether this claim's approval covers `caller` running `action` of
    /// `agent` with `arguments` (what the policy stage checks before it
    /// admits a request with a ticket).
    pub fn admits(&self, caller: &Caller, agent: &str, action: &str, arguments: &str) -> bool {
        let bound = &self.0.request;
        bound.tenant == caller.tenant
            && bound.caller == caller.key_name
            && bound.agent == agent
            && bound.action == action
            && bound.arguments_sha256 == aios_runtime::keys::arguments_sha256(arguments)
    }

    /// How the claim went: `None` if it was not made (the request ended
    /// before anything ran), else the control plane's answer.
    pub fn made(&self) -> Option<&Result<(), Status>> {
        self.0.made.get()
    }
}

// === a request that ended before its claim ===

/// What a request that ended before it ran tells its caller about the
/// approval it named.
fn not_used(id: &str) -> String {
    format!("approval {id} was not used and stays APPROVED until it expires; re-submit with it")
}

/// `outcome` of a request that ended before its claim (refused by a
/// guardrail, blocked by policy), saying the approval was not used.
pub(super) fn unused_in_outcome(mut outcome: Outcome, id: &str) -> Outcome {
    if let Some((_, message)) = &mut outcome.error {
        message.push_str("; ");
        message.push_str(&not_used(id));
    }
    outcome
}

/// `error` of a request that ended before its claim (a rate limit, a
/// budget, no model to route to), saying the approval was not used.
pub(super) fn unused_in_error(error: ExecError, id: &str) -> ExecError {
    let note = |text: String| format!("{text}; {}", not_used(id));
    match error {
        ExecError::Unauthenticated(message) => ExecError::Unauthenticated(note(message)),
        ExecError::PermissionDenied { reason, message } => ExecError::PermissionDenied {
            reason,
            message: note(message),
        },
        ExecError::RateLimited {
            subject,
            description,
            retry_after,
        } => ExecError::RateLimited {
            subject,
            description: note(description),
            retry_after,
        },
        ExecError::BudgetExhausted {
            subject,
            description,
        } => ExecError::BudgetExhausted {
            subject,
            description: note(description),
        },
        ExecError::FailedPrecondition {
            reason,
            message,
            violations,
        } => ExecError::FailedPrecondition {
            reason,
            message: note(message),
            violations,
        },
        ExecError::Unavailable(message) => ExecError::Unavailable(note(message)),
        ExecError::DeadlineExceeded(message) => ExecError::DeadlineExceeded(note(message)),
        // Field violations name fields of the request, and these two carry
        // no message for the caller: they stay as they are.
        error @ (ExecError::Invalid(_) | ExecError::NotFound { .. } | ExecError::Internal(_)) => {
            error
        }
    }
}

/// A control plane on loopback whose `Claim` answers as scripted and
/// counts its calls, for tests of whatever makes claims.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use aios_proto::v1::{
        self as pb,
        approval_service_server::{ApprovalService, ApprovalServiceServer},
    };
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::Claim;
    use crate::{ControlPlaneUrl, approvals::ApprovalClient};

    /// The fake control plane's `ApprovalService`.
    #[derive(Debug, Default)]
    pub(crate) struct Claims {
        /// Claims received.
        pub(crate) count: AtomicUsize,
        /// What the next claims are refused with (`None` = granted).
        pub(crate) refuse: Mutex<Option<Status>>,
    }

    impl Claims {
        pub(crate) fn count(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }
    }

    #[tonic::async_trait]
    impl ApprovalService for Claims {
        async fn claim(
            &self,
            request: Request<pb::ClaimApprovalRequest>,
        ) -> Result<Response<pb::Approval>, Status> {
            self.count.fetch_add(1, Ordering::SeqCst);
            if let Some(status) = self.refuse.lock().unwrap().clone() {
                return Err(status);
            }
            let request = request.into_inner();
            Ok(Response::new(pb::Approval {
                id: request.id,
                tenant: request.tenant,
                state: pb::ApprovalState::Executed as i32,
                ..Default::default()
            }))
        }
    }

    /// Serves `claims` on loopback; a client of it.
    pub(crate) async fn serve(claims: Arc<Claims>) -> ApprovalClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ApprovalServiceServer::from_arc(claims))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        ApprovalClient::new(&[ControlPlaneUrl(format!("http://{addr}"))], None).unwrap()
    }

    /// A claim of approval `apr_1` through `client`.
    pub(crate) fn claim(client: ApprovalClient) -> Claim {
        Claim::new(
            client,
            pb::ClaimApprovalRequest {
                id: "apr_1".into(),
                tenant: "acme".into(),
                caller: "k".into(),
                agent: "bot".into(),
                action: "pay".into(),
                arguments_sha256: aios_runtime::keys::arguments_sha256("{}").to_vec(),
                policy_version: 1,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{collections::HashMap, sync::Arc};

    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    use super::{testing::*, *};

    #[tokio::test]
    async fn a_claim_is_made_once_however_often_it_is_asked_for() {
        let claims = Arc::new(Claims::default());
        let claim = claim(serve(claims.clone()).await);
        assert!(claim.made().is_none(), "not made until asked for");
        claim.make().await.unwrap();
        claim.clone().make().await.unwrap();
        assert_eq!(claims.count(), 1, "clones share the claim");
        assert!(matches!(claim.made(), Some(Ok(()))));
    }

    #[tokio::test]
    async fn a_refusal_is_kept_and_not_asked_again() {
        let claims = Arc::new(Claims::default());
        *claims.refuse.lock().unwrap() = Some(Status::with_error_details(
            Code::FailedPrecondition,
            "already executed",
            ErrorDetails::with_error_info("ALREADY_EXECUTED", "aios.dev", HashMap::new()),
        ));
        let claim = claim(serve(claims.clone()).await);
        let Err(ExecError::FailedPrecondition { reason, .. }) = claim.make().await else {
            panic!("refused");
        };
        assert_eq!(reason, "ALREADY_EXECUTED");
        // Even once the control plane would grant it: one request, one claim.
        *claims.refuse.lock().unwrap() = None;
        assert!(claim.make().await.is_err());
        assert_eq!(claims.count(), 1);
        let Some(Err(status)) = claim.made() else {
            panic!("the refusal is kept");
        };
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "ALREADY_EXECUTED"
        );
    }

    #[tokio::test]
    async fn an_unreachable_control_plane_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client =
            ApprovalClient::new(&[crate::ControlPlaneUrl(format!("http://{addr}"))], None).unwrap();
        let claim = testing::claim(client);
        assert!(matches!(claim.make().await, Err(ExecError::Unavailable(_))));
        assert!(matches!(claim.made(), Some(Err(_))));
    }
}
