//! Resources and pushes for the fleet module's tests.

use aios_proto::v1 as pb;

use super::checks::Host;

fn resource(name: &str, version: i64, spec: pb::resource::Spec) -> pb::Resource {
    pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: "acme".into(),
            resource_version: version,
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

/// A valid Tool `acme/<name>` at `version`.
pub(crate) fn tool(name: &str, version: i64) -> pb::Resource {
    resource(
        name,
        version,
        pb::resource::Spec::Tool(pb::ToolSpec {
            description: "Searches the web".into(),
            address: "http://tools.internal:7070".into(),
            ..Default::default()
        }),
    )
}

/// A valid OpenAI Model `acme/<name>` reading its key from `api_key_env`
/// (empty = none).
pub(crate) fn model(name: &str, version: i64, api_key_env: &str) -> pb::Resource {
    resource(
        name,
        version,
        pb::resource::Spec::Model(pb::ModelSpec {
            provider: pb::ModelProvider::Openai as i32,
            provider_model: "gpt-4o-mini".into(),
            api_key_env: api_key_env.into(),
            ..Default::default()
        }),
    )
}

/// A Model `acme/<name>` that fails validation on `model.endpoint`.
pub(crate) fn bad_model(name: &str, version: i64) -> pb::Resource {
    resource(
        name,
        version,
        pb::resource::Spec::Model(pb::ModelSpec {
            provider: pb::ModelProvider::OpenaiCompatible as i32,
            provider_model: "llama".into(),
            endpoint: "not a url".into(),
            ..Default::default()
        }),
    )
}

/// A push at `revision`.
pub(crate) fn push(
    revision: i64,
    updates: Vec<pb::Resource>,
    removals: Vec<pb::ResourceRef>,
) -> pb::ConfigPush {
    pb::ConfigPush {
        nonce: format!("n{revision}"),
        revision,
        updates,
        removals,
        initial: false,
    }
}

/// A host whose environment holds exactly `vars`.
pub(crate) fn host_with(vars: &[(&str, &str)]) -> Host {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Host::with_env(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}
