//! Manifest parsing and rendering, against the real contract descriptors.

use std::time::Duration;

use aios_proto::v1::{
    AgentSpec, ApiKeySpec, AuditEvent, BudgetScope, BudgetScopeKind, BudgetSpec, BudgetWindow,
    ModelProvider, ModelSpec, ObjectMeta, Resource, Role, resource::Spec,
};

use super::*;

fn parse(file: &str, text: &str) -> Vec<Manifest> {
    parse_str(file, text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(file: &str, text: &str) -> String {
    parse_str(file, text).unwrap_err().to_string()
}

const AGENT: &str = "\
metadata:
  name: support-bot
  tenant: acme
  labels: {team: support}
agent:
  systemPrompt: |
    You help customers.
    Be brief.
  routingTable: default
  maxSteps: 8
  defaultDeadline: 90s
  actionCriticality: {payments.*: CRITICALITY_HIGH}
";

#[test]
fn documents_map_to_resources() {
    let manifests = parse("agent.yaml", AGENT);
    assert_eq!(manifests.len(), 1);
    let Manifest {
        file,
        document,
        resource,
    } = &manifests[0];
    assert_eq!((file.as_str(), *document), ("agent.yaml", 1));
    let meta = resource.metadata.as_ref().unwrap();
    assert_eq!(
        (meta.name.as_str(), meta.tenant.as_str()),
        ("support-bot", "acme")
    );
    assert_eq!(meta.labels.get("team").map(String::as_str), Some("support"));
    let Some(Spec::Agent(agent)) = &resource.spec else {
        panic!("not an agent: {resource:?}");
    };
    assert_eq!(agent.system_prompt, "You help customers.\nBe brief.\n");
    assert_eq!(agent.max_steps, 8);
    assert_eq!(agent.default_deadline.unwrap().seconds, 90);
    assert_eq!(agent.action_criticality.get("payments.*"), Some(&3));
}

#[test]
fn rendering_round_trips_through_yaml_and_json() {
    let original = parse("agent.yaml", AGENT).remove(0).resource;
    let yaml = to_yaml(&original).unwrap();
    // lowerCamelCase, `metadata` first, durations as text, defaults left out.
    assert!(
        yaml.starts_with("metadata:\n  name: support-bot\n"),
        "{yaml}"
    );
    assert!(yaml.contains("defaultDeadline: 90s"), "{yaml}");
    assert!(yaml.contains("CRITICALITY_HIGH"), "{yaml}");
    assert!(!yaml.contains("forensic"), "{yaml}");
    assert_eq!(parse("again.yaml", &yaml).remove(0).resource, original);

    let json = to_json(&original).unwrap();
    assert!(json.contains("\"routingTable\": \"default\""), "{json}");
    assert_eq!(parse("again.json", &json).remove(0).resource, original);
}

#[test]
fn output_only_fields_and_lists_round_trip() {
    let key = Resource {
        metadata: Some(ObjectMeta {
            name: "ci-bot".into(),
            tenant: "acme".into(),
            resource_version: 42,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        spec: Some(Spec::ApiKey(ApiKeySpec {
            role: Role::Operator.into(),
            key_prefix: "aios_k3Jd".into(),
            ..Default::default()
        })),
    };
    let budget = Resource {
        metadata: Some(ObjectMeta {
            name: "monthly".into(),
            ..Default::default()
        }),
        spec: Some(Spec::Budget(BudgetSpec {
            scope: Some(BudgetScope {
                kind: BudgetScopeKind::Tenant.into(),
                subject: String::new(),
            }),
            window: BudgetWindow::Month.into(),
            limit_usd: 250.5,
            ..Default::default()
        })),
    };
    let both = vec![key, budget];
    let yaml = to_yaml_list(&both).unwrap();
    assert!(yaml.contains("createTime: 2023-11-14T22:13:20Z"), "{yaml}");
    assert!(yaml.contains("role: ROLE_OPERATOR"), "{yaml}");
    assert!(
        yaml.contains("\n---\nmetadata:\n  name: monthly\n"),
        "{yaml}"
    );
    let again: Vec<Resource> = parse("list.yaml", &yaml)
        .into_iter()
        .map(|m| m.resource)
        .collect();
    assert_eq!(again, both);

    // `get -o json` prints a list as one array: it applies as one document.
    let json = to_json_list(&both).unwrap();
    assert!(json.starts_with("[\n"), "{json}");
    let parsed = parse("list.json", &json);
    assert_eq!(
        parsed.iter().map(|m| m.document).collect::<Vec<_>>(),
        [1, 1]
    );
    assert_eq!(
        parsed.into_iter().map(|m| m.resource).collect::<Vec<_>>(),
        both
    );
    assert_eq!(to_yaml_list::<Resource>(&[]).unwrap(), "");
    assert_eq!(to_json_list::<Resource>(&[]).unwrap(), "[]\n");
}

#[test]
fn any_message_renders() {
    let event = AuditEvent {
        id: "e1".into(),
        actor: "bootstrap-admin".into(),
        after_version: 7,
        ..Default::default()
    };
    assert_eq!(
        to_yaml(&event).unwrap(),
        "id: e1\nactor: bootstrap-admin\nafterVersion: '7'\n"
    );
}

#[test]
fn multiple_documents_keep_their_numbers_and_skip_empty_ones() {
    let text = "\
# agents and their budget
---
metadata: {name: a}
agent: {routingTable: default}
---
# nothing here yet
---
metadata: {name: b}
budget:
  limitUsd: 5
  window: BUDGET_WINDOW_DAY
  scope: {kind: BUDGET_SCOPE_KIND_TENANT}
---
";
    let manifests = parse("many.yaml", text);
    let found: Vec<(usize, String)> = manifests
        .iter()
        .map(|m| (m.document, crate::kind::label(&m.resource)))
        .collect();
    assert_eq!(
        found,
        [(1, "agent/a".to_string()), (3, "budget/b".to_string())]
    );
    assert_eq!(manifests[1].source(), "many.yaml, document 3");
    assert!(parse("empty.yaml", "").is_empty());
    assert!(parse("comments.yaml", "# just a comment\n").is_empty());
    assert!(parse("empty.json", " \n").is_empty());
}

#[test]
fn unknown_fields_point_at_the_key_in_the_file() {
    let text = "\
metadata: {name: a}
agent: {routingTable: default}
---
metadata:
  name: b
agent:
  systemPrompt: hi

  maxStepz: 8
";
    assert_eq!(
        error("agents.yaml", text),
        "agents.yaml: document 2, line 9, column 3: unknown field `maxStepz` in `agent`, \
         expected one of `description`, `systemPrompt`, `routingTable`, `policy`, \
         `allowedTools`, `forensic`, `actionCriticality`, `maxSteps`, `defaultDeadline`, `disabled`, \
         `semanticCache`"
    );
    // Nested messages, inside lists, are named by their path.
    let nested = "\
metadata: {name: p}
policy:
  rules:
    - actionGlob: '*'
      deny: true
      critical: x
";
    let message = error("p.yaml", nested);
    assert!(
        message.starts_with(
            "p.yaml: document 1, line 6, column 7: unknown field `critical` in `policy.rules[0]`, \
             expected one of `actionGlob`, `criticality`, `deny`"
        ),
        "{message}"
    );
}

#[test]
fn an_unknown_kind_key_lists_the_kinds() {
    let text = "metadata:\n  name: a\nagnet:\n  routingTable: default\n";
    assert_eq!(
        error("a.yaml", text),
        "a.yaml: document 1, line 3, column 1: unknown field `agnet`, expected one of \
         `metadata`, `tenant`, `apiKey`, `budget`, `policy`, `model`, `routingTable`, `agent`, `tool`, `alertRule`"
    );
}

#[test]
fn spec_and_name_are_required_and_single() {
    let text = "metadata:\n  name: a\n";
    assert_eq!(
        error("a.yaml", text),
        "a.yaml: document 1, line 1, column 1: no spec: a resource needs exactly one of \
         `tenant`, `apiKey`, `budget`, `policy`, `model`, `routingTable`, `agent`, `tool`, `alertRule`"
    );
    let text = "---\nmetadata: {name: a}\nagent: {}\n---\n\nmetadata: {labels: {a: b}}\ntool: {}\n";
    assert_eq!(
        error("b.yaml", text),
        "b.yaml: document 2, line 6, column 1: `metadata.name` is required"
    );
    let text = "metadata: {name: a}\nagent: {}\ntool: {}\n";
    assert!(
        error("c.yaml", text).starts_with(
            "c.yaml: document 1, line 1, column 1: more than one spec key: a resource has exactly one of `tenant`"
        ),
        "{}",
        error("c.yaml", text)
    );
}

#[test]
fn bad_values_are_placed_exactly() {
    let text = "\
metadata: {name: b}
budget:
  window: BUDGET_WINDOW_DAYS
";
    assert_eq!(
        error("b.yaml", text),
        "b.yaml: document 1, line 3, column 11: budget.window: unrecognized enum value 'BUDGET_WINDOW_DAYS'"
    );
    let text = "metadata: {name: m}\nmodel:\n  timeout: soon\n";
    let message = error("m.yaml", text);
    assert!(
        message.starts_with("m.yaml: document 1, line 3, column 12: model.timeout: "),
        "{message}"
    );
}

#[test]
fn malformed_yaml_reports_where() {
    let text = "\
metadata: {name: a}
agent: {routingTable: default}
---
metadata:
  name: b
  regions: [eu, us
agent: {}
";
    let message = error("bad.yaml", text);
    // The location is reported once, up front, not repeated mid-sentence.
    assert_eq!(
        message,
        "bad.yaml: document 2, line 7, column 6: did not find expected ',' or ']', \
         while parsing a flow sequence at line 6 column 12"
    );
    let message = error(
        "bad.json",
        "{\"metadata\": {\"name\": \"a\"},\n \"agent\": {\"maxStepz\": 1}}",
    );
    assert_eq!(
        message,
        "bad.json: document 1, line 2, column 12: unknown field `maxStepz`"
    );
}

#[test]
fn snake_case_names_are_accepted() {
    let text = "\
metadata:
  name: gpt
  node_selector: gpu=true
model:
  provider: MODEL_PROVIDER_OPENAI
  provider_model: gpt-4o-mini
  input_price_usd_per_mtok: 0.15
  output_price_usd_per_mtok: 0.6
  timeout: 30s
";
    let resource = parse("model.yaml", text).remove(0).resource;
    assert_eq!(resource.metadata.unwrap().node_selector, "gpu=true");
    let Some(Spec::Model(model)) = resource.spec else {
        panic!("not a model");
    };
    let expected = ModelSpec {
        provider: ModelProvider::Openai.into(),
        provider_model: "gpt-4o-mini".into(),
        input_price_usd_per_mtok: 0.15,
        output_price_usd_per_mtok: 0.6,
        timeout: Some(Duration::from_secs(30).try_into().unwrap()),
        ..Default::default()
    };
    assert_eq!(model, expected);
}

#[test]
fn directories_are_read_in_name_order_without_recursing() {
    let dir = std::env::temp_dir().join(format!("aios-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let doc = |name: &str| format!("metadata: {{name: {name}}}\nagent: {{routingTable: t}}\n");
    std::fs::write(dir.join("b.yml"), doc("second")).unwrap();
    std::fs::write(dir.join("a.yaml"), doc("first")).unwrap();
    std::fs::write(
        dir.join("c.json"),
        r#"{"metadata": {"name": "third"}, "tool": {}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    std::fs::write(dir.join("nested/z.yaml"), doc("nested")).unwrap();

    let names: Vec<String> = load(&dir)
        .unwrap()
        .into_iter()
        .map(|m| crate::kind::label(&m.resource))
        .collect();
    assert_eq!(names, ["agent/first", "agent/second", "tool/third"]);

    let both = load_all(&[dir.join("c.json"), dir.join("a.yaml")]).unwrap();
    assert!(both[0].file.ends_with("c.json") && both[1].file.ends_with("a.yaml"));
    let missing = load(&dir.join("absent.yaml")).unwrap_err().to_string();
    assert!(missing.contains("absent.yaml: "), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_agent_spec_is_what_it_says() {
    let resource = parse("x.yaml", "metadata: {name: a}\nagent: {maxSteps: 3}\n")
        .remove(0)
        .resource;
    assert_eq!(
        resource.spec,
        Some(Spec::Agent(AgentSpec {
            max_steps: 3,
            ..Default::default()
        }))
    );
}
