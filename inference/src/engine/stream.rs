//! What a caller gets back: a stream of token ids, then one `Done`.

use std::task::{Context, Poll};

use tokio::sync::mpsc::UnboundedReceiver;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model produced one of the request's stop ids.
    Stop,
    /// `max_tokens` generated, or the sequence reached the context length.
    Length,
    /// The request was cancelled before the end.
    Cancelled,
}

/// One event of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationEvent {
    /// The next generated token.
    Token(u32),
    /// The end, with exact token counts for billing.
    Done {
        /// Why it ended.
        reason: FinishReason,
        /// Tokens of the prompt.
        prompt_tokens: u32,
        /// Tokens generated (stop ids excluded).
        completion_tokens: u32,
    },
}

/// The events of one request. Dropping it cancels the request: the engine
/// frees its batch slot and cache at its next step.
#[derive(Debug)]
pub struct GenerationStream {
    events: UnboundedReceiver<GenerationEvent>,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl GenerationStream {
    pub(super) fn new(events: UnboundedReceiver<GenerationEvent>, prompt_tokens: u32) -> Self {
        Self {
            events,
            prompt_tokens,
            completion_tokens: 0,
        }
    }

    /// The next event; `None` once `Done` has been received, or if the engine
    /// stopped first.
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next event (for `Stream` adapters).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<GenerationEvent>> {
        let polled = self.events.poll_recv(cx);
        if let Poll::Ready(Some(GenerationEvent::Token(_))) = polled {
            self.completion_tokens += 1;
        }
        polled
    }

    /// Tokens of the prompt.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Tokens received so far.
    pub fn completion_tokens(&self) -> u32 {
        self.completion_tokens
    }
}
