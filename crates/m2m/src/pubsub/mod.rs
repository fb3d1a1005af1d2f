//! `m2m pub` and `m2m sub`: publish messages and print what a subscription receives, against any
//! MQTT 3.1.1 or 5.0 broker (this node or another), over TCP, TLS, WebSocket or WebSocket over TLS.
//! Their options follow mosquitto_pub and mosquitto_sub where these have one.
//!
//! # Layout
//! - this module: the options, the publishing and subscribing loops, and the exit codes;
//! - [`client`]: the transports and one connection on `m2m-codec`;
//! - [`mod@format`]: how a received message is printed.
//!
//! Exit codes (also in `--help`, [`EXIT_CODES`]): 0 done, 1 another failure, 2 bad arguments,
//! 3 network failure, 4 connection refused by the broker, 27 `sub -W` timed out.

mod client;
mod format;

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m2m_codec::{
    Ack, Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
    RetainHandling, Subscribe, SubscriptionOptions, UserProperty, Will, WillProperties,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use client::{Client, Endpoint, TlsSettings};
use format::Format;

/// Everything went as asked.
const EXIT_OK: u8 = 0;
/// Another failure: a file that cannot be read, a message or subscription the broker refused, a
/// DISCONNECT from the broker, a protocol error.
const EXIT_ERROR: u8 = 1;
/// Bad arguments (as for every `m2m` command, from the argument parser too).
const EXIT_USAGE: u8 = 2;
/// The broker could not be reached or the connection was lost (TCP, TLS, WebSocket, keep-alive).
const EXIT_NETWORK: u8 = 3;
/// The broker refused the connection; its CONNACK reason code is printed.
const EXIT_REFUSED: u8 = 4;
/// `sub -W`: the time ran out (the same code as mosquitto_sub).
const EXIT_TIMEOUT: u8 = 27;

/// The exit codes, for `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0   done (sub: -C messages received, or stopped with Ctrl-C)
  1   another failure (an unreadable file, a message or subscription refused, a DISCONNECT from the broker)
  2   bad arguments
  3   network failure: the broker cannot be reached, TLS or WebSocket handshake failed, connection lost
  4   connection refused by the broker (the CONNACK reason is printed, e.g. Bad User Name or Password)
  27  sub -W: the time ran out";

/// Why a tool stops early: a message for standard error and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub(crate) fn error(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_ERROR, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_USAGE, message)
    }

    pub(crate) fn network(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_NETWORK, message)
    }

    pub(crate) fn refused(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_REFUSED, message)
    }
}

/// Options of both tools: the broker, the connection and the will.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectionArgs {
    /// The broker's host name or address.
    #[arg(short = 'h', long, value_name = "HOST", conflicts_with = "url")]
    host: Option<String>,
    /// The broker's port [default: 1883, or 8883 with TLS].
    #[arg(short = 'p', long, value_name = "PORT", conflicts_with = "url")]
    port: Option<u16>,
    /// The broker as a URL: mqtt://, mqtts:// (TLS), ws:// (WebSocket, path /mqtt unless given) or
    /// wss://, as `SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/PATH]`.
    #[arg(short = 'L', long, value_name = "URL")]
    url: Option<String>,
    /// MQTT version: 5 or 311 (3.1.1).
    #[arg(short = 'V', long = "protocol-version", value_name = "VERSION", default_value = "5", value_parser = parse_version)]
    version: ProtocolVersion,
    /// Client identifier [default: m2m-pub-… or m2m-sub-…, random].
    #[arg(short = 'i', long = "id", value_name = "ID")]
    client_id: Option<String>,
    /// User name (with a device registry: the device id).
    #[arg(short = 'u', long, value_name = "USER")]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long, value_name = "PASSWORD")]
    password: Option<String>,
    /// Keep alive in seconds (0: none); a PINGREQ goes out when the connection is quiet.
    #[arg(short = 'k', long = "keepalive", value_name = "SECONDS", default_value_t = 60)]
    keep_alive: u16,
    /// Keep the session: no clean start (3.1.1: Clean Session 0). Needs -i. With MQTT 5 the session
    /// never expires unless --session-expiry says otherwise.
    #[arg(short = 'c', long = "disable-clean-session", alias = "keep-session")]
    keep_session: bool,
    /// MQTT 5: the Session Expiry Interval in seconds [default: 0, or never with -c].
    #[arg(short = 'x', long, value_name = "SECONDS")]
    session_expiry: Option<u32>,
    /// The will's topic: published by the broker if this client goes away without DISCONNECT.
    #[arg(long, value_name = "TOPIC")]
    will_topic: Option<String>,
    /// The will's payload [default: empty].
    #[arg(long, value_name = "TEXT", requires = "will_topic")]
    will_payload: Option<String>,
    /// The will's QoS.
    #[arg(long, value_name = "QOS", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), requires = "will_topic")]
    will_qos: u8,
    /// Retain the will.
    #[arg(long, requires = "will_topic")]
    will_retain: bool,
    /// TLS: trust only the certificate authorities in this PEM file (implies TLS with -h/-p).
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// TLS: use TLS with the public web roots built in (with -h/-p; mqtts:// and wss:// imply it).
    #[arg(long)]
    tls: bool,
    /// TLS: this client's certificate chain (PEM), for brokers that verify clients.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// TLS: the private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// TLS: accept a server certificate that does not name the host connected to. Its chain is still
    /// verified against the trusted authorities.
    #[arg(long)]
    insecure: bool,
    /// Describe every packet sent and received on standard error.
    #[arg(short = 'd', long)]
    debug: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn parse_version(text: &str) -> Result<ProtocolVersion, String> {
    match text.to_ascii_lowercase().as_str() {
        "5" | "mqttv5" | "50" => Ok(ProtocolVersion::V5),
        "311" | "mqttv311" | "3.1.1" | "4" => Ok(ProtocolVersion::V311),
        _ => Err("use 5 or 311".to_owned()),
    }
}

fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>().ok().and_then(QoS::from_u8).ok_or_else(|| "use 0, 1 or 2".to_owned())
}

fn parse_property(text: &str) -> Result<UserProperty, String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((Arc::from(name), Arc::from(value)))
}

/// Message properties of `m2m pub` (MQTT 5 only).
#[derive(Debug, clap::Args)]
struct PropertyArgs {
    /// MQTT 5: a user property NAME=VALUE (repeatable; order kept).
    #[arg(long = "prop", value_name = "NAME=VALUE", value_parser = parse_property)]
    props: Vec<UserProperty>,
    /// MQTT 5: the Content Type, e.g. application/json.
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
    /// MQTT 5: the Message Expiry Interval in seconds.
    #[arg(long, value_name = "SECONDS")]
    message_expiry: Option<u32>,
    /// MQTT 5: the Response Topic, for request/response.
    #[arg(long, value_name = "TOPIC")]
    response_topic: Option<String>,
    /// MQTT 5: the Correlation Data (as text), for request/response.
    #[arg(long, value_name = "TEXT")]
    correlation_data: Option<String>,
    /// MQTT 5: mark the payload as UTF-8 text (Payload Format Indicator 1).
    #[arg(long)]
    utf8: bool,
}

impl PropertyArgs {
    fn any(&self) -> bool {
        !self.props.is_empty()
            || self.content_type.is_some()
            || self.message_expiry.is_some()
            || self.response_topic.is_some()
            || self.correlation_data.is_some()
            || self.utf8
    }

    fn properties(&self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.utf8.then_some(true),
            message_expiry_interval: self.message_expiry,
            response_topic: self.response_topic.as_deref().map(Arc::from),
            correlation_data: self.correlation_data.as_ref().map(|c| Bytes::copy_from_slice(c.as_bytes())),
            user_properties: self.props.clone(),
            content_type: self.content_type.as_deref().map(Arc::from),
            ..PublishProperties::default()
        }
    }
}

/// `m2m pub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, after_help = EXIT_CODES)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["message", "file", "stdin_whole", "stdin_lines", "null"])))]
pub(crate) struct PubArgs {
    /// The topic to publish on.
    #[arg(short = 't', long, value_name = "TOPIC")]
    topic: String,
    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long, value_name = "QOS", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
    /// The payload, as text.
    #[arg(short = 'm', long, value_name = "TEXT")]
    message: Option<String>,
    /// The payload: the whole content of a file.
    #[arg(short = 'f', long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The payload: all of standard input.
    #[arg(short = 's', long = "stdin-file")]
    stdin_whole: bool,
    /// One message per line of standard input, until its end (empty lines are skipped); the
    /// connection stays open in between.
    #[arg(short = 'l', long = "stdin-line", conflicts_with_all = ["repeat", "repeat_delay"])]
    stdin_lines: bool,
    /// An empty payload (with -r: clears the topic's retained message).
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// Publish the message this many times.
    #[arg(long, value_name = "COUNT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Seconds between repeated messages (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    repeat_delay: f64,
    #[command(flatten)]
    properties: PropertyArgs,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// `m2m sub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, after_help = EXIT_CODES)]
pub(crate) struct SubArgs {
    /// A topic filter to subscribe to (repeatable; + and # wildcards).
    #[arg(short = 't', long = "topic", value_name = "FILTER", required = true)]
    filters: Vec<String>,
    /// The subscriptions' QoS: 0, 1 or 2.
    #[arg(short = 'q', long, value_name = "QOS", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Exit after this many messages (printed ones).
    #[arg(short = 'C', long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit with code 27 when this many seconds have passed since the connection (unless -C was
    /// reached first).
    #[arg(short = 'W', long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Do not print retained messages (stale ones, sent because of the subscription).
    #[arg(short = 'R', long = "no-retained", conflicts_with = "retained_only")]
    no_retained: bool,
    /// Print only retained messages, and exit at the first message that is not retained.
    #[arg(long)]
    retained_only: bool,
    /// Print the topic before the payload (text format).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Output format: text (the payload, or topic and payload with -v) or json (one object per
    /// line: topic, qos, retain, payload, MQTT 5 properties).
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    format: Format,
    /// No newline after each message.
    #[arg(short = 'N', long)]
    no_newline: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// Runs `m2m pub`.
pub(crate) fn publish(args: PubArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(run_pub(args))))
}

/// Runs `m2m sub`.
pub(crate) fn subscribe(args: SubArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(run_sub(args))))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::error(format!("cannot start runtime: {e}")))
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A client id for a tool run: `m2m-pub-` or `m2m-sub-` and 12 hex digits.
fn random_client_id(tool: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("m2m-{tool}-{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// The broker and the CONNECT packet the options ask for.
fn connect_packet(args: &ConnectionArgs, tool: &str) -> Result<(Endpoint, TlsSettings, Connect), Failure> {
    let v5 = args.version.is_v5();
    let mut endpoint = match &args.url {
        Some(url) => Endpoint::parse(url)
            .map_err(|reason| Failure::usage(format!("invalid --url {url:?}: {reason}")))?,
        None => Endpoint::from_host(
            args.host.as_deref().unwrap_or("localhost"),
            args.port,
            args.tls || args.cafile.is_some() || args.cert.is_some(),
        ),
    };
    if args.url.is_some() && args.tls && !matches!(endpoint.scheme, client::Scheme::Tls | client::Scheme::Wss)
    {
        return Err(Failure::usage("--tls with a mqtt:// or ws:// URL: use mqtts:// or wss://"));
    }
    let tls = TlsSettings {
        cafile: args.cafile.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        insecure: args.insecure,
    };
    let uses_tls = matches!(endpoint.scheme, client::Scheme::Tls | client::Scheme::Wss);
    if !uses_tls && (tls.cafile.is_some() || tls.cert.is_some() || tls.insecure) {
        return Err(Failure::usage("--cafile, --cert and --insecure need TLS: use mqtts:// or wss://"));
    }
    let username = args.username.clone().or(endpoint.username.take());
    let password = args.password.clone().or(endpoint.password.take());
    if !v5 && password.is_some() && username.is_none() {
        return Err(Failure::usage("MQTT 3.1.1 sends a password only with a user name (-u)"));
    }
    if args.keep_session && args.client_id.is_none() {
        return Err(Failure::usage("-c keeps a session, which is found by its client id: give one with -i"));
    }
    if !v5 && args.session_expiry.is_some() {
        return Err(Failure::usage("--session-expiry is MQTT 5 only (-V 5)"));
    }
    let will = match &args.will_topic {
        None => None,
        Some(topic) => {
            check_topic(topic, "--will-topic")?;
            Some(Will {
                topic: Arc::from(topic.as_str()),
                payload: Bytes::from(args.will_payload.clone().unwrap_or_default()),
                qos: QoS::from_u8(args.will_qos).unwrap_or_default(),
                retain: args.will_retain,
                properties: WillProperties::default(),
            })
        }
    };
    let session_expiry = match (args.session_expiry, args.keep_session) {
        (Some(s), _) => Some(s),
        (None, true) => Some(u32::MAX),
        (None, false) => None,
    };
    let connect = Connect {
        protocol: args.version,
        clean_start: !args.keep_session,
        keep_alive: args.keep_alive,
        client_id: Arc::from(args.client_id.clone().unwrap_or_else(|| random_client_id(tool))),
        will,
        username: username.map(Arc::from),
        password: password.map(Bytes::from),
        properties: ConnectProperties {
            session_expiry_interval: session_expiry.filter(|_| v5),
            ..ConnectProperties::default()
        },
    };
    Ok((endpoint, tls, connect))
}

/// A topic name to publish on: not empty, no wildcards, no U+0000 (MQTT 5.0 §4.7.3).
fn check_topic(topic: &str, what: &str) -> Result<(), Failure> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(Failure::usage(format!("{what} {topic:?} is not a topic name (not empty, no + or #)")));
    }
    Ok(())
}

/// Where the payloads come from.
enum Payloads {
    /// One payload, sent `repeat` times.
    One(Bytes),
    /// One payload per line of standard input.
    Lines(mpsc::Receiver<std::io::Result<Vec<u8>>>),
}

/// Reads standard input line by line on a thread of its own (a blocked read must not keep the tool
/// from exiting), without the line ends, skipping empty lines.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if !line.is_empty() && tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

async fn run_pub(args: PubArgs) -> Result<(), Failure> {
    check_topic(&args.topic, "-t")?;
    let v5 = args.connection.version.is_v5();
    if !v5 && args.properties.any() {
        return Err(Failure::usage(
            "--prop, --content-type, --message-expiry, --response-topic, --correlation-data and --utf8 are MQTT 5 only (-V 5)",
        ));
    }
    if let Some(topic) = &args.properties.response_topic {
        check_topic(topic, "--response-topic")?;
    }
    if !args.repeat_delay.is_finite() || args.repeat_delay < 0.0 {
        return Err(Failure::usage("--repeat-delay must be a number of seconds, 0 or more"));
    }
    let mut payloads = if let Some(text) = &args.message {
        Payloads::One(Bytes::from(text.clone()))
    } else if let Some(path) = &args.file {
        let data = std::fs::read(path)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", path.display())))?;
        Payloads::One(Bytes::from(data))
    } else if args.stdin_whole {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Failure::error(format!("cannot read standard input: {e}")))?;
        Payloads::One(Bytes::from(data))
    } else if args.stdin_lines {
        Payloads::Lines(stdin_lines())
    } else {
        Payloads::One(Bytes::new())
    };
    let (endpoint, tls, connect) = connect_packet(&args.connection, "pub")?;
    let (mut client, ack) = Client::connect(&endpoint, &tls, connect, args.connection.debug).await?;
    // MQTT 5.0 §3.2.2.3.4: a QoS above the broker's maximum is a protocol error.
    if let Some(maximum) = ack.properties.maximum_qos.filter(|maximum| *maximum < args.qos) {
        client.disconnect().await;
        return Err(Failure::error(format!(
            "the broker accepts messages of QoS {} at most: publish with -q {0} or less",
            maximum as u8
        )));
    }
    if args.retain && ack.properties.retain_available == Some(false) {
        client.disconnect().await;
        return Err(Failure::error("the broker does not keep retained messages: publish without -r"));
    }
    let properties = args.properties.properties();
    let message = |client: &mut Client, payload: Bytes| Publish {
        dup: false,
        qos: args.qos,
        retain: args.retain,
        topic: Arc::from(args.topic.as_str()),
        packet_id: (args.qos != QoS::AtMostOnce).then(|| client.next_packet_id()),
        properties: if client.version().is_v5() { properties.clone() } else { PublishProperties::default() },
        payload,
    };
    match &mut payloads {
        Payloads::One(payload) => {
            let delay = Duration::from_secs_f64(args.repeat_delay);
            for i in 0..args.repeat {
                if i > 0 && !delay.is_zero() {
                    idle(&mut client, delay).await?;
                }
                let publish = message(&mut client, payload.clone());
                send_publish(&mut client, publish).await?;
            }
        }
        Payloads::Lines(lines) => loop {
            let line = tokio::select! {
                line = lines.recv() => line,
                packet = client.next() => {
                    answer_stray(&mut client, packet?).await?;
                    continue;
                }
            };
            match line {
                None => break,
                Some(Err(e)) => return Err(Failure::error(format!("cannot read standard input: {e}"))),
                Some(Ok(line)) => {
                    let publish = message(&mut client, Bytes::from(line));
                    send_publish(&mut client, publish).await?;
                }
            }
        },
    }
    client.disconnect().await;
    Ok(())
}

/// Serves the connection (keep-alive, stray packets) for `delay`.
async fn idle(client: &mut Client, delay: Duration) -> Result<(), Failure> {
    let until = Instant::now() + delay;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return Ok(()),
            packet = client.next() => answer_stray(client, packet?).await?,
        }
    }
}

/// Answers a packet the publisher did not wait for: messages of a kept session are acknowledged
/// (and dropped: `m2m pub` prints nothing).
async fn answer_stray(client: &mut Client, packet: Packet) -> Result<(), Failure> {
    match packet {
        Packet::Publish(p) => match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => client.send(&Packet::PubAck(Ack::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => client.send(&Packet::PubRec(Ack::new(id))).await,
            _ => Ok(()),
        },
        Packet::PubRel(ack) => client.send(&Packet::PubComp(Ack::new(ack.packet_id))).await,
        _ => Ok(()),
    }
}

/// Sends one PUBLISH and, for QoS 1 and 2, waits for its acknowledgements.
async fn send_publish(client: &mut Client, publish: Publish) -> Result<(), Failure> {
    let (qos, id) = (publish.qos, publish.packet_id);
    client.send(&Packet::Publish(publish)).await?;
    let Some(id) = id else { return Ok(()) };
    loop {
        match client.next().await? {
            Packet::PubAck(ack) if ack.packet_id == id && qos == QoS::AtLeastOnce => {
                return acknowledged(&ack, "PUBACK");
            }
            Packet::PubRec(ack) if ack.packet_id == id && qos == QoS::ExactlyOnce => {
                acknowledged(&ack, "PUBREC")?;
                client.send(&Packet::PubRel(Ack::new(id))).await?;
            }
            Packet::PubComp(ack) if ack.packet_id == id && qos == QoS::ExactlyOnce => {
                return acknowledged(&ack, "PUBCOMP");
            }
            other => answer_stray(client, other).await?,
        }
    }
}

/// An MQTT 5 acknowledgement with an error reason code refuses the message.
fn acknowledged(ack: &Ack, what: &str) -> Result<(), Failure> {
    if !ack.reason_code.is_error() {
        return Ok(());
    }
    let mut message = format!("the broker refused the message ({what}): {}", ack.reason_code);
    if let Some(reason) = &ack.properties.reason_string {
        message.push_str(&format!(": {reason}"));
    }
    Err(Failure::error(message))
}

/// How `m2m sub` ends.
enum End {
    /// -C messages were printed, --retained-only saw a live message, Ctrl-C, or the reader of
    /// standard output went away.
    Done,
    /// -W ran out.
    TimedOut(u64),
}

async fn run_sub(args: SubArgs) -> Result<(), Failure> {
    for filter in &args.filters {
        check_filter(filter)?;
    }
    let v5 = args.connection.version.is_v5();
    let (endpoint, tls, connect) = connect_packet(&args.connection, "sub")?;
    let (mut client, _) = Client::connect(&endpoint, &tls, connect, args.connection.debug).await?;
    let deadline = args.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let options = SubscriptionOptions {
        qos: args.qos,
        // Retained messages are sent because of a new subscription: with -R they are not wanted.
        retain_handling: if args.no_retained && v5 {
            RetainHandling::DoNotSend
        } else {
            RetainHandling::SendAtSubscribe
        },
        ..SubscriptionOptions::default()
    };
    let id = client.next_packet_id();
    let subscribe = Subscribe {
        packet_id: id,
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: args.filters.iter().map(|f| (Arc::from(f.as_str()), options)).collect(),
    };
    client.send(&Packet::Subscribe(subscribe)).await?;
    let mut receiver = Receiver {
        args: &args,
        printed: 0,
        // QoS 2 messages received and printed, whose PUBREL has not come yet: not printed twice.
        pending: HashSet::new(),
        out: Vec::new(),
        subscribed: false,
        subscribe_id: id,
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let end = loop {
        let packet = tokio::select! {
            packet = client.next() => packet?,
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break End::TimedOut(args.timeout.unwrap_or_default());
            }
            _ = &mut ctrl_c => break End::Done,
        };
        if let Some(end) = receiver.handle(&mut client, packet).await? {
            break end;
        }
    };
    if matches!(end, End::Done) && !receiver.pending.is_empty() {
        // Let the broker finish the QoS 2 exchanges of printed messages (it would send them again to
        // a kept session otherwise), but not for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !receiver.pending.is_empty() {
                let packet = client.next().await?;
                if let Packet::PubRel(ack) = packet {
                    receiver.pending.remove(&ack.packet_id);
                    client.send(&Packet::PubComp(Ack::new(ack.packet_id))).await?;
                }
            }
            Ok::<(), Failure>(())
        })
        .await;
    }
    client.disconnect().await;
    match end {
        End::Done => Ok(()),
        End::TimedOut(seconds) => {
            Err(Failure::new(EXIT_TIMEOUT, format!("timed out after {seconds} s (-W)")))
        }
    }
}

/// A topic filter to subscribe to: `+` and `#` only as whole levels, `#` last (MQTT 5.0 §4.7.1).
fn check_filter(filter: &str) -> Result<(), Failure> {
    let bad = |why: &str| Failure::usage(format!("-t {filter:?} is not a topic filter: {why}"));
    if filter.is_empty() {
        return Err(bad("empty"));
    }
    if filter.contains('\0') {
        return Err(bad("U+0000"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(bad("# must be a whole level, the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(bad("+ must be a whole level"));
        }
    }
    Ok(())
}

/// The subscriber's state between packets.
struct Receiver<'a> {
    args: &'a SubArgs,
    printed: u64,
    pending: HashSet<PacketId>,
    out: Vec<u8>,
    subscribed: bool,
    subscribe_id: PacketId,
}

impl Receiver<'_> {
    /// Handles one packet; `Some` when the subscriber is done.
    async fn handle(&mut self, client: &mut Client, packet: Packet) -> Result<Option<End>, Failure> {
        match packet {
            Packet::SubAck(ack) if ack.packet_id == self.subscribe_id && !self.subscribed => {
                self.subscribed = true;
                for (filter, code) in self.args.filters.iter().zip(&ack.reason_codes) {
                    if code.is_error() {
                        let mut message = format!("the broker refused the subscription to {filter}: {code}");
                        if let Some(reason) = &ack.properties.reason_string {
                            message.push_str(&format!(": {reason}"));
                        }
                        return Err(Failure::error(message));
                    }
                }
                Ok(None)
            }
            Packet::Publish(publish) => {
                let fresh = match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        client.send(&Packet::PubAck(Ack::new(id))).await?;
                        true
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        client.send(&Packet::PubRec(Ack::new(id))).await?;
                        self.pending.insert(id)
                    }
                    _ => true,
                };
                if fresh {
                    return self.print(&publish);
                }
                Ok(None)
            }
            Packet::PubRel(ack) => {
                self.pending.remove(&ack.packet_id);
                client.send(&Packet::PubComp(Ack::new(ack.packet_id))).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn print(&mut self, publish: &Publish) -> Result<Option<End>, Failure> {
        let args = self.args;
        if args.no_retained && publish.retain {
            return Ok(None);
        }
        if args.retained_only && !publish.retain {
            return Ok(Some(End::Done));
        }
        self.out.clear();
        format::write_message(&mut self.out, publish, args.format, args.verbose, !args.no_newline);
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&self.out).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // Whoever read the output (`| head -1`) has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Some(End::Done)),
            Err(e) => return Err(Failure::error(format!("cannot write to standard output: {e}"))),
        }
        self.printed += 1;
        if args.count.is_some_and(|count| self.printed >= count) {
            return Ok(Some(End::Done));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_before_connecting() {
        for good in ["a/b", "#", "+", "a/+/c", "a/#", "+/+", "/"] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+"] {
            assert_eq!(check_filter(bad).map_err(|f| f.code), Err(EXIT_USAGE), "{bad}");
        }
    }

    #[test]
    fn versions_are_named_as_mosquitto_names_them() {
        assert_eq!(parse_version("5"), Ok(ProtocolVersion::V5));
        assert_eq!(parse_version("mqttv311"), Ok(ProtocolVersion::V311));
        assert_eq!(parse_version("311"), Ok(ProtocolVersion::V311));
        assert!(parse_version("31").is_err());
    }

    #[test]
    fn a_user_property_is_name_equals_value() {
        assert_eq!(parse_property("a=b=c"), Ok((Arc::from("a"), Arc::from("b=c"))));
        assert_eq!(parse_property("a="), Ok((Arc::from("a"), Arc::from(""))));
        assert!(parse_property("a").is_err());
    }
}
