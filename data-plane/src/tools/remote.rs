//! External tools: `ToolService.Invoke` over gRPC at the tool's `address`.
//!
//! One tonic channel per address, made on first use (connecting lazily)
//! and kept: tonic multiplexes calls over it and reconnects by itself.
//! Each attempt is bounded by the tool's timeout and the request's
//! deadline, whichever comes first. As `tool.proto` says, UNAVAILABLE,
//! RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED answers are retried (at most
//! [`MAX_ATTEMPTS`] attempts, with the same idempotency key, short
//! backoff, inside the deadline); an attempt that runs out of time is not,
//! since the time it had is the tool's whole budget.
//!
//! The W3C `traceparent` of the request, when it has one, goes along as
//! metadata.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_proto::v1::{self as pb, tool_service_client::ToolServiceClient};
use tokio::time::Instant;
use tonic::{
    Code,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use super::ToolError;

/// Most attempts per call.
pub const MAX_ATTEMPTS: u32 = 3;
/// Time to set up a connection to a tool server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff before the second attempt; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Channels to tool servers, by address; cheap to clone (clones share them).
#[derive(Clone, Debug, Default)]
pub struct RemoteTools {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// One call to make.
#[derive(Debug)]
pub struct RemoteCall<'a> {
    /// The ToolService's URL.
    pub address: &'a str,
    /// What to send.
    pub request: pb::InvokeRequest,
    /// Longest single attempt (the tool's timeout).
    pub timeout: Duration,
    /// The request's deadline.
    pub deadline: Instant,
    /// W3C trace context to propagate.
    pub traceparent: Option<&'a str>,
}

impl RemoteTools {
    /// No channels yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Invokes the tool: its `result_json`, or why not (a tool that ran and
    /// failed is [`ToolError::Failed`] with its message).
    pub async fn invoke(&self, call: RemoteCall<'_>) -> Result<String, ToolError> {
        let channel = self.channel(call.address)?;
        let mut client = ToolServiceClient::new(channel);
        let mut attempt = 1;
        loop {
            let now = Instant::now();
            let budget = call
                .timeout
                .min(call.deadline.saturating_duration_since(now));
            if budget.is_zero() {
                return Err(ToolError::Timeout(call.timeout));
            }
            let mut request = tonic::Request::new(call.request.clone());
            // Tells the server how long it has (`grpc-timeout`).
            request.set_timeout(budget);
            if let Some(value) = call
                .traceparent
                .and_then(|t| MetadataValue::try_from(t).ok())
            {
                request.metadata_mut().insert("traceparent", value);
            }
            let status = match tokio::time::timeout(budget, client.invoke(request)).await {
                Err(_) => return Err(ToolError::Timeout(budget)),
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    if response.is_error {
                        let message = if response.error_message.is_empty() {
                            "the tool reported an error without a message".to_string()
                        } else {
                            response.error_message
                        };
                        return Err(ToolError::Failed(message));
                    }
                    return Ok(if response.result_json.trim().is_empty() {
                        "null".to_string()
                    } else {
                        response.result_json
                    });
                }
                // tonic enforces the `grpc-timeout` it sent, too (CANCELLED).
                Ok(Err(_)) if now.elapsed() >= budget => return Err(ToolError::Timeout(budget)),
                Ok(Err(status)) => status,
            };
            let retryable = matches!(
                status.code(),
                Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded
            );
            tracing::debug!(
                address = call.address,
                tool = %call.request.tool,
                attempt,
                code = ?status.code(),
                retryable,
                "tool call failed"
            );
            let backoff = FIRST_BACKOFF * 2u32.saturating_pow(attempt - 1);
            if !retryable || attempt >= MAX_ATTEMPTS || Instant::now() + backoff >= call.deadline {
                return Err(ToolError::Unavailable(format!(
                    "tool server {} answered {:?}: {}",
                    call.address,
                    status.code(),
                    status.message()
                )));
            }
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// The channel to `address`, made on first use.
    fn channel(&self, address: &str) -> Result<Channel, ToolError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        if address.starts_with("https://") {
            // tonic is built without TLS in this workspace.
            return Err(ToolError::Unavailable(format!(
                "tool server {address}: https tool servers are not supported by this node yet"
            )));
        }
        let channel = Endpoint::from_shared(address.to_string())
            .map_err(|e| ToolError::Unavailable(format!("tool server {address}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}
