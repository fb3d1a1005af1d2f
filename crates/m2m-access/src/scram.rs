//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for MQTT 5 enhanced authentication, server side, sans IO.
//!
//! The registry keeps, for a device with a password, a [`ScramCredential`]: the salt, the iteration
//! count, and the StoredKey and ServerKey derived from the password (never the password). The
//! exchange: the client's first message comes in CONNECT (Authentication Data), the server answers
//! with its first message in AUTH 0x18, the client proves it knows the password in AUTH, and the
//! server's final message, proving it knows the credential, goes out in CONNACK.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The method name in MQTT's Authentication Method property.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iterations of PBKDF2 for new credentials (RFC 7677 asks at least 4096).
const ITERATIONS: u32 = 4096;

/// A random nonce for the server's first message: 18 random bytes, base64 (no commas).
pub fn scram_nonce() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 18];
    OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// What the registry keeps of a password for SCRAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The salt, base64.
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey), base64.
    pub stored_key: String,
    /// HMAC(SaltedPassword, "Server Key"), base64.
    pub server_key: String,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl ScramCredential {
    /// The credential of `password` with a fresh random salt.
    pub fn new(password: &[u8]) -> Self {
        let mut salt = [0u8; 16];
        use argon2::password_hash::rand_core::RngCore;
        argon2::password_hash::rand_core::OsRng.fill_bytes(&mut salt);
        Self::with_salt(password, &salt, ITERATIONS)
    }

    /// The credential of `password` with this salt and iteration count.
    pub fn with_salt(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        Self {
            salt: B64.encode(salt),
            iterations,
            stored_key: B64.encode(stored_key),
            server_key: B64.encode(server_key),
        }
    }
}

/// Why an exchange failed; the client gets CONNACK 0x87 (or 0x86 for an unknown user).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding or an authorization identity, which the node does not support.
    #[error("SCRAM channel binding and authorization identities are not supported")]
    Unsupported,
    /// No such user, or no SCRAM credential for it.
    #[error("unknown user")]
    UnknownUser,
    /// The proof does not match: the wrong password.
    #[error("wrong proof")]
    WrongProof,
}

/// The server half of one exchange, between the two client messages.
#[derive(Debug)]
pub struct ScramServer {
    username: String,
    credential: ScramCredential,
    nonce: String,
    auth_message_start: String,
}

/// Splits `k=v` attributes of a SCRAM message.
fn attribute(part: &str, key: char) -> Option<&str> {
    part.strip_prefix(key)?.strip_prefix('=')
}

impl ScramServer {
    /// Takes the client's first message (`n,,n=<user>,r=<nonce>`), looks the user up, and returns the
    /// exchange and the server's first message. `server_nonce` must be random (printable, no comma).
    ///
    /// # Errors
    /// A malformed message, channel binding, an unknown user.
    pub fn start(
        client_first: &[u8],
        server_nonce: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let bare = match text.strip_prefix("n,") {
            Some(rest) => rest.strip_prefix(',').ok_or(ScramError::Unsupported)?,
            None if text.starts_with("y,") || text.starts_with("p=") => return Err(ScramError::Unsupported),
            None => return Err(ScramError::Malformed("no GS2 header")),
        };
        let mut parts = bare.split(',');
        let user =
            parts.next().and_then(|p| attribute(p, 'n')).ok_or(ScramError::Malformed("no user name"))?;
        let client_nonce =
            parts.next().and_then(|p| attribute(p, 'r')).ok_or(ScramError::Malformed("no nonce"))?;
        if client_nonce.is_empty() || user.is_empty() {
            return Err(ScramError::Malformed("empty user name or nonce"));
        }
        let username = user.replace("=2C", ",").replace("=3D", "=");
        let credential = lookup(&username).ok_or(ScramError::UnknownUser)?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", credential.salt, credential.iterations);
        let auth_message_start = format!("{bare},{server_first}");
        Ok((Self { username, credential, nonce, auth_message_start }, server_first.into_bytes()))
    }

    /// Takes the client's final message (`c=biws,r=<nonce>,p=<proof>`) and, if the proof is right,
    /// returns the user name and the server's final message (`v=<signature>`).
    ///
    /// # Errors
    /// A malformed message, a nonce or channel binding that does not match, a wrong proof.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding =
            parts.next().and_then(|p| attribute(p, 'c')).ok_or(ScramError::Malformed("no binding"))?;
        if binding != "biws" {
            return Err(ScramError::Unsupported);
        }
        let nonce = parts.next().and_then(|p| attribute(p, 'r')).ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::WrongProof);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let stored_key = B64.decode(&self.credential.stored_key).map_err(|_| ScramError::UnknownUser)?;
        let server_key = B64.decode(&self.credential.server_key).map_err(|_| ScramError::UnknownUser)?;
        if proof.len() != 32 || stored_key.len() != 32 {
            return Err(ScramError::WrongProof);
        }
        let auth_message = format!("{},{without_proof}", self.auth_message_start);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let computed: [u8; 32] = Sha256::digest(&client_key).into();
        if !bool::from(computed.ct_eq(&stored_key[..])) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok((self.username, format!("v={}", B64.encode(server_signature)).into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677 §3.
    #[test]
    fn the_rfc_7677_example_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = ScramCredential::with_salt(b"pencil", &salt, 4096);
        let client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (server, server_first) =
            ScramServer::start(client_first, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", |u| {
                (u == "user").then(|| credential.clone())
            })
            .unwrap();
        assert_eq!(
            String::from_utf8(server_first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let (user, server_final) = server.finish(client_final).unwrap();
        assert_eq!(user, "user");
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_wrong_proof_an_unknown_user_and_channel_binding_are_refused() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = ScramCredential::with_salt(b"not pencil", &salt, 4096);
        let (server, _) =
            ScramServer::start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", |_| {
                Some(credential.clone())
            })
            .unwrap();
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(server.finish(client_final).unwrap_err(), ScramError::WrongProof);
        let unknown = ScramServer::start(b"n,,n=who,r=abc", "x", |_| None).unwrap_err();
        assert_eq!(unknown, ScramError::UnknownUser);
        let bound = ScramServer::start(b"p=tls-unique,,n=user,r=abc", "x", |_| Some(credential.clone()));
        assert_eq!(bound.unwrap_err(), ScramError::Unsupported);
        for garbage in [&b""[..], b"n,,", b"n,,r=abc", b"\xff\xfe", b"n,,n=,r="] {
            assert!(
                matches!(ScramServer::start(garbage, "x", |_| None), Err(ScramError::Malformed(_))),
                "{garbage:?}"
            );
        }
    }
}
