//! Agents and the tools they call.

use std::num::NonZeroU32;
use std::time::Duration;

use aios_proto::v1 as pb;

use crate::convert;
use crate::glob::Glob;
use crate::names::{reference_list, validate_http_url};
use crate::violation::Ctx;
use crate::{Criticality, Kind};

/// Steps per execution when the spec says 0.
pub const DEFAULT_MAX_STEPS: NonZeroU32 = NonZeroU32::MIN.saturating_add(15);
/// Execution deadline when neither the caller nor the spec sets one.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Per-call tool timeout when the spec sets none.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// An agent: a system prompt, a routing table, a policy and its tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// What the agent does.
    pub description: String,
    /// Prepended to every conversation.
    pub system_prompt: String,
    /// The routing table choosing its models (a recorded reference).
    pub routing_table: String,
    /// Its policy (a recorded reference); `None` = no rules, no guardrails,
    /// default approvals.
    pub policy: Option<String>,
    /// Tools the model may call (recorded references), no repeats.
    pub allowed_tools: Vec<String>,
    /// Dry-run mode: side-effecting tools are skipped.
    pub forensic: bool,
    /// Criticality per action glob, sorted by pattern (the wire map has no
    /// order). UNSPECIFIED values mean LOW.
    pub action_criticality: Vec<ActionCriticality>,
    /// Most steps per execution (16 when the spec says 0).
    pub max_steps: NonZeroU32,
    /// Deadline when the caller sets none; > 0.
    pub default_deadline: Duration,
    /// True = executions are refused.
    pub disabled: bool,
    /// Near-duplicate requests served from the cache; `None` = exact-match only.
    pub semantic_cache: Option<SemanticCache>,
}

/// Minimum cosine similarity when `SemanticCache.min_similarity` is 0.
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.9;

/// Semantic caching of an agent's answers.
#[derive(Clone, Debug, PartialEq)]
pub struct SemanticCache {
    /// The embedding model (a recorded reference to a Model).
    pub embedding_model: String,
    /// Cosine similarity in (0, 1] at or above which a cached answer is served.
    pub min_similarity: f64,
}

// `min_similarity` is finite (validated), so equality is total.
impl Eq for SemanticCache {}

impl Agent {
    /// The agent's criticality for `action`: the highest of every matching
    /// glob (several may match; taking the highest is the safe reading),
    /// `None` when none matches. The effective criticality is the higher of
    /// this and the policy's.
    pub fn criticality_of(&self, action: &str) -> Option<Criticality> {
        self.action_criticality
            .iter()
            .filter(|a| a.action_glob.matches(action))
            .map(|a| a.criticality)
            .max()
    }
}

/// One entry of `AgentSpec.action_criticality`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionCriticality {
    /// Which actions.
    pub action_glob: Glob,
    /// Their criticality.
    pub criticality: Criticality,
}

/// A tool served by a ToolService, or built into every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    /// What the tool does, shown to the model; not blank.
    pub description: String,
    /// `http(s)://` URL of the ToolService, or [`Tool::BUILTIN`]: a tool
    /// built into the node, named by `remote_name`.
    pub address: String,
    /// True = skipped in forensic mode and subject to approval.
    pub side_effects: bool,
    /// JSON Schema of the arguments; a JSON object (`{}` when the spec
    /// leaves it empty). Only the JSON syntax and the top-level object are
    /// checked here, not the schema's own rules.
    pub parameters_json_schema: String,
    /// Per-call timeout; > 0.
    pub timeout: Duration,
    /// Name at the ToolService, or of the built-in (`metadata.name` when
    /// the spec leaves it empty).
    pub remote_name: String,
}

impl Tool {
    /// The `address` of a tool built into the node. Which built-ins exist
    /// is the node's business: a node NACKs a name it does not have.
    pub const BUILTIN: &'static str = "builtin";

    /// Whether the node runs this tool itself (no ToolService).
    pub fn is_builtin(&self) -> bool {
        self.address == Self::BUILTIN
    }
}

pub(crate) fn agent(ctx: &mut Ctx, s: &pb::AgentSpec, path: &str) -> Option<Agent> {
    let routing_path = format!("{path}.routing_table");
    let routing_table = if s.routing_table.is_empty() {
        ctx.violation(routing_path, "is required");
        None
    } else {
        ctx.reference(Kind::RoutingTable, &s.routing_table, routing_path)
    };
    let policy = if s.policy.is_empty() {
        Some(None)
    } else {
        ctx.reference(Kind::Policy, &s.policy, format!("{path}.policy"))
            .map(Some)
    };
    let allowed_tools = reference_list(
        ctx,
        Kind::Tool,
        &s.allowed_tools,
        &format!("{path}.allowed_tools"),
    );

    // Sorted so that the result (and the violation order) does not depend on
    // the wire map's iteration order.
    let mut entries: Vec<(&String, &i32)> = s.action_criticality.iter().collect();
    entries.sort();
    let mut action_criticality = Some(Vec::with_capacity(entries.len()));
    for (pattern, value) in entries {
        let field = format!("{path}.action_criticality[{pattern:?}]");
        let glob = match Glob::new(pattern) {
            Ok(g) => Some(g),
            Err(reason) => {
                ctx.violation(&field, reason);
                None
            }
        };
        let criticality = convert::defaulted_enum(ctx, *value, Criticality::Low, &field);
        action_criticality = match (action_criticality, glob, criticality) {
            (Some(mut all), Some(action_glob), Some(criticality)) => {
                all.push(ActionCriticality {
                    action_glob,
                    criticality,
                });
                Some(all)
            }
            _ => None,
        };
    }

    let default_deadline = convert::positive_duration(
        ctx,
        s.default_deadline.as_ref(),
        DEFAULT_DEADLINE,
        &format!("{path}.default_deadline"),
    );
    let semantic_cache = match &s.semantic_cache {
        None => Some(None),
        Some(cache) => semantic_cache(ctx, cache, &format!("{path}.semantic_cache")).map(Some),
    };
    Some(Agent {
        description: s.description.clone(),
        system_prompt: s.system_prompt.clone(),
        routing_table: routing_table?,
        policy: policy?,
        allowed_tools,
        forensic: s.forensic,
        action_criticality: action_criticality?,
        max_steps: NonZeroU32::new(s.max_steps).unwrap_or(DEFAULT_MAX_STEPS),
        default_deadline: default_deadline?,
        disabled: s.disabled,
        semantic_cache: semantic_cache?,
    })
}

fn semantic_cache(ctx: &mut Ctx, s: &pb::SemanticCache, path: &str) -> Option<SemanticCache> {
    let model_path = format!("{path}.embedding_model");
    let embedding_model = if s.embedding_model.is_empty() {
        ctx.violation(model_path, "is required");
        None
    } else {
        ctx.reference(Kind::Model, &s.embedding_model, model_path)
    };
    let min_similarity = match s.min_similarity {
        0.0 => Some(DEFAULT_MIN_SIMILARITY),
        x if x.is_finite() && x > 0.0 && x <= 1.0 => Some(x),
        x => {
            ctx.violation(
                format!("{path}.min_similarity"),
                format!("{x} is not in (0, 1]"),
            );
            None
        }
    };
    Some(SemanticCache {
        embedding_model: embedding_model?,
        min_similarity: min_similarity?,
    })
}

pub(crate) fn tool(ctx: &mut Ctx, s: &pb::ToolSpec, name: &str, path: &str) -> Option<Tool> {
    let description = if s.description.trim().is_empty() {
        ctx.violation(format!("{path}.description"), "is required");
        None
    } else {
        Some(s.description.clone())
    };
    let address = if s.address == Tool::BUILTIN {
        Some(s.address.clone())
    } else {
        match validate_http_url(&s.address) {
            Ok(()) => Some(s.address.clone()),
            Err(reason) => {
                ctx.violation(
                    format!("{path}.address"),
                    format!(
                        "{reason}; or '{}' for a tool built into the node",
                        Tool::BUILTIN
                    ),
                );
                None
            }
        }
    };
    let schema = if s.parameters_json_schema.trim().is_empty() {
        Some("{}".to_string())
    } else {
        match serde_json::from_str::<serde_json::Value>(&s.parameters_json_schema) {
            Ok(serde_json::Value::Object(_)) => Some(s.parameters_json_schema.clone()),
            Ok(_) => {
                ctx.violation(
                    format!("{path}.parameters_json_schema"),
                    "must be a JSON object (the schema of the arguments object)",
                );
                None
            }
            Err(e) => {
                ctx.violation(
                    format!("{path}.parameters_json_schema"),
                    format!("is not valid JSON: {e}"),
                );
                None
            }
        }
    };
    let timeout = convert::positive_duration(
        ctx,
        s.timeout.as_ref(),
        DEFAULT_TOOL_TIMEOUT,
        &format!("{path}.timeout"),
    );
    let remote_name = if s.remote_name.is_empty() {
        name.to_string()
    } else {
        s.remote_name.clone()
    };
    Some(Tool {
        description: description?,
        address: address?,
        side_effects: s.side_effects,
        parameters_json_schema: schema?,
        timeout: timeout?,
        remote_name,
    })
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
