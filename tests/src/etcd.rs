//! A real etcd 3.4 for tests: one single-member cluster per [`EtcdServer`],
//! on free loopback ports with a fresh data directory, killed and removed
//! when dropped. Several may run at once in one test process. With
//! [`TlsFiles`] (a CA and certificates made by the `openssl` tool) etcd
//! serves clients over TLS and requires a client certificate.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aios_control_plane::store::etcd::{EtcdOptions, EtcdStore, EtcdTls};
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
    /// What a client needs to reach it, when it serves TLS.
    tls: Option<EtcdTls>,
    /// Holds the data directory and etcd's log; removed on drop.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves a read.
    ///
    /// The binary is `$AIOS_TEST_ETCD`, else `etcd` on `PATH`, else
    /// `/usr/bin/etcd` (Debian's `etcd-server`).
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS with `files`' server
    /// certificate, requiring client certificates signed by `files`' CA
    /// (`--client-cert-auth`). Peers stay on plain HTTP on loopback.
    pub fn start_tls(files: &TlsFiles) -> Result<Self> {
        Self::start_with(Some(files))
    }

    fn start_with(tls: Option<&TlsFiles>) -> Result<Self> {
        let binary = etcd_binary()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary, tls)? {
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

    /// Options that reach this server: its endpoint and, for a TLS server,
    /// its CA and a client certificate it accepts.
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.endpoint()],
            tls: self.tls.clone(),
            ..EtcdOptions::default()
        }
    }

    /// Turns on etcd's authentication with one user, `root` (role root),
    /// through etcd's v3 HTTP gateway; plain-HTTP servers only.
    pub fn enable_auth(&self, root_password: &str) -> Result<()> {
        if self.tls.is_some() {
            bail!("enable_auth speaks plain HTTP; start this etcd without TLS");
        }
        let user = format!(r#"{{"name":"root","password":"{root_password}"}}"#);
        self.post("/v3/auth/user/add", &user)?;
        self.post("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#)?;
        self.post("/v3/auth/enable", "{}")
    }

    /// POSTs JSON to etcd's v3 HTTP gateway; fails unless it answers 200.
    fn post(&self, path: &str, body: &str) -> Result<()> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(self.client).context("connect to etcd")?;
        stream.set_read_timeout(Some(READY_TIMEOUT))?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("etcd {path}: {response}");
        }
        Ok(())
    }

    /// Kills etcd and removes its data.
    pub fn stop(self) {
        drop(self);
    }

    fn start_once(binary: &Path, tls: Option<&TlsFiles>) -> Result<Started> {
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{client}");
        let peer_url = format!("http://{peer}");
        let mut command = Command::new(binary);
        if let Some(files) = tls {
            command
                .arg("--cert-file")
                .arg(&files.server_cert)
                .arg("--key-file")
                .arg(&files.server_key)
                .arg("--trusted-ca-file")
                .arg(&files.ca_cert)
                .arg("--client-cert-auth");
        }
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
        let tls = tls.map(TlsFiles::client_tls);
        let mut server = Self {
            child,
            client,
            tls,
            dir,
        };
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
                && answers(self.options())
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

/// Whether a store read with `options` succeeds within a second. Runs on
/// its own thread and runtime, so `start` works inside async tests too.
fn answers(options: EtcdOptions) -> bool {
    let options = EtcdOptions {
        call_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..options
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

// === TLS files ===

/// A CA, a server certificate for `127.0.0.1` (IP SAN) and a client
/// certificate, all signed by that CA, as PEM files in one directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// etcd's certificate (server and client use: etcd's gateway dials itself).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (`CN=aios-control-plane`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA and both certificates (P-256 keys, valid for
    /// two days) under `dir` with the `openssl` command-line tool. Fails,
    /// never skips, where `openssl` is missing.
    pub fn generate(dir: &Path) -> Result<Self> {
        let path = |name: &str| dir.join(name);
        let files = Self {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
        };
        let ca_key = path("ca-key.pem");
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            &format!(
                "req -x509 {new_key} -days 2 -subj /CN=aios-test-CA \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
            &[("-keyout", &ca_key), ("-out", &files.ca_cert)],
        )?;
        let sign = |name: &str, cert: &Path, key: &Path, extensions: &str| -> Result<()> {
            let (csr, ext) = (path(&format!("{name}.csr")), path(&format!("{name}.ext")));
            std::fs::write(&ext, extensions).context("write extensions file")?;
            openssl(
                &format!("req -new {new_key} -subj /CN={name}"),
                &[("-keyout", key), ("-out", &csr)],
            )?;
            openssl(
                "x509 -req -days 2 -set_serial 2",
                &[
                    ("-in", &csr),
                    ("-CA", &files.ca_cert),
                    ("-CAkey", &ca_key),
                    ("-extfile", &ext),
                    ("-out", cert),
                ],
            )
        };
        let usage = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        sign(
            "127.0.0.1",
            &files.server_cert,
            &files.server_key,
            &format!(
                "{usage}subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        sign(
            "aios-control-plane",
            &files.client_cert,
            &files.client_key,
            &format!("{usage}extendedKeyUsage=clientAuth\n"),
        )?;
        Ok(files)
    }

    /// What a client needs: trust this CA, present the client certificate.
    pub fn client_tls(&self) -> EtcdTls {
        EtcdTls {
            ca_file: self.ca_cert.clone(),
            client_cert_file: Some(self.client_cert.clone()),
            client_key_file: Some(self.client_key.clone()),
        }
    }
}

/// Runs `openssl` with `flags` (split on spaces) and `files` (flag, path),
/// failing with its output.
fn openssl(flags: &str, files: &[(&str, &Path)]) -> Result<()> {
    let mut command = Command::new("openssl");
    command.args(flags.split_whitespace());
    for (flag, path) in files {
        command.arg(flag).arg(path);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .context("the TLS tests need the `openssl` command-line tool (apt-get install openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl {flags} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
