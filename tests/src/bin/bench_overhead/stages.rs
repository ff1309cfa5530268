//! Part 3 of the bench, where the time goes: the pipeline in process (no
//! gRPC) with stages switched on one by one, and the stage functions alone.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_data_plane::{
    backend::Role,
    fleet::NodeConfig,
    guardrails,
    pipeline::{
        self, Caller, Catalog, CatalogHandle, Pipeline, RateLimiter, Settings, Stages,
        cache::KeyBuilder, policy::Ask,
    },
    router,
};
use aios_proto::v1 as pb;
use anyhow::{Context, Result, bail};
use prost::Message;
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;

use crate::{
    Options,
    measure::{mean, percentile},
    setup::{
        AGENT, InstantModels, NO_STAGES, POLICY, REPLY, SECRET, SYSTEM_PROMPT, TABLE, TENANT,
        execute_in_process, grpc_request, prompt, settings, user,
    },
};

/// The pipeline in process, stages switched on in stack order: each row
/// adds one stage to the one before.
pub(crate) async fn ladder(
    options: &Options,
    config: &NodeConfig,
    counter: &AtomicU64,
) -> Result<Vec<Value>> {
    let catalog = CatalogHandle::fixed(Catalog::build(Arc::new(config.clone())));
    let mut stages = NO_STAGES;
    let mut rungs: Vec<(&str, Settings)> = vec![("none", settings(stages))];
    for (name, set) in [
        (
            "+ authenticate",
            (|s: &mut Stages| s.authenticate = true) as fn(&mut Stages),
        ),
        ("+ rate limit", |s| s.rate_limit = true),
        ("+ guardrails (in + out)", |s| s.guardrails = true),
        ("+ policy", |s| s.policy = true),
        ("+ budget", |s| s.budget = true),
        ("+ route", |s| s.route = true),
        ("+ cache", |s| s.cache = true),
        ("+ span (= all)", |s| s.span = true),
    ] {
        set(&mut stages);
        rungs.push((name, settings(stages)));
    }
    // The rows above fill a cache that grows all run long (64 MiB holds
    // every answer); a full one evicts instead of growing.
    rungs.push((
        "all, cache full (1 MiB)",
        Settings {
            cache_max_bytes: 1 << 20,
            ..settings(Stages::ALL)
        },
    ));
    let pipelines: Vec<Pipeline> = rungs
        .iter()
        .map(|(_, settings)| {
            Pipeline::new(
                catalog.clone(),
                Arc::new(InstantModels::INSTANT),
                settings.clone(),
            )
        })
        .collect();
    let key = AsciiMetadataValue::from_static(SECRET);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); rungs.len()];
    let batch = 250;
    let rounds = options.micro.div_ceil(batch) + 2; // the first two are warm-up
    for round in 0..rounds {
        for (i, pipeline) in pipelines.iter().enumerate() {
            for _ in 0..batch {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (took, _) = execute_in_process(pipeline, &key, n).await?;
                if round >= 2 {
                    samples[i].push(took);
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut previous = 0.0;
    for ((name, _), mut rung) in rungs.iter().zip(samples) {
        rung.sort();
        let p50 = percentile(&rung, 0.50);
        rows.push(json!({
            "stages": name,
            "p50_us": p50,
            "p99_us": percentile(&rung, 0.99),
            "mean_us": mean(&rung),
            "step_p50_us": if rows.is_empty() { 0.0 } else { p50 - previous },
        }));
        previous = p50;
    }
    Ok(rows)
}

/// `f` timed call by call, after a warm-up: p50, p99 and mean in ns.
fn time_ns(iterations: usize, mut f: impl FnMut(u64)) -> Value {
    for i in 0..(iterations / 10).max(10) {
        f(i as u64);
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|i| {
            let started = Instant::now();
            f(i as u64);
            started.elapsed()
        })
        .collect();
    samples.sort();
    json!({
        "p50_ns": percentile(&samples, 0.50) * 1e3,
        "p99_ns": percentile(&samples, 0.99) * 1e3,
        "mean_ns": mean(&samples) * 1e3,
    })
}

/// The stage functions alone, on the bench's request.
pub(crate) fn functions(options: &Options, config: &NodeConfig) -> Result<Vec<Value>> {
    let catalog = Catalog::build(Arc::new(config.clone()));
    let handle = CatalogHandle::fixed(Catalog::build(Arc::new(config.clone())));
    let policy = catalog
        .policy(TENANT, POLICY)
        .context("the bench policy is not in the catalog")?;
    let table = catalog
        .routing_table(TENANT, TABLE)
        .context("the bench routing table is not in the catalog")?;
    let (applied, key) = catalog
        .key_by_hash(&aios_runtime::keys::hash_secret(SECRET))
        .context("the bench key is not in the catalog")?;
    let caller = Caller {
        tenant: applied.validated.tenant.clone(),
        key_name: applied.validated.name.clone(),
        role: key.role,
        rate_limit: key.rate_limit,
        allowed_agents: key.allowed_agents.clone(),
        user: Some(user(1)),
    };
    let text = prompt(12_345);
    match guardrails::check_input(&policy.input, [text.as_str()]) {
        guardrails::InputVerdict::Passed(passed) if !passed.changed() => {}
        other => bail!("the bench prompt should pass the guardrails untouched: {other:?}"),
    }
    let limiter = RateLimiter::default();
    let models = |name: &str| catalog.model(TENANT, name);
    let conversation = [(Role::System, SYSTEM_PROMPT), (Role::User, text.as_str())];
    let analysis = router::analyze(conversation, false, None);
    let constraints = Default::default();
    let wire_request = grpc_request(1, &AsciiMetadataValue::from_static(SECRET)).into_inner();
    let iterations = options.micro;
    let mut rows = Vec::new();
    let mut row = |name: &str, mut timed: Value| {
        timed["function"] = name.into();
        rows.push(timed);
    };
    row(
        "catalog load (ArcSwap)",
        time_ns(iterations, |_| {
            black_box(handle.load());
        }),
    );
    row(
        "authn: hash_secret (SHA-256 of the key)",
        time_ns(iterations, |_| {
            black_box(aios_runtime::keys::hash_secret(black_box(SECRET)));
        }),
    );
    row(
        "rate limit: admit",
        time_ns(iterations, |_| {
            let _ = black_box(limiter.admit(&caller, tokio::time::Instant::now()));
        }),
    );
    row(
        "guardrails: check_input (injection + PII)",
        time_ns(iterations, |_| {
            black_box(guardrails::check_input(
                &policy.input,
                [black_box(text.as_str())],
            ));
        }),
    );
    row(
        "guardrails: assess_injection",
        time_ns(iterations, |_| {
            black_box(guardrails::assess_injection(black_box(&text)));
        }),
    );
    row(
        "guardrails: detect (every PII kind)",
        time_ns(iterations, |_| {
            black_box(guardrails::detect(
                black_box(&text),
                guardrails::KindSet::ALL,
            ));
        }),
    );
    row(
        "guardrails: redact_output (reply)",
        time_ns(iterations, |_| {
            black_box(guardrails::redact_output(&policy.output, black_box(REPLY)));
        }),
    );
    row(
        "guardrails: detect on the reply (every kind)",
        time_ns(iterations, |_| {
            black_box(guardrails::detect(
                black_box(REPLY),
                guardrails::KindSet::ALL,
            ));
        }),
    );
    row(
        "policy: decide",
        time_ns(iterations, |_| {
            let _ = black_box(pipeline::policy::decide(
                &catalog,
                &caller,
                AGENT,
                Ask::Chat,
                false,
            ));
        }),
    );
    row(
        "route: analyze",
        time_ns(iterations, |_| {
            black_box(router::analyze(black_box(conversation), false, None));
        }),
    );
    row(
        "route: route (two tiers, sticky split)",
        time_ns(iterations, |i| {
            let request = router::RouteRequest {
                analysis: &analysis,
                constraints: &constraints,
                user: Some("customer-1"),
                seed: i,
                p95_latency: None,
            };
            let _ = black_box(router::route(TABLE, table, &models, &request));
        }),
    );
    row(
        "cache: key (normalise + hash)",
        time_ns(iterations, |_| {
            // Sized up front, as the cache stage sizes it.
            let mut key = KeyBuilder::with_capacity(256 + text.len());
            key.field(AGENT)
                .field(1i64.to_le_bytes())
                .field("small-a")
                .text(black_box(&text));
            black_box(key.build(TENANT));
        }),
    );
    row(
        "wire: ExecuteRequest encode + decode",
        time_ns(iterations, |_| {
            let bytes = black_box(&wire_request).encode_to_vec();
            let _ = black_box(pb::ExecuteRequest::decode(bytes.as_slice()));
        }),
    );
    Ok(rows)
}
