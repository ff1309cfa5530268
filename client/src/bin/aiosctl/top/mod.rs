//! `aiosctl top`: a live view of the fleet's rollups, redrawn as each
//! one-second window closes, like `top`. It subscribes to
//! `TelemetryService.Subscribe`, folds what arrives into a [`View`], and
//! draws it: in place on a terminal (ANSI escapes, the alternate screen,
//! restored on exit), or as plain frames one after another when stdout is
//! not a terminal or the number of frames is given (`--once`, `-n N`). A
//! broken stream is reopened with backoff, the header saying so.

mod screen;
mod view;

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use aios_client::{ClientError, FleetClient, TelemetryClient, manifest};
use aios_proto::v1::{
    GetSummaryRequest, RollupWindow, SubscribeRequest, SubscribeResponse, Summary, SummaryFilter,
    subscribe_response::Event,
};
use aios_runtime::server::Signals;
use tokio::{sync::watch, task::JoinHandle};
use tonic::{Code, Streaming};

use self::{
    screen::Screen,
    view::{Connection, Dimension, SortKey, View},
};
use crate::{
    Globals,
    output::{self, Format},
    resources::Failure,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenant to watch (default: the API key's own).
    #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
    tenant: Option<String>,
    /// Every tenant (platform keys only).
    #[arg(short = 'A', long)]
    all_tenants: bool,
    /// Only this agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Only this model.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Only this region.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Only this node.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// What the rows break the traffic down by.
    #[arg(long, value_enum, default_value_t = Dimension::Agent)]
    by: Dimension,
    /// What orders the rows (in the last second, descending).
    #[arg(long, value_enum, default_value_t = SortKey::Requests)]
    sort: SortKey,
    /// Print N frames, plainly, then exit. Plain output (this, --once, a pipe)
    /// gives up when the control plane stays unreachable for a few attempts.
    #[arg(short = 'n', long = "iterations", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Print one frame, plainly, then exit (`-n 1`).
    #[arg(long, conflicts_with = "iterations")]
    once: bool,
}

impl Args {
    fn filter(&self) -> SummaryFilter {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        SummaryFilter {
            tenant: match self.all_tenants {
                true => "*".into(),
                false => text(&self.tenant),
            },
            agent: text(&self.agent),
            model: text(&self.model),
            region: text(&self.region),
            node: text(&self.node),
        }
    }
}

/// Longest wait between two attempts to reopen the stream.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Attempts in a row to reopen the stream before plain output gives up
/// (about 8 s of backoff); on a terminal `top` tries until stopped.
const SCRIPTED_ATTEMPTS: u32 = 5;
/// How often the connected nodes are counted.
const NODES_EVERY: Duration = Duration::from_secs(10);

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let mut signals = Signals::install();
    let key = crate::traces::api_key(globals)?;
    let filter = args.filter();
    let request = SubscribeRequest {
        filter: Some(filter.clone()),
        window: RollupWindow::Second as i32,
        include_spans: args.by.needs_spans(),
        include_alerts: true,
    };
    let limit = if args.once { Some(1) } else { args.iterations };
    // Frames in place only for a person at a terminal; JSON/YAML and
    // counted frames are for scripts.
    let live =
        limit.is_none() && globals.output == Format::Table && std::io::stdout().is_terminal();
    let mut top = Top {
        view: View::new(args.by, args.sort, &filter),
        out: Output {
            screen: live.then(Screen::enter),
            format: globals.output,
        },
        frames_left: limit,
        by: args.by,
        filter: filter.clone(),
    };
    let (nodes, _counter) = count_nodes(globals, &filter);
    top.out.redraw(&top.view)?;
    let mut attempt = 0;
    loop {
        let opened = tokio::select! {
            _ = signals.recv() => return Ok(0),
            opened = subscribe(globals, key, &request) => opened,
        };
        let error = match opened {
            Ok((client, stream)) => tokio::select! {
                _ = signals.recv() => return Ok(0),
                ended = top.follow(client, stream, &nodes, &mut attempt) => match ended? {
                    Ended::Done => return Ok(0),
                    Ended::Broken(error) => error,
                },
            },
            Err(error) => error,
        };
        attempt += 1;
        // On a terminal a person decides when to give up; a script learns
        // that the control plane stays away.
        if fatal(&error) || (!live && attempt > SCRIPTED_ATTEMPTS) {
            return Err(error.into());
        }
        let wait = backoff(attempt);
        top.view.set_connection(Connection::Reconnecting {
            attempt,
            error: error.to_string(),
        });
        top.out.notice(
            &top.view,
            &format!(
                "reconnecting in {:.1}s (attempt {attempt}): {error}",
                wait.as_secs_f64()
            ),
        )?;
        tokio::select! {
            _ = signals.recv() => return Ok(0),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why [`Top::follow`] stopped reading a stream.
enum Ended {
    /// The frames asked for were shown.
    Done,
    /// The stream failed or ended; maybe another one will do.
    Broken(ClientError),
}

/// A running `top`: what it shows and where.
struct Top {
    view: View,
    out: Output,
    /// `-n N`: frames still to show.
    frames_left: Option<u64>,
    by: Dimension,
    filter: SummaryFilter,
}

impl Top {
    /// Shows what the stream brings until it breaks or enough frames were
    /// shown; a rollup resets the failed `attempt`s.
    async fn follow(
        &mut self,
        mut client: TelemetryClient,
        mut stream: Streaming<SubscribeResponse>,
        nodes: &watch::Receiver<Option<usize>>,
        attempt: &mut u32,
    ) -> Result<Ended, Failure> {
        loop {
            let message = tokio::select! {
                _ = self.out.resized() => {
                    self.out.redraw(&self.view)?;
                    continue;
                }
                message = stream.message() => message,
            };
            let event = match message {
                Ok(Some(response)) => response.event,
                Ok(None) => {
                    let ended = tonic::Status::unavailable("the control plane ended the stream");
                    return Ok(Ended::Broken(ended.into()));
                }
                Err(status) => return Ok(Ended::Broken(status.into())),
            };
            match event {
                Some(Event::Rollup(summary)) => {
                    *attempt = 0;
                    self.view.set_nodes(*nodes.borrow());
                    self.view.rollup(summary.clone());
                    self.totals(&mut client).await;
                    self.out.frame(&self.view, summary)?;
                    if let Some(left) = self.frames_left.as_mut() {
                        *left -= 1;
                        if *left == 0 {
                            return Ok(Ended::Done);
                        }
                    }
                }
                Some(Event::Span(span)) => self.view.span(&span),
                Some(Event::Alert(alert)) => self.view.alert(alert),
                None => {}
            }
        }
    }

    /// By agent, the rows' totals since the first window, from the
    /// control plane's merged rollups. Failing that, the view's own sums of
    /// the windows stand in until the next frame.
    async fn totals(&mut self, client: &mut TelemetryClient) {
        let (Dimension::Agent, Some(since), Format::Table) =
            (self.by, self.view.since(), self.out.format)
        else {
            return;
        };
        let request = GetSummaryRequest {
            filter: Some(self.filter.clone()),
            start_time: Some(prost_types::Timestamp {
                seconds: since,
                nanos: 0,
            }),
            end_time: None,
        };
        if let Ok(response) = client.get_summary(request).await {
            let per_agent = response.summary.unwrap_or_default().per_agent;
            self.view.agent_totals(&per_agent);
        }
    }
}

/// Connects and opens the stream; each attempt connects afresh, so a
/// control plane that was down at first is found once it is up.
async fn subscribe(
    globals: &Globals,
    key: &str,
    request: &SubscribeRequest,
) -> Result<(TelemetryClient, Streaming<SubscribeResponse>), ClientError> {
    let mut client =
        TelemetryClient::connect(&globals.endpoint, Some(key), globals.timeout).await?;
    let stream = client.subscribe(request.clone()).await?;
    Ok((client, stream))
}

/// Errors that another attempt cannot fix: the key, the request, the
/// server's API. Everything else (unreachable, restarting, overloaded) is
/// retried.
fn fatal(error: &ClientError) -> bool {
    match error {
        ClientError::Endpoint { .. } | ClientError::ApiKey => true,
        ClientError::Connect { .. } => false,
        ClientError::Rpc(status) => matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
        ),
    }
}

/// 250 ms doubling up to [`MAX_BACKOFF`], less up to a fifth at random, so
/// dashboards cut off together do not come back together.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    // The clock's nanoseconds are random enough to spread a few retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base - base.mul_f64(f64::from(nanos % 1000) / 5000.0)
}

// === Output ===

/// Where frames go: redrawn in place, or printed one after another.
struct Output {
    /// The terminal, when drawing in place.
    screen: Option<Screen>,
    format: Format,
}

impl Output {
    /// A new window closed (already in `view`): show it.
    fn frame(&mut self, view: &View, summary: Summary) -> Result<(), Failure> {
        let text = match self.format {
            // Scripts get the rollup itself, in the proto3 JSON mapping.
            Format::Json => manifest::to_json(&summary)?,
            Format::Yaml => format!("---\n{}", manifest::to_yaml(&summary)?),
            Format::Table => return self.draw(view),
        };
        output::write_stdout(&text).map_err(Failure::from)
    }

    /// Redraws the view on a terminal (plain output shows only frames).
    fn redraw(&mut self, view: &View) -> Result<(), Failure> {
        match &mut self.screen {
            Some(screen) => screen
                .draw(&view.render(Some(screen.size())))
                .map_err(Failure::from),
            None => Ok(()),
        }
    }

    /// Shows the view as it is now.
    fn draw(&mut self, view: &View) -> Result<(), Failure> {
        match &mut self.screen {
            Some(screen) => screen.draw(&view.render(Some(screen.size()))),
            None if self.format == Format::Table => {
                let mut text = view.render(None).join("\n");
                text.push_str("\n\n");
                output::write_stdout(&text)
            }
            None => Ok(()),
        }
        .map_err(Failure::from)
    }

    /// The stream broke: on a terminal the header says so; otherwise a
    /// line on stderr does, leaving stdout to the frames.
    fn notice(&mut self, view: &View, line: &str) -> Result<(), Failure> {
        if self.screen.is_some() {
            return self.redraw(view);
        }
        let mut err = std::io::stderr().lock();
        // Nowhere left to report a failure to write to stderr.
        let _ = writeln!(err, "aiosctl top: {line}");
        Ok(())
    }

    /// Resolves when the terminal changed size; never without one.
    async fn resized(&mut self) {
        match &mut self.screen {
            Some(screen) => screen.resized().await,
            None => std::future::pending().await,
        }
    }
}

// === Nodes ===

/// Counts the connected nodes in the filter's region (or the one node it
/// names) every [`NODES_EVERY`]. Only platform keys may read the fleet;
/// for others the count stays unknown. The task ends with the handle.
fn count_nodes(
    globals: &Globals,
    filter: &SummaryFilter,
) -> (watch::Receiver<Option<usize>>, AbortOnDrop) {
    let (tx, rx) = watch::channel(None);
    let (endpoint, key, timeout) = (
        globals.endpoint.clone(),
        globals.api_key.clone(),
        globals.timeout,
    );
    let (region, node) = (filter.region.clone(), filter.node.clone());
    let task = tokio::spawn(async move {
        loop {
            let listed = async {
                FleetClient::connect(&endpoint, key.as_deref(), timeout)
                    .await?
                    .list_nodes(&region, "")
                    .await
            }
            .await;
            match listed {
                Ok(nodes) => {
                    let connected = nodes
                        .iter()
                        .filter(|n| n.connected && (node.is_empty() || n.node_id == node))
                        .count();
                    tx.send_replace(Some(connected));
                }
                Err(ClientError::Rpc(status))
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::Unauthenticated
                    ) =>
                {
                    return;
                }
                // Unreachable for now: the last count stands until the next try.
                Err(_) => {}
            }
            tokio::time::sleep(NODES_EVERY).await;
        }
    });
    (rx, AbortOnDrop(task))
}

/// Ends a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_end_top_and_outages_are_retried() {
        let rpc = |code| ClientError::Rpc(tonic::Status::new(code, "x"));
        assert!(fatal(&rpc(Code::Unauthenticated)));
        assert!(fatal(&rpc(Code::PermissionDenied)));
        assert!(fatal(&rpc(Code::InvalidArgument)));
        assert!(!fatal(&rpc(Code::Unavailable)));
        assert!(!fatal(&rpc(Code::Internal)));
        assert!(!fatal(&ClientError::Connect {
            endpoint: "http://x".into(),
            reason: "refused".into()
        }));
    }

    #[test]
    fn backoff_doubles_to_a_bound_and_never_waits_less_than_four_fifths() {
        for (attempt, base) in [(1, 250), (2, 500), (3, 1000), (7, 10_000), (40, 10_000)] {
            let wait = backoff(attempt).as_millis() as u64;
            assert!(
                wait <= base && wait >= base * 4 / 5,
                "attempt {attempt}: {wait}ms"
            );
        }
    }
}
