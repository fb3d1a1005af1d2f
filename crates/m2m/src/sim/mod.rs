//! `m2m sim`: simulated machines against any MQTT 3.1.1 or 5.0 broker (this node, Mosquitto, any
//! other), thousands per process, one tokio task each.
//!
//! # Layout
//! - [`telematics`]: vehicles driving routes around a depot, with cellular drop-outs.
//! - [`factory`]: lines of machines whose motors heat under load; sensors and actuators.
//! - [`lamps`]: street lamps with presence sensors, switched by commands.
//! - [`runner`]: one machine on the wire (connect ramp, reconnect with back-off, offline buffer,
//!   QoS 1/2, commands), driving a sans-IO model ([`runner::Machine`]).
//! - [`rng`]: the seeded generator that makes a run repeatable.
//!
//! Every run prints a summary line every few seconds and a last one when it ends (after
//! `--duration`, or on Ctrl-C, when every machine sends DISCONNECT).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use m2m_codec::{ProtocolVersion, QoS};
use tokio_util::sync::CancellationToken;

mod factory;
mod lamps;
mod rng;
mod runner;
mod telematics;

use rng::Rng;
use runner::{Dropouts, Machine, Plan, Stats, Target};

/// Flags shared by every kind of machine.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Broker: `host[:port]` or `mqtt://host[:port]` (port 1883 by default).
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 5)]
    protocol: u8,
    /// Username every machine connects with.
    #[arg(long, conflicts_with = "username_prefix")]
    username: Option<String>,
    /// One device per machine: each connects as this prefix followed by its name (e.g.
    /// `dev-truck-0001`).
    #[arg(long, value_name = "PREFIX")]
    username_prefix: Option<String>,
    /// Password every machine connects with.
    #[arg(long)]
    password: Option<String>,
    /// Client ids are this prefix followed by the machine's name.
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    client_id_prefix: String,
    /// QoS of what machines publish (0, 1 or 2); a backlog kept offline goes out at 1 at least.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Samples per second of each machine (vehicles: telemetry; factory: each sensor; lamps: the
    /// energy meter).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds to run; without it, until Ctrl-C.
    #[arg(long)]
    duration: Option<f64>,
    /// Seed of every random choice (routes, starting points, pedestrians, drop-outs): the same
    /// seed gives the same fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per second: physics (driving, heating, pedestrians) goes this much faster;
    /// the publishing rate does not change.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Seconds over which machines first connect, each at a jittered point of the ramp (default:
    /// 500 machines a second).
    #[arg(long, value_name = "SECS")]
    ramp: Option<f64>,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    summary_every: f64,
    /// MQTT keep-alive, seconds.
    #[arg(long, default_value_t = 30)]
    keep_alive: u16,
    /// Shortest wait before reconnecting, seconds (doubling at each failure, jittered).
    #[arg(long, default_value_t = 0.5, value_name = "SECS")]
    backoff_min: f64,
    /// Longest wait before reconnecting, seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    backoff_max: f64,
}

/// The kinds of simulated machines.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Kind {
    /// Vehicles driving routes around a depot, publishing `fleet/<vehicle>/telemetry`, obeying
    /// `fleet/<vehicle>/cmd`; with cellular drop-outs, during which they keep their samples.
    Telematics {
        #[command(flatten)]
        common: Common,
        /// Vehicles (`truck-0001`, `truck-0002`, …).
        #[arg(long, default_value_t = 10)]
        vehicles: usize,
        /// Latitude and longitude of the depot.
        #[arg(long, default_value = "48.137,11.575", value_name = "LAT,LON")]
        depot: String,
        /// Drop-outs of each vehicle's cellular link per hour (0: none).
        #[arg(long, default_value_t = 0.0)]
        dropout_rate: f64,
        /// Shortest drop-out, seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECS")]
        dropout_min: f64,
        /// Longest drop-out, seconds.
        #[arg(long, default_value_t = 120.0, value_name = "SECS")]
        dropout_max: f64,
        /// Samples each vehicle keeps while offline (the oldest are dropped beyond).
        #[arg(long, default_value_t = 10_000)]
        buffer: usize,
    },
    /// Factory lines of machines with motors: `factory/<line>/<machine>/{temp,vibration,rpm}`,
    /// state on `.../state` (retained), commands on `.../cmd`.
    Factory {
        #[command(flatten)]
        common: Common,
        /// Lines (`line-01`, `line-02`, …).
        #[arg(long, default_value_t = 1)]
        lines: usize,
        /// Machines per line (`press-1`, `conveyor-2`, …).
        #[arg(long, default_value_t = 4)]
        machines: usize,
    },
    /// Street lamps with presence sensors: `lamps/<id>/presence`, state on `lamps/<id>/state`
    /// (retained), energy on `lamps/<id>/power`, commands on `lamps/<id>/cmd`.
    Lamps {
        #[command(flatten)]
        common: Common,
        /// Lamps (`lamp-0001`, `lamp-0002`, …).
        #[arg(long, default_value_t = 20)]
        lamps: usize,
        /// Pedestrians passing each lamp per hour (simulated).
        #[arg(long, default_value_t = 30.0)]
        pedestrians: f64,
    },
}

/// Runs the simulation until `--duration` or Ctrl-C.
pub(crate) fn run(kind: Kind) -> anyhow::Result<()> {
    init_logging();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start runtime")?;
    runtime.block_on(simulate(kind))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A machine ready to run, its model boxed so that every kind shares one spawning loop.
struct Spawn {
    name: String,
    start: Box<dyn FnOnce(Plan, Arc<Stats>, CancellationToken) -> tokio::task::JoinHandle<()> + Send>,
}

fn spawn_of<M: Machine>(machine: M) -> Spawn {
    Spawn {
        name: machine.name().to_owned(),
        start: Box::new(move |plan, stats, stop| tokio::spawn(runner::run(machine, plan, stats, stop))),
    }
}

async fn simulate(kind: Kind) -> anyhow::Result<()> {
    let (label, common, machines, buffer, dropouts) = match kind {
        Kind::Telematics { common, vehicles, depot, dropout_rate, dropout_min, dropout_max, buffer } => {
            let depot = parse_depot(&depot)?;
            if !(dropout_rate >= 0.0 && dropout_min >= 0.0 && dropout_max >= dropout_min) {
                bail!("--dropout-rate must be 0 or more and --dropout-min at most --dropout-max");
            }
            let dropouts = (dropout_rate > 0.0).then(|| Dropouts {
                per_hour: dropout_rate,
                min: Duration::from_secs_f64(dropout_min),
                max: Duration::from_secs_f64(dropout_max),
            });
            let width = digits(vehicles);
            let machines = (0..vehicles)
                .map(|i| {
                    let rng = Rng::for_machine(common.seed, "telematics", i as u64);
                    spawn_of(telematics::Vehicle::new(format!("truck-{:0width$}", i + 1), depot, rng))
                })
                .collect();
            ("telematics", common, machines, buffer, dropouts)
        }
        Kind::Factory { common, lines, machines } => {
            let width = lines.to_string().len().max(2);
            let mut all = Vec::with_capacity(lines * machines);
            for l in 0..lines {
                let line = format!("line-{:0width$}", l + 1);
                for m in 0..machines {
                    let n = (l * machines + m) as u64;
                    let rng = Rng::for_machine(common.seed, "factory", n);
                    all.push(spawn_of(factory::Motor::new(&line, &factory::machine_name(m), rng)));
                }
            }
            ("factory", common, all, 0, None)
        }
        Kind::Lamps { common, lamps, pedestrians } => {
            if pedestrians.is_nan() || pedestrians < 0.0 {
                bail!("--pedestrians must be 0 or more");
            }
            let width = digits(lamps);
            let report_every = 1.0 / common.rate * common.time_scale;
            let machines = (0..lamps)
                .map(|i| {
                    let rng = Rng::for_machine(common.seed, "lamps", i as u64);
                    let name = format!("lamp-{:0width$}", i + 1);
                    spawn_of(lamps::Lamp::new(name, pedestrians, report_every, rng))
                })
                .collect::<Vec<_>>();
            ("lamps", common, machines, 0, None)
        }
    };
    if machines.is_empty() {
        bail!("no machines to simulate");
    }
    let mut plan = base_plan(&common, buffer, dropouts)?;
    if label == "lamps" {
        // Presence is reported when it changes, not at the rate: look often enough to be prompt.
        plan.tick = plan.tick.min(Duration::from_millis(250));
    }
    let count = machines.len();
    let ramp = common.ramp.unwrap_or(count as f64 / 500.0);
    if !(ramp >= 0.0 && ramp.is_finite()) {
        bail!("--ramp must be 0 or more seconds");
    }
    let summary_every = Duration::try_from_secs_f64(common.summary_every)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--summary-every must be more than 0 seconds")?;
    let duration = common
        .duration
        .map(|d| Duration::try_from_secs_f64(d).context("--duration must be 0 or more seconds"))
        .transpose()?;

    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let mut ramp_rng = Rng::for_machine(common.seed, "ramp", 0);
    let mut tasks = Vec::with_capacity(count);
    for (i, machine) in machines.into_iter().enumerate() {
        let mut plan = plan.clone();
        plan.client_id = format!("{}{}", common.client_id_prefix, machine.name).into();
        if let Some(prefix) = &common.username_prefix {
            plan.username = Some(format!("{prefix}{}", machine.name).into());
        }
        plan.start_delay = Duration::from_secs_f64(ramp * (i as f64 + ramp_rng.unit()) / count as f64);
        plan.rng = Rng::for_machine(common.seed, "link", i as u64);
        tasks.push((machine.start)(plan, stats.clone(), stop.clone()));
    }
    println!(
        "sim {label}: {count} machines -> {}:{} (MQTT {}, QoS {}, {} msg/s each, time x{})",
        plan.target.host,
        plan.target.port,
        if common.protocol == 5 { "5" } else { "3.1.1" },
        common.qos,
        common.rate,
        common.time_scale
    );

    let started = Instant::now();
    let signal = CancellationToken::new();
    tokio::spawn(crate::stop_on_signal(signal.clone()));
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + summary_every, summary_every);
    let end = duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}", summary(label, count, &stats, started)),
            () = signal.cancelled() => break,
            () = async { match end { Some(end) => tokio::time::sleep_until(end).await, None => std::future::pending().await } } => break,
        }
    }
    stop.cancel();
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
        eprintln!("some machines did not disconnect within 10 s");
    }
    println!("{} (done)", summary(label, count, &stats, started));
    Ok(())
}

/// The part of every machine's plan that comes from the flags.
fn base_plan(common: &Common, buffer: usize, dropouts: Option<Dropouts>) -> anyhow::Result<Plan> {
    let target = parse_broker(&common.broker)?;
    let version = match common.protocol {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        _ => bail!("--protocol must be 4 (MQTT 3.1.1) or 5"),
    };
    let qos = QoS::from_u8(common.qos).context("--qos must be 0, 1 or 2")?;
    if !(common.rate > 0.0 && common.rate <= 1000.0) {
        bail!("--rate must be above 0 and at most 1000 samples a second");
    }
    if !(common.time_scale > 0.0 && common.time_scale <= 10_000.0) {
        bail!("--time-scale must be above 0 and at most 10000");
    }
    if !(common.backoff_min > 0.0 && common.backoff_max >= common.backoff_min && common.backoff_max <= 3600.0)
    {
        bail!("--backoff-min must be above 0 and at most --backoff-max (at most 3600)");
    }
    Ok(Plan {
        target: Arc::new(target),
        version,
        qos,
        keep_alive: common.keep_alive,
        client_id: Arc::from(""),
        username: common.username.as_deref().map(Arc::from),
        password: common.password.as_ref().map(|p| Bytes::copy_from_slice(p.as_bytes())),
        tick: Duration::from_secs_f64(1.0 / common.rate),
        time_scale: common.time_scale,
        start_delay: Duration::ZERO,
        buffer,
        dropouts,
        backoff_min: Duration::from_secs_f64(common.backoff_min),
        backoff_max: Duration::from_secs_f64(common.backoff_max),
        rng: Rng::for_machine(common.seed, "link", 0),
    })
}

fn summary(label: &str, count: usize, stats: &Stats, started: Instant) -> String {
    let published = stats.published.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let mut line = format!(
        "sim {label}: {:.0} s, {}/{count} connected, {published} published ({:.0}/s), {} commands, {} reconnects, {} drop-outs, {} buffered, {} dropped",
        secs,
        stats.connected.load(Ordering::Relaxed),
        published as f64 / secs,
        stats.commands.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        stats.dropouts.load(Ordering::Relaxed),
        stats.buffered.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
    );
    // Held only to read a string.
    if let Some(error) = stats.last_error.lock().ok().and_then(|e| e.clone()) {
        line.push_str(&format!("; last error: {error}"));
    }
    line
}

/// Digits of the largest number among `count` (at least 4), so that names sort.
fn digits(count: usize) -> usize {
    count.to_string().len().max(4)
}

/// `host[:port]`, `mqtt://host[:port]` or `tcp://host[:port]`; IPv6 in brackets.
fn parse_broker(text: &str) -> anyhow::Result<Target> {
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mqtt") || scheme.eq_ignore_ascii_case("tcp") => {
            rest
        }
        Some((scheme, _)) => bail!("--broker: unsupported scheme {scheme:?} (use mqtt://host:port)"),
        None => text,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').context("--broker: unclosed [")?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        bail!("--broker: expected host[:port] or mqtt://host[:port], got {text:?}");
    }
    let port = match port {
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("--broker: bad port in {text:?}"))?,
    };
    Ok(Target { host: host.to_owned(), port })
}

fn parse_depot(text: &str) -> anyhow::Result<(f64, f64)> {
    let parsed = text
        .split_once(',')
        .and_then(|(lat, lon)| Some((lat.trim().parse().ok()?, lon.trim().parse().ok()?)));
    match parsed {
        Some((lat, lon)) if (-80.0..=80.0).contains(&lat) && (-180.0..=180.0).contains(&lon) => {
            Ok((lat, lon))
        }
        _ => {
            bail!("--depot: expected LAT,LON with a latitude from -80 to 80 and a longitude from -180 to 180")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_take_a_scheme_a_host_and_a_port() {
        let t = |host: &str, port| Target { host: host.into(), port };
        assert_eq!(parse_broker("127.0.0.1:1884").unwrap(), t("127.0.0.1", 1884));
        assert_eq!(parse_broker("mqtt://broker.local").unwrap(), t("broker.local", 1883));
        assert_eq!(parse_broker("tcp://[::1]:1885/").unwrap(), t("::1", 1885));
        assert_eq!(parse_broker("[::1]").unwrap(), t("::1", 1883));
        assert!(parse_broker("mqtts://x").is_err());
        assert!(parse_broker("x:0").is_err());
        assert!(parse_broker("user@x").is_err());
        assert!(parse_broker("").is_err());
    }

    #[test]
    fn depots_are_latitude_then_longitude() {
        assert_eq!(parse_depot("52.52, 13.405").unwrap(), (52.52, 13.405));
        assert!(parse_depot("95,0").is_err());
        assert!(parse_depot("52.5").is_err());
    }
}
