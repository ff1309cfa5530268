//! The control plane's gRPC edge: one server type per service in
//! `aios.v1`. Wire types stop here; handlers convert requests into domain
//! calls and domain errors into `tonic::Status` with `google.rpc` details.
//!
//! The contract is complete from the start so that clients in any language
//! can be generated and discover every service by reflection. RPCs whose
//! subsystem has not landed yet answer UNIMPLEMENTED (generated default):
//! AdminService with the state issue, FleetService with config streaming,
//! TelemetryService with telemetry, BudgetService and ApprovalService with
//! budgets and approvals.

use aios_proto::v1::{
    admin_service_server::{AdminService, AdminServiceServer},
    approval_service_server::{ApprovalService, ApprovalServiceServer},
    budget_service_server::{BudgetService, BudgetServiceServer},
    fleet_service_server::{FleetService, FleetServiceServer},
    telemetry_service_server::{TelemetryService, TelemetryServiceServer},
};
use tonic::service::Routes;

/// Resource administration (Apply, Get, List, Delete, Watch, audit).
#[derive(Debug, Default)]
pub struct AdminApi;

#[tonic::async_trait]
impl AdminService for AdminApi {}

/// Config streaming to data-plane nodes and fleet membership.
#[derive(Debug, Default)]
pub struct FleetApi;

#[tonic::async_trait]
impl FleetService for FleetApi {}

/// Span ingest from nodes, rollups and live subscriptions.
#[derive(Debug, Default)]
pub struct TelemetryApi;

#[tonic::async_trait]
impl TelemetryService for TelemetryApi {}

/// Human approvals for dangerous actions.
#[derive(Debug, Default)]
pub struct ApprovalApi;

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {}

/// Budget status.
#[derive(Debug, Default)]
pub struct BudgetApi;

#[tonic::async_trait]
impl BudgetService for BudgetApi {}

/// Every control-plane service, ready to serve. The order matches
/// [`aios_proto::CONTROL_PLANE_SERVICES`].
pub fn routes() -> Routes {
    Routes::new(AdminServiceServer::new(AdminApi))
        .add_service(FleetServiceServer::new(FleetApi))
        .add_service(TelemetryServiceServer::new(TelemetryApi))
        .add_service(ApprovalServiceServer::new(ApprovalApi))
        .add_service(BudgetServiceServer::new(BudgetApi))
}
