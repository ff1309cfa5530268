//! The data plane's gRPC edge. Wire types stop here: requests become
//! domain calls into the execution pipeline and errors become
//! `tonic::Status` with `google.rpc` details.
//!
//! The execution pipeline lands with the execution issue; until then the
//! generated defaults answer UNIMPLEMENTED, while the service is already
//! served and discoverable by reflection.

use aios_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use tonic::service::Routes;

/// Agent execution and embeddings.
#[derive(Debug, Default)]
pub struct AgentApi;

#[tonic::async_trait]
impl AgentService for AgentApi {}

/// Every data-plane gRPC service, ready to serve.
pub fn routes() -> Routes {
    Routes::new(AgentServiceServer::new(AgentApi))
}
