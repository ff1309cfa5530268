//! A data-plane node serving from its own OS thread, its CPU time from
//! /proc, and the gRPC client the bench calls it with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aios_data_plane::{DataPlane, pipeline::Stages};
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use crate::setup::{InstantModels, resources, settings};

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

/// A data-plane node serving from its own OS thread (one core), which
/// also runs jobs sent to it (a client sharing the node's thread).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) addr: SocketAddr,
    pub(crate) cpu: ThreadCpu,
    jobs: mpsc::UnboundedSender<Job>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Ready = Result<(SocketAddr, Option<ThreadCpu>, usize)>;

impl Node {
    pub(crate) fn start(
        name: &str,
        state_dir: &Path,
        control_plane: &str,
        stages: Stages,
    ) -> Result<Self> {
        let mut config = aios_data_plane::Config::local(
            control_plane
                .parse()
                .map_err(|e| anyhow!("control-plane URL {control_plane}: {e}"))?,
            state_dir.to_path_buf(),
        );
        config.node.node_id = format!("bench-{name}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
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
                    let plane =
                        DataPlane::start_with(&config, Arc::new(InstantModels), settings(stages))
                            .await;
                    let plane = match plane {
                        Ok(plane) => plane,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let held = plane.node_config().current().resources.len();
                    let _ = ready_tx.send(Ok((plane.grpc_addr(), ThreadCpu::current(), held)));
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
        let (addr, cpu, held) = ready_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| anyhow!("node {name} did not start within {START_TIMEOUT:?}"))??;
        let expected = resources().len();
        if held != expected {
            bail!("node {name} loaded {held} of the {expected} resources in its snapshot");
        }
        Ok(Self {
            addr,
            cpu: cpu.context("cannot read /proc/thread-self (Linux only)")?,
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

/// One request; its client-side and server-side (the response's
/// `latency`) durations. Anything but an uncached success is an error.
pub(crate) async fn call(
    client: &mut Client,
    request: tonic::Request<pb::ExecuteRequest>,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let response = client.execute(request).await;
    let took = started.elapsed();
    let response = response
        .map_err(|s| anyhow!("Execute failed: {s}"))?
        .into_inner();
    if response.status != pb::ExecutionStatus::Succeeded as i32 || response.cache_hit {
        bail!(
            "expected an uncached success, got status {} cache_hit {} error {:?}",
            response.status,
            response.cache_hit,
            response.error
        );
    }
    let server = response.latency.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    });
    Ok((took, server))
}
