//! Reading the audit log, and aggregating floods of invalid tokens so that
//! they cost one row per source and interval instead of one per request.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use super::{
    Action, AuditEvent, AuditFilter, AuditRecord, Domain, Error, Outcome, Page, Principal, Result, page_size,
    parse_page_token, scope,
};

/// Refuses a filter that can match nothing by mistake: an inverted time
/// range, an outcome or action that no row can carry (naming the valid ones).
fn check_filter(filter: &AuditFilter) -> Result<()> {
    filter.check()?;
    if let (Some(start), Some(end)) = (filter.start, filter.end)
        && start >= end
    {
        return Err(Error::invalid("end_time", "must be after start_time"));
    }
    if let Some(outcome) = &filter.outcome
        && outcome != Outcome::Success.as_str()
        && outcome != Outcome::Failure.as_str()
    {
        return Err(Error::invalid("outcome", "must be `success` or `failure`"));
    }
    if let Some(action) = &filter.action
        && Action::parse(action).is_none()
    {
        let shown: String = action.chars().take(64).collect();
        return Err(Error::invalid(
            "action",
            format!("unknown action `{shown}`; the actions are: {}", Action::names()),
        ));
    }
    Ok(())
}

/// Invalid-token counts waiting to be written, by (source, reason).
#[derive(Debug, Default)]
pub struct InvalidTokenCounts {
    counts: Mutex<HashMap<(Option<IpAddr>, &'static str), i64>>,
}

impl Domain {
    /// Audit events matching `filter`, newest first.
    ///
    /// # Errors
    /// `Forbidden` without the audit-read scope; `InvalidArgument` for an
    /// inverted time range, an unknown outcome or action, or a bad page
    /// token.
    pub async fn list_audit_events(
        &self,
        caller: &Principal,
        filter: AuditFilter,
        requested_page_size: i32,
        token: &str,
    ) -> Result<Page<AuditRecord>> {
        caller.require(scope::AUDIT_READ)?;
        self.list_audit_events_unchecked(filter, requested_page_size, token).await
    }

    /// Audit events matching `filter`, newest first, with no caller: the
    /// CLI's `audit list`.
    ///
    /// # Errors
    /// As [`Domain::list_audit_events`], without the scope check.
    pub async fn list_audit_events_unchecked(
        &self,
        filter: AuditFilter,
        requested_page_size: i32,
        token: &str,
    ) -> Result<Page<AuditRecord>> {
        check_filter(&filter)?;
        let before = parse_page_token(token)?;
        let limit = page_size(requested_page_size, 50, 500);
        let rows = self.store.list_audit(&filter, before, limit + 1).await?;
        Ok(Page::from_overfetch(rows, limit, |r: &AuditRecord| r.id))
    }

    /// Counts a refused `ValidateToken` from `source`; written later, in
    /// aggregate, by [`Domain::flush_invalid_tokens`].
    pub fn note_invalid_token(&self, source: Option<IpAddr>, reason: &'static str) {
        if let Ok(mut counts) = self.invalid_tokens.counts.lock() {
            *counts.entry((source, reason)).or_insert(0) += 1;
        }
    }

    /// Writes the counted invalid tokens as one audit row per source and
    /// reason.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be written; the counts are
    /// kept for the next flush.
    pub async fn flush_invalid_tokens(&self) -> Result<()> {
        let drained: Vec<_> = match self.invalid_tokens.counts.lock() {
            Ok(mut counts) => counts.drain().collect(),
            Err(_) => return Ok(()),
        };
        if drained.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let events: Vec<AuditEvent> = drained
            .iter()
            .map(|((source, reason), count)| AuditEvent {
                at: now,
                action: Action::InvalidTokens,
                outcome: Outcome::Failure,
                actor: "anonymous".into(),
                subject: source.map_or_else(|| "ip:unknown".into(), |ip| format!("ip:{ip}")),
                client_ip: source.map(|ip| ip.to_string()).unwrap_or_default(),
                user_agent: String::new(),
                request_id: String::new(),
                detail: (*reason).to_owned(),
                count: *count,
            })
            .collect();
        if let Err(err) = self.store.audit(&events).await {
            // Put them back rather than lose the evidence.
            if let Ok(mut counts) = self.invalid_tokens.counts.lock() {
                for (key, count) in drained {
                    *counts.entry(key).or_insert(0) += count;
                }
            }
            return Err(err);
        }
        Ok(())
    }
}
