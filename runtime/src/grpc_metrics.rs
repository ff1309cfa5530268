//! `aios_grpc_server_handled_total{plane, service, method, code}`: a tower
//! layer around a plane's gRPC routes that counts every call when it ends.
//!
//! A call's status is in the response headers when it failed before any
//! message (a "trailers-only" response), else in the trailers at the end of
//! the body, so the body is wrapped and watched for them; a body dropped
//! before its trailers (the client went away) counts as `CANCELLED`.
//!
//! Label values are bounded: `service` and `method` come from the plane's
//! descriptor sets, and a path that names no served method (anyone can send
//! one) counts as `unknown`/`unknown`. Counters are made once per method and
//! code, so a call costs a map lookup and an atomic add.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use metrics::Counter;
use prost::Message;
use tower::{Layer, Service};

/// The counter's name.
pub const HANDLED: &str = "aios_grpc_server_handled_total";

/// gRPC status codes by number, as the gRPC spec names them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Counts the calls of one plane (made a service around its routes).
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    table: Arc<Table>,
}

impl GrpcMetricsLayer {
    /// For `plane`, serving `services` (fully-qualified names): every
    /// method of theirs found in `descriptor_sets` gets its own label values.
    pub fn new(plane: &'static str, services: &[&str], descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("undecodable descriptor set; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    if !services.contains(&name.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        let path = format!("/{name}/{}", method.name());
                        let series = Method::new(plane, name.clone(), method.name().to_string());
                        methods.insert(path.into_boxed_str(), Arc::new(series));
                    }
                }
            }
        }
        let unknown = Arc::new(Method::new(plane, "unknown".into(), "unknown".into()));
        Self {
            table: Arc::new(Table { methods, unknown }),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            table: self.table.clone(),
            inner,
        }
    }
}

#[derive(Debug)]
struct Table {
    /// `/package.Service/Method` → its counters.
    methods: HashMap<Box<str>, Arc<Method>>,
    unknown: Arc<Method>,
}

/// One method's counters, one per status code, made on first use.
#[derive(Debug)]
struct Method {
    plane: &'static str,
    service: String,
    method: String,
    codes: [OnceLock<Counter>; 17],
}

impl Method {
    fn new(plane: &'static str, service: String, method: String) -> Self {
        Self {
            plane,
            service,
            method,
            codes: Default::default(),
        }
    }

    /// Counts one call that ended with status `code` (a number; anything
    /// outside the spec's counts as `UNKNOWN`).
    fn ended(&self, code: usize) {
        let code = if code < CODES.len() { code } else { UNKNOWN };
        self.codes[code]
            .get_or_init(|| {
                metrics::counter!(
                    HANDLED,
                    "plane" => self.plane,
                    "service" => self.service.clone(),
                    "method" => self.method.clone(),
                    "code" => CODES[code],
                )
            })
            .increment(1);
    }
}

/// The status code in `grpc-status`, if the map has one.
fn status_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(UNKNOWN),
    )
}

// === the service ===

/// A plane's routes, counted.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    table: Arc<Table>,
    inner: S,
}

impl<S, B, ReqBody> Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Response = Response<MeteredBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = self
            .table
            .methods
            .get(request.uri().path())
            .unwrap_or(&self.table.unknown)
            .clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    method.ended(UNKNOWN);
                    return Err(error);
                }
            };
            // Trailers-only: the status is already here.
            let pending = match status_code(response.headers()) {
                Some(code) => {
                    method.ended(code);
                    None
                }
                None => Some(method),
            };
            Ok(response.map(|inner| MeteredBody { inner, pending }))
        })
    }
}

/// A response body that counts its call when the trailers pass (or when
/// it ends or is dropped without them).
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    /// The call's counters until it is counted.
    pending: Option<Arc<Method>>,
}

impl<B> MeteredBody<B> {
    fn end(&mut self, code: usize) {
        if let Some(method) = self.pending.take() {
            method.ended(code);
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.end(CANCELLED);
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(UNKNOWN);
                    self.end(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.end(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_served_services_have_names_and_others_are_unknown() {
        let layer = GrpcMetricsLayer::new(
            "test-plane",
            &["aios.v1.AgentService", "grpc.health.v1.Health"],
            &[
                aios_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        );
        let methods = &layer.table.methods;
        let execute = &methods["/aios.v1.AgentService/Execute"];
        assert_eq!(
            (execute.service.as_str(), execute.method.as_str()),
            ("aios.v1.AgentService", "Execute")
        );
        assert!(methods.contains_key("/grpc.health.v1.Health/Check"));
        // Described in the set, but not served by this plane.
        assert!(!methods.contains_key("/aios.v1.AdminService/Apply"));
        assert_eq!(layer.table.unknown.method, "unknown");
    }

    #[test]
    fn status_codes_are_read_from_grpc_status_and_bounded() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(CODES[status_code(&headers).unwrap()], "UNAUTHENTICATED");
        headers.insert("grpc-status", "banana".parse().unwrap());
        assert_eq!(status_code(&headers), Some(UNKNOWN));
    }
}
