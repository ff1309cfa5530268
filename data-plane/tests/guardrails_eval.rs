//! Evaluates the guardrail detectors on the labelled set in
//! `data/guardrails/*.jsonl` and prints precision, recall and F1 per kind
//! and for prompt injection, with every false positive and false negative
//! by its note (to guide tuning):
//!
//! ```text
//! cargo test -p aios-data-plane --test guardrails_eval -- --nocapture
//! ```
//!
//! A case counts per kind: the detector "predicts" a kind when it finds at
//! least one span of it in the text; the case's `labels` say which kinds
//! are really there. The assertions are floors a working detector clears
//! with room to spare; they catch a broken detector, not a small
//! regression (read the table for that).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use aios_data_plane::guardrails::{KindSet, PiiKind, assess_injection, detect, label};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    text: String,
    labels: Vec<String>,
    injection: bool,
    note: String,
}

/// Where a case came from, for messages.
struct Loaded {
    file: String,
    line: usize,
    case: Case,
}

fn load() -> Vec<Loaded> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/guardrails");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let known: BTreeSet<&str> = PiiKind::ALL.iter().map(|&k| label(k)).collect();
    let mut cases = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read_to_string(&path).unwrap();
        for (i, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let case: Case =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1));
            for l in &case.labels {
                assert!(
                    known.contains(l.as_str()),
                    "{file}:{}: unknown label {l}",
                    i + 1
                );
            }
            assert!(
                !case.note.is_empty(),
                "{file}:{}: every case needs a note",
                i + 1
            );
            cases.push(Loaded {
                file: file.clone(),
                line: i + 1,
                case,
            });
        }
    }
    cases
}

#[derive(Default)]
struct Score {
    tp: u32,
    fp: u32,
    fn_: u32,
    misses: Vec<String>,
    false_alarms: Vec<String>,
}

impl Score {
    fn add(&mut self, truth: bool, predicted: bool, at: &Loaded) {
        self.add_explained(truth, predicted, at, "");
    }

    /// `why`: what fired (rule names), shown next to the note.
    fn add_explained(&mut self, truth: bool, predicted: bool, at: &Loaded, why: &str) {
        let where_ = format!("{}:{} {}{why}", at.file, at.line, at.case.note);
        match (truth, predicted) {
            (true, true) => self.tp += 1,
            (true, false) => {
                self.fn_ += 1;
                self.misses.push(where_);
            }
            (false, true) => {
                self.fp += 1;
                self.false_alarms.push(where_);
            }
            (false, false) => {}
        }
    }

    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        1.0
    } else {
        f64::from(a) / f64::from(b)
    }
}

/// The scores of one slice of the set.
struct Report {
    kinds: Vec<(PiiKind, Score)>,
    injection: Score,
}

fn evaluate<'a>(cases: impl Iterator<Item = &'a Loaded>) -> Report {
    let mut kinds: Vec<(PiiKind, Score)> = PiiKind::ALL
        .iter()
        .map(|&k| (k, Score::default()))
        .collect();
    let mut injection = Score::default();
    for at in cases {
        let text = &at.case.text;
        let found: BTreeSet<PiiKind> = detect(text, KindSet::ALL).iter().map(|f| f.kind).collect();
        for (kind, score) in &mut kinds {
            let truth = at.case.labels.iter().any(|l| l == label(*kind));
            score.add(truth, found.contains(kind), at);
        }
        let verdict = assess_injection(text);
        let rules: Vec<String> = verdict
            .signals
            .iter()
            .map(|s| format!("{}={}", s.rule, s.weight))
            .collect();
        let why = format!(" [score {:.2}: {}]", verdict.score, rules.join(", "));
        injection.add_explained(at.case.injection, verdict.detected, at, &why);
    }
    Report { kinds, injection }
}

impl Report {
    fn rows(&self) -> impl Iterator<Item = (&'static str, &Score)> {
        self.kinds
            .iter()
            .map(|(k, s)| (label(*k), s))
            .chain(std::iter::once(("PROMPT_INJECTION", &self.injection)))
    }

    fn print(&self, title: &str) {
        println!();
        println!("{title}");
        println!(
            "{:<16} {:>5} {:>4} {:>4} {:>4} {:>9} {:>7} {:>6}",
            "kind", "pos", "tp", "fp", "fn", "precision", "recall", "f1"
        );
        for (name, s) in self.rows() {
            println!(
                "{:<16} {:>5} {:>4} {:>4} {:>4} {:>9.3} {:>7.3} {:>6.3}",
                name,
                s.tp + s.fn_,
                s.tp,
                s.fp,
                s.fn_,
                s.precision(),
                s.recall(),
                s.f1()
            );
        }
    }

    fn print_errors(&self) {
        for (name, s) in self.rows() {
            for m in &s.misses {
                println!("  {name} false negative: {m}");
            }
            for m in &s.false_alarms {
                println!("  {name} false positive: {m}");
            }
        }
    }
}

/// Cases written after the detectors were tuned, and not tuned on since:
/// the closest thing here to unseen traffic.
const HOLDOUT: &str = "holdout.jsonl";

#[test]
fn detectors_meet_their_floors_on_the_labelled_set() {
    let cases = load();
    assert!(
        cases.len() >= 300,
        "the labelled set has {} cases",
        cases.len()
    );
    let bytes: usize = cases.iter().map(|c| c.case.text.len()).sum();

    let start = std::time::Instant::now();
    let all = evaluate(cases.iter());
    let elapsed = start.elapsed();
    all.print(&format!(
        "guardrails labelled set: {} cases, {bytes} bytes (all files)",
        cases.len()
    ));
    all.print_errors();
    let holdout: Vec<&Loaded> = cases.iter().filter(|c| c.file == HOLDOUT).collect();
    if !holdout.is_empty() {
        evaluate(holdout.iter().copied()).print(&format!(
            "{HOLDOUT} only ({} cases, not tuned on)",
            holdout.len()
        ));
    }
    println!();
    println!("(all detectors over the set: {elapsed:?} in this build profile; not a benchmark)");

    for (kind, s) in &all.kinds {
        let name = label(*kind);
        assert!(
            s.tp + s.fn_ >= 10,
            "{name}: too few positives in the set to judge"
        );
        assert!(
            s.precision() >= 0.9,
            "{name} precision {:.3} < 0.9",
            s.precision()
        );
        assert!(s.recall() >= 0.9, "{name} recall {:.3} < 0.9", s.recall());
    }
    let injection = &all.injection;
    assert!(
        injection.tp + injection.fn_ >= 50,
        "too few injection cases"
    );
    assert!(
        injection.recall() >= 0.8,
        "injection recall {:.3} < 0.8",
        injection.recall()
    );
    assert!(
        injection.precision() >= 0.9,
        "injection precision {:.3} < 0.9",
        injection.precision()
    );
}
