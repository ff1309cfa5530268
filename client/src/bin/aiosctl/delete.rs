//! `aiosctl delete KIND NAME`: remove one resource.

use aios_client::{kind, manifest};
use aios_proto::v1::DeleteRequest;

use crate::{
    Globals,
    output::{self, Format},
    resources::{self, Failure},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// tenant, apikey, budget, policy, model, routingtable, agent or tool (singular or plural).
    kind: String,
    /// The resource's name.
    name: String,
    /// Owning tenant (default: the API key's own).
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Delete only if the stored version is still N (see `get`'s VERSION).
    #[arg(long, value_name = "N")]
    resource_version: Option<i64>,
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let kind = kind::parse_kind(&args.kind).map_err(|e| Failure::usage(e.to_string()))?;
    let mut client = resources::connect(globals).await?;
    let response = client
        .delete(DeleteRequest {
            kind: kind.into(),
            tenant: args.tenant.clone().unwrap_or_default(),
            name: args.name.clone(),
            resource_version: args.resource_version.unwrap_or(0),
        })
        .await?;
    let text = match globals.output {
        Format::Json => manifest::to_json(&response)?,
        Format::Yaml => manifest::to_yaml(&response)?,
        Format::Table => format!("{}/{} deleted\n", kind::kind_name(kind), args.name),
    };
    output::write_stdout(&text)?;
    Ok(0)
}
