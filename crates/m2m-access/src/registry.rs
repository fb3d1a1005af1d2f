//! The device registry: devices (credentials, groups, attributes, access rules) and groups (access
//! rules), kept in the store's tables and compiled into an [`Acl`].
//!
//! The registry is **enabled** once it holds a device or a group: from then on the compiled rules
//! deny what they do not grant, to every client; an empty registry grants everything (a node without
//! devices behaves as a plain broker).

use std::collections::BTreeMap;
use std::sync::Arc;

use m2m_store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};

use crate::password::hash_password;
use crate::scram::ScramCredential;
use crate::{AccessError, Acl, Permission, Rule};

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its id: the username it connects with.
    pub id: String,
    /// Its password as an argon2id PHC string; `None`: it cannot log in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Its groups, in the order their rules apply.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free attributes (location, model, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// A disabled device is refused at CONNECT.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// When it was added (unix ms).
    #[serde(default)]
    pub created_ms: u64,
    /// When it last connected (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Its own access rules, one per line (`allow publish devices/%c/#`), before its groups'.
    #[serde(default)]
    pub rules: Vec<String>,
    /// What MQTT 5 SCRAM-SHA-256 authentication needs of its password (set with the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramCredential>,
}

fn enabled() -> bool {
    true
}

/// A group of devices and its access rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its access rules, one per line.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// A device to add, as an operator describes it (a password in clear, to be hashed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NewDevice {
    /// Its id.
    pub id: String,
    /// Its password in clear.
    #[serde(default)]
    pub password: Option<String>,
    /// Its groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Its attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Whether it may connect (default yes).
    #[serde(default)]
    pub disabled: bool,
    /// Its own rules.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// What went wrong with a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The id or name is not acceptable.
    #[error("invalid {what} {id:?}: {why}")]
    InvalidName {
        /// "device id" or "group name".
        what: &'static str,
        /// The name.
        id: String,
        /// Why.
        why: &'static str,
    },
    /// A device with that id exists already.
    #[error("device {0:?} exists already")]
    Exists(String),
    /// No device (or group) with that id.
    #[error("no {what} {id:?}")]
    NotFound {
        /// "device" or "group".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A rule line did not parse.
    #[error("rule {line:?}: {error}")]
    Rule {
        /// The line.
        line: String,
        /// Why.
        error: AccessError,
    },
    /// The password could not be hashed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// A stored record does not decode.
    #[error("stored {what} {key:?} does not decode: {detail}")]
    Decode {
        /// "device" or "group".
        what: &'static str,
        /// Its key.
        key: String,
        /// Why.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why `id` cannot be a device id or group name, if it cannot: it must have 1 to 128 characters, no
/// whitespace or control characters, and none of `+`, `#`, `/` (it is substituted into topic filters
/// as `%u`).
pub fn name_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if id.chars().count() > 128 {
        Some("it is longer than 128 characters")
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or a control character")
    } else if id.contains(['+', '#', '/']) {
        Some("it contains '+', '#' or '/'")
    } else {
        None
    }
}

fn check_name(what: &'static str, id: &str) -> Result<(), RegistryError> {
    match name_problem(id) {
        Some(why) => Err(RegistryError::InvalidName { what, id: id.to_owned(), why }),
        None => Ok(()),
    }
}

fn parse_rules(lines: &[String]) -> Result<Vec<Rule>, RegistryError> {
    lines
        .iter()
        .map(|line| line.parse::<Rule>().map_err(|error| RegistryError::Rule { line: line.clone(), error }))
        .collect()
}

/// The registry: in memory, written through to the store (if there is one).
#[derive(Debug)]
pub struct Registry {
    store: Option<Store>,
    devices: BTreeMap<String, Device>,
    groups: BTreeMap<String, Group>,
    global: Vec<Rule>,
    acl: Arc<Acl>,
}

impl Registry {
    /// Reads the registry from `store` (empty without one); `global` rules apply to every client
    /// after the device's and its groups' rules.
    ///
    /// # Errors
    /// A record that does not decode or holds a rule that does not parse; a store error.
    pub fn open(store: Option<Store>, global: Vec<Rule>) -> Result<Self, RegistryError> {
        let mut devices = BTreeMap::new();
        let mut groups = BTreeMap::new();
        if let Some(store) = &store {
            for (key, value) in store.records(Table::Devices)? {
                let device: Device = decode("device", &key, &value)?;
                parse_rules(&device.rules)?;
                devices.insert(device.id.clone(), device);
            }
            for (key, value) in store.records(Table::Groups)? {
                let group: Group = decode("group", &key, &value)?;
                parse_rules(&group.rules)?;
                groups.insert(group.name.clone(), group);
            }
        }
        let mut registry =
            Self { store, devices, groups, global, acl: Arc::new(Acl::new(Permission::Allow)) };
        registry.compile()?;
        Ok(registry)
    }

    /// Whether the registry holds any device or group (and so denies what its rules do not grant).
    pub fn is_enabled(&self) -> bool {
        !self.devices.is_empty() || !self.groups.is_empty()
    }

    /// The compiled rules; a new `Arc` after every change.
    pub fn acl(&self) -> Arc<Acl> {
        self.acl.clone()
    }

    /// The device `id`.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Every device, by id.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// Every group, by name.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Adds a device, hashing its password (argon2id: tens of milliseconds).
    ///
    /// # Errors
    /// An invalid id, group name or rule; a device with that id; a store error.
    pub fn add_device(&mut self, new: NewDevice, now_ms: u64) -> Result<Device, RegistryError> {
        check_name("device id", &new.id)?;
        if self.devices.contains_key(&new.id) {
            return Err(RegistryError::Exists(new.id));
        }
        let device = self.device_from(new, now_ms)?;
        self.put_device(device.clone())?;
        Ok(device)
    }

    /// Changes the device `id` with `change` and keeps the result.
    ///
    /// # Errors
    /// No such device; an invalid group name or rule after the change; a store error.
    pub fn update_device(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Device),
    ) -> Result<Device, RegistryError> {
        let mut device = self.devices.get(id).cloned().ok_or_else(|| not_found("device", id))?;
        change(&mut device);
        device.id = id.to_owned();
        self.put_device(device.clone())?;
        Ok(device)
    }

    /// Sets the password of the device `id`; `None` removes it.
    ///
    /// # Errors
    /// As [`Registry::update_device`], and a failure to hash.
    pub fn set_password(&mut self, id: &str, password: Option<&str>) -> Result<Device, RegistryError> {
        let credentials = match password {
            Some(p) => Some(credentials(p)?),
            None => None,
        };
        self.update_device(id, |d| {
            let (hash, scram) = credentials.unzip();
            d.password_hash = hash;
            d.scram = scram;
        })
    }

    /// Removes the device `id`.
    ///
    /// # Errors
    /// No such device; a store error.
    pub fn remove_device(&mut self, id: &str) -> Result<Device, RegistryError> {
        let device = self.devices.get(id).cloned().ok_or_else(|| not_found("device", id))?;
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.remove_record(Table::Devices, id.as_bytes());
            batch.commit()?;
        }
        self.devices.remove(id);
        self.compile()?;
        Ok(device)
    }

    /// Adds or replaces a group.
    ///
    /// # Errors
    /// An invalid name or rule; a store error.
    pub fn set_group(&mut self, group: Group) -> Result<(), RegistryError> {
        check_name("group name", &group.name)?;
        parse_rules(&group.rules)?;
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.put_record(Table::Groups, group.name.as_bytes(), encode(&group));
            batch.commit()?;
        }
        self.groups.insert(group.name.clone(), group);
        self.compile()
    }

    /// Removes the group `name` (devices keep naming it; it grants nothing any more).
    ///
    /// # Errors
    /// No such group; a store error.
    pub fn remove_group(&mut self, name: &str) -> Result<Group, RegistryError> {
        let group = self.groups.get(name).cloned().ok_or_else(|| not_found("group", name))?;
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.remove_record(Table::Groups, name.as_bytes());
            batch.commit()?;
        }
        self.groups.remove(name);
        self.compile()?;
        Ok(group)
    }

    /// Adds devices from a JSON array of objects with the fields of [`NewDevice`] (`id`, `password`,
    /// `groups`, `attributes`, `disabled`, `rules`), all or none: the first invalid one stops the
    /// import before anything is written. Returns how many were added.
    ///
    /// # Errors
    /// JSON that does not parse; an invalid or duplicate device; a store error.
    pub fn import_json(&mut self, text: &str, now_ms: u64) -> Result<usize, RegistryError> {
        let new: Vec<NewDevice> = serde_json::from_str(text).map_err(|e| RegistryError::Decode {
            what: "import",
            key: String::new(),
            detail: e.to_string(),
        })?;
        self.import(new, now_ms)
    }

    /// Adds devices from CSV lines `id,password,groups,disabled` (groups separated by `;`, password
    /// may be empty, disabled `true`/`false`/empty; a first line starting with `id,` is a header).
    ///
    /// # Errors
    /// As [`Registry::import_json`], with the line number of a malformed line.
    pub fn import_csv(&mut self, text: &str, now_ms: u64) -> Result<usize, RegistryError> {
        let mut new = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (n == 0 && line.starts_with("id,")) {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = |detail: &str| RegistryError::Decode {
                what: "import",
                key: format!("line {}", n + 1),
                detail: detail.to_owned(),
            };
            if fields.len() > 4 {
                return Err(bad("more than 4 fields (id,password,groups,disabled)"));
            }
            let field = |i: usize| fields.get(i).copied().unwrap_or("");
            let disabled = match field(3) {
                "" | "false" => false,
                "true" => true,
                _ => return Err(bad("disabled must be true, false or empty")),
            };
            new.push(NewDevice {
                id: field(0).to_owned(),
                password: Some(field(1)).filter(|p| !p.is_empty()).map(str::to_owned),
                groups: field(2).split(';').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
                disabled,
                ..NewDevice::default()
            });
        }
        self.import(new, now_ms)
    }

    fn import(&mut self, new: Vec<NewDevice>, now_ms: u64) -> Result<usize, RegistryError> {
        let mut seen = std::collections::HashSet::new();
        for d in &new {
            check_name("device id", &d.id)?;
            for g in &d.groups {
                check_name("group name", g)?;
            }
            parse_rules(&d.rules)?;
            if self.devices.contains_key(&d.id) || !seen.insert(d.id.clone()) {
                return Err(RegistryError::Exists(d.id.clone()));
            }
        }
        let mut devices = Vec::with_capacity(new.len());
        for d in new {
            devices.push(self.device_from(d, now_ms)?);
        }
        // One batch and one rebuild of the rules for the whole import.
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            for d in &devices {
                batch.put_record(Table::Devices, d.id.as_bytes(), encode(d));
            }
            batch.commit()?;
        }
        let count = devices.len();
        self.devices.extend(devices.into_iter().map(|d| (d.id.clone(), d)));
        self.compile()?;
        Ok(count)
    }

    /// The device `new` describes, its password hashed.
    fn device_from(&self, new: NewDevice, now_ms: u64) -> Result<Device, RegistryError> {
        let (password_hash, scram) = match &new.password {
            Some(p) => {
                let (hash, scram) = credentials(p)?;
                (Some(hash), Some(scram))
            }
            None => (None, None),
        };
        Ok(Device {
            id: new.id,
            password_hash,
            groups: new.groups,
            attributes: new.attributes,
            enabled: !new.disabled,
            created_ms: now_ms,
            last_seen_ms: None,
            rules: new.rules,
            scram,
        })
    }

    fn put_device(&mut self, device: Device) -> Result<(), RegistryError> {
        for g in &device.groups {
            check_name("group name", g)?;
        }
        parse_rules(&device.rules)?;
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.put_record(Table::Devices, device.id.as_bytes(), encode(&device));
            batch.commit()?;
        }
        self.devices.insert(device.id.clone(), device);
        self.compile()
    }

    /// Rebuilds the compiled rules from the devices, groups and global rules.
    fn compile(&mut self) -> Result<(), RegistryError> {
        let default = if self.is_enabled() { Permission::Deny } else { Permission::Allow };
        let mut acl = Acl::new(default);
        for device in self.devices.values() {
            if !device.rules.is_empty() {
                acl.set_device_rules(device.id.as_str(), parse_rules(&device.rules)?);
            }
        }
        for group in self.groups.values() {
            acl.set_group_rules(group.name.as_str(), parse_rules(&group.rules)?);
        }
        acl.set_global_rules(self.global.iter().cloned());
        self.acl = Arc::new(acl);
        Ok(())
    }
}

/// What the registry keeps of a password: its argon2id hash (for CONNECT with a password) and its
/// SCRAM-SHA-256 credential (for MQTT 5 enhanced authentication). Tens of milliseconds.
///
/// # Errors
/// Only if hashing fails.
pub fn credentials(password: &str) -> Result<(String, ScramCredential), RegistryError> {
    let hash = hash_password(password.as_bytes()).map_err(|e| RegistryError::Hash(e.to_string()))?;
    Ok((hash, ScramCredential::new(password.as_bytes())))
}

fn not_found(what: &'static str, id: &str) -> RegistryError {
    RegistryError::NotFound { what, id: id.to_owned() }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, maps and numbers: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|e| RegistryError::Decode {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}
