//! `m2m device`, `m2m group` and `m2m quarantine`: the device registry and the quarantine list in a
//! node's data directory.
//!
//! These commands open the node's store directly, so the node must not be running on that data
//! directory (the store is locked while it runs; a running node is changed through its HTTP API,
//! `m2m-http`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use m2m_access::{AuditEvent, AuditLog, Device, Group, NewDevice, Registry};
use m2m_store::{Store, StoreConfig, StoreError};

/// Where the registry is: the node's data directory, as for `m2m node`.
#[derive(Debug, clap::Args)]
pub(crate) struct Place {
    /// TOML configuration file (for `node.data_dir`).
    #[arg(long, env = "M2M_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides node.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
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

/// The store of the node's data directory (refused while the node runs on it).
fn open_store(place: &Place) -> anyhow::Result<Store> {
    let mut overrides = Vec::new();
    if let Some(dir) = &place.data_dir {
        overrides.push(("node.data_dir", toml::Value::String(dir.display().to_string())));
    }
    let file = crate::config::load(place.config.as_deref(), std::env::vars(), &overrides)?;
    let path = file.node.data_dir.join("store");
    let (store, _) = Store::open(StoreConfig::new(&path)).map_err(|e| match e {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "the store in {} is in use: stop the node on that data directory first, or change the \
             running node over its HTTP API (/api/v1/devices, /api/v1/groups, /api/v1/quarantine)",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("cannot open the store in {}", path.display())),
    })?;
    Ok(store)
}

fn open(place: &Place) -> anyhow::Result<(Registry, Audit)> {
    let store = open_store(place)?;
    Ok((Registry::open(Some(store.clone()), Vec::new())?, Audit(AuditLog::new(Some(store)))))
}

/// The audit log, for what these commands change (the actor is `cli`).
struct Audit(AuditLog);

impl Audit {
    fn record(&self, action: &str, subject: &str, detail: &str) -> anyhow::Result<()> {
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
    if spec.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_to_string(&mut line).context("cannot read the password from standard input")?;
        let line = line.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(Some(line));
    }
    Ok(spec.password.clone())
}

/// What `show` and `list --json` print of a device: everything but the password hash.
fn public(device: &Device) -> serde_json::Value {
    serde_json::json!({
        "id": device.id,
        "has_password": device.password_hash.is_some(),
        "groups": device.groups,
        "attributes": device.attributes,
        "enabled": device.enabled,
        "created_ms": device.created_ms,
        "last_seen_ms": device.last_seen_ms,
        "rules": device.rules,
    })
}

pub(crate) fn run_device(place: &Place, command: DeviceCommand) -> anyhow::Result<()> {
    let (mut registry, audit) = open(place)?;
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
            if json {
                let all: Vec<_> = registry.devices().map(public).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for d in registry.devices() {
                    println!(
                        "{}\t{}\tgroups={}\t{}",
                        d.id,
                        if d.enabled { "enabled" } else { "disabled" },
                        d.groups.join(","),
                        if d.password_hash.is_some() { "password" } else { "no password" },
                    );
                }
            }
        }
        DeviceCommand::Show { id } => {
            let device = registry.device(&id).with_context(|| format!("no device {id:?}"))?;
            println!("{}", serde_json::to_string_pretty(&public(device))?);
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
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let n = match extension(&file) {
                "json" => registry.import_json(&text, now_ms())?,
                "csv" => registry.import_csv(&text, now_ms())?,
                other => {
                    bail!("cannot import {}: expected a .json or .csv file, not {other:?}", file.display())
                }
            };
            audit.record("device.import", &file.display().to_string(), &format!("{n} devices"))?;
            println!("imported {n} devices");
        }
    }
    Ok(())
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

pub(crate) fn run_group(place: &Place, command: GroupCommand) -> anyhow::Result<()> {
    let (mut registry, audit) = open(place)?;
    match command {
        GroupCommand::Set { name, rules } => {
            registry.set_group(Group { name: name.clone(), rules })?;
            audit.record("group.set", &name, "")?;
            println!("set group {name}");
        }
        GroupCommand::List => {
            for g in registry.groups() {
                println!("{}", g.name);
                for r in &g.rules {
                    println!("  {r}");
                }
            }
        }
        GroupCommand::Rm { name } => {
            registry.remove_group(&name)?;
            audit.record("group.remove", &name, "")?;
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

fn open_quarantine(place: &Place) -> anyhow::Result<(m2m_access::Quarantine, Audit)> {
    let store = open_store(place)?;
    Ok((m2m_access::Quarantine::open(Some(store.clone()))?, Audit(AuditLog::new(Some(store)))))
}

pub(crate) fn run_quarantine(place: &Place, command: QuarantineCommand) -> anyhow::Result<()> {
    use m2m_access::{Mode, Target};
    let (mut quarantine, audit) = open_quarantine(place)?;
    match command {
        QuarantineCommand::Add { client_id, username, address, pattern, mode, reason, expires_in, actor } => {
            let target = match (client_id, username, address, pattern) {
                (Some(c), ..) => Target::ClientId(c),
                (_, Some(u), ..) => Target::Username(u),
                (_, _, Some(a), _) => Target::Address(a),
                (_, _, _, Some(p)) => Target::Pattern(p),
                _ => bail!("name what to quarantine: --client-id, --username, --address or --pattern"),
            };
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
            if json {
                let all: Vec<_> = quarantine.entries().collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for e in quarantine.entries() {
                    let expired = if e.expires_ms.is_some_and(|at| at <= now) { " (expired)" } else { "" };
                    let mode = e.mode.as_str();
                    println!("{}\t{mode}\t{}\t{}\tby {}{expired}", e.id, e.target, e.reason, e.actor);
                }
            }
        }
        QuarantineCommand::Release { id } => {
            let entry = quarantine.release(id)?;
            audit.record("quarantine.release", &id.to_string(), &entry.target.to_string())?;
            println!("released quarantine entry {id}");
        }
    }
    Ok(())
}

/// `m2m audit ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest events first.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run_audit(place: &Place, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List { limit, json } = command;
    let log = AuditLog::new(Some(open_store(place)?));
    for (_, event) in log.recent(None, limit)? {
        if json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            let detail = if event.detail.is_empty() { String::new() } else { format!("\t{}", event.detail) };
            println!("{}\t{}\t{}\t{}{detail}", event.at_ms, event.actor, event.action, event.subject);
        }
    }
    Ok(())
}
