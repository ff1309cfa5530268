//! [`FleetClient`]: the operator side of the control plane's `FleetService`
//! (`ListNodes`, `GetNode`): which data-plane nodes are known, what each
//! runs, and what each rejected. The node side (`StreamConfig`) belongs to
//! the data-plane agent.

use std::time::Duration;

use aios_proto::v1::{
    GetNodeRequest, ListNodesRequest, ListNodesResponse, Node,
    fleet_service_client::FleetServiceClient,
};

use crate::{AuthChannel, ClientError, connect};

/// Largest page `ListNodes` returns; [`FleetClient::list_nodes`] asks for it.
pub const MAX_NODES_PAGE: i32 = 1000;

/// Typed client of the operator RPCs of `aios.v1.FleetService`. Cheap to
/// clone: clones share the channel.
#[derive(Clone, Debug)]
pub struct FleetClient {
    inner: FleetServiceClient<AuthChannel>,
}

impl FleetClient {
    /// Wraps a channel from [`connect`].
    pub fn new(channel: AuthChannel) -> Self {
        Self {
            inner: FleetServiceClient::new(channel),
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

    /// `ListNodes`: one page.
    pub async fn list_nodes_page(
        &mut self,
        request: ListNodesRequest,
    ) -> Result<ListNodesResponse, ClientError> {
        Ok(self.inner.list_nodes(request).await?.into_inner())
    }

    /// `ListNodes`, following `next_page_token` until the last page: every
    /// node in `region` (empty = all) whose labels match `label_selector`
    /// (`k=v,k!=v,k,!k`; empty = all), ordered by node id.
    pub async fn list_nodes(
        &mut self,
        region: &str,
        label_selector: &str,
    ) -> Result<Vec<Node>, ClientError> {
        let mut request = ListNodesRequest {
            region: region.to_string(),
            label_selector: label_selector.to_string(),
            page_size: MAX_NODES_PAGE,
            page_token: String::new(),
        };
        let mut nodes = Vec::new();
        loop {
            let page = self.list_nodes_page(request.clone()).await?;
            nodes.extend(page.nodes);
            if page.next_page_token.is_empty() {
                return Ok(nodes);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// `GetNode`: one node; `NOT_FOUND` if it was never seen or has been
    /// forgotten.
    pub async fn get_node(&mut self, node_id: &str) -> Result<Node, ClientError> {
        let request = GetNodeRequest {
            node_id: node_id.to_string(),
        };
        Ok(self.inner.get_node(request).await?.into_inner())
    }
}

// Nodes render as YAML/JSON through the contract's descriptors, like
// resources (`aiosctl fleet ls -o json`).
#[cfg(feature = "manifest")]
impl crate::manifest::Described for Node {
    const FULL_NAME: &'static str = "aios.v1.Node";
}

#[cfg(all(test, feature = "manifest"))]
mod tests {
    use aios_proto::v1::{HeldResource, Kind, ResourceRef};

    use super::*;

    #[test]
    fn nodes_render_in_the_proto3_json_mapping() {
        let node = Node {
            node_id: "n1".into(),
            connected: true,
            applied: vec![HeldResource {
                resource: Some(ResourceRef {
                    kind: Kind::Budget.into(),
                    tenant: "acme".into(),
                    name: "daily".into(),
                }),
                version: 7,
            }],
            lag_revisions: 2,
            ..Default::default()
        };
        let json = crate::manifest::to_json_list(std::slice::from_ref(&node)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["nodeId"], "n1");
        assert_eq!(value[0]["lagRevisions"], "2");
        assert_eq!(value[0]["applied"][0]["resource"]["kind"], "KIND_BUDGET");
        assert_eq!(value[0]["applied"][0]["version"], "7");
    }
}
