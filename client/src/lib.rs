//! Typed Rust client for aios, and the `aiosctl` command line (feature
//! `cli`, on by default).
//!
//! [`connect`] opens a channel to either plane that attaches the API key to
//! every call; the generated `aios_proto::v1::*_client` types then work on
//! it unchanged. [`probe`] asks a plane for its health and the services it
//! serves, which is what `aiosctl status` shows. [`AdminClient`] wraps the
//! control plane's `AdminService`; [`describe_status`] renders its errors
//! (with their `google.rpc` details) as one line. [`FleetClient`] wraps
//! the operator side of `FleetService`: the nodes and what each runs.
//! [`TelemetryClient`] reads `TelemetryService`: traces, summaries and the
//! live rollup stream. [`ApprovalClient`] lists, decides and watches
//! approvals. [`BudgetClient`] reads `BudgetService`: spend
//! against each budget's current window. With the `manifest` feature, [`manifest`] reads and writes resources as YAML
//! or JSON documents (the proto3 JSON mapping of `aios.v1.Resource`).

pub mod admin;
pub mod approvals;
pub mod budget;
pub mod fleet;
pub mod kind;
#[cfg(feature = "manifest")]
pub mod manifest;
pub mod telemetry;

use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

pub use admin::{AdminClient, describe_status};
pub use approvals::ApprovalClient;
pub use budget::BudgetClient;
pub use fleet::FleetClient;
pub use telemetry::TelemetryClient;

/// Metadata key that carries the API key on every call.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a usable URL.
    #[error("invalid endpoint '{endpoint}': {reason}")]
    Endpoint {
        /// As given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The API key cannot be sent as gRPC metadata.
    #[error("invalid API key: it must be printable ASCII")]
    ApiKey,
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// Endpoint URL.
        endpoint: String,
        /// Transport error text.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{}", describe_status(.0))]
    Rpc(#[from] Status),
}

/// A channel that adds the API key to every request.
pub type AuthChannel = InterceptedService<Channel, ApiKeyInterceptor>;

/// Adds [`API_KEY_HEADER`] to outgoing requests.
#[derive(Clone, Debug)]
pub struct ApiKeyInterceptor {
    key: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for ApiKeyInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.key {
            request.metadata_mut().insert(API_KEY_HEADER, key.clone());
        }
        Ok(request)
    }
}

/// Normalises `HOST:PORT` into `http://HOST:PORT`; keeps explicit schemes.
pub fn normalize_endpoint(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Connects to a plane at `endpoint` with a per-call `timeout`.
pub async fn connect(
    endpoint: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<AuthChannel, ClientError> {
    let url = normalize_endpoint(endpoint);
    let key = api_key
        .map(|k| MetadataValue::try_from(k).map_err(|_| ClientError::ApiKey))
        .transpose()?;
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            endpoint: url,
            reason: error_chain(&e),
        })?;
    Ok(InterceptedService::new(channel, ApiKeyInterceptor { key }))
}

/// The error and its sources on one line (transport errors nest the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    let mut last = text.clone();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Transport errors wrap causes that print the same words; say them once.
        if cause_text != last && !last.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

// === Health and discovery ===

/// What a plane says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// Endpoint URL.
    pub endpoint: String,
    /// `SERVING`, `NOT_SERVING`, `UNKNOWN`, or `UNREACHABLE`.
    pub status: String,
    /// Services listed by reflection (sorted).
    pub services: Vec<String>,
    /// Round trip of the health check, in milliseconds.
    pub latency_ms: f64,
    /// Why the plane is unreachable or unhealthy, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    /// Whether the plane reported SERVING.
    pub fn is_serving(&self) -> bool {
        self.status == "SERVING"
    }
}

/// Checks overall health (`grpc.health.v1`, service "") and lists services
/// through reflection. Never fails: an unreachable plane is a result.
pub async fn probe(endpoint: &str, api_key: Option<&str>, timeout: Duration) -> Probe {
    let url = normalize_endpoint(endpoint);
    let started = Instant::now();
    let result = async {
        let channel = connect(endpoint, api_key, timeout).await?;
        let status = check_health(channel.clone(), "").await?;
        let services = list_services(channel).await?;
        Ok::<_, ClientError>((status, services))
    }
    .await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok((status, services)) => Probe {
            endpoint: url,
            status: status.as_str_name().to_string(),
            services,
            latency_ms,
            error: None,
        },
        Err(error) => Probe {
            endpoint: url,
            status: "UNREACHABLE".into(),
            services: Vec::new(),
            latency_ms,
            error: Some(error.to_string()),
        },
    }
}

/// `grpc.health.v1.Health/Check` for `service` ("" is the whole server).
pub async fn check_health(
    channel: AuthChannel,
    service: &str,
) -> Result<ServingStatus, ClientError> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// Lists the services a server exposes through gRPC reflection (v1).
pub async fn list_services(channel: AuthChannel) -> Result<Vec<String>, ClientError> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let Some(response) = responses.message().await? else {
        return Err(Status::unavailable("reflection stream closed without an answer").into());
    };
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        Some(MessageResponse::ErrorResponse(e)) => {
            Err(Status::new(e.error_code.into(), e.error_message).into())
        }
        _ => Err(Status::internal("unexpected reflection response").into()),
    }
}
