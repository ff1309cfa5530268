use std::collections::{BTreeMap, HashMap};

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn hash_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    map(pairs).into_iter().collect()
}

#[test]
fn valid_labels_pass() {
    let labels = hash_map(&[
        ("team", "payments"),
        ("app.kubernetes.io/name", "aios"),
        ("Tier_2", "Gold.1"),
        ("empty", ""),
        ("k", &"v".repeat(255)),
        (&"k".repeat(63), "x"),
    ]);
    assert_eq!(validate_labels(&labels), vec![]);
}

#[test]
fn each_bad_label_is_named_by_key() {
    let labels = hash_map(&[
        ("Bad Key", "x"),
        ("ok", "bad value"),
        (&"k".repeat(64), "x"),
        ("long", &"v".repeat(256)),
        ("-dash", "x"),
        ("UPPER.Prefix/name", "x"),
        ("/name", "x"),
        ("prefix/", "x"),
        ("", "x"),
        ("good", "-x"),
    ]);
    let fields: Vec<String> = validate_labels(&labels)
        .into_iter()
        .map(|v| v.field)
        .collect();
    let mut want = vec![
        r#"metadata.labels["Bad Key"]"#.to_string(),
        r#"metadata.labels["ok"]"#.to_string(),
        format!(r#"metadata.labels["{}"]"#, "k".repeat(64)),
        r#"metadata.labels["long"]"#.to_string(),
        r#"metadata.labels["-dash"]"#.to_string(),
        r#"metadata.labels["UPPER.Prefix/name"]"#.to_string(),
        r#"metadata.labels["/name"]"#.to_string(),
        r#"metadata.labels["prefix/"]"#.to_string(),
        r#"metadata.labels[""]"#.to_string(),
        r#"metadata.labels["good"]"#.to_string(),
    ];
    want.sort();
    let mut got = fields.clone();
    got.sort();
    assert_eq!(got, want);
    // Reported in key order, so repeated validation gives the same list.
    assert!(fields.windows(2).all(|w| w[0] <= w[1]), "{fields:?}");
}

#[test]
fn at_most_64_labels() {
    let labels: HashMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let violations = validate_labels(&labels);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "metadata.labels");
    let ok: HashMap<String, String> = (0..64).map(|i| (format!("k{i}"), "v".into())).collect();
    assert!(validate_labels(&ok).is_empty());
}

#[test]
fn selector_terms() {
    let labels = map(&[("region", "eu"), ("gpu", "a100"), ("empty", "")]);
    let table: &[(&str, bool)] = &[
        ("", true),
        ("   ", true),
        ("region=eu", true),
        ("region==eu", true),
        ("region=us", false),
        ("region!=us", true),
        ("region!=eu", false),
        ("missing!=x", true),
        ("gpu", true),
        ("missing", false),
        ("!missing", true),
        ("!gpu", false),
        ("region=eu,gpu", true),
        ("region=eu,!gpu", false),
        (" region = eu , gpu != h100 , ! spot ", true),
        ("empty=", true),
        ("empty", true),
        ("region=", false),
        ("empty!=", false),
    ];
    for (selector, want) in table {
        let parsed = LabelSelector::parse(selector).unwrap();
        assert_eq!(parsed.matches(&labels), *want, "{selector:?}");
        assert_eq!(
            parsed.matches(&labels.clone().into_iter().collect::<HashMap<_, _>>()),
            *want,
            "{selector:?} over a HashMap"
        );
    }
}

#[test]
fn selector_syntax_errors() {
    for bad in [
        ",",
        "a,",
        ",a",
        "a,,b",
        "=v",
        "!",
        "a=b=c",
        "a===b",
        "!a=b",
        "a b",
        "a=b c",
        "k in (a,b)",
        "a>1",
        "-a",
    ] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn selector_display_is_canonical_and_round_trips() {
    let s = LabelSelector::parse(" a == 1 , b!=2 , c , !d ").unwrap();
    assert_eq!(s.to_string(), "a=1,b!=2,c,!d");
    assert_eq!(s.to_string().parse::<LabelSelector>().unwrap(), s);
    assert_eq!(
        s.requirements(),
        &[
            Requirement::Equals("a".into(), "1".into()),
            Requirement::NotEquals("b".into(), "2".into()),
            Requirement::Exists("c".into()),
            Requirement::NotExists("d".into()),
        ]
    );
    assert!(LabelSelector::parse("").unwrap().is_empty());
    assert_eq!(LabelSelector::everything().to_string(), "");
}

#[test]
fn selector_keys_may_be_longer_prefixed_node_label_keys() {
    let key = format!("{}/zone", "x".repeat(100));
    let s = LabelSelector::parse(&format!("{key}=a")).unwrap();
    assert!(s.matches(&map(&[(&key, "a")])));
}
