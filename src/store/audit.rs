//! The audit log: rows are inserted inside the transaction of the change
//! they record, and only ever read afterwards; the one exception is an
//! attempt's provisional row ([`AttemptId`]), which the attempt's record
//! replaces in its own transaction.

use async_trait::async_trait;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::{SqlStore, entity::audit_events, unavailable};
use crate::domain::{
    error::Result,
    ports::AuditStore,
    records::{AttemptId, AuditEvent, AuditFilter, AuditRecord, UNRECORDED_ATTEMPT},
};

/// Inserts `events` on `conn` (a transaction, normally).
pub(crate) async fn write<C: ConnectionTrait>(conn: &C, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    audit_events::Entity::insert_many(events.iter().map(|event| row(event, &event.detail)))
        .exec(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Inserts an attempt's provisional row on `conn` (the reservation's
/// transaction); its detail is always [`UNRECORDED_ATTEMPT`].
pub(crate) async fn write_pending<C: ConnectionTrait>(conn: &C, event: &AuditEvent) -> Result<AttemptId> {
    let inserted =
        audit_events::Entity::insert(row(event, UNRECORDED_ATTEMPT)).exec(conn).await.map_err(unavailable)?;
    Ok(AttemptId(inserted.last_insert_id))
}

/// Removes an attempt's provisional row on `conn` (the transaction of the
/// attempt's record). Only a provisional row can go: the row must still say
/// [`UNRECORDED_ATTEMPT`]. Returns whether it was there: `false` means the
/// attempt was recorded already (a retry whose first try committed), and
/// its counters must not change again.
pub(crate) async fn settle_pending<C: ConnectionTrait>(conn: &C, attempt: AttemptId) -> Result<bool> {
    let removed = audit_events::Entity::delete_many()
        .filter(audit_events::Column::Id.eq(attempt.0))
        .filter(audit_events::Column::Detail.eq(UNRECORDED_ATTEMPT))
        .exec(conn)
        .await
        .map_err(unavailable)?;
    Ok(removed.rows_affected == 1)
}

/// The row of `event`, with `detail`, each field cut to its column's length.
fn row(event: &AuditEvent, detail: &str) -> audit_events::ActiveModel {
    audit_events::ActiveModel {
        at: Set(event.at),
        action: Set(event.action.as_str().to_owned()),
        outcome: Set(event.outcome.as_str().to_owned()),
        actor: Set(truncate(&event.actor, 64)),
        subject: Set(truncate(&event.subject, 320)),
        client_ip: Set(truncate(&event.client_ip, 64)),
        user_agent: Set(truncate(&event.user_agent, 512)),
        request_id: Set(truncate(&event.request_id, 128)),
        detail: Set(truncate(detail, 512)),
        count: Set(event.count),
        ..Default::default()
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[async_trait]
impl AuditStore for SqlStore {
    /// Writes events that record no other change (a refused login).
    async fn audit(&self, events: &[AuditEvent]) -> Result<()> {
        write(&self.db, events).await
    }

    /// Events matching `filter`, newest first, before id `before`.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<AuditRecord>> {
        let mut condition = Condition::all();
        if let Some(subject) = &filter.subject {
            condition = condition.add(audit_events::Column::Subject.eq(subject.clone()));
        }
        if let Some(actor) = &filter.actor {
            condition = condition.add(audit_events::Column::Actor.eq(actor.clone()));
        }
        if let Some(action) = &filter.action {
            condition = condition.add(audit_events::Column::Action.eq(action.clone()));
        }
        if let Some(outcome) = &filter.outcome {
            condition = condition.add(audit_events::Column::Outcome.eq(outcome.clone()));
        }
        if let Some(request_id) = &filter.request_id {
            condition = condition.add(audit_events::Column::RequestId.eq(request_id.clone()));
        }
        if let Some(start) = filter.start {
            condition = condition.add(audit_events::Column::At.gte(start));
        }
        if let Some(end) = filter.end {
            condition = condition.add(audit_events::Column::At.lt(end));
        }
        if let Some(before) = before {
            condition = condition.add(audit_events::Column::Id.lt(before));
        }
        let rows = audit_events::Entity::find()
            .filter(condition)
            .order_by_desc(audit_events::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let audit_events::Model {
                    id,
                    at,
                    action,
                    outcome,
                    actor,
                    subject,
                    client_ip,
                    user_agent,
                    request_id,
                    detail,
                    count,
                } = row;
                AuditRecord {
                    id,
                    at,
                    action,
                    outcome,
                    actor,
                    subject,
                    client_ip,
                    user_agent,
                    request_id,
                    detail,
                    count,
                }
            })
            .collect())
    }
}
