//! Node-side checks: what the control plane cannot know about this node.
//!
//! [`aios_model::validate`] decides whether a resource is well formed; these
//! checks decide whether *this node* can run it (is the provider's API key
//! in its environment? does it have the built-in tool a Tool names?). A resource that fails one is NACKed like an invalid
//! one, so the operator sees the reason on the node's record, and the node
//! keeps the version it held before.
//!
//! To add a check, write a `fn(&Host, &Validated, &mut Vec<FieldViolation>)`
//! and list it in [`CHECKS`]; what it needs from the machine goes into
//! [`Host`] as an injectable lookup, so tests never touch the real machine.

use std::{fmt, sync::Arc};

use aios_model::{FieldViolation, Spec, Validated};

/// Looks up an environment variable; `None` when it is unset.
type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;
/// Reads a file; the error says why it cannot be read.
type FileLookup = dyn Fn(&str) -> Result<String, String> + Send + Sync;
/// What is at a path: `Ok(true)` a directory, `Ok(false)` a file, or why
/// nothing usable is.
type PathLookup = dyn Fn(&str) -> Result<bool, String> + Send + Sync;

/// What the checks may ask about the machine the node runs on.
#[derive(Clone)]
pub struct Host {
    env: Arc<EnvLookup>,
    file: Arc<FileLookup>,
    path: Arc<PathLookup>,
}

impl Host {
    /// The real machine: this process's environment and file system.
    pub fn current() -> Self {
        Self::with_env(|name| std::env::var(name).ok())
    }

    /// A machine whose environment is `env` (for tests); files are read
    /// from the real file system.
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            env: Arc::new(env),
            file: Arc::new(|path| std::fs::read_to_string(path).map_err(|e| e.to_string())),
            path: Arc::new(|path| {
                std::fs::metadata(path)
                    .map(|m| m.is_dir())
                    .map_err(|e| e.to_string())
            }),
        }
    }

    /// This machine, with paths looked up by `path` instead (for tests).
    pub fn with_paths(
        mut self,
        path: impl Fn(&str) -> Result<bool, String> + Send + Sync + 'static,
    ) -> Self {
        self.path = Arc::new(path);
        self
    }

    /// This machine, with files read by `file` instead (for tests).
    pub fn with_files(
        mut self,
        file: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.file = Arc::new(file);
        self
    }

    /// The value of environment variable `name`, if set and non-empty.
    fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    /// Every problem this node has with `resource`; empty = it can run it.
    pub fn check(&self, resource: &Validated) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        for check in CHECKS {
            check(self, resource, &mut violations);
        }
        violations
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

/// One node-side check: appends a violation for each problem it finds.
type Check = fn(&Host, &Validated, &mut Vec<FieldViolation>);

/// Every node-side check, run in order on each resource.
const CHECKS: &[Check] = &[
    model_api_key_is_set,
    model_api_key_file_is_readable,
    local_model_files_exist,
    builtin_tool_exists,
];

// === Checks ===

/// A remote model's API key is read from the node's environment at call
/// time; without it every call would fail, so refuse the model up front.
fn model_api_key_is_set(host: &Host, resource: &Validated, out: &mut Vec<FieldViolation>) {
    let Spec::Model(model) = &resource.spec else {
        return;
    };
    if let Some(name) = model.api_key_env.as_deref().filter(|n| !n.is_empty())
        && host.env_var(name).is_none()
    {
        out.push(FieldViolation::new(
            "model.api_key_env",
            format!("environment variable {name} is not set on this node"),
        ));
    }
}

/// A remote model's key file (a mounted secret) must be readable and not
/// empty on this node. The error never quotes the file's content.
fn model_api_key_file_is_readable(
    host: &Host,
    resource: &Validated,
    out: &mut Vec<FieldViolation>,
) {
    let Spec::Model(model) = &resource.spec else {
        return;
    };
    let Some(path) = model.api_key_file.as_deref() else {
        return;
    };
    let problem = match (host.file)(path) {
        Ok(key) if key.trim().is_empty() => Some("it is empty".to_string()),
        Ok(_) => None,
        Err(error) => Some(error),
    };
    if let Some(problem) = problem {
        out.push(FieldViolation::new(
            "model.api_key_file",
            format!("cannot use {path} on this node: {problem}"),
        ));
    }
}

/// A LOCAL model is loaded from `path` on each node: a GGUF file, or a
/// directory with a safetensors BERT-family model. A node without them
/// could only fail every call, so it refuses the model and says what is
/// missing. (Whether the files are *valid* shows when the model loads.)
fn local_model_files_exist(host: &Host, resource: &Validated, out: &mut Vec<FieldViolation>) {
    let Spec::Model(model) = &resource.spec else {
        return;
    };
    let Some(path) = model.path.as_deref() else {
        return;
    };
    let problem = match (host.path)(path) {
        Err(error) => Some(error),
        Ok(false) => None,
        Ok(true) => {
            let missing: Vec<&str> = crate::local::MODEL_DIR_FILES
                .iter()
                .copied()
                .filter(|file| !matches!((host.path)(&format!("{path}/{file}")), Ok(false)))
                .collect();
            (!missing.is_empty()).then(|| format!("the directory lacks {}", missing.join(", ")))
        }
    };
    if let Some(problem) = problem {
        out.push(FieldViolation::new(
            "model.path",
            format!("cannot load {path} on this node: {problem}"),
        ));
    }
}

/// A Tool at `address: builtin` names a tool built into the node; a node
/// without it (an older build) could only fail every call, so it refuses
/// the tool and the operator sees which node and why.
fn builtin_tool_exists(_: &Host, resource: &Validated, out: &mut Vec<FieldViolation>) {
    let Spec::Tool(tool) = &resource.spec else {
        return;
    };
    if tool.is_builtin() && crate::tools::builtin::get(&tool.remote_name).is_none() {
        out.push(FieldViolation::new(
            "tool.remote_name",
            format!(
                "this node has no built-in tool '{}' (it has: {})",
                tool.remote_name,
                crate::tools::builtin::names()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use aios_proto::v1 as pb;

    use super::*;
    use crate::fleet::testing::{host_with as host, model, tool};

    fn validated(resource: &pb::Resource) -> Validated {
        aios_model::validate(resource).unwrap()
    }

    #[test]
    fn a_model_needs_its_api_key_variable_on_the_node() {
        let gpt = validated(&model("gpt", 1, "OPENAI_API_KEY"));
        assert_eq!(host(&[("OPENAI_API_KEY", "sk-1")]).check(&gpt), vec![]);
        for missing in [host(&[]), host(&[("OPENAI_API_KEY", "")])] {
            let violations = missing.check(&gpt);
            assert_eq!(
                violations,
                vec![FieldViolation::new(
                    "model.api_key_env",
                    "environment variable OPENAI_API_KEY is not set on this node"
                )]
            );
        }
    }

    #[test]
    fn a_model_key_file_must_be_readable_and_not_empty() {
        let mut resource = model("gpt", 1, "");
        if let Some(pb::resource::Spec::Model(spec)) = resource.spec.as_mut() {
            spec.api_key_file = "/run/secrets/openai".into();
        }
        let gpt = validated(&resource);
        let with = |content: Result<&'static str, &'static str>| {
            host(&[]).with_files(move |_| content.map(String::from).map_err(String::from))
        };
        assert_eq!(with(Ok("sk-1\n")).check(&gpt), vec![]);
        let refused = with(Err("No such file or directory")).check(&gpt);
        assert_eq!(refused[0].field, "model.api_key_file");
        assert_eq!(
            refused[0].description,
            "cannot use /run/secrets/openai on this node: No such file or directory"
        );
        assert!(
            with(Ok("  \n")).check(&gpt)[0]
                .description
                .contains("empty")
        );
    }

    #[test]
    fn a_local_model_needs_its_files_on_the_node() {
        let local = |path: &str| {
            validated(&pb::Resource {
                metadata: Some(pb::ObjectMeta {
                    name: "local".into(),
                    tenant: "acme".into(),
                    ..Default::default()
                }),
                spec: Some(pb::resource::Spec::Model(pb::ModelSpec {
                    provider: pb::ModelProvider::Local as i32,
                    path: path.into(),
                    ..Default::default()
                })),
            })
        };
        // A file system with one GGUF file and one complete and one
        // incomplete model directory.
        let machine = host(&[]).with_paths(|path| match path {
            "/models/a.gguf" | "/models/bert/model.safetensors" => Ok(false),
            "/models/bert/config.json" | "/models/bert/tokenizer.json" => Ok(false),
            "/models/bert" | "/models/half" => Ok(true),
            "/models/half/config.json" => Ok(false),
            _ => Err("No such file or directory".into()),
        });
        assert_eq!(machine.check(&local("/models/a.gguf")), vec![]);
        assert_eq!(machine.check(&local("/models/bert")), vec![]);
        let missing = machine.check(&local("/models/b.gguf"));
        assert_eq!(
            missing,
            vec![FieldViolation::new(
                "model.path",
                "cannot load /models/b.gguf on this node: No such file or directory"
            )]
        );
        let half = machine.check(&local("/models/half"));
        assert_eq!(
            half[0].description,
            "cannot load /models/half on this node: the directory lacks model.safetensors, tokenizer.json"
        );
    }

    #[test]
    fn a_builtin_tool_must_be_one_this_node_has() {
        let builtin = |name: &str, remote_name: &str| {
            let mut resource = tool(name, 1);
            if let Some(pb::resource::Spec::Tool(spec)) = resource.spec.as_mut() {
                spec.address = "builtin".into();
                spec.remote_name = remote_name.into();
            }
            validated(&resource)
        };
        assert_eq!(host(&[]).check(&builtin("calc", "math.evaluate")), vec![]);
        assert_eq!(host(&[]).check(&builtin("time.now", "")), vec![]);
        let violations = host(&[]).check(&builtin("shell", "shell.exec"));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "tool.remote_name");
        assert!(
            violations[0]
                .description
                .starts_with("this node has no built-in tool 'shell.exec' (it has: time.now,"),
            "{violations:?}"
        );
    }

    #[test]
    fn resources_without_node_requirements_pass() {
        assert_eq!(host(&[]).check(&validated(&tool("search", 1))), vec![]);
        assert_eq!(host(&[]).check(&validated(&model("m", 1, ""))), vec![]);
    }
}
