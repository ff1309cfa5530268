use super::*;
use crate::fixtures::{agent_spec, dur, fields, resource, tool_spec};
use crate::{Reference, Spec, validate};

fn agent_of(s: pb::AgentSpec) -> Agent {
    match validate(&resource(s)).unwrap().spec {
        Spec::Agent(a) => a,
        other => panic!("{other:?}"),
    }
}

fn tool_of(s: pb::ToolSpec) -> Tool {
    match validate(&resource(s)).unwrap().spec {
        Spec::Tool(t) => t,
        other => panic!("{other:?}"),
    }
}

#[test]
fn valid_agent() {
    let v = validate(&resource(agent_spec())).unwrap();
    assert_eq!(
        v.references,
        [
            Reference {
                kind: Kind::RoutingTable,
                name: "standard".into(),
                field: "agent.routing_table".into()
            },
            Reference {
                kind: Kind::Policy,
                name: "default".into(),
                field: "agent.policy".into()
            },
            Reference {
                kind: Kind::Tool,
                name: "payments.refund".into(),
                field: "agent.allowed_tools[0]".into()
            },
            Reference {
                kind: Kind::Tool,
                name: "kb.search".into(),
                field: "agent.allowed_tools[1]".into()
            },
        ]
    );
    let Spec::Agent(a) = v.spec else {
        panic!("{:?}", v.spec)
    };
    assert_eq!(a.max_steps.get(), 8);
    assert_eq!(a.default_deadline, Duration::from_secs(120));
    let patterns: Vec<&str> = a
        .action_criticality
        .iter()
        .map(|c| c.action_glob.as_str())
        .collect();
    assert_eq!(patterns, ["kb.search", "payments.*"], "sorted by pattern");
    assert_eq!(a.criticality_of("payments.refund"), Some(Criticality::High));
    assert_eq!(a.criticality_of("kb.search"), Some(Criticality::Low));
    assert_eq!(a.criticality_of("mail.send"), None);
}

#[test]
fn agent_defaults() {
    let a = agent_of(pb::AgentSpec {
        routing_table: "standard".into(),
        ..Default::default()
    });
    assert_eq!(a.policy, None);
    assert_eq!(a.max_steps.get(), 16, "0 = 16");
    assert_eq!(a.default_deadline, Duration::from_secs(300));
    assert!(a.allowed_tools.is_empty());
    assert!(a.action_criticality.is_empty());
}

#[test]
fn overlapping_globs_take_the_highest_criticality() {
    let mut s = agent_spec();
    s.action_criticality = [
        ("*".to_string(), pb::Criticality::Medium as i32),
        ("payments.*".to_string(), pb::Criticality::Critical as i32),
        ("payments.refund".to_string(), 0),
    ]
    .into();
    let a = agent_of(s);
    assert_eq!(
        a.criticality_of("payments.refund"),
        Some(Criticality::Critical)
    );
    assert_eq!(a.criticality_of("x"), Some(Criticality::Medium));
}

#[test]
fn routing_table_is_required() {
    let mut s = agent_spec();
    s.routing_table.clear();
    assert_eq!(fields(&resource(s)), ["agent.routing_table"]);
    let mut s = agent_spec();
    s.routing_table = "Standard".into();
    assert_eq!(fields(&resource(s)), ["agent.routing_table"]);
}

#[test]
fn policy_and_tools_are_names() {
    let mut s = agent_spec();
    s.policy = "default policy".into();
    s.allowed_tools = vec!["kb.search".into(), "kb.search".into(), "".into()];
    assert_eq!(
        fields(&resource(s)),
        [
            "agent.policy",
            "agent.allowed_tools[1]",
            "agent.allowed_tools[2]",
        ]
    );
}

#[test]
fn action_criticality_keys_are_globs_and_values_known() {
    let mut s = agent_spec();
    s.action_criticality = [
        (String::new(), pb::Criticality::High as i32),
        ("payments.*".to_string(), 99),
    ]
    .into();
    assert_eq!(
        fields(&resource(s)),
        [
            r#"agent.action_criticality[""]"#,
            r#"agent.action_criticality["payments.*"]"#,
        ]
    );
}

#[test]
fn default_deadline_is_positive() {
    let mut s = agent_spec();
    s.default_deadline = dur(0);
    assert_eq!(fields(&resource(s)), ["agent.default_deadline"]);
}

#[test]
fn valid_tool() {
    let v = validate(&resource(tool_spec())).unwrap();
    assert!(v.references.is_empty());
    let Spec::Tool(t) = v.spec else {
        panic!("{:?}", v.spec)
    };
    assert_eq!(t.address, "http://tools.internal:7070");
    assert!(t.side_effects);
    assert_eq!(t.timeout, Duration::from_secs(10));
    assert_eq!(
        t.remote_name, "payments.refund",
        "defaults to metadata.name"
    );
}

#[test]
fn tool_defaults() {
    let t = tool_of(pb::ToolSpec {
        description: "Searches".into(),
        address: "https://kb.internal".into(),
        remote_name: "Search_KB".into(),
        ..Default::default()
    });
    assert_eq!(t.parameters_json_schema, "{}");
    assert_eq!(t.timeout, DEFAULT_TOOL_TIMEOUT);
    assert_eq!(t.remote_name, "Search_KB");
}

#[test]
fn tool_needs_a_description_and_an_address() {
    let mut s = tool_spec();
    s.description = "  ".into();
    s.address.clear();
    assert_eq!(fields(&resource(s)), ["tool.description", "tool.address"]);
    for bad in [
        "tools.internal:7070",
        "grpc://tools:7070",
        "http://",
        "Builtin",
        " builtin",
        "builtin:math.evaluate",
    ] {
        let mut s = tool_spec();
        s.address = bad.into();
        assert_eq!(fields(&resource(s)), ["tool.address"], "{bad}");
    }
}

#[test]
fn a_builtin_tool_is_named_by_remote_name() {
    let t = tool_of(pb::ToolSpec {
        description: "Evaluates arithmetic".into(),
        address: "builtin".into(),
        remote_name: "math.evaluate".into(),
        ..Default::default()
    });
    assert!(t.is_builtin());
    assert_eq!(t.address, Tool::BUILTIN);
    assert_eq!(t.remote_name, "math.evaluate");
    // Without remote_name, the resource's own name names the built-in.
    let mut s = tool_spec();
    s.address = "builtin".into();
    let t = tool_of(s);
    assert!(t.is_builtin());
    assert_eq!(t.remote_name, "payments.refund");
    assert!(!tool_of(tool_spec()).is_builtin());
}

#[test]
fn tool_schema_must_be_a_json_object() {
    for bad in ["{", "[]", "true", "\"object\"", "{} {}"] {
        let mut s = tool_spec();
        s.parameters_json_schema = bad.into();
        assert_eq!(
            fields(&resource(s)),
            ["tool.parameters_json_schema"],
            "{bad}"
        );
    }
}

#[test]
fn tool_timeout_is_positive() {
    let mut s = tool_spec();
    s.timeout = dur(-1);
    assert_eq!(fields(&resource(s)), ["tool.timeout"]);
}

#[test]
fn semantic_cache_names_an_embedding_model_and_a_threshold() {
    let mut s = agent_spec();
    assert_eq!(agent_of(s.clone()).semantic_cache, None);
    s.semantic_cache = Some(pb::SemanticCache {
        embedding_model: "minilm".into(),
        min_similarity: 0.0,
    });
    let v = validate(&resource(s.clone())).unwrap();
    assert!(v.references.contains(&Reference {
        kind: Kind::Model,
        name: "minilm".into(),
        field: "agent.semantic_cache.embedding_model".into()
    }));
    let cache = agent_of(s.clone()).semantic_cache.unwrap();
    assert_eq!(cache.min_similarity, DEFAULT_MIN_SIMILARITY);

    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        s.semantic_cache = Some(pb::SemanticCache {
            embedding_model: "minilm".into(),
            min_similarity: bad,
        });
        assert_eq!(
            fields(&resource(s.clone())),
            ["agent.semantic_cache.min_similarity"],
            "{bad}"
        );
    }
    s.semantic_cache = Some(pb::SemanticCache::default());
    assert_eq!(
        fields(&resource(s)),
        ["agent.semantic_cache.embedding_model"]
    );
}
