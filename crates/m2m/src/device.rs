//! `m2m device`, `m2m group`, `m2m quarantine` and `m2m audit`: the device registry, the quarantine
//! list and the audit log of a node.
//!
//! A stopped node's store is opened directly; what these commands change there is audited with the
//! actor `cli`. A running node keeps its store locked, so the commands go through its HTTP API
//! ([`crate::remote`], routes of `m2m-http`) instead: at `--api URL`, or, when the store turns out to
//! be in use, at the `http.listen` of the node's configuration. Over the API the node makes the
//! change itself, audits it (actor `api`) and applies it to live connections at once (a quarantine
//! entry disconnects the clients it matches). Both ways print the same lines and JSON.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use m2m_access::{
    AuditEvent, AuditLog, Device, Group, Mode, NewDevice, Quarantine, QuarantineEntry, Registry, Target,
};
use m2m_store::{Store, StoreConfig, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::remote::{self, segment, RemoteError};

/// Which node: its data directory (as for `m2m node`), or the HTTP API of a running one.
#[derive(Debug, clap::Args)]
pub(crate) struct Place {
    /// TOML configuration file (for `node.data_dir`, and `http.listen` and `http.token` to reach the
    /// node when it is running).
    #[arg(long, env = "M2M_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides node.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The HTTP API of a running node, e.g. `http://127.0.0.1:8080`: every change goes through it
    /// and no store is opened (--config and --data-dir are not used). Without it, a node found
    /// running on the data directory is reached at its configured `http.listen`.
    #[arg(long, env = "M2M_API", global = true, value_name = "URL")]
    api: Option<String>,
    /// The API's bearer token (the node's `http.token`); by default the configuration's.
    #[arg(long, env = "M2M_HTTP_TOKEN", global = true, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
}

/// `m2m device ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeviceCommand {
    /// Registers a device.
    Add {
        /// Device id: the username it connects with.
        id: String,
        #[command(flatten)]
        spec: Spec,
    },
    /// Lists the devices, one per line.
    List {
        /// Print JSON (an array of devices, password hashes left out).
        #[arg(long)]
        json: bool,
    },
    /// Shows one device as JSON (its password hash left out).
    Show {
        /// Device id.
        id: String,
    },
    /// Changes a device: what is given replaces what it had.
    Set {
        /// Device id.
        id: String,
        #[command(flatten)]
        spec: Spec,
        /// Enable the device.
        #[arg(long, conflicts_with = "disabled")]
        enabled: bool,
        /// Remove its password (it cannot log in with one any more).
        #[arg(long, conflicts_with_all = ["password", "password_stdin"])]
        no_password: bool,
    },
    /// Removes a device.
    Rm {
        /// Device id.
        id: String,
    },
    /// Registers devices from a file: JSON (an array of {id, password, groups, attributes, disabled,
    /// rules}) or CSV (id,password,groups,disabled with groups separated by ';'). All or nothing.
    Import {
        /// The file; `.json` or `.csv`.
        file: PathBuf,
    },
}

/// What a device is given by `add` and `set`.
#[derive(Debug, clap::Args)]
pub(crate) struct Spec {
    /// Its password.
    #[arg(long)]
    password: Option<String>,
    /// Read its password from the first line of standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// A group (repeat for several, in the order their rules apply).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// An attribute `key=value` (repeatable).
    #[arg(long = "attr", value_parser = parse_attr)]
    attributes: Vec<(String, String)>,
    /// An access rule of its own, e.g. "allow publish devices/%c/#" (repeatable, in order).
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// The device may not connect.
    #[arg(long)]
    disabled: bool,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// `m2m group ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Creates a group or replaces its rules.
    Set {
        /// Group name.
        name: String,
        /// An access rule (repeatable, in order).
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Lists the groups and their rules.
    List,
    /// Removes a group.
    Rm {
        /// Group name.
        name: String,
    },
}

/// Where the commands act.
pub(crate) enum Node {
    /// A stopped node: its store, opened by this process.
    Stopped(Store),
    /// A running node, through its API.
    Running(Api),
}

/// A running node's API, and why it is used.
pub(crate) struct Api {
    client: remote::Client,
    /// When the API is used because the store was found in use (not by `--api`): that, as the
    /// start of the error should the API not serve us either.
    in_use: Option<String>,
}

/// Finds the node: `--api`, else the store of the data directory, else (the store being in use by
/// a running node) the API at the configuration's `http.listen`.
pub(crate) fn reach(place: &Place) -> anyhow::Result<Node> {
    if let Some(url) = &place.api {
        let client = remote::Client::new(url, place.token.clone())?;
        return Ok(Node::Running(Api { client, in_use: None }));
    }
    let mut overrides = Vec::new();
    if let Some(dir) = &place.data_dir {
        overrides.push(("node.data_dir", toml::Value::String(dir.display().to_string())));
    }
    let file = crate::config::load(place.config.as_deref(), std::env::vars(), &overrides)?;
    let path = file.node.data_dir.join("store");
    let locked = match Store::open(StoreConfig::new(&path)) {
        Ok((store, _)) => return Ok(Node::Stopped(store)),
        Err(StoreError::Locked { .. }) => path,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open the store in {}", path.display())))
        }
    };
    let in_use = format!(
        "the store in {} is in use by a running node (stop the node to work on its store), and the \
         node's HTTP API could not be used instead",
        locked.display()
    );
    let http = &file.http;
    if !http.enabled {
        bail!("{in_use}: the configuration switches it off (http.enabled = false)");
    }
    if http.listen.port() == 0 {
        bail!(
            "{in_use}: http.listen is {}, a port the node picks when it starts; pass --api with the \
             address in the node's log",
            http.listen
        );
    }
    let token = place.token.clone().or_else(|| Some(http.token.clone()).filter(|t| !t.is_empty()));
    let client = remote::Client::for_listen(http.listen, token).with_context(|| in_use.clone())?;
    Ok(Node::Running(Api { client, in_use: Some(in_use) }))
}

impl Api {
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.client.get(path).map_err(|e| self.explain(e))
    }

    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.client.send_json(method, path, &body).map_err(|e| self.explain(e))
    }

    fn send_bytes<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<T> {
        self.client.send(method, path, content_type, body).map_err(|e| self.explain(e))
    }

    pub(crate) fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.client.request("DELETE", path, None).map(drop).map_err(|e| self.explain(e))
    }

    /// The error, with what to do about a refused token, and with the store being in use when the
    /// API was the way around it.
    fn explain(&self, error: RemoteError) -> anyhow::Error {
        let not_served = error.is_not_served();
        let hint = match error.status() {
            Some(401) => Some(
                "give a token with --token or M2M_HTTP_TOKEN: the node's http.token or an API token \
                 (`m2m token create` on the node's machine)",
            ),
            Some(403) => Some("the token's role does not allow this"),
            _ => None,
        };
        let error = match hint {
            Some(hint) => anyhow::anyhow!("{error} ({hint})"),
            None => anyhow::Error::new(error),
        };
        match &self.in_use {
            Some(in_use) if not_served => error.context(in_use.clone()),
            _ => error,
        }
    }
}

/// The audit log, for what these commands change in a store (the actor is `cli`).
pub(crate) struct Audit(pub(crate) AuditLog);

impl Audit {
    pub(crate) fn record(&self, action: &str, subject: &str, detail: &str) -> anyhow::Result<()> {
        let event = AuditEvent {
            at_ms: now_ms(),
            actor: "cli".into(),
            action: action.into(),
            subject: subject.into(),
            detail: detail.into(),
        };
        self.0.append(&event).context("cannot append to the audit log")?;
        Ok(())
    }
}

fn now_ms() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now())
}

fn password(spec: &Spec) -> anyhow::Result<Option<String>> {
    password_from(spec.password.as_ref(), spec.password_stdin)
}

/// The password given: the first line of standard input when `stdin`, else `given`.
pub(crate) fn password_from(given: Option<&String>, stdin: bool) -> anyhow::Result<Option<String>> {
    if stdin {
        let mut line = String::new();
        std::io::stdin().read_to_string(&mut line).context("cannot read the password from standard input")?;
        let line = line.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(Some(line));
    }
    Ok(given.cloned())
}

/// What `show` and `list --json` print of a device: everything but the password hash. The API
/// shows a device the same way.
#[derive(Debug, Serialize, Deserialize)]
struct DeviceView {
    id: String,
    has_password: bool,
    groups: Vec<String>,
    attributes: BTreeMap<String, String>,
    enabled: bool,
    created_ms: u64,
    last_seen_ms: Option<u64>,
    rules: Vec<String>,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            has_password: d.password_hash.is_some(),
            groups: d.groups.clone(),
            attributes: d.attributes.clone(),
            enabled: d.enabled,
            created_ms: d.created_ms,
            last_seen_ms: d.last_seen_ms,
            rules: d.rules.clone(),
        }
    }
}

fn print_devices(devices: &[DeviceView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(devices)?);
        return Ok(());
    }
    for d in devices {
        println!(
            "{}\t{}\tgroups={}\t{}",
            d.id,
            if d.enabled { "enabled" } else { "disabled" },
            d.groups.join(","),
            if d.has_password { "password" } else { "no password" },
        );
    }
    Ok(())
}

pub(crate) fn run_device(place: &Place, command: DeviceCommand) -> anyhow::Result<()> {
    match reach(place)? {
        Node::Stopped(store) => device_in_store(store, command),
        Node::Running(api) => device_over_api(&api, command),
    }
}

fn device_in_store(store: Store, command: DeviceCommand) -> anyhow::Result<()> {
    let mut registry = Registry::open(Some(store.clone()), Vec::new())?;
    let audit = Audit(AuditLog::new(Some(store)));
    match command {
        DeviceCommand::Add { id, spec } => {
            let new = NewDevice {
                id,
                password: password(&spec)?,
                groups: spec.groups,
                attributes: spec.attributes.into_iter().collect(),
                disabled: spec.disabled,
                rules: spec.rules,
            };
            let device = registry.add_device(new, now_ms())?;
            audit.record("device.add", &device.id, "")?;
            println!("added device {}", device.id);
        }
        DeviceCommand::List { json } => {
            let all: Vec<_> = registry.devices().map(DeviceView::from).collect();
            print_devices(&all, json)?;
        }
        DeviceCommand::Show { id } => {
            let device = registry.device(&id).with_context(|| format!("no device {id:?}"))?;
            println!("{}", serde_json::to_string_pretty(&DeviceView::from(device))?);
        }
        DeviceCommand::Set { id, spec, enabled, no_password } => {
            let password = password(&spec)?;
            if password.is_some() || no_password {
                registry.set_password(&id, password.as_deref())?;
            }
            let attributes: BTreeMap<String, String> = spec.attributes.into_iter().collect();
            registry.update_device(&id, |d| {
                if !spec.groups.is_empty() {
                    d.groups = spec.groups;
                }
                if !spec.rules.is_empty() {
                    d.rules = spec.rules;
                }
                d.attributes.extend(attributes);
                if spec.disabled {
                    d.enabled = false;
                }
                if enabled {
                    d.enabled = true;
                }
            })?;
            audit.record("device.set", &id, "")?;
            println!("changed device {id}");
        }
        DeviceCommand::Rm { id } => {
            registry.remove_device(&id)?;
            audit.record("device.remove", &id, "")?;
            println!("removed device {id}");
        }
        DeviceCommand::Import { file } => {
            let (format, text) = import_file(&file)?;
            let n = match format {
                Import::Json => registry.import_json(&text, now_ms())?,
                Import::Csv => registry.import_csv(&text, now_ms())?,
            };
            audit.record("device.import", &file.display().to_string(), &format!("{n} devices"))?;
            println!("imported {n} devices");
        }
    }
    Ok(())
}

fn device_over_api(api: &Api, command: DeviceCommand) -> anyhow::Result<()> {
    let path = |id: &str| format!("/devices/{}", segment(id));
    match command {
        DeviceCommand::Add { id, spec } => {
            let attributes: BTreeMap<String, String> = spec.attributes.iter().cloned().collect();
            let body = json!({
                "id": id,
                "password": password(&spec)?,
                "groups": spec.groups,
                "attributes": attributes,
                "disabled": spec.disabled,
                "rules": spec.rules,
            });
            let device: DeviceView = api.send("POST", "/devices", body)?;
            println!("added device {}", device.id);
        }
        DeviceCommand::List { json } => print_devices(&api.get::<Vec<DeviceView>>("/devices")?, json)?,
        DeviceCommand::Show { id } => {
            let device: DeviceView = api.get(&path(&id))?;
            println!("{}", serde_json::to_string_pretty(&device)?);
        }
        DeviceCommand::Set { id, spec, enabled, no_password } => {
            // Only what is given: the API leaves absent fields as they are.
            let mut change = serde_json::Map::new();
            match password(&spec)? {
                Some(p) => drop(change.insert("password".into(), p.into())),
                None if no_password => drop(change.insert("password".into(), serde_json::Value::Null)),
                None => {}
            }
            if !spec.groups.is_empty() {
                change.insert("groups".into(), json!(spec.groups));
            }
            if !spec.rules.is_empty() {
                change.insert("rules".into(), json!(spec.rules));
            }
            if !spec.attributes.is_empty() {
                let attributes: BTreeMap<String, String> = spec.attributes.into_iter().collect();
                change.insert("attributes".into(), json!(attributes));
            }
            if spec.disabled {
                change.insert("enabled".into(), false.into());
            }
            if enabled {
                change.insert("enabled".into(), true.into());
            }
            let _: DeviceView = api.send("PATCH", &path(&id), change.into())?;
            println!("changed device {id}");
        }
        DeviceCommand::Rm { id } => {
            api.delete(&path(&id))?;
            println!("removed device {id}");
        }
        DeviceCommand::Import { file } => {
            let (format, text) = import_file(&file)?;
            let content_type = match format {
                Import::Json => "application/json",
                Import::Csv => "text/csv",
            };
            #[derive(Deserialize)]
            struct Imported {
                imported: usize,
            }
            let Imported { imported } =
                api.send_bytes("POST", "/devices/import", content_type, text.as_bytes())?;
            println!("imported {imported} devices");
        }
    }
    Ok(())
}

/// The formats `m2m device import` reads, by file extension.
enum Import {
    Json,
    Csv,
}

fn import_file(file: &Path) -> anyhow::Result<(Import, String)> {
    let format = match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "json" => Import::Json,
        "csv" => Import::Csv,
        other => bail!("cannot import {}: expected a .json or .csv file, not {other:?}", file.display()),
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((format, text))
}

fn print_groups<'a>(groups: impl IntoIterator<Item = &'a Group>) {
    for g in groups {
        println!("{}", g.name);
        for r in &g.rules {
            println!("  {r}");
        }
    }
}

pub(crate) fn run_group(place: &Place, command: GroupCommand) -> anyhow::Result<()> {
    match reach(place)? {
        Node::Stopped(store) => group_in_store(store, command),
        Node::Running(api) => group_over_api(&api, command),
    }
}

fn group_in_store(store: Store, command: GroupCommand) -> anyhow::Result<()> {
    let mut registry = Registry::open(Some(store.clone()), Vec::new())?;
    let audit = Audit(AuditLog::new(Some(store)));
    match command {
        GroupCommand::Set { name, rules } => {
            registry.set_group(Group { name: name.clone(), rules })?;
            audit.record("group.set", &name, "")?;
            println!("set group {name}");
        }
        GroupCommand::List => print_groups(registry.groups()),
        GroupCommand::Rm { name } => {
            registry.remove_group(&name)?;
            audit.record("group.remove", &name, "")?;
            println!("removed group {name}");
        }
    }
    Ok(())
}

fn group_over_api(api: &Api, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Set { name, rules } => {
            let _: Group =
                api.send("PUT", &format!("/groups/{}", segment(&name)), json!({ "rules": rules }))?;
            println!("set group {name}");
        }
        GroupCommand::List => print_groups(&api.get::<Vec<Group>>("/groups")?),
        GroupCommand::Rm { name } => {
            api.delete(&format!("/groups/{}", segment(&name)))?;
            println!("removed group {name}");
        }
    }
    Ok(())
}

/// `m2m quarantine ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum QuarantineCommand {
    /// Quarantines clients by client id, username, address or client-id pattern (exactly one).
    Add {
        /// A client id.
        #[arg(long, group = "target")]
        client_id: Option<String>,
        /// A username.
        #[arg(long, group = "target")]
        username: Option<String>,
        /// An IP address or CIDR block (`10.1.0.0/16`).
        #[arg(long, group = "target")]
        address: Option<String>,
        /// A regular expression the whole client id must match.
        #[arg(long, group = "target")]
        pattern: Option<String>,
        /// `ban` (refused at CONNECT) or `isolate` (only its repair namespace `$quarantine/<id>/#`).
        #[arg(long, value_parser = ["ban", "isolate"])]
        mode: String,
        /// Why (shown in logs and listings).
        #[arg(long)]
        reason: String,
        /// Lifts itself after this long: `90s`, `30m`, `12h`, `7d`.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Who is adding it.
        #[arg(long, default_value = "operator")]
        actor: String,
    },
    /// Lists the entries, expired ones marked.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Releases an entry.
    Release {
        /// The entry's id (from `list`).
        id: u64,
    },
    /// What a quarantined client tried and was refused (the last 50, oldest first). Only a running
    /// node knows: it keeps them in memory since it started.
    Refusals {
        /// The client id.
        client_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("expected a number and a unit (s, m, h, d), got {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("expected a number and a unit (s, m, h, d), got {s:?}")),
    };
    if secs == 0 {
        return Err("the expiry must be at least 1s".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// A quarantine entry as `list` shows it, and as the API does: whether it has expired by now.
#[derive(Debug, Serialize, Deserialize)]
struct EntryView {
    #[serde(flatten)]
    entry: QuarantineEntry,
    expired: bool,
}

fn print_entries(entries: &[EntryView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    for EntryView { entry: e, expired } in entries {
        let expired = if *expired { " (expired)" } else { "" };
        let mode = e.mode.as_str();
        println!("{}\t{mode}\t{}\t{}\tby {}{expired}", e.id, e.target, e.reason, e.actor);
    }
    Ok(())
}

/// One thing a quarantined client tried and was refused, as the API shows it (the fields printed
/// as text; `--json` prints all the node gives).
#[derive(Debug, Deserialize)]
struct Refusal {
    at_ms: u64,
    kind: String,
    #[serde(default)]
    topic: String,
    reason: String,
}

pub(crate) fn run_quarantine(place: &Place, command: QuarantineCommand) -> anyhow::Result<()> {
    match reach(place)? {
        Node::Stopped(store) => quarantine_in_store(store, command),
        Node::Running(api) => quarantine_over_api(&api, command),
    }
}

/// What `quarantine add` names: exactly one of its target options.
fn target(
    client_id: Option<String>,
    username: Option<String>,
    address: Option<String>,
    pattern: Option<String>,
) -> anyhow::Result<Target> {
    Ok(match (client_id, username, address, pattern) {
        (Some(c), ..) => Target::ClientId(c),
        (_, Some(u), ..) => Target::Username(u),
        (_, _, Some(a), _) => Target::Address(a),
        (_, _, _, Some(p)) => Target::Pattern(p),
        _ => bail!("name what to quarantine: --client-id, --username, --address or --pattern"),
    })
}

fn quarantine_in_store(store: Store, command: QuarantineCommand) -> anyhow::Result<()> {
    let mut quarantine = Quarantine::open(Some(store.clone()))?;
    let audit = Audit(AuditLog::new(Some(store)));
    match command {
        QuarantineCommand::Add { client_id, username, address, pattern, mode, reason, expires_in, actor } => {
            let target = target(client_id, username, address, pattern)?;
            let mode = Mode::from_name(&mode).context("--mode must be ban or isolate")?;
            let now = now_ms();
            let expires = expires_in.map(|d| now + d.as_millis() as u64);
            let entry = quarantine.add(target, mode, &reason, &actor, now, expires)?;
            let mode = entry.mode.as_str();
            audit.record(
                "quarantine.add",
                &entry.id.to_string(),
                &format!("{mode} {}: {reason}", entry.target),
            )?;
            println!("added quarantine entry {}", entry.id);
        }
        QuarantineCommand::List { json } => {
            let now = now_ms();
            let entries: Vec<_> = quarantine
                .entries()
                .map(|e| EntryView { entry: e.clone(), expired: e.expires_ms.is_some_and(|at| at <= now) })
                .collect();
            print_entries(&entries, json)?;
        }
        QuarantineCommand::Release { id } => {
            let entry = quarantine.release(id)?;
            audit.record("quarantine.release", &id.to_string(), &entry.target.to_string())?;
            println!("released quarantine entry {id}");
        }
        QuarantineCommand::Refusals { .. } => bail!(
            "refusals are only known to a running node (it keeps them in memory), and no node is \
             running on this data directory (its store is not in use): start it, or ask a running \
             node with --api URL"
        ),
    }
    Ok(())
}

fn quarantine_over_api(api: &Api, command: QuarantineCommand) -> anyhow::Result<()> {
    match command {
        QuarantineCommand::Add { client_id, username, address, pattern, mode, reason, expires_in, actor } => {
            let target = target(client_id, username, address, pattern)?;
            let mode = Mode::from_name(&mode).context("--mode must be ban or isolate")?;
            let body = json!({
                "target": target,
                "mode": mode,
                "reason": reason,
                "actor": actor,
                "expires_in_secs": expires_in.map(|d| d.as_secs()),
            });
            let entry: EntryView = api.send("POST", "/quarantine", body)?;
            println!("added quarantine entry {}", entry.entry.id);
        }
        QuarantineCommand::List { json } => print_entries(&api.get::<Vec<EntryView>>("/quarantine")?, json)?,
        QuarantineCommand::Release { id } => {
            api.delete(&format!("/quarantine/{id}"))?;
            println!("released quarantine entry {id}");
        }
        QuarantineCommand::Refusals { client_id, json } => {
            let path = format!("/clients/{}/refusals", segment(&client_id));
            let refusals: Vec<serde_json::Value> = api.get(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&refusals)?);
            } else {
                for r in refusals {
                    let r: Refusal = serde_json::from_value(r).with_context(|| {
                        format!("unexpected refusal from the HTTP API at {}", api.client.base())
                    })?;
                    println!("{}\t{}\t{}\t{}", r.at_ms, r.kind, r.topic, r.reason);
                }
            }
        }
    }
    Ok(())
}

/// `m2m audit ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest events first.
    List {
        /// How many (a running node gives at most 10 000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

fn print_audit(events: &[AuditEvent], json: bool) -> anyhow::Result<()> {
    for event in events {
        if json {
            println!("{}", serde_json::to_string(event)?);
        } else {
            let detail = if event.detail.is_empty() { String::new() } else { format!("\t{}", event.detail) };
            println!("{}\t{}\t{}\t{}{detail}", event.at_ms, event.actor, event.action, event.subject);
        }
    }
    Ok(())
}

pub(crate) fn run_audit(place: &Place, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List { limit, json } = command;
    let events = match reach(place)? {
        Node::Stopped(store) => {
            AuditLog::new(Some(store)).recent(None, limit)?.into_iter().map(|(_, event)| event).collect()
        }
        // The API gives at least one event and at most 10 000.
        Node::Running(_) if limit == 0 => Vec::new(),
        Node::Running(api) => api.get(&format!("/audit?limit={}", limit.min(10_000)))?,
    };
    print_audit(&events, json)
}
