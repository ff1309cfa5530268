//! End-to-end harness for aios: starts real planes, in this process or as
//! the real binaries, on free loopback ports, and stops them when dropped.
//!
//! Binaries are looked up next to the test executable (`target/<profile>/`);
//! the README's test command builds them first (`scripts/test.sh`).

pub mod etcd;

pub mod admin;

pub mod bench;
/// Running `aiosctl` and reading its JSON output.
pub mod cli;

pub mod fake_provider;

pub mod fleet;

pub mod telemetry;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fields an INVALID_ARGUMENT status names in its `BadRequest` details,
/// in order. Panics (a test failure) when the details are missing.
#[allow(clippy::expect_used)] // a test helper: missing details fail the test
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .expect("the status carries BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a workspace binary built for the same profile as this test.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: run scripts/test.sh, or `cargo build --workspace --bins` before `cargo test`",
            path.display()
        );
    }
    Ok(path)
}

/// The Python with the polyglot test packages, from `AIOS_TEST_PYTHON`
/// (set by `scripts/test.sh`, which installs `tests/python/requirements.txt`).
pub fn python() -> Result<PathBuf> {
    let path = std::env::var_os("AIOS_TEST_PYTHON").map(PathBuf::from).context(
        "AIOS_TEST_PYTHON is not set: run scripts/test.sh, which creates a venv with tests/python/requirements.txt",
    )?;
    if !path.is_file() {
        bail!("AIOS_TEST_PYTHON={} does not exist", path.display());
    }
    Ok(path)
}

// === Spawned processes ===

/// A running binary. Killed on drop unless it already exited.
#[derive(Debug)]
pub struct Process {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub stderr: Vec<String>,
}

impl Process {
    /// Starts `program` with `args`, stderr captured line by line, stdout piped.
    pub fn spawn(program: &Path, args: &[&str]) -> Result<Self> {
        Self::spawn_with_env(program, args, &[])
    }

    /// Like [`Process::spawn`], with extra environment variables.
    pub fn spawn_with_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut command = Command::new(program);
        // Hermetic: the caller's AIOS_* settings must not leak into the run.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AIOS_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let stderr_lines = forward_lines(stderr);
        Ok(Self {
            child,
            stderr_lines,
            stderr: Vec::new(),
        })
    }

    /// Reads stderr until a JSON log line with `"message": message` appears.
    pub fn wait_for_log(&mut self, message: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr_lines.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "no '{message}' log line within {timeout:?}; stderr so far: {:#?}",
                    self.stderr
                )
            })?;
            self.stderr.push(line.clone());
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["message"] == message
            {
                return Ok(value);
            }
        }
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed");
        }
        Ok(())
    }

    /// Waits for exit, collecting the rest of stderr.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.stderr.extend(self.stderr_lines.iter());
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "still running after {timeout:?}; stderr: {:#?}",
                    self.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's stdout, line by line.
    pub fn stdout_lines(&mut self) -> Result<mpsc::Receiver<String>> {
        let stdout = self.child.stdout.take().context("stdout already taken")?;
        Ok(forward_lines(stdout))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines<R: std::io::Read + Send + 'static>(reader: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A plane binary started with `--log-format json` on free loopback ports.
#[derive(Debug)]
pub struct SpawnedPlane {
    /// The process.
    pub process: Process,
    /// Bound gRPC address.
    pub grpc: SocketAddr,
    /// Bound admin HTTP address.
    pub admin: SocketAddr,
    /// Scratch directory (state, config files).
    pub dir: tempfile::TempDir,
}

impl SpawnedPlane {
    /// Starts `aios-control-plane` with `extra` flags on a fresh embedded store.
    pub fn control_plane(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = format!("embedded:{}", dir.path().join("cp.db").display());
        Self::control_plane_on(&store, &[], extra, dir)
    }

    /// Starts `aios-control-plane` on `store` with extra environment and flags.
    pub fn control_plane_on(
        store: &str,
        env: &[(&str, &str)],
        extra: &[&str],
        dir: tempfile::TempDir,
    ) -> Result<Self> {
        let mut args = control_plane_args(store);
        args.extend_from_slice(extra);
        Self::start("aios-control-plane", &args, env, dir)
    }

    /// Starts `aios-data-plane` streaming config from the control plane at
    /// `url` with the node key `key`, and waits until it has applied its
    /// first push (and so is ready).
    pub fn data_plane_of(url: &str, key: &str, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--control-plane", url];
        args.extend_from_slice(extra);
        let mut plane = Self::data_plane_with_env(&args, &[("AIOS_NODE_KEY", key)])?;
        plane
            .process
            .wait_for_log("config applied", Duration::from_secs(30))?;
        Ok(plane)
    }

    /// Starts `aios-data-plane` with `extra` flags (no node key: it never
    /// gets config, so it stays NOT_SERVING).
    pub fn data_plane(extra: &[&str]) -> Result<Self> {
        Self::data_plane_with_env(extra, &[])
    }

    fn data_plane_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state").display().to_string();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
            &state,
            "--node-id",
            "e2e-node",
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        Self::start("aios-data-plane", &args, env, dir)
    }

    fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
    ) -> Result<Self> {
        let mut process = Process::spawn_with_env(&bin(name)?, args, env)?;
        let serving = process.wait_for_log("serving", Duration::from_secs(30))?;
        let addr = |key: &str| -> Result<SocketAddr> {
            serving[key]
                .as_str()
                .with_context(|| format!("serving line lacks {key}: {serving}"))?
                .parse()
                .context("address")
        };
        Ok(Self {
            grpc: addr("grpc")?,
            admin: addr("admin")?,
            process,
            dir,
        })
    }

    /// `http://ADDR` of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// The flags a test control plane runs with on `store`: both listeners on
/// free loopback ports (read back from the JSON `serving` line).
pub fn control_plane_args(store: &str) -> Vec<&str> {
    vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--log-format",
        "json",
    ]
}

// === HTTP ===

/// A plain HTTP/1.1 GET: returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad HTTP response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// A plain HTTP/1.1 POST of a JSON `body` with extra `headers`: returns the
/// status code and the (de-chunked) body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad HTTP response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// Decodes a `Transfer-Encoding: chunked` body (axum chunks streamed bodies);
/// returns the input unchanged if it is not chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 {
            return out;
        }
        let Some(chunk) = after.get(..size) else {
            return body.to_string();
        };
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or("");
    }
}
