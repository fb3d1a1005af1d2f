//! Password hashes: argon2id in PHC strings, and a cache of credentials already verified so that a
//! reconnect storm does not pay for an argon2 verification per client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

/// Hashes `password` with argon2id (the crate's default parameters: 19 MiB, 2 passes) and a random
/// salt, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
///
/// # Errors
/// Only if the hasher fails, which it does not for any password length a client can send.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password, &salt)?.to_string())
}

/// Whether `password` matches the PHC string `phc`. A string that does not parse matches nothing.
/// Costs what a hash costs (tens of milliseconds): call it off the async threads.
pub fn verify_password(password: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

/// Credentials verified recently: SHA-256 of (device id, password) → the PHC string they were
/// verified against. A hit counts only while the device's hash is still that string, so a changed
/// password invalidates it. Bounded: emptied when full.
#[derive(Debug)]
pub struct VerifiedCache {
    entries: Mutex<HashMap<[u8; 32], Arc<str>>>,
    capacity: usize,
}

impl VerifiedCache {
    /// A cache of at most `capacity` credentials.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    fn key(device: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((device.len() as u64).to_be_bytes());
        h.update(device.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    /// Whether these credentials were verified against `phc` before.
    pub fn contains(&self, device: &str, password: &[u8], phc: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&Self::key(device, password)).is_some_and(|known| &**known == phc)
    }

    /// Remembers credentials that verified against `phc`.
    pub fn insert(&self, device: &str, password: &[u8], phc: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(Self::key(device, password), Arc::from(phc));
    }

    /// Verifies `password` for `device` against `phc`, from the cache when it can.
    pub fn verify(&self, device: &str, password: &[u8], phc: &str) -> bool {
        if self.contains(device, password, phc) {
            return true;
        }
        let ok = verify_password(password, phc);
        if ok {
            self.insert(device, password, phc);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password(b"s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password(b"s3cret", &phc));
        assert!(!verify_password(b"s3cret ", &phc));
        assert!(!verify_password(b"s3cret", "not a hash"));
        assert_ne!(phc, hash_password(b"s3cret").unwrap(), "salted");
    }

    #[test]
    fn the_cache_answers_for_the_same_hash_only() {
        let cache = VerifiedCache::new(2);
        let phc = hash_password(b"pw").unwrap();
        assert!(!cache.contains("d1", b"pw", &phc));
        assert!(cache.verify("d1", b"pw", &phc));
        assert!(cache.contains("d1", b"pw", &phc));
        assert!(!cache.contains("d2", b"pw", &phc), "another device");
        assert!(!cache.contains("d1", b"pw2", &phc), "another password");
        let changed = hash_password(b"pw").unwrap();
        assert!(!cache.contains("d1", b"pw", &changed), "the password was set again");
        assert!(!cache.verify("d1", b"wrong", &phc));
        assert!(!cache.contains("d1", b"wrong", &phc), "failures are not cached");
    }
}
