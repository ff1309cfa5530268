//! Prompt-injection detection: a scored heuristic.
//!
//! The text is normalised (see `normalize.rs`: case, look-alike letters,
//! invisible characters, leetspeak and spacing undone), then read by a set
//! of rules (`rules.rs`), each a pattern with a category and a weight:
//! instruction overrides ("ignore all previous instructions", also in
//! ten other languages), jailbreak role-play ("you are now DAN",
//! "pretend you have no restrictions"), system-prompt exfiltration
//! ("repeat your system prompt"), role and delimiter injection
//! (`<|im_start|>`, `[INST]`, a `System:` line), data exfiltration
//! ("send the conversation to https://…", markdown images whose URL
//! carries data) and encoded payloads (base64 that decodes to text the
//! same rules flag). Weights combine as independent evidence into a score
//! in `[0, 1)`; at or above [`INJECTION_THRESHOLD`] the text is an
//! injection attempt. The names of the rules that fired are the
//! explanation. Most texts never reach the rules: a precheck
//! (`precheck.rs`) finds none of the literal anchors every rule needs.
//!
//! Ordinary requests that mention instructions ("what are the instructions
//! for this desk?", "ignore the noise in this data") fire nothing: the
//! rules need an override verb aimed at the model's own instructions, or
//! an unmistakable marker.

mod normalize;
mod precheck;
mod rules;

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use rules::{COMPILED, RAW_RULES, Rule, WORD_RULES};

/// The score at or above which a text is an injection attempt.
pub const INJECTION_THRESHOLD: f32 = 0.5;

/// Weight of a base64 payload that decodes to an injection.
const ENCODED_WEIGHT: f32 = 0.9;
/// At most this many payloads are decoded per text.
const MAX_PAYLOADS: usize = 8;
/// Spaced-out text (`i g n o r e`) is also read with the spaces removed
/// once this many one-letter words follow each other.
const SPACED_RUN: usize = 4;

/// What kind of attack a rule recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InjectionCategory {
    /// Telling the model to drop its instructions.
    InstructionOverride,
    /// Role-play that removes the model's restrictions (DAN, developer mode).
    Jailbreak,
    /// Asking for the system prompt or hidden instructions.
    PromptExfiltration,
    /// Fake chat-template tokens or role lines inside user content.
    RoleInjection,
    /// Sending conversation data to a URL (directly or via an image).
    DataExfiltration,
    /// An encoded payload that decodes to an injection.
    EncodedPayload,
}

impl InjectionCategory {
    /// A stable snake_case name (for spans and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InstructionOverride => "instruction_override",
            Self::Jailbreak => "jailbreak",
            Self::PromptExfiltration => "prompt_exfiltration",
            Self::RoleInjection => "role_injection",
            Self::DataExfiltration => "data_exfiltration",
            Self::EncodedPayload => "encoded_payload",
        }
    }
}

impl fmt::Display for InjectionCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule that fired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InjectionSignal {
    /// The rule's stable name (`override_previous_instructions`, …).
    pub rule: &'static str,
    /// What it recognises.
    pub category: InjectionCategory,
    /// Its weight in `(0, 1)`.
    pub weight: f32,
}

/// The verdict on one text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InjectionAssessment {
    /// Combined evidence in `[0, 1)`: `1 − Π(1 − weight)` over the signals.
    pub score: f32,
    /// `score >= INJECTION_THRESHOLD`.
    pub detected: bool,
    /// The rules that fired, strongest first.
    pub signals: Vec<InjectionSignal>,
}

impl InjectionAssessment {
    /// The names of the rules that fired, strongest first.
    pub fn rules(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.signals.iter().map(|s| s.rule)
    }

    fn from_signals(mut signals: Vec<InjectionSignal>) -> Self {
        signals.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.rule.cmp(b.rule)));
        signals.dedup_by_key(|s| s.rule);
        let miss: f32 = signals.iter().map(|s| 1.0 - s.weight).product();
        let score = if signals.is_empty() { 0.0 } else { 1.0 - miss };
        Self {
            score,
            detected: score >= INJECTION_THRESHOLD,
            signals,
        }
    }
}

/// Scores `text` for prompt injection.
pub fn assess_injection(text: &str) -> InjectionAssessment {
    assess(text, true)
}

/// Forces the rules to compile and says whether every group did.
pub(crate) fn compiled() -> bool {
    let c = &*COMPILED;
    c.words.is_some() && c.squashed.is_some() && c.raw.is_some()
}

fn signal(rule: &Rule) -> InjectionSignal {
    InjectionSignal {
        rule: rule.name,
        category: rule.category,
        weight: rule.weight,
    }
}

fn assess(text: &str, decode: bool) -> InjectionAssessment {
    let norm = normalize::normalize(text);
    // Most texts: no rule can fire (see `precheck.rs`), and the rule
    // automata need not run.
    if let Some(precheck) = &COMPILED.precheck
        && !precheck.could_fire(text, &norm)
    {
        return InjectionAssessment::default();
    }
    run_rules(text, &norm, decode)
}

/// Every rule on `text` (normalised as `norm`), and with `decode` on its
/// base64 payloads.
fn run_rules(text: &str, norm: &normalize::Normalized, decode: bool) -> InjectionAssessment {
    let compiled = &*COMPILED;
    let mut signals = Vec::new();
    if let Some(set) = &compiled.words {
        let hits = set.matches(norm.words.as_bytes());
        signals.extend(hits.iter().map(|i| signal(&WORD_RULES[i])));
    }
    if norm.max_single_run >= SPACED_RUN
        && let Some((set, index)) = &compiled.squashed
    {
        let hits = set.matches(norm.squashed().as_bytes());
        signals.extend(hits.iter().map(|j| signal(&WORD_RULES[index[j]])));
    }
    if let Some(set) = &compiled.raw
        && rules::raw_markers(text)
    {
        signals.extend(set.matches(text).iter().map(|i| signal(&RAW_RULES[i])));
    }
    let mut payloads = norm
        .base64_runs
        .iter()
        .take(MAX_PAYLOADS)
        .filter_map(|&(s, e)| decode_text(&text.as_bytes()[s..e]));
    if decode && payloads.any(|payload| assess(&payload, false).detected) {
        signals.push(InjectionSignal {
            rule: "base64_payload",
            category: InjectionCategory::EncodedPayload,
            weight: ENCODED_WEIGHT,
        });
    }
    InjectionAssessment::from_signals(signals)
}

// === encoded payloads ===

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// The run decoded, if it is mostly printable UTF-8 with spaces (prose).
fn decode_text(run: &[u8]) -> Option<String> {
    let raw = STANDARD
        .decode(run)
        .or_else(|_| URL_SAFE.decode(run))
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let printable = s
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .count();
    let spaces = s.chars().filter(|c| c.is_whitespace()).count();
    (printable * 10 >= s.chars().count() * 9 && spaces >= 2).then_some(s)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
