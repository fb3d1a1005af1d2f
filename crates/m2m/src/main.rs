//! `m2m`: the one binary of the m2m fabric. `m2m node` runs a node; other subcommands are tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

mod bench;
mod cert;
use m2m::config;
mod demo;
mod device;
mod mesh;
mod pubsub;
mod query;
mod remote;
mod rule;
mod sim;
mod user;

/// An edge-first machine-to-machine messaging and data fabric.
#[derive(Debug, Parser)]
#[command(name = "m2m", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: an MQTT 3.1.1/5.0 broker. Needs no configuration.
    Node(NodeArgs),
    /// A node with simulated street lamps, a factory line and vehicles, and rules that make them act
    /// on each other; prints the console's address and password. Ctrl-C stops everything.
    Demo(demo::DemoArgs),
    /// Load and latency against a running broker (this node or any other): a table at the end, or
    /// one JSON object with `--json`.
    Bench(bench::BenchArgs),
    /// The device registry: of a running node through its HTTP API (`--api`, or found by its
    /// configuration), or of a stopped node's data directory.
    Device {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: device::DeviceCommand,
    },
    /// Device groups and their access rules (of a running or a stopped node, as for `device`).
    Group {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: device::GroupCommand,
    },
    /// Quarantine: ban or isolate clients (of a running node, at once, or of a stopped one).
    Quarantine {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: device::QuarantineCommand,
    },
    /// The audit log of registry and quarantine changes (of a running or a stopped node).
    Audit {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: device::AuditCommand,
    },
    /// Rules: SQL over messages and client events and the actions taken on what it selects (of a
    /// running node, at once, or of a stopped one, as for `device`); `test` tries a rule on a sample
    /// message without a node.
    Rule {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: rule::RuleCommand,
    },
    /// The mesh as a running node sees it (`status`).
    Mesh {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: mesh::MeshCommand,
    },
    /// Users of the console and API, with their roles (of a running node or a stopped one; on a
    /// stopped node, `set NAME --password-stdin` resets a lost password).
    User {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// API tokens: bearer tokens with a role, for scripts and scrapers.
    Token {
        #[command(flatten)]
        place: device::Place,
        #[command(subcommand)]
        command: user::TokenCommand,
    },
    /// Certificates for TLS and mutual TLS.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// The history of messages: points over a time range (`--all` to export every one), the last
    /// value of each topic (`--latest`), the topics (`--topics`) or aggregates (`--bucket`); of a
    /// running node through its HTTP API, or read from a stopped node's data directory.
    Query(query::QueryArgs),
    /// Publish messages to any MQTT broker (like mosquitto_pub): MQTT 3.1.1 or 5 with properties,
    /// over TCP, TLS, WebSocket; from text, a file or standard input, line by line.
    Pub(pubsub::PubArgs),
    /// Subscribe and print what arrives (like mosquitto_sub): the payload, topic and payload, or JSON
    /// lines with the MQTT 5 properties; until a count or a timeout.
    Sub(pubsub::SubArgs),
    /// Simulated machines against any MQTT broker: vehicle telematics, factory lines, street lamps.
    #[command(subcommand)]
    Sim(sim::Kind),
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// TOML configuration file; settings can also come from `M2M_<SECTION>_<KEY>` variables.
    #[arg(long, env = "M2M_CONFIG")]
    config: Option<PathBuf>,
    /// MQTT listen address (overrides mqtt.listen).
    #[arg(long)]
    listen: Option<String>,
    /// HTTP API and console listen address (overrides http.listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// Data directory (overrides node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter (overrides log.level), e.g. `debug` or `m2m_broker=trace`.
    #[arg(long)]
    log_level: Option<String>,
    /// This node's name in the mesh (overrides mesh.node_id).
    #[arg(long)]
    node_id: Option<String>,
    /// A mesh endpoint to listen on, e.g. `tcp/0.0.0.0:7447` (repeatable; overrides mesh.listen).
    #[arg(long = "mesh-listen", value_name = "ENDPOINT")]
    mesh_listen: Vec<String>,
    /// A mesh endpoint of another node, e.g. `tcp/10.0.0.2:7447` (repeatable; overrides mesh.connect).
    #[arg(long = "mesh-connect", value_name = "ENDPOINT")]
    mesh_connect: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => run_node(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Device { place, command } => device::run_device(&place, command),
        Command::Group { place, command } => device::run_group(&place, command),
        Command::Quarantine { place, command } => device::run_quarantine(&place, command),
        Command::Audit { place, command } => device::run_audit(&place, command),
        Command::Rule { place, command } => rule::run(&place, command),
        Command::Mesh { place, command } => mesh::run(&place, command),
        Command::User { place, command } => user::run_user(&place, command),
        Command::Token { place, command } => user::run_token(&place, command),
        Command::Cert(command) => cert::run(command),
        Command::Query(args) => query::run(args),
        Command::Pub(args) => return pubsub::publish(args),
        Command::Sub(args) => return pubsub::subscribe(args),
        Command::Sim(kind) => sim::run(kind),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(listen) = &args.listen {
        overrides.push(("mqtt.listen", toml::Value::String(listen.clone())));
    }
    if let Some(listen) = &args.http_listen {
        overrides.push(("http.listen", toml::Value::String(listen.clone())));
    }
    if let Some(dir) = &args.data_dir {
        overrides.push(("node.data_dir", toml::Value::String(dir.display().to_string())));
    }
    if let Some(level) = &args.log_level {
        overrides.push(("log.level", toml::Value::String(level.clone())));
    }
    if let Some(id) = &args.node_id {
        overrides.push(("mesh.node_id", toml::Value::String(id.clone())));
    }
    let list =
        |items: &[String]| toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect());
    if !args.mesh_listen.is_empty() {
        overrides.push(("mesh.listen", list(&args.mesh_listen)));
    }
    if !args.mesh_connect.is_empty() {
        overrides.push(("mesh.connect", list(&args.mesh_connect)));
    }
    let file = config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&file).context("cannot print the configuration")?);
        return Ok(());
    }
    init_logging(&file.log);
    let mut broker_config = file.broker()?;
    let rules = file.rules.config()?;
    let mesh = file.mesh.config()?.map(m2m_mesh::Mesh::new).transpose()?;
    if let Some(mesh) = &mesh {
        broker_config.taps.push(std::sync::Arc::new(mesh.clone()));
        broker_config.interest = Some(mesh.interest());
    }
    let uplinks =
        file.uplinks.iter().map(config::UplinkSection::uplink).collect::<anyhow::Result<Vec<_>>>()?;
    for (i, u) in uplinks.iter().enumerate() {
        if uplinks[..i].iter().any(|other| other.name() == u.name()) {
            anyhow::bail!("two [[uplinks]] entries are named {:?}", u.name());
        }
        broker_config.taps.push(std::sync::Arc::new(u.clone()));
        // What an uplink sends out is wanted here: the mesh brings it from every node.
        if let Some(mesh) = &mesh {
            for route in &file.uplinks[i].out {
                mesh.interest().add_filter(&route.filter);
            }
        }
    }
    std::fs::create_dir_all(&file.node.data_dir)
        .with_context(|| format!("cannot create data directory {}", file.node.data_dir.display()))?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Without the LIFO slot, tasks woken by one poll of the socket driver run in the order their bytes
    // arrived, so a SUBSCRIBE that reached the node before another client's PUBLISH is handled first.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = builder.build().context("cannot start runtime")?;
    runtime.block_on(async move {
        // The rules engine sees every message and event from the start; it reaches the node (and
        // loads the rules kept in its store) once the node is bound.
        let engine = rules.map(m2m_engine::Engine::new).transpose()?;
        if let Some(engine) = &engine {
            broker_config.taps.push(std::sync::Arc::new(engine.clone()));
        }
        // The console's live view watches the message path only while someone watches it.
        let live = file.http.enabled.then(m2m_http::Live::new);
        if let Some(live) = &live {
            broker_config.taps.push(std::sync::Arc::new(live.clone()));
        }
        let broker = m2m_broker::Broker::bind(&broker_config).await?;
        if let Some(live) = &live {
            live.start(broker.metrics());
        }
        if let Some(engine) = &engine {
            engine.attach(broker.router(), broker.access(), broker.history(), broker.store())?;
        }
        let operators = std::sync::Arc::new(
            m2m_access::Operators::open(broker.store()).context("cannot read the operators of the API")?,
        );
        let mut shown = serde_json::to_value(&file).context("cannot show the configuration")?;
        m2m_http::redact_secrets(&mut shown);
        let parts = m2m_http::NodeParts {
            engine: engine.clone(),
            mesh: mesh.clone(),
            uplinks: uplinks.clone(),
            operators: operators.clone(),
            live,
            node_id: mesh.as_ref().map_or_else(|| file.mesh.node_id(), |m| m.node_id().to_owned()),
            config: Some(shown),
            ..m2m_http::NodeParts::with_broker(&broker)
        };
        if !uplinks.is_empty() {
            let store =
                broker.store().context("uplinks keep their outbox in the store: this node has none")?;
            for u in &uplinks {
                u.start(broker.router(), store.clone()).await?;
            }
            if let Some(engine) = &engine {
                engine.set_uplinks(uplinks.clone());
            }
        }
        if let Some(mesh) = &mesh {
            mesh.start(broker.router(), broker.store()).await?;
            mesh.serve_queries(m2m_http::mesh_queries(&parts)).await?;
        }
        let http = match file.http.config() {
            Some(config) => {
                match m2m_http::HttpServer::bind(&config, parts).await {
                    Ok(server) => Some(server),
                    // The embedded default may be taken on this machine: the node still runs.
                    Err(e) if config.listen == m2m_http::DEFAULT_LISTEN => {
                        tracing::warn!(listen = %config.listen, error = %e,
                        "HTTP API not served: its default address is in use (set http.listen)");
                        None
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot serve the HTTP API on {}", config.listen)))
                    }
                }
            }
            None => None,
        };
        if let Some(http) = &http {
            first_admin(&operators, http.local_addr())?;
        }
        info!(mqtt = %broker.local_addr(), http = ?http.as_ref().map(|h| h.local_addr()),
            data_dir = %file.node.data_dir.display(), "m2m node starting");
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let http = http.map(|h| tokio::spawn(h.run(shutdown.clone())));
        broker.run(shutdown).await?;
        for u in &uplinks {
            u.close().await;
        }
        if let Some(mesh) = &mesh {
            mesh.close().await;
        }
        if let Some(http) = http {
            match http.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP API failed"),
                Err(e) => tracing::warn!(error = %e, "HTTP API task failed"),
                Ok(Ok(())) => {}
            }
        }
        info!("m2m node stopped");
        Ok(())
    })
}

/// Creates user `admin` with a random password when the node has no admin, and shows the password
/// once, on standard output, with the console's address.
fn first_admin(operators: &m2m_access::Operators, http: std::net::SocketAddr) -> anyhow::Result<()> {
    let now = m2m_store::unix_ms(std::time::SystemTime::now());
    match operators.ensure_admin(now) {
        Ok(Some(password)) => {
            println!("console: http://{http}/  user: admin  password: {password}");
            println!("(shown once: the node keeps only its hash; change it in the console or with `m2m user passwd admin`)");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            tracing::warn!("no admin user: created user admin; its password was printed on standard output");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(m2m_access::OperatorError::Exists(_)) => {
            tracing::warn!("the node has no admin user and a non-admin user is called admin: make an admin with `m2m user add`");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot create the first admin user")),
    }
}

fn init_logging(log: &config::LogSection) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init`: in `m2m demo` the node shares its process with the simulated machines.
    let _ = if log.format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
    shutdown.cancel();
}
