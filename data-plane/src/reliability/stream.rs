//! A streaming attempt: it succeeds when its first token arrives, and the
//! stream it returns then carries the rest, with no retries (see
//! [`super::Reliability::chat_stream`] for why).

use futures::StreamExt;
use tokio::time::{Instant, timeout_at};

use super::{
    fallback::{Attempt, Guard},
    retry::attempt_timed_out,
};
use crate::backend::{Backend, BackendError, ChatEvent, ChatRequest, ChatStream, ErrorKind};

/// A streaming call.
pub(super) struct Streaming;

impl Attempt for Streaming {
    type Output = ChatStream;

    async fn attempt(
        &self,
        backend: &dyn Backend,
        request: &ChatRequest,
        guard: Guard,
    ) -> Result<ChatStream, BackendError> {
        match first_event(backend, request).await {
            Ok((first, rest)) => Ok(tail(first, rest, request.deadline, guard)),
            Err(error) => {
                guard.failed(&error);
                Err(error)
            }
        }
    }
}

/// Opens the stream and waits for its first non-empty event, all before
/// `request.deadline`. Any failure until then is the attempt's failure.
async fn first_event(
    backend: &dyn Backend,
    request: &ChatRequest,
) -> Result<(ChatEvent, ChatStream), BackendError> {
    let deadline = request.deadline;
    let mut stream = timeout_at(deadline, backend.chat_stream(request))
        .await
        .unwrap_or_else(|_| Err(attempt_timed_out()))?;
    loop {
        match timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(attempt_timed_out()),
            Ok(None) => {
                return Err(BackendError::new(
                    ErrorKind::Connection,
                    "the stream ended before its first token",
                ));
            }
            Ok(Some(Err(error))) => return Err(error),
            Ok(Some(Ok(ChatEvent::Delta(text)))) if text.is_empty() => {}
            Ok(Some(Ok(event))) => return Ok((event, stream)),
        }
    }
}

/// The committed stream: `first`, then the rest of `rest` until its final
/// response, an error, or `deadline`. The guard reports when it ends.
fn tail(first: ChatEvent, rest: ChatStream, deadline: Instant, guard: Guard) -> ChatStream {
    struct Tail {
        first: Option<ChatEvent>,
        rest: ChatStream,
        deadline: Instant,
        /// `None` once the stream has ended.
        guard: Option<Guard>,
    }

    let state = Tail {
        first: Some(first),
        rest,
        deadline,
        guard: Some(guard),
    };
    Box::pin(futures::stream::unfold(state, |mut tail| async move {
        let guard = tail.guard.take()?;
        let next = match tail.first.take() {
            Some(event) => Ok(Some(Ok(event))),
            None => timeout_at(tail.deadline, tail.rest.next()).await,
        };
        let item = match next {
            Ok(Some(Ok(ChatEvent::Done(response)))) => {
                guard.succeeded();
                Ok(ChatEvent::Done(response))
            }
            Ok(Some(Ok(delta))) => {
                tail.guard = Some(guard);
                Ok(delta)
            }
            Ok(Some(Err(error))) => {
                guard.failed(&error);
                Err(error)
            }
            Ok(None) => {
                let error = BackendError::new(
                    ErrorKind::Connection,
                    "the stream ended before the response finished",
                );
                guard.failed(&error);
                Err(error)
            }
            Err(_) => {
                let error = attempt_timed_out();
                guard.failed(&error);
                Err(error)
            }
        };
        Some((item, tail))
    }))
}
