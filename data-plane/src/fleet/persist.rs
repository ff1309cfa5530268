//! The last good config on disk, so a node restarted while the control
//! plane is down serves what it last had.
//!
//! `<state_dir>/config.snapshot` holds one [`SnapshotFile`] (protobuf). It
//! is replaced atomically: a temp file in the same directory is written and
//! fsynced, renamed over the old one, and the directory is fsynced, so a
//! crash leaves either the old snapshot or the new one, never a torn file.
//! One [`Writer`] task does the writing, off the async runtime, and always
//! writes the latest snapshot: pushes that arrive during a write coalesce.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use aios_proto::v1 as pb;
use prost::Message;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    checks::Host,
    snapshot::{Applied, NodeConfig, ResourceKey, admit},
};

/// File name of the snapshot inside the state directory.
pub const FILE_NAME: &str = "config.snapshot";
/// Where an unreadable snapshot is moved, for a human to look at.
pub const CORRUPT_FILE_NAME: &str = "config.snapshot.corrupt";
/// The temp file a write goes through.
const TEMP_FILE_NAME: &str = "config.snapshot.tmp";
/// The only layout this build reads and writes.
const FORMAT: u32 = 1;

/// The file's contents.
#[derive(Clone, PartialEq, Message)]
struct SnapshotFile {
    /// Layout version; a file with any other value is not read.
    #[prost(uint32, tag = "1")]
    format: u32,
    /// Store revision the snapshot is consistent with.
    #[prost(int64, tag = "2")]
    revision: i64,
    /// Every resource in force, as pushed.
    #[prost(message, repeated, tag = "3")]
    resources: Vec<pb::Resource>,
}

// === Loading ===

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The snapshot to start with (empty when nothing usable was found).
    pub config: NodeConfig,
    /// Whether a snapshot file existed and decoded (even if empty): the node
    /// was in sync once and can serve before it reaches a control plane.
    pub found: bool,
}

/// Reads the snapshot in `dir`. A missing file is an empty start; an
/// unreadable or corrupt one is logged, moved aside to
/// [`CORRUPT_FILE_NAME`], and also an empty start. Every resource is
/// validated again (this build's rules and this machine may differ from the
/// ones that accepted it); those that fail are dropped with a warning, and
/// the control plane pushes them again after the hello.
pub fn load(dir: &Path, host: &Host) -> Loaded {
    let path = dir.join(FILE_NAME);
    let empty = Loaded {
        config: NodeConfig::default(),
        found: false,
    };
    let file = match std::fs::read(&path) {
        Ok(bytes) => match SnapshotFile::decode(bytes.as_slice()) {
            Ok(file) if file.format == FORMAT => file,
            Ok(file) => {
                let reason = format!("unknown format {} (this build reads {FORMAT})", file.format);
                move_aside(dir, &reason);
                return empty;
            }
            Err(error) => {
                move_aside(dir, &error.to_string());
                return empty;
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => return empty,
        Err(error) => {
            move_aside(dir, &error.to_string());
            return empty;
        }
    };
    let mut config = NodeConfig {
        revision: file.revision,
        ..NodeConfig::default()
    };
    for resource in file.resources {
        match admit(&resource, host) {
            Ok(validated) => {
                let key = ResourceKey::new(validated.kind, &validated.tenant, &validated.name);
                let applied = Applied {
                    version: validated.resource_version,
                    resource,
                    validated,
                };
                config.resources.insert(key, Arc::new(applied));
            }
            Err(error) => {
                let meta = resource.metadata.unwrap_or_default();
                tracing::warn!(
                    tenant = %meta.tenant,
                    name = %meta.name,
                    version = meta.resource_version,
                    %error,
                    "dropping a saved config resource that is no longer valid"
                );
            }
        }
    }
    tracing::info!(
        path = %path.display(),
        revision = config.revision,
        resources = config.resources.len(),
        "loaded the last good config"
    );
    Loaded {
        config,
        found: true,
    }
}

fn move_aside(dir: &Path, reason: &str) {
    let path = dir.join(FILE_NAME);
    let aside = dir.join(CORRUPT_FILE_NAME);
    match std::fs::rename(&path, &aside) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            reason,
            "cannot read the saved config; starting empty"
        ),
        Err(error) => tracing::warn!(
            path = %path.display(),
            reason,
            %error,
            "cannot read the saved config, nor move it aside; starting empty"
        ),
    }
}

// === Writing ===

/// Replaces the snapshot in `dir` with `config`, atomically and durably.
/// Blocking: call it off the async runtime.
pub fn write(dir: &Path, config: &NodeConfig) -> io::Result<()> {
    let bytes = SnapshotFile {
        format: FORMAT,
        revision: config.revision,
        resources: config
            .resources
            .values()
            .map(|applied| applied.resource.clone())
            .collect(),
    }
    .encode_to_vec();
    let temp = dir.join(TEMP_FILE_NAME);
    let mut file = File::create(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(FILE_NAME))?;
    sync_dir(dir)
}

/// Makes the rename itself durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// The one task that writes snapshots. It holds only the latest one not yet
/// written (a `watch` channel), never a queue: a burst of pushes during a
/// slow write costs one more write, not one per push.
#[derive(Debug)]
pub struct Writer {
    latest: watch::Sender<Option<Arc<NodeConfig>>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer for `dir`.
    pub fn start(dir: PathBuf) -> Self {
        let (latest, pending) = watch::channel(None);
        let task = tokio::spawn(write_latest(dir, pending));
        Self { latest, task }
    }

    /// Schedules `config` to be written; returns at once.
    pub fn save(&self, config: Arc<NodeConfig>) {
        self.latest.send_replace(Some(config));
    }

    /// Writes what is still pending, then stops.
    pub async fn close(self) {
        drop(self.latest);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "config snapshot writer failed");
        }
    }
}

async fn write_latest(dir: PathBuf, mut pending: watch::Receiver<Option<Arc<NodeConfig>>>) {
    // Ends once the Writer is closed and the last value has been taken.
    while pending.changed().await.is_ok() {
        let Some(config) = pending.borrow_and_update().clone() else {
            continue;
        };
        let target = dir.clone();
        let revision = config.revision;
        match tokio::task::spawn_blocking(move || write(&target, &config)).await {
            Ok(Ok(())) => tracing::debug!(revision, "config snapshot written"),
            Ok(Err(error)) => tracing::warn!(
                path = %dir.join(FILE_NAME).display(),
                revision,
                %error,
                "cannot save the config snapshot; a restart would start from an older one"
            ),
            Err(error) => tracing::warn!(%error, "config snapshot write failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use aios_model::Kind;

    use super::*;
    use crate::fleet::{
        snapshot::apply_push,
        testing::{bad_model, host_with, model, push, tool},
    };

    fn host() -> Host {
        host_with(&[("OPENAI_API_KEY", "sk-test")])
    }

    fn config(revision: i64, updates: Vec<pb::Resource>) -> NodeConfig {
        apply_push(
            &NodeConfig::default(),
            &push(revision, updates, vec![]),
            &host(),
        )
        .config
    }

    fn versions(config: &NodeConfig) -> Vec<(String, i64)> {
        config
            .resources
            .iter()
            .map(|(k, a)| (k.name.clone(), a.version))
            .collect()
    }

    #[test]
    fn a_written_snapshot_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let saved = config(
            9,
            vec![tool("search", 4), model("gpt", 9, "OPENAI_API_KEY")],
        );
        write(dir.path(), &saved).unwrap();
        let loaded = load(dir.path(), &host());
        assert!(loaded.found);
        assert_eq!(loaded.config, saved);
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
    }

    #[test]
    fn an_empty_snapshot_still_counts_as_found() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &config(3, vec![])).unwrap();
        let loaded = load(dir.path(), &host());
        assert!(loaded.found);
        assert_eq!(loaded.config.revision, 3);
    }

    #[test]
    fn no_file_is_an_empty_start() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(dir.path(), &host());
        assert!(!loaded.found);
        assert_eq!(loaded.config, NodeConfig::default());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_the_node_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = b"\xff\xff\xff\xff not a snapshot".to_vec();
        for bytes in [garbage, Vec::new()] {
            std::fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
            let loaded = load(dir.path(), &host());
            assert!(!loaded.found);
            assert!(loaded.config.resources.is_empty());
            assert!(!dir.path().join(FILE_NAME).exists());
            assert_eq!(
                std::fs::read(dir.path().join(CORRUPT_FILE_NAME)).unwrap(),
                bytes,
                "kept for a human to inspect"
            );
        }
    }

    #[test]
    fn saved_resources_that_no_longer_pass_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile {
            format: FORMAT,
            revision: 7,
            resources: vec![
                tool("search", 5),
                bad_model("broken", 6),
                model("gpt", 7, "OPENAI_API_KEY"),
            ],
        };
        std::fs::write(dir.path().join(FILE_NAME), file.encode_to_vec()).unwrap();
        let on_this_node = load(dir.path(), &host());
        assert_eq!(
            versions(&on_this_node.config),
            vec![("gpt".into(), 7), ("search".into(), 5)]
        );
        // A node without the model's API key drops the model too.
        let elsewhere = load(dir.path(), &host_with(&[]));
        assert!(elsewhere.found);
        assert_eq!(versions(&elsewhere.config), vec![("search".into(), 5)]);
        let search = ResourceKey::new(Kind::Tool, "acme", "search");
        assert_eq!(elsewhere.config.get(&search).unwrap().version, 5);
    }

    #[test]
    fn a_write_replaces_the_whole_file_and_ignores_a_torn_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &config(5, vec![tool("search", 5), tool("fetch", 5)]),
        )
        .unwrap();
        // A crash in the middle of the next write leaves a torn temp file;
        // the snapshot itself is untouched.
        std::fs::write(dir.path().join(TEMP_FILE_NAME), b"\x0a\xff torn").unwrap();
        assert_eq!(
            versions(&load(dir.path(), &host()).config),
            vec![("fetch".into(), 5), ("search".into(), 5)]
        );
        write(dir.path(), &config(6, vec![tool("search", 6)])).unwrap();
        let loaded = load(dir.path(), &host());
        assert_eq!(loaded.config.revision, 6);
        assert_eq!(versions(&loaded.config), vec![("search".into(), 6)]);
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
    }

    #[test]
    fn a_write_error_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        assert!(write(&missing, &config(1, vec![])).is_err());
    }

    #[tokio::test]
    async fn the_writer_ends_with_the_latest_snapshot_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(dir.path().to_path_buf());
        for revision in 1..=50 {
            writer.save(Arc::new(config(revision, vec![tool("search", revision)])));
        }
        writer.close().await;
        let loaded = load(dir.path(), &host());
        assert_eq!(loaded.config.revision, 50);
        assert_eq!(versions(&loaded.config), vec![("search".into(), 50)]);
    }

    #[tokio::test]
    async fn a_writer_with_nothing_to_save_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        Writer::start(dir.path().to_path_buf()).close().await;
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
