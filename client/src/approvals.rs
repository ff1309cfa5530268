//! [`ApprovalClient`]: the approver side of the control plane's
//! `ApprovalService` (`List`, `Get`, `Decide`, `Watch`). The node side
//! (`Request`, `Claim`) belongs to the data plane.

use std::time::Duration;

use aios_proto::v1::{
    Approval, ApprovalEvent, ApprovalState, DecideRequest, GetApprovalRequest,
    ListApprovalsRequest, Verdict, WatchApprovalsRequest,
    approval_service_client::ApprovalServiceClient,
};
use tonic::Streaming;

use crate::{AuthChannel, ClientError, connect};

/// Largest page `List` returns; [`ApprovalClient::list`] asks for it.
pub const MAX_APPROVALS_PAGE: i32 = 1000;

/// Typed client of the approver RPCs of `aios.v1.ApprovalService`. Cheap
/// to clone: clones share the channel.
#[derive(Clone, Debug)]
pub struct ApprovalClient {
    inner: ApprovalServiceClient<AuthChannel>,
}

impl ApprovalClient {
    /// Wraps a channel from [`connect`].
    pub fn new(channel: AuthChannel) -> Self {
        Self {
            inner: ApprovalServiceClient::new(channel),
        }
    }

    /// Connects to the control plane at `endpoint`, sending `api_key` on
    /// every call.
    pub async fn connect(
        endpoint: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::new(connect(endpoint, api_key, timeout).await?))
    }

    /// `List`, following `next_page_token` to the last page: the queue of
    /// `tenant` (empty = the key's own, `*` = all) in `states` (empty =
    /// open ones), most critical first, then oldest first.
    pub async fn list(
        &mut self,
        tenant: &str,
        states: &[ApprovalState],
        agent: &str,
    ) -> Result<Vec<Approval>, ClientError> {
        let mut request = ListApprovalsRequest {
            tenant: tenant.to_string(),
            states: states.iter().map(|s| *s as i32).collect(),
            page_size: MAX_APPROVALS_PAGE,
            page_token: String::new(),
            agent: agent.to_string(),
        };
        let mut approvals = Vec::new();
        loop {
            let page = self.inner.list(request.clone()).await?.into_inner();
            approvals.extend(page.approvals);
            if page.next_page_token.is_empty() {
                return Ok(approvals);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// `Get`: one approval of `tenant` (empty = the key's own).
    pub async fn get(&mut self, tenant: &str, id: &str) -> Result<Approval, ClientError> {
        let request = GetApprovalRequest {
            id: id.to_string(),
            tenant: tenant.to_string(),
            wait_while_open: None,
        };
        Ok(self.inner.get(request).await?.into_inner())
    }

    /// `Decide`: approve or reject, with a comment for the audit log.
    pub async fn decide(
        &mut self,
        tenant: &str,
        id: &str,
        verdict: Verdict,
        comment: &str,
    ) -> Result<Approval, ClientError> {
        let request = DecideRequest {
            id: id.to_string(),
            verdict: verdict as i32,
            comment: comment.to_string(),
            tenant: tenant.to_string(),
        };
        Ok(self.inner.decide(request).await?.into_inner())
    }

    /// `Watch`: the open approvals, then each change.
    pub async fn watch(
        &mut self,
        tenant: &str,
        include_decided: bool,
    ) -> Result<Streaming<ApprovalEvent>, ClientError> {
        let request = WatchApprovalsRequest {
            tenant: tenant.to_string(),
            include_decided,
        };
        Ok(self.inner.watch(request).await?.into_inner())
    }
}

// Approvals render as YAML/JSON through the contract's descriptors.
#[cfg(feature = "manifest")]
impl crate::manifest::Described for Approval {
    const FULL_NAME: &'static str = "aios.v1.Approval";
}
