//! JSON Web Tokens as passwords: HS256 tokens made here, RS256 tokens signed by the `openssl` command
//! (an independent signer), checked by a running node; the token's rules apply to the connection.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use m2m_access::{JwtConfig, JwtKey};
use m2m_broker::Config;
use m2m_codec::{Packet, QoS, ReasonCode};
use m2m_test::{pid, raw_connect, raw_publish, v5_connect, TempDir, TestBroker};
use sha2::Sha256;

fn now() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now()) / 1000
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    let signed =
        format!("{}.{}", B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#), B64URL.encode(claims.to_string()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

async fn node(key: JwtKey) -> TestBroker {
    let mut config = Config::for_tests();
    config.jwt = Some(JwtConfig {
        key,
        username_claim: "sub".into(),
        client_id_claim: None,
        rules_claim: Some("acl".into()),
    });
    TestBroker::start_with(config).await
}

/// CONNECTs with `token` as the password of `user`; the CONNACK's code and the client.
async fn login(broker: &TestBroker, user: &str, token: &str) -> (m2m_test::RawClient, ReasonCode) {
    let mut c = v5_connect(&format!("{user}-client"));
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(token.as_bytes()));
    let (client, ack) = raw_connect(broker.addr, c).await;
    (client, ack.reason_code)
}

#[tokio::test]
async fn an_hs256_token_logs_in_and_its_rules_apply() {
    let broker = node(JwtKey::Hs256(b"fleet-secret".to_vec())).await;
    let claims = serde_json::json!({"sub": "cam-1", "exp": now() + 600, "acl": ["allow publish cams/%u/#"]});
    let (mut cam, code) = login(&broker, "cam-1", &hs256(&claims, b"fleet-secret")).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    cam.send(&Packet::Publish(raw_publish("cams/cam-1/frame", QoS::AtLeastOnce, Some(1), b"x"))).await;
    assert_eq!(cam.recv().await, Some(Packet::PubAck(m2m_codec::Ack::new(pid(1)))));
    // The token's rules decide nothing here; with no registry the node lets it through.
    cam.send(&Packet::Publish(raw_publish("elsewhere", QoS::AtLeastOnce, Some(2), b"x"))).await;
    assert_eq!(cam.recv().await, Some(Packet::PubAck(m2m_codec::Ack::new(pid(2)))));

    let deny = serde_json::json!({"sub": "cam-2", "acl": ["allow publish cams/%u/#", "deny publish #"]});
    let (mut cam2, code) = login(&broker, "cam-2", &hs256(&deny, b"fleet-secret")).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    cam2.send(&Packet::Publish(raw_publish("cams/cam-1/frame", QoS::AtLeastOnce, Some(3), b"x"))).await;
    let Some(Packet::PubAck(a)) = cam2.recv().await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);

    let expired = serde_json::json!({"sub": "cam-1", "exp": now() - 1});
    assert_eq!(
        login(&broker, "cam-1", &hs256(&expired, b"fleet-secret")).await.1,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(
        login(&broker, "cam-1", &hs256(&claims, b"guessed")).await.1,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(login(&broker, "cam-1", "not-a-token").await.1, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    broker.stop().await;
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (the test command installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn an_rs256_token_signed_by_openssl_logs_in() {
    let dir = TempDir::new("jwt-rs256");
    openssl(
        dir.path(),
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"],
    );
    openssl(dir.path(), &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    let public = std::fs::read_to_string(dir.path().join("pub.pem")).unwrap();
    let broker = node(JwtKey::rs256_from_pem(&public).unwrap()).await;
    let claims = serde_json::json!({"sub": "truck-4", "exp": now() + 600});
    let signed =
        format!("{}.{}", B64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#), B64URL.encode(claims.to_string()));
    std::fs::write(dir.path().join("signed.txt"), &signed).unwrap();
    let signature = openssl(dir.path(), &["dgst", "-sha256", "-sign", "key.pem", "signed.txt"]);
    let token = format!("{signed}.{}", B64URL.encode(&signature));
    assert_eq!(login(&broker, "truck-4", &token).await.1, ReasonCode::SUCCESS);
    // Another claim under the same signature: refused.
    let forged_claims = serde_json::json!({"sub": "truck-5", "exp": now() + 600});
    let forged = format!(
        "{}.{}.{}",
        B64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        B64URL.encode(forged_claims.to_string()),
        B64URL.encode(&signature)
    );
    assert_eq!(login(&broker, "truck-5", &forged).await.1, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // An HS256 token "signed" with the public key as secret (the classic confusion): refused.
    let confused = hs256(&claims, public.as_bytes());
    assert_eq!(login(&broker, "truck-4", &confused).await.1, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    broker.stop().await;
}
