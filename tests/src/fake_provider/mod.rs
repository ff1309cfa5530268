//! A fake model provider speaking the OpenAI chat-completions and Anthropic
//! Messages HTTP protocols, streamed or not, with fault injection: the real
//! wire shapes, so the real backends run against it unchanged.
//!
//! It answers deterministically ([`Reply`]), counts tokens roughly (words)
//! and reports usage, checks what the real APIs check (a model, Anthropic's
//! `max_tokens` and version header, the key when one is expected), records
//! every request, and fails on demand: a scripted queue of [`Fault`]s, one
//! per request, then a seeded random failure rate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use aios_tests::fake_provider::{FakeProvider, Fault};
//! let fake = FakeProvider::start().await?;
//! fake.script(vec![Fault::RateLimited { retry_after_secs: 3 }, Fault::Status(503)]);
//! let openai_base = format!("{}/v1", fake.url()); // Anthropic's base is fake.url()
//! # Ok(()) }
//! ```

mod answer;

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::Result;
use axum::{
    Extension, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use self::answer::{Answer, Step, body_response, sse_response};

// === Public API ===

/// One injected failure, for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: retry_after_secs`.
    RateLimited {
        /// The header's value.
        retry_after_secs: u64,
    },
    /// This HTTP status with the protocol's JSON error body (400, 401, 500,
    /// 503, 529, …). A 401 echoes the key it got, as a careless provider might.
    Status(u16),
    /// Waits this long, then answers normally (past a client's deadline:
    /// a timeout).
    Delay(Duration),
    /// Sends the headers, then stalls this long before the body (streamed:
    /// after the first text delta), then finishes.
    Stall(Duration),
    /// Resets the connection without answering.
    Disconnect,
    /// Starts the answer (streamed: a first text delta), then resets the
    /// connection mid-body.
    CutStream,
    /// Answers 200 with a body (or an SSE event) that is not valid JSON.
    MalformedJson,
    /// Refuses the content: OpenAI 400 `content_policy_violation`;
    /// Anthropic 200 with `stop_reason: "refusal"` and no content.
    ContentPolicy,
}

/// What the fake answers when no fault applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `echo: ` and the last user message.
    Echo,
    /// This text.
    Text(String),
    /// A call of this tool; once the conversation ends with the tool's
    /// result, the answer is `tool said: ` and the result.
    ToolCall {
        /// Tool name.
        name: String,
        /// Arguments, a JSON object as text.
        arguments_json: String,
    },
}

/// Which protocol a request spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Which endpoint.
    pub protocol: Protocol,
    /// Headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// The client's address: calls over one pooled connection share it.
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it asked for a streamed answer.
    pub fn is_stream(&self) -> bool {
        self.body["stream"] == json!(true)
    }
}

/// A running fake provider on `127.0.0.1:<free port>`; stopped when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeProvider {
    /// Starts one.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, app));
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: Anthropic's base URL; OpenAI's is this
    /// plus `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues faults for the next requests, one each, in order (before any
    /// random ones).
    pub fn script(&self, faults: Vec<Fault>) {
        self.shared.lock().script.extend(faults);
    }

    /// Fails a `rate` share of requests (after the script) with a transient
    /// fault (500, 503 or a reset connection), drawn from an RNG seeded
    /// with `seed`, so a run repeats exactly.
    pub fn set_failure_rate(&self, rate: f64, seed: u64) {
        self.set_random_faults(
            rate,
            seed,
            vec![Fault::Status(500), Fault::Status(503), Fault::Disconnect],
        );
    }

    /// Like [`FakeProvider::set_failure_rate`], drawing from `faults`.
    pub fn set_random_faults(&self, rate: f64, seed: u64, faults: Vec<Fault>) {
        self.shared.lock().random = Some(RandomFaults {
            rate,
            rng: StdRng::seed_from_u64(seed),
            faults,
        });
    }

    /// Sets the answer of later requests.
    pub fn reply(&self, reply: Reply) {
        self.shared.lock().reply = reply;
    }

    /// Refuses (401) requests that do not carry `key` (OpenAI:
    /// `Authorization: Bearer`; Anthropic: `x-api-key`).
    pub fn expect_api_key(&self, key: &str) {
        self.shared.lock().api_key = Some(key.to_string());
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: they go with it.
        self.server.abort();
    }
}

// === State ===

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    ids: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    script: VecDeque<Fault>,
    random: Option<RandomFaults>,
    reply: Reply,
    api_key: Option<String>,
    requests: Vec<RecordedRequest>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            script: VecDeque::new(),
            random: None,
            reply: Reply::Echo,
            api_key: None,
            requests: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct RandomFaults {
    rate: f64,
    rng: StdRng,
    faults: Vec<Fault>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding it has failed already.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the request; returns the fault to inject, the reply, the
    /// expected key.
    fn admit(&self, request: RecordedRequest) -> (Option<Fault>, Reply, Option<String>) {
        let mut inner = self.lock();
        inner.requests.push(request);
        let fault = inner.script.pop_front().or_else(|| {
            let random = inner.random.as_mut()?;
            let roll: f64 = random.rng.random();
            if roll >= random.rate || random.faults.is_empty() {
                return None;
            }
            let pick = random.rng.random_range(0..random.faults.len());
            random.faults.get(pick).cloned()
        });
        (fault, inner.reply.clone(), inner.api_key.clone())
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

// === Serving ===

/// The request's connection: its peer, and a token a handler cancels to
/// reset it.
#[derive(Clone, Debug)]
struct Connection {
    peer: SocketAddr,
    kill: CancellationToken,
}

async fn serve(listener: TcpListener, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let kill = CancellationToken::new();
        let service = TowerToHyperService::new(app.clone().layer(Extension(Connection {
            peer,
            kill: kill.clone(),
        })));
        let io = TokioIo::new(ResettingStream {
            stream,
            kill: kill.clone(),
        });
        connections.spawn(async move {
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                _ = connection => {}
                // Dropping the connection drops the socket: an RST (see ResettingStream).
                () = kill.cancelled() => {}
            }
        });
    }
}

/// A TCP stream that, once its connection is killed, closes with an RST
/// (zero linger) instead of a FIN: a reset, as a crashed provider or a
/// middlebox gives.
struct ResettingStream {
    stream: TcpStream,
    kill: CancellationToken,
}

impl Drop for ResettingStream {
    fn drop(&mut self) {
        if self.kill.is_cancelled() {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn openai(
    State(shared): State<Arc<Shared>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Protocol::OpenAi, &shared, connection, headers, body).await
}

async fn anthropic(
    State(shared): State<Arc<Shared>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Protocol::Anthropic, &shared, connection, headers, body).await
}

async fn handle(
    protocol: Protocol,
    shared: &Shared,
    connection: Connection,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let recorded = RecordedRequest {
        protocol,
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        peer: connection.peer,
    };
    let presented = presented_key(protocol, &recorded)
        .unwrap_or_default()
        .to_string();
    let anthropic_version = recorded.header("anthropic-version").is_some();
    let (fault, reply, expected_key) = shared.admit(recorded);

    if let Some(expected) = expected_key
        && presented != expected
    {
        return error(protocol, 401, &presented);
    }
    if let Some(message) = invalid(protocol, &body, anthropic_version) {
        return error_with(protocol, 400, &message, None);
    }
    let answer = Answer::new(protocol, shared.next_id(), &body, &reply);
    let stream = body["stream"] == json!(true);
    let mut stall = None;
    match fault {
        None => {}
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = error(protocol, 429, "");
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::Status(status)) => return error(protocol, status, &presented),
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Stall(delay)) => stall = Some(delay),
        Some(Fault::Disconnect) => {
            connection.kill.cancel();
            return std::future::pending().await;
        }
        Some(Fault::CutStream) => return cut(answer, stream),
        Some(Fault::MalformedJson) => return malformed(stream),
        Some(Fault::ContentPolicy) => match protocol {
            Protocol::OpenAi => {
                return error_with(
                    protocol,
                    400,
                    "Your request was rejected as a result of our safety system.",
                    Some("content_policy_violation"),
                );
            }
            Protocol::Anthropic => return answer.refusal().respond(stream, stall),
        },
    }
    answer.respond(stream, stall)
}

fn presented_key(protocol: Protocol, request: &RecordedRequest) -> Option<&str> {
    match protocol {
        Protocol::OpenAi => request.header("authorization")?.strip_prefix("Bearer "),
        Protocol::Anthropic => request.header("x-api-key"),
    }
}

/// What the real APIs would refuse with a 400.
fn invalid(protocol: Protocol, body: &Value, anthropic_version: bool) -> Option<String> {
    if !body.is_object() {
        return Some("the body is not a JSON object".into());
    }
    if !body["model"].is_string() {
        return Some("model: field required".into());
    }
    let messages = body["messages"].as_array()?;
    if messages.is_empty() {
        return Some("messages: at least one message is required".into());
    }
    if protocol == Protocol::Anthropic {
        if !anthropic_version {
            return Some("anthropic-version: header is required".into());
        }
        if !body["max_tokens"].is_u64() {
            return Some("max_tokens: field required".into());
        }
        if let Some(role) = messages
            .iter()
            .filter_map(|m| m["role"].as_str())
            .find(|r| !matches!(*r, "user" | "assistant"))
        {
            return Some(format!("messages: unexpected role {role:?}"));
        }
    }
    None
}

// === Errors ===

fn error(protocol: Protocol, status: u16, presented_key: &str) -> Response {
    let message = match status {
        400 => "Invalid request.".to_string(),
        401 => format!("Incorrect API key provided: {presented_key}."),
        429 => "Rate limit reached. Please try again later.".to_string(),
        529 => "Overloaded".to_string(),
        _ => "The server had an error while processing your request.".to_string(),
    };
    error_with(protocol, status, &message, None)
}

fn error_with(protocol: Protocol, status: u16, message: &str, code: Option<&str>) -> Response {
    let body = match protocol {
        Protocol::OpenAi => {
            let kind = match status {
                400..=499 if status != 429 => "invalid_request_error",
                429 => "requests",
                _ => "server_error",
            };
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
        }
        Protocol::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn malformed(stream: bool) -> Response {
    if stream {
        sse_response(vec![Step::Data(Bytes::from_static(
            b"data: {\"choices\": [\n\n",
        ))])
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"choices\": [",
        )
            .into_response()
    }
}

fn cut(answer: Answer, stream: bool) -> Response {
    if stream {
        let mut steps: Vec<Step> = answer
            .events()
            .into_iter()
            .take(3)
            .map(Step::Data)
            .collect();
        // A pause first, so hyper flushes what was sent before the reset.
        steps.extend([Step::Sleep(FLUSH_PAUSE), Step::Fail]);
        sse_response(steps)
    } else {
        let whole = answer.json().to_string();
        let half = Bytes::from(whole.into_bytes()).slice(..10);
        body_response(
            "application/json",
            vec![Step::Data(half), Step::Sleep(FLUSH_PAUSE), Step::Fail],
        )
    }
}

/// Long enough for the server to write out what it has before a reset.
const FLUSH_PAUSE: Duration = Duration::from_millis(50);
