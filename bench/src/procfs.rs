//! The server process's CPU time and resident memory, read from Linux's
//! `/proc/<pid>/stat` (utime + stime, all threads) and `/proc/<pid>/status`
//! (`VmRSS`), before and after a measured window.

use std::time::Instant;

use anyhow::Context as _;

/// Clock ticks per second of `/proc` times. Linux fixes `USER_HZ` at 100 for
/// user space on every architecture it runs this on.
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User + system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

impl ProcSample {
    /// Reads process `pid`.
    ///
    /// # Errors
    /// The process is gone, or `/proc` says something unexpected.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so
        // fields are counted after the last `)`. utime and stime are fields
        // 14 and 15 of the whole line, 11 and 12 after `state`'s index 0.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("/proc/<pid>/stat: no `)`")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .context("/proc/<pid>/stat: too few fields")?
                .parse()
                .context("/proc/<pid>/stat: not a number")
        };
        let cpu_ticks = field(11)? + field(12)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("/proc/<pid>/status: no VmRSS")?;
        Ok(Self { at, cpu_ticks, rss_bytes: rss_kib * 1024 })
    }
}

/// The server's use of CPU and memory over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerUse {
    /// CPU time over wall time: 1.0 is one core busy all the window.
    pub cpu_share: f64,
    /// CPU time per call completed in the window, in microseconds (none when
    /// the calls of several workloads shared the window).
    pub cpu_micros_per_call: Option<f64>,
    /// RSS at the start of the window, bytes.
    pub rss_before: u64,
    /// RSS at the end, bytes.
    pub rss_after: u64,
    /// RSS growth per call, bytes (when asked for: the cost of each cached
    /// principal, when every call validated a distinct token).
    pub rss_growth_per_call: Option<f64>,
}

impl ServerUse {
    /// The use between `before` and `after`, over `calls` completed calls.
    #[must_use]
    pub fn between(before: &ProcSample, after: &ProcSample, calls: u64, rss_per_call: bool) -> Self {
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        let cpu = as_f64(after.cpu_ticks.saturating_sub(before.cpu_ticks)) / as_f64(TICKS_PER_SECOND);
        let per_call = |total: f64| (calls > 0).then(|| total / as_f64(calls));
        Self {
            cpu_share: if wall > 0.0 { cpu / wall } else { 0.0 },
            cpu_micros_per_call: per_call(cpu * 1e6),
            rss_before: before.rss_bytes,
            rss_after: after.rss_bytes,
            rss_growth_per_call: if rss_per_call {
                per_call(as_f64(after.rss_bytes) - as_f64(before.rss_bytes))
            } else {
                None
            },
        }
    }
}

/// `n` as a float, for rates and ratios.
#[allow(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
#[must_use]
pub fn as_f64(n: u64) -> f64 {
    n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_bytes > 0);
    }
}
