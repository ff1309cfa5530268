//! `aiosctl get KIND [NAME]`: one resource, or a listing (all pages), as a
//! table or as manifests that `apply` accepts back.

use std::{collections::BTreeSet, time::SystemTime};

use aios_client::{kind, manifest};
use aios_proto::v1::{
    AlertComparison, AlertMetric, AlertSeverity, BudgetWindow, GetRequest, Kind, ListRequest,
    ModelProvider, Resource, Role, resource::Spec,
};

use crate::{
    Globals,
    output::{self, Format},
    resources::{self, Failure, age, or_dash, short_enum},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// tenant, apikey, budget, policy, model, routingtable, agent, tool or alertrule (singular or plural),
    /// or `all`.
    kind: String,
    /// One resource's name; without it, list.
    name: Option<String>,
    /// Tenant to read (default: the API key's own).
    #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
    tenant: Option<String>,
    /// Label selector for listing: `k=v,k!=v,k,!k`.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<String>,
    /// List across every tenant (platform admin keys only).
    #[arg(short = 'A', long)]
    all_tenants: bool,
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let kind = kind::parse_kind_or_all(&args.kind).map_err(|e| Failure::usage(e.to_string()))?;
    let tenant = if args.all_tenants {
        "*".to_string()
    } else {
        args.tenant.clone().unwrap_or_default()
    };
    let (resources, single) = match (&args.name, kind) {
        (Some(name), Some(kind)) => {
            if args.selector.is_some() || args.all_tenants {
                return Err(Failure::usage(
                    "a NAME reads one resource: drop -l/--selector and --all-tenants",
                ));
            }
            let mut client = resources::connect(globals).await?;
            let request = GetRequest {
                kind: kind.into(),
                tenant,
                name: name.clone(),
            };
            (vec![client.get(request).await?], true)
        }
        (Some(_), None) => {
            return Err(Failure::usage(
                "`get all` lists every kind: it takes no NAME",
            ));
        }
        (None, kind) => {
            let mut client = resources::connect(globals).await?;
            let request = ListRequest {
                kind: kind.unwrap_or(Kind::Unspecified).into(),
                tenant,
                label_selector: args.selector.clone().unwrap_or_default(),
                ..Default::default()
            };
            (client.list_all(request).await?, false)
        }
    };
    let text = match globals.output {
        Format::Json if single => manifest::to_json(&resources[0])?,
        Format::Yaml if single => manifest::to_yaml(&resources[0])?,
        Format::Json => manifest::to_json_list(&resources)?,
        Format::Yaml => manifest::to_yaml_list(&resources)?,
        Format::Table if resources.is_empty() => "No resources found.\n".into(),
        Format::Table => table(kind, &resources, SystemTime::now()),
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// NAME, TENANT, VERSION, AGE and the kind's own columns. Listing every
/// kind, NAME is `kind/name` and there are no kind columns.
fn table(kind: Option<Kind>, resources: &[Resource], now: SystemTime) -> String {
    let mut headers = vec!["NAME", "TENANT", "VERSION", "AGE"];
    headers.extend(kind.map_or(&[][..], kind_headers));
    let rows: Vec<Vec<String>> = resources
        .iter()
        .map(|resource| {
            let meta = resource.metadata.clone().unwrap_or_default();
            let name = match kind {
                Some(_) => meta.name.clone(),
                None => kind::label(resource),
            };
            let mut row = vec![
                name,
                or_dash(&meta.tenant),
                meta.resource_version.to_string(),
                age(meta.create_time.as_ref(), now),
            ];
            if kind.is_some() {
                row.extend(kind_cells(resource));
            }
            row
        })
        .collect();
    output::table(&headers, &rows)
}

fn kind_headers(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Unspecified => &[],
        Kind::Tenant => &["DISPLAY NAME", "DISABLED"],
        Kind::ApiKey => &["ROLE", "PREFIX"],
        Kind::Budget => &["LIMIT", "WINDOW"],
        Kind::Policy => &["RULES"],
        Kind::Model => &["PROVIDER", "PRICE IN/OUT PER 1M"],
        Kind::RoutingTable => &["TIERS", "MODELS"],
        Kind::Agent => &["ROUTING TABLE", "POLICY"],
        Kind::Tool => &["ADDRESS", "SIDE EFFECTS"],
        Kind::AlertRule => &["METRIC", "THRESHOLD", "SEVERITY"],
    }
}

/// The cells under [`kind_headers`] for the resource's kind.
fn kind_cells(resource: &Resource) -> Vec<String> {
    match &resource.spec {
        None => Vec::new(),
        Some(Spec::Tenant(t)) => vec![or_dash(&t.display_name), t.disabled.to_string()],
        Some(Spec::ApiKey(k)) => {
            let role = Role::try_from(k.role).unwrap_or(Role::Unspecified);
            vec![
                short_enum(role.as_str_name(), "ROLE_"),
                or_dash(&k.key_prefix),
            ]
        }
        Some(Spec::Budget(b)) => {
            let window = BudgetWindow::try_from(b.window).unwrap_or(BudgetWindow::Unspecified);
            vec![
                format!("${:.2}", b.limit_usd),
                short_enum(window.as_str_name(), "BUDGET_WINDOW_"),
            ]
        }
        Some(Spec::Policy(p)) => vec![p.rules.len().to_string()],
        Some(Spec::Model(m)) => {
            let provider =
                ModelProvider::try_from(m.provider).unwrap_or(ModelProvider::Unspecified);
            vec![
                short_enum(provider.as_str_name(), "MODEL_PROVIDER_"),
                format!(
                    "${:.2}/${:.2}",
                    m.input_price_usd_per_mtok, m.output_price_usd_per_mtok
                ),
            ]
        }
        Some(Spec::RoutingTable(r)) => {
            let models: BTreeSet<&str> = r
                .tiers
                .iter()
                .flat_map(|t| t.targets.iter().map(|w| w.model.as_str()))
                .collect();
            vec![
                r.tiers.len().to_string(),
                or_dash(&models.into_iter().collect::<Vec<_>>().join(",")),
            ]
        }
        Some(Spec::Agent(a)) => vec![or_dash(&a.routing_table), or_dash(&a.policy)],
        Some(Spec::Tool(t)) => vec![or_dash(&t.address), t.side_effects.to_string()],
        Some(Spec::AlertRule(r)) => {
            let metric = AlertMetric::try_from(r.metric).unwrap_or(AlertMetric::Unspecified);
            let comparison = match AlertComparison::try_from(r.comparison).unwrap_or_default() {
                AlertComparison::Below => "<",
                AlertComparison::Above => ">",
                AlertComparison::Unspecified if metric == AlertMetric::CacheHitRate => "<",
                AlertComparison::Unspecified => ">",
            };
            let severity = AlertSeverity::try_from(r.severity).unwrap_or(AlertSeverity::Warning);
            vec![
                short_enum(metric.as_str_name(), "ALERT_METRIC_"),
                format!("{comparison} {}", r.threshold),
                short_enum(severity.as_str_name(), "ALERT_SEVERITY_"),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aios_proto::v1::{AgentSpec, ModelSpec, ObjectMeta};

    use super::*;

    fn resource(name: &str, spec: Spec) -> Resource {
        Resource {
            metadata: Some(ObjectMeta {
                name: name.into(),
                tenant: "acme".into(),
                resource_version: 12,
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            spec: Some(spec),
        }
    }

    #[test]
    fn tables_carry_the_kind_columns() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + 300);
        let model = resource(
            "mini",
            Spec::Model(ModelSpec {
                provider: ModelProvider::Openai.into(),
                input_price_usd_per_mtok: 0.15,
                output_price_usd_per_mtok: 0.6,
                ..Default::default()
            }),
        );
        assert_eq!(
            table(Some(Kind::Model), std::slice::from_ref(&model), now),
            "NAME  TENANT  VERSION  AGE  PROVIDER  PRICE IN/OUT PER 1M\n\
             mini  acme    12       5m   openai    $0.15/$0.60\n"
        );
        let agent = resource(
            "bot",
            Spec::Agent(AgentSpec {
                routing_table: "default".into(),
                ..Default::default()
            }),
        );
        assert_eq!(
            table(None, &[agent, model], now),
            "NAME        TENANT  VERSION  AGE\n\
             agent/bot   acme    12       5m\n\
             model/mini  acme    12       5m\n"
        );
    }
}
