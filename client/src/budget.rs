//! [`BudgetClient`]: the reading side of the control plane's
//! `BudgetService` (`GetStatus`): how much of each budget's current window
//! is spent, reserved and left, which is what `aiosctl budgets status`
//! shows. The node side (`Allowances`) belongs to the data plane.

use std::time::Duration;

use aios_proto::v1::{
    BudgetStatus, GetBudgetStatusRequest, budget_service_client::BudgetServiceClient,
};

use crate::{AuthChannel, ClientError, connect};

/// Typed client of the reading RPC of `aios.v1.BudgetService`. Cheap to
/// clone: clones share the channel.
#[derive(Clone, Debug)]
pub struct BudgetClient {
    inner: BudgetServiceClient<AuthChannel>,
}

impl BudgetClient {
    /// Wraps a channel from [`connect`].
    pub fn new(channel: AuthChannel) -> Self {
        Self {
            inner: BudgetServiceClient::new(channel),
        }
    }

    /// Connects to the control plane at `endpoint`, sending `api_key` on
    /// every call.
    pub async fn connect(
        endpoint: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::new(connect(endpoint, api_key, timeout).await?))
    }

    /// `GetStatus`: the current window of every budget of `tenant` (empty =
    /// the key's own; `*` = every tenant, platform keys only), or of the
    /// one named `budget` (empty = all), one entry per budget and subject,
    /// ordered by tenant, budget, subject. `NOT_FOUND` for a named budget
    /// that does not exist.
    pub async fn get_status(
        &mut self,
        tenant: &str,
        budget: &str,
    ) -> Result<Vec<BudgetStatus>, ClientError> {
        let request = GetBudgetStatusRequest {
            tenant: tenant.to_string(),
            budget: budget.to_string(),
        };
        Ok(self.inner.get_status(request).await?.into_inner().statuses)
    }
}

// Statuses render as YAML/JSON through the contract's descriptors, like
// resources (`aiosctl budgets status -o json`).
#[cfg(feature = "manifest")]
impl crate::manifest::Described for BudgetStatus {
    const FULL_NAME: &'static str = "aios.v1.BudgetStatus";
}

#[cfg(all(test, feature = "manifest"))]
mod tests {
    use aios_proto::v1::{Kind, ResourceRef};

    use super::*;

    #[test]
    fn statuses_render_in_the_proto3_json_mapping() {
        let status = BudgetStatus {
            budget: Some(ResourceRef {
                kind: Kind::Budget.into(),
                tenant: "acme".into(),
                name: "daily".into(),
            }),
            window_start: Some(prost_types::Timestamp {
                seconds: 86_400,
                nanos: 0,
            }),
            limit_usd: 2.5,
            remaining_usd: 2.5,
            ..Default::default()
        };
        let json = crate::manifest::to_json_list(std::slice::from_ref(&status)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["budget"]["kind"], "KIND_BUDGET");
        assert_eq!(value[0]["budget"]["name"], "daily");
        assert_eq!(value[0]["windowStart"], "1970-01-02T00:00:00Z");
        assert_eq!(value[0]["limitUsd"], 2.5);
        assert_eq!(value[0]["remainingUsd"], 2.5);
        // Defaults are left out, like in every other rendering.
        assert!(value[0].get("spentUsd").is_none(), "{json}");
    }
}
