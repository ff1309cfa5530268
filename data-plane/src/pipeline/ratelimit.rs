//! Stage 2, rate limit: token buckets per API key and per end user,
//! refilled continuously, enforced per node (the key's `RateLimit`).
//!
//! - Requests per minute: each request takes one unit from the key's bucket
//!   and, when the request has an end user, from that user's bucket (shared
//!   by every key acting for the user in the tenant, with the same limits).
//!   Either empty → RESOURCE_EXHAUSTED naming the bucket, with the time until
//!   a unit is back.
//! - Tokens per minute: a request is admitted while the token bucket is
//!   positive; the tokens it used are charged after the call (they are only
//!   known then), so a bucket can go into debt and the next requests wait.
//!
//! Buckets live in a sharded map keyed by a hash of (tenant, subject):
//! foldhash seeded per process, so a caller cannot choose a user name whose
//! bucket is another's. A bucket idle for a minute is full again, so idle
//! buckets are dropped without changing any outcome.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    num::{NonZeroU32, NonZeroU64},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    authn::Caller,
    call::{Call, Outcome},
    error::ExecError,
    stage::{Flow, Stage},
};

const SHARDS: usize = 16;
/// A shard is swept for idle buckets once it holds this many.
const SWEEP_AT: usize = 4096;
/// A bucket idle this long is full again, so it can be dropped.
const IDLE: Duration = Duration::from_secs(60);

/// Per-node token buckets; shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    /// Keyed by [`Subject::id`]; the keys are already hashes.
    shards: Vec<Mutex<HashMap<u64, Buckets, foldhash::fast::FixedState>>>,
    /// Hashes subjects into ids.
    ids: foldhash::quality::RandomState,
}

#[derive(Debug, Clone, Copy)]
struct Buckets {
    requests: f64,
    tokens: f64,
    updated: Instant,
}

/// One bucket a request counts against.
#[derive(Clone, Copy, Debug)]
struct Subject<'a> {
    kind: &'static str,
    tenant: &'a str,
    name: &'a str,
}

impl Subject<'_> {
    fn id(&self, ids: &foldhash::quality::RandomState) -> u64 {
        ids.hash_one((self.kind, self.tenant, self.name))
    }

    fn describe(&self) -> String {
        format!("{}:{}/{}", self.kind, self.tenant, self.name)
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ids: foldhash::quality::RandomState::default(),
        }
    }
}

impl RateLimiter {
    /// Takes one request from the caller's buckets, or says when to retry.
    pub fn admit(&self, caller: &Caller, now: Instant) -> Result<(), ExecError> {
        let limits = caller.rate_limit;
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return Ok(());
        }
        let subjects = subjects(caller);
        // Check every bucket before taking from any.
        for subject in subjects.iter().flatten() {
            self.with(
                subject,
                now,
                limits.requests_per_minute,
                limits.tokens_per_minute,
                |b| {
                    if let Some(rpm) = limits.requests_per_minute
                        && b.requests < 1.0
                    {
                        return Err(ExecError::RateLimited {
                            subject: subject.describe(),
                            description: format!("{rpm} requests per minute"),
                            retry_after: wait_for(1.0 - b.requests, f64::from(rpm.get())),
                        });
                    }
                    if let Some(tpm) = limits.tokens_per_minute
                        && b.tokens <= 0.0
                    {
                        return Err(ExecError::RateLimited {
                            subject: subject.describe(),
                            description: format!("{tpm} tokens per minute"),
                            retry_after: wait_for(1.0 - b.tokens, tpm.get() as f64),
                        });
                    }
                    Ok(())
                },
            )?;
        }
        if limits.requests_per_minute.is_some() {
            for subject in subjects.iter().flatten() {
                let _ = self.with(subject, now, limits.requests_per_minute, None, |b| {
                    b.requests -= 1.0;
                    Ok(())
                });
            }
        }
        Ok(())
    }

    /// Charges the tokens a finished request used.
    pub fn charge_tokens(&self, caller: &Caller, tokens: u64, now: Instant) {
        let limits = caller.rate_limit;
        if limits.tokens_per_minute.is_none() || tokens == 0 {
            return;
        }
        for subject in subjects(caller).iter().flatten() {
            let _ = self.with(subject, now, None, limits.tokens_per_minute, |b| {
                b.tokens -= tokens as f64;
                Ok(())
            });
        }
    }

    /// Refills the subject's buckets to `now` and runs `f` on them.
    fn with(
        &self,
        subject: &Subject<'_>,
        now: Instant,
        rpm: Option<NonZeroU32>,
        tpm: Option<NonZeroU64>,
        f: impl FnOnce(&mut Buckets) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let id = subject.id(&self.ids);
        let shard = &self.shards[(id as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, b| now.saturating_duration_since(b.updated) < IDLE);
        }
        let full = |limit: Option<f64>| limit.unwrap_or(f64::INFINITY);
        let rpm = rpm.map(|r| f64::from(r.get()));
        let tpm = tpm.map(|t| t.get() as f64);
        let buckets = map.entry(id).or_insert(Buckets {
            requests: full(rpm),
            tokens: full(tpm),
            updated: now,
        });
        let elapsed = now.saturating_duration_since(buckets.updated).as_secs_f64();
        if let Some(rpm) = rpm {
            buckets.requests = (buckets.requests + elapsed * rpm / 60.0).min(rpm);
        }
        if let Some(tpm) = tpm {
            buckets.tokens = (buckets.tokens + elapsed * tpm / 60.0).min(tpm);
        }
        buckets.updated = now;
        f(buckets)
    }
}

impl Stage for RateLimiter {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        if let Some(caller) = &call.caller {
            self.admit(caller, Instant::now())?;
        }
        Ok(Flow::Continue)
    }

    fn after(&self, call: &mut Call, outcome: &mut Outcome) {
        if let Some(caller) = &call.caller {
            let used = outcome.usage.input_tokens + outcome.usage.output_tokens;
            self.charge_tokens(caller, used, Instant::now());
        }
    }
}

/// The key's bucket and, with an end user, the user's.
fn subjects(caller: &Caller) -> [Option<Subject<'_>>; 2] {
    [
        Some(Subject {
            kind: "api_key",
            tenant: &caller.tenant,
            name: &caller.key_name,
        }),
        caller.user.as_deref().map(|user| Subject {
            kind: "user",
            tenant: &caller.tenant,
            name: user,
        }),
    ]
}

/// How long until `missing` units refill at `per_minute`.
fn wait_for(missing: f64, per_minute: f64) -> Duration {
    Duration::from_secs_f64((missing.max(0.0) * 60.0 / per_minute).max(0.001))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aios_model::{RateLimit, Role};

    use super::*;

    fn caller(rpm: u32, tpm: u64, user: Option<&str>) -> Caller {
        Caller {
            tenant: "acme".into(),
            key_name: "ci".into(),
            role: Role::Caller,
            rate_limit: RateLimit {
                requests_per_minute: NonZeroU32::new(rpm),
                tokens_per_minute: NonZeroU64::new(tpm),
            },
            allowed_agents: vec![],
            user: user.map(String::from),
        }
    }

    #[test]
    fn requests_per_minute_refill_continuously() {
        let limiter = RateLimiter::default();
        let c = caller(2, 0, None);
        let t0 = Instant::now();
        limiter.admit(&c, t0).unwrap();
        limiter.admit(&c, t0).unwrap();
        let ExecError::RateLimited {
            subject,
            retry_after,
            ..
        } = limiter.admit(&c, t0).unwrap_err()
        else {
            panic!("not a rate limit");
        };
        assert_eq!(subject, "api_key:acme/ci");
        assert_eq!(retry_after, Duration::from_secs(30), "one request per 30 s");
        assert!(limiter.admit(&c, t0 + Duration::from_secs(29)).is_err());
        limiter.admit(&c, t0 + Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn a_user_bucket_is_shared_by_every_key_of_the_user() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let mut a = caller(1, 0, Some("u-1"));
        limiter.admit(&a, t0).unwrap();
        a.key_name = "other-key".into();
        let err = limiter.admit(&a, t0).unwrap_err();
        assert!(
            matches!(err, ExecError::RateLimited { subject, .. } if subject == "user:acme/u-1")
        );
        // A refused request takes nothing: the other key's bucket is intact.
        a.user = None;
        limiter.admit(&a, t0).unwrap();
    }

    #[test]
    fn tokens_are_charged_after_the_call_and_debt_blocks_until_repaid() {
        let limiter = RateLimiter::default();
        let c = caller(0, 600, None);
        let t0 = Instant::now();
        limiter.admit(&c, t0).unwrap();
        limiter.charge_tokens(&c, 1200, t0);
        let err = limiter.admit(&c, t0).unwrap_err();
        assert!(
            matches!(err, ExecError::RateLimited { ref description, .. } if description.contains("tokens"))
        );
        // 600 tokens of debt refill at 10/s: a minute and a bit.
        assert!(limiter.admit(&c, t0 + Duration::from_secs(60)).is_err());
        limiter.admit(&c, t0 + Duration::from_secs(61)).unwrap();
    }

    #[test]
    fn unlimited_keys_are_never_limited() {
        let limiter = RateLimiter::default();
        let c = caller(0, 0, Some("u"));
        for _ in 0..10_000 {
            limiter.admit(&c, Instant::now()).unwrap();
        }
    }
}
