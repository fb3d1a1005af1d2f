//! The people and programs that operate a node through its API and console: users (a name, an
//! argon2id password hash and a [`Role`]) and API tokens (a name, a role and the SHA-256 of a random
//! secret), kept in the store's operators table.
//!
//! Users log in with a password; a token is shown once, when it is created, and only its digest is
//! kept. The last admin cannot be removed or demoted, so a node always has someone who can manage
//! it. Password checks cost an argon2 verification (tens of milliseconds): call them off the async
//! threads.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use m2m_store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::password::{hash_password, verify_password};

/// What an operator may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything; changes nothing.
    Viewer,
    /// Also changes devices, groups, quarantine and rules, disconnects clients, publishes.
    Operator,
    /// Also manages users and API tokens and reads the node's configuration.
    Admin,
}

impl Role {
    /// The role's name: `viewer`, `operator` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = OperatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(OperatorError::Invalid(format!(
                "unknown role {other:?}: expected viewer, operator or admin"
            ))),
        }
    }
}

/// A user as shown to others: no password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// The login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// When the user was created (unix ms).
    pub created_ms: u64,
}

/// An API token as shown to others: no secret, no digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token's identifier (not secret): what revoking names.
    pub id: String,
    /// What it is for, e.g. `grafana`.
    pub name: String,
    /// What its bearers may do.
    pub role: Role,
    /// When it was created (unix ms).
    pub created_ms: u64,
}

/// What went wrong managing operators.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// A name, password or role that is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A user of that name exists already.
    #[error("a user named {0:?} exists already")]
    Exists(String),
    /// No such user or token.
    #[error("no {what} {name:?}")]
    NotFound {
        /// `user` or `token`.
        what: &'static str,
        /// The name or id asked for.
        name: String,
    },
    /// The change would leave the node without an admin.
    #[error("{0:?} is the last admin: add another admin first")]
    LastAdmin(String),
    /// The current password given with a password change is wrong.
    #[error("the current password is not correct")]
    WrongPassword,
    /// Hashing a password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The shortest password accepted for a user.
pub const MIN_PASSWORD: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    name: String,
    role: Role,
    hash: String,
    created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    name: String,
    role: Role,
    /// SHA-256 of the secret, hex.
    digest: String,
    created_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<String, UserRecord>,
    /// By digest.
    tokens: HashMap<[u8; 32], TokenRecord>,
}

/// The operators of one node. Cheap reads (a lock and a map lookup); changes write the store
/// first and then the memory, so what is shown is what is kept.
#[derive(Debug)]
pub struct Operators {
    store: Option<Store>,
    state: RwLock<State>,
    /// A hash verified against when a login names an unknown user, so that the answer takes as
    /// long as for a known one; made on first use.
    decoy: std::sync::OnceLock<String>,
}

const USER_PREFIX: &[u8] = b"u/";
const TOKEN_PREFIX: &[u8] = b"t/";
/// Secrets of API tokens start with this, so they are recognisable in configuration and logs.
pub(crate) const TOKEN_PREFIX_TEXT: &str = "m2m_";

impl Operators {
    /// The operators kept in `store` (none kept: only in memory). Records that do not decode are
    /// skipped.
    ///
    /// # Errors
    /// A store read error.
    pub fn open(store: Option<Store>) -> Result<Self, OperatorError> {
        let mut state = State::default();
        if let Some(store) = &store {
            for (key, value) in store.records(Table::Operators)? {
                if key.starts_with(USER_PREFIX) {
                    if let Ok(user) = serde_json::from_slice::<UserRecord>(&value) {
                        state.users.insert(user.name.clone(), user);
                    }
                } else if key.starts_with(TOKEN_PREFIX) {
                    if let Ok(token) = serde_json::from_slice::<TokenRecord>(&value) {
                        if let Some(digest) = from_hex(&token.digest) {
                            state.tokens.insert(digest, token);
                        }
                    }
                }
            }
        }
        Ok(Self { store, state: RwLock::new(state), decoy: std::sync::OnceLock::new() })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn persist(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), OperatorError> {
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            match value {
                Some(v) => batch.put_record(Table::Operators, key, v),
                None => batch.remove_record(Table::Operators, key),
            }
            batch.commit()?;
        }
        Ok(())
    }

    fn save_user(&self, user: &UserRecord) -> Result<(), OperatorError> {
        let value = serde_json::to_vec(user).map_err(|e| OperatorError::Hash(e.to_string()))?;
        self.persist(&[USER_PREFIX, user.name.as_bytes()].concat(), Some(value))
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserInfo> {
        let mut users: Vec<UserInfo> = self.read().users.values().map(info).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// The user `name`, if there is one.
    pub fn user(&self, name: &str) -> Option<UserInfo> {
        self.read().users.get(name).map(info)
    }

    /// The role of user `name`, if there is one.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.read().users.get(name).map(|u| u.role)
    }

    /// Whether some user is an admin.
    pub fn has_admin(&self) -> bool {
        self.read().users.values().any(|u| u.role == Role::Admin)
    }

    /// Adds user `name` with `password` and `role`. Hashes the password: call off the async threads.
    ///
    /// # Errors
    /// [`OperatorError::Invalid`] for a bad name or a short password, [`OperatorError::Exists`], a
    /// store error.
    pub fn add_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
        now_ms: u64,
    ) -> Result<UserInfo, OperatorError> {
        check_name(name)?;
        check_password(password)?;
        if self.read().users.contains_key(name) {
            return Err(OperatorError::Exists(name.to_owned()));
        }
        let hash = hash_password(password.as_bytes()).map_err(|e| OperatorError::Hash(e.to_string()))?;
        let user = UserRecord { name: name.to_owned(), role, hash, created_ms: now_ms };
        let mut state = self.write();
        if state.users.contains_key(name) {
            return Err(OperatorError::Exists(name.to_owned()));
        }
        self.save_user(&user)?;
        let shown = info(&user);
        state.users.insert(user.name.clone(), user);
        Ok(shown)
    }

    /// Changes the password and/or role of user `name`. Hashes a new password: call off the async
    /// threads.
    ///
    /// # Errors
    /// [`OperatorError::NotFound`], [`OperatorError::Invalid`] for a short password,
    /// [`OperatorError::LastAdmin`] when demoting the last admin, a store error.
    pub fn update_user(
        &self,
        name: &str,
        password: Option<&str>,
        role: Option<Role>,
    ) -> Result<UserInfo, OperatorError> {
        if let Some(p) = password {
            check_password(p)?;
        }
        let hash = password
            .map(|p| hash_password(p.as_bytes()).map_err(|e| OperatorError::Hash(e.to_string())))
            .transpose()?;
        let mut state = self.write();
        let Some(current) = state.users.get(name) else {
            return Err(OperatorError::NotFound { what: "user", name: name.to_owned() });
        };
        let mut user = current.clone();
        if let Some(role) = role {
            if user.role == Role::Admin && role != Role::Admin && admins(&state) == 1 {
                return Err(OperatorError::LastAdmin(name.to_owned()));
            }
            user.role = role;
        }
        if let Some(hash) = hash {
            user.hash = hash;
        }
        self.save_user(&user)?;
        let shown = info(&user);
        state.users.insert(user.name.clone(), user);
        Ok(shown)
    }

    /// Changes user `name`'s own password, given the `current` one. Verifies and hashes: call off
    /// the async threads.
    ///
    /// # Errors
    /// [`OperatorError::WrongPassword`], and as [`Operators::update_user`].
    pub fn change_password(&self, name: &str, current: &str, new: &str) -> Result<(), OperatorError> {
        if self.verify(name, current).is_none() {
            return Err(OperatorError::WrongPassword);
        }
        self.update_user(name, Some(new), None).map(|_| ())
    }

    /// Removes user `name`.
    ///
    /// # Errors
    /// [`OperatorError::NotFound`], [`OperatorError::LastAdmin`], a store error.
    pub fn remove_user(&self, name: &str) -> Result<UserInfo, OperatorError> {
        let mut state = self.write();
        let Some(user) = state.users.get(name) else {
            return Err(OperatorError::NotFound { what: "user", name: name.to_owned() });
        };
        if user.role == Role::Admin && admins(&state) == 1 {
            return Err(OperatorError::LastAdmin(name.to_owned()));
        }
        self.persist(&[USER_PREFIX, name.as_bytes()].concat(), None)?;
        let removed = state.users.remove(name).map(|u| info(&u));
        removed.ok_or_else(|| OperatorError::NotFound { what: "user", name: name.to_owned() })
    }

    /// The role of user `name` if `password` is theirs. Takes as long for an unknown user as for
    /// a known one. Costs an argon2 verification: call off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let known = self.read().users.get(name).map(|u| (u.hash.clone(), u.role));
        match known {
            Some((hash, role)) => verify_password(password.as_bytes(), &hash).then_some(role),
            None => {
                let decoy =
                    self.decoy.get_or_init(|| hash_password(b"not a password of anyone").unwrap_or_default());
                let _ = verify_password(password.as_bytes(), decoy);
                None
            }
        }
    }

    /// Creates user `admin` with a random password if the node has no admin, and returns that
    /// password (to be shown once). `None` when an admin exists.
    ///
    /// # Errors
    /// As [`Operators::add_user`]; [`OperatorError::Exists`] when a non-admin user is called `admin`
    /// (then the node has users but no admin: one must be made with the CLI).
    pub fn ensure_admin(&self, now_ms: u64) -> Result<Option<String>, OperatorError> {
        if self.has_admin() {
            return Ok(None);
        }
        let password = random_text(18);
        self.add_user("admin", &password, Role::Admin, now_ms)?;
        Ok(Some(password))
    }

    /// Creates an API token `name` for `role`; returns it and its secret (shown once; only its
    /// digest is kept).
    ///
    /// # Errors
    /// [`OperatorError::Invalid`] for a bad name, a store error.
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        now_ms: u64,
    ) -> Result<(TokenInfo, String), OperatorError> {
        check_name(name)?;
        let secret = format!("{TOKEN_PREFIX_TEXT}{}", random_text(32));
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let id = random_text(8).to_ascii_lowercase();
        let record = TokenRecord {
            id: id.clone(),
            name: name.to_owned(),
            role,
            digest: to_hex(&digest),
            created_ms: now_ms,
        };
        let value = serde_json::to_vec(&record).map_err(|e| OperatorError::Hash(e.to_string()))?;
        let mut state = self.write();
        self.persist(&[TOKEN_PREFIX, id.as_bytes()].concat(), Some(value))?;
        let shown = token_info(&record);
        state.tokens.insert(digest, record);
        Ok((shown, secret))
    }

    /// Every API token, oldest first.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self.read().tokens.values().map(token_info).collect();
        tokens.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
        tokens
    }

    /// Revokes the token `id`.
    ///
    /// # Errors
    /// [`OperatorError::NotFound`], a store error.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, OperatorError> {
        let mut state = self.write();
        let Some(digest) = state.tokens.iter().find(|(_, t)| t.id == id).map(|(d, _)| *d) else {
            return Err(OperatorError::NotFound { what: "token", name: id.to_owned() });
        };
        self.persist(&[TOKEN_PREFIX, id.as_bytes()].concat(), None)?;
        let removed = state.tokens.remove(&digest).map(|t| token_info(&t));
        removed.ok_or_else(|| OperatorError::NotFound { what: "token", name: id.to_owned() })
    }

    /// The token whose secret is `presented`, if any. A digest lookup: the time it takes says
    /// nothing about how close a guess was.
    pub fn token(&self, presented: &str) -> Option<TokenInfo> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let state = self.read();
        let found = state.tokens.get(&digest)?;
        // The map found it by digest; compare once more in constant time for good measure.
        let kept = from_hex(&found.digest)?;
        bool::from(kept.ct_eq(&digest)).then(|| token_info(found))
    }
}

/// How a change of a user reads in the audit log: `password`, `role viewer`, `password, role admin`.
pub fn change_summary(password: bool, role: Option<Role>) -> String {
    match (password, role) {
        (true, Some(role)) => format!("password, role {role}"),
        (true, None) => "password".to_owned(),
        (false, Some(role)) => format!("role {role}"),
        (false, None) => String::new(),
    }
}

fn info(user: &UserRecord) -> UserInfo {
    UserInfo { name: user.name.clone(), role: user.role, created_ms: user.created_ms }
}

fn token_info(token: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role,
        created_ms: token.created_ms,
    }
}

fn admins(state: &State) -> usize {
    state.users.values().filter(|u| u.role == Role::Admin).count()
}

fn check_name(name: &str) -> Result<(), OperatorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(OperatorError::Invalid(format!(
            "invalid name {name:?}: 1 to 64 of letters, digits, '-', '_', '.', '@'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), OperatorError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(OperatorError::Invalid(format!("a password needs at least {MIN_PASSWORD} characters")));
    }
    if password.len() > 1024 {
        return Err(OperatorError::Invalid("a password has at most 1024 bytes".to_owned()));
    }
    Ok(())
}

/// `len` random characters from an unambiguous alphabet (no 0/O, 1/l/I), from the OS's generator.
pub fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    // 256 % 57 != 0: bytes at or above the last whole multiple are skipped (rejection sampling),
    // so that every character is as likely.
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut bytes);
        for b in bytes.iter().map(|b| usize::from(*b)).filter(|b| *b < limit) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[b % ALPHABET.len()]));
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(m2m_store::StoreConfig::new(dir)).unwrap().0
    }

    #[test]
    fn users_and_tokens_survive_a_restart_and_only_digests_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let secret;
        {
            let ops = Operators::open(Some(store(dir.path()))).unwrap();
            ops.add_user("ana", "correct horse", Role::Operator, 1).unwrap();
            let (token, s) = ops.create_token("grafana", Role::Viewer, 2).unwrap();
            assert_eq!(token.role, Role::Viewer);
            secret = s;
        }
        let kept = store(dir.path()).records(Table::Operators).unwrap();
        let raw: Vec<u8> = kept.iter().flat_map(|(k, v)| [k.to_vec(), v.to_vec()].concat()).collect();
        let raw = String::from_utf8_lossy(&raw);
        assert!(!raw.contains("correct horse") && !raw.contains(&secret), "a secret was stored in clear");
        let ops = Operators::open(Some(store(dir.path()))).unwrap();
        assert_eq!(ops.verify("ana", "correct horse"), Some(Role::Operator));
        assert_eq!(ops.verify("ana", "wrong horse!"), None);
        assert_eq!(ops.verify("bob", "correct horse"), None);
        assert_eq!(ops.token(&secret).map(|t| t.name), Some("grafana".to_owned()));
        assert_eq!(ops.token("m2m_guess"), None);
    }

    #[test]
    fn the_first_admin_is_made_once_and_the_last_admin_stays() {
        let ops = Operators::open(None).unwrap();
        let password = ops.ensure_admin(1).unwrap().expect("a password for the new admin");
        assert!(password.len() >= 16);
        assert_eq!(ops.verify("admin", &password), Some(Role::Admin));
        assert_eq!(ops.ensure_admin(2).unwrap(), None);
        assert!(matches!(ops.remove_user("admin"), Err(OperatorError::LastAdmin(_))));
        assert!(matches!(
            ops.update_user("admin", None, Some(Role::Viewer)),
            Err(OperatorError::LastAdmin(_))
        ));
        ops.add_user("root2", "another password", Role::Admin, 3).unwrap();
        ops.update_user("admin", None, Some(Role::Viewer)).unwrap();
        assert_eq!(ops.role_of("admin"), Some(Role::Viewer));
        assert!(matches!(ops.remove_user("root2"), Err(OperatorError::LastAdmin(_))));
    }

    #[test]
    fn bad_names_short_passwords_duplicates_and_unknown_roles_are_refused() {
        let ops = Operators::open(None).unwrap();
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(
                matches!(ops.add_user(name, "long enough", Role::Viewer, 0), Err(OperatorError::Invalid(_))),
                "{name:?}"
            );
        }
        assert!(matches!(ops.add_user("ana", "short", Role::Viewer, 0), Err(OperatorError::Invalid(_))));
        ops.add_user("ana", "long enough", Role::Viewer, 0).unwrap();
        assert!(matches!(ops.add_user("ana", "long enough", Role::Viewer, 0), Err(OperatorError::Exists(_))));
        assert!("root".parse::<Role>().is_err());
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!(matches!(
            ops.change_password("ana", "not it at all", "new password"),
            Err(OperatorError::WrongPassword)
        ));
        ops.change_password("ana", "long enough", "new password").unwrap();
        assert_eq!(ops.verify("ana", "new password"), Some(Role::Viewer));
    }

    #[test]
    fn a_revoked_token_no_longer_admits() {
        let ops = Operators::open(None).unwrap();
        let (token, secret) = ops.create_token("ci", Role::Admin, 0).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX_TEXT));
        assert!(ops.token(&secret).is_some());
        ops.revoke_token(&token.id).unwrap();
        assert!(ops.token(&secret).is_none());
        assert!(matches!(ops.revoke_token(&token.id), Err(OperatorError::NotFound { .. })));
    }

    #[test]
    fn random_text_uses_only_the_alphabet_and_differs() {
        let a = random_text(40);
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() && !b"0O1lI".contains(&b)));
        assert_ne!(a, random_text(40));
    }
}
