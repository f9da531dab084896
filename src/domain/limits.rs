//! Abuse protection: fixed-window rate limits per client IP, per account and
//! per (account, IP), and per-account lockout that grows with repeats and
//! ends by itself ([`LockPolicy`]: each further lock doubles). The rules are
//! decided here; the counters live in the database, updated atomically by
//! the store, so they hold across restarts and replicas.

use chrono::{DateTime, Utc};

use super::records::{AttemptCounters, AttemptId, Lock};
use super::{Action, Ctx, Domain, Error, Outcome, Result, User};

/// After this long, reservations still in flight were lost (no attempt
/// takes so long: the request timeout ends it first).
const STALE_RESERVATION: chrono::Duration = chrono::Duration::minutes(5);
/// Longest a reservation waits for attempts in flight to be decided.
const MAX_RESERVATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a waiting reservation looks again (other replicas' attempts).
const RESERVATION_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The answer to a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reservation {
    /// Counted in flight, with its provisional audit row: check the
    /// password or code.
    Reserved(AttemptId),
    /// The account is locked.
    Locked,
    /// Attempts in flight took every slot for [`MAX_RESERVATION_WAIT`].
    Busy,
}

/// When and for how long accounts lock.
#[derive(Clone, Copy, Debug)]
pub struct LockPolicy {
    /// Failed attempts that lock the account.
    pub threshold: i32,
    /// The first lock's length; each further lock doubles it.
    pub base: chrono::Duration,
    /// The longest lock.
    pub max: chrono::Duration,
}

impl LockPolicy {
    /// The end of the lock an account with `counters` gets at `now`: none
    /// below the threshold; then `base`, doubled for each lock since the
    /// last success, at most `max`.
    #[must_use]
    pub fn lock_until(&self, counters: AttemptCounters, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if counters.failed_attempts < self.threshold {
            return None;
        }
        let doublings = u32::try_from(counters.lockouts.clamp(0, 20)).unwrap_or(20);
        let length = self.base.checked_mul(2i32.saturating_pow(doublings)).unwrap_or(self.max).min(self.max);
        Some(now + length)
    }
}

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

    /// Reserves one attempt of `action` against `user`'s account before a
    /// password or code is checked; `None` when the account is locked (or
    /// its attempts stay busy, see [`Domain::reserve`]).
    pub(super) async fn reserve_attempt(
        &self,
        ctx: &Ctx,
        user: &User,
        action: Action,
    ) -> Result<Option<AttemptId>> {
        Ok(match self.reserve(ctx, user, action).await? {
            Reservation::Reserved(attempt) => Some(attempt),
            Reservation::Locked | Reservation::Busy => None,
        })
    }

    /// Reserves one attempt against `user`'s account before a password or
    /// code is checked.
    ///
    /// Failed attempts and attempts in flight together are bounded by the
    /// threshold, so parallel guesses cannot check more passwords than it
    /// allows. When the slots are taken by attempts in flight (not by
    /// failures), this waits for them to be decided: a success frees them
    /// all, a failure may lock the account. So correct logins in flight
    /// never lock an account, nor are they refused, however many there are.
    /// Reservations older than [`STALE_RESERVATION`] were lost (a crash
    /// between reservation and record) and count as failures, short of a
    /// lock.
    ///
    /// The reservation writes the attempt's provisional audit row (a
    /// failure of `action`) in its own transaction: the attempt's record
    /// replaces it, so an attempt is in the audit log even if its record
    /// never commits.
    pub(super) async fn reserve(&self, ctx: &Ctx, user: &User, action: Action) -> Result<Reservation> {
        let threshold = self.limits.lock.threshold;
        let started = std::time::Instant::now();
        // Each reclaim changes the counters, so a reservation tried after it
        // succeeds unless others took the slots; two are enough, and the
        // bound keeps a disagreement between the store's view and ours from
        // spinning.
        let mut reclaims = 0;
        loop {
            let settled = self.attempts_settled.notified();
            let now = self.clock.now();
            let pending = ctx.event(now, action, Outcome::Failure, format!("user:{}", user.id));
            if let Some(attempt) = self.store.reserve_attempt(user.id, now, threshold, &pending).await? {
                return Ok(Reservation::Reserved(attempt));
            }
            let Some(state) = self.store.attempt_state(user.id).await? else {
                return Ok(Reservation::Locked);
            };
            if state.locked_until.is_some_and(|until| until > now) {
                return Ok(Reservation::Locked);
            }
            let lost = state.reserved_at.is_none_or(|at| at + STALE_RESERVATION <= now);
            if (state.in_flight == 0 || lost) && reclaims < 2 {
                reclaims += 1;
                let failed = state.failed_attempts.saturating_add(state.in_flight).min(threshold - 1).max(0);
                if state.in_flight > 0 {
                    tracing::warn!(
                        user_id = user.id.get(),
                        lost = state.in_flight,
                        "attempt reservations were never decided; counting them as failures"
                    );
                }
                self.store.reclaim_attempts(user.id, state, failed).await?;
                continue;
            }
            if started.elapsed() >= MAX_RESERVATION_WAIT {
                return Ok(Reservation::Busy);
            }
            // Woken when an attempt of this replica is decided; attempts of
            // other replicas are seen at the next poll.
            let _ = tokio::time::timeout(RESERVATION_POLL, settled).await;
        }
    }

    /// Records a successful (reserved) attempt: frees its reservation and
    /// clears the account's failures.
    pub(super) async fn record_success(&self, user: &User, attempt: AttemptId) -> Result<()> {
        let result = self.store.record_success(user.id, attempt).await;
        self.attempts_settled.notify_waiters();
        result
    }

    /// Frees a reservation whose password or code was never checked.
    pub(super) async fn release_attempt(&self, user: &User, attempt: AttemptId) -> Result<()> {
        let result = self.store.release_attempt(user.id, attempt).await;
        self.attempts_settled.notify_waiters();
        result
    }

    /// Records a failed attempt on `user` with its audit row, locking the
    /// account when it has used up its attempts.
    pub(super) async fn record_failure(
        &self,
        ctx: &Ctx,
        user: &User,
        attempt: AttemptId,
        action: Action,
        reason: &str,
    ) -> Result<()> {
        let now = self.clock.now();
        let subject = format!("user:{}", user.id);
        let event = ctx.event(now, action, Outcome::Failure, subject.clone()).detail(reason);
        let policy = self.limits.lock;
        let decide = |counters: AttemptCounters| {
            policy.lock_until(counters, now).map(|until| Lock {
                until,
                // The lock is a refusal: the row is found among the failures.
                event: ctx
                    .event(now, Action::AccountLocked, Outcome::Failure, subject.clone())
                    .detail(format!("locked until {}", until.to_rfc3339())),
            })
        };
        let recorded = self.store.record_failure(user.id, attempt, &[event], &decide).await;
        self.attempts_settled.notify_waiters();
        if let Some(until) = recorded? {
            tracing::warn!(user_id = user.id.get(), %until, "account locked after repeated failures");
            self.events.account_locked();
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

    fn policy() -> LockPolicy {
        LockPolicy { threshold: 3, base: chrono::Duration::minutes(5), max: chrono::Duration::hours(1) }
    }

    fn counters(failed_attempts: i32, lockouts: i32) -> AttemptCounters {
        AttemptCounters { failed_attempts, lockouts }
    }

    #[test]
    fn no_lock_below_the_threshold() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(policy().lock_until(counters(2, 0), now), None);
        assert_eq!(policy().lock_until(counters(2, 5), now), None);
    }

    #[test]
    fn each_further_lock_doubles_up_to_the_longest() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let length = |lockouts| policy().lock_until(counters(3, lockouts), now).map(|until| until - now);
        assert_eq!(length(0), Some(chrono::Duration::minutes(5)));
        assert_eq!(length(1), Some(chrono::Duration::minutes(10)));
        assert_eq!(length(3), Some(chrono::Duration::minutes(40)));
        assert_eq!(length(4), Some(chrono::Duration::hours(1)));
        assert_eq!(length(i32::MAX), Some(chrono::Duration::hours(1)));
        assert_eq!(length(-1), Some(chrono::Duration::minutes(5)));
    }

    #[test]
    fn windows_are_aligned_and_contain_now() {
        let now = DateTime::from_timestamp(1_000_030, 0).unwrap();
        let (start, end) = window(now, chrono::Duration::minutes(1));
        assert_eq!(start.timestamp(), 1_000_020);
        assert_eq!(end.timestamp(), 1_000_080);
        assert!(start <= now && now < end);
    }
}
