//! `portcullis.v1.AuditService`: reading the audit log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{authenticated, convert, to_status};
use crate::{
    domain::{AuditFilter, Domain},
    proto::v1::{self as pb, audit_service_server},
    request::Call,
};

/// The `AuditService` implementation.
#[derive(Clone)]
pub struct AuditService {
    domain: Arc<Domain>,
}

impl AuditService {
    /// Serves the rules in `domain`.
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

#[tonic::async_trait]
impl audit_service_server::AuditService for AuditService {
    #[tracing::instrument(skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::ListAuditEventsRequest {
            subject,
            actor,
            action,
            outcome,
            start_time,
            end_time,
            request_id,
            page_size,
            page_token,
        } = request.into_inner();
        let filter = AuditFilter {
            subject: non_empty(subject),
            actor: non_empty(actor),
            action: non_empty(action),
            outcome: non_empty(outcome),
            start: convert::timestamp_from(start_time, "start_time").map_err(to_status)?,
            end: convert::timestamp_from(end_time, "end_time").map_err(to_status)?,
            request_id: non_empty(request_id),
        };
        let page = self
            .domain
            .list_audit_events(&caller, filter, page_size, &page_token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
