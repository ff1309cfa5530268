//! Tools an agent's model may call, and actions that call one directly.
//!
//! An agent's `allowed_tools` are names of its tenant's Tool resources;
//! [`Tools::offered`] turns them into the [`ToolSpec`]s a model is offered
//! and [`Tools::run`] runs one call: resolve the name, check the arguments
//! ([`args`]), skip it in forensic mode if it has side effects, then run it
//! built in ([`builtin`], `address: builtin`) or over `ToolService.Invoke`
//! ([`remote`]).
//!
//! A failed tool call is a result, not an error: the model sees the error
//! text as the tool's result (and may try again), and the step records it.
//!
//! Resource names use `.` (`payments.refund`), which model providers do not
//! accept in tool names (`^[a-zA-Z0-9_-]{1,64}$`); the model sees `.` as
//! `_` ([`model_name`]), and since resource names never contain `_`, the
//! mapping is one to one.

pub mod args;
pub mod builtin;
pub mod math;
pub mod remote;

use std::time::Duration;

use aios_model::{Agent, Tool};
use aios_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{backend::ToolSpec, pipeline::Catalog};

pub use remote::RemoteTools;

/// Why a tool call gave no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The agent has no tool by that name.
    #[error("unknown tool '{name}'; this agent's tools are: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The tools the agent has, as the model knows them.
        available: String,
    },
    /// The arguments do not fit the tool's schema.
    #[error("{0}")]
    InvalidArguments(String),
    /// The tool ran and reported an error.
    #[error("{0}")]
    Failed(String),
    /// The tool could not be reached or is not on this node.
    #[error("{0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("the tool did not answer within {}ms", .0.as_millis())]
    Timeout(Duration),
}

impl ToolError {
    /// Stable UPPER_SNAKE reason, for an action's error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown { .. } => "UNKNOWN_TOOL",
            Self::InvalidArguments(_) => "INVALID_ARGUMENTS",
            Self::Failed(_) => "TOOL_FAILED",
            Self::Unavailable(_) => "TOOL_UNAVAILABLE",
            Self::Timeout(_) => "TOOL_TIMEOUT",
        }
    }
}

/// Who is calling, for one execution.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The config snapshot of the request.
    pub catalog: &'a Catalog,
    /// The tenant whose Tool resources are meant.
    pub tenant: &'a str,
    /// The agent's name.
    pub agent_name: &'a str,
    /// The agent.
    pub agent: &'a Agent,
    /// Forensic (dry-run) mode: side-effecting tools are not run.
    pub forensic: bool,
    /// The request's deadline.
    pub deadline: Instant,
    /// End user, "" if none.
    pub user: &'a str,
    /// W3C `traceparent` of the request, if it came with one.
    pub traceparent: Option<&'a str>,
    /// Unique per execution: with the tool call id, the idempotency key.
    pub execution_id: &'a str,
}

/// One tool call, as run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolRun {
    /// The Tool resource's name (the name asked for, if unknown).
    pub name: String,
    /// What the model sees (and an action returns): the result JSON, an
    /// error object, or the forensic notice.
    pub content: String,
    /// Why it gave no result; `None` = it ran (or was skipped) fine.
    pub error: Option<ToolError>,
    /// Not run: it has side effects and the execution is forensic.
    pub skipped_forensic: bool,
}

/// The node's tool runner; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    remote: RemoteTools,
}

/// The name the model uses for Tool resource `name`.
pub fn model_name(name: &str) -> String {
    name.replace('.', "_")
}

impl Tools {
    /// A runner with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The agent's tools, as offered to the model. Tools missing from the
    /// node's config (or built-ins it does not have) are left out: they
    /// could only fail.
    pub fn offered(&self, caller: &Caller<'_>) -> Vec<ToolSpec> {
        caller
            .agent
            .allowed_tools
            .iter()
            .filter_map(|name| {
                let tool = caller.catalog.tool(caller.tenant, name)?;
                let parameters_json_schema = if tool.is_builtin() {
                    builtin::get(&tool.remote_name)?
                        .parameters_json_schema
                        .to_string()
                } else {
                    tool.parameters_json_schema.clone()
                };
                Some(ToolSpec {
                    name: model_name(name),
                    description: tool.description.clone(),
                    parameters_json_schema,
                })
            })
            .collect()
    }

    /// The Tool resource the model means by `asked` (its own name or the
    /// model's spelling), among the agent's tools.
    pub fn resolve<'a>(caller: &Caller<'a>, asked: &str) -> Option<&'a str> {
        caller
            .agent
            .allowed_tools
            .iter()
            .find(|name| *name == asked || model_name(name) == asked)
            .map(String::as_str)
    }

    /// Runs call `call_id` of tool `asked` with `arguments_json`. Never
    /// fails: a problem is a [`ToolRun`] with an error the model can read.
    pub async fn run(
        &self,
        caller: &Caller<'_>,
        asked: &str,
        arguments_json: &str,
        call_id: &str,
    ) -> ToolRun {
        let Some(name) = Self::resolve(caller, asked) else {
            let available = caller
                .agent
                .allowed_tools
                .iter()
                .map(|n| model_name(n))
                .collect::<Vec<_>>();
            let available = if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            };
            return failed(
                asked,
                ToolError::Unknown {
                    name: asked.to_string(),
                    available,
                },
            );
        };
        let Some(tool) = caller.catalog.tool(caller.tenant, name) else {
            return failed(
                name,
                ToolError::Unavailable(format!("tool {name} is not in force on this node")),
            );
        };
        match self.execute(caller, tool, arguments_json, call_id).await {
            Ok(Outcome::Ran(content)) => ToolRun {
                name: name.to_string(),
                content,
                error: None,
                skipped_forensic: false,
            },
            Ok(Outcome::Skipped) => ToolRun {
                name: name.to_string(),
                content: json!({
                    "executed": false,
                    "dry_run": true,
                    "message": format!(
                        "Forensic (dry-run) mode: {name} has side effects and was not executed. \
                         Nothing was changed; do not assume it was."
                    ),
                })
                .to_string(),
                error: None,
                skipped_forensic: true,
            },
            Err(error) => failed(name, error),
        }
    }

    async fn execute(
        &self,
        caller: &Caller<'_>,
        tool: &Tool,
        arguments_json: &str,
        call_id: &str,
    ) -> Result<Outcome, ToolError> {
        let builtin = if tool.is_builtin() {
            Some(builtin::get(&tool.remote_name).ok_or_else(|| {
                ToolError::Unavailable(format!(
                    "this node has no built-in tool '{}' (it has: {})",
                    tool.remote_name,
                    builtin::names()
                ))
            })?)
        } else {
            None
        };
        let schema_text = builtin.map_or(tool.parameters_json_schema.as_str(), |b| {
            b.parameters_json_schema
        });
        // Validated on the way in (a JSON object); an unreadable one checks nothing.
        let schema: Value = serde_json::from_str(schema_text).unwrap_or(Value::Null);
        let arguments =
            args::check(&schema, arguments_json).map_err(ToolError::InvalidArguments)?;
        // Checked after the arguments: a dry run still says whether the
        // call would have been well formed.
        if tool.side_effects && caller.forensic {
            return Ok(Outcome::Skipped);
        }
        if let Some(builtin) = builtin {
            let result = builtin.run(&arguments).map_err(ToolError::Failed)?;
            return Ok(Outcome::Ran(result.to_string()));
        }
        let request = pb::InvokeRequest {
            tool: tool.remote_name.clone(),
            arguments_json: Value::Object(arguments).to_string(),
            tenant: caller.tenant.to_string(),
            agent: caller.agent_name.to_string(),
            trace_id: caller
                .traceparent
                .and_then(|t| t.split('-').nth(1))
                .unwrap_or_default()
                .to_string(),
            dry_run: caller.forensic,
            user: caller.user.to_string(),
            idempotency_key: format!("{}:{call_id}", caller.execution_id),
            approval_id: String::new(),
        };
        let content = self
            .remote
            .invoke(remote::RemoteCall {
                address: &tool.address,
                request,
                timeout: tool.timeout,
                deadline: caller.deadline,
                traceparent: caller.traceparent,
            })
            .await?;
        Ok(Outcome::Ran(content))
    }
}

enum Outcome {
    Ran(String),
    Skipped,
}

fn failed(name: &str, error: ToolError) -> ToolRun {
    ToolRun {
        name: name.to_string(),
        content: json!({ "error": error.to_string() }).to_string(),
        error: Some(error),
        skipped_forensic: false,
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
