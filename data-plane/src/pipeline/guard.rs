//! Stage 3, input guardrails: the agent's policy's size limit, prompt
//! injection and personal-data checks on everything the caller sent
//! (message contents, or an action's arguments), before any model or tool
//! sees it. Detection lives in `crate::guardrails`; this stage applies its
//! verdict: a refusal ends the request as BLOCKED, redactions are written
//! back into the request, flags are kept for the span.

use std::borrow::Cow;

use super::{
    call::{Call, Input, Outcome},
    error::ExecError,
    stage::{Flow, Stage},
};
use crate::guardrails::{self, Flag, InputVerdict};

/// The input-guardrail stage.
#[derive(Debug, Default)]
pub struct InputGuard;

impl Stage for InputGuard {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Some(policy) = call
            .catalog
            .agent(call.tenant(), &call.request.agent)
            .and_then(|agent| agent.policy.as_deref())
            .and_then(|name| call.catalog.policy(call.tenant(), name))
        else {
            // No policy, no guardrails (a missing one is refused by policy).
            return Ok(Flow::Continue);
        };
        let parts: Vec<&str> = match &call.request.input {
            Input::Messages(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
            Input::Action { arguments_json, .. } => vec![arguments_json.as_str()],
        };
        let rewritten: Vec<Option<String>> = match guardrails::check_input(&policy.input, parts) {
            InputVerdict::Blocked(blocked) => {
                return Ok(Flow::Done(Box::new(Outcome::blocked(
                    blocked.reason.code(),
                    blocked.message,
                ))));
            }
            InputVerdict::Passed(passed) => {
                for flag in &passed.flags {
                    call.flags.push(match flag {
                        Flag::PromptInjection { .. } => "PROMPT_INJECTION",
                        Flag::Pii { .. } => "PII",
                    });
                }
                if !passed.changed() {
                    return Ok(Flow::Continue);
                }
                passed
                    .parts
                    .into_iter()
                    .map(|part| match part {
                        Cow::Owned(text) => Some(text),
                        Cow::Borrowed(_) => None,
                    })
                    .collect()
            }
        };
        match &mut call.request.input {
            Input::Messages(messages) => {
                for (message, text) in messages.iter_mut().zip(rewritten) {
                    if let Some(text) = text {
                        message.content = text;
                    }
                }
            }
            Input::Action { arguments_json, .. } => {
                if let Some(Some(text)) = rewritten.into_iter().next() {
                    *arguments_json = text;
                }
            }
        }
        Ok(Flow::Continue)
    }
}
