//! What the resource commands (`apply`, `get`, `delete`, `diff`, `audit`)
//! share: the exit-code contract, connecting with an API key, reading
//! manifests for one batch, and small table formatters.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use aios_client::{
    AdminClient, ClientError,
    admin::{MAX_BATCH, describe_status_with},
    kind,
    manifest::{self, Manifest, ManifestError},
};
use aios_runtime::cli::{EXIT_CONFIG, EXIT_FAILURE};

use crate::Globals;

/// A failed command: the exit code and the one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// [`EXIT_CONFIG`] for usage and input errors, [`EXIT_FAILURE`] for
    /// failures after the command started (unreachable or refusing server).
    pub code: i32,
    /// Printed as `error: <message>`.
    pub message: String,
}

impl Failure {
    /// Bad flags or input: exit 2, before any server is contacted.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_CONFIG,
            message: message.into(),
        }
    }

    /// The server could not be reached or refused: exit 1.
    pub fn server(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::server(message)
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Endpoint { .. } | ClientError::ApiKey => Self::usage(error.to_string()),
            ClientError::Connect { .. } | ClientError::Rpc(_) => Self::server(error.to_string()),
        }
    }
}

impl From<ManifestError> for Failure {
    fn from(error: ManifestError) -> Self {
        match error {
            ManifestError::Read { .. }
            | ManifestError::Parse { .. }
            | ManifestError::Document { .. } => Self::usage(error.to_string()),
            // Rendering what the server sent failed: not the user's input.
            ManifestError::Descriptors(_) | ManifestError::Render { .. } => {
                Self::server(error.to_string())
            }
        }
    }
}

/// An `AdminService` client; these commands need an API key.
pub async fn connect(globals: &Globals) -> Result<AdminClient, Failure> {
    let Some(key) = globals.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(Failure::usage(
            "no API key: pass --api-key or set AIOS_API_KEY",
        ));
    };
    Ok(AdminClient::connect(&globals.endpoint, Some(key), globals.timeout).await?)
}

/// Reads every manifest and checks that they fit one all-or-nothing
/// `BatchApply`: at least one, at most [`MAX_BATCH`], no object twice.
pub fn load_batch(paths: &[PathBuf]) -> Result<Vec<Manifest>, Failure> {
    let manifests = manifest::load_all(paths)?;
    if manifests.is_empty() {
        return Err(Failure::usage("no resources found in the given manifests"));
    }
    if manifests.len() > MAX_BATCH {
        return Err(Failure::usage(format!(
            "{} resources in the manifests; one apply is all-or-nothing and carries at most {MAX_BATCH}: split them",
            manifests.len()
        )));
    }
    let mut seen: HashMap<(i32, String, String), &Manifest> = HashMap::new();
    for manifest in &manifests {
        let meta = manifest.resource.metadata.clone().unwrap_or_default();
        let key = (
            kind::kind_of(&manifest.resource) as i32,
            meta.tenant,
            meta.name,
        );
        if let Some(first) = seen.insert(key, manifest) {
            return Err(Failure::usage(format!(
                "{}: {} is also defined in {}",
                manifest.source(),
                kind::label(&manifest.resource),
                first.source()
            )));
        }
    }
    Ok(manifests)
}

/// A failed `BatchApply`. The first time the server's violations name
/// `resources[i]`, the object and the file and document it came from follow.
pub fn batch_failure(error: ClientError, manifests: &[Manifest]) -> Failure {
    let ClientError::Rpc(status) = &error else {
        return error.into();
    };
    let named = RefCell::new(HashSet::new());
    let annotate = |field: &str| {
        let first_mention = batch_index(field)
            .filter(|i| named.borrow_mut().insert(*i))
            .and_then(|i| manifests.get(i));
        match first_mention {
            Some(manifest) => format!(
                "{field} ({} in {})",
                kind::label(&manifest.resource),
                manifest.source()
            ),
            None => field.to_string(),
        }
    };
    Failure::server(describe_status_with(status, &annotate))
}

/// `resources[3].agent.policy` → 3.
fn batch_index(field: &str) -> Option<usize> {
    let rest = field.strip_prefix("resources[")?;
    rest[..rest.find(']')?].parse().ok()
}

// === Table cells ===

/// Age since `time` like kubectl: `45s`, `12m`, `5h`, `3d`; `-` if unset.
pub fn age(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(since) = time.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".into();
    };
    let seconds = now
        .duration_since(since)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `ROLE_ADMIN` → `admin`: an enum value without its type prefix.
pub fn short_enum(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// An empty cell shown as `-`.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

    use super::*;

    #[test]
    fn batch_violations_name_their_file_once() {
        let manifests = manifest::parse_str(
            "b.yaml",
            "metadata: {name: a}\ntool: {}\n---\nmetadata: {name: x}\nbudget: {}\n",
        )
        .unwrap();
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid",
            ErrorDetails::with_bad_request(vec![
                FieldViolation::new("resources[1].budget.window", "is required"),
                FieldViolation::new("resources[1].budget.limit_usd", "must be > 0"),
                FieldViolation::new("resources[7].tool", "out of range"),
            ]),
        );
        let failure = batch_failure(ClientError::Rpc(status), &manifests);
        assert_eq!(failure.code, EXIT_FAILURE);
        assert_eq!(
            failure.message,
            "INVALID_ARGUMENT: resources[1].budget.window (budget/x in b.yaml, document 2): is required; \
             resources[1].budget.limit_usd: must be > 0; resources[7].tool: out of range"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |ago: u64| prost_types::Timestamp {
            seconds: (1_000_000 - ago) as i64,
            nanos: 0,
        };
        assert_eq!(age(Some(&at(5)), now), "5s");
        assert_eq!(age(Some(&at(600)), now), "10m");
        assert_eq!(age(Some(&at(3 * 3600)), now), "3h");
        assert_eq!(age(Some(&at(3 * 86_400)), now), "3d");
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn batch_indexes_come_from_field_paths() {
        assert_eq!(batch_index("resources[3].agent.policy"), Some(3));
        assert_eq!(batch_index("resources[12]"), Some(12));
        assert_eq!(batch_index("resource.name"), None);
        assert_eq!(short_enum("BUDGET_WINDOW_DAY", "BUDGET_WINDOW_"), "day");
        assert_eq!(
            short_enum("MODEL_PROVIDER_OPENAI_COMPATIBLE", "MODEL_PROVIDER_"),
            "openai-compatible"
        );
    }
}
