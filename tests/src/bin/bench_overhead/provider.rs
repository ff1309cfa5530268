//! The HTTP ends of part 4: an instant OpenAI-compatible provider, and the
//! client that calls it, or the data plane's HTTP API, with the same
//! request.
//!
//! The provider reads the whole request and answers at once with a fixed
//! `chat.completion` (the bench's reply, with usage), over keep-alive
//! HTTP/1.1 with TCP_NODELAY: what a gateway benchmark's mock upstream
//! does, minus any delay. It does not parse the request, so the direct
//! calls cost as little as a provider can.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

use crate::setup::{AGENT, REPLY, SECRET, prompt, user};

/// The one path both ends serve.
pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";

// === The instant provider ===

/// An instant provider on `127.0.0.1`, served by the runtime it was
/// started on; stops when dropped.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Provider {
    /// A listener for a provider, bound now so that its URL can go into a
    /// node's config before the provider is served (on the node's thread).
    pub(crate) fn bind() -> Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `listener` on the runtime this is called from.
    pub(crate) fn serve(listener: std::net::TcpListener) -> Result<Self> {
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(accept(listener, answer()));
        Ok(Self { addr, server })
    }

    /// Its OpenAI base URL, as a Model's `endpoint`.
    pub(crate) fn base_url(addr: SocketAddr) -> String {
        format!("http://{addr}/v1")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // The accept loop owns the connections: they go with it.
        self.server.abort();
    }
}

/// The fixed answer: a whole `chat.completion` with usage.
fn answer() -> Bytes {
    let prompt_tokens = (prompt(0).len() / 4) as u64;
    let completion_tokens = (REPLY.len() / 4) as u64;
    let body = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_795_000_000u64,
        "model": "bench-instant",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": REPLY },
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    });
    Bytes::from(body.to_string())
}

async fn accept(listener: TcpListener, answer: Bytes) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, say: let some close.
                        eprintln!("instant provider: accept: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let answer = answer.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| respond(request, answer.clone()));
                    // Keep-alive is HTTP/1.1's default; a closed connection ends this.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn respond(
    request: Request<Incoming>,
    answer: Bytes,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() != Method::POST || request.uri().path() != CHAT_PATH {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    // The whole request, as any provider reads it before answering.
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(answer));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

// === The client ===

/// The request body, the same to the provider and to the data plane: the
/// bench's user message (unique per `n`, so the cache misses), one of 64
/// end users, and the agent as `model` (which the provider ignores).
pub(crate) fn chat_body(n: u64) -> Bytes {
    let body = json!({
        "model": AGENT,
        "messages": [{ "role": "user", "content": prompt(n) }],
        "user": user(n),
    });
    Bytes::from(body.to_string())
}

/// One keep-alive HTTP/1.1 connection (TCP_NODELAY), one request at a
/// time, driven by the runtime it was opened on.
#[derive(Debug)]
pub(crate) struct HttpConn {
    send: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    bearer: HeaderValue,
    driver: JoinHandle<()>,
}

impl HttpConn {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            send,
            host: HeaderValue::from_str(&addr.to_string())?,
            bearer: HeaderValue::from_str(&format!("Bearer {SECRET}"))?,
            driver,
        })
    }

    /// POSTs `body` to the chat path: the time from sending to the whole
    /// answer read, and the answer. Anything but 200 is an error.
    pub(crate) async fn post(&mut self, body: Bytes) -> Result<(Duration, Bytes)> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_static(CHAT_PATH);
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, self.bearer.clone());
        self.send
            .ready()
            .await
            .map_err(|e| anyhow!("the connection closed: {e}"))?;
        let started = Instant::now();
        let response = self.send.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        let took = started.elapsed();
        if status != StatusCode::OK {
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            );
        }
        Ok((took, answer))
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
