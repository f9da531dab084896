//! Abuse protection: fixed-window rate limits per client IP, per account and
//! per (account, IP), and per-account lockout that grows with repeats and
//! ends by itself. The counters live in the database, so they hold across
//! restarts and replicas.

use chrono::{DateTime, Utc};

use super::records::LockPolicy;
use super::{Action, Ctx, Domain, Error, Outcome, Result, User};

/// One limit: at most `max` hits per `window` (`max` 0 turns it off).
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// The window.
    pub window: chrono::Duration,
}

/// The abuse-protection settings.
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    /// Per client IP.
    pub per_ip: Limit,
    /// Per account (normalised email).
    pub per_account: Limit,
    /// Per (account, client IP).
    pub per_pair: Limit,
    /// Lockout.
    pub lock: LockPolicy,
}

/// The flows that are rate-limited, each with its own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// `Login`.
    Login,
    /// `AdminLogin`: exempt from the per-IP limits.
    AdminLogin,
    /// `VerifyMfa`.
    VerifyMfa,
    /// `SendMfaCode`.
    SendMfaCode,
    /// `RefreshSession`.
    Refresh,
}

impl Flow {
    fn as_str(self) -> &'static str {
        match self {
            Flow::Login => "login",
            Flow::AdminLogin => "admin_login",
            Flow::VerifyMfa => "verify_mfa",
            Flow::SendMfaCode => "send_mfa_code",
            Flow::Refresh => "refresh",
        }
    }
}

impl Domain {
    /// Counts this request against the flow's limits; refuses it with
    /// `RateLimited` (and when to retry) once any limit is exceeded.
    ///
    /// # Errors
    /// `RateLimited`, or `Unavailable` when the counters cannot be reached.
    pub(super) async fn check_limits(&self, ctx: &Ctx, flow: Flow, account: Option<&str>) -> Result<()> {
        let now = self.clock.now();
        let ip = ctx.client_ip.map(|ip| ip.to_string());
        let exempt_from_ip = flow == Flow::AdminLogin;
        let mut checks: Vec<(String, Limit)> = Vec::with_capacity(3);
        if let (Some(ip), false) = (&ip, exempt_from_ip) {
            checks.push((format!("{}:ip:{ip}", flow.as_str()), self.limits.per_ip));
        }
        if let Some(account) = account {
            checks.push((format!("{}:acct:{account}", flow.as_str()), self.limits.per_account));
            if let (Some(ip), false) = (&ip, exempt_from_ip) {
                checks.push((format!("{}:pair:{account}|{ip}", flow.as_str()), self.limits.per_pair));
            }
        }
        for (key, limit) in checks {
            if limit.max == 0 {
                continue;
            }
            let (window_start, window_end) = window(now, limit.window);
            let hits = self.store.hit_rate_limit(&key, window_start.timestamp()).await?;
            if hits > i64::from(limit.max) {
                let retry_after =
                    (window_end - now).to_std().unwrap_or_default().max(std::time::Duration::from_secs(1));
                tracing::info!(flow = flow.as_str(), "rate limit exceeded");
                return Err(Error::RateLimited { retry_after });
            }
        }
        Ok(())
    }

    /// Reserves one attempt against `user`'s account before a password or
    /// code is checked; `false` when the account is locked.
    pub(super) async fn reserve_attempt(&self, user: &User) -> Result<bool> {
        self.store.reserve_attempt(user.id, self.clock.now(), self.limits.lock).await
    }

    /// Records a failed attempt on `user` with its audit row, locking the
    /// account when it has used up its attempts.
    pub(super) async fn record_failure(
        &self,
        ctx: &Ctx,
        user: &User,
        action: Action,
        reason: &str,
    ) -> Result<()> {
        let now = self.clock.now();
        let subject = format!("user:{}", user.id);
        let event = ctx.event(now, action, Outcome::Failure, subject.clone()).detail(reason);
        let lock = ctx.event(now, Action::AccountLocked, Outcome::Success, subject);
        if let Some(until) = self.store.record_failure(user.id, now, self.limits.lock, &[event], lock).await?
        {
            tracing::warn!(user_id = user.id.get(), %until, "account locked after repeated failures");
            crate::metrics::record_lockout();
        }
        Ok(())
    }
}

/// The fixed window containing `now`: its start and end.
fn window(now: DateTime<Utc>, length: chrono::Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let seconds = length.num_seconds().max(1);
    let start = now.timestamp().div_euclid(seconds) * seconds;
    let start = DateTime::from_timestamp(start, 0).unwrap_or(now);
    (start, start + chrono::Duration::seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_contain_now() {
        let now = DateTime::from_timestamp(1_000_030, 0).unwrap();
        let (start, end) = window(now, chrono::Duration::minutes(1));
        assert_eq!(start.timestamp(), 1_000_020);
        assert_eq!(end.timestamp(), 1_000_080);
        assert!(start <= now && now < end);
    }
}
