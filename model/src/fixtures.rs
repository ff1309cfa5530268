//! Valid example specs of every kind and helpers for the tests.

use aios_proto::v1 as pb;
use pb::resource::Spec as S;

/// A proto spec that can be wrapped in a Resource.
pub(crate) trait IntoSpec {
    fn into_spec(self) -> S;
}

macro_rules! into_spec {
    ($($ty:ty => $case:ident),+ $(,)?) => {
        $(impl IntoSpec for $ty {
            fn into_spec(self) -> S {
                S::$case(self)
            }
        })+
    };
}

into_spec! {
    pb::TenantSpec => Tenant,
    pb::ApiKeySpec => ApiKey,
    pb::BudgetSpec => Budget,
    pb::PolicySpec => Policy,
    pb::ModelSpec => Model,
    pb::RoutingTableSpec => RoutingTable,
    pb::AgentSpec => Agent,
    pb::ToolSpec => Tool,
    pb::AlertRuleSpec => AlertRule,
}

/// A resource around `spec`: tenant `acme` (none for Tenant specs), a name
/// fitting the kind.
pub(crate) fn resource(spec: impl IntoSpec) -> pb::Resource {
    let spec = spec.into_spec();
    let (tenant, name) = match &spec {
        S::Tenant(_) => ("", "acme"),
        S::ApiKey(_) => ("acme", "ci-key"),
        S::Budget(_) => ("acme", "monthly"),
        S::Policy(_) => ("acme", "default"),
        S::Model(_) => ("acme", "gpt-4o-mini"),
        S::RoutingTable(_) => ("acme", "standard"),
        S::Agent(_) => ("acme", "support"),
        S::Tool(_) => ("acme", "payments.refund"),
        S::AlertRule(_) => ("acme", "errors-high"),
    };
    pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: tenant.into(),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

/// The paths of every violation of `r`, in report order; panics if valid.
pub(crate) fn fields(r: &pb::Resource) -> Vec<String> {
    match crate::validate(r) {
        Ok(v) => panic!("expected violations, got {v:?}"),
        Err(e) => e.violations.into_iter().map(|v| v.field).collect(),
    }
}

pub(crate) fn dur(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

pub(crate) fn tenant_spec() -> pb::TenantSpec {
    pb::TenantSpec {
        display_name: "Acme Corp".into(),
        disabled: false,
    }
}

pub(crate) fn api_key_spec() -> pb::ApiKeySpec {
    pb::ApiKeySpec {
        role: pb::Role::Operator as i32,
        user: "alice@example.com".into(),
        display_name: "CI pipeline".into(),
        expire_time: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 0,
        }),
        allowed_agents: vec!["support".into()],
        rate_limit: Some(pb::RateLimit {
            requests_per_minute: 600,
            tokens_per_minute: 0,
        }),
        disabled: false,
        groups: vec!["finance-approvers".into()],
        secret_hash: String::new(),
        key_prefix: String::new(),
    }
}

pub(crate) fn budget_spec() -> pb::BudgetSpec {
    pb::BudgetSpec {
        scope: Some(pb::BudgetScope {
            kind: pb::BudgetScopeKind::Agent as i32,
            subject: "support".into(),
        }),
        window: pb::BudgetWindow::Month as i32,
        time_zone: "Europe/Paris".into(),
        limit_usd: 250.0,
        per_request_cap_usd: 0.5,
        on_exceed: pb::OnExceed::Degrade as i32,
        degrade_routing_table: "cheap".into(),
        alert_threshold_percents: vec![100, 50, 80],
    }
}

pub(crate) fn policy_spec() -> pb::PolicySpec {
    pb::PolicySpec {
        rules: vec![
            pb::ActionRule {
                action_glob: "payments.refund".into(),
                criticality: pb::Criticality::Critical as i32,
                deny: false,
            },
            pb::ActionRule {
                action_glob: "payments.*".into(),
                criticality: pb::Criticality::High as i32,
                deny: false,
            },
            pb::ActionRule {
                action_glob: "admin.*".into(),
                criticality: 0,
                deny: true,
            },
        ],
        input: Some(pb::InputGuardrails {
            max_input_bytes: 65_536,
            prompt_injection: pb::GuardrailAction::Block as i32,
            pii: pb::GuardrailAction::Redact as i32,
            pii_kinds: vec![pb::PiiKind::Email as i32, pb::PiiKind::CardNumber as i32],
        }),
        output: Some(pb::OutputGuardrails {
            redact_pii: true,
            redact_secrets: true,
            pii_kinds: vec![],
        }),
        approval: Some(pb::ApprovalPolicy {
            timeout: dur(1800),
            on_timeout: pb::TimeoutAction::Escalate as i32,
            escalation_group: "finance-approvers".into(),
        }),
    }
}

pub(crate) fn model_spec() -> pb::ModelSpec {
    pb::ModelSpec {
        provider: pb::ModelProvider::Openai as i32,
        provider_model: "gpt-4o-mini".into(),
        endpoint: "https://api.openai.com/v1".into(),
        api_key_env: "OPENAI_API_KEY".into(),
        path: String::new(),
        capabilities: vec![
            pb::ModelCapability::Chat as i32,
            pb::ModelCapability::Tools as i32,
        ],
        input_price_usd_per_mtok: 0.15,
        output_price_usd_per_mtok: 0.6,
        context_window_tokens: 128_000,
        max_output_tokens: 16_384,
        timeout: dur(30),
        api_key_file: String::new(),
    }
}

pub(crate) fn local_model_spec() -> pb::ModelSpec {
    pb::ModelSpec {
        provider: pb::ModelProvider::Local as i32,
        path: "/var/lib/aios/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        ..Default::default()
    }
}

pub(crate) fn routing_table_spec() -> pb::RoutingTableSpec {
    pb::RoutingTableSpec {
        tiers: vec![
            pb::RouteTier {
                name: "simple".into(),
                complexity: pb::Complexity::Simple as i32,
                targets: vec![pb::WeightedTarget {
                    model: "smollm2".into(),
                    weight: 1,
                }],
                fallbacks: vec!["gpt-4o-mini".into()],
            },
            pb::RouteTier {
                name: "default".into(),
                complexity: 0,
                targets: vec![
                    pb::WeightedTarget {
                        model: "gpt-4o-mini".into(),
                        weight: 90,
                    },
                    pb::WeightedTarget {
                        model: "claude-haiku".into(),
                        weight: 10,
                    },
                ],
                fallbacks: vec![],
            },
        ],
        sticky_by_user: true,
        baseline_model: "gpt-4o".into(),
        default_constraints: Some(pb::RouteConstraints {
            max_cost_usd: 0.05,
            max_latency: dur(10),
            required_capabilities: vec![],
        }),
    }
}

pub(crate) fn agent_spec() -> pb::AgentSpec {
    pb::AgentSpec {
        description: "Answers support tickets".into(),
        system_prompt: "You are a helpful support agent.".into(),
        routing_table: "standard".into(),
        policy: "default".into(),
        allowed_tools: vec!["payments.refund".into(), "kb.search".into()],
        forensic: false,
        action_criticality: [
            ("payments.*".to_string(), pb::Criticality::High as i32),
            ("kb.search".to_string(), pb::Criticality::Low as i32),
        ]
        .into(),
        max_steps: 8,
        default_deadline: dur(120),
        disabled: false,
        semantic_cache: None,
    }
}

pub(crate) fn tool_spec() -> pb::ToolSpec {
    pb::ToolSpec {
        description: "Refunds a payment".into(),
        address: "http://tools.internal:7070".into(),
        side_effects: true,
        parameters_json_schema: r#"{"type":"object","properties":{"id":{"type":"string"}}}"#.into(),
        timeout: dur(10),
        remote_name: String::new(),
    }
}

pub(crate) fn alert_rule_spec() -> pb::AlertRuleSpec {
    pb::AlertRuleSpec {
        metric: pb::AlertMetric::ErrorRate as i32,
        threshold: 0.05,
        window: dur(300),
        hold: dur(60),
        severity: pb::AlertSeverity::Critical as i32,
        min_requests: 20,
        agent: "support".into(),
        description: "More than 5% of support requests fail".into(),
        ..Default::default()
    }
}
