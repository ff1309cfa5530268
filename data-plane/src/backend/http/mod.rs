//! What the remote backends share: one pooled HTTP client, API keys that
//! never print, deadlines, error classification of provider answers, and
//! (`sse.rs`) an incremental server-sent-events parser and stream driver.
//!
//! The client is hyper-util's `client-legacy` over `hyper-rustls` (rustls
//! with ring, Mozilla's roots from `webpki-roots`), not reqwest: hyper,
//! hyper-util and rustls with ring are already in the build for tonic, axum
//! and etcd, so this adds two small crates instead of reqwest's tree (and its
//! default aws-lc-rs and native-tls). Bundled roots keep a node independent of
//! the image's CA store; a private provider behind a private CA is reached over
//! plain `http://` inside the trusted network or through a proxy.

mod sse;

use std::{error::Error as StdError, fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use serde::Deserialize;
use tokio::time::Instant;

pub(crate) use self::sse::{Flow, SseDecoder, SseEvent, sse_stream};
use super::{BackendError, ChatResponse, ErrorKind, FinishReason, ToolCall, Usage};

/// How long opening a TCP connection to a provider may take, unless
/// configured otherwise (the call's deadline still bounds it).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pooled connections idle longer than this are closed; providers close
/// theirs after about a minute or two.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Largest successful (non-streamed) answer read.
const MAX_BODY_BYTES: usize = 32 << 20;

/// Largest error answer read; the rest is not worth the memory.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Longest provider message kept in a [`BackendError`].
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

// === ProviderKey ===

/// A provider API key. Its `Debug` never shows it, and error messages that
/// might echo it are scrubbed; only the request headers carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKey(String);

impl ProviderKey {
    /// Wraps a key (the value of the model's `api_key_env` variable).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for a request header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced.
    pub(crate) fn scrub(&self, text: String) -> String {
        if self.0.is_empty() || !text.contains(&self.0) {
            return text;
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(<redacted>)")
    }
}

/// `text` with `key` scrubbed, if there is one.
pub(crate) fn scrub(key: Option<&ProviderKey>, text: String) -> String {
    match key {
        Some(key) => key.scrub(text),
        None => text,
    }
}

// === ConfigError ===

/// A backend configuration that cannot work; found when the backend is built,
/// not on the first call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The base URL is not an absolute `http(s)://` URL.
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value cannot be sent (the value is not shown: it may
    /// be a credential).
    #[error("invalid value or name for header {name:?}")]
    Header {
        /// The header's name as configured.
        name: String,
    },
    /// rustls refused its configuration.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// `{base}{path}` as a URI, checked to be absolute http(s).
pub(crate) fn endpoint(base: &str, path: &str) -> Result<Uri, ConfigError> {
    let bad = |reason: &str| ConfigError::BaseUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a base URL has no query"));
    }
    Ok(uri)
}

/// Adds `name: value` to `headers`, marked sensitive when it is a credential.
pub(crate) fn insert_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(), ConfigError> {
    let invalid = || ConfigError::Header {
        name: name.to_string(),
    };
    let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
    let mut header_value = HeaderValue::from_str(value).map_err(|_| invalid())?;
    header_value.set_sensitive(sensitive);
    headers.insert(header_name, header_value);
    Ok(())
}

/// The headers every provider call carries.
pub(crate) fn base_headers(extra: &[(String, String)]) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("aios/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in extra {
        insert_header(&mut headers, name, value, false)?;
    }
    Ok(headers)
}

/// An `f32` parameter as the JSON number its decimal form says: `0.9f32`
/// widened is `0.8999999761581421`, which providers would take literally.
pub(crate) fn f32_json(x: f32) -> serde_json::Value {
    let widened = x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    serde_json::json!(widened)
}

// === HttpClient ===

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP/1.1 client for provider calls, cheap to clone: clones share
/// the pool. One per node is enough; backends built with their own get their
/// own pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Inner,
}

impl HttpClient {
    /// A client whose TCP connects give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self, ConfigError> {
        let mut http = HttpConnector::new();
        // The https wrapper checks the scheme; plain http stays allowed for
        // OpenAI-compatible servers on a trusted network.
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        // An explicit provider: the process default may be ambiguous (or
        // absent) depending on which rustls features other crates enable.
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ConfigError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self { inner })
    }

    /// POSTs `body` to `uri`; the answer's headers, any status.
    pub(crate) async fn post(
        &self,
        provider: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, BackendError> {
        let mut request = Request::post(uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                BackendError::new(
                    ErrorKind::InvalidRequest,
                    format!("{provider}: cannot build the request: {e}"),
                )
            })?;
        request.headers_mut().extend(headers.clone());
        self.inner.request(request).await.map_err(|e| {
            let what = if e.is_connect() {
                "cannot connect"
            } else {
                "connection failed"
            };
            BackendError::new(
                ErrorKind::Connection,
                format!("{provider}: {what}: {}", error_chain(&e)),
            )
        })
    }
}

/// An error and its sources, `: `-separated (hyper's own message alone says
/// little: "client error (Connect)").
pub(super) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// === Deadlines and bodies ===

/// The error of a call that ran out of time.
pub(crate) fn timeout_error(provider: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Timeout,
        format!("{provider}: no complete answer before the deadline"),
    )
}

/// Runs `call`, giving up with [`ErrorKind::Timeout`] at `deadline`.
pub(crate) async fn with_deadline<T>(
    provider: &str,
    deadline: Instant,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    if Instant::now() >= deadline {
        return Err(timeout_error(provider));
    }
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| Err(timeout_error(provider)))
}

/// Reads a whole body, at most `limit` bytes.
async fn read_limited(provider: &str, body: Incoming, limit: usize) -> Result<Bytes, BackendError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BackendError::new(
            ErrorKind::Protocol,
            format!("{provider}: answer larger than {limit} bytes"),
        )),
        Err(e) => Err(BackendError::new(
            ErrorKind::Connection,
            format!("{provider}: answer cut: {}", error_chain(e.as_ref())),
        )),
    }
}

/// The body of a successful answer, or the classified error of a failed one.
pub(crate) async fn success_body(
    provider: &str,
    key: Option<&ProviderKey>,
    response: Response<Incoming>,
) -> Result<Bytes, BackendError> {
    let response = check_status(provider, key, response).await?;
    read_limited(provider, response.into_body(), MAX_BODY_BYTES).await
}

/// `response` itself when its status is a success; otherwise its error,
/// classified, with the provider's message and `Retry-After`.
pub(crate) async fn check_status(
    provider: &str,
    key: Option<&ProviderKey>,
    response: Response<Incoming>,
) -> Result<Response<Incoming>, BackendError> {
    let status = response.status().as_u16();
    let Some(kind) = ErrorKind::from_http_status(status) else {
        return Ok(response);
    };
    let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
    // A body that cannot be read still leaves the status to go by.
    let body = read_limited(provider, response.into_body(), MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    let mut error = error_from_body(provider, key, kind, status, &body);
    error.retry_after = retry_after;
    Err(error)
}

/// The error of an HTTP `status` (of class `kind`) with `body`.
pub(crate) fn error_from_body(
    provider: &str,
    key: Option<&ProviderKey>,
    kind: ErrorKind,
    status: u16,
    body: &[u8],
) -> BackendError {
    let (kind, detail) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error: Some(error) }) => {
            let kind = if error.is_content_policy() {
                ErrorKind::ContentPolicy
            } else {
                kind
            };
            (kind, error.message.unwrap_or_default())
        }
        _ => (kind, String::from_utf8_lossy(body).into_owned()),
    };
    let detail = truncate(detail.trim());
    let message = if detail.is_empty() {
        format!("{provider} answered HTTP {status}")
    } else {
        format!("{provider} answered HTTP {status}: {detail}")
    };
    BackendError::new(kind, scrub(key, message))
}

/// `Retry-After` (seconds or an HTTP date) or OpenAI's `retry-after-ms`.
pub(crate) fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// `{"error": {...}}`, the error shape both OpenAI and Anthropic use (on
/// Anthropic inside `{"type": "error", ...}`).
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: Option<WireError>,
}

/// A provider's error object.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireError {
    pub(crate) message: Option<String>,
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    /// OpenAI only; a string, or on some compatible servers a number.
    pub(crate) code: Option<serde_json::Value>,
}

impl WireError {
    fn code(&self) -> Option<&str> {
        self.code.as_ref().and_then(serde_json::Value::as_str)
    }

    fn is_content_policy(&self) -> bool {
        let policy = |s: &str| matches!(s, "content_policy_violation" | "content_filter");
        self.code().is_some_and(policy) || self.kind.as_deref().is_some_and(policy)
    }

    /// The class of an error that arrived inside a stream (there is no
    /// status to go by), from OpenAI's and Anthropic's type names.
    pub(crate) fn stream_kind(&self) -> ErrorKind {
        if self.is_content_policy() {
            return ErrorKind::ContentPolicy;
        }
        let names = [self.kind.as_deref(), self.code()];
        let has = |wanted: &[&str]| names.iter().flatten().any(|n| wanted.contains(n));
        if has(&["rate_limit_error", "rate_limit_exceeded", "tokens"]) {
            ErrorKind::RateLimited
        } else if has(&[
            "invalid_request_error",
            "not_found_error",
            "request_too_large",
        ]) {
            ErrorKind::InvalidRequest
        } else if has(&[
            "authentication_error",
            "permission_error",
            "invalid_api_key",
        ]) {
            ErrorKind::Auth
        } else if has(&["timeout_error"]) {
            ErrorKind::Timeout
        } else {
            // overloaded_error, api_error, server_error, unknown: the provider failed.
            ErrorKind::Unavailable
        }
    }

    /// This error, met inside a stream, as a [`BackendError`].
    pub(crate) fn into_stream_error(
        self,
        provider: &str,
        key: Option<&ProviderKey>,
    ) -> BackendError {
        let kind = self.stream_kind();
        let detail = truncate(self.message.as_deref().unwrap_or("").trim());
        BackendError::new(
            kind,
            scrub(key, format!("{provider} stream error: {detail}")),
        )
    }
}

/// A body the provider sent that does not parse.
pub(crate) fn protocol_error(provider: &str, what: &str, error: impl fmt::Display) -> BackendError {
    BackendError::new(
        ErrorKind::Protocol,
        format!("{provider}: unparseable {what}: {error}"),
    )
}

/// The finished response; a content-filter stop that left nothing to show
/// is a [`ErrorKind::ContentPolicy`] error, while a partly filtered answer
/// keeps its text and says [`FinishReason::ContentFilter`].
///
/// Tool calls with a plain stop (some OpenAI-compatible servers) say
/// [`FinishReason::ToolCalls`], which is what the caller acts on.
pub(crate) fn conclude(
    provider: &str,
    content: String,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    mut finish: FinishReason,
) -> Result<ChatResponse, BackendError> {
    if finish == FinishReason::Stop && !tool_calls.is_empty() {
        finish = FinishReason::ToolCalls;
    }
    if finish == FinishReason::ContentFilter && content.is_empty() && tool_calls.is_empty() {
        return Err(BackendError::new(
            ErrorKind::ContentPolicy,
            format!("{provider} refused the request (content filter)"),
        ));
    }
    Ok(ChatResponse {
        content,
        tool_calls,
        usage,
        finish,
        device_cost: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "7"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn error_bodies_give_the_provider_message_without_the_key() {
        let key = ProviderKey::new("sk-secret-123");
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-secret-123","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let err = error_from_body("openai", Some(&key), ErrorKind::Auth, 401, openai);
        assert_eq!(err.kind, ErrorKind::Auth);
        assert!(err.message.contains("HTTP 401: Incorrect API key provided"));
        assert!(!err.message.contains("sk-secret-123"), "{}", err.message);

        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let err = error_from_body("anthropic", None, ErrorKind::Unavailable, 529, anthropic);
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert_eq!(err.message, "anthropic answered HTTP 529: Overloaded");

        let policy = br#"{"error":{"message":"no","type":"invalid_request_error","code":"content_policy_violation"}}"#;
        let err = error_from_body("openai", None, ErrorKind::InvalidRequest, 400, policy);
        assert_eq!(err.kind, ErrorKind::ContentPolicy);

        let err = error_from_body(
            "openai",
            None,
            ErrorKind::Unavailable,
            502,
            b"<html>bad gateway",
        );
        assert_eq!(err.message, "openai answered HTTP 502: <html>bad gateway");
        let long = "x".repeat(5000);
        let err = error_from_body("openai", None, ErrorKind::Unavailable, 500, long.as_bytes());
        assert!(err.message.len() < 600);
    }

    #[test]
    fn stream_errors_classify_by_type() {
        let kind = |t: &str| {
            WireError {
                kind: Some(t.into()),
                ..WireError::default()
            }
            .stream_kind()
        };
        assert_eq!(kind("overloaded_error"), ErrorKind::Unavailable);
        assert_eq!(kind("api_error"), ErrorKind::Unavailable);
        assert_eq!(kind("rate_limit_error"), ErrorKind::RateLimited);
        assert_eq!(kind("invalid_request_error"), ErrorKind::InvalidRequest);
        assert_eq!(kind("authentication_error"), ErrorKind::Auth);
        assert_eq!(kind("content_filter"), ErrorKind::ContentPolicy);
    }

    #[test]
    fn endpoints_must_be_absolute_http() {
        assert_eq!(
            endpoint("https://api.openai.com/v1/", "/chat/completions")
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert!(endpoint("http://127.0.0.1:8080", "/v1/messages").is_ok());
        for bad in [
            "api.openai.com/v1",
            "ftp://host/v1",
            "",
            "https://host/v1?x=1",
        ] {
            assert!(
                matches!(endpoint(bad, "/x"), Err(ConfigError::BaseUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn f32_parameters_keep_their_decimal_value() {
        assert_eq!(f32_json(0.9).to_string(), "0.9");
        assert_eq!(f32_json(1.0).to_string(), "1.0");
        assert_eq!(f32_json(0.25).to_string(), "0.25");
    }

    #[test]
    fn keys_never_print() {
        let key = ProviderKey::new("sk-secret-123");
        assert!(!format!("{key:?}").contains("sk-secret"));
        let mut headers = HeaderMap::new();
        insert_header(&mut headers, "x-api-key", key.expose(), true).unwrap();
        assert!(!format!("{headers:?}").contains("sk-secret"));
        assert_eq!(
            insert_header(&mut headers, "x-api-key", "a\nb", true),
            Err(ConfigError::Header {
                name: "x-api-key".into()
            })
        );
    }

    #[test]
    fn finish_reasons_normalise() {
        let err = conclude(
            "p",
            String::new(),
            Vec::new(),
            Usage::default(),
            FinishReason::ContentFilter,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentPolicy);
        let partial = conclude(
            "p",
            "some".into(),
            Vec::new(),
            Usage::default(),
            FinishReason::ContentFilter,
        )
        .unwrap();
        assert_eq!(partial.finish, FinishReason::ContentFilter);
        let call = ToolCall {
            id: "c".into(),
            name: "t".into(),
            arguments_json: "{}".into(),
        };
        let stopped = conclude(
            "p",
            String::new(),
            vec![call],
            Usage::default(),
            FinishReason::Stop,
        )
        .unwrap();
        assert_eq!(stopped.finish, FinishReason::ToolCalls);
    }
}
