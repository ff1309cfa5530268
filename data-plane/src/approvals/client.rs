//! The node's client of `ApprovalService` (Request, Get, Claim): the same
//! `--control-plane` URLs and node key as the config agent, one lazily
//! connected channel per URL, tried in turn when one is unreachable.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aios_proto::v1::{self as pb, approval_service_client::ApprovalServiceClient};
use aios_runtime::Secret;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{ControlPlaneUrl, upstream};

/// How long one call to the control plane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect to a control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the control planes' `ApprovalService`; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApprovalClient {
    channels: Arc<[Channel]>,
    key: Option<Secret>,
    next: Arc<AtomicUsize>,
}

impl ApprovalClient {
    /// A client of `urls` with the node `key`; `None` without URLs.
    pub fn new(urls: &[ControlPlaneUrl], key: Option<Secret>) -> Option<Self> {
        let channels: Vec<Channel> = urls
            .iter()
            .filter_map(|url| {
                tonic::transport::Endpoint::from_shared(url.0.clone())
                    .map_err(|error| tracing::warn!(%url, %error, "control-plane URL unusable for approvals"))
                    .ok()
            })
            .map(|endpoint| {
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .collect();
        (!channels.is_empty()).then(|| Self {
            channels: channels.into(),
            key,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Creates a PENDING approval.
    pub async fn request(
        &self,
        message: pb::RequestApprovalRequest,
    ) -> Result<pb::Approval, Status> {
        self.call(message, |mut client, request| async move {
            client.request(request).await
        })
        .await
    }

    /// Reads an approval of `tenant`; while it is open, the control plane
    /// answers once it closes or after `wait_while_open` (a long poll).
    pub async fn get(
        &self,
        tenant: &str,
        id: &str,
        wait_while_open: Duration,
    ) -> Result<pb::Approval, Status> {
        let message = pb::GetApprovalRequest {
            id: id.to_string(),
            tenant: tenant.to_string(),
            wait_while_open: (!wait_while_open.is_zero())
                .then(|| prost_types::Duration::try_from(wait_while_open).ok())
                .flatten(),
        };
        self.call_for(
            message,
            CALL_TIMEOUT + wait_while_open,
            |mut client, request| async move { client.get(request).await },
        )
        .await
    }

    /// Moves an APPROVED approval to EXECUTED if the request matches it.
    pub async fn claim(&self, message: pb::ClaimApprovalRequest) -> Result<pb::Approval, Status> {
        self.call(message, |mut client, request| async move {
            client.claim(request).await
        })
        .await
    }

    /// Sends `message` to each control plane in turn until one answers
    /// (anything but UNAVAILABLE), starting after the last one used.
    async fn call<T, F, Fut>(&self, message: T, send: F) -> Result<pb::Approval, Status>
    where
        T: Clone,
        F: Fn(ApprovalServiceClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::Approval>, Status>>,
    {
        self.call_for(message, CALL_TIMEOUT, send).await
    }

    /// [`Self::call`], each attempt allowed `timeout`.
    async fn call_for<T, F, Fut>(
        &self,
        message: T,
        timeout: Duration,
        send: F,
    ) -> Result<pb::Approval, Status>
    where
        T: Clone,
        F: Fn(ApprovalServiceClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::Approval>, Status>>,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = Status::unavailable("no control plane to ask");
        for i in 0..self.channels.len() {
            let channel = self.channels[(start + i) % self.channels.len()].clone();
            let mut request = Request::new(message.clone());
            request.set_timeout(timeout);
            upstream::authorize(&mut request, self.key.as_ref())
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            match send(ApprovalServiceClient::new(channel), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}
