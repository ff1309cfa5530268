//! How a node reaches the control plane, for each of its streams (config,
//! telemetry): the `--control-plane` URLs in turn, one channel setup
//! (connect timeout, HTTP/2 keepalive), the node key in `x-api-key`, and
//! full-jitter exponential backoff between attempts.

use std::{error::Error as _, time::Duration};

use aios_runtime::Secret;
use rand::Rng;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::ControlPlaneUrl;

/// Metadata key carrying the node's API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// How long a TCP connect to a control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on an idle connection, so a dead peer is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: first ceiling, doubled per failure up to the cap.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The largest reconnect backoff ceiling.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// What an operator must do when the control plane refuses the node.
pub const CREDENTIAL_HINT: &str =
    "give the node a NODE key of the `system` tenant with --node-key-file or AIOS_NODE_KEY";

/// The node key cannot be sent as gRPC metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node key cannot be sent as gRPC metadata; {CREDENTIAL_HINT}")]
pub struct BadKey;

/// A channel to `url`.
pub async fn connect(url: &ControlPlaneUrl) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.0.clone())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
}

/// Puts the node key (if any) on `request`.
pub fn authorize<T>(request: &mut Request<T>, key: Option<&Secret>) -> Result<(), BadKey> {
    if let Some(key) = key {
        let value = MetadataValue::try_from(key.expose()).map_err(|_| BadKey)?;
        request.metadata_mut().insert(API_KEY_HEADER, value);
    }
    Ok(())
}

/// An error and its causes, `outer: inner: root` (tonic's transport errors
/// alone say only "transport error").
pub fn chain(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their inner error's text; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// === Backoff ===

/// Exponential backoff with full jitter: each delay is uniform in
/// `[0, ceiling]`, the ceiling doubling per failure from [`BACKOFF_BASE`]
/// up to [`BACKOFF_CAP`]. Full jitter spreads a fleet that lost its control
/// plane at once, so they do not all reconnect at once.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The current ceiling.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP)
    }

    /// The delay before the next attempt; raises the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }

    /// After a stream that worked: start from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = backoff.ceiling();
            ceilings.push(ceiling.as_millis());
            assert!(backoff.next_delay() <= ceiling);
        }
        assert_eq!(
            ceilings,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), BACKOFF_BASE);
    }
}
