//! Part 3, strictness under load: `--nodes` more nodes (5) streaming from
//! the same control plane, `--fleet-requests` (1,000) requests at once
//! spread over them, against one budget of $0.01 that pays for about a
//! tenth of them. Committed spend must stay within the limit; how many
//! requests were refused while money was left says how tight it ran.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_data_plane::{
    backend::{Backend, BackendError, ChatRequest, ChatResponse, FinishReason, Usage},
    pipeline::BackendFactory,
};
use aios_model::Model;
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::{Code, metadata::AsciiMetadataValue, transport::Endpoint};

use crate::{
    Options,
    setup::{REPLY, grpc_request},
    world::{TIGHT, TIGHT_BUDGET, TIGHT_LIMIT_USD, WAIT, World, allowances_calls, micros},
};

/// An instant model that, like a provider, writes at most `max_tokens`:
/// the budget cuts a call's `max_tokens` to what its reservation pays for.
#[derive(Debug)]
struct CappedModel;

#[tonic::async_trait]
impl Backend for CappedModel {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        let most = request.max_tokens.map_or(u64::MAX, u64::from);
        let output_tokens = (REPLY.len() as u64 / 4).min(most);
        let chars = usize::try_from(output_tokens * 4).unwrap_or(usize::MAX);
        Ok(ChatResponse {
            content: REPLY.chars().take(chars).collect(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: (bytes / 4) as u64,
                output_tokens,
            },
            finish: FinishReason::Stop,
            device_cost: None,
        })
    }
}

#[derive(Debug)]
struct CappedModels;

impl BackendFactory for CappedModels {
    fn build(&self, _: &str, _: &str, _: &Model) -> Result<Arc<dyn Backend>, String> {
        Ok(Arc::new(CappedModel))
    }
}

pub(crate) async fn run(options: &Options, world: &World, counter: &AtomicU64) -> Result<Value> {
    let mut nodes = Vec::with_capacity(options.nodes);
    for i in 0..options.nodes {
        nodes.push(
            world
                .start_node(&format!("fleet-{i}"), Arc::new(CappedModels))
                .await?,
        );
    }
    let key =
        AsciiMetadataValue::try_from(world.keys.tight.as_str()).map_err(|e| anyhow!("key: {e}"))?;
    let calls_before = allowances_calls();
    let writes_before = world.ledger_writes().await?;
    let mut channels = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let url = format!("http://{}", node.grpc_addr());
        channels.push(
            Endpoint::from_shared(url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?,
        );
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..options.fleet_requests {
        let mut client = AgentServiceClient::new(channels[i % channels.len()].clone());
        let mut request = grpc_request(counter.fetch_add(1, Ordering::Relaxed), &key);
        request.get_mut().params = Some(pb::GenerationParams {
            max_tokens: 10 + rand::random::<u32>() % 70,
            ..Default::default()
        });
        request.set_timeout(WAIT);
        tasks.spawn(async move { client.execute(request).await });
    }
    let (mut served, mut refused, mut failed, mut cost) = (0u64, 0u64, 0u64, 0i64);
    let mut cheapest = i64::MAX;
    let mut failures = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result? {
            Ok(response) => {
                let response = response.into_inner();
                if response.status == pb::ExecutionStatus::Succeeded as i32 {
                    served += 1;
                    let c = micros(response.cost_usd);
                    cost += c;
                    cheapest = cheapest.min(c);
                } else {
                    failed += 1;
                    failures.push(format!("status {} {:?}", response.status, response.error));
                }
            }
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => {
                failed += 1;
                failures.push(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    let took = started.elapsed();
    // Nodes settle within a round and give back idle allowance within
    // seconds: wait until the ledger holds exactly what was spent.
    let deadline = Instant::now() + WAIT;
    let (spent, reserved) = loop {
        let (spent, reserved) = world.budget_status(TIGHT, TIGHT_BUDGET).await?;
        if (spent == cost && reserved == 0) || Instant::now() > deadline {
            break (spent, reserved);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let settled_in = started.elapsed();
    let calls = allowances_calls() - calls_before;
    let writes = world.ledger_writes().await? - writes_before;
    for node in nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
    let limit = micros(TIGHT_LIMIT_USD);
    let left = limit - spent;
    // At most this many refused requests could have run on what was left.
    let could_have_run = match cheapest {
        i64::MAX => 0,
        c => (left / c.max(1)).min(refused as i64).max(0),
    };
    failures.truncate(5);
    let total = options.fleet_requests as f64;
    Ok(json!({
        "nodes": options.nodes,
        "requests": options.fleet_requests,
        "served": served,
        "refused": refused,
        "failed": failed,
        "failures": failures,
        "limit_micros": limit,
        "spent_micros": spent,
        "sum_of_costs_micros": cost,
        "reserved_after_micros": reserved,
        "overspend_micros": (spent - limit).max(0),
        "spent_share": spent as f64 / limit as f64,
        "refused_while_left_at_most": could_have_run,
        "refused_while_left_share": could_have_run as f64 / total,
        "seconds": took.as_secs_f64(),
        "settled_seconds": settled_in.as_secs_f64(),
        "allowances_calls": calls,
        "ledger_writes": writes,
        "ledger_matches_costs": spent == cost,
    }))
}
