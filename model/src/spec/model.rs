//! Models in the catalog, local or remote.

use std::num::NonZeroU32;
use std::time::Duration;

use aios_proto::v1 as pb;

use crate::common::proto_enum;
use crate::convert;
use crate::names::{validate_env_var, validate_http_url};
use crate::violation::Ctx;
use crate::{ModelCapability, Usd};

/// Per-attempt timeout of a model call when the spec sets none.
pub const DEFAULT_MODEL_TIMEOUT: Duration = Duration::from_secs(60);

/// A model in the catalog.
///
/// The contract ties some fields to a provider; the strict reading, taken
/// here, is that fields meaningless for the provider must be empty: LOCAL
/// needs `path` and has no `endpoint` or `api_key_env`; remote providers have
/// no `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Who serves it.
    pub provider: ModelProvider,
    /// The model id at the provider; for LOCAL, `metadata.name` when the
    /// spec leaves it empty.
    pub provider_model: String,
    /// Base URL (`http(s)://…`) for remote providers; `None` = the
    /// provider's public endpoint. Always set for OPENAI_COMPATIBLE, never
    /// for LOCAL.
    pub endpoint: Option<String>,
    /// Environment variable on each node holding the provider's API key
    /// (`[A-Za-z_][A-Za-z0-9_]*`); never set for LOCAL.
    pub api_key_env: Option<String>,
    /// Absolute path on each node to a file holding the provider key;
    /// `None` for LOCAL models and keys from the environment.
    pub api_key_file: Option<String>,
    /// For LOCAL (where it is required): path on the node to a GGUF file or
    /// a model directory. `None` for remote providers.
    pub path: Option<String>,
    /// What the model can do, no repeats; `[Chat]` when the spec lists none.
    pub capabilities: Vec<ModelCapability>,
    /// List price of input tokens per million tokens.
    pub input_price_per_mtok: Usd,
    /// List price of output tokens per million tokens.
    pub output_price_per_mtok: Usd,
    /// Context window (input plus output); `None` = from the model or
    /// unknown.
    pub context_window_tokens: Option<NonZeroU32>,
    /// Most output tokens per call and the default max_tokens; `None` = the
    /// model's own limit. Never more than the context window when both are
    /// set (the window includes the output).
    pub max_output_tokens: Option<NonZeroU32>,
    /// Per-attempt timeout, > 0.
    pub timeout: Duration,
}

impl Model {
    /// Whether the model offers `capability`.
    pub fn has(&self, capability: ModelCapability) -> bool {
        self.capabilities.contains(&capability)
    }
}

proto_enum! {
    /// Who serves a model.
    pub enum ModelProvider from pb::ModelProvider {
        /// In-process on the node (candle), from `path`.
        Local,
        /// OpenAI's API.
        Openai,
        /// Anthropic's Messages API.
        Anthropic,
        /// Any server speaking OpenAI chat-completions at `endpoint`.
        OpenaiCompatible,
    }
}

impl ModelProvider {
    /// Whether the model runs on the node itself.
    pub fn is_local(self) -> bool {
        self == ModelProvider::Local
    }
}

pub(crate) fn convert(ctx: &mut Ctx, s: &pb::ModelSpec, name: &str, path: &str) -> Option<Model> {
    let provider =
        convert::required_enum::<ModelProvider>(ctx, s.provider, &format!("{path}.provider"));
    let local = provider.map(ModelProvider::is_local);

    let provider_model = if s.provider_model.is_empty() {
        match provider {
            Some(ModelProvider::Local) => Some(name.to_string()),
            Some(_) => {
                ctx.violation(
                    format!("{path}.provider_model"),
                    "is required for remote providers",
                );
                None
            }
            None => None,
        }
    } else {
        Some(s.provider_model.clone())
    };

    let endpoint = optional(
        ctx,
        &s.endpoint,
        &format!("{path}.endpoint"),
        |ctx, field| match provider {
            Some(ModelProvider::OpenaiCompatible) if s.endpoint.is_empty() => {
                ctx.violation(field, "is required for OPENAI_COMPATIBLE");
                false
            }
            Some(ModelProvider::Local) if !s.endpoint.is_empty() => {
                ctx.violation(field, "must be empty for LOCAL models");
                false
            }
            _ => check(ctx, field, &s.endpoint, validate_http_url),
        },
    );
    let api_key_env = optional(
        ctx,
        &s.api_key_env,
        &format!("{path}.api_key_env"),
        |ctx, field| {
            if local == Some(true) && !s.api_key_env.is_empty() {
                ctx.violation(field, "must be empty for LOCAL models");
                return false;
            }
            check(ctx, field, &s.api_key_env, validate_env_var)
        },
    );
    let api_key_file = optional(
        ctx,
        &s.api_key_file,
        &format!("{path}.api_key_file"),
        |ctx, field| {
            if s.api_key_file.is_empty() {
                true
            } else if local == Some(true) {
                ctx.violation(field, "must be empty for LOCAL models");
                false
            } else if !s.api_key_env.is_empty() {
                ctx.violation(field, "set api_key_env or api_key_file, not both");
                false
            } else if !s.api_key_file.starts_with('/') || s.api_key_file.contains('\0') {
                ctx.violation(field, "must be an absolute path");
                false
            } else {
                true
            }
        },
    );
    let model_path = optional(ctx, &s.path, &format!("{path}.path"), |ctx, field| {
        match (local, s.path.is_empty()) {
            (Some(true), true) => {
                ctx.violation(field, "is required for LOCAL models");
                false
            }
            (Some(false), false) => {
                ctx.violation(field, "must be empty for remote providers");
                false
            }
            _ if s.path.contains('\0') => {
                ctx.violation(field, "must not contain NUL");
                false
            }
            _ => true,
        }
    });

    let capabilities = convert::enum_set(ctx, &s.capabilities, &format!("{path}.capabilities"))
        .map(|c| {
            if c.is_empty() {
                vec![ModelCapability::Chat]
            } else {
                c
            }
        });
    let input_price = convert::usd_non_negative(
        ctx,
        s.input_price_usd_per_mtok,
        &format!("{path}.input_price_usd_per_mtok"),
    );
    let output_price = convert::usd_non_negative(
        ctx,
        s.output_price_usd_per_mtok,
        &format!("{path}.output_price_usd_per_mtok"),
    );

    let context_window_tokens = NonZeroU32::new(s.context_window_tokens);
    let max_output_tokens = NonZeroU32::new(s.max_output_tokens);
    let window_ok = match (context_window_tokens, max_output_tokens) {
        (Some(window), Some(out)) if out > window => {
            ctx.violation(
                format!("{path}.max_output_tokens"),
                format!("{out} exceeds context_window_tokens ({window})"),
            );
            false
        }
        _ => true,
    };
    let timeout = convert::positive_duration(
        ctx,
        s.timeout.as_ref(),
        DEFAULT_MODEL_TIMEOUT,
        &format!("{path}.timeout"),
    );

    window_ok.then_some(())?;
    Some(Model {
        provider: provider?,
        provider_model: provider_model?,
        endpoint: endpoint?,
        api_key_env: api_key_env?,
        api_key_file: api_key_file?,
        path: model_path?,
        capabilities: capabilities?,
        input_price_per_mtok: input_price?,
        output_price_per_mtok: output_price?,
        context_window_tokens,
        max_output_tokens,
        timeout: timeout?,
    })
}

/// Runs `ok` on an optional string field; `Some(None)` when it is empty and
/// accepted, `Some(Some(_))` when set and accepted, `None` when rejected.
fn optional(
    ctx: &mut Ctx,
    value: &str,
    field: &str,
    ok: impl FnOnce(&mut Ctx, &str) -> bool,
) -> Option<Option<String>> {
    ok(ctx, field).then(|| (!value.is_empty()).then(|| value.to_string()))
}

/// Applies a syntax check to a non-empty value.
fn check(ctx: &mut Ctx, field: &str, value: &str, syntax: fn(&str) -> Result<(), String>) -> bool {
    if value.is_empty() {
        return true;
    }
    match syntax(value) {
        Ok(()) => true,
        Err(reason) => {
            ctx.violation(field, reason);
            false
        }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
