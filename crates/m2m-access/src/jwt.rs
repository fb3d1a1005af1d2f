//! JSON Web Tokens as MQTT passwords: HS256 (a shared secret) or RS256 (an RSA public key), with the
//! username, optionally the client id, and optionally access rules taken from the claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::Rule;

/// The key tokens are verified with.
#[derive(Clone)]
pub enum JwtKey {
    /// HMAC-SHA256 with a shared secret.
    Hs256(Vec<u8>),
    /// RSA PKCS#1 v1.5 with SHA-256: the public key as DER `RSAPublicKey`.
    Rs256(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtKey::Hs256(_) => "JwtKey::Hs256(..)",
            JwtKey::Rs256(_) => "JwtKey::Rs256(..)",
        })
    }
}

impl JwtKey {
    /// An RS256 key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block.
    ///
    /// # Errors
    /// Not PEM, not a public key, not RSA.
    pub fn rs256_from_pem(pem: &str) -> Result<Self, JwtError> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| JwtError::Key("not a PEM `PUBLIC KEY` block".into()))?;
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
            .map_err(|e| JwtError::Key(format!("not a public key: {e}")))?;
        if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return Err(JwtError::Key("not an RSA public key".into()));
        }
        Ok(JwtKey::Rs256(spki.subject_public_key.data.to_vec()))
    }
}

/// How tokens are checked and what their claims mean.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The key.
    pub key: JwtKey,
    /// The claim holding the username (e.g. `sub`).
    pub username_claim: String,
    /// A claim that must equal the client id, if set.
    pub client_id_claim: Option<String>,
    /// A claim holding access rules (an array of rule lines), if set; they apply before every other.
    pub rules_claim: Option<String>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The username.
    pub username: String,
    /// Rules from the token (empty without a rules claim).
    pub rules: Vec<Rule>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names another algorithm than the configured key's (or `none`).
    #[error("token algorithm {0:?} is not the configured one")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("bad token signature")]
    Signature,
    /// `exp` has passed or `nbf` has not come.
    #[error("token expired or not yet valid")]
    Time,
    /// A claim is missing, of the wrong type, or does not match.
    #[error("token claim {0:?} is missing or does not match")]
    Claim(String),
    /// A rule in the rules claim does not parse.
    #[error("token rule {0:?} does not parse")]
    Rule(String),
    /// The configured key is unusable.
    #[error("JWT key: {0}")]
    Key(String),
}

fn part(p: &str) -> Result<Vec<u8>, JwtError> {
    B64URL.decode(p).map_err(|_| JwtError::Malformed("a part is not base64url"))
}

/// Verifies `token` for a client with `client_id` at `now_secs` (unix seconds).
///
/// # Errors
/// See [`JwtError`].
pub fn verify(
    token: &str,
    config: &JwtConfig,
    client_id: &str,
    now_secs: u64,
) -> Result<JwtIdentity, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("not three parts"));
    };
    let header: serde_json::Value =
        serde_json::from_slice(&part(h)?).map_err(|_| JwtError::Malformed("the header is not JSON"))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
    let signature = part(s)?;
    match (&config.key, alg) {
        (JwtKey::Hs256(secret), "HS256") => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
                .map_err(|_| JwtError::Key("empty secret".into()))?;
            mac.update(signed);
            let expected = mac.finalize().into_bytes();
            if !bool::from(expected.as_slice().ct_eq(&signature)) {
                return Err(JwtError::Signature);
            }
        }
        (JwtKey::Rs256(public), "RS256") => {
            let key =
                ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public);
            key.verify(signed, &signature).map_err(|_| JwtError::Signature)?;
        }
        _ => return Err(JwtError::Algorithm(alg.to_owned())),
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&part(c)?).map_err(|_| JwtError::Malformed("the claims are not JSON"))?;
    if claims.get("exp").and_then(|e| e.as_u64()).is_some_and(|exp| exp <= now_secs)
        || claims.get("nbf").and_then(|n| n.as_u64()).is_some_and(|nbf| nbf > now_secs)
    {
        return Err(JwtError::Time);
    }
    let claim = |name: &str| claims.get(name).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
    let username =
        claim(&config.username_claim).ok_or_else(|| JwtError::Claim(config.username_claim.clone()))?;
    if let Some(name) = &config.client_id_claim {
        if claim(name) != Some(client_id) {
            return Err(JwtError::Claim(name.clone()));
        }
    }
    let mut rules = Vec::new();
    if let Some(name) = &config.rules_claim {
        if let Some(list) = claims.get(name) {
            let list = list.as_array().ok_or_else(|| JwtError::Claim(name.clone()))?;
            for line in list {
                let line = line.as_str().ok_or_else(|| JwtError::Claim(name.clone()))?;
                rules.push(line.parse().map_err(|_| JwtError::Rule(line.to_owned()))?);
            }
        }
    }
    Ok(JwtIdentity { username: username.to_owned(), rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(claims: &str, secret: &[u8]) -> String {
        let head = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = B64URL.encode(claims);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", B64URL.encode(mac.finalize().into_bytes()))
    }

    fn config() -> JwtConfig {
        JwtConfig {
            key: JwtKey::Hs256(b"s3cret".to_vec()),
            username_claim: "sub".into(),
            client_id_claim: Some("cid".into()),
            rules_claim: Some("acl".into()),
        }
    }

    #[test]
    fn a_valid_hs256_token_gives_its_username_and_rules() {
        let token = hs256(
            r#"{"sub":"cam-1","cid":"cam-1-client","exp":2000,"acl":["allow publish cams/%u/#"]}"#,
            b"s3cret",
        );
        let id = verify(&token, &config(), "cam-1-client", 1000).unwrap();
        assert_eq!(id.username, "cam-1");
        assert_eq!(id.rules, vec!["allow publish cams/%u/#".parse::<Rule>().unwrap()]);
    }

    #[test]
    fn bad_tokens_are_refused_for_what_is_wrong() {
        let cfg = config();
        let ok = r#"{"sub":"cam-1","cid":"c","exp":2000}"#;
        assert_eq!(verify(&hs256(ok, b"other"), &cfg, "c", 1000), Err(JwtError::Signature));
        assert_eq!(verify(&hs256(ok, b"s3cret"), &cfg, "c", 2000), Err(JwtError::Time));
        assert_eq!(verify(&hs256(ok, b"s3cret"), &cfg, "other", 1000), Err(JwtError::Claim("cid".into())));
        let nbf = r#"{"sub":"cam-1","cid":"c","nbf":5000}"#;
        assert_eq!(verify(&hs256(nbf, b"s3cret"), &cfg, "c", 1000), Err(JwtError::Time));
        let no_sub = r#"{"cid":"c"}"#;
        assert_eq!(verify(&hs256(no_sub, b"s3cret"), &cfg, "c", 1000), Err(JwtError::Claim("sub".into())));
        let bad_rule = r#"{"sub":"x","cid":"c","acl":["allow nothing #"]}"#;
        assert!(matches!(verify(&hs256(bad_rule, b"s3cret"), &cfg, "c", 1000), Err(JwtError::Rule(_))));
        // alg "none" (and an RS256 header for an HS256 key) is refused whatever the signature.
        let none = format!("{}.{}.", B64URL.encode(br#"{"alg":"none"}"#), B64URL.encode(ok));
        assert_eq!(verify(&none, &cfg, "c", 1000), Err(JwtError::Algorithm("none".into())));
        for garbage in ["", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(matches!(verify(garbage, &cfg, "c", 1000), Err(JwtError::Malformed(_))), "{garbage:?}");
        }
    }
}
