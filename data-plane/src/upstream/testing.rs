//! A fake control plane for the node's streams to it (config, telemetry):
//! a real tonic server on `127.0.0.1:0` that hands every streaming call to
//! the test as a [`FakeCall`].

#![allow(clippy::unwrap_used)] // test code

use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming, codegen::BoxStream, transport::server::Router};

use super::API_KEY_HEADER;
use crate::ControlPlaneUrl;

/// A node key the fakes see in `x-api-key`.
pub(crate) const KEY: &str = "node-key-0123456789abcdefghijklmnopqrstuv";

/// One streaming call, as the fake control plane received it: what the
/// node sent in `x-api-key`, its messages, and where the test writes the
/// answers.
pub(crate) struct FakeCall<In, Out> {
    pub(crate) api_key: Option<String>,
    pub(crate) from_node: Streaming<In>,
    pub(crate) to_node: mpsc::Sender<Result<Out, Status>>,
}

impl<In, Out: Send + 'static> FakeCall<In, Out> {
    /// Hands `request` to the test through `calls`; the response streams
    /// what the test sends on `to_node` (up to `buffer` waiting).
    pub(crate) fn accept(
        request: Request<Streaming<In>>,
        calls: &mpsc::UnboundedSender<Self>,
        buffer: usize,
    ) -> Response<BoxStream<Out>> {
        let api_key = request
            .metadata()
            .get(API_KEY_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let (to_node, answers) = mpsc::channel(buffer);
        calls
            .send(Self {
                api_key,
                from_node: request.into_inner(),
                to_node,
            })
            .unwrap();
        Response::new(Box::pin(ReceiverStream::new(answers)))
    }
}

/// Serves `router` on a free loopback port, until the test ends; its URL.
pub(crate) async fn serve(router: Router) -> ControlPlaneUrl {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    url.parse().unwrap()
}
