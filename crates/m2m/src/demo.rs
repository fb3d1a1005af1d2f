//! `m2m demo`: a node on embedded defaults, simulated street lamps, a factory line and a small fleet
//! of vehicles, and the rules that make them act on each other, in one process; Ctrl-C stops it all.
//!
//! The node runs on a thread of its own exactly as `m2m node` does (its own runtime, its own
//! handling of Ctrl-C); each kind of simulated machine runs as `m2m sim` does, on its thread. Every
//! part listens for Ctrl-C (and SIGTERM) by itself, so one signal stops them all, each cleanly:
//! the machines disconnect, the node closes its sessions and its store. The demo sets the console's
//! admin password before the node starts, so that it can print it whatever the data directory held.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use m2m_access::{Operators, Role};
use m2m_store::{Store, StoreConfig};
use serde_json::{json, Value};

use crate::remote;

/// `m2m demo`
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// MQTT port of the node (on 127.0.0.1).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Port of the console and HTTP API (on 127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Keep the node's data in this directory (default: a new temporary one, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Street lamps.
    #[arg(long, default_value_t = 12)]
    lamps: usize,
    /// Factory lines (four machines each).
    #[arg(long, default_value_t = 1)]
    lines: usize,
    /// Vehicles.
    #[arg(long, default_value_t = 8)]
    vehicles: usize,
    /// Simulated seconds per second, so that motors overheat, pedestrians pass and tanks run low
    /// within the first minutes.
    #[arg(long, default_value_t = 20.0)]
    time_scale: f64,
}

/// The demo's rules: `(id, description, SQL, actions)`.
fn rules() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "lamp-on",
            "A lamp switches on when its presence sensor sees someone",
            r#"SELECT topic_level(topic, 2) AS lamp FROM "lamps/+/presence" WHERE payload.present = true"#,
            json!([{"type": "republish", "topic": "lamps/${lamp}/cmd", "payload": "{\"on\": true, \"level\": 100}"}]),
        ),
        (
            "lamp-dim",
            "A lamp dims when nobody is there any more",
            r#"SELECT topic_level(topic, 2) AS lamp FROM "lamps/+/presence" WHERE payload.present = false"#,
            json!([{"type": "republish", "topic": "lamps/${lamp}/cmd", "payload": "{\"on\": true, \"level\": 20}"}]),
        ),
        (
            "motor-overheat",
            "A motor hotter than 90 °C is stopped, and an alert raised",
            r#"SELECT topic_level(topic, 2) AS line, topic_level(topic, 3) AS machine, payload.value AS temp
               FROM "factory/+/+/temp" WHERE payload.value > 90"#,
            json!([
                {"type": "republish", "topic": "factory/${line}/${machine}/cmd", "payload": "{\"cmd\": \"stop\"}"},
                {"type": "republish", "topic": "alerts/factory/${line}/${machine}",
                 "payload": "{\"alert\": \"overheat\", \"temp\": ${temp}}"}
            ]),
        ),
        (
            "low-fuel",
            "A vehicle under 60 % of fuel is sent back to the depot to refuel (a high mark, so that the demo shows it soon)",
            r#"SELECT topic_level(topic, 2) AS vehicle, payload.fuel_pct AS fuel
               FROM "fleet/+/telemetry" WHERE payload.fuel_pct < 60 AND payload.mode = 'route'"#,
            json!([
                {"type": "republish", "topic": "fleet/${vehicle}/cmd", "payload": "{\"cmd\": \"return_to_depot\"}"},
                {"type": "republish", "topic": "alerts/fleet/${vehicle}",
                 "payload": "{\"alert\": \"low_fuel\", \"fuel_pct\": ${fuel}}"}
            ]),
        ),
        (
            "refueled",
            "A vehicle parked at the depot with a full tank goes back on its route",
            r#"SELECT topic_level(topic, 2) AS vehicle FROM "fleet/+/telemetry"
               WHERE payload.mode = 'parked' AND payload.fuel_pct > 95"#,
            json!([{"type": "republish", "topic": "fleet/${vehicle}/cmd", "payload": "{\"cmd\": \"resume\"}"}]),
        ),
    ]
}

/// Parses `m2m sim ...` arguments, for the machines the demo runs.
#[derive(Debug, Parser)]
struct SimLine {
    #[command(subcommand)]
    kind: crate::sim::Kind,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (std::env::temp_dir().join(format!("m2m-demo-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let password = admin_password(&data_dir)?;
    let mqtt = SocketAddr::from(([127, 0, 0, 1], args.mqtt_port));
    let http = SocketAddr::from(([127, 0, 0, 1], args.http_port));
    for (addr, what) in [(mqtt, "--mqtt-port"), (http, "--http-port")] {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            bail!("{addr} is in use by another program: pick a free port with {what}");
        }
    }

    // The node, as `m2m node` runs it: its API on `http`, quiet logs.
    let node_args = crate::NodeArgs {
        config: None,
        listen: Some(mqtt.to_string()),
        http_listen: Some(http.to_string()),
        data_dir: Some(data_dir.clone()),
        log_level: Some("warn".to_owned()),
        node_id: None,
        mesh_listen: Vec::new(),
        mesh_connect: Vec::new(),
        print_config: false,
    };
    let node = std::thread::Builder::new()
        .name("m2m-node".into())
        .spawn(move || crate::run_node(node_args))
        .context("cannot start the node")?;
    wait_for(&node, &[mqtt, http])?;

    let api = remote::Client::for_listen(http, None)?;
    for (id, description, sql, actions) in rules() {
        let body = json!({"id": id, "description": description, "sql": sql, "actions": actions});
        let _: Value = api
            .send_json("PUT", &format!("/rules/{id}"), &body)
            .with_context(|| format!("cannot add the demo rule {id}"))?;
    }

    let common = |name: &str| {
        let scale = args.time_scale.to_string();
        let prefix = format!("demo-{name}-");
        [
            "--broker",
            &mqtt.to_string(),
            "--time-scale",
            &scale,
            "--summary-every",
            "60",
            "--client-id-prefix",
            &prefix,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let machines: [(&str, Vec<String>); 3] = [
        (
            "lamps",
            vec![
                "lamps".into(),
                "--lamps".into(),
                args.lamps.to_string(),
                "--pedestrians".into(),
                "20".into(),
            ],
        ),
        ("factory", vec!["factory".into(), "--lines".into(), args.lines.to_string()]),
        (
            "vehicles",
            vec![
                "telematics".into(),
                "--vehicles".into(),
                args.vehicles.to_string(),
                "--dropout-rate".into(),
                "2".into(),
            ],
        ),
    ];
    let mut sims = Vec::new();
    for (name, kind_args) in machines {
        let mut line = vec!["sim".to_owned()];
        line.extend(kind_args);
        line.extend(common(name));
        let kind = SimLine::try_parse_from(&line).with_context(|| format!("demo machines {line:?}"))?.kind;
        let thread = std::thread::Builder::new()
            .name(format!("m2m-sim-{name}"))
            .spawn(move || crate::sim::run(kind))
            .context("cannot start the simulated machines")?;
        sims.push((name, thread));
    }

    print_banner(mqtt, http, &password, &args, &data_dir, temporary);

    let result = match node.join() {
        Ok(result) => result.context("the node stopped"),
        Err(_) => Err(anyhow::anyhow!("the node panicked")),
    };
    for (name, thread) in sims {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("demo: the simulated {name} stopped with an error: {e:#}"),
            Err(_) => eprintln!("demo: the simulated {name} panicked"),
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("demo stopped");
    result
}

/// Sets (or creates) the console's `admin` user with a new random password in the data directory's
/// store, before the node opens it.
fn admin_password(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("store");
    let (store, _) = Store::open(StoreConfig::new(&path))
        .with_context(|| format!("cannot open the store in {} (is a node running on it?)", path.display()))?;
    let operators = Operators::open(Some(store)).context("cannot read the operators")?;
    let password = m2m_access::random_text(14);
    let now = m2m_store::unix_ms(std::time::SystemTime::now());
    if operators.user("admin").is_some() {
        operators.update_user("admin", Some(&password), Some(Role::Admin))?;
    } else {
        operators.add_user("admin", &password, Role::Admin, now)?;
    }
    Ok(password)
}

/// Waits until every address accepts connections, or the node's thread ends (with its error).
fn wait_for(node: &JoinHandle<anyhow::Result<()>>, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in addrs {
        while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if node.is_finished() {
                bail!("the node stopped while starting (see the messages above)");
            }
            if Instant::now() > deadline {
                bail!("the node did not listen on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn print_banner(
    mqtt: SocketAddr,
    http: SocketAddr,
    password: &str,
    args: &DemoArgs,
    data_dir: &std::path::Path,
    temporary: bool,
) {
    let port = mqtt.port();
    println!();
    println!("m2m demo is running");
    println!("  console   http://{http}/   user: admin   password: {password}");
    println!("  MQTT      {mqtt}");
    println!(
        "  machines  {} street lamps, {} factory line(s) of 4 machines, {} vehicles (time x{})",
        args.lamps, args.lines, args.vehicles, args.time_scale
    );
    println!(
        "  rules     lamp-on, lamp-dim (presence -> lamp), motor-overheat (stop at 90 °C), low-fuel (back to the depot), refueled (back on the route)"
    );
    println!("  data      {}{}", data_dir.display(), if temporary { " (removed at the end)" } else { "" });
    println!();
    println!("Watch the machines talk:");
    println!("  m2m sub -p {port} -t 'lamps/+/cmd' -v            # lamps switched by the rules");
    println!("  m2m sub -p {port} -t 'alerts/#' -v               # overheating motors, vehicles low on fuel");
    println!("  m2m sub -p {port} -t 'fleet/+/telemetry' -C 3 -v # vehicle telemetry");
    println!("  m2m pub -p {port} -t 'factory/line-01/press-1/cmd' -m '{{\"cmd\": \"start\"}}'");
    println!();
    println!("Ctrl-C stops everything.");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}
