//! The control plane's gRPC edge: one server type per service in
//! `aios.v1`. Wire types stop here; handlers convert requests into domain
//! calls and domain errors into `tonic::Status` with `google.rpc` details.
//!
//! The contract is complete from the start so that clients in any language
//! can be generated and discover every service by reflection. RPCs whose
//! subsystem has not landed yet answer UNIMPLEMENTED (generated default).

use std::time::{Duration, SystemTime};

use aios_model::Kind;
use aios_model::labels::LabelSelector;
use aios_proto::v1::{
    self as pb,
    admin_service_server::{AdminService, AdminServiceServer},
    approval_service_server::{ApprovalService, ApprovalServiceServer},
    budget_service_server::{BudgetService, BudgetServiceServer},
    fleet_service_server::{FleetService, FleetServiceServer},
    telemetry_service_server::{TelemetryService, TelemetryServiceServer},
};
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, codegen::BoxStream, service::Routes};

use crate::{
    admin::{Admin, AdminError, Applied, AuditFilter, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE},
    approvals::{self, ApprovalError, Approvals, ListFilter as ApprovalFilter},
    auth::{self, Access, Principal},
    budget::{BudgetError, Budgets},
    fleet::Fleet,
    store::SharedStore,
    telemetry::{self, Telemetry, TelemetryError, TimeRange},
};

/// Resource administration (Apply, Get, List, Delete, Watch, audit).
#[derive(Debug, Clone)]
pub struct AdminApi {
    admin: Admin,
}

impl AdminApi {
    /// Serves `admin`.
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        auth::authenticate(self.admin.store().as_ref(), request.metadata())
            .await
            .map_err(|e| AdminError::from(e).into())
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let resource = request
            .resource
            .ok_or_else(|| invalid("resource", "required"))?;
        let (applied, _) = self
            .admin
            .apply(&who, vec![resource], request.dry_run, false)
            .await?;
        let applied = applied
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("apply returned no result"))?;
        Ok(Response::new(apply_response(applied)))
    }

    async fn batch_apply(
        &self,
        request: Request<pb::BatchApplyRequest>,
    ) -> Result<Response<pb::BatchApplyResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let (applied, revision) = self
            .admin
            .apply(&who, request.resources, request.dry_run, true)
            .await?;
        Ok(Response::new(pb::BatchApplyResponse {
            results: applied.into_iter().map(apply_response).collect(),
            revision,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let kind = required_kind(request.kind)?;
        Ok(Response::new(
            self.admin
                .get(&who, kind, &request.tenant, &request.name)
                .await?,
        ))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let kind = optional_kind(request.kind)?;
        let page_size = page_size(request.page_size)?;
        let (resources, next_page_token, revision) = self
            .admin
            .list(
                &who,
                kind,
                &request.tenant,
                &request.label_selector,
                page_size,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListResponse {
            resources,
            next_page_token,
            revision,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let kind = required_kind(request.kind)?;
        let (deleted, revision) = self
            .admin
            .delete(
                &who,
                kind,
                &request.tenant,
                &request.name,
                request.resource_version,
            )
            .await?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: Some(deleted),
            revision,
        }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<BoxStream<pb::WatchEvent>>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let kind = optional_kind(request.kind)?;
        if request.start_revision < 0 {
            return Err(invalid(
                "start_revision",
                "must be 0 (from now) or a revision",
            ));
        }
        let events = self
            .admin
            .watch(&who, kind, &request.tenant, request.start_revision)
            .await?;
        Ok(Response::new(
            events.map(|item| item.map_err(Status::from)).boxed(),
        ))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let time = |t: Option<prost_types::Timestamp>, field: &str| {
            t.map(|t| SystemTime::try_from(t).map_err(|_| invalid(field, "not a valid timestamp")))
                .transpose()
        };
        let filter = AuditFilter {
            tenant: request.tenant,
            actor: request.actor,
            kind: optional_kind(request.kind)?,
            name: request.name,
            start: time(request.start_time, "start_time")?,
            end: time(request.end_time, "end_time")?,
        };
        let (events, next_page_token) = self
            .admin
            .list_audit(
                &who,
                &filter,
                page_size(request.page_size)?,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }
}

fn apply_response(applied: Applied) -> pb::ApplyResponse {
    pb::ApplyResponse {
        resource: Some(applied.resource),
        created: applied.created,
        api_key_secret: applied.secret.unwrap_or_default(),
        unchanged: applied.unchanged,
    }
}

fn invalid(field: &str, description: &str) -> Status {
    AdminError::Invalid(vec![(field.into(), description.into())]).into()
}

fn required_kind(value: i32) -> Result<Kind, Status> {
    optional_kind(value)?.ok_or_else(|| invalid("kind", "required"))
}

fn optional_kind(value: i32) -> Result<Option<Kind>, Status> {
    if value == pb::Kind::Unspecified as i32 {
        return Ok(None);
    }
    Kind::from_proto(value)
        .map(Some)
        .ok_or_else(|| invalid("kind", "unknown kind"))
}

/// AIP-158: 0 means the default; larger than the maximum is clamped.
fn page_size(value: i32) -> Result<usize, Status> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid("page_size", "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Config streaming to data-plane nodes and fleet membership.
#[derive(Debug, Clone)]
pub struct FleetApi {
    store: SharedStore,
    fleet: Fleet,
}

impl FleetApi {
    /// Serves `fleet`, authenticating callers against `store`.
    pub fn new(store: SharedStore, fleet: Fleet) -> Self {
        Self { store, fleet }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        auth::authenticate(self.store.as_ref(), request.metadata())
            .await
            .map_err(|e| AdminError::from(e).into())
    }

    /// Fleet reads are platform-wide: a `system` key with a reading role.
    async fn fleet_reader<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let who = self.caller(request).await?;
        who.authorize(Access::Read).map_err(AdminError::from)?;
        if who.tenant != aios_model::SYSTEM_TENANT {
            return Err(AdminError::from(auth::AuthError::Forbidden {
                role: who.role,
                action: "read the fleet (platform keys only)".into(),
            })
            .into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    async fn stream_config(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<BoxStream<pb::ConfigMessage>>, Status> {
        let who = self.caller(&request).await?;
        who.authorize_node().map_err(AdminError::from)?;
        let pushes = self.fleet.open_stream(request.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(pushes).boxed()))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.fleet_reader(&request).await?;
        let request = request.into_inner();
        let selector = LabelSelector::parse(&request.label_selector)
            .map_err(|e| invalid("label_selector", &e))?;
        let (nodes, more) = self
            .fleet
            .registry()
            .list(
                self.fleet.cache(),
                &request.region,
                &selector,
                &request.page_token,
                page_size(request.page_size)?,
            )
            .await
            .map_err(AdminError::from)?;
        let next_page_token = match nodes.last() {
            Some(last) if more => last.node_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.fleet_reader(&request).await?;
        let node_id = request.into_inner().node_id;
        if node_id.is_empty() {
            return Err(invalid("node_id", "required"));
        }
        self.fleet
            .registry()
            .get(self.fleet.cache(), &node_id)
            .await
            .map_err(AdminError::from)?
            .map(Response::new)
            .ok_or_else(|| AdminError::NodeNotFound(node_id).into())
    }
}

/// Span ingest from nodes, rollups and live subscriptions.
#[derive(Debug, Clone)]
pub struct TelemetryApi {
    store: SharedStore,
    telemetry: Telemetry,
}

impl TelemetryApi {
    /// Serves `telemetry`, authenticating callers against `store`.
    pub fn new(store: SharedStore, telemetry: Telemetry) -> Self {
        Self { store, telemetry }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, TelemetryError> {
        Ok(auth::authenticate(self.store.as_ref(), request.metadata()).await?)
    }

    /// Dashboards' reads: any key that may read (VIEWER and up).
    async fn reader<T>(&self, request: &Request<T>) -> Result<Principal, TelemetryError> {
        let who = self.caller(request).await?;
        who.authorize(Access::Read)?;
        Ok(who)
    }
}

#[tonic::async_trait]
impl TelemetryService for TelemetryApi {
    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<BoxStream<pb::ReportResponse>>, Status> {
        let who = self.caller(&request).await?;
        who.authorize_node().map_err(TelemetryError::from)?;
        let acks = self.telemetry.report(request.into_inner()).await?;
        Ok(Response::new(acks))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<BoxStream<pb::SubscribeResponse>>, Status> {
        let who = self.reader(&request).await?;
        let request = request.into_inner();
        let filter = telemetry::filter(&who, request.filter).map_err(TelemetryError::from)?;
        let granularity = telemetry::granularity(request.window)?;
        Ok(Response::new(
            self.telemetry.subscribe(
                filter,
                granularity,
                request.include_spans,
                request
                    .include_alerts
                    .then(|| telemetry::AlertAudience::of(&who)),
            ),
        ))
    }

    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        let who = self.reader(&request).await?;
        let request = request.into_inner();
        let filter = telemetry::filter(&who, request.filter).map_err(TelemetryError::from)?;
        let range = TimeRange {
            start: request.start_time.map(|t| t.seconds),
            // Rounded up: the range ends at the first whole second at or after it.
            end: request.end_time.map(|t| t.seconds + i64::from(t.nanos > 0)),
        };
        let summary = self.telemetry.summary(&filter, range)?;
        Ok(Response::new(pb::GetSummaryResponse {
            summary: Some(summary.to_proto()),
        }))
    }

    async fn get_trace(
        &self,
        request: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        let who = self.reader(&request).await?;
        // Platform keys see every tenant's spans of a trace.
        let scope = match who.tenant == aios_model::SYSTEM_TENANT {
            true => telemetry::TenantScope::All,
            false => telemetry::TenantScope::One(who.tenant),
        };
        let trace_id = request.into_inner().trace_id;
        let spans = self.telemetry.trace(&trace_id, scope)?;
        Ok(Response::new(pb::Trace { trace_id, spans }))
    }
}

/// Human approvals for dangerous actions: approvers list, read, decide
/// and watch them; nodes request and claim them.
#[derive(Debug, Clone)]
pub struct ApprovalApi {
    store: SharedStore,
    approvals: Approvals,
}

impl ApprovalApi {
    /// Serves `approvals`, authenticating callers against `store`.
    pub fn new(store: SharedStore, approvals: Approvals) -> Self {
        Self { store, approvals }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, ApprovalError> {
        Ok(auth::authenticate(self.store.as_ref(), request.metadata()).await?)
    }
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn list(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let mut states = Vec::with_capacity(request.states.len());
        for (i, value) in request.states.iter().enumerate() {
            match pb::ApprovalState::try_from(*value) {
                Ok(pb::ApprovalState::Unspecified) | Err(_) => {
                    return Err(invalid(&format!("states[{i}]"), "not an approval state"));
                }
                Ok(state) => states.push(state),
            }
        }
        let filter = ApprovalFilter {
            tenant: request.tenant,
            states,
            agent: request.agent,
        };
        let (approvals, next_page_token) = self
            .approvals
            .list(
                &who,
                &filter,
                page_size(request.page_size)?,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals,
            next_page_token,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let wait = match &request.wait_while_open {
            None => Duration::ZERO,
            Some(wait) => Duration::try_from(*wait)
                .ok()
                .filter(|wait| *wait <= approvals::MAX_GET_WAIT)
                .ok_or_else(|| {
                    ApprovalError::invalid(
                        "wait_while_open",
                        "must be between 0 and 60s (a long poll, not a deadline)",
                    )
                })?,
        };
        Ok(Response::new(
            self.approvals
                .get(&who, &request.tenant, &request.id, wait)
                .await?,
        ))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let verdict = pb::Verdict::try_from(request.verdict).unwrap_or(pb::Verdict::Unspecified);
        Ok(Response::new(
            self.approvals
                .decide(
                    &who,
                    &request.tenant,
                    &request.id,
                    verdict,
                    &request.comment,
                )
                .await?,
        ))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<BoxStream<pb::ApprovalEvent>>, Status> {
        let who = self.caller(&request).await?;
        let request = request.into_inner();
        let scope = self.approvals.watch_scope(&who, &request.tenant)?;
        let events = self
            .approvals
            .board()
            .watch(scope, request.include_decided)
            .map(|approval| {
                Ok(pb::ApprovalEvent {
                    approval: Some(approval),
                })
            });
        Ok(Response::new(events.boxed()))
    }

    async fn request(
        &self,
        request: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let who = self.caller(&request).await?;
        Ok(Response::new(
            self.approvals.request(&who, request.into_inner()).await?,
        ))
    }

    async fn claim(
        &self,
        request: Request<pb::ClaimApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let who = self.caller(&request).await?;
        Ok(Response::new(
            self.approvals.claim(&who, request.into_inner()).await?,
        ))
    }
}

/// Budget status for operators, allowances for nodes.
#[derive(Debug, Clone)]
pub struct BudgetApi {
    store: SharedStore,
    budgets: Budgets,
}

impl BudgetApi {
    /// Serves `budgets`, authenticating callers against `store`.
    pub fn new(store: SharedStore, budgets: Budgets) -> Self {
        Self { store, budgets }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, BudgetError> {
        Ok(auth::authenticate(self.store.as_ref(), request.metadata()).await?)
    }
}

#[tonic::async_trait]
impl BudgetService for BudgetApi {
    async fn get_status(
        &self,
        request: Request<pb::GetBudgetStatusRequest>,
    ) -> Result<Response<pb::GetBudgetStatusResponse>, Status> {
        let who = self.caller(&request).await?;
        who.authorize(Access::Read).map_err(BudgetError::from)?;
        let request = request.into_inner();
        let scope = who.scope(&request.tenant).map_err(BudgetError::from)?;
        let statuses = self.budgets.status(&scope, &request.budget).await?;
        Ok(Response::new(pb::GetBudgetStatusResponse { statuses }))
    }

    async fn allowances(
        &self,
        request: Request<pb::AllowancesRequest>,
    ) -> Result<Response<pb::AllowancesResponse>, Status> {
        let who = self.caller(&request).await?;
        who.authorize_node().map_err(BudgetError::from)?;
        let grants = self.budgets.allowances(request.into_inner()).await?;
        Ok(Response::new(pb::AllowancesResponse { grants }))
    }
}

/// Every control-plane service, ready to serve. The order matches
/// [`aios_proto::CONTROL_PLANE_SERVICES`].
pub fn routes(
    admin: Admin,
    fleet: Fleet,
    telemetry: Telemetry,
    budgets: Budgets,
    approvals: Approvals,
) -> Routes {
    let store = admin.store().clone();
    Routes::new(AdminServiceServer::new(AdminApi::new(admin)))
        .add_service(FleetServiceServer::new(FleetApi::new(store.clone(), fleet)))
        .add_service(TelemetryServiceServer::new(TelemetryApi::new(
            store.clone(),
            telemetry,
        )))
        .add_service(ApprovalServiceServer::new(ApprovalApi::new(
            store.clone(),
            approvals,
        )))
        .add_service(BudgetServiceServer::new(BudgetApi::new(store, budgets)))
}
