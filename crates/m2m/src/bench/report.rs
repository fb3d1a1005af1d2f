//! What a scenario measured: one [`Report`], printed as a table or as one JSON object, and the
//! progress bar drawn while it runs.
//!
//! The JSON field names are part of the command's interface (scripts read them); README.md lists
//! them. A figure a scenario does not measure is `null`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The figures of one run of one scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The scenario: `fan-in`, `fan-out`, `latency`, `storm`, `connect`, `conns`, `queue`, `drain`
    /// or `sink`.
    pub(crate) scenario: String,
    /// `--label`: which broker was measured.
    pub(crate) label: String,
    /// QoS of publishes and subscriptions, where the scenario publishes.
    pub(crate) qos: Option<u8>,
    /// Payload size in bytes, where the scenario publishes.
    pub(crate) payload_bytes: Option<usize>,
    /// Publishing clients.
    pub(crate) publishers: usize,
    /// Subscribing clients.
    pub(crate) subscribers: usize,
    /// Connections the scenario opened in all.
    pub(crate) clients: usize,
    /// Seconds measured (the warm-up second not included).
    pub(crate) seconds: f64,
    /// What was sent in the measured time: PUBLISH packets, or CONNECT packets for `storm`,
    /// `connect` and `conns`.
    pub(crate) sent: u64,
    /// What arrived in the measured time: PUBLISH packets received by the subscribers (or counted by
    /// the sink), or CONNACKs.
    pub(crate) received: u64,
    /// What should have arrived, when that is known (a fixed `--count`, `latency`, `storm`).
    pub(crate) expected: Option<u64>,
    /// `received` per second, in `rate_unit`.
    pub(crate) rate: f64,
    /// Unit of `rate`: `msg/s`, `deliveries/s` (one message to several subscribers counts once per
    /// subscriber) or `conn/s`.
    pub(crate) rate_unit: String,
    /// `sent` per second.
    pub(crate) sent_rate: f64,
    /// Latency percentiles, where measured.
    pub(crate) latency: Option<Latency>,
    /// Clients that failed (connection refused or lost, protocol errors), and acknowledgements
    /// that never came.
    pub(crate) errors: u64,
    /// The first error, if any.
    pub(crate) first_error: Option<String>,
    /// Resident memory of the broker process before the connections were opened, in KiB (`conns`
    /// with `--pid`).
    pub(crate) rss_before_kib: Option<u64>,
    /// Resident memory of the broker process with the connections open, in KiB.
    pub(crate) rss_after_kib: Option<u64>,
    /// Growth of the broker's resident memory per open connection, in bytes.
    pub(crate) rss_per_connection_bytes: Option<f64>,
}

/// Latency percentiles of one kind, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// `one-way` (publisher to subscriber, from a timestamp in the payload), `ack` (PUBLISH to its
    /// PUBACK, or to its PUBCOMP at QoS 2), or `connack` (TCP connect to CONNACK).
    pub(crate) kind: String,
    /// Samples the percentiles are taken from.
    pub(crate) samples: u64,
    /// Median, in µs.
    pub(crate) p50_us: f64,
    /// 99th percentile, in µs.
    pub(crate) p99_us: f64,
    /// 99.9th percentile, in µs.
    pub(crate) p999_us: f64,
    /// Largest sample, in µs.
    pub(crate) max_us: f64,
}

impl Latency {
    /// Percentiles of `nanos` (sorted in place); `None` when there are no samples.
    pub(crate) fn from_nanos(kind: &str, nanos: &mut [u64]) -> Option<Latency> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let at = |p: f64| nanos[((nanos.len() as f64 * p) as usize).min(nanos.len() - 1)] as f64 / 1000.0;
        Some(Latency {
            kind: kind.to_owned(),
            samples: nanos.len() as u64,
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        })
    }
}

impl Report {
    /// A report of `scenario` for `label`, every figure still empty.
    pub(crate) fn new(scenario: &str, label: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            label: label.to_owned(),
            rate_unit: "msg/s".to_owned(),
            ..Report::default()
        }
    }

    /// Sets `seconds`, `sent`, `received` and both rates.
    pub(crate) fn counted(&mut self, seconds: f64, sent: u64, received: u64) {
        self.seconds = seconds;
        self.sent = sent;
        self.received = received;
        let per_second = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
        self.rate = per_second(received);
        self.sent_rate = per_second(sent);
    }

    /// Counts an error, keeping the first message.
    pub(crate) fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }
}

const COLUMNS: [&str; 14] = [
    "scenario",
    "broker",
    "qos",
    "payload",
    "clients",
    "sent",
    "received",
    "rate",
    "latency",
    "p50",
    "p99",
    "max",
    "memory/conn",
    "errors",
];

/// One table row: the columns of [`COLUMNS`].
fn row(r: &Report) -> [String; 14] {
    let latency = |f: fn(&Latency) -> f64| r.latency.as_ref().map_or("-".to_owned(), |l| duration(f(l)));
    [
        r.scenario.clone(),
        r.label.clone(),
        r.qos.map_or("-".to_owned(), |q| q.to_string()),
        r.payload_bytes.map_or("-".to_owned(), |p| format!("{p} B")),
        grouped(r.clients as u64),
        grouped(r.sent),
        match r.expected {
            Some(e) if e != r.received => format!("{} of {}", grouped(r.received), grouped(e)),
            _ => grouped(r.received),
        },
        format!("{} {}", grouped(r.rate.round() as u64), r.rate_unit),
        r.latency.as_ref().map_or("-".to_owned(), |l| l.kind.clone()),
        latency(|l| l.p50_us),
        latency(|l| l.p99_us),
        latency(|l| l.max_us),
        r.rss_per_connection_bytes.map_or("-".to_owned(), |b| format!("{} B", grouped(b.round() as u64))),
        r.errors.to_string(),
    ]
}

/// The reports as a table aligned with spaces, or in Markdown.
pub(crate) fn table(reports: &[Report], markdown: bool) -> String {
    let rows: Vec<[String; 14]> = reports.iter().map(row).collect();
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(COLUMNS.len())));
        for r in &rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        return out;
    }
    let mut widths = COLUMNS.map(|c| c.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                // Text left, figures right.
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(&COLUMNS.map(str::to_owned)));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// `1234567` as `1 234 567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Microseconds in a unit that keeps about three significant digits.
fn duration(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// A progress bar on stderr for one phase of a scenario, drawn only when stderr is a terminal: the
/// time against a limit, or a counter against a total, with the counter's rate.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts drawing. With `total`, the bar follows `counter`; without, the time against `limit`.
    pub(crate) fn start(
        phase: &str,
        unit: &'static str,
        total: Option<u64>,
        limit: Duration,
        counter: Arc<AtomicU64>,
    ) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(
                Some(total.unwrap_or(limit.as_millis() as u64)),
                ProgressDrawTarget::stderr(),
            )
        } else {
            ProgressBar::hidden()
        };
        let template = if total.is_some() {
            "{prefix:>10} [{bar:32}] {human_pos}/{human_len} {msg}"
        } else {
            "{prefix:>10} [{bar:32}] {elapsed}/{duration} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(phase.to_owned());
        let started = Instant::now();
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let (mut last, mut last_at) = (counter.load(Ordering::Relaxed), Instant::now());
                loop {
                    tick.tick().await;
                    let (now, at) = (counter.load(Ordering::Relaxed), Instant::now());
                    let rate = (now - last) as f64 / at.duration_since(last_at).as_secs_f64().max(1e-3);
                    (last, last_at) = (now, at);
                    match total {
                        Some(_) => bar.set_position(now),
                        None => bar.set_position(started.elapsed().as_millis() as u64),
                    }
                    bar.set_message(format!("{} {unit}", grouped(rate as u64)));
                }
            }
        });
        Progress { bar, ticker }
    }

    /// Stops drawing and clears the bar.
    pub(crate) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1 000");
        assert_eq!(grouped(2_034_567), "2 034 567");
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let mut nanos: Vec<u64> = (1..=1000).rev().map(|us| us * 1000).collect();
        let l = Latency::from_nanos("ack", &mut nanos).expect("samples");
        assert_eq!((l.samples, l.p50_us, l.p99_us, l.max_us), (1000, 501.0, 991.0, 1000.0));
        assert_eq!(Latency::from_nanos("ack", &mut []), None);
    }

    #[test]
    fn a_report_survives_json_and_shows_missing_messages_in_the_table() {
        let mut r = Report::new("fan-in", "m2m");
        r.qos = Some(1);
        r.expected = Some(2000);
        r.counted(2.0, 2000, 1999);
        let json = serde_json::to_string(&r).expect("encode");
        assert_eq!(serde_json::from_str::<Report>(&json).expect("decode"), r);
        let table = table(&[r], false);
        assert!(table.contains("1 999 of 2 000"), "{table}");
        assert!(table.contains("1 000 msg/s"), "{table}");
    }
}
