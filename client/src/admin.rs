//! [`AdminClient`]: the control plane's `AdminService`, one method per RPC,
//! and [`describe_status`], which turns a failed call (with its
//! `google.rpc` details) into one readable line.

use std::time::Duration;

use aios_proto::v1::{
    ApplyRequest, ApplyResponse, BatchApplyRequest, BatchApplyResponse, DeleteRequest,
    DeleteResponse, GetRequest, ListAuditEventsRequest, ListAuditEventsResponse, ListRequest,
    ListResponse, Resource, WatchEvent, WatchRequest, admin_service_client::AdminServiceClient,
};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use crate::{AuthChannel, ClientError, connect};

/// Most resources one `BatchApply` may carry (the server's limit).
pub const MAX_BATCH: usize = 32;

/// Typed client of `aios.v1.AdminService`. Cheap to clone: clones share
/// the channel.
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: AdminServiceClient<AuthChannel>,
}

impl AdminClient {
    /// Wraps a channel from [`connect`].
    pub fn new(channel: AuthChannel) -> Self {
        Self {
            inner: AdminServiceClient::new(channel),
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

    /// `Apply`: creates or replaces one resource.
    pub async fn apply(&mut self, request: ApplyRequest) -> Result<ApplyResponse, ClientError> {
        Ok(self.inner.apply(request).await?.into_inner())
    }

    /// `BatchApply`: writes up to [`MAX_BATCH`] resources all-or-nothing.
    pub async fn batch_apply(
        &mut self,
        request: BatchApplyRequest,
    ) -> Result<BatchApplyResponse, ClientError> {
        Ok(self.inner.batch_apply(request).await?.into_inner())
    }

    /// `Get`: one resource; `NOT_FOUND` if absent.
    pub async fn get(&mut self, request: GetRequest) -> Result<Resource, ClientError> {
        Ok(self.inner.get(request).await?.into_inner())
    }

    /// `List`: one page.
    pub async fn list(&mut self, request: ListRequest) -> Result<ListResponse, ClientError> {
        Ok(self.inner.list(request).await?.into_inner())
    }

    /// `List`, following `next_page_token` until the last page.
    pub async fn list_all(
        &mut self,
        mut request: ListRequest,
    ) -> Result<Vec<Resource>, ClientError> {
        let mut resources = Vec::new();
        loop {
            let page = self.list(request.clone()).await?;
            resources.extend(page.resources);
            if page.next_page_token.is_empty() {
                return Ok(resources);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// `Delete`: removes a resource and returns it as it was.
    pub async fn delete(&mut self, request: DeleteRequest) -> Result<DeleteResponse, ClientError> {
        Ok(self.inner.delete(request).await?.into_inner())
    }

    /// `Watch`: changes after a revision, as a stream.
    pub async fn watch(
        &mut self,
        request: WatchRequest,
    ) -> Result<Streaming<WatchEvent>, ClientError> {
        Ok(self.inner.watch(request).await?.into_inner())
    }

    /// `ListAuditEvents`: one page, newest first.
    pub async fn list_audit_events(
        &mut self,
        request: ListAuditEventsRequest,
    ) -> Result<ListAuditEventsResponse, ClientError> {
        Ok(self.inner.list_audit_events(request).await?.into_inner())
    }
}

// === Status formatting ===

/// One line for a failed call: the code's name, then the most specific
/// detail the server sent. Field violations replace the message (which
/// repeats them); error reasons and resources are appended.
///
/// `INVALID_ARGUMENT: resources[1].budget.limit_usd: must be > 0; resources[1].budget.window: required`
pub fn describe_status(status: &Status) -> String {
    describe_status_with(status, &|field| field.to_string())
}

/// [`describe_status`], with `annotate` rewriting each violation's field
/// or subject, e.g. to say which file `resources[1]` came from.
pub fn describe_status_with(status: &Status, annotate: &dyn Fn(&str) -> String) -> String {
    let details = status.get_error_details();
    let mut parts: Vec<String> = Vec::new();
    if let Some(bad) = details
        .bad_request()
        .filter(|b| !b.field_violations.is_empty())
    {
        parts.extend(
            bad.field_violations
                .iter()
                .map(|v| format!("{}: {}", annotate(&v.field), v.description)),
        );
    }
    if let Some(failure) = details
        .precondition_failure()
        .filter(|p| !p.violations.is_empty())
    {
        parts.extend(
            failure
                .violations
                .iter()
                .map(|v| format!("{}: {}", annotate(&v.subject), v.description)),
        );
    }
    let mut text = code_name(status.code()).to_string();
    let body = if parts.is_empty() {
        status.message().to_string()
    } else {
        parts.join("; ")
    };
    if !body.is_empty() {
        text.push_str(": ");
        text.push_str(&body);
    }
    // A reason that only repeats the code (`UNAUTHENTICATED`) adds nothing.
    if let Some(info) = details
        .error_info()
        .filter(|i| !i.reason.is_empty())
        .filter(|i| i.reason != code_name(status.code()) || !i.metadata.is_empty())
    {
        let mut metadata: Vec<String> = info
            .metadata
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        metadata.sort();
        metadata.insert(0, info.reason.clone());
        text.push_str(&format!(" [{}]", metadata.join(" ")));
    }
    if let Some(resource) = details.resource_info() {
        let owner = if resource.owner.is_empty() {
            String::new()
        } else {
            format!("{}/", resource.owner)
        };
        text.push_str(&format!(
            " (resource: {} {owner}{})",
            resource.resource_type, resource.resource_name
        ));
    }
    // Status messages are free text from the server; keep the result on
    // one line whatever they hold.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical upper-case name of a gRPC code, as in `google.rpc.Code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation};

    use super::*;

    #[test]
    fn field_violations_replace_the_message() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid request: resources[1].budget.limit_usd: must be > 0; ...",
            ErrorDetails::with_bad_request(vec![
                FieldViolation::new("resources[1].budget.limit_usd", "must be > 0"),
                FieldViolation::new("resources[1].budget.window", "required"),
            ]),
        );
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: resources[1].budget.limit_usd: must be > 0; resources[1].budget.window: required"
        );
    }

    #[test]
    fn annotations_rewrite_fields_and_subjects() {
        let status = Status::with_error_details(
            Code::FailedPrecondition,
            "failed precondition",
            ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
                "STATE",
                "resources[0].agent.routing_table",
                "routing table `fast` does not exist",
            )]),
        );
        let text = describe_status_with(&status, &|f| format!("{f} (agents.yaml, document 1)"));
        assert_eq!(
            text,
            "FAILED_PRECONDITION: resources[0].agent.routing_table (agents.yaml, document 1): routing table `fast` does not exist"
        );
    }

    #[test]
    fn error_info_reason_and_sorted_metadata_follow_the_message() {
        let status = Status::with_error_details(
            Code::Aborted,
            "agent bot has version 7, not 5:\nre-read it and apply again",
            ErrorDetails::with_error_info(
                "STALE_RESOURCE_VERSION",
                "aios.dev",
                HashMap::from([
                    ("current_version".to_string(), "7".to_string()),
                    ("a".to_string(), "b".to_string()),
                ]),
            ),
        );
        assert_eq!(
            describe_status(&status),
            "ABORTED: agent bot has version 7, not 5: re-read it and apply again [STALE_RESOURCE_VERSION a=b current_version=7]"
        );
    }

    #[test]
    fn resource_info_names_the_object() {
        let status = Status::with_error_details(
            Code::NotFound,
            "Agent bot not found in tenant acme",
            ErrorDetails::with_resource_info("Agent", "bot", "acme", "not found"),
        );
        assert_eq!(
            describe_status(&status),
            "NOT_FOUND: Agent bot not found in tenant acme (resource: Agent acme/bot)"
        );
    }

    #[test]
    fn plain_statuses_keep_their_message_or_just_the_code() {
        assert_eq!(
            describe_status(&Status::unauthenticated("missing API key")),
            "UNAUTHENTICATED: missing API key"
        );
        assert_eq!(describe_status(&Status::unimplemented("")), "UNIMPLEMENTED");
        let repeated = Status::with_error_details(
            Code::Unauthenticated,
            "invalid API key",
            ErrorDetails::with_error_info("UNAUTHENTICATED", "aios.dev", HashMap::new()),
        );
        assert_eq!(
            describe_status(&repeated),
            "UNAUTHENTICATED: invalid API key"
        );
    }
}
