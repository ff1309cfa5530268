//! Part 2, from an approver's decision to the action's execution: a HIGH
//! action (one approver) approved with `ApprovalService.Decide`, timed
//! from the moment Decide returns OK to the moment the caller has the
//! executed action's response.
//!
//! - *wait*: the caller sent Execute with `wait_for_approval`; the node
//!   long-polls the approval (`Get` with `wait_while_open`) and runs the
//!   action once it reads APPROVED. The approver decides after a random
//!   pause in [0, `--decide-jitter-ms`), as a person would.
//! - *watch*: the caller got PENDING_APPROVAL, watches the queue
//!   (`ApprovalService.Watch`, with a VIEWER key of its tenant) and
//!   re-submits with `approval_id` when it sees APPROVED.
//! - *told*: as *watch*, but the caller re-submits the moment Decide
//!   returns (it is told out of band): the floor, claim and execution.

use std::time::{Duration, Instant};

use aios_proto::v1::{
    self as pb, agent_service_client::AgentServiceClient,
    approval_service_client::ApprovalServiceClient,
};
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Streaming;

use crate::{
    Options,
    world::{REFUND, TREASURER, WAIT, World},
};

type Agents = AgentServiceClient<aios_client::AuthChannel>;
type Approvals = ApprovalServiceClient<aios_client::AuthChannel>;
type Watch = Streaming<pb::ApprovalEvent>;

/// How long a waiting caller's request may take.
const WAIT_DEADLINE: Duration = Duration::from_secs(20);

fn action(arguments_json: String) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        agent: TREASURER.into(),
        input: Some(pb::execute_request::Input::Action(pb::ActionCall {
            action: REFUND.into(),
            arguments_json,
        })),
        ..Default::default()
    }
}

fn executed(response: &pb::ExecuteResponse, id: &str) -> Result<()> {
    if response.status != pb::ExecutionStatus::Succeeded as i32 || response.approval_id != id {
        bail!("expected approval {id} to execute, got {response:?}");
    }
    Ok(())
}

/// Execute without waiting: the approval id of its PENDING_APPROVAL.
async fn pending(agents: &mut Agents, request: pb::ExecuteRequest) -> Result<String> {
    let response = agents
        .execute(request)
        .await
        .map_err(|s| anyhow!("Execute: {s}"))?
        .into_inner();
    if response.status != pb::ExecutionStatus::PendingApproval as i32 {
        bail!("expected PENDING_APPROVAL, got {response:?}");
    }
    Ok(response.approval_id)
}

/// The next event on `watch` about `matches`.
async fn next_event(
    watch: &mut Watch,
    matches: impl Fn(&pb::Approval) -> bool,
) -> Result<pb::Approval> {
    loop {
        let event = tokio::time::timeout(WAIT, watch.next())
            .await
            .map_err(|_| anyhow!("no approval event within {WAIT:?}"))?
            .context("the approvals watch ended")?
            .map_err(|s| anyhow!("approvals watch: {s}"))?;
        if let Some(approval) = event.approval.filter(&matches) {
            return Ok(approval);
        }
    }
}

/// Approves `id`; how long Decide took and when it returned.
async fn approve(approver: &mut Approvals, id: &str) -> Result<(Duration, Instant)> {
    let asked = Instant::now();
    let approval = approver
        .decide(pb::DecideRequest {
            id: id.into(),
            verdict: pb::Verdict::Approve as i32,
            comment: String::new(),
            tenant: String::new(),
        })
        .await
        .map_err(|s| anyhow!("Decide: {s}"))?
        .into_inner();
    let decided = Instant::now();
    if approval.state != pb::ApprovalState::Approved as i32 {
        bail!("one approval should approve a HIGH action: {approval:?}");
    }
    Ok((decided - asked, decided))
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(later) => bench_ms(later),
        None => -bench_ms(from - to),
    }
}

fn bench_ms(d: Duration) -> f64 {
    aios_tests::bench::ms(d)
}

/// Nearest-rank statistics of `samples` (ms).
fn stats(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len().max(1));
        samples.get(rank - 1).copied().unwrap_or(0.0)
    };
    json!({
        "n": samples.len(),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
        "min_ms": samples.first().copied().unwrap_or(0.0),
        "mean_ms": samples.iter().sum::<f64>() / samples.len().max(1) as f64,
    })
}

pub(crate) async fn run(options: &Options, world: &World) -> Result<Value> {
    let node_url = format!("http://{}", world.node()?.grpc_addr());
    let mut agents: Agents = AgentServiceClient::new(
        aios_client::connect(&node_url, Some(&world.keys.budgeted), WAIT).await?,
    );
    let mut approver: Approvals = ApprovalServiceClient::new(
        aios_client::connect(&world.url, Some(&world.keys.approver), WAIT).await?,
    );
    let mut caller_watch: Approvals = ApprovalServiceClient::new(
        aios_client::connect(&world.url, Some(&world.keys.viewer), WAIT).await?,
    );
    let n = options.approvals;
    let tool_before = world.tool_calls.load(std::sync::atomic::Ordering::Relaxed);

    // wait: the node long-polls; the approver finds the request on its queue.
    let mut queue = approver
        .watch(pb::WatchApprovalsRequest::default())
        .await
        .map_err(|s| anyhow!("Watch: {s}"))?
        .into_inner();
    let (mut wait, mut decide_rpc) = (Vec::with_capacity(n), Vec::with_capacity(n * 3));
    for i in 0..n {
        let arguments = format!(r#"{{"order":"wait-{i}"}}"#);
        let mut request = tonic::Request::new(pb::ExecuteRequest {
            wait_for_approval: true,
            ..action(arguments.clone())
        });
        request.set_timeout(WAIT_DEADLINE);
        let mut caller = agents.clone();
        let waiting = tokio::spawn(async move {
            let response = caller.execute(request).await;
            (response, Instant::now())
        });
        let asked = next_event(&mut queue, |a| {
            a.arguments_json == arguments && a.state == pb::ApprovalState::Pending as i32
        })
        .await?;
        let jitter = rand::random::<u64>() % options.decide_jitter_ms.max(1);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let (rpc, decided) = approve(&mut approver, &asked.id).await?;
        let (response, done) = tokio::time::timeout(WAIT_DEADLINE, waiting)
            .await
            .map_err(|_| anyhow!("the waiting caller got no answer"))??;
        let response = response
            .map_err(|s| anyhow!("waiting Execute: {s}"))?
            .into_inner();
        executed(&response, &asked.id)?;
        decide_rpc.push(bench_ms(rpc));
        wait.push(signed_ms(decided, done));
    }
    drop(queue);

    // watch: the caller learns of the decision from its own watch.
    let mut watch = caller_watch
        .watch(pb::WatchApprovalsRequest::default())
        .await
        .map_err(|s| anyhow!("Watch: {s}"))?
        .into_inner();
    let (mut watched, mut seen_after) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let request = action(format!(r#"{{"order":"watch-{i}"}}"#));
        let id = pending(&mut agents, request.clone()).await?;
        let mut caller = agents.clone();
        let resubmit = pb::ExecuteRequest {
            approval_id: id.clone(),
            ..request
        };
        let wanted = id.clone();
        let learner = tokio::spawn(async move {
            let seen = next_event(&mut watch, |a| {
                a.id == wanted && a.state == pb::ApprovalState::Approved as i32
            })
            .await
            .map(|_| Instant::now());
            let response = caller.execute(resubmit).await;
            (watch, seen, response, Instant::now())
        });
        let (rpc, decided) = approve(&mut approver, &id).await?;
        let (back, seen, response, done) = tokio::time::timeout(WAIT, learner)
            .await
            .map_err(|_| anyhow!("the watching caller did not finish"))??;
        watch = back;
        let seen = seen?;
        let response = response
            .map_err(|s| anyhow!("re-submitted Execute: {s}"))?
            .into_inner();
        executed(&response, &id)?;
        decide_rpc.push(bench_ms(rpc));
        watched.push(signed_ms(decided, done));
        seen_after.push(signed_ms(decided, seen));
    }
    drop(watch);

    // told: re-submitted as soon as Decide returns.
    let mut told = Vec::with_capacity(n);
    for i in 0..n {
        let request = action(format!(r#"{{"order":"told-{i}"}}"#));
        let id = pending(&mut agents, request.clone()).await?;
        let (rpc, decided) = approve(&mut approver, &id).await?;
        let response = agents
            .execute(pb::ExecuteRequest {
                approval_id: id.clone(),
                ..request
            })
            .await
            .map_err(|s| anyhow!("re-submitted Execute: {s}"))?
            .into_inner();
        let done = Instant::now();
        executed(&response, &id)?;
        decide_rpc.push(bench_ms(rpc));
        told.push(signed_ms(decided, done));
    }

    let ran = world.tool_calls.load(std::sync::atomic::Ordering::Relaxed) - tool_before;
    if ran != 3 * n as u64 {
        bail!("{} approved actions ran the tool {ran} times", 3 * n);
    }
    Ok(json!({
        "approvals_per_mode": n,
        "decide_jitter_ms": options.decide_jitter_ms,
        "long_poll_ms": bench_ms(aios_data_plane::approvals::LONG_POLL),
        "wait": stats(wait),
        "watch": stats(watched),
        "watch_event_after_decide": stats(seen_after),
        "told": stats(told),
        "decide_rpc": stats(decide_rpc),
        "tool_calls": ran,
    }))
}
