//! MQTT 5 enhanced authentication with SCRAM-SHA-256 against a registered device: the client side of
//! RFC 5802 is computed here from the password (PBKDF2, HMAC, SHA-256), independently of the node's
//! implementation, and both sides prove themselves.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use m2m_access::{NewDevice, Registry};
use m2m_broker::Config;
use m2m_codec::{Auth, AuthProperties, Packet, ProtocolVersion, QoS, ReasonCode};
use m2m_store::{Store, StoreConfig};
use m2m_test::{pid, raw_publish, v5_connect, RawClient, TempDir, TestBroker};
use sha2::{Digest, Sha256};

const METHOD: &str = "SCRAM-SHA-256";

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn auth_data(p: &Option<Packet>) -> String {
    let data = match p {
        Some(Packet::Auth(a)) => a.properties.authentication_data.clone(),
        Some(Packet::ConnAck(a)) => a.properties.authentication_data.clone(),
        other => panic!("expected AUTH or CONNACK, got {other:?}"),
    };
    String::from_utf8(data.unwrap().to_vec()).unwrap()
}

/// Runs the exchange as `user` with `password`; returns the client and the CONNACK's reason code.
async fn scram_login(broker: &TestBroker, user: &str, password: &str) -> (RawClient, ReasonCode) {
    let mut client = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let mut connect = v5_connect(&format!("{user}-scram"));
    connect.properties.authentication_method = Some(Arc::from(METHOD));
    connect.properties.authentication_data = Some(Bytes::from(format!("n,,{bare}")));
    client.send(&Packet::Connect(Box::new(connect))).await;
    let first = client.recv().await;
    if let Some(Packet::ConnAck(a)) = &first {
        return (client, a.reason_code);
    }
    let server_first = auth_data(&first);
    let mut attrs = server_first.split(',');
    let nonce = attrs.next().unwrap().strip_prefix("r=").unwrap().to_owned();
    let salt = B64.decode(attrs.next().unwrap().strip_prefix("s=").unwrap()).unwrap();
    let iterations: u32 = attrs.next().unwrap().strip_prefix("i=").unwrap().parse().unwrap();
    assert!(
        nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL") && nonce.len() > 24,
        "the server adds its own nonce"
    );
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    let final_message = format!("{without_proof},p={}", B64.encode(proof));
    client
        .send(&Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some(Arc::from(METHOD)),
                authentication_data: Some(Bytes::from(final_message)),
                ..Default::default()
            },
        }))
        .await;
    let answer = client.recv().await;
    let Some(Packet::ConnAck(ack)) = &answer else { panic!("expected CONNACK, got {answer:?}") };
    if ack.reason_code == ReasonCode::SUCCESS {
        // The node proves it knows the credential too.
        let server_key = hmac(&salted, b"Server Key");
        let expected = format!("v={}", B64.encode(hmac(&server_key, auth_message.as_bytes())));
        assert_eq!(auth_data(&answer), expected);
    }
    (client, ack.reason_code)
}

#[tokio::test]
async fn a_device_authenticates_with_scram_sha_256_and_gets_its_rules() {
    let dir = TempDir::new("scram");
    {
        let (store, _) = Store::open(StoreConfig::new(dir.path().join("store"))).unwrap();
        let mut registry = Registry::open(Some(store), Vec::new()).unwrap();
        let device = NewDevice {
            id: "valve-2".into(),
            password: Some("s3cret".into()),
            rules: vec!["allow publish valves/%u/#".into()],
            ..NewDevice::default()
        };
        registry.add_device(device, 0).unwrap();
    }
    let mut config = Config::for_tests();
    config.store = Some(StoreConfig::new(dir.path().join("store")));
    let broker = TestBroker::start_with(config).await;

    let (mut client, code) = scram_login(&broker, "valve-2", "s3cret").await;
    assert_eq!(code, ReasonCode::SUCCESS);
    client.send(&Packet::Publish(raw_publish("valves/valve-2/open", QoS::AtLeastOnce, Some(1), b"1"))).await;
    assert_eq!(client.recv().await, Some(Packet::PubAck(m2m_codec::Ack::new(pid(1)))));
    client.send(&Packet::Publish(raw_publish("valves/valve-3/open", QoS::AtLeastOnce, Some(2), b"1"))).await;
    let Some(Packet::PubAck(a)) = client.recv().await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "the device's own rules apply");

    assert_eq!(scram_login(&broker, "valve-2", "wrong").await.1, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(scram_login(&broker, "nobody", "s3cret").await.1, ReasonCode::NOT_AUTHORIZED);
    broker.stop().await;
}
