//! Recording calls and summarising them: `HdrHistogram` latencies (in
//! microseconds, three significant digits), counts per outcome, the
//! generator's own dispatch lag, and the achieved rate; and the one-line
//! report (aligned text or tab-separated) that `scripts/bench` gathers into
//! its table.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::{
    procfs::{ServerUse, as_f64},
    workload::Outcome,
};

/// Longest latency a histogram holds (longer ones are clamped): one hour.
const MAX_MICROS: u64 = 3_600_000_000;

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).context("latency histogram")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(MAX_MICROS).max(1)
}

/// Latency percentiles of a set of calls, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Calls summarised.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Summary {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| as_f64(micros) / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Calls of one outcome.
struct PerOutcome {
    outcome: Outcome,
    count: u64,
    latency: Histogram<u64>,
}

/// Everything recorded during one run of one workload.
pub struct Recorder {
    empty: Histogram<u64>,
    measure_from: Instant,
    end: Instant,
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    outcomes: Vec<PerOutcome>,
    completed_in_window: u64,
    last_done: Option<Instant>,
}

impl Recorder {
    /// A recorder measuring calls meant to start in `[measure_from, end)`.
    ///
    /// # Errors
    /// A histogram could not be made (never with these bounds).
    pub fn new(measure_from: Instant, end: Instant) -> anyhow::Result<Self> {
        let empty = histogram()?;
        Ok(Self {
            measure_from,
            end,
            latency: empty.clone(),
            lag: empty.clone(),
            empty,
            outcomes: Vec::new(),
            completed_in_window: 0,
            last_done: None,
        })
    }

    /// Records a call meant to start at `intended` that was handed to its
    /// connection `lag` later and ended at `done` with `outcome`. Its latency
    /// runs from `intended`: a late start is the server's (or the
    /// generator's) delay, never hidden (no coordinated omission).
    pub fn record(&mut self, intended: Instant, lag: Duration, done: Instant, outcome: Outcome) {
        if done >= self.measure_from && done < self.end {
            self.completed_in_window += 1;
            self.last_done = Some(self.last_done.map_or(done, |last| last.max(done)));
        }
        if intended < self.measure_from || intended >= self.end {
            return;
        }
        let latency = micros(done.saturating_duration_since(intended));
        self.latency.saturating_record(latency);
        self.lag.saturating_record(micros(lag));
        let entry = self.outcome(outcome);
        entry.count += 1;
        entry.latency.saturating_record(latency);
    }

    fn outcome(&mut self, outcome: Outcome) -> &mut PerOutcome {
        let index = if let Some(index) = self.outcomes.iter().position(|o| o.outcome == outcome) {
            index
        } else {
            self.outcomes.push(PerOutcome { outcome, count: 0, latency: self.empty.clone() });
            self.outcomes.len() - 1
        };
        &mut self.outcomes[index]
    }

    /// Records an arrival that was never sent (see
    /// [`crate::workload::NOT_SENT`]): counted, with no latency.
    pub fn not_sent(&mut self, intended: Instant) {
        if intended >= self.measure_from && intended < self.end {
            self.outcome(crate::workload::NOT_SENT).count += 1;
        }
    }

    /// Calls (of any start time) that ended inside the window.
    #[must_use]
    pub fn completed_in_window(&self) -> u64 {
        self.completed_in_window
    }

    /// When the last call that ended inside the window ended.
    #[must_use]
    pub fn last_done(&self) -> Option<Instant> {
        self.last_done
    }

    /// The report; `window_end` is the end of the window actually run (the
    /// planned end, or earlier when a request count finished first).
    #[must_use]
    pub fn report(&self, label: String, offered: Offered, window_end: Instant) -> Report {
        let window = window_end.saturating_duration_since(self.measure_from).as_secs_f64();
        let mut outcomes: Vec<(Outcome, Summary)> = self
            .outcomes
            .iter()
            .map(|o| (o.outcome, Summary { count: o.count, ..Summary::of(&o.latency) }))
            .collect();
        // Most frequent first.
        outcomes.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        Report {
            label,
            offered,
            achieved: if window > 0.0 { as_f64(self.completed_in_window) / window } else { 0.0 },
            latency: Summary::of(&self.latency),
            outcomes,
            lag: Summary::of(&self.lag),
            server: None,
        }
    }
}

/// The load a run offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Offered {
    /// Open loop at this many calls per second.
    Rate(f64),
    /// Closed loop with this many calls in flight.
    Closed(usize),
}

/// The result of one run of one workload.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub label: String,
    /// What was offered.
    pub offered: Offered,
    /// Calls completed per second during the measured window.
    pub achieved: f64,
    /// Latency of every measured call, from its intended start.
    pub latency: Summary,
    /// Latency and count per outcome, most frequent first.
    pub outcomes: Vec<(Outcome, Summary)>,
    /// How late the generator handed calls to their connection (open loop).
    pub lag: Summary,
    /// The server process's CPU and memory over the window, when its pid was
    /// given.
    pub server: Option<ServerUse>,
}

/// Column names of [`Report::tsv_rows`], tab-separated.
pub const TSV_HEADER: &str = "scenario\toffered/s\tachieved/s\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\tcodes\tsrv CPU µs/call\tsrv CPU %\tRSS B/call\tgen lag p99 ms";

impl Report {
    /// Calls measured (every outcome, the unsent included).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.outcomes.iter().map(|(_, s)| s.count).sum()
    }

    /// `OK 9981, UNAUTHENTICATED 19`.
    #[must_use]
    pub fn codes(&self) -> String {
        let mut out = String::new();
        for (outcome, summary) in &self.outcomes {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "{outcome} {}", summary.count);
        }
        if out.is_empty() { "-".to_owned() } else { out }
    }

    /// One tab-separated row ([`TSV_HEADER`]'s columns), plus one row per
    /// outcome when `split` (latency of, say, refused logins alone).
    #[must_use]
    pub fn tsv_rows(&self, split: bool) -> Vec<String> {
        let offered = match self.offered {
            Offered::Rate(rate) => format!("{rate:.0}"),
            Offered::Closed(n) => format!("max ({n} in flight)"),
        };
        let (cpu_per_call, cpu_share, rss_per_call) = match &self.server {
            Some(server) => (
                server.cpu_micros_per_call.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                format!("{:.0}", server.cpu_share * 100.0),
                server.rss_growth_per_call.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let lag = if matches!(self.offered, Offered::Rate(_)) {
            format!("{:.3}", self.lag.p99)
        } else {
            "-".into()
        };
        let row = |label: &str, achieved: &str, s: &Summary, codes: &str| {
            format!(
                "{label}\t{offered}\t{achieved}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{codes}\t{cpu_per_call}\t{cpu_share}\t{rss_per_call}\t{lag}",
                s.p50, s.p99, s.p999, s.max
            )
        };
        let mut rows = vec![row(&self.label, &format!("{:.0}", self.achieved), &self.latency, &self.codes())];
        if split {
            for (outcome, summary) in &self.outcomes {
                if *outcome != crate::workload::NOT_SENT {
                    rows.push(row(
                        &format!("{} [{outcome}]", self.label),
                        "",
                        summary,
                        &summary.count.to_string(),
                    ));
                }
            }
        }
        rows
    }
}

/// Prints rows of [`TSV_HEADER`]'s columns as an aligned text table.
#[must_use]
pub fn align(rows: &[String]) -> String {
    let cells: Vec<Vec<&str>> = rows.iter().map(|r| r.split('\t').collect()).collect();
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| cells.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> =
            row.iter().enumerate().map(|(c, cell)| format!("{cell:<width$}", width = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_intended_start() {
        let start = Instant::now();
        let end = start + Duration::from_secs(10);
        let mut recorder = Recorder::new(start, end).unwrap();
        // Sent 5 ms late, answered 1 ms after sending: 6 ms.
        recorder.record(start, Duration::from_millis(5), start + Duration::from_millis(6), "OK");
        let report = recorder.report("t".into(), Offered::Rate(1.0), end);
        assert!((report.latency.max - 6.0).abs() < 0.01, "{:?}", report.latency);
        assert!((report.lag.max - 5.0).abs() < 0.01, "{:?}", report.lag);
    }

    #[test]
    fn warm_up_calls_are_not_measured_but_their_completions_count() {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(1);
        let end = measure_from + Duration::from_secs(1);
        let mut recorder = Recorder::new(measure_from, end).unwrap();
        let ms = Duration::from_millis;
        recorder.record(start, ms(0), measure_from + ms(10), "OK");
        recorder.record(measure_from + ms(1), ms(0), measure_from + ms(2), "UNAUTHENTICATED");
        recorder.record(measure_from + ms(3), ms(0), measure_from + ms(4), "OK");
        let report = recorder.report("t".into(), Offered::Rate(2.0), end);
        assert_eq!(report.calls(), 2);
        assert_eq!(report.codes(), "OK 1, UNAUTHENTICATED 1");
        assert!((report.achieved - 3.0).abs() < 1e-9);
    }

    #[test]
    fn rows_align() {
        let text = align(&["a\tbb".into(), "ccc\td".into()]);
        assert_eq!(text, "a    bb\nccc  d\n");
    }
}
