//! A real etcd 3.4 for tests: one single-member cluster per [`EtcdServer`],
//! on free loopback ports with a fresh data directory, killed and removed
//! when dropped. Several may run at once in one test process.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aios_control_plane::store::etcd::{EtcdOptions, EtcdStore};
use anyhow::{Context, Result, bail};

/// How long etcd may take to elect itself and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Port races (another process binding the port we picked) are retried.
const START_ATTEMPTS: usize = 4;

/// Distinguishes servers started by one test process.
static STARTED: AtomicU32 = AtomicU32::new(0);

/// A running etcd. Killed (by PID) and its data directory removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client: SocketAddr,
    /// Holds the data directory and etcd's log; removed on drop.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves a read.
    ///
    /// The binary is `$AIOS_TEST_ETCD`, else `etcd` on `PATH`, else
    /// `/usr/bin/etcd` (Debian's `etcd-server`).
    pub fn start() -> Result<Self> {
        let binary = etcd_binary()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary)? {
                Started::Ready(server) => return Ok(server),
                Started::PortTaken(log) => last = Some(log),
            }
        }
        bail!(
            "etcd could not bind free ports in {START_ATTEMPTS} attempts; last log:\n{}",
            last.unwrap_or_default()
        )
    }

    /// `127.0.0.1:PORT` of the client listener.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// Kills etcd and removes its data.
    pub fn stop(self) {
        drop(self);
    }

    fn start_once(binary: &Path) -> Result<Started> {
        let client = free_addr()?;
        let peer = free_addr()?;
        let dir = tempfile::tempdir().context("etcd temp dir")?;
        let id = format!(
            "aios-test-{}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
        );
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path).context("etcd log file")?;
        let client_url = format!("http://{client}");
        let peer_url = format!("http://{peer}");
        let mut command = Command::new(binary);
        // Hermetic: ETCD_* in the caller's environment would override flags.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("ETCD_") && key != "ETCD_UNSUPPORTED_ARCH" {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("--name")
            .arg(&id)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{id}={peer_url}")])
            .args(["--initial-cluster-token", &id])
            .args(["--initial-cluster-state", "new"])
            // 3.4 logs through the deprecated capnslog unless told zap.
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: nobody has to drain it while etcd runs.
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let mut server = Self { child, client, dir };
        match server.wait_ready()? {
            None => Ok(Started::Ready(server)),
            Some(log) if log.contains("address already in use") => Ok(Started::PortTaken(log)),
            Some(log) => bail!("etcd exited during startup:\n{log}"),
        }
    }

    /// Waits for a real read to succeed; `Some(log)` if etcd exited first.
    fn wait_ready(&mut self) -> Result<Option<String>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(Some(self.log()));
            }
            if TcpStream::connect_timeout(&self.client, Duration::from_millis(200)).is_ok()
                && answers(&self.endpoint())
            {
                return Ok(None);
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd on {} did not answer within {READY_TIMEOUT:?}; log:\n{}",
                    self.client,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL by PID: tests need no graceful shutdown, and the data dir
        // (TempDir, dropped after this) is thrown away anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Started {
    Ready(EtcdServer),
    /// etcd lost a port race; its log.
    PortTaken(String),
}

/// Whether a store read on `endpoint` succeeds within a second. Runs on
/// its own thread and runtime, so `start` works inside async tests too.
fn answers(endpoint: &str) -> bool {
    let options = EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        call_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..EtcdOptions::default()
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return false;
                };
                // `connect` performs a linearizable read before returning.
                runtime.block_on(EtcdStore::connect(options)).is_ok()
            })
            .join()
            .unwrap_or(false)
    })
}

fn etcd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("AIOS_TEST_ETCD") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("AIOS_TEST_ETCD={} does not exist", path.display());
        }
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|path| path.is_file())
        .context(
            "etcd not found: install Debian's etcd-server (apt-get install etcd-server) or set AIOS_TEST_ETCD",
        )
}

/// A loopback port that refuses connections for as long as this lives:
/// bound (so no one else gets it) but never listening.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Reserves a port.
    pub fn new() -> Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4().context("socket")?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("bind a loopback port")?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

/// A loopback address nothing listens on right now (bound, then released).
fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(listener.local_addr()?)
}
