//! Human approvals end to end: a control plane and a data-plane node in
//! this process over real gRPC, a real `ToolService` on loopback that
//! counts every call, and `aiosctl approvals` as the built binary.
//!
//! - A CRITICAL action waits for two distinct approvers (one approver
//!   twice is not two), runs exactly once after the second approval, with
//!   the approved arguments only; different arguments or another action
//!   are refused, and a second execution is refused.
//! - An approved request refused before it ran (here by the caller's rate
//!   limit) leaves its approval APPROVED; the retry runs it, once.
//! - A caller that asked to wait runs as soon as an approver (watching the
//!   queue) approves.
//! - A rejection and a timeout each end the request with REJECTED and a
//!   reason; a closed approval takes no more verdicts.
//! - Another tenant's approver can neither see nor decide an approval; the
//!   requester cannot approve their own request; a viewer cannot decide.
//! - Every request, decision and execution is in the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_control_plane::Secret;
use aios_data_plane::{
    DataPlane,
    pipeline::{RemoteProviders, Settings},
};
use aios_proto::v1::{
    self as pb,
    admin_service_client::AdminServiceClient,
    agent_service_client::AgentServiceClient,
    approval_service_client::ApprovalServiceClient,
    resource::Spec,
    tool_service_server::{ToolService, ToolServiceServer},
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, api_key, tenant},
    bin,
    cli::{Run, aiosctl},
    fake_provider::FakeProvider,
};
use futures::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);
const WIRE: &str = r#"{"to":"acct-7","amount":100}"#;

type Channel = aios_client::AuthChannel;

// === A tool that counts its calls ===

/// `payments.wire` and `payments.refund`: records every call's arguments.
#[derive(Debug, Default)]
struct Payments {
    calls: Mutex<Vec<(String, String)>>,
}

impl Payments {
    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl ToolService for Payments {
    async fn invoke(
        &self,
        request: tonic::Request<pb::InvokeRequest>,
    ) -> Result<tonic::Response<pb::InvokeResponse>, tonic::Status> {
        let request = request.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push((request.tool.clone(), request.arguments_json.clone()));
        Ok(tonic::Response::new(pb::InvokeResponse {
            result_json: r#"{"status":"done"}"#.into(),
            ..Default::default()
        }))
    }
}

async fn serve(payments: Arc<Payments>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ToolServiceServer::from_arc(payments))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

// === The world ===

struct World {
    plane: TestPlane,
    node: DataPlane,
    payments: Arc<Payments>,
    /// Secrets by key name (`acme/caller`, `acme/alice`, …).
    secrets: std::collections::HashMap<String, String>,
    _fake: FakeProvider,
    _dir: tempfile::TempDir,
}

fn meta(tenant: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: tenant.into(),
        ..Default::default()
    })
}

fn resource(tenant: &str, name: &str, spec: Spec) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(spec),
    }
}

/// `payments.wire` CRITICAL, `payments.refund` HIGH; approvals wait `timeout`.
fn policy(tenant: &str, name: &str, timeout: Duration) -> pb::Resource {
    let rule = |glob: &str, criticality: pb::Criticality| pb::ActionRule {
        action_glob: glob.into(),
        criticality: criticality as i32,
        deny: false,
    };
    resource(
        tenant,
        name,
        Spec::Policy(pb::PolicySpec {
            rules: vec![
                rule("payments.wire", pb::Criticality::Critical),
                rule("payments.refund", pb::Criticality::High),
            ],
            approval: Some(pb::ApprovalPolicy {
                timeout: Some(prost_types::Duration::try_from(timeout).unwrap()),
                on_timeout: pb::TimeoutAction::Reject as i32,
                escalation_group: String::new(),
            }),
            ..Default::default()
        }),
    )
}

fn agent(tenant: &str, name: &str, policy: &str) -> pb::Resource {
    resource(
        tenant,
        name,
        Spec::Agent(pb::AgentSpec {
            system_prompt: "Move money.".into(),
            routing_table: "std".into(),
            allowed_tools: vec!["payments.wire".into(), "payments.refund".into()],
            policy: policy.into(),
            ..Default::default()
        }),
    )
}

async fn apply(
    admin: &mut AdminServiceClient<Channel>,
    resource: pb::Resource,
) -> pb::ApplyResponse {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Tenants acme and globex; in acme the tools, agents `treasurer` (timeout
/// 60 s) and `hasty` (timeout 2 s), keys `caller`, `root` (admin),
/// `alice`, `bob` (approvers) and `vic` (viewer); in globex an approver
/// `eve`. A node streams from the plane with a platform key.
async fn world() -> World {
    let fake = FakeProvider::start().await.unwrap();
    let payments = Arc::new(Payments::default());
    let tool_server = serve(payments.clone()).await;
    let plane = TestPlane::embedded().await;
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    for name in ["acme", "globex"] {
        apply(&mut admin, tenant(name)).await;
    }
    apply(
        &mut admin,
        resource(
            "acme",
            "a",
            Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::OpenaiCompatible as i32,
                provider_model: "a-v1".into(),
                endpoint: format!("{}/v1", fake.url()),
                capabilities: vec![
                    pb::ModelCapability::Chat as i32,
                    pb::ModelCapability::Tools as i32,
                ],
                ..Default::default()
            }),
        ),
    )
    .await;
    apply(
        &mut admin,
        aios_tests::admin::routing_table("acme", "std", "a"),
    )
    .await;
    for tool in ["payments.wire", "payments.refund"] {
        apply(
            &mut admin,
            resource(
                "acme",
                tool,
                Spec::Tool(pb::ToolSpec {
                    description: "Moves money.".into(),
                    address: tool_server.clone(),
                    side_effects: true,
                    ..Default::default()
                }),
            ),
        )
        .await;
    }
    apply(
        &mut admin,
        policy("acme", "guarded", Duration::from_secs(60)),
    )
    .await;
    apply(&mut admin, policy("acme", "short", Duration::from_secs(2))).await;
    apply(&mut admin, agent("acme", "treasurer", "guarded")).await;
    apply(&mut admin, agent("acme", "hasty", "short")).await;
    let mut secrets = std::collections::HashMap::new();
    for (tenant, name, role) in [
        ("acme", "caller", pb::Role::Caller),
        ("acme", "root", pb::Role::Admin),
        ("acme", "alice", pb::Role::Approver),
        ("acme", "bob", pb::Role::Approver),
        ("acme", "vic", pb::Role::Viewer),
        ("globex", "eve", pb::Role::Approver),
    ] {
        let secret = apply(&mut admin, api_key(tenant, name, role))
            .await
            .api_key_secret;
        secrets.insert(format!("{tenant}/{name}"), secret);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        aios_data_plane::Config::local(plane.url().parse().unwrap(), dir.path().to_path_buf());
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    let node = DataPlane::start_with(
        &config,
        Arc::new(RemoteProviders::new().unwrap()),
        Settings::default(),
    )
    .await
    .unwrap();
    let world = World {
        plane,
        node,
        payments,
        secrets,
        _fake: fake,
        _dir: dir,
    };
    world.synced(admin).await;
    world
}

impl World {
    /// Waits until the node holds everything applied so far.
    async fn synced(&self, mut admin: AdminServiceClient<Channel>) {
        let newest = admin
            .list(pb::ListRequest {
                tenant: "*".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .resources
            .iter()
            .map(|r| r.metadata.as_ref().map_or(0, |m| m.resource_version))
            .max()
            .unwrap_or(0);
        let mut changes = self.node.node_config().subscribe();
        tokio::time::timeout(WAIT, changes.wait_for(|c| c.revision >= newest))
            .await
            .expect("the node catches up")
            .unwrap();
    }

    fn secret(&self, key: &str) -> &str {
        &self.secrets[key]
    }

    async fn agents(&self, key: &str) -> AgentServiceClient<Channel> {
        let url = format!("http://{}", self.node.grpc_addr());
        AgentServiceClient::new(
            aios_client::connect(&url, Some(self.secret(key)), WAIT)
                .await
                .unwrap(),
        )
    }

    async fn approver(&self, key: &str) -> ApprovalServiceClient<Channel> {
        ApprovalServiceClient::new(
            aios_client::connect(&self.plane.url(), Some(self.secret(key)), WAIT)
                .await
                .unwrap(),
        )
    }

    async fn execute(
        &self,
        key: &str,
        request: pb::ExecuteRequest,
    ) -> Result<pb::ExecuteResponse, tonic::Status> {
        Ok(self.agents(key).await.execute(request).await?.into_inner())
    }

    async fn decide(
        &self,
        key: &str,
        id: &str,
        verdict: pb::Verdict,
        comment: &str,
    ) -> Result<pb::Approval, tonic::Status> {
        Ok(self
            .approver(key)
            .await
            .decide(pb::DecideRequest {
                id: id.into(),
                verdict: verdict as i32,
                comment: comment.into(),
                tenant: String::new(),
            })
            .await?
            .into_inner())
    }

    async fn get(&self, key: &str, tenant: &str, id: &str) -> Result<pb::Approval, tonic::Status> {
        Ok(self
            .approver(key)
            .await
            .get(pb::GetApprovalRequest {
                id: id.into(),
                tenant: tenant.into(),
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    async fn stop(self) {
        self.node.shutdown(Duration::from_secs(5)).await;
        self.plane.stop().await;
    }
}

fn action(agent: &str, tool: &str, arguments_json: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        agent: agent.into(),
        input: Some(pb::execute_request::Input::Action(pb::ActionCall {
            action: tool.into(),
            arguments_json: arguments_json.into(),
        })),
        ..Default::default()
    }
}

fn with_approval(mut request: pb::ExecuteRequest, id: &str) -> pb::ExecuteRequest {
    request.approval_id = id.into();
    request
}

fn status(response: &pb::ExecuteResponse) -> pb::ExecutionStatus {
    pb::ExecutionStatus::try_from(response.status).unwrap()
}

fn reason(response: &pb::ExecuteResponse) -> String {
    response.error.clone().map(|e| e.reason).unwrap_or_default()
}

fn error_reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

fn state(approval: &pb::Approval) -> pb::ApprovalState {
    pb::ApprovalState::try_from(approval.state).unwrap()
}

/// Asks for `request` and returns the approval id of its PENDING_APPROVAL.
/// `ran` succeeded under approval `id`, and the payments service saw one
/// call: `tool` with the approved `arguments`.
fn ran_once_as_approved(
    w: &World,
    ran: &pb::ExecuteResponse,
    id: &str,
    tool: &str,
    arguments: serde_json::Value,
) {
    assert_eq!(status(ran), pb::ExecutionStatus::Succeeded, "{ran:?}");
    assert_eq!(ran.approval_id, id);
    let calls = w.payments.calls();
    assert_eq!(calls.len(), 1, "ran exactly once");
    assert_eq!(calls[0].0, tool);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&calls[0].1).unwrap(),
        arguments,
        "the tool got the approved arguments"
    );
}

async fn pending(w: &World, key: &str, request: pb::ExecuteRequest) -> String {
    let response = w.execute(key, request).await.unwrap();
    assert_eq!(
        status(&response),
        pb::ExecutionStatus::PendingApproval,
        "{response:?}"
    );
    assert_eq!(reason(&response), "APPROVAL_PENDING");
    assert!(response.approval_id.starts_with("apr_"), "{response:?}");
    response.approval_id
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_action_needs_two_distinct_approvers_and_runs_exactly_once_as_approved() {
    let w = world().await;
    let wire = action("treasurer", "payments.wire", WIRE);
    let id = pending(&w, "acme/caller", wire.clone()).await;
    assert!(w.payments.calls().is_empty(), "nothing runs unapproved");

    // The queue shows it, bound to what was asked.
    let queue = w
        .approver("acme/alice")
        .await
        .list(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(queue.len(), 1);
    let queued = &queue[0];
    assert_eq!(queued.id, id);
    assert_eq!(queued.criticality, pb::Criticality::Critical as i32);
    assert_eq!(queued.required_approvals, 2);
    assert_eq!(
        (
            queued.caller.as_str(),
            queued.agent.as_str(),
            queued.action.as_str()
        ),
        ("caller", "treasurer", "payments.wire")
    );
    assert_eq!(queued.arguments_json, WIRE);
    assert!(queued.policy_version > 0);

    // Re-submitting before approval only says it is still pending.
    let early = w
        .execute("acme/caller", with_approval(wire.clone(), &id))
        .await
        .unwrap();
    assert_eq!(
        status(&early),
        pb::ExecutionStatus::PendingApproval,
        "{early:?}"
    );

    let first = w
        .decide("acme/alice", &id, pb::Verdict::Approve, "looks right")
        .await
        .unwrap();
    assert_eq!(state(&first), pb::ApprovalState::Pending, "one of two");
    let twice = w
        .decide("acme/alice", &id, pb::Verdict::Approve, "again")
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&twice), "ALREADY_DECIDED");
    let still = w
        .execute("acme/caller", with_approval(wire.clone(), &id))
        .await
        .unwrap();
    assert_eq!(status(&still), pb::ExecutionStatus::PendingApproval);
    assert!(w.payments.calls().is_empty(), "one approver is not enough");

    let second = w
        .decide("acme/bob", &id, pb::Verdict::Approve, "ok")
        .await
        .unwrap();
    assert_eq!(state(&second), pb::ApprovalState::Approved);

    // Other arguments, or another action, cannot ride on the approval.
    let changed = w
        .execute(
            "acme/caller",
            with_approval(
                action(
                    "treasurer",
                    "payments.wire",
                    r#"{"to":"acct-666","amount":100}"#,
                ),
                &id,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::FailedPrecondition, "{changed:?}");
    assert_eq!(error_reason(&changed), "BINDING_MISMATCH");
    let subjects: Vec<String> = changed
        .get_details_precondition_failure()
        .unwrap()
        .violations
        .into_iter()
        .map(|v| v.subject)
        .collect();
    assert_eq!(subjects, ["arguments"]);
    let other = w
        .execute(
            "acme/caller",
            with_approval(action("treasurer", "payments.refund", WIRE), &id),
        )
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&other), "BINDING_MISMATCH");
    let by_another_key = w
        .execute("acme/root", with_approval(wire.clone(), &id))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&by_another_key), "BINDING_MISMATCH");
    assert!(w.payments.calls().is_empty());

    // The approved request runs once, with the approved arguments.
    let ran = w
        .execute("acme/caller", with_approval(wire.clone(), &id))
        .await
        .unwrap();
    ran_once_as_approved(
        &w,
        &ran,
        &id,
        "payments.wire",
        serde_json::from_str(WIRE).unwrap(),
    );
    let again = w
        .execute("acme/caller", with_approval(wire, &id))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&again), "ALREADY_EXECUTED");
    assert_eq!(w.payments.calls().len(), 1, "exactly once");
    let executed = w.get("acme/alice", "", &id).await.unwrap();
    assert_eq!(state(&executed), pb::ApprovalState::Executed);

    // The audit log has the request, both decisions and the execution.
    let mut admin = AdminServiceClient::new(
        aios_client::connect(&w.plane.url(), Some(ADMIN_KEY), WAIT)
            .await
            .unwrap(),
    );
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            name: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<(i32, String)> = events.iter().map(|e| (e.action, e.actor.clone())).collect();
    use pb::AuditAction as A;
    assert_eq!(
        actions,
        [
            (A::ApprovalRequested as i32, "caller".to_string()),
            (A::ApprovalDecision as i32, "alice".to_string()),
            (A::ApprovalDecision as i32, "bob".to_string()),
            (A::ApprovalExecuted as i32, "caller".to_string()),
        ]
    );
    w.stop().await;
}

/// Runs `request` with `agents`, again each time a rate limit refuses it,
/// once the limit says a request is back.
async fn when_admitted(
    agents: &mut AgentServiceClient<Channel>,
    request: pb::ExecuteRequest,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    loop {
        match agents.execute(request.clone()).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                let after = status.get_details_retry_info().unwrap().retry_delay;
                tokio::time::sleep(after.unwrap() + Duration::from_millis(50)).await;
            }
            result => return result.map(tonic::Response::into_inner),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_request_refused_before_it_ran_keeps_its_approval_for_the_retry() {
    let mut w = world().await;
    // A caller key allowed 20 requests a minute: one comes back every 3 s.
    let mut admin = AdminServiceClient::new(
        aios_client::connect(&w.plane.url(), Some(ADMIN_KEY), WAIT)
            .await
            .unwrap(),
    );
    let mut limited = api_key("acme", "limited", pb::Role::Caller);
    if let Some(Spec::ApiKey(spec)) = &mut limited.spec {
        spec.rate_limit = Some(pb::RateLimit {
            requests_per_minute: 20,
            tokens_per_minute: 0,
        });
    }
    let secret = apply(&mut admin, limited).await.api_key_secret;
    w.secrets.insert("acme/limited".into(), secret);
    w.synced(admin).await;

    let refund = action("treasurer", "payments.refund", r#"{"id":"p-7"}"#);
    let id = pending(&w, "acme/limited", refund.clone()).await;
    w.decide("acme/alice", &id, pb::Verdict::Approve, "ok")
        .await
        .unwrap();

    // The caller spends its requests (on an action the agent does not
    // have: nothing runs) until the next one is over a second away.
    let mut agents = w.agents("acme/limited").await;
    loop {
        let Err(status) = agents
            .execute(action("treasurer", "payments.nothing", "{}"))
            .await
        else {
            continue;
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let after = status.get_details_retry_info().unwrap().retry_delay;
        if after.unwrap() >= Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(after.unwrap()).await;
    }

    // The approved request is refused by the rate limit, before it ran:
    // the approval is not used, and the refusal says so.
    let refused = agents
        .execute(with_approval(refund.clone(), &id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("approval {id} was not used")),
        "{refused:?}"
    );
    assert!(w.payments.calls().is_empty());
    let kept = w.get("acme/alice", "", &id).await.unwrap();
    assert_eq!(state(&kept), pb::ApprovalState::Approved, "not burnt");

    // The retry, once the limit allows it, runs the action once.
    let ran = when_admitted(&mut agents, with_approval(refund.clone(), &id))
        .await
        .unwrap();
    ran_once_as_approved(
        &w,
        &ran,
        &id,
        "payments.refund",
        serde_json::json!({"id": "p-7"}),
    );
    let executed = w.get("acme/alice", "", &id).await.unwrap();
    assert_eq!(state(&executed), pb::ApprovalState::Executed);
    let again = when_admitted(&mut agents, with_approval(refund, &id))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(error_reason(&again), "ALREADY_EXECUTED");
    assert_eq!(w.payments.calls().len(), 1, "exactly once");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_caller_runs_as_soon_as_a_watching_approver_approves() {
    let w = world().await;
    let mut watch = w
        .approver("acme/alice")
        .await
        .watch(pb::WatchApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut agents = w.agents("acme/caller").await;
    let mut request = tonic::Request::new(pb::ExecuteRequest {
        wait_for_approval: true,
        ..action("treasurer", "payments.refund", r#"{"id":"p-1"}"#)
    });
    request.set_timeout(Duration::from_secs(15));
    let waiting = tokio::spawn(async move { agents.execute(request).await });

    let seen = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watch shows the new approval")
        .unwrap()
        .unwrap()
        .approval
        .unwrap();
    assert_eq!(state(&seen), pb::ApprovalState::Pending);
    assert_eq!(seen.action, "payments.refund");
    assert_eq!(seen.required_approvals, 1, "HIGH needs one approver");
    assert!(!waiting.is_finished(), "the caller waits for the verdict");
    w.decide("acme/alice", &seen.id, pb::Verdict::Approve, "")
        .await
        .unwrap();

    let response = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&response),
        pb::ExecutionStatus::Succeeded,
        "{response:?}"
    );
    assert_eq!(response.approval_id, seen.id);
    assert_eq!(w.payments.calls().len(), 1);
    // The watch saw it close.
    let closed = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(closed.approval.unwrap().id, seen.id);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_long_polls_an_open_approval_until_it_is_decided() {
    let w = world().await;
    let id = pending(
        &w,
        "acme/caller",
        action("treasurer", "payments.refund", r#"{"id":"p-9"}"#),
    )
    .await;
    let vic = w.approver("acme/vic").await;
    let long_get = |id: String, seconds: i64| {
        let mut client = vic.clone();
        async move {
            client
                .get(pb::GetApprovalRequest {
                    id,
                    tenant: String::new(),
                    wait_while_open: Some(prost_types::Duration { seconds, nanos: 0 }),
                })
                .await
        }
    };
    // A viewer follows it; it is answered with the verdict, not after the
    // 50 s it allowed (the test's own timeout is shorter).
    let follower = tokio::spawn(long_get(id.clone(), 50));
    // Let it read the approval while still PENDING (without the long poll
    // it would answer PENDING now).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!follower.is_finished(), "the long poll waits");
    w.decide("acme/alice", &id, pb::Verdict::Approve, "ok")
        .await
        .unwrap();
    let decided = tokio::time::timeout(WAIT, follower)
        .await
        .expect("the long poll ends with the decision")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(state(&decided), pb::ApprovalState::Approved, "{decided:?}");
    // On a closed approval it answers at once.
    let closed = tokio::time::timeout(WAIT, long_get(id.clone(), 50))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(state(&closed), pb::ApprovalState::Approved);
    // Past the longest poll: refused, naming the field.
    let refused = long_get(id, 61).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(aios_tests::violated_fields(&refused), ["wait_while_open"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejection_and_timeout_each_end_with_a_clear_status() {
    let w = world().await;
    // Rejected while the caller waits.
    let mut agents = w.agents("acme/caller").await;
    let mut request = tonic::Request::new(pb::ExecuteRequest {
        wait_for_approval: true,
        ..action("treasurer", "payments.wire", WIRE)
    });
    request.set_timeout(Duration::from_secs(15));
    let waiting = tokio::spawn(async move { agents.execute(request).await });
    let id = loop {
        let open = w
            .approver("acme/bob")
            .await
            .list(pb::ListApprovalsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .approvals;
        if let Some(a) = open.first() {
            break a.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.decide("acme/alice", &id, pb::Verdict::Approve, "")
        .await
        .unwrap();
    w.decide("acme/bob", &id, pb::Verdict::Reject, "wrong account")
        .await
        .unwrap();
    let response = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&response),
        pb::ExecutionStatus::Rejected,
        "{response:?}"
    );
    assert_eq!(reason(&response), "APPROVAL_REJECTED");
    assert!(
        response
            .error
            .unwrap()
            .message
            .contains("bob: wrong account")
    );
    assert_eq!(response.approval_id, id);
    let closed = w
        .decide("acme/root", &id, pb::Verdict::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&closed), "APPROVAL_CLOSED");
    let resubmitted = w
        .execute(
            "acme/caller",
            with_approval(action("treasurer", "payments.wire", WIRE), &id),
        )
        .await
        .unwrap();
    assert_eq!(status(&resubmitted), pb::ExecutionStatus::Rejected);
    assert_eq!(reason(&resubmitted), "APPROVAL_REJECTED");

    // Timed out (the policy waits 2 s): EXPIRED, and the request REJECTED.
    let refund = action("hasty", "payments.refund", r#"{"id":"p-2"}"#);
    let id = pending(&w, "acme/caller", refund.clone()).await;
    let mut waited = tonic::Request::new(pb::ExecuteRequest {
        wait_for_approval: true,
        ..refund.clone()
    });
    waited.set_timeout(Duration::from_secs(15));
    let response = w
        .agents("acme/caller")
        .await
        .execute(waited)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&response),
        pb::ExecutionStatus::Rejected,
        "{response:?}"
    );
    assert_eq!(reason(&response), "APPROVAL_EXPIRED");
    let expired = tokio::time::timeout(WAIT, async {
        loop {
            let a = w.get("acme/alice", "", &id).await.unwrap();
            if state(&a) != pb::ApprovalState::Pending {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(state(&expired), pb::ApprovalState::Expired);
    let late = w
        .execute("acme/caller", with_approval(refund, &id))
        .await
        .unwrap();
    assert_eq!(status(&late), pb::ExecutionStatus::Rejected);
    assert_eq!(reason(&late), "APPROVAL_EXPIRED");
    let too_late = w
        .decide("acme/alice", &id, pb::Verdict::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(error_reason(&too_late), "APPROVAL_CLOSED");
    assert!(w.payments.calls().is_empty(), "neither ran");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvers_act_only_in_their_tenant_and_never_on_their_own_requests() {
    let w = world().await;
    let id = pending(
        &w,
        "acme/root",
        action("treasurer", "payments.refund", r#"{"id":"p-3"}"#),
    )
    .await;

    // globex's approver: naming acme is refused before anything is read;
    // in its own tenant the id does not exist.
    let mut eve = w.approver("globex/eve").await;
    let cross = eve
        .get(pb::GetApprovalRequest {
            id: id.clone(),
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&cross), "CROSS_TENANT");
    let own = w.get("globex/eve", "", &id).await.unwrap_err();
    assert_eq!(own.code(), Code::NotFound);
    let decide_cross = eve
        .decide(pb::DecideRequest {
            id: id.clone(),
            verdict: pb::Verdict::Approve as i32,
            comment: String::new(),
            tenant: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(decide_cross.code(), Code::PermissionDenied);
    let decide_own = w
        .decide("globex/eve", &id, pb::Verdict::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(decide_own.code(), Code::NotFound);
    let list_cross = eve
        .list(pb::ListApprovalsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(list_cross.code(), Code::PermissionDenied);
    let listed = eve
        .list(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.approvals.is_empty(), "globex sees none of acme's");
    let watch_cross = eve
        .watch(pb::WatchApprovalsRequest {
            tenant: "acme".into(),
            include_decided: false,
        })
        .await
        .unwrap_err();
    assert_eq!(watch_cross.code(), Code::PermissionDenied);

    // The requester cannot approve; a viewer cannot decide.
    let own_request = w
        .decide("acme/root", &id, pb::Verdict::Approve, "mine")
        .await
        .unwrap_err();
    assert_eq!(own_request.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&own_request), "SELF_APPROVAL");
    let viewer = w
        .decide("acme/vic", &id, pb::Verdict::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&viewer), "ROLE_FORBIDDEN");
    let pending_still = w.get("acme/vic", "", &id).await.unwrap();
    assert_eq!(
        state(&pending_still),
        pb::ApprovalState::Pending,
        "viewers read"
    );
    // A platform admin may decide anywhere.
    let platform = ApprovalServiceClient::new(
        aios_client::connect(&w.plane.url(), Some(ADMIN_KEY), WAIT)
            .await
            .unwrap(),
    )
    .decide(pb::DecideRequest {
        id: id.clone(),
        verdict: pb::Verdict::Approve as i32,
        comment: String::new(),
        tenant: String::new(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(state(&platform), pb::ApprovalState::Approved);
    assert_eq!(platform.decisions[0].approver, "system/bootstrap-admin");
    w.stop().await;
}

/// What `aiosctl` printed, and how it exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aiosctl_lists_approves_rejects_and_watches() {
    let w = world().await;
    let url = w.plane.url();
    let wire = pending(
        &w,
        "acme/caller",
        action("treasurer", "payments.wire", WIRE),
    )
    .await;
    let refund = pending(
        &w,
        "acme/caller",
        action("treasurer", "payments.refund", r#"{"id":"p-4"}"#),
    )
    .await;

    let Run {
        code,
        stdout: table,
        stderr,
    } = aiosctl(&url, w.secret("acme/alice"), &["approvals", "ls"]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].starts_with(&wire) && rows[0].contains("critical"),
        "most critical first:\n{table}"
    );
    assert!(
        rows[1].starts_with(&refund) && rows[1].contains("high"),
        "{table}"
    );

    let Run {
        code,
        stdout: json,
        stderr,
    } = aiosctl(
        &url,
        w.secret("acme/alice"),
        &["approvals", "ls", "-o", "json"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed[0]["id"], wire.as_str());
    assert_eq!(listed[0]["requiredApprovals"], 2);

    // `watch` prints the open set first; stop it after it did.
    let mut watch = std::process::Command::new(bin("aiosctl").unwrap())
        .args([
            "--endpoint",
            &url,
            "--api-key",
            w.secret("acme/bob"),
            "approvals",
            "watch",
        ])
        .env_remove("AIOS_API_KEY")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });

    let Run {
        code,
        stdout: out,
        stderr,
    } = aiosctl(
        &url,
        w.secret("acme/alice"),
        &[
            "approvals",
            "approve",
            &wire,
            "--comment",
            "checked the invoice",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(out, format!("approval {wire}: pending (1/2 approvals)\n"));
    let Run {
        code,
        stdout: out,
        stderr,
    } = aiosctl(
        &url,
        w.secret("acme/bob"),
        &["approvals", "reject", &refund, "-m", "duplicate"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        out,
        format!("approval {refund}: rejected by bob: \"duplicate\"\n")
    );

    let Run { code, stderr, .. } = aiosctl(
        &url,
        w.secret("acme/alice"),
        &["approvals", "approve", &wire],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("ALREADY_DECIDED") || stderr.contains("already decided"),
        "{stderr}"
    );
    let Run { code, stderr, .. } = aiosctl(
        &url,
        w.secret("acme/alice"),
        &["approvals", "ls", "--state", "done"],
    );
    assert_eq!(code, Some(2), "a bad state is a usage error: {stderr}");

    let lines = tokio::task::spawn_blocking(move || lines.join().unwrap())
        .await
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(lines[0].starts_with("TIME"), "{lines:?}");
    assert!(lines[1..].iter().any(|l| l.contains(&wire)), "{lines:?}");
    assert!(lines[1..].iter().any(|l| l.contains(&refund)), "{lines:?}");
    w.stop().await;
}
