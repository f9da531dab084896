//! Passwords: Unicode normalisation and length rules, and argon2id hashing on
//! a bounded pool of dedicated threads.
//!
//! Hashing never runs on the async workers, so a login flood cannot slow
//! `ValidateToken`: it runs on exactly `threads` threads of its own, at the
//! lowest scheduling priority the system offers (`SCHED_IDLE` on Linux), so
//! request work always comes first. Each thread hashes into one argon2
//! memory area it allocated once and reuses for its lifetime, so hashing
//! holds `threads × memory` for the life of the process, however many
//! logins come (the allocator is never asked for, nor left holding, a
//! fresh 19 MiB per hash).
//!
//! At most `threads` hashes run at once and at most `queue_depth` more wait.
//! A caller first asks for room ([`Hasher::admit`]) and gets a
//! [`HashPermit`], or is told at once that the server is busy; a login asks
//! before any database work, so a refused one costs nothing.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, PasswordHasher as _, SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
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

/// The scheduling priority of the hashing threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashPriority {
    /// The lowest the system offers (`SCHED_IDLE` on Linux): hashing gets
    /// only the CPU that request work leaves.
    Lowest,
    /// The same as every other thread.
    Normal,
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
    /// Hashing threads (0: one per core).
    pub threads: usize,
    /// Hashes that may wait.
    pub queue_depth: usize,
    /// The hashing threads' scheduling priority.
    pub priority: HashPriority,
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

/// One hashing job, run on a hashing thread with that thread's memory.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// Hashes and verifies passwords off the async workers.
#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    admission: Arc<Semaphore>,
    /// Jobs for the hashing threads; they stop when the hasher is dropped.
    jobs: Mutex<mpsc::Sender<Job>>,
    dummy_hash: Arc<str>,
    verifications: AtomicU64,
    work: AtomicU64,
    rejections: AtomicU64,
    /// Jobs running on a thread right now.
    running: Arc<AtomicUsize>,
    /// Hashes admitted at once at most (threads + queue depth).
    capacity: usize,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("params", self.inner.argon2.params()).finish_non_exhaustive()
    }
}

/// Room in the hashing queue for one hash, from [`Hasher::admit`]; the room
/// is given back when the hash is done (or the permit dropped unused).
pub struct HashPermit {
    admitted: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HashPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashPermit")
    }
}

impl Hasher {
    /// Starts the hashing threads and builds the dummy hash that unknown
    /// emails are checked against (so they cost the same work as known ones).
    ///
    /// # Errors
    /// Invalid argon2 parameters, or a thread that cannot be started.
    pub fn new(config: HasherConfig) -> Result<Self> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
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
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let running = Arc::new(AtomicUsize::new(0));
        for n in 0..threads {
            let receiver = Arc::clone(&receiver);
            let running = Arc::clone(&running);
            let blocks = params.block_count();
            let priority = config.priority;
            std::thread::Builder::new()
                .name(format!("portcullis-hash-{n}"))
                .spawn(move || hashing_thread(&receiver, &running, blocks, priority))
                .map_err(|e| Error::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                argon2,
                admission: Arc::new(Semaphore::new(threads + config.queue_depth)),
                jobs: Mutex::new(sender),
                dummy_hash: dummy_hash.into(),
                verifications: AtomicU64::new(0),
                work: AtomicU64::new(0),
                rejections: AtomicU64::new(0),
                running,
                capacity: threads + config.queue_depth,
            }),
        })
    }

    /// Room in the queue for one hash, at once or not at all.
    ///
    /// # Errors
    /// `Overloaded` when `threads` hashes run and `queue_depth` wait.
    pub fn admit(&self) -> Result<HashPermit> {
        let Ok(admitted) = Arc::clone(&self.inner.admission).try_acquire_owned() else {
            self.inner.rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded { what: "password hashing", retry_after: Duration::from_secs(1) });
        };
        Ok(HashPermit { admitted, inner: Arc::clone(&self.inner) })
    }

    /// Hashes a new password ([`Hasher::admit`], then [`HashPermit::hash`]).
    ///
    /// # Errors
    /// `Overloaded` when the queue is full; `Internal` if hashing fails.
    pub async fn hash(&self, password: Password) -> Result<String> {
        self.admit()?.hash(password).await
    }

    /// Checks `password` against `stored` ([`Hasher::admit`], then
    /// [`HashPermit::verify`]).
    ///
    /// # Errors
    /// `Overloaded` when the queue is full; `Internal` if hashing fails.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> Result<Verification> {
        self.admit()?.verify(password, stored).await
    }

    /// How many passwords were checked against an account's real hash.
    #[must_use]
    pub fn verification_count(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// How many verification hashes ran, real and dummy alike: equal work
    /// for known, unknown, locked and disabled accounts shows here.
    #[must_use]
    pub fn hash_work_count(&self) -> u64 {
        self.inner.work.load(Ordering::Relaxed)
    }

    /// How many hash requests were refused because the queue was full.
    #[must_use]
    pub fn rejection_count(&self) -> u64 {
        self.inner.rejections.load(Ordering::Relaxed)
    }

    /// How many admitted hashes are waiting for a thread right now (for
    /// metrics): admitted and not yet running.
    #[must_use]
    pub fn queue_depth(&self) -> usize {
        let admitted = self.inner.capacity.saturating_sub(self.inner.admission.available_permits());
        admitted.saturating_sub(self.inner.running.load(Ordering::Relaxed))
    }
}

impl HashPermit {
    /// Hashes a new password with the current parameters.
    ///
    /// # Errors
    /// `Internal` if hashing fails.
    pub async fn hash(self, password: Password) -> Result<String> {
        let argon2 = self.inner.argon2.clone();
        self.run(move |memory| hash_new(&argon2, password.0.expose_secret().as_bytes(), memory)).await
    }

    /// Checks `password` against `stored` (or, when `None`, against the dummy
    /// hash, so unknown accounts take the same time).
    ///
    /// # Errors
    /// `Internal` if the stored hash is not an argon2 PHC string or hashing
    /// fails.
    pub async fn verify(self, password: &Password, stored: Option<&str>) -> Result<Verification> {
        let argon2 = self.inner.argon2.clone();
        let known = stored.is_some();
        let stored: Arc<str> = stored.map_or_else(|| Arc::clone(&self.inner.dummy_hash), Arc::from);
        let password = SecretString::from(password.0.expose_secret());
        self.inner.work.fetch_add(1, Ordering::Relaxed);
        if known {
            self.inner.verifications.fetch_add(1, Ordering::Relaxed);
        }
        self.run(move |memory| {
            let password = password.expose_secret().as_bytes();
            let parsed = PasswordHash::new(&stored)
                .map_err(|_| Error::Internal("stored password hash is not a PHC string".into()))?;
            // An unknown account is checked against the dummy hash: the same
            // work as a real check, and never a match.
            let matched = check(password, &parsed, memory)? && known;
            let upgraded_hash = if matched && !uses_params(&parsed, argon2.params()) {
                Some(hash_new(&argon2, password, memory)?)
            } else {
                None
            };
            Ok(Verification { matched, upgraded_hash })
        })
        .await
    }

    /// Runs `job` on a hashing thread; the permit's room is given back
    /// when it is done, even if the caller stopped waiting.
    async fn run<T, F>(self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut [Block]) -> Result<T> + Send + 'static,
    {
        let HashPermit { admitted, inner } = self;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let result = job(memory);
            // The room is free before the caller hears back.
            drop(admitted);
            let _ = done.send(result);
        });
        inner
            .jobs
            .lock()
            .map_err(|_| Error::Internal("hashing queue poisoned".into()))?
            .send(job)
            .map_err(|_| Error::Internal("hashing threads stopped".into()))?;
        result.await.map_err(|_| Error::Internal("hashing job failed".into()))?
    }
}

/// A hashing thread: lowers its own priority, allocates its argon2 memory
/// once, and runs jobs with it until the hasher is dropped.
fn hashing_thread(
    jobs: &Mutex<mpsc::Receiver<Job>>,
    running: &AtomicUsize,
    blocks: usize,
    priority: HashPriority,
) {
    if priority == HashPriority::Lowest
        && let Err(e) = lower_priority()
    {
        tracing::warn!(error = ?e, "cannot lower the hashing thread's priority; it runs at normal priority");
    }
    let mut memory = vec![Block::default(); blocks];
    loop {
        // Held only while taking a job, never while hashing.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        running.fetch_add(1, Ordering::Relaxed);
        job(&mut memory);
        running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Puts the calling thread at the lowest scheduling priority.
fn lower_priority() -> std::result::Result<(), thread_priority::Error> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    }
}

/// Longest salt and output a PHC string can hold.
const MAX_PHC_BYTES: usize = 64;

/// Hashes `password` with a fresh salt into `memory`, as a PHC string.
fn hash_new(argon2: &Argon2<'_>, password: &[u8], memory: &mut [Block]) -> Result<String> {
    let internal = |e: &dyn std::fmt::Display| Error::Internal(format!("argon2: {e}"));
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; MAX_PHC_BYTES];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes).map_err(|e| internal(&e))?;
    let params = argon2.params();
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    let mut spare = Vec::new();
    argon2
        .hash_password_into_with_memory(password, salt_bytes, &mut out, area(memory, &mut spare, params))
        .map_err(|e| internal(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| internal(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| internal(&e))?),
    };
    Ok(hash.to_string())
}

/// Whether `password` hashes to `stored` (with its algorithm, version,
/// parameters and salt), hashing into `memory`; compared in constant time.
fn check(password: &[u8], stored: &PasswordHash<'_>, memory: &mut [Block]) -> Result<bool> {
    let malformed = || Error::Internal("stored password hash is not an argon2 PHC string".into());
    let algorithm = Algorithm::try_from(stored.algorithm).map_err(|_| malformed())?;
    let version = match stored.version {
        Some(version) => Version::try_from(version).map_err(|_| malformed())?,
        None => Version::V0x13,
    };
    let params = Params::try_from(stored).map_err(|_| malformed())?;
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
        return Err(malformed());
    };
    let mut salt_bytes = [0u8; MAX_PHC_BYTES];
    let salt = salt.decode_b64(&mut salt_bytes).map_err(|_| malformed())?;
    let expected = expected.as_bytes();
    let mut out = [0u8; MAX_PHC_BYTES];
    let out = out.get_mut(..expected.len()).ok_or_else(malformed)?;
    let mut spare = Vec::new();
    let memory = area(memory, &mut spare, &params);
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password, salt, out, memory)
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
    Ok(bool::from(out.ct_eq(expected)))
}

/// The memory a hash with `params` runs in: the thread's own area, or — for
/// a stored hash made with more memory than this server's settings (it is
/// upgraded at that login) — `spare`, allocated for that one hash.
fn area<'a>(memory: &'a mut [Block], spare: &'a mut Vec<Block>, params: &Params) -> &'a mut [Block] {
    let blocks = params.block_count();
    if memory.len() >= blocks {
        return &mut memory[..blocks];
    }
    tracing::info!(blocks, "a stored hash needs more argon2 memory than configured");
    spare.resize(blocks, Block::default());
    spare
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
        HasherConfig {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            threads: 1,
            queue_depth: 1,
            priority: HashPriority::Normal,
        }
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
    async fn hashes_are_phc_strings_the_argon2_crate_agrees_with() {
        use argon2::PasswordVerifier as _;
        let hasher = Hasher::new(small()).unwrap();
        let ours = hasher.hash(Password::parse("correct horse", "p").unwrap()).await.unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{ours}");
        let reference =
            Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        assert!(reference.verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap()).is_ok());
        assert!(reference.verify_password(b"correct horsf", &PasswordHash::new(&ours).unwrap()).is_err());
        // A hash the crate made (argon2i, other parameters) verifies here.
        let salt = SaltString::generate(&mut OsRng);
        let theirs =
            Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(128, 2, 2, Some(40)).unwrap())
                .hash_password(b"correct horse", &salt)
                .unwrap()
                .to_string();
        let right =
            hasher.verify(&Password::parse("correct horse", "p").unwrap(), Some(&theirs)).await.unwrap();
        assert!(right.matched);
        assert!(right.upgraded_hash.is_some_and(|h| h.starts_with("$argon2id$v=19$m=64,t=1,p=1$")));
        let wrong =
            hasher.verify(&Password::parse("correct horsf", "p").unwrap(), Some(&theirs)).await.unwrap();
        assert!(!wrong.matched);
        // Garbage is an internal error, not a match.
        assert!(
            hasher.verify(&Password::parse("correct horse", "p").unwrap(), Some("$bcrypt$x")).await.is_err()
        );
    }

    #[tokio::test]
    async fn hashing_threads_take_the_lowest_priority_and_still_hash() {
        std::thread::spawn(lower_priority).join().unwrap().unwrap();
        let hasher = Hasher::new(HasherConfig { priority: HashPriority::Lowest, ..small() }).unwrap();
        let hash = hasher.hash(Password::parse("correct horse", "p").unwrap()).await.unwrap();
        assert!(
            hasher
                .verify(&Password::parse("correct horse", "p").unwrap(), Some(&hash))
                .await
                .unwrap()
                .matched
        );
    }

    #[tokio::test]
    async fn a_permit_is_room_taken_until_dropped() {
        let hasher = Hasher::new(HasherConfig { queue_depth: 0, ..small() }).unwrap();
        let permit = hasher.admit().unwrap();
        assert!(matches!(hasher.admit(), Err(Error::Overloaded { .. })));
        assert_eq!(hasher.rejection_count(), 1);
        drop(permit);
        let permit = hasher.admit().unwrap();
        permit.hash(Password::parse("correct horse", "p").unwrap()).await.unwrap();
        hasher.admit().unwrap();
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
