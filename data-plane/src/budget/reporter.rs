//! The task that talks to the control plane for the [`Purse`]: one
//! `BudgetService.Allowances` call per round, a round when a call is short
//! of allowance or has settled spend (gathered for a few milliseconds), and
//! at least every [`TICK`] while anything is held, so allowances are
//! renewed and unused ones given back.

use std::time::Duration;

use aios_proto::v1::{self as pb, budget_service_client::BudgetServiceClient};
use aios_runtime::Secret;
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

use super::Purse;
use crate::{
    ControlPlaneUrl,
    upstream::{self, Backoff},
};

/// Longest pause between rounds.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a round gathers shortfalls and settles before sending.
const GATHER: Duration = Duration::from_millis(2);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the reporter sends and as whom.
#[derive(Clone, Debug)]
pub struct ReporterSettings {
    /// Control-plane URLs, tried in turn.
    pub urls: Vec<ControlPlaneUrl>,
    /// The node key.
    pub node_key: Option<Secret>,
    /// This node's id.
    pub node_id: String,
}

/// Runs until `shutdown`, then sends what is settled and gives back what
/// is held, once, without retrying.
pub async fn run(purse: Purse, settings: ReporterSettings, shutdown: CancellationToken) {
    let incarnation = format!("{:016x}", rand::random::<u64>());
    let mut link = Link {
        settings,
        incarnation,
        client: None,
        next_url: 0,
        ttl: None,
    };
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = purse.woken() => tokio::time::sleep(GATHER).await,
            _ = tokio::time::sleep(TICK) => {}
        }
        let lines = purse.lines(link.ttl);
        if lines.is_empty() {
            continue;
        }
        match link.send(&lines).await {
            Ok(grants) => {
                backoff.reset();
                if let Some(grant) = grants.first() {
                    link.ttl = Some(Duration::from_millis(
                        u64::try_from(grant.ttl_ms).unwrap_or(0),
                    ));
                }
                purse.answered(&lines, &grants);
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "budget allowances: the control plane did not answer");
                purse.unanswered();
                link.client = None;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    // Settle what was spent and give back the rest (nothing runs any more).
    purse.closing();
    let lines = purse.lines(link.ttl);
    if !lines.is_empty()
        && let Ok(grants) = link.send(&lines).await
    {
        purse.answered(&lines, &grants);
    }
}

struct Link {
    settings: ReporterSettings,
    incarnation: String,
    client: Option<BudgetServiceClient<Channel>>,
    next_url: usize,
    ttl: Option<Duration>,
}

impl Link {
    async fn send(
        &mut self,
        lines: &[(super::LedgerKey, super::Sent)],
    ) -> Result<Vec<pb::AllowanceGrant>, tonic::Status> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let urls = &self.settings.urls;
                let Some(url) = urls.get(self.next_url % urls.len().max(1)) else {
                    return Err(tonic::Status::unavailable("no control plane configured"));
                };
                self.next_url = self.next_url.wrapping_add(1);
                let channel = upstream::connect(url)
                    .await
                    .map_err(|e| tonic::Status::unavailable(upstream::chain(&e)))?;
                let client = BudgetServiceClient::new(channel);
                self.client = Some(client.clone());
                client
            }
        };
        let request = pb::AllowancesRequest {
            node_id: self.settings.node_id.clone(),
            lines: lines
                .iter()
                .map(|(key, sent)| pb::AllowanceLine {
                    budget: Some(pb::ResourceRef {
                        kind: pb::Kind::Budget as i32,
                        tenant: key.tenant.clone(),
                        name: key.budget.clone(),
                    }),
                    subject: key.subject.clone(),
                    window_start: key.window_start,
                    seq: sent.seq,
                    spent_micros: sent.spent,
                    release_micros: sent.release,
                    want_micros: sent.want,
                    incarnation: self.incarnation.clone(),
                })
                .collect(),
        };
        let mut request = Request::new(request);
        request.set_timeout(CALL_TIMEOUT);
        upstream::authorize(&mut request, self.settings.node_key.as_ref())
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        let mut client = client;
        let grants = tokio::time::timeout(CALL_TIMEOUT, client.allowances(request))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("budget allowances timed out"))??
            .into_inner()
            .grants;
        if grants.len() != lines.len() {
            return Err(tonic::Status::internal(format!(
                "{} grants for {} lines",
                grants.len(),
                lines.len()
            )));
        }
        Ok(grants)
    }
}
