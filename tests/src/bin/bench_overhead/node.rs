//! A data-plane node serving from its own OS thread, its CPU time from
//! /proc, and the gRPC client the bench calls it with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aios_data_plane::{
    DataPlane,
    pipeline::{BackendFactory, Stages},
};
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use crate::setup::{UNCALLED_ENDPOINT, resources, settings};

const START_TIMEOUT: Duration = Duration::from_secs(30);

// === CPU time from /proc ===

/// One thread's CPU time (`/proc/<pid>/task/<tid>/schedstat`, ns).
#[derive(Clone, Debug)]
pub(crate) struct ThreadCpu(PathBuf);

impl ThreadCpu {
    /// The calling thread.
    fn current() -> Option<Self> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        Some(Self(Path::new("/proc").join(link)))
    }

    pub(crate) fn read(&self) -> Duration {
        read_schedstat(&self.0).unwrap_or_default()
    }
}

fn read_schedstat(task: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time of every live thread of this process.
pub(crate) fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| read_schedstat(&task.path()))
        .sum()
}

// === A node on its own thread ===

/// Work sent to run on a node's thread.
type Job = futures::future::BoxFuture<'static, ()>;

/// What a node starts with.
#[derive(Debug)]
pub(crate) struct NodeSpec<'a> {
    pub(crate) name: &'a str,
    /// Where its config snapshot is: the node serves what it finds there.
    pub(crate) state_dir: &'a Path,
    pub(crate) control_plane: &'a str,
    pub(crate) stages: Stages,
    /// How it calls its models: in process, or over HTTP.
    pub(crate) backends: Arc<dyn BackendFactory>,
}

/// A data-plane node serving from its own OS thread (one core), which
/// also runs jobs sent to it (a client sharing the node's thread).
#[derive(Debug)]
pub(crate) struct Node {
    /// gRPC.
    pub(crate) addr: SocketAddr,
    /// The OpenAI-compatible HTTP API.
    pub(crate) http: SocketAddr,
    pub(crate) cpu: ThreadCpu,
    jobs: mpsc::UnboundedSender<Job>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the node's thread reports once serving.
struct Started {
    grpc: SocketAddr,
    http: Option<SocketAddr>,
    cpu: Option<ThreadCpu>,
    /// Resources loaded from the snapshot.
    held: usize,
}

impl Node {
    pub(crate) fn start(spec: NodeSpec<'_>) -> Result<Self> {
        let NodeSpec {
            name,
            state_dir,
            control_plane,
            stages,
            backends,
        } = spec;
        let mut config = aios_data_plane::Config::local(
            control_plane
                .parse()
                .map_err(|e| anyhow!("control-plane URL {control_plane}: {e}"))?,
            state_dir.to_path_buf(),
        );
        config.node.node_id = format!("bench-{name}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Started>>();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (jobs, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("node-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let plane = DataPlane::start_with(&config, backends, settings(stages)).await;
                    let plane = match plane {
                        Ok(plane) => plane,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(Started {
                        grpc: plane.grpc_addr(),
                        http: plane.http_addr(),
                        cpu: ThreadCpu::current(),
                        held: plane.node_config().current().resources.len(),
                    }));
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            job = jobs_rx.recv() => match job {
                                Some(job) => job.await,
                                None => break,
                            },
                        }
                    }
                    plane.shutdown(Duration::from_secs(2)).await;
                });
            })?;
        let started = ready_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| anyhow!("node {name} did not start within {START_TIMEOUT:?}"))??;
        let expected = resources(UNCALLED_ENDPOINT).len();
        if started.held != expected {
            bail!(
                "node {name} loaded {} of the {expected} resources in its snapshot",
                started.held
            );
        }
        Ok(Self {
            addr: started.grpc,
            http: started.http.context("the node serves no HTTP API")?,
            cpu: started
                .cpu
                .context("cannot read /proc/thread-self (Linux only)")?,
            jobs,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the node's thread and returns its result.
    pub(crate) async fn on_thread<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::pin(async move {
                let _ = done.send(work.await);
            }))
            .map_err(|_| anyhow!("the node's thread has stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("the node's thread dropped a job"))
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

pub(crate) type Client = AgentServiceClient<Channel>;

pub(crate) async fn connect(addr: SocketAddr) -> Result<Client> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(START_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(AgentServiceClient::new(channel))
}

/// One request: its client-side and handler durations.
pub(crate) async fn call(
    client: &mut Client,
    request: tonic::Request<pb::ExecuteRequest>,
) -> Result<(Duration, Duration)> {
    let (took, handler, _) = crate::setup::execute_timed(client, request).await?;
    Ok((took, handler))
}
