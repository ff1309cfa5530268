//! Applying a policy's guardrails: [`check_input`] before any model or tool
//! runs, [`redact_output`] on what comes back.

use std::borrow::Cow;
use std::fmt;

use aios_model::{GuardrailAction, InputGuardrails, OutputGuardrails, PiiKind};

use super::detect::{Finding, KindCounts, KindSet, detect, redact};
use super::injection::{InjectionAssessment, assess_injection};

// === verdict types ===

/// What [`check_input`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum InputVerdict<'a> {
    /// Refuse the request (ExecutionStatus BLOCKED).
    Blocked(Blocked),
    /// Go on, with these (possibly redacted) parts.
    Passed(Passed<'a>),
}

/// Why an input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// Larger than `max_input_bytes`.
    InputTooLarge,
    /// A prompt-injection attempt under `prompt_injection: BLOCK`.
    PromptInjection,
    /// Personal data under `pii: BLOCK`.
    Pii,
}

impl BlockReason {
    /// The reason code callers see: `INPUT_TOO_LARGE`, `PROMPT_INJECTION`
    /// or `PII`.
    pub fn code(self) -> &'static str {
        match self {
            Self::InputTooLarge => "INPUT_TOO_LARGE",
            Self::PromptInjection => "PROMPT_INJECTION",
            Self::Pii => "PII",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused input. Nothing in it quotes the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    /// Why.
    pub reason: BlockReason,
    /// A sentence for the caller, naming kinds and rules, never content.
    pub message: String,
    /// The first part that triggered it (`None` for the size limit).
    pub part: Option<usize>,
    /// The injection verdict on that part, for [`BlockReason::PromptInjection`].
    pub injection: Option<InjectionAssessment>,
    /// Personal data found across all parts, for [`BlockReason::Pii`].
    pub pii: KindCounts,
}

/// An accepted input.
#[derive(Clone, Debug, PartialEq)]
pub struct Passed<'a> {
    /// The parts in their order: borrowed when unchanged, owned when
    /// redacted, so the caller writes back only what changed.
    pub parts: Vec<Cow<'a, str>>,
    /// What `pii: REDACT` replaced, by kind.
    pub redacted: KindCounts,
    /// What `FLAG` actions marked (for the span's `aios.guardrail.flagged`).
    pub flags: Vec<Flag>,
}

impl Passed<'_> {
    /// Whether any part was rewritten.
    pub fn changed(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Cow::Owned(_)))
    }

    /// Whether anything was flagged.
    pub fn is_flagged(&self) -> bool {
        !self.flags.is_empty()
    }
}

/// Something a `FLAG` action let through.
#[derive(Clone, Debug, PartialEq)]
pub enum Flag {
    /// A part that reads as a prompt-injection attempt.
    PromptInjection {
        /// Index of the part.
        part: usize,
        /// The verdict (score and rules).
        assessment: InjectionAssessment,
    },
    /// Personal data in a part.
    Pii {
        /// Index of the part.
        part: usize,
        /// Where, by kind (byte ranges of that part).
        findings: Vec<Finding>,
    },
}

// === input ===

/// Checks the input parts (message contents, or an action's arguments as
/// JSON) against the policy, in order: size, prompt injection, personal
/// data. The first `BLOCK` that applies refuses the request; `REDACT`
/// rewrites matches to `[REDACTED:<KIND>]` (still valid inside JSON
/// strings); `FLAG` passes the input and records what it found.
///
/// `pii_kinds` empty means every kind, credentials included. A
/// `prompt_injection: REDACT` (which validation rejects) acts as `FLAG`.
pub fn check_input<'a>(
    guardrails: &InputGuardrails,
    parts: impl IntoIterator<Item = &'a str>,
) -> InputVerdict<'a> {
    let parts: Vec<&'a str> = parts.into_iter().collect();
    if let Some(max) = guardrails.max_input_bytes {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let max = max.get();
        if size > usize::try_from(max).unwrap_or(usize::MAX) {
            return InputVerdict::Blocked(Blocked {
                reason: BlockReason::InputTooLarge,
                message: format!("input is {size} bytes; the policy allows at most {max}"),
                part: None,
                injection: None,
                pii: KindCounts::default(),
            });
        }
    }
    let mut flags = Vec::new();
    if guardrails.prompt_injection != GuardrailAction::Allow {
        for (i, part) in parts.iter().enumerate() {
            let assessment = assess_injection(part);
            if !assessment.detected {
                continue;
            }
            if guardrails.prompt_injection == GuardrailAction::Block {
                let rules: Vec<&str> = assessment.rules().collect();
                return InputVerdict::Blocked(Blocked {
                    reason: BlockReason::PromptInjection,
                    message: format!(
                        "input looks like a prompt-injection attempt (score {:.2}; {})",
                        assessment.score,
                        rules.join(", ")
                    ),
                    part: Some(i),
                    injection: Some(assessment),
                    pii: KindCounts::default(),
                });
            }
            flags.push(Flag::PromptInjection {
                part: i,
                assessment,
            });
        }
    }
    let mut redacted = KindCounts::default();
    let out: Vec<Cow<'a, str>> = match guardrails.pii {
        GuardrailAction::Allow => parts.into_iter().map(Cow::Borrowed).collect(),
        action => {
            let kinds = KindSet::or_if_empty(&guardrails.pii_kinds, KindSet::ALL);
            let found: Vec<Vec<Finding>> = parts.iter().map(|p| detect(p, kinds)).collect();
            if action == GuardrailAction::Block
                && let Some(first) = found.iter().position(|f| !f.is_empty())
            {
                let mut pii = KindCounts::default();
                found.iter().for_each(|f| pii.add_all(f));
                return InputVerdict::Blocked(Blocked {
                    reason: BlockReason::Pii,
                    message: format!("input contains personal data ({pii})"),
                    part: Some(first),
                    injection: None,
                    pii,
                });
            }
            let mut out = Vec::with_capacity(parts.len());
            for (i, (part, findings)) in parts.into_iter().zip(found).enumerate() {
                if action == GuardrailAction::Redact {
                    redacted.add_all(&findings);
                    out.push(redact(part, &findings));
                } else {
                    if !findings.is_empty() {
                        flags.push(Flag::Pii { part: i, findings });
                    }
                    out.push(Cow::Borrowed(part));
                }
            }
            out
        }
    };
    InputVerdict::Passed(Passed {
        parts: out,
        redacted,
        flags,
    })
}

// === output ===

/// The kinds [`redact_output`] replaces: with `redact_pii`, the listed
/// `pii_kinds` (empty = every kind of personal data, credentials not
/// included); with `redact_secrets`, credentials too.
pub fn output_kinds(guardrails: &OutputGuardrails) -> KindSet {
    let mut kinds = KindSet::EMPTY;
    if guardrails.redact_pii {
        kinds = KindSet::or_if_empty(&guardrails.pii_kinds, KindSet::PERSONAL);
    }
    if guardrails.redact_secrets {
        kinds = kinds.with(PiiKind::Secret);
    }
    kinds
}

/// Rewrites model output: each match of an [`output_kinds`] kind becomes
/// `[REDACTED:<KIND>]`. Returns the text (borrowed when unchanged) and how
/// many of each kind were replaced.
///
/// Redact the whole text (or buffer a stream up to a line or sentence
/// boundary): a value cut across two chunks is not recognised.
pub fn redact_output<'a>(
    guardrails: &OutputGuardrails,
    text: &'a str,
) -> (Cow<'a, str>, KindCounts) {
    let kinds = output_kinds(guardrails);
    if kinds.is_empty() {
        return (Cow::Borrowed(text), KindCounts::default());
    }
    let findings = detect(text, kinds);
    (redact(text, &findings), KindCounts::of(&findings))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
