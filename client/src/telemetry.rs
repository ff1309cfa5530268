//! [`TelemetryClient`]: the reading side of the control plane's
//! `TelemetryService` (`GetTrace`, `GetSummary`, `Subscribe`), which is
//! what `aiosctl traces get` and `aiosctl top` show. The node side
//! (`Report`) belongs to the data plane's reporter.

use std::time::Duration;

use aios_proto::v1::{
    GetSummaryRequest, GetSummaryResponse, GetTraceRequest, Span, SubscribeRequest,
    SubscribeResponse, Trace, telemetry_service_client::TelemetryServiceClient,
};
use tonic::Streaming;

use crate::{AuthChannel, ClientError, connect};

/// Typed client of the dashboard RPCs of `aios.v1.TelemetryService`.
/// Cheap to clone: clones share the channel.
#[derive(Clone, Debug)]
pub struct TelemetryClient {
    inner: TelemetryServiceClient<AuthChannel>,
}

impl TelemetryClient {
    /// Wraps a channel from [`connect`].
    pub fn new(channel: AuthChannel) -> Self {
        Self {
            inner: TelemetryServiceClient::new(channel),
        }
    }

    /// Connects to the control plane at `endpoint`, sending `api_key` on
    /// every call.
    pub async fn connect(
        endpoint: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::new(connect(endpoint, api_key, timeout).await?))
    }

    /// `GetTrace`: the spans of one recent trace (see [`parse_trace_id`]
    /// for the id); `NOT_FOUND` once it has aged out.
    pub async fn get_trace(&mut self, trace_id: &str) -> Result<Trace, ClientError> {
        let request = GetTraceRequest {
            trace_id: trace_id.to_string(),
        };
        Ok(self.inner.get_trace(request).await?.into_inner())
    }

    /// `GetSummary`: aggregates of a filter over a time range.
    pub async fn get_summary(
        &mut self,
        request: GetSummaryRequest,
    ) -> Result<GetSummaryResponse, ClientError> {
        Ok(self.inner.get_summary(request).await?.into_inner())
    }

    /// `Subscribe`: a rollup as each window closes (and spans and alerts,
    /// when asked), until the stream breaks. The per-call timeout bounds
    /// only the wait for the stream to open.
    pub async fn subscribe(
        &mut self,
        request: SubscribeRequest,
    ) -> Result<Streaming<SubscribeResponse>, ClientError> {
        Ok(self.inner.subscribe(request).await?.into_inner())
    }
}

/// Why a trace id was refused before calling.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid trace id '{0}': expected 32 hex characters (a W3C trace id, not all zeros)")]
pub struct InvalidTraceId(pub String);

/// A trace id as `GetTrace` takes it, 32 lowercase hex characters, from
/// what a user pastes: the id in either case, or a whole `traceparent`
/// (`00-<trace id>-<span id>-<flags>`). The all-zero id is invalid in W3C
/// trace context and is refused too.
pub fn parse_trace_id(text: &str) -> Result<String, InvalidTraceId> {
    let text = text.trim();
    let id = match text.split('-').collect::<Vec<_>>()[..] {
        [_version, id, _span, _flags] => id,
        _ => text,
    };
    let valid = id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0');
    match valid {
        true => Ok(id.to_ascii_lowercase()),
        false => Err(InvalidTraceId(text.to_string())),
    }
}

/// Whether a span is a *request span* (a whole execution: an agent
/// invocation or an embeddings call), which the rollups count as a
/// request; its children (model and tool calls) are not requests. Mirrors
/// the control plane's `telemetry::rollup::is_request`.
pub fn is_request(span: &Span) -> bool {
    matches!(span.operation.as_str(), "invoke_agent" | "embeddings")
}

// Traces and summaries render as JSON/YAML in the proto3 JSON mapping,
// like resources (`aiosctl traces get ID -o json`, `aiosctl top -o json`).
#[cfg(feature = "manifest")]
impl crate::manifest::Described for Trace {
    const FULL_NAME: &'static str = "aios.v1.Trace";
}

#[cfg(feature = "manifest")]
impl crate::manifest::Described for aios_proto::v1::Summary {
    const FULL_NAME: &'static str = "aios.v1.Summary";
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0af7651916cd43dd8448eb211c80319c";

    #[test]
    fn trace_ids_are_taken_as_pasted_and_sent_lowercase() {
        assert_eq!(parse_trace_id(ID).unwrap(), ID);
        assert_eq!(parse_trace_id(&ID.to_ascii_uppercase()).unwrap(), ID);
        assert_eq!(parse_trace_id(&format!(" {ID}\n")).unwrap(), ID);
        let traceparent = format!("00-{ID}-b7ad6b7169203331-01");
        assert_eq!(parse_trace_id(&traceparent).unwrap(), ID);
    }

    #[test]
    fn malformed_trace_ids_are_refused_with_what_was_given() {
        for bad in [
            "",
            &ID[1..],
            &format!("{ID}0"),
            "0af7651916cd43dd8448eb211c80319g",
            "00000000000000000000000000000000",
            "00-short-b7ad6b7169203331-01",
        ] {
            let error = parse_trace_id(bad).unwrap_err();
            assert_eq!(error, InvalidTraceId(bad.trim().to_string()));
        }
        assert_eq!(
            parse_trace_id("abc").unwrap_err().to_string(),
            "invalid trace id 'abc': expected 32 hex characters (a W3C trace id, not all zeros)"
        );
    }

    #[cfg(feature = "manifest")]
    #[test]
    fn traces_render_in_the_proto3_json_mapping() {
        let trace = Trace {
            trace_id: ID.into(),
            spans: vec![Span {
                span_id: vec![1; 8],
                name: "chat a".into(),
                start_time_unix_nano: 5,
                cost_usd: 0.25,
                ..Default::default()
            }],
        };
        let json = crate::manifest::to_json(&trace).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["traceId"], ID);
        // bytes are base64, 64-bit integers strings, as the mapping says.
        assert_eq!(value["spans"][0]["spanId"], "AQEBAQEBAQE=");
        assert_eq!(value["spans"][0]["startTimeUnixNano"], "5");
        assert_eq!(value["spans"][0]["costUsd"], 0.25);
    }
}
