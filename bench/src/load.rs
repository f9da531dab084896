//! The load engine: starts calls of a [`Workload`] and measures them.
//!
//! - **Open loop** ([`Load::Open`]): calls start at a fixed rate, evenly
//!   spaced or as a Poisson process, whatever the server does. The loop
//!   sleeps (on a timerfd, to the microsecond) to each arrival's *intended*
//!   start and sends it on the next connection, round robin.
//!   Latency is measured from the intended start, so a server (or a
//!   generator) that falls behind shows it in the percentiles instead of
//!   quietly slowing the arrivals (no coordinated omission). How late the
//!   generator itself was is reported apart (`lag`). Arrivals finding
//!   `max_in_flight` calls outstanding are not sent and are counted as
//!   `NOT_SENT`.
//! - **Closed loop** ([`Load::Closed`]): a fixed number of calls in flight,
//!   each starting when the previous one ends: the way to find capacity
//!   (and to make exactly N calls with `requests`).
//!
//! Calls meant to start during the warm-up run but are not measured. The
//! achieved rate counts calls that *ended* inside the measured window.
//! The engine runs on whatever tokio runtime calls it; the CLI gives it one
//! current-thread runtime, so the generator costs one core at most.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create, timerfd_settime,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    procfs::{ProcSample, ServerUse, as_f64},
    stats::{Offered, Recorder, Report},
    workload::{Outcome, Workload, code_name},
};

/// How open-loop arrivals are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Evenly: one every 1/rate seconds.
    Constant,
    /// A Poisson process: exponential gaps with mean 1/rate (many
    /// independent callers).
    Poisson,
}

/// The load to offer.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Calls start at `rate` per second regardless of the answers.
    Open {
        /// Calls per second.
        rate: f64,
        /// Spacing of arrivals.
        arrival: Arrival,
        /// Calls outstanding at most; arrivals beyond are not sent.
        max_in_flight: usize,
    },
    /// `concurrency` calls in flight back to back.
    Closed {
        /// Calls in flight.
        concurrency: usize,
        /// Stop after this many calls (else at the end of the duration).
        requests: Option<u64>,
    },
}

/// One run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Scenario name for the report.
    pub label: String,
    /// The load.
    pub load: Load,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Client-side limit per call; a call past it counts as
    /// `DEADLINE_EXCEEDED`.
    pub timeout: Duration,
    /// The server process to read CPU and memory of.
    pub server_pid: Option<u32>,
    /// Whether other workloads' calls share the window (then server CPU is
    /// not divided per call).
    pub server_shared: bool,
    /// Whether to report RSS growth per call.
    pub rss_per_call: bool,
    /// Seed of the Poisson arrivals.
    pub seed: u64,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    /// The measurements.
    pub report: Report,
    /// Call indexes handed out (warm-up included): the next free index.
    pub issued: u64,
}

fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    // A poisoned lock means a recording task panicked mid-update; its
    // numbers are still the best there are.
    recorder.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `workload` as `plan` says.
///
/// # Errors
/// The timer could not be made; the server's `/proc` entry could not be
/// read.
pub async fn run(workload: Arc<dyn Workload>, plan: &Plan) -> anyhow::Result<RunResult> {
    // A little head start, so the first arrivals are not already late.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_from, end)?));
    let before = plan.server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            ProcSample::read(pid)
        })
    });

    let (issued, offered) = match plan.load {
        Load::Open { rate, arrival, max_in_flight } => {
            anyhow::ensure!(rate.is_finite() && rate > 0.0, "the rate must be a positive number");
            let issued =
                open_loop(&workload, &recorder, plan, (start, end), (rate, arrival, max_in_flight)).await?;
            (issued, Offered::Rate(rate))
        }
        Load::Closed { concurrency, requests } => {
            anyhow::ensure!(concurrency > 0, "closed loop needs at least one call in flight");
            let issued = closed_loop(&workload, &recorder, plan, (start, end), concurrency, requests).await?;
            (issued, Offered::Closed(concurrency))
        }
    };
    // A run that finished its requests early ends at its last answer.
    let now = Instant::now();
    let window_end = if now < end { lock(&recorder).last_done().unwrap_or(now) } else { end };
    let after = plan.server_pid.map(ProcSample::read).transpose()?;

    let (mut report, completed) = {
        let recorder = lock(&recorder);
        (recorder.report(plan.label.clone(), offered, window_end), recorder.completed_in_window())
    };
    if let (Some(before), Some(after)) = (before, after) {
        let before = before.await.context("reading the server's /proc")??;
        let mut server = ServerUse::between(&before, &after, completed, plan.rss_per_call);
        if plan.server_shared {
            server.cpu_micros_per_call = None;
        }
        report.server = Some(server);
    }
    Ok(RunResult { report, issued })
}

/// Waits for the outcome of `call`, at most `timeout`.
async fn finish(call: crate::workload::Call, timeout: Duration) -> Outcome {
    tokio::time::timeout(timeout, call).await.unwrap_or(code_name(tonic::Code::DeadlineExceeded))
}

async fn open_loop(
    workload: &Arc<dyn Workload>,
    recorder: &Arc<Mutex<Recorder>>,
    plan: &Plan,
    (start, end): (Instant, Instant),
    (rate, arrival, max_in_flight): (f64, Arrival, usize),
) -> anyhow::Result<u64> {
    let timer = PreciseTimer::new().context("creating a timerfd")?;
    let mut arrivals = Arrivals::new(rate, arrival, plan.seed, start);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut index = 0;
    let mut intended = arrivals.next_start();
    let mut sent_without_yield = 0_u32;
    while intended < end {
        let now = Instant::now();
        if intended > now {
            timer.sleep(intended - now).await.context("waiting on the timerfd")?;
            sent_without_yield = 0;
            continue;
        }
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            lock(recorder).not_sent(intended);
        } else {
            in_flight.fetch_add(1, Ordering::Relaxed);
            let call = workload.call(index);
            let (recorder, in_flight, timeout) = (Arc::clone(recorder), Arc::clone(&in_flight), plan.timeout);
            tokio::spawn(async move {
                // The call is sent when this task first runs.
                let sent = Instant::now();
                let outcome = finish(call, timeout).await;
                let done = Instant::now();
                in_flight.fetch_sub(1, Ordering::Relaxed);
                lock(&recorder).record(intended, sent.saturating_duration_since(intended), done, outcome);
            });
        }
        index += 1;
        intended = arrivals.next_start();
        // Behind schedule, arrivals are due back to back: let the calls
        // already started run now and then, or none would be sent.
        sent_without_yield += 1;
        if sent_without_yield == 64 {
            sent_without_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    // The last calls still count; each ends by its timeout at the latest.
    let deadline = Instant::now() + plan.timeout + Duration::from_millis(100);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(index)
}

async fn closed_loop(
    workload: &Arc<dyn Workload>,
    recorder: &Arc<Mutex<Recorder>>,
    plan: &Plan,
    (start, end): (Instant, Instant),
    concurrency: usize,
    requests: Option<u64>,
) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (workload, recorder, next, timeout) =
            (Arc::clone(workload), Arc::clone(recorder), Arc::clone(&next), plan.timeout);
        workers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            loop {
                let begun = Instant::now();
                if begun >= end {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if requests.is_some_and(|n| index >= n) {
                    break;
                }
                let outcome = finish(workload.call(index), timeout).await;
                lock(&recorder).record(begun, Duration::ZERO, Instant::now(), outcome);
            }
        }));
    }
    for worker in workers {
        worker.await.context("a closed-loop worker failed")?;
    }
    let handed_out = next.load(Ordering::Relaxed);
    Ok(requests.map_or(handed_out, |n| handed_out.min(n)))
}

/// Intended start times of open-loop arrivals.
struct Arrivals {
    rate: f64,
    arrival: Arrival,
    random: SplitMix64,
    start: Instant,
    index: u64,
    offset: f64,
}

impl Arrivals {
    fn new(rate: f64, arrival: Arrival, seed: u64, start: Instant) -> Self {
        Self { rate, arrival, random: SplitMix64(seed), start, index: 0, offset: 0.0 }
    }

    /// The next arrival's intended start.
    fn next_start(&mut self) -> Instant {
        let intended = self.start + Duration::from_secs_f64(self.offset);
        self.index += 1;
        self.offset = match self.arrival {
            // From the index, not by adding gaps: no drift.
            Arrival::Constant => as_f64(self.index) / self.rate,
            Arrival::Poisson => self.offset + self.random.exponential() / self.rate,
        };
        intended
    }
}

/// A one-shot timer with microsecond precision that wakes the tokio loop it
/// runs in: a Linux timerfd, polled by tokio like a socket. tokio's timer
/// rounds to whole milliseconds, which would send arrivals in bursts; a
/// separate pacer thread would cost a thread switch per call (and, sharing
/// the generator's core, wake late).
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    // tokio deprecated the safe constructor because an arbitrary `AsRawFd`
    // could hand back a different (or closed) descriptor after registering;
    // an `OwnedFd` owned by the `AsyncFd` itself cannot, and its replacement
    // is `unsafe`, which this workspace forbids.
    #[allow(deprecated, reason = "sound for an OwnedFd that the AsyncFd owns; see above")]
    fn new() -> std::io::Result<Self> {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        Ok(Self { fd: AsyncFd::with_interest(fd, Interest::READABLE)? })
    }

    /// Sleeps for `duration` (at least a nanosecond).
    async fn sleep(&self, duration: Duration) -> std::io::Result<()> {
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let value = Timespec {
            tv_sec: duration.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: i64::from(duration.subsec_nanos().max(1)),
        };
        timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec { it_interval: zero, it_value: value },
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0_u8; 8];
            match ready
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut expirations).map_err(std::io::Error::from))
            {
                Ok(result) => return result.map(|_| ()),
                // Woken with nothing to read: not expired yet.
                Err(_would_block) => {}
            }
        }
    }
}

/// A small seeded generator (`SplitMix64`) for arrival gaps: reproducible runs,
/// no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An exponential variate with mean 1.
    fn exponential(&mut self) -> f64 {
        // Uniform in (0, 1]: never ln(0).
        let uniform = as_f64((self.next() >> 11) + 1) / as_f64(1 << 53);
        -uniform.ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_mean_one() {
        let mut random = SplitMix64(7);
        let n = 100_000;
        let mean = (0..n).map(|_| random.exponential()).sum::<f64>() / as_f64(n);
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced() {
        let start = Instant::now();
        let mut arrivals = Arrivals::new(1000.0, Arrival::Constant, 1, start);
        let starts: Vec<Instant> = (0..1001).map(|_| arrivals.next_start()).collect();
        assert_eq!(starts[0], start);
        assert_eq!(starts[1000] - start, Duration::from_secs(1));
        assert!(starts.windows(2).all(|w| w[1] - w[0] == Duration::from_millis(1)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_timer_wakes_after_its_duration() {
        let timer = PreciseTimer::new().unwrap();
        let begun = Instant::now();
        timer.sleep(Duration::from_micros(300)).await.unwrap();
        let slept = begun.elapsed();
        assert!(slept >= Duration::from_micros(300), "{slept:?}");
        assert!(slept < Duration::from_millis(100), "{slept:?}");
    }
}
