//! Stage 5, route: the agent's routing table picks the models for a
//! conversation (complexity → tier → weighted split → fallbacks, within
//! constraints). Actions run a tool and need no model.

use super::{
    call::{Call, Input},
    error::ExecError,
    stage::{Flow, Stage},
};
use crate::router::{self, RouteRequest};

/// The routing stage.
#[derive(Debug, Default)]
pub struct RouteStage;

impl Stage for RouteStage {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Input::Messages(messages) = &call.request.input else {
            return Ok(Flow::Continue);
        };
        let tenant = call.tenant();
        let Some(agent) = call.catalog.agent(tenant, &call.request.agent) else {
            return Ok(Flow::Continue);
        };
        let table_name = call.degraded_to.as_ref().unwrap_or(&agent.routing_table);
        let table = call
            .catalog
            .routing_table(tenant, table_name)
            .ok_or_else(|| {
                ExecError::Unavailable(format!(
                    "routing table {table_name} of agent {} is not in force on this node",
                    call.request.agent
                ))
            })?;
        let analysis = router::analyze(
            messages.iter().map(|m| (m.role, m.content.as_str())),
            !agent.allowed_tools.is_empty(),
            call.request.params.max_tokens,
        );
        let catalog = &call.catalog;
        let models = |name: &str| catalog.model(tenant, name);
        let route = router::route(
            table_name,
            table,
            &models,
            &RouteRequest {
                analysis: &analysis,
                constraints: &call.request.constraints,
                user: call.caller.as_ref().and_then(|c| c.user.as_deref()),
                seed: rand::random(),
                p95_latency: None,
            },
        )
        .map_err(|e| ExecError::Unavailable(e.to_string()))?;
        call.route = Some(route);
        Ok(Flow::Continue)
    }
}
