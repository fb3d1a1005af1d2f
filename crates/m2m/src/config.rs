//! The node's configuration: embedded defaults, then a TOML file, then `M2M_*` environment variables,
//! then command-line flags; validated into the library types before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use m2m_broker::{Anonymous, Limits};
use m2m_codec::QoS;
use serde::{Deserialize, Serialize};

/// The whole file, as written by a user. Unknown keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub node: NodeSection,
    pub mqtt: MqttSection,
    pub store: StoreSection,
    pub access: AccessSection,
    pub detectors: DetectorsSection,
    pub http: HttpSection,
    pub jwt: JwtSection,
    pub history: HistorySection,
    pub rules: RulesSection,
    pub mesh: MeshSection,
    pub log: LogSection,
    /// More listeners besides `mqtt.listen`: `[[listeners]]` entries.
    pub listeners: Vec<ListenerSection>,
    /// Bridges to external MQTT brokers: `[[uplinks]]` entries.
    pub uplinks: Vec<UplinkSection>,
}

/// `[[uplinks]]`: a bridge to an external MQTT broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Its name (1 to 64 of `A-Z a-z 0-9 - _ .`), in logs, the API and the store.
    pub name: String,
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// 4 (MQTT 3.1.1, the default) or 5.
    #[serde(default = "default_uplink_protocol")]
    pub protocol: u8,
    /// Client id at the remote broker (default `m2m-<name>`).
    #[serde(default)]
    pub client_id: String,
    /// User name at the remote broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `mqtts://`: trust only the CAs in this PEM file (default: the public roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Keep-alive in seconds (default 30).
    #[serde(default = "default_uplink_keep_alive")]
    pub keep_alive: u16,
    /// QoS towards the remote broker: 0 or 1 (default).
    #[serde(default = "default_uplink_qos")]
    pub qos: u8,
    /// Messages kept while the remote broker is unreachable, at most (default 1 000 000).
    #[serde(default = "default_uplink_outbox")]
    pub outbox_limit: u64,
    /// Local messages sent to the remote broker.
    #[serde(default)]
    pub out: Vec<RouteSection>,
    /// Remote messages brought to this node (subscribed on the remote broker).
    #[serde(default, rename = "in")]
    pub in_: Vec<RouteSection>,
}

/// One route of an uplink: messages matching `filter` (on the side they come from) change their
/// topic's `local_prefix` into `remote_prefix` going out, and back coming in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub filter: String,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_uplink_protocol() -> u8 {
    4
}
fn default_uplink_keep_alive() -> u16 {
    30
}
fn default_uplink_qos() -> u8 {
    1
}
fn default_uplink_outbox() -> u64 {
    1_000_000
}

impl UplinkSection {
    /// The uplink, checked.
    pub fn uplink(&self) -> anyhow::Result<m2m_mesh::Uplink> {
        let route = |r: &RouteSection| m2m_mesh::Route::new(&r.filter, &r.local_prefix, &r.remote_prefix);
        let config = m2m_mesh::UplinkConfig {
            name: self.name.clone(),
            url: self.url.clone(),
            protocol: self.protocol,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            ca: self.ca.clone(),
            keep_alive: self.keep_alive,
            out: self.out.iter().map(route).collect(),
            in_: self.in_.iter().map(route).collect(),
            qos: self.qos,
            outbox_limit: self.outbox_limit,
            ..m2m_mesh::UplinkConfig::default()
        };
        m2m_mesh::Uplink::new(config).with_context(|| format!("invalid [[uplinks]] entry {:?}", self.name))
    }
}

/// `[mesh]`: this node in a mesh of nodes. Off while `listen` and `connect` are both empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// This node's unique name in the mesh; empty: the machine's host name.
    pub node_id: String,
    /// Endpoints other nodes connect to, e.g. `tcp/0.0.0.0:7447`.
    pub listen: Vec<String>,
    /// Endpoints of other nodes, e.g. `tcp/10.0.0.2:7447`; retried until they answer.
    pub connect: Vec<String>,
    /// Messages waiting to go out or come in at most; beyond, QoS 0 is dropped and counted.
    pub queue: usize,
    /// QoS 1 and 2 messages kept for one unreachable node at most.
    pub outbox_limit: u64,
    /// For `tls/` endpoints: the CA that signs the nodes' certificates (PEM); empty: none.
    pub tls_ca: String,
    /// This node's certificate (PEM), also used to connect to other nodes.
    pub tls_cert: String,
    /// Its private key (PEM).
    pub tls_key: String,
}

impl Default for MeshSection {
    fn default() -> Self {
        let d = m2m_mesh::MeshConfig::default();
        Self {
            node_id: String::new(),
            listen: d.listen,
            connect: d.connect,
            queue: d.queue,
            outbox_limit: d.outbox_limit,
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl MeshSection {
    /// This node's name: `node_id`, or the machine's host name when it is empty.
    pub fn node_id(&self) -> String {
        if self.node_id.is_empty() {
            host_name()
        } else {
            self.node_id.clone()
        }
    }

    /// The mesh settings; `None` when the node is on its own.
    pub fn config(&self) -> anyhow::Result<Option<m2m_mesh::MeshConfig>> {
        if self.listen.is_empty() && self.connect.is_empty() {
            return Ok(None);
        }
        let node_id = if self.node_id.is_empty() { host_name() } else { self.node_id.clone() };
        if self.queue == 0 || self.outbox_limit == 0 {
            bail!("invalid mesh settings: mesh.queue and mesh.outbox_limit must be at least 1");
        }
        Ok(Some(m2m_mesh::MeshConfig {
            node_id,
            listen: self.listen.clone(),
            connect: self.connect.clone(),
            queue: self.queue,
            outbox_limit: self.outbox_limit,
            tls: match (self.tls_ca.as_str(), self.tls_cert.as_str(), self.tls_key.as_str()) {
                ("", "", "") => None,
                (ca, cert, key) if !ca.is_empty() && !cert.is_empty() && !key.is_empty() => {
                    Some(m2m_mesh::MeshTls { ca: ca.into(), cert: cert.into(), key: key.into() })
                }
                _ => bail!("invalid mesh settings: mesh.tls_ca, mesh.tls_cert and mesh.tls_key go together"),
            },
        }))
    }
}

/// The machine's host name, or `m2m` when it has none that makes a node id.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name = name.trim();
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        name.chars().take(64).collect()
    } else {
        "m2m".to_owned()
    }
}

/// `[rules]`: the rules engine (the rules themselves are kept in the store).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSection {
    pub enabled: bool,
    /// Messages and events waiting for evaluation at most; beyond, they are dropped and counted.
    pub queue: usize,
    /// A message republished by rules this many times is not given to rules again.
    pub max_hops: u8,
    /// A rule failing this many times in a row is disabled.
    pub disable_after: u64,
}

impl Default for RulesSection {
    fn default() -> Self {
        let d = m2m_engine::EngineConfig::default();
        Self { enabled: true, queue: d.queue, max_hops: d.max_hops, disable_after: d.disable_after }
    }
}

impl RulesSection {
    /// The engine's settings; `None` when it is off.
    pub fn config(&self) -> anyhow::Result<Option<m2m_engine::EngineConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        if self.queue == 0 || self.max_hops == 0 || self.disable_after == 0 {
            bail!("invalid rules settings: rules.queue, rules.max_hops and rules.disable_after must be at least 1");
        }
        Ok(Some(m2m_engine::EngineConfig {
            queue: self.queue,
            max_hops: self.max_hops,
            disable_after: self.disable_after,
        }))
    }
}

/// `[history]`: which messages the node keeps as time series, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySection {
    pub enabled: bool,
    /// Topic filters of the messages kept; `#` leaves out `$SYS` (list `$SYS/#` to keep it).
    pub filters: Vec<String>,
    /// Messages older than this are deleted (`7d`, `12h`); `none`: kept whatever their age.
    pub max_age: String,
    /// When the history takes more than this, the oldest go (`1GiB`, `500MB`); `none`: no limit.
    pub max_bytes: String,
    /// Messages waiting to be written at most; past it they are dropped and recorded as a gap.
    pub queue: usize,
    /// A user property with the publisher's own timestamp; empty: none.
    pub timestamp_property: String,
    /// A JSON field of the payload with the publisher's own timestamp (`payload.ts`); empty: none.
    pub timestamp_field: String,
    /// Retention of some topics: `[[history.retention]]` with `filter`, `max_age`, `max_bytes`.
    pub retention: Vec<RetentionSection>,
}

/// `[[history.retention]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub filter: String,
    #[serde(default = "none")]
    pub max_age: String,
    #[serde(default = "none")]
    pub max_bytes: String,
}

fn none() -> String {
    "none".into()
}

impl Default for HistorySection {
    fn default() -> Self {
        Self {
            enabled: true,
            filters: vec!["#".into()],
            max_age: "7d".into(),
            max_bytes: "1GiB".into(),
            queue: m2m_history::HistoryConfig::DEFAULT_QUEUE,
            timestamp_property: String::new(),
            timestamp_field: String::new(),
            retention: Vec::new(),
        }
    }
}

/// A size such as `1GiB`, `500MB`, `64KiB` or a number of bytes; `none`: no limit.
fn parse_bytes(key: &str, s: &str) -> anyhow::Result<Option<u64>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits]
        .parse()
        .with_context(|| format!("invalid size for {key}: {s:?} (e.g. 1GiB, 500MB, none)"))?;
    let unit: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        other => bail!(
            "invalid size for {key}: unknown unit {other:?} in {s:?} (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
        ),
    };
    n.checked_mul(unit).map(Some).with_context(|| format!("invalid size for {key}: {s:?} is too large"))
}

/// A duration such as `7d` or `12h`; `none`: no limit.
fn parse_age(key: &str, s: &str) -> anyhow::Result<Option<Duration>> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    m2m_history::time::parse_duration(s)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("invalid value for {key}: {e}"))
}

impl HistorySection {
    /// The history settings; `None` when it is off.
    pub fn config(&self) -> anyhow::Result<Option<m2m_history::HistoryConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        let nonempty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let retention = self
            .retention
            .iter()
            .map(|r| {
                Ok(m2m_history::Retention {
                    filter: r.filter.clone(),
                    max_age: parse_age("history.retention.max_age", &r.max_age)?,
                    max_bytes: parse_bytes("history.retention.max_bytes", &r.max_bytes)?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let config = m2m_history::HistoryConfig {
            filters: self.filters.clone(),
            max_age: parse_age("history.max_age", &self.max_age)?,
            max_bytes: parse_bytes("history.max_bytes", &self.max_bytes)?,
            retention,
            queue_capacity: self.queue,
            timestamp_property: nonempty(&self.timestamp_property),
            timestamp_field: nonempty(&self.timestamp_field),
        };
        config.validate().map_err(|e| anyhow::anyhow!("invalid history settings: {e}"))?;
        Ok(Some(config))
    }
}

/// `[jwt]`: JSON Web Tokens as the passwords of usernames that are not registered devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSection {
    pub enabled: bool,
    /// `HS256` (with `secret`) or `RS256` (with `public_key_file`, PEM).
    pub algorithm: String,
    pub secret: String,
    pub public_key_file: String,
    /// The claim holding the username.
    pub username_claim: String,
    /// A claim that must equal the client id; empty: not checked.
    pub client_id_claim: String,
    /// A claim holding access rules (an array of rule lines); empty: none.
    pub rules_claim: String,
}

impl Default for JwtSection {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: "HS256".into(),
            secret: String::new(),
            public_key_file: String::new(),
            username_claim: "sub".into(),
            client_id_claim: String::new(),
            rules_claim: "acl".into(),
        }
    }
}

impl JwtSection {
    fn config(&self) -> anyhow::Result<Option<m2m_access::JwtConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        let key = match self.algorithm.as_str() {
            "HS256" if self.secret.is_empty() => bail!("invalid jwt: algorithm HS256 needs jwt.secret"),
            "HS256" => m2m_access::JwtKey::Hs256(self.secret.clone().into_bytes()),
            "RS256" if self.public_key_file.is_empty() => {
                bail!("invalid jwt: algorithm RS256 needs jwt.public_key_file")
            }
            "RS256" => {
                let pem = std::fs::read_to_string(&self.public_key_file)
                    .with_context(|| format!("cannot read jwt.public_key_file {}", self.public_key_file))?;
                m2m_access::JwtKey::rs256_from_pem(&pem)
                    .with_context(|| format!("invalid jwt.public_key_file {}", self.public_key_file))?
            }
            other => bail!("invalid value for jwt.algorithm: {other:?} (expected \"HS256\" or \"RS256\")"),
        };
        if self.username_claim.is_empty() {
            bail!("invalid value for jwt.username_claim: must not be empty");
        }
        let optional = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Ok(Some(m2m_access::JwtConfig {
            key,
            username_claim: self.username_claim.clone(),
            client_id_claim: optional(&self.client_id_claim),
            rules_claim: optional(&self.rules_claim),
        }))
    }
}

/// `[http]`: the HTTP API (devices, groups, quarantine, audit log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve the API.
    pub enabled: bool,
    /// Where; loopback by default.
    pub listen: SocketAddr,
    /// A bearer token that admits its bearers as admin; with one, loopback clients are not
    /// trusted. Empty: none (users log in; API tokens are made with `m2m token`).
    pub token: String,
    /// Admit loopback clients without credentials (not browsers) as admin: the CLI on this machine.
    pub trust_loopback: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self { enabled: true, listen: m2m_http::DEFAULT_LISTEN, token: String::new(), trust_loopback: true }
    }
}

impl HttpSection {
    /// The API's settings, if it is enabled.
    pub fn config(&self) -> Option<m2m_http::HttpConfig> {
        self.enabled.then(|| m2m_http::HttpConfig {
            listen: self.listen,
            token: Some(self.token.clone()).filter(|t| !t.is_empty()),
            trust_loopback: self.trust_loopback,
        })
    }
}

/// `[detectors]`: the detectors that quarantine misbehaving clients, one inline table each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorsSection {
    pub auth_failures: DetectorSection,
    pub flapping: DetectorSection,
    pub takeovers: DetectorSection,
    pub malformed: DetectorSection,
    pub access_denied: DetectorSection,
    pub publish_rate: PublishRateSection,
}

/// `[detectors.publish_rate]`: each connection's publish budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublishRateSection {
    pub enabled: bool,
    /// PUBLISHes a second.
    pub rate: u32,
    /// PUBLISHes a connection may send at once.
    pub burst: u32,
    /// Seconds over budget before the quarantine.
    pub over_secs: u64,
    /// `ban` or `isolate`.
    pub mode: String,
    pub quarantine_secs: u64,
}

impl From<m2m_broker::PublishBudget> for PublishRateSection {
    fn from(b: m2m_broker::PublishBudget) -> Self {
        Self {
            enabled: b.enabled,
            rate: b.rate as u32,
            burst: b.burst as u32,
            over_secs: b.quarantine_after.as_secs(),
            mode: b.mode.as_str().into(),
            quarantine_secs: b.quarantine_for.as_secs(),
        }
    }
}

impl PublishRateSection {
    fn budget(&self) -> anyhow::Result<m2m_broker::PublishBudget> {
        let mode = detector_mode("publish_rate", &self.mode)?;
        if self.enabled
            && (self.rate == 0 || self.burst == 0 || self.over_secs == 0 || self.quarantine_secs == 0)
        {
            bail!("invalid detectors.publish_rate: rate, burst, over_secs and quarantine_secs must be at least 1");
        }
        Ok(m2m_broker::PublishBudget {
            enabled: self.enabled,
            rate: f64::from(self.rate),
            burst: f64::from(self.burst),
            quarantine_after: Duration::from_secs(self.over_secs),
            mode,
            quarantine_for: Duration::from_secs(self.quarantine_secs),
        })
    }
}

impl Default for DetectorsSection {
    fn default() -> Self {
        let d = m2m_broker::DetectorsConfig::default();
        Self {
            auth_failures: d.auth_failures.into(),
            flapping: d.flapping.into(),
            takeovers: d.takeovers.into(),
            malformed: d.malformed.into(),
            access_denied: d.access_denied.into(),
            publish_rate: d.publish_rate.into(),
        }
    }
}

/// One detector: `{ enabled = true, threshold = 20, window_secs = 60, mode = "ban", quarantine_secs = 900 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorSection {
    pub enabled: bool,
    pub threshold: u32,
    pub window_secs: u64,
    /// `ban` or `isolate`.
    pub mode: String,
    pub quarantine_secs: u64,
}

impl From<m2m_broker::DetectorConfig> for DetectorSection {
    fn from(d: m2m_broker::DetectorConfig) -> Self {
        Self {
            enabled: d.enabled,
            threshold: d.threshold,
            window_secs: d.window.as_secs(),
            mode: d.mode.as_str().into(),
            quarantine_secs: d.quarantine_for.as_secs(),
        }
    }
}

/// The mode of detector `name`, or an error naming the key.
fn detector_mode(name: &str, mode: &str) -> anyhow::Result<m2m_access::Mode> {
    m2m_access::Mode::from_name(mode).with_context(|| {
        format!("invalid value for detectors.{name}.mode: {mode:?} (expected \"ban\" or \"isolate\")")
    })
}

impl DetectorSection {
    fn detector(&self, name: &str) -> anyhow::Result<m2m_broker::DetectorConfig> {
        let mode = detector_mode(name, &self.mode)?;
        if self.enabled && (self.threshold == 0 || self.window_secs == 0 || self.quarantine_secs == 0) {
            bail!("invalid detectors.{name}: threshold, window_secs and quarantine_secs must be at least 1");
        }
        Ok(m2m_broker::DetectorConfig {
            enabled: self.enabled,
            threshold: self.threshold,
            window: Duration::from_secs(self.window_secs),
            mode,
            quarantine_for: Duration::from_secs(self.quarantine_secs),
        })
    }
}

/// `[[listeners]]`: one more listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Address to listen on, e.g. `0.0.0.0:8883`.
    pub bind: SocketAddr,
    /// `tcp`, `tls`, `ws` (MQTT over WebSocket) or `wss` (over TLS).
    pub transport: String,
    /// `ws`/`wss`: the HTTP path (default `/mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// TLS: the server certificate chain (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TLS: CA certificates to verify client certificates with (PEM); their common name is the
    /// device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS with `tls_client_ca`: refuse clients without a valid certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl ListenerSection {
    fn listener(&self, n: usize) -> anyhow::Result<m2m_broker::Listener> {
        let what = format!("listeners[{n}] ({})", self.bind);
        let websocket = matches!(self.transport.as_str(), "ws" | "wss");
        if self.path.is_some() && !websocket {
            bail!("{what}: path needs transport = \"ws\" or \"wss\"");
        }
        let path = self.path.clone().unwrap_or_else(|| "/mqtt".to_owned());
        if !path.starts_with('/') {
            bail!("{what}: path must start with '/'");
        }
        let tls = || -> anyhow::Result<m2m_broker::TlsFiles> {
            let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
                bail!("{what}: transport = \"{}\" needs tls_cert and tls_key", self.transport);
            };
            if self.require_client_cert && self.tls_client_ca.is_none() {
                bail!("{what}: require_client_cert needs tls_client_ca");
            }
            Ok(m2m_broker::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                require_client_cert: self.require_client_cert,
            })
        };
        let plain = || -> anyhow::Result<()> {
            if self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some() {
                bail!("{what}: tls_cert, tls_key and tls_client_ca need transport = \"tls\" or \"wss\"");
            }
            Ok(())
        };
        let transport = match self.transport.as_str() {
            "tcp" => {
                plain()?;
                m2m_broker::Transport::Tcp
            }
            "tls" => m2m_broker::Transport::Tls(tls()?),
            "ws" => {
                plain()?;
                m2m_broker::Transport::Ws { path }
            }
            "wss" => m2m_broker::Transport::Wss { tls: tls()?, path },
            other => {
                bail!("{what}: invalid transport {other:?} (expected \"tcp\", \"tls\", \"ws\" or \"wss\")")
            }
        };
        Ok(m2m_broker::Listener { addr: self.bind, transport })
    }
}

/// `[access]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    /// Rules for every client, after each device's and its groups' rules, one per line
    /// (`allow subscribe $SYS/#`). They apply once the device registry holds a device or a group.
    pub rules: Vec<String>,
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `always` (fsync before acknowledging), `batch` (fsync every `sync_interval_ms`) or `none`
    /// (memory only: nothing survives a restart).
    pub sync: String,
    /// Longest time between two syncs with `sync = "batch"`: what a power cut can lose.
    pub sync_interval_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self { sync: "always".into(), sync_interval_ms: 100 }
    }
}

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Bytes of messages the node's queues may hold at once (`256MiB`; `none`: no limit).
    pub memory_budget: String,
}

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    pub listen: SocketAddr,
    pub anonymous: String,
    pub max_connections: usize,
    pub connect_timeout_secs: u64,
    pub packet_timeout_secs: u64,
    pub max_connections_per_address: usize,
    pub connect_rate_per_address: f64,
    pub connect_burst_per_address: f64,
    pub max_pending_connects: usize,
    pub accept_rate: f64,
    pub limit_loopback: bool,
    pub password_checks: usize,
    pub password_check_wait_ms: u64,
    pub max_keep_alive: u16,
    pub max_session_expiry: u32,
    pub max_packet_size: u32,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_inflight: u16,
    pub max_queued: usize,
    pub queue_qos0_offline: bool,
    pub max_subscriptions: usize,
    pub max_topic_levels: usize,
    pub max_topic_len: usize,
    pub max_qos: u8,
    pub retain_available: bool,
    pub mailbox_capacity: usize,
    pub write_timeout_secs: u64,
    pub sys_interval_secs: u64,
    pub response_information: String,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a full filter such as `m2m_broker=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("./m2m-data"), memory_budget: "256MiB".into() }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

impl Default for MqttSection {
    fn default() -> Self {
        let b = m2m_broker::Config::default();
        let l = &b.limits;
        Self {
            listen: b.listen,
            anonymous: "loopback".into(),
            max_connections: b.max_connections,
            connect_timeout_secs: b.connect_timeout.as_secs(),
            packet_timeout_secs: b.packet_timeout.as_secs(),
            max_connections_per_address: b.admission.max_per_address,
            connect_rate_per_address: b.admission.rate_per_address,
            connect_burst_per_address: b.admission.burst_per_address,
            max_pending_connects: b.admission.max_pending,
            accept_rate: b.admission.accept_rate,
            limit_loopback: !b.admission.exempt_loopback,
            password_checks: b.password_checks,
            password_check_wait_ms: u64::try_from(b.password_check_wait.as_millis()).unwrap_or(u64::MAX),
            max_keep_alive: b.max_keep_alive,
            max_session_expiry: b.max_session_expiry,
            max_packet_size: l.max_packet_size,
            receive_maximum: l.receive_maximum,
            topic_alias_maximum: l.topic_alias_maximum,
            max_inflight: l.max_inflight,
            max_queued: l.max_queued,
            queue_qos0_offline: l.queue_qos0_offline,
            max_subscriptions: l.max_subscriptions,
            max_topic_levels: l.max_topic_levels,
            max_topic_len: l.max_topic_len,
            max_qos: l.max_qos as u8,
            retain_available: l.retain_available,
            mailbox_capacity: b.mailbox_capacity,
            write_timeout_secs: b.write_timeout.as_secs(),
            sys_interval_secs: b.sys_interval.map_or(0, |d| d.as_secs()),
            response_information: String::new(),
        }
    }
}

const SECTIONS: [&str; 9] = ["node", "mqtt", "store", "http", "jwt", "history", "rules", "mesh", "log"];

/// `M2M_*` variables that are flags of the command line, not settings.
const NOT_SETTINGS: [&str; 2] = ["CONFIG", "API"];

/// Loads the configuration: defaults, then `file`, then `M2M_<SECTION>_<KEY>` variables from `env`,
/// then `overrides` (`section.key = value` pairs from flags).
///
/// # Errors
/// A message naming the file, variable or key that is wrong.
pub fn load(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, toml::Value)],
) -> anyhow::Result<FileConfig> {
    let from_file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let table: toml::Table =
                text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            Some(table)
        }
        None => None,
    };
    layer(from_file, env, overrides)
}

/// [`load`] with the file's contents given as `text` instead of read from a path.
///
/// # Errors
/// As [`load`], except that the file cannot be missing.
pub fn load_text(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, toml::Value)],
) -> anyhow::Result<FileConfig> {
    let table: toml::Table = text.parse().context("config file is not valid TOML")?;
    layer(Some(table), env, overrides)
}

/// The defaults, then `from_file`, then `env`, then `overrides`, validated.
fn layer(
    from_file: Option<toml::Table>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, toml::Value)],
) -> anyhow::Result<FileConfig> {
    let mut table = toml::Table::try_from(FileConfig::default()).context("default configuration")?;
    if let Some(from_file) = from_file {
        merge(&mut table, from_file);
    }
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("M2M_") else { continue };
        if NOT_SETTINGS.contains(&rest) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')).map(|k| (*s, k)))
        else {
            bail!("unknown setting in environment variable {name}: expected M2M_<NODE|MQTT|STORE|HTTP|JWT|HISTORY|RULES|MESH|LOG>_<KEY>");
        };
        set(&mut table, section, key, env_value(&value), &format!("environment variable {name}"))?;
    }
    for (path, value) in overrides {
        let (section, key) = path.split_once('.').context("override key without a section")?;
        set(&mut table, section, key, value.clone(), &format!("flag for {path}"))?;
    }
    let config: FileConfig = toml::Value::Table(table).try_into().context("invalid configuration")?;
    config.validate()?;
    Ok(config)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set(
    table: &mut toml::Table,
    section: &str,
    key: &str,
    value: toml::Value,
    source: &str,
) -> anyhow::Result<()> {
    let Some(toml::Value::Table(s)) = table.get_mut(section) else {
        bail!("{source}: unknown section `{section}`");
    };
    if !s.contains_key(key) {
        bail!("{source}: unknown key `{section}.{key}`");
    }
    // Keep the type of the default so that "1883" from the environment fits a number field.
    let value = match (s.get(key), value) {
        (Some(toml::Value::String(_)), v @ (toml::Value::Integer(_) | toml::Value::Boolean(_))) => {
            toml::Value::String(v.to_string())
        }
        (_, v) => v,
    };
    s.insert(key.to_string(), value);
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    // A list, written as in TOML: M2M_HISTORY_FILTERS='["plant/#", "$SYS/#"]'.
    if raw.trim_start().starts_with('[') {
        if let Some(v) = format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")) {
            return v;
        }
    }
    if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_string())
    }
}

impl FileConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let m = &self.mqtt;
        let checks: [(bool, &str, &str); 15] = [
            (m.receive_maximum == 0, "mqtt.receive_maximum", "must be at least 1"),
            (m.max_inflight == 0, "mqtt.max_inflight", "must be at least 1"),
            (m.max_packet_size < 128, "mqtt.max_packet_size", "must be at least 128 bytes"),
            (
                m.max_packet_size > 268_435_460,
                "mqtt.max_packet_size",
                "must be at most 268435460 (MQTT's limit)",
            ),
            (m.max_qos > 2, "mqtt.max_qos", "must be 0, 1 or 2"),
            (m.max_connections == 0, "mqtt.max_connections", "must be at least 1"),
            (m.mailbox_capacity == 0, "mqtt.mailbox_capacity", "must be at least 1"),
            (m.max_topic_levels == 0, "mqtt.max_topic_levels", "must be at least 1"),
            (m.max_topic_len == 0, "mqtt.max_topic_len", "must be at least 1"),
            (m.connect_timeout_secs == 0, "mqtt.connect_timeout_secs", "must be at least 1"),
            (m.packet_timeout_secs == 0, "mqtt.packet_timeout_secs", "must be at least 1"),
            (m.password_check_wait_ms == 0, "mqtt.password_check_wait_ms", "must be at least 1"),
            (
                !m.connect_rate_per_address.is_finite() || m.connect_rate_per_address < 0.0,
                "mqtt.connect_rate_per_address",
                "must be 0 (no limit) or a positive number of connections a second",
            ),
            (
                !m.accept_rate.is_finite() || m.accept_rate < 0.0,
                "mqtt.accept_rate",
                "must be 0 (no limit) or a positive number of connections a second",
            ),
            (
                m.connect_rate_per_address > 0.0
                    && !(m.connect_burst_per_address.is_finite() && m.connect_burst_per_address >= 1.0),
                "mqtt.connect_burst_per_address",
                "must be at least 1 when connect_rate_per_address is set",
            ),
        ];
        for (bad, key, why) in checks {
            if bad {
                bail!("invalid value for {key}: {why}");
            }
        }
        self.anonymous()?;
        self.store()?;
        parse_bytes("node.memory_budget", &self.node.memory_budget)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("invalid value for log.format: {:?} (expected \"text\" or \"json\")", self.log.format);
        }
        Ok(())
    }

    fn anonymous(&self) -> anyhow::Result<Anonymous> {
        Ok(match self.mqtt.anonymous.as_str() {
            "loopback" => Anonymous::LoopbackOnly,
            "allow" => Anonymous::Allow,
            "deny" => Anonymous::Deny,
            other => bail!(
                "invalid value for mqtt.anonymous: {other:?} (expected \"loopback\", \"allow\" or \"deny\")"
            ),
        })
    }

    /// Where and how durably the node keeps its state; `None` for `sync = "none"`.
    fn store(&self) -> anyhow::Result<Option<m2m_store::StoreConfig>> {
        let s = &self.store;
        let sync = match s.sync.as_str() {
            "none" => return Ok(None),
            "always" => m2m_store::SyncMode::Always,
            "batch" if s.sync_interval_ms == 0 => {
                bail!("invalid value for store.sync_interval_ms: must be at least 1")
            }
            "batch" => m2m_store::SyncMode::Batch(Duration::from_millis(s.sync_interval_ms)),
            other => {
                bail!("invalid value for store.sync: {other:?} (expected \"always\", \"batch\" or \"none\")")
            }
        };
        let mut config = m2m_store::StoreConfig::new(self.node.data_dir.join("store"));
        config.sync = sync;
        Ok(Some(config))
    }

    /// The broker settings this configuration describes.
    pub fn broker(&self) -> anyhow::Result<m2m_broker::Config> {
        let m = &self.mqtt;
        let max_qos = QoS::from_u8(m.max_qos).context("invalid value for mqtt.max_qos")?;
        Ok(m2m_broker::Config {
            listen: m.listen,
            listeners: self
                .listeners
                .iter()
                .enumerate()
                .map(|(n, l)| l.listener(n))
                .collect::<anyhow::Result<_>>()?,
            max_connections: m.max_connections,
            connect_timeout: Duration::from_secs(m.connect_timeout_secs),
            packet_timeout: Duration::from_secs(m.packet_timeout_secs),
            memory_budget: parse_bytes("node.memory_budget", &self.node.memory_budget)?
                .map_or(0, |b| usize::try_from(b).unwrap_or(usize::MAX)),
            admission: m2m_broker::Admission {
                max_per_address: m.max_connections_per_address,
                rate_per_address: m.connect_rate_per_address,
                burst_per_address: m.connect_burst_per_address,
                max_pending: m.max_pending_connects,
                accept_rate: m.accept_rate,
                exempt_loopback: !m.limit_loopback,
            },
            password_checks: m.password_checks,
            password_check_wait: Duration::from_millis(m.password_check_wait_ms),
            max_keep_alive: m.max_keep_alive,
            max_session_expiry: m.max_session_expiry,
            mailbox_capacity: m.mailbox_capacity,
            write_timeout: Duration::from_secs(m.write_timeout_secs.max(1)),
            anonymous: self.anonymous()?,
            response_information: Some(m.response_information.clone()).filter(|s| !s.is_empty()),
            sys_interval: Some(Duration::from_secs(m.sys_interval_secs)).filter(|d| !d.is_zero()),
            limits: Limits {
                receive_maximum: m.receive_maximum,
                max_packet_size: m.max_packet_size,
                topic_alias_maximum: m.topic_alias_maximum,
                max_inflight: m.max_inflight,
                max_queued: m.max_queued,
                queue_qos0_offline: m.queue_qos0_offline,
                max_subscriptions: m.max_subscriptions,
                max_topic_levels: m.max_topic_levels,
                max_topic_len: m.max_topic_len,
                max_qos,
                retain_available: m.retain_available,
            },
            store: self.store()?,
            jwt: self.jwt.config()?,
            history: self.history.config()?,
            taps: Vec::new(),
            interest: None,
            detectors: m2m_broker::DetectorsConfig {
                auth_failures: self.detectors.auth_failures.detector("auth_failures")?,
                flapping: self.detectors.flapping.detector("flapping")?,
                takeovers: self.detectors.takeovers.detector("takeovers")?,
                malformed: self.detectors.malformed.detector("malformed")?,
                access_denied: self.detectors.access_denied.detector("access_denied")?,
                publish_rate: self.detectors.publish_rate.budget()?,
            },
            access_rules: self
                .access
                .rules
                .iter()
                .map(|r| r.parse().with_context(|| format!("invalid rule in access.rules: {r:?}")))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_no_file_and_listen_on_1883() {
        let c = load(None, env(&[]), &[]).unwrap();
        assert_eq!(c.mqtt.listen, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(c.node.data_dir, PathBuf::from("./m2m-data"));
        c.broker().unwrap();
    }

    #[test]
    fn file_then_environment_then_flags_override_in_that_order() {
        let dir = std::env::temp_dir().join(format!("m2m-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m2m.toml");
        std::fs::write(&path, "[mqtt]\nmax_queued = 5\nmax_inflight = 7\nlisten = \"127.0.0.1:1\"\n")
            .unwrap();
        let c = load(
            Some(&path),
            env(&[("M2M_MQTT_MAX_INFLIGHT", "9"), ("M2M_MQTT_LISTEN", "127.0.0.1:2"), ("PATH", "/bin")]),
            &[("mqtt.listen", toml::Value::String("127.0.0.1:3".into()))],
        )
        .unwrap();
        assert_eq!((c.mqtt.max_queued, c.mqtt.max_inflight), (5, 9));
        assert_eq!(c.mqtt.listen, "127.0.0.1:3".parse().unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("m2m-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m2m.toml");
        std::fs::write(&path, "[mqtt]\nmax_queue = 5\n").unwrap();
        let err = format!("{:#}", load(Some(&path), env(&[]), &[]).unwrap_err());
        assert!(err.contains("max_queue"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hardening_limits_reach_the_broker_and_bad_ones_name_the_key() {
        let overrides = [
            ("node.memory_budget", toml::Value::String("64MiB".into())),
            ("mqtt.max_connections_per_address", toml::Value::Integer(10)),
            ("mqtt.connect_rate_per_address", toml::Value::Float(2.5)),
            ("mqtt.packet_timeout_secs", toml::Value::Integer(7)),
            ("mqtt.limit_loopback", toml::Value::Boolean(true)),
            ("mqtt.password_checks", toml::Value::Integer(3)),
            ("mqtt.password_check_wait_ms", toml::Value::Integer(250)),
        ];
        let b = load(None, env(&[]), &overrides).unwrap().broker().unwrap();
        assert_eq!(b.memory_budget, 64 << 20);
        assert_eq!((b.admission.max_per_address, b.admission.rate_per_address), (10, 2.5));
        assert_eq!(b.packet_timeout, Duration::from_secs(7));
        assert!(!b.admission.exempt_loopback);
        assert_eq!((b.password_checks, b.password_check_wait), (3, Duration::from_millis(250)));
        let none = [("node.memory_budget", toml::Value::String("none".into()))];
        assert_eq!(load(None, env(&[]), &none).unwrap().broker().unwrap().memory_budget, 0);
        for (key, value, named) in [
            ("M2M_NODE_MEMORY_BUDGET", "lots", "node.memory_budget"),
            ("M2M_MQTT_PACKET_TIMEOUT_SECS", "0", "mqtt.packet_timeout_secs"),
            ("M2M_MQTT_PASSWORD_CHECK_WAIT_MS", "0", "mqtt.password_check_wait_ms"),
            ("M2M_MQTT_CONNECT_RATE_PER_ADDRESS", "-1", "mqtt.connect_rate_per_address"),
        ] {
            let err = format!("{:#}", load(None, env(&[(key, value)]), &[]).unwrap_err());
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = format!("{:#}", load(None, env(&[("M2M_MQTT_RECEIVE_MAXIMUM", "0")]), &[]).unwrap_err());
        assert!(err.contains("mqtt.receive_maximum"), "{err}");
        let err =
            format!("{:#}", load(None, env(&[("M2M_MQTT_LISTEN", "not-an-address")]), &[]).unwrap_err());
        assert!(err.contains("listen"), "{err}");
        let err = format!("{:#}", load(None, env(&[("M2M_MQTT_NOPE", "1")]), &[]).unwrap_err());
        assert!(err.contains("M2M_MQTT_NOPE"), "{err}");
        let err = format!("{:#}", load(None, env(&[("M2M_MQTT_ANONYMOUS", "maybe")]), &[]).unwrap_err());
        assert!(err.contains("mqtt.anonymous"), "{err}");
        let err = format!("{:#}", load(None, env(&[("M2M_MQTT_MAX_TOPIC_LEN", "0")]), &[]).unwrap_err());
        assert!(err.contains("mqtt.max_topic_len"), "{err}");
        let err = format!("{:#}", load(None, env(&[("M2M_STORE_SYNC", "sometimes")]), &[]).unwrap_err());
        assert!(err.contains("store.sync"), "{err}");
    }

    #[test]
    fn the_store_syncs_before_acknowledging_by_default_and_can_be_turned_off() {
        let c = load(None, env(&[]), &[]).unwrap();
        let store = c.broker().unwrap().store.unwrap();
        assert_eq!(store.sync, m2m_store::SyncMode::Always);
        assert_eq!(store.path, PathBuf::from("./m2m-data").join("store"));
        let c = load(None, env(&[("M2M_STORE_SYNC", "batch"), ("M2M_STORE_SYNC_INTERVAL_MS", "250")]), &[])
            .unwrap();
        assert_eq!(
            c.broker().unwrap().store.unwrap().sync,
            m2m_store::SyncMode::Batch(Duration::from_millis(250))
        );
        let c = load(None, env(&[("M2M_STORE_SYNC", "none")]), &[]).unwrap();
        assert!(c.broker().unwrap().store.is_none());
    }

    #[test]
    fn listeners_and_access_rules_come_from_the_file_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("m2m-config-listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m2m.toml");
        let good = "[access]\nrules = [\"allow subscribe $SYS/#\"]\n\n[[listeners]]\nbind = \"127.0.0.1:8883\"\n\
                    transport = \"tls\"\ntls_cert = \"s.pem\"\ntls_key = \"s.key\"\ntls_client_ca = \"ca.pem\"\n\
                    require_client_cert = true\n\n[[listeners]]\nbind = \"127.0.0.1:1884\"\ntransport = \"tcp\"\n";
        std::fs::write(&path, good).unwrap();
        let broker = load(Some(&path), env(&[]), &[]).unwrap().broker().unwrap();
        assert_eq!(broker.access_rules.len(), 1);
        assert_eq!(broker.listeners.len(), 2);
        let m2m_broker::Transport::Tls(files) = &broker.listeners[0].transport else { panic!("tls") };
        assert!(files.require_client_cert && files.client_ca == Some(PathBuf::from("ca.pem")));
        assert_eq!(broker.listeners[1].transport, m2m_broker::Transport::Tcp);
        for (text, want) in [
            ("[[listeners]]\nbind = \"127.0.0.1:1\"\ntransport = \"tls\"\n", "needs tls_cert and tls_key"),
            ("[[listeners]]\nbind = \"127.0.0.1:1\"\ntransport = \"quic\"\n", "invalid transport \"quic\""),
            (
                "[[listeners]]\nbind = \"127.0.0.1:1\"\ntransport = \"tcp\"\ntls_cert = \"a\"\n",
                "need transport = \"tls\" or \"wss\"",
            ),
            ("[access]\nrules = [\"allow everything\"]\n", "invalid rule in access.rules"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load(Some(&path), env(&[]), &[]).and_then(|c| c.broker().map(|_| ())).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(want), "{text}: {err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn detectors_are_on_by_default_and_each_can_be_tuned_or_switched_off() {
        let c = load(None, env(&[]), &[]).unwrap().broker().unwrap();
        assert_eq!(c.detectors, m2m_broker::DetectorsConfig::default());
        assert!(c.detectors.flapping.enabled);
        let dir = std::env::temp_dir().join(format!("m2m-config-detectors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m2m.toml");
        std::fs::write(
            &path,
            "[detectors.flapping]\nenabled = false\nthreshold = 5\nwindow_secs = 10\nmode = \"isolate\"\nquarantine_secs = 60\n",
        )
        .unwrap();
        let c = load(Some(&path), env(&[]), &[]).unwrap().broker().unwrap();
        assert!(!c.detectors.flapping.enabled);
        assert_eq!(c.detectors.flapping.mode, m2m_access::Mode::Isolate);
        assert!(c.detectors.takeovers.enabled, "the others keep their defaults");
        std::fs::write(
            &path,
            "[detectors.malformed]\nenabled = true\nthreshold = 5\nwindow_secs = 10\nmode = \"exile\"\nquarantine_secs = 60\n",
        )
        .unwrap();
        let err = format!("{:#}", load(Some(&path), env(&[]), &[]).unwrap().broker().unwrap_err());
        assert!(err.contains("detectors.malformed.mode"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn history_is_on_by_default_and_its_sizes_ages_and_filters_are_checked() {
        let h = load(None, env(&[]), &[]).unwrap().broker().unwrap().history.unwrap();
        assert_eq!(h.filters, ["#"]);
        assert_eq!((h.max_age, h.max_bytes), (Some(Duration::from_secs(7 * 86_400)), Some(1 << 30)));
        let off = env(&[("M2M_HISTORY_ENABLED", "false")]);
        assert!(load(None, off, &[]).unwrap().broker().unwrap().history.is_none());
        let set = env(&[("M2M_HISTORY_MAX_AGE", "none"), ("M2M_HISTORY_MAX_BYTES", "500MB")]);
        let h = load(None, set, &[]).unwrap().broker().unwrap().history.unwrap();
        assert_eq!((h.max_age, h.max_bytes), (None, Some(500_000_000)));
        for (vars, want) in [
            (vec![("M2M_HISTORY_MAX_BYTES", "12XB")], "unknown unit"),
            (vec![("M2M_HISTORY_MAX_AGE", "soon")], "history.max_age"),
            (vec![("M2M_HISTORY_FILTERS", "[\"a/#/b\"]")], "history filter"),
            (vec![("M2M_HISTORY_TIMESTAMP_FIELD", "payload..ts")], "empty key"),
        ] {
            let err = load(None, env(&vars), &[]).and_then(|c| c.broker()).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{vars:?}: {err:#}");
        }
    }

    #[test]
    fn jwt_is_off_by_default_and_its_settings_are_checked() {
        assert!(load(None, env(&[]), &[]).unwrap().broker().unwrap().jwt.is_none());
        let on = env(&[("M2M_JWT_ENABLED", "true"), ("M2M_JWT_SECRET", "s")]);
        assert!(load(None, on, &[]).unwrap().broker().unwrap().jwt.is_some());
        for (vars, want) in [
            (vec![("M2M_JWT_ENABLED", "true")], "needs jwt.secret"),
            (vec![("M2M_JWT_ENABLED", "true"), ("M2M_JWT_ALGORITHM", "RS256")], "needs jwt.public_key_file"),
            (vec![("M2M_JWT_ENABLED", "true"), ("M2M_JWT_ALGORITHM", "ES256")], "jwt.algorithm"),
            (
                vec![
                    ("M2M_JWT_ENABLED", "true"),
                    ("M2M_JWT_ALGORITHM", "RS256"),
                    ("M2M_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
                ],
                "cannot read jwt.public_key_file",
            ),
        ] {
            let err = format!("{:#}", load(None, env(&vars), &[]).unwrap().broker().unwrap_err());
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }

    /// The committed seeds of the `config` fuzz target (`fuzz/corpus/config/`: a file, a NUL byte,
    /// then `NAME=value` lines for `M2M_NAME`), without the fuzzer: each loads and makes a broker
    /// configuration.
    #[test]
    fn the_fuzz_seed_corpus_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
        let mut seeds = 0;
        for file in std::fs::read_dir(dir).expect("the fuzz corpus is in the repository") {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            let (file, vars) = text.split_once('\0').unwrap_or((&text, ""));
            let vars = vars
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (format!("M2M_{k}"), v.to_owned()));
            let config = load_text(file, vars, &[]).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            config.broker().unwrap_or_else(|e| panic!("{file}: {e:#}"));
            seeds += 1;
        }
        assert!(seeds >= 4, "only {seeds} seeds");
    }
}
