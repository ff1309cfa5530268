#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn run(name: &str, arguments: Value) -> Result<Value, String> {
    get(name).unwrap().run(&args(arguments))
}

#[test]
fn every_builtin_has_an_object_schema_and_a_unique_name() {
    for builtin in BUILTINS {
        let schema: Value = serde_json::from_str(builtin.parameters_json_schema).unwrap();
        assert_eq!(schema["type"], "object", "{}", builtin.name);
        assert_eq!(
            BUILTINS.iter().filter(|b| b.name == builtin.name).count(),
            1
        );
    }
    assert!(get("math.evaluate").is_some());
    assert!(get("shell.exec").is_none());
    assert_eq!(names(), "time.now, math.evaluate, json.extract, text.stats");
}

#[test]
fn math_evaluate_answers_integers_as_integers() {
    assert_eq!(
        run("math.evaluate", json!({"expression": "(2 + 3) * 4"})).unwrap(),
        json!({"expression": "(2 + 3) * 4", "result": 20})
    );
    assert_eq!(
        run("math.evaluate", json!({"expression": "1 / 4"})).unwrap()["result"],
        json!(0.25)
    );
    assert_eq!(
        run("math.evaluate", json!({"expression": "1/0"})).unwrap_err(),
        "division by zero at position 1"
    );
}

#[test]
fn time_now_reads_a_time_zone() {
    let noon: Timestamp = "2024-06-01T12:00:00Z".parse().unwrap();
    let utc = now_in(noon, None).unwrap();
    assert_eq!(utc["utc"], "2024-06-01T12:00:00Z");
    assert_eq!(utc["time_zone"], "UTC");
    assert_eq!(utc["unix_seconds"], 1_717_243_200);
    assert_eq!(utc["weekday"], "Saturday");
    let tokyo = now_in(noon, Some("Asia/Tokyo")).unwrap();
    assert_eq!(tokyo["local"], "2024-06-01T21:00:00+09:00");
    assert_eq!(tokyo["utc_offset"], "+09");
    let err = now_in(noon, Some("Mars/Olympus")).unwrap_err();
    assert!(err.contains("unknown time zone 'Mars/Olympus'"), "{err}");
    // The real clock.
    let now = run("time.now", json!({})).unwrap();
    let seconds = now["unix_seconds"].as_i64().unwrap();
    assert!((seconds - Timestamp::now().as_second()).abs() < 5);
}

#[test]
fn json_extract_follows_a_pointer_in_text_or_a_value() {
    let doc = r#"{"items": [{"name": "a/b"}, {"name": "c"}], "n": null}"#;
    assert_eq!(
        run(
            "json.extract",
            json!({"document": doc, "pointer": "/items/1/name"})
        )
        .unwrap(),
        json!({"pointer": "/items/1/name", "value": "c"})
    );
    assert_eq!(
        run(
            "json.extract",
            json!({"document": {"a": {"b": 2}}, "pointer": "/a"})
        )
        .unwrap()["value"],
        json!({"b": 2})
    );
    assert_eq!(
        run("json.extract", json!({"document": doc, "pointer": ""})).unwrap()["value"]["n"],
        Value::Null
    );
    let missing = run(
        "json.extract",
        json!({"document": doc, "pointer": "/items/7"}),
    );
    assert!(missing.unwrap_err().contains("no value at '/items/7'"));
    let bad = run("json.extract", json!({"document": "{nope", "pointer": ""}));
    assert!(bad.unwrap_err().contains("not valid JSON"));
    let relative = run("json.extract", json!({"document": doc, "pointer": "items"}));
    assert!(relative.unwrap_err().contains("not a JSON Pointer"));
}

#[test]
fn text_stats_counts() {
    assert_eq!(
        run("text.stats", json!({"text": "héllo  world\nsecond line\n"})).unwrap(),
        json!({"characters": 25, "bytes": 26, "words": 4, "lines": 2})
    );
    assert_eq!(
        run("text.stats", json!({"text": ""})).unwrap(),
        json!({"characters": 0, "bytes": 0, "words": 0, "lines": 0})
    );
}
