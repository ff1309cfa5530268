//! Server-sent events: an incremental parser that takes the body however the
//! network cut it, and the driver that turns a provider's event stream into a
//! [`ChatStream`] bounded by the call's deadline.

use std::collections::VecDeque;

use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{error_chain, timeout_error};
use crate::backend::{BackendError, ChatEvent, ChatStream, ErrorKind};

/// Longest SSE line; a provider sending more without a newline is broken.
const MAX_SSE_LINE_BYTES: usize = 8 << 20;

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty when absent.
    pub(crate) event: String,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// An incremental SSE parser: bytes in, whatever whole events they
/// complete out, however the stream was cut into chunks (lines and UTF-8
/// characters split across chunks, `\r\n` split between two).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds `chunk`, appending completed events to `out`.
    pub(crate) fn push(
        &mut self,
        mut chunk: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), BackendError> {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(rest) = chunk.strip_prefix(b"\n") {
                    chunk = rest;
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(at) => {
                    self.append(&chunk[..at])?;
                    self.after_cr = chunk[at] == b'\r';
                    self.end_line(out)?;
                    chunk = &chunk[at + 1..];
                }
                None => {
                    self.append(chunk)?;
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// The stream ended: a last event missing its blank line still counts.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), BackendError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        if self.line.len() + bytes.len() > MAX_SSE_LINE_BYTES {
            return Err(BackendError::new(
                ErrorKind::Protocol,
                format!("event stream line longer than {MAX_SSE_LINE_BYTES} bytes"),
            ));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), BackendError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let line = String::from_utf8(line)
            .map_err(|_| BackendError::new(ErrorKind::Protocol, "event stream is not UTF-8"))?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // Comments (keep-alives), `id`, `retry` and unknown fields.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

/// Whether a decoded stream goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// More events to come.
    Continue,
    /// The provider said the answer is complete (the decoder has pushed
    /// [`ChatEvent::Done`]).
    Complete,
}

/// Turns one provider's SSE events into [`ChatEvent`]s.
pub(crate) trait SseDecoder: Send + 'static {
    /// Handles one event, pushing what it yields to `out`.
    fn on_event(&mut self, event: SseEvent, out: &mut Vec<ChatEvent>)
    -> Result<Flow, BackendError>;
}

/// The answer's body as a [`ChatStream`], decoded by `decoder`, ending with
/// [`ErrorKind::Timeout`] at `deadline` and with [`ErrorKind::Connection`]
/// when the body ends or breaks before the decoder saw the answer complete.
pub(crate) fn sse_stream<D: SseDecoder>(
    provider: &'static str,
    body: Incoming,
    deadline: Instant,
    decoder: D,
) -> ChatStream {
    let state = StreamState {
        provider,
        body,
        parser: SseParser::default(),
        decoder,
        pending: VecDeque::new(),
        ended: false,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((item, state));
            }
            if state.ended {
                return None;
            }
            state.read().await;
        }
    })
    .boxed()
}

struct StreamState<D> {
    provider: &'static str,
    body: Incoming,
    parser: SseParser,
    decoder: D,
    pending: VecDeque<Result<ChatEvent, BackendError>>,
    /// Nothing more to read: complete, failed or out of time.
    ended: bool,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<D: SseDecoder> StreamState<D> {
    /// Reads one frame and queues what it yields.
    async fn read(&mut self) {
        let frame = tokio::select! {
            // The deadline first: a provider streaming fast must not outrun it.
            biased;
            () = &mut self.sleep => return self.fail(timeout_error(self.provider)),
            frame = self.body.frame() => frame,
        };
        let mut events = Vec::new();
        let parsed = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.parser.push(&data, &mut events),
                Err(_trailers) => Ok(()),
            },
            Some(Err(e)) => {
                return self.fail(BackendError::new(
                    ErrorKind::Connection,
                    format!("{}: stream cut: {}", self.provider, error_chain(&e)),
                ));
            }
            None => {
                let parsed = self.parser.finish(&mut events);
                self.decode(parsed, events);
                if !self.ended {
                    self.fail(BackendError::new(
                        ErrorKind::Connection,
                        format!(
                            "{}: stream ended before the answer was complete",
                            self.provider
                        ),
                    ));
                }
                return;
            }
        };
        self.decode(parsed, events);
    }

    fn decode(&mut self, parsed: Result<(), BackendError>, events: Vec<SseEvent>) {
        let mut out = Vec::new();
        for event in events {
            match self.decoder.on_event(event, &mut out) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Complete) => {
                    self.ended = true;
                    break;
                }
                Err(e) => {
                    self.pending.extend(out.drain(..).map(Ok));
                    return self.fail(e);
                }
            }
        }
        self.pending.extend(out.into_iter().map(Ok));
        if let Err(e) = parsed
            && !self.ended
        {
            self.fail(e);
        }
    }

    fn fail(&mut self, error: BackendError) {
        self.pending.push_back(Err(error));
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use super::*;

    fn parse_in_pieces(input: &[u8], pieces: &[&[u8]]) -> Vec<SseEvent> {
        assert_eq!(pieces.concat(), input);
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for piece in pieces {
            parser.push(piece, &mut out).unwrap();
        }
        parser.finish(&mut out).unwrap();
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &str = ": keep-alive\r\n\
        event: message_start\r\n\
        data: {\"a\":1}\r\n\
        \r\n\
        data: first\n\
        data:second\n\
        id: 7\n\
        \n\
        data: h\u{e9}llo \u{1f600}\r\r\
        event: orphan\n\
        \n\
        data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev("message_start", "{\"a\":1}"),
            ev("", "first\nsecond"),
            ev("", "h\u{e9}llo \u{1f600}"),
            ev("", "[DONE]"),
        ]
    }

    #[test]
    fn sse_parses_whole_stream() {
        let input = STREAM.as_bytes();
        assert_eq!(parse_in_pieces(input, &[input]), expected());
    }

    #[test]
    fn sse_events_split_at_any_byte_parse_the_same() {
        let input = STREAM.as_bytes();
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(parse_in_pieces(input, &[a, b]), expected(), "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_in_pieces(input, &bytes), expected());
    }

    #[test]
    fn sse_last_event_without_blank_line_counts_at_the_end() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        parser.push(b"data: [DONE]", &mut out).unwrap();
        assert!(out.is_empty());
        parser.finish(&mut out).unwrap();
        assert_eq!(out, vec![ev("", "[DONE]")]);
    }

    #[test]
    fn sse_refuses_invalid_utf8_and_endless_lines() {
        let mut out = Vec::new();
        let err = SseParser::default()
            .push(b"data: \xff\xfe\n\n", &mut out)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol);

        let mut parser = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        let err = (0..=MAX_SSE_LINE_BYTES / chunk.len())
            .find_map(|_| parser.push(&chunk, &mut out).err())
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Protocol);
    }
}
