//! One unary call to etcd: its deadline, its retries, and what its errors mean.

use std::{
    collections::hash_map::RandomState,
    error::Error as _,
    future::Future,
    hash::BuildHasher,
    time::{Duration, Instant},
};

use etcd_client::Error as EtcdError;
use tonic::Code;

use crate::store::{LeaseId, MAX_TXN_OPS, Revision, StoreError};

/// Most attempts of one call; the call deadline usually ends it first.
const MAX_ATTEMPTS: u32 = 16;
/// First retry delay; doubles per attempt up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(10);
/// Longest retry delay, so a member that comes back is used quickly.
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// etcd's error strings (`rpctypes` in etcd's api), stable across 3.x.
pub(super) const LEASE_NOT_FOUND: &str = "requested lease not found";
pub(super) const COMPACTED: &str = "required revision has been compacted";
const TOO_MANY_OPS: &str = "too many operations in txn request";

// === Calls: deadline, retries, errors ===

/// Which failures a call may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// A second run is harmless: retry any transient failure.
    Idempotent,
    /// A second run could apply twice: retry only failures that prove the
    /// request never left this process.
    IfNotSent,
}

/// One store call, for retries and error mapping.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    pub(super) what: &'static str,
    pub(super) retry: Retry,
    /// The lease a "lease not found" answer refers to.
    pub(super) lease: Option<LeaseId>,
    /// The revision a "compacted" answer refers to.
    pub(super) revision: Revision,
}

impl Call {
    pub(super) fn read(what: &'static str) -> Self {
        let (retry, lease, revision) = (Retry::Idempotent, None, 0);
        Self {
            what,
            retry,
            lease,
            revision,
        }
    }

    pub(super) fn write(what: &'static str) -> Self {
        Self {
            retry: Retry::IfNotSent,
            ..Self::read(what)
        }
    }

    pub(super) fn lease(self, lease: LeaseId) -> Self {
        Self {
            lease: Some(lease),
            ..self
        }
    }
}

pub(super) async fn retry_until<T, F, Fut>(
    deadline: Instant,
    call: Call,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, EtcdError>>,
{
    let started = Instant::now();
    let mut n = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(left, attempt(n)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => {
                let waited = started.elapsed();
                let message = format!("etcd {}: no answer within {waited:?}", call.what);
                return Err(StoreError::Unavailable(message));
            }
        };
        n += 1;
        let retryable = match call.retry {
            Retry::Idempotent => matches!(map_error(&error, call), StoreError::Unavailable(_)),
            Retry::IfNotSent => never_sent(&error),
        };
        let pause = backoff(n);
        if !retryable || n >= MAX_ATTEMPTS || Instant::now() + pause >= deadline {
            return Err(map_error(&error, call));
        }
        tracing::debug!(call = call.what, attempt = n, %error, "retrying etcd call");
        tokio::time::sleep(pause).await;
    }
}

/// Exponential backoff with jitter: uniform over the upper half of
/// `BACKOFF_BASE * 2^(n-1)` (capped), so concurrent callers spread out.
pub(super) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1_u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    // Each RandomState is freshly seeded: jitter without a `rand` dependency.
    let jitter = RandomState::new().hash_one(attempt) % (nanos / 2 + 1);
    Duration::from_nanos(nanos / 2 + jitter)
}

/// Whether the failure proves the request was never sent: tonic could not
/// connect to the member it picked. Anything later (reset, GOAWAY, our
/// deadline, etcd's own UNAVAILABLE "request timed out") may follow a
/// write that etcd applied.
pub(super) fn never_sent(error: &EtcdError) -> bool {
    let mut source = match error {
        EtcdError::GRpcStatus(status) => status.source(),
        EtcdError::TransportError(error) => error.source(),
        _ => None,
    };
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a retry failed only because an earlier attempt, whose answer
/// was lost, already did the work (revoked the lease, compacted).
pub(super) fn done_before(attempt: u32, error: &EtcdError, already: &str) -> bool {
    let text = match error {
        EtcdError::GRpcStatus(status) => status.message(),
        _ => "",
    };
    attempt > 0 && text.contains(already)
}

/// The innermost error under `error`.
fn root_cause(mut error: &(dyn std::error::Error + 'static)) -> String {
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// Maps an etcd-client error; `call` names the lease or revision it is about.
pub(super) fn map_error(error: &EtcdError, call: Call) -> StoreError {
    let message = format!("etcd {}: {error}", call.what);
    let lease_not_found = || match call.lease {
        Some(lease) => StoreError::LeaseNotFound(lease),
        None => StoreError::Internal(message.clone()),
    };
    match error {
        EtcdError::GRpcStatus(status) => {
            let text = status.message();
            let mut message = format!("etcd {}: {:?}: {text}", call.what, status.code());
            // tonic's text for a local transport failure can be generic
            // ("transport error"); the cause, e.g. a refused certificate, is below.
            let cause = status.source().map(root_cause);
            if let Some(cause) = cause.filter(|cause| !message.contains(cause.as_str())) {
                message = format!("{message} ({cause})");
            }
            if text.contains(LEASE_NOT_FOUND) {
                lease_not_found()
            } else if text.contains(COMPACTED) {
                // etcd does not say where history now starts; `compact` probes.
                let revision = call.revision;
                StoreError::Compacted {
                    requested: revision,
                    compact_revision: revision,
                }
            } else if text.contains(TOO_MANY_OPS) {
                // `txn` fills in the count (etcd also limits compares).
                StoreError::TooManyOps {
                    ops: 0,
                    limit: MAX_TXN_OPS,
                }
            } else if matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ) || status.source().is_some()
            {
                // A status with a source was made by tonic from a local
                // transport failure (reset, h2 error), not sent by etcd.
                StoreError::Unavailable(message)
            } else {
                // Includes "required revision is a future revision": a
                // caller bug, not worth a retry.
                StoreError::Internal(message)
            }
        }
        // The crate's keep_alive() reports TTL 0 ("no such lease") this way.
        EtcdError::LeaseKeepAliveError(text) if text == "lease not found" => lease_not_found(),
        // Streams that ended or could not start, and socket failures.
        EtcdError::TransportError(_)
        | EtcdError::IoError(_)
        | EtcdError::WatchError(_)
        | EtcdError::LeaseKeepAliveError(_) => StoreError::Unavailable(message),
        EtcdError::InvalidArgs(_)
        | EtcdError::InvalidUri(_)
        | EtcdError::Utf8Error(_)
        | EtcdError::ElectError(_)
        | EtcdError::InvalidMetadataValue(_)
        | EtcdError::EndpointError(_)
        | EtcdError::EndpointsNotManaged
        | EtcdError::Internal(_) => StoreError::Internal(message),
    }
}
