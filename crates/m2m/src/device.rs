//! `m2m device` and `m2m group`: the device registry in a node's data directory.
//!
//! These commands open the node's store directly, so the node must not be running on that data
//! directory (the store is locked while it runs; a running node is changed through its HTTP API).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use m2m_access::{Device, Group, NewDevice, Registry};
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

fn open(place: &Place) -> anyhow::Result<Registry> {
    let mut overrides = Vec::new();
    if let Some(dir) = &place.data_dir {
        overrides.push(("node.data_dir", toml::Value::String(dir.display().to_string())));
    }
    let file = crate::config::load(place.config.as_deref(), std::env::vars(), &overrides)?;
    let path = file.node.data_dir.join("store");
    let (store, _) = Store::open(StoreConfig::new(&path)).map_err(|e| match e {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "the store in {} is in use: stop the node on that data directory first",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("cannot open the store in {}", path.display())),
    })?;
    Ok(Registry::open(Some(store), Vec::new())?)
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
    let mut registry = open(place)?;
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
            println!("changed device {id}");
        }
        DeviceCommand::Rm { id } => {
            registry.remove_device(&id)?;
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
            println!("imported {n} devices");
        }
    }
    Ok(())
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

pub(crate) fn run_group(place: &Place, command: GroupCommand) -> anyhow::Result<()> {
    let mut registry = open(place)?;
    match command {
        GroupCommand::Set { name, rules } => {
            registry.set_group(Group { name: name.clone(), rules })?;
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
            println!("removed group {name}");
        }
    }
    Ok(())
}
