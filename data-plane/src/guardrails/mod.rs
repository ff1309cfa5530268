//! Input and output guardrails: the size limit, prompt-injection and
//! personal-data detection, and redaction, as a policy configures them
//! ([`InputGuardrails`], [`OutputGuardrails`]).
//!
//! Two stages of the request path call in here: [`check_input`] before any
//! model or tool runs (block, redact or flag), and [`redact_output`] on the
//! model's answer. Both are pure functions of the policy and the text; the
//! detectors underneath ([`detect`], [`assess_injection`]) are compiled once
//! per process and make one or a few passes over the bytes: a full input
//! check of a 2 KB prompt costs about 14 µs on the 2-core development VM.
//!
//! Nothing here logs or returns the text a detector matched: findings carry a
//! kind and a byte range, injection verdicts carry rule names.
//!
//! `docs/guardrails.md` describes each detector, what it deliberately misses,
//! and its precision and recall on the labelled set in
//! `data-plane/data/guardrails/`.

mod detect;
mod injection;
mod policy;

pub use aios_model::{GuardrailAction, InputGuardrails, OutputGuardrails, PiiKind};
pub use detect::{Finding, KindCounts, KindSet, detect, label, redact};
pub use injection::{
    INJECTION_THRESHOLD, InjectionAssessment, InjectionCategory, InjectionSignal, assess_injection,
};
pub use policy::{
    BlockReason, Blocked, Flag, InputVerdict, Passed, check_input, output_kinds, redact_output,
};

/// Compiles every detector now, so the first request does not pay for it;
/// `false` if a pattern failed to compile (the unit tests make sure none
/// does; a failed group would find nothing).
pub fn warm_up() -> bool {
    detect::compiled() && injection::compiled()
}
