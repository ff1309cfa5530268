//! `aios-control-plane` as a child process for benchmarks, so its memory
//! and CPU time can be read from /proc.

#![allow(clippy::print_stderr)] // a stale-binary note for the person running the bench

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{admin::ADMIN_KEY, control_plane_args};

/// How long the process may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `aios-control-plane` on free loopback ports with [`ADMIN_KEY`] as its
/// bootstrap key. Killed on drop.
#[derive(Debug)]
pub struct PlaneProcess {
    child: Child,
    grpc: SocketAddr,
    /// The last stderr lines, for error messages.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

impl PlaneProcess {
    /// The `aios-control-plane` binary next to this one. The harness's
    /// `bin()` resolves from a test executable in `deps/`; this program runs
    /// from the profile directory itself.
    pub fn program() -> Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let program = exe
            .parent()
            .map(|dir| dir.join("aios-control-plane"))
            .filter(|path| path.is_file())
            .with_context(|| {
                format!(
                    "no aios-control-plane next to {}: run `cargo build --release -p aios-control-plane -p aios-tests --bins` first",
                    exe.display()
                )
            })?;
        // `cargo run --bin bench-…` rebuilds this program, not the
        // control plane's binary: say so when that one looks stale.
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified());
        if let (Ok(bench), Ok(plane)) = (modified(&exe), modified(&program))
            && plane < bench
        {
            eprintln!(
                "note: {} is older than this program; if the control plane changed, rebuild both in this profile: cargo build [--release] -p aios-control-plane -p aios-tests --bins",
                program.display()
            );
        }
        Ok(program)
    }

    /// Starts `program` on `store` (`embedded`: a fresh temp store; or an
    /// `etcd://` URL) and waits until it serves.
    pub async fn start(program: &Path, store: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = match store {
            "embedded" => format!("embedded:{}", dir.path().join("cp.db").display()),
            etcd => etcd.to_string(),
        };
        let mut command = Command::new(program);
        // Hermetic, like the test harness: only the settings given here.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AIOS_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(control_plane_args(&store))
            .env("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (serving_tx, serving_rx) = tokio::sync::oneshot::channel();
        let tail = stderr_tail.clone();
        // Drains stderr for the process's whole life (a full pipe would
        // stall its logging), keeping the tail and reporting `serving`.
        std::thread::spawn(move || {
            let mut serving_tx = Some(serving_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "serving"
                    && let Some(tx) = serving_tx.take()
                {
                    let _ = tx.send(value["grpc"].as_str().unwrap_or_default().to_string());
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.push_back(line);
                    if tail.len() > 20 {
                        tail.pop_front();
                    }
                }
            }
        });
        let mut plane = Self {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_tail,
            _dir: dir,
        };
        let grpc = match tokio::time::timeout(START_TIMEOUT, serving_rx).await {
            Ok(Ok(grpc)) => grpc,
            Ok(Err(_)) => bail!(
                "the control plane exited before serving: {}",
                plane.stderr_text()
            ),
            Err(_) => bail!(
                "the control plane was not serving within {START_TIMEOUT:?}: {}",
                plane.stderr_text()
            ),
        };
        plane.grpc = grpc
            .parse()
            .with_context(|| format!("serving line has no gRPC address: '{grpc}'"))?;
        Ok(plane)
    }

    /// `http://ADDR` of its gRPC listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    /// CPU time it has used so far, user and system, of all its threads
    /// (fields 14 and 15 of /proc/PID/stat, in USER_HZ ticks: 100 a second
    /// on Linux, whatever the kernel's own tick).
    pub fn cpu_time(&self) -> Result<Duration> {
        const USER_HZ: u64 = 100;
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // The command name (field 2) may hold spaces: count from after it.
        let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
        let ticks = ticks.with_context(|| format!("no CPU times in {path}"))?;
        Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
    }

    /// The last stderr lines, for an error message.
    pub fn stderr_text(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        if tail.is_empty() {
            "(no stderr)".into()
        } else {
            format!("stderr ends with:\n{}", tail.join("\n"))
        }
    }
}

impl Drop for PlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
