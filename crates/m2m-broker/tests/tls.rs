//! TLS listeners with certificates made by the test (rcgen): server-only TLS with a password, and
//! mutual TLS where the client certificate's common name is the device. Clients are `mosquitto_pub`
//! (independent) and a rustls client speaking MQTT through the project's codec (to see exact codes).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use m2m_access::{NewDevice, Registry};
use m2m_broker::{Config, Listener, TlsFiles, Transport};
use m2m_codec::{decode, encode, Packet, ProtocolVersion, QoS, ReasonCode};
use m2m_store::{Store, StoreConfig};
use m2m_test::{
    expect_raw_publish, raw_connect_ok, raw_publish, raw_subscribe, v5_connect, TempDir, TestBroker,
};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate authority that writes what it issues into a directory.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join(format!("{name}.pem")), &ca_pem).unwrap();
        Self { dir: dir.to_owned(), issuer: Issuer::new(params, key), ca_pem }
    }

    fn ca_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Issues a certificate; returns the paths of its PEM certificate and key.
    fn issue(&self, file: &str, common_name: &str, server: bool, expired: bool) -> (PathBuf, PathBuf) {
        let sans = if server { vec!["localhost".to_owned(), "127.0.0.1".to_owned()] } else { Vec::new() };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

struct Setup {
    _dir: TempDir,
    pki: Pki,
    broker: TestBroker,
    tls: SocketAddr,
    mtls: SocketAddr,
}

/// A node with a device registry (`lamp-1` with a password and its own rule, `lamp-2` disabled), a
/// server-only TLS listener and a mutual-TLS listener.
async fn setup() -> Setup {
    let dir = TempDir::new("tls");
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("server", "m2m node", true, false);
    {
        let (store, _) = Store::open(StoreConfig::new(dir.path().join("store"))).unwrap();
        let mut registry = Registry::open(Some(store), Vec::new()).unwrap();
        for (id, disabled) in [("lamp-1", false), ("lamp-2", true)] {
            let device = NewDevice {
                id: id.into(),
                password: Some("pw".into()),
                rules: vec!["allow both lamps/%u/#".into()],
                disabled,
                ..NewDevice::default()
            };
            registry.add_device(device, 0).unwrap();
        }
    }
    let files = |client_ca: Option<PathBuf>| TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        require_client_cert: client_ca.is_some(),
        client_ca,
    };
    let mut config = Config::for_tests();
    config.sys_interval = None;
    config.store = Some(StoreConfig::new(dir.path().join("store")));
    config.access_rules = vec!["allow subscribe #".parse().unwrap()];
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listeners = vec![
        Listener { addr: localhost, transport: Transport::Tls(files(None)) },
        Listener { addr: localhost, transport: Transport::Tls(files(Some(pki.ca_file("ca")))) },
    ];
    let broker = TestBroker::start_with(config).await;
    assert_eq!(broker.listeners.iter().map(|l| l.1).collect::<Vec<_>>(), ["tcp", "tls", "tls"]);
    let (tls, mtls) = (broker.listeners[1].0, broker.listeners[2].0);
    Setup { _dir: dir, pki, broker, tls, mtls }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects over TLS trusting `ca_pem`, presenting `client` (certificate and key files) if given.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<(PathBuf, PathBuf)>,
) -> std::io::Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap();
    let builder = builder.with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    // With TLS 1.3 a refused client certificate shows only at the first read.
    tls.flush().await?;
    Ok(tls)
}

/// Sends a packet and reads the answer (`None`: closed, or TLS failed).
async fn exchange(tls: &mut Tls, packet: &Packet) -> Option<Packet> {
    let mut out = BytesMut::new();
    encode(packet, ProtocolVersion::V5, &mut out).unwrap();
    tls.write_all(&out).await.ok()?;
    let mut buf = BytesMut::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(p) = decode(&mut buf, ProtocolVersion::V5, usize::MAX).unwrap() {
                return Some(p);
            }
            match tls.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("no answer within 10 s")
}

fn connect_packet(id: &str, user: Option<&str>) -> Packet {
    let mut c = v5_connect(id);
    if let Some(u) = user {
        c.username = Some(u.into());
        c.password = Some(bytes::Bytes::from_static(b"pw"));
    }
    Packet::Connect(Box::new(c))
}

fn connack_code(p: Option<Packet>) -> ReasonCode {
    match p {
        Some(Packet::ConnAck(a)) => a.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn mosquitto_pub_over_tls_with_a_password_reaches_a_tcp_subscriber() {
    let s = setup().await;
    let mut sub = raw_connect_ok(s.broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut sub, 1, &[("lamps/#", QoS::AtMostOnce)]).await;
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &s.tls.port().to_string(), "--cafile"])
        .arg(s.pki.ca_file("ca"))
        .args(["-u", "lamp-1", "-P", "pw", "-i", "lamp-1", "-t", "lamps/lamp-1/state", "-m", "on", "-q", "1"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run mosquitto_pub (the test command installs mosquitto-clients)");
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    let p = expect_raw_publish(sub.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("lamps/lamp-1/state", &b"on"[..]));
    // A wrong password over TLS is refused like over TCP.
    let mut tls = tls_connect(s.tls, &s.pki.ca_pem, None).await.unwrap();
    let mut c = v5_connect("x");
    c.username = Some("lamp-1".into());
    c.password = Some(bytes::Bytes::from_static(b"wrong"));
    let code = connack_code(exchange(&mut tls, &Packet::Connect(Box::new(c))).await);
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    s.broker.stop().await;
}

#[tokio::test]
async fn with_mutual_tls_the_certificate_is_the_device() {
    let s = setup().await;
    let lamp1 = s.pki.issue("lamp-1", "lamp-1", false, false);
    let mut tls = tls_connect(s.mtls, &s.pki.ca_pem, Some(lamp1)).await.unwrap();
    // No username or password: the certificate says who it is.
    assert_eq!(connack_code(exchange(&mut tls, &connect_packet("any-id", None)).await), ReasonCode::SUCCESS);
    let own = Packet::Publish(raw_publish("lamps/lamp-1/x", QoS::AtLeastOnce, Some(1), b"1"));
    let Some(Packet::PubAck(a)) = exchange(&mut tls, &own).await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    let other = Packet::Publish(raw_publish("lamps/lamp-9/x", QoS::AtLeastOnce, Some(2), b"1"));
    let Some(Packet::PubAck(a)) = exchange(&mut tls, &other).await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "its rules are the device's rules");

    // A valid certificate of a disabled or unknown device: CONNACK 0x87.
    for (file, cn) in [("lamp-2", "lamp-2"), ("stranger", "stranger")] {
        let cert = s.pki.issue(file, cn, false, false);
        let mut tls = tls_connect(s.mtls, &s.pki.ca_pem, Some(cert)).await.unwrap();
        assert_eq!(
            connack_code(exchange(&mut tls, &connect_packet(cn, None)).await),
            ReasonCode::NOT_AUTHORIZED
        );
    }
    s.broker.stop().await;
}

#[tokio::test]
async fn expired_foreign_or_missing_client_certificates_fail_the_handshake() {
    let s = setup().await;
    let rejected = || s.broker.metrics.connections_rejected.load(std::sync::atomic::Ordering::Relaxed);
    let expired = s.pki.issue("old", "lamp-1", false, true);
    let dir = s.pki.dir.clone();
    let other_ca = Pki::new(&dir, "other-ca");
    let foreign = other_ca.issue("foreign", "lamp-1", false, false);
    for (what, client) in [("expired", Some(expired)), ("another CA's", Some(foreign)), ("no", None)] {
        let before = rejected();
        // The handshake fails, or the first exchange does (TLS 1.3 reports it after the handshake).
        if let Ok(mut tls) = tls_connect(s.mtls, &s.pki.ca_pem, client).await {
            assert_eq!(exchange(&mut tls, &connect_packet("x", None)).await, None, "{what} certificate");
        }
        let started = std::time::Instant::now();
        while rejected() == before {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what} certificate: not counted as rejected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    s.broker.stop().await;
}
