//! Passwords: Unicode normalisation and length rules, and argon2id hashing on
//! a bounded pool of blocking threads.
//!
//! Hashing never runs on the async workers, so a login flood cannot slow
//! `ValidateToken`. At most `threads` hashes run at once and at most
//! `queue_depth` more wait; beyond that the caller is told at once that the
//! server is busy, instead of queueing without end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version,
    password_hash::{PasswordHasher as _, SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization;

use super::{Error, Result};

/// Fewest characters in a password (NIST SP 800-63B).
pub const MIN_CHARS: usize = 8;
/// Most bytes in a password; longer input is refused before any hashing.
pub const MAX_BYTES: usize = 1024;

/// A password that passed the length rules, NFKC-normalised.
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Normalises (NFKC, as NIST SP 800-63B asks) and checks the length.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` on `field` when empty, shorter than 8 characters or
    /// longer than 1,024 bytes. The message never contains the password.
    pub fn parse(input: &str, field: &'static str) -> Result<Self> {
        if input.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if input.len() > MAX_BYTES {
            return Err(Error::invalid(field, format!("must be at most {MAX_BYTES} bytes")));
        }
        let normalised: String = input.nfkc().collect();
        if normalised.len() > MAX_BYTES {
            return Err(Error::invalid(field, format!("must be at most {MAX_BYTES} bytes")));
        }
        if normalised.chars().count() < MIN_CHARS {
            return Err(Error::invalid(field, format!("must be at least {MIN_CHARS} characters")));
        }
        Ok(Self(SecretString::from(normalised)))
    }
}

/// Hashing parameters and the pool limits.
#[derive(Clone, Copy, Debug)]
pub struct HasherConfig {
    /// argon2id memory in KiB.
    pub memory_kib: u32,
    /// argon2id passes.
    pub iterations: u32,
    /// argon2id lanes.
    pub parallelism: u32,
    /// Hashes at once.
    pub threads: usize,
    /// Hashes that may wait.
    pub queue_depth: usize,
}

/// The result of checking a password against a stored hash.
#[derive(Debug)]
pub struct Verification {
    /// Whether the password matched.
    pub matched: bool,
    /// A new hash with the current parameters, when the stored one used
    /// others and the password matched.
    pub upgraded_hash: Option<String>,
}

/// Hashes and verifies passwords off the async workers.
#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
    admission: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    dummy_hash: Arc<str>,
    verifications: Arc<AtomicU64>,
    work: Arc<AtomicU64>,
    rejections: Arc<AtomicU64>,
    /// How many hashes may wait (for [`Hasher::queue_depth`]).
    queue_capacity: usize,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("params", self.argon2.params()).finish_non_exhaustive()
    }
}

impl Hasher {
    /// Builds the hasher and the dummy hash that unknown emails are checked
    /// against (so they cost the same work as known ones).
    ///
    /// # Errors
    /// Invalid argon2 parameters.
    pub fn new(config: HasherConfig) -> Result<Self> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            config.threads
        };
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2
            .hash_password(b"portcullis dummy password, never matches", &salt)
            .map_err(|e| Error::Internal(format!("argon2: {e}")))?
            .to_string();
        Ok(Self {
            argon2,
            admission: Arc::new(Semaphore::new(threads + config.queue_depth)),
            workers: Arc::new(Semaphore::new(threads)),
            dummy_hash: dummy_hash.into(),
            verifications: Arc::new(AtomicU64::new(0)),
            work: Arc::new(AtomicU64::new(0)),
            rejections: Arc::new(AtomicU64::new(0)),
            queue_capacity: config.queue_depth,
        })
    }

    /// Hashes a new password.
    ///
    /// # Errors
    /// `Overloaded` when the queue is full; `Internal` if hashing fails.
    pub async fn hash(&self, password: Password) -> Result<String> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.0.expose_secret().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Internal(format!("argon2: {e}")))
        })
        .await
    }

    /// Checks `password` against `stored` (or, when `None`, against the dummy
    /// hash, so unknown accounts take the same time).
    ///
    /// # Errors
    /// `Overloaded` when the queue is full; `Internal` if hashing fails.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> Result<Verification> {
        let argon2 = self.argon2.clone();
        let known = stored.is_some();
        let stored: Arc<str> = stored.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let password = SecretString::from(password.0.expose_secret());
        self.work.fetch_add(1, Ordering::Relaxed);
        if known {
            self.verifications.fetch_add(1, Ordering::Relaxed);
        }
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Err(Error::Internal("stored password hash is not a PHC string".into()));
            };
            let matched =
                known && argon2.verify_password(password.expose_secret().as_bytes(), &parsed).is_ok();
            if !known {
                // Same work as a real check; the result is thrown away.
                let _ = argon2.verify_password(password.expose_secret().as_bytes(), &parsed);
            }
            let upgraded_hash = if matched && !uses_params(&parsed, argon2.params()) {
                let salt = SaltString::generate(&mut OsRng);
                argon2
                    .hash_password(password.expose_secret().as_bytes(), &salt)
                    .map(|hash| Some(hash.to_string()))
                    .map_err(|e| Error::Internal(format!("argon2: {e}")))?
            } else {
                None
            };
            Ok(Verification { matched, upgraded_hash })
        })
        .await
    }

    /// How many passwords were checked against an account's real hash.
    #[must_use]
    pub fn verification_count(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// How many verification hashes ran, real and dummy alike: equal work
    /// for known, unknown, locked and disabled accounts shows here.
    #[must_use]
    pub fn hash_work_count(&self) -> u64 {
        self.work.load(Ordering::Relaxed)
    }

    /// How many hash requests were refused because the queue was full.
    #[must_use]
    pub fn rejection_count(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// How many admitted hashes are waiting for a thread right now (for
    /// metrics): admitted and not yet running.
    #[must_use]
    pub fn queue_depth(&self) -> usize {
        // admitted = threads + capacity - free admission permits;
        // running = threads - free worker permits.
        (self.queue_capacity + self.workers.available_permits())
            .saturating_sub(self.admission.available_permits())
    }

    async fn run<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let Ok(_admitted) = Arc::clone(&self.admission).try_acquire_owned() else {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded { what: "password hashing", retry_after: Duration::from_secs(1) });
        };
        let _worker = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("hasher pool closed".into()))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    }
}

/// Whether a stored hash was made with exactly `params` and argon2id.
fn uses_params(hash: &PasswordHash<'_>, params: &Params) -> bool {
    hash.algorithm == Algorithm::Argon2id.ident()
        && Params::try_from(hash).is_ok_and(|stored| {
            stored.m_cost() == params.m_cost()
                && stored.t_cost() == params.t_cost()
                && stored.p_cost() == params.p_cost()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> HasherConfig {
        HasherConfig { memory_kib: 64, iterations: 1, parallelism: 1, threads: 1, queue_depth: 1 }
    }

    #[test]
    fn length_rules() {
        assert!(Password::parse("", "password").is_err());
        assert!(Password::parse("short", "password").is_err());
        assert!(Password::parse("eight ch", "password").is_ok());
        assert!(Password::parse(&"x".repeat(MAX_BYTES), "password").is_ok());
        assert!(Password::parse(&"x".repeat(MAX_BYTES + 1), "password").is_err());
        // 8 characters, 16 bytes: characters are what count.
        assert!(Password::parse("ääääääää", "password").is_ok());
    }

    #[test]
    fn errors_never_contain_the_password() {
        let err = Password::parse("secret7", "password").unwrap_err().to_string();
        assert!(!err.contains("secret7"), "{err}");
        assert!(!format!("{:?}", Password::parse("secret-password", "p").unwrap()).contains("secret"));
    }

    #[tokio::test]
    async fn normalised_forms_verify_alike() {
        let hasher = Hasher::new(small()).unwrap();
        // "é" precomposed vs. "e" + combining acute.
        let hash = hasher.hash(Password::parse("caf\u{e9}-password", "p").unwrap()).await.unwrap();
        let decomposed = Password::parse("cafe\u{301}-password", "p").unwrap();
        assert!(hasher.verify(&decomposed, Some(&hash)).await.unwrap().matched);
        let wrong = Password::parse("cafe-password", "p").unwrap();
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap().matched);
    }

    #[tokio::test]
    async fn unknown_accounts_never_match_but_count() {
        let hasher = Hasher::new(small()).unwrap();
        let password = Password::parse("portcullis dummy password, never matches", "p").unwrap();
        let verification = hasher.verify(&password, None).await.unwrap();
        assert!(!verification.matched);
        assert_eq!(hasher.verification_count(), 0);
        assert_eq!(hasher.hash_work_count(), 1);
    }

    #[tokio::test]
    async fn changed_parameters_upgrade_the_hash() {
        let old = Hasher::new(small()).unwrap();
        let hash = old.hash(Password::parse("correct horse", "p").unwrap()).await.unwrap();
        let new = Hasher::new(HasherConfig { memory_kib: 128, ..small() }).unwrap();
        let password = Password::parse("correct horse", "p").unwrap();
        let verification = new.verify(&password, Some(&hash)).await.unwrap();
        assert!(verification.matched);
        let upgraded = verification.upgraded_hash.expect("upgraded");
        assert!(upgraded.contains("m=128"), "{upgraded}");
        let again = new.verify(&password, Some(&upgraded)).await.unwrap();
        assert!(again.matched && again.upgraded_hash.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let hasher = Hasher::new(HasherConfig { memory_kib: 32 * 1024, iterations: 3, ..small() }).unwrap();
        let password = || Password::parse("correct horse", "p").unwrap();
        // One running and one queued fill the pool; the rest are refused.
        let results = futures_join_all((0..6).map(|_| {
            let hasher = hasher.clone();
            let password = password();
            async move { hasher.hash(password).await }
        }))
        .await;
        let refused = results.iter().filter(|r| matches!(r, Err(Error::Overloaded { .. }))).count();
        assert!(refused >= 1, "no request was refused");
        assert_eq!(hasher.rejection_count() as usize, refused);
        assert!(results.iter().any(Result::is_ok));
    }

    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }
}
