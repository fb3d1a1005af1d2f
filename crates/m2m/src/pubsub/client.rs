//! The MQTT client of `m2m pub` and `m2m sub`: where the broker is, the transport (TCP, TLS,
//! WebSocket, WebSocket over TLS), the CONNECT handshake, and one connection that reads and writes
//! packets of `m2m-codec` and keeps itself alive.
//!
//! It does not keep session state beyond one connection's packet identifiers, and does not
//! reconnect: a tool that loses its broker says so and exits.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use m2m_codec::{decode, encode, ConnAck, Connect, Packet, PacketId, ProtocolVersion};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::Failure;

/// The largest packet taken from the broker.
const MAX_PACKET: usize = 256 * 1024 * 1024;
/// Opening the connection (TCP, TLS, WebSocket, CONNECT/CONNACK) must take less than this.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `mqtt://`: plain TCP.
    Tcp,
    /// `mqtts://`: TLS.
    Tls,
    /// `ws://`: WebSocket.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
}

impl Scheme {
    fn tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 1883,
            Scheme::Tls => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) scheme: Scheme,
    /// A host name or an IP address (an IPv6 address without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The HTTP path of a WebSocket (`/mqtt` unless the URL gives one).
    pub(crate) path: String,
    /// `user[:password]@` from the URL.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl Endpoint {
    /// An endpoint from host and port options; `tls` picks `mqtts` (and its default port 8883).
    pub(crate) fn from_host(host: &str, port: Option<u16>, tls: bool) -> Endpoint {
        let scheme = if tls { Scheme::Tls } else { Scheme::Tcp };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Endpoint {
            scheme,
            host: host.to_owned(),
            port: port.unwrap_or(scheme.default_port()),
            path: "/mqtt".to_owned(),
            username: None,
            password: None,
        }
    }

    /// Parses `mqtt://`, `mqtts://`, `ws://` or `wss://` `[user[:password]@]host[:port][/path]`.
    /// The path is the WebSocket's (default `/mqtt`); `mqtt` and `mqtts` take none.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url.split_once("://").ok_or("expected SCHEME://HOST[:PORT]")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Tcp,
            "mqtts" | "ssl" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return Err(format!("unknown scheme {scheme:?}: use mqtt, mqtts, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, hostport)) => (Some(user), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(percent_decode(p)?)),
                    None => (info, None),
                };
                (Some(percent_decode(user)?), password)
            }
        };
        let (host, port) = match hostport.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
                if host.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err("not an IPv6 address between [ and ]".to_owned());
                }
                match after {
                    "" => (host, None),
                    _ => (host, Some(after.strip_prefix(':').ok_or("expected :PORT after ]")?)),
                }
            }
            None => match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            },
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("no host".to_owned());
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("the port {p:?} is not a number from 1 to 65535")),
            },
        };
        let path = if scheme.websocket() {
            if path.is_empty() {
                "/mqtt".to_owned()
            } else {
                path.to_owned()
            }
        } else if path.is_empty() || path == "/" {
            "/mqtt".to_owned()
        } else {
            return Err(format!("a path ({path}) is only for ws:// and wss://"));
        };
        Ok(Endpoint { scheme, host: host.to_owned(), port, path, username, password })
    }

    fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Tcp => "mqtt",
            Scheme::Tls => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.scheme.websocket() {
            format!("{scheme}://{host}:{}{}", self.port, self.path)
        } else {
            format!("{scheme}://{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// `%XX` escapes in the user information of a URL.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a % in the URL is not followed by two hex digits")?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| "a % in the URL is not followed by two hex digits")?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user information of the URL is not UTF-8".to_owned())
}

/// TLS settings from the command line.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    /// Trust only the authorities in this PEM file (else the public web roots built in).
    pub(crate) cafile: Option<PathBuf>,
    /// A client certificate chain (PEM) and its key, for brokers that want one (mutual TLS).
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// Accept a server certificate whose names do not include the host. The chain is still verified.
    pub(crate) insecure: bool,
}

/// Builds the TLS client for `host`. The errors are the user's (files, names): exit code 1 or 2.
pub(crate) fn tls_connector(
    host: &str,
    settings: &TlsSettings,
) -> Result<(TlsConnector, ServerName<'static>), Failure> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.cafile {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| Failure::error(format!("cannot read the CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Failure::error(format!("no certificate in the CA file {}", path.display())));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    Failure::error(format!("a certificate in {} is not usable: {e}", path.display()))
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::error(format!("TLS: {e}")))?;
    let builder = if settings.insecure {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Failure::error(format!("TLS: {e}")))?;
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    Failure::error(format!("cannot read the certificate {}: {e}", cert.display()))
                })?;
            if chain.is_empty() {
                return Err(Failure::error(format!("no certificate in {}", cert.display())));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Failure::error(format!("cannot read the private key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Failure::error(format!("the client certificate and key do not fit: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(Failure::usage("--cert and --key go together")),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Failure::usage(format!("{host:?} is not a valid TLS server name")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// `--insecure`: the server's chain must lead to a trusted authority, as always, but its names need
/// not include the host we connected to (a broker reached by an address its certificate does not
/// list). rustls checks the name only after the chain, so a `NotValidForName` error means that the
/// chain was verified.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A byte stream to the broker.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens the transport to `endpoint`. Failures are network failures (exit code 3).
async fn open(
    endpoint: &Endpoint,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> Result<Box<dyn Io>, Failure> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| Failure::network(format!("cannot connect to {endpoint}: {e}")))?;
    // Packets are written whole: Nagle would only delay them.
    tcp.set_nodelay(true).map_err(|e| Failure::network(format!("cannot set TCP_NODELAY: {e}")))?;
    let stream: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some((connector, name)) => Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| Failure::network(format!("TLS handshake with {endpoint} failed: {e}")))?,
        ),
    };
    if !endpoint.scheme.websocket() {
        return Ok(stream);
    }
    let mut request = endpoint
        .url()
        .into_client_request()
        .map_err(|e| Failure::usage(format!("invalid WebSocket URL {endpoint}: {e}")))?;
    // MQTT 5.0 §6: the client offers the subprotocol `mqtt`.
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| Failure::network(format!("WebSocket handshake with {endpoint} failed: {e}")))?;
    let (near, far) = tokio::io::duplex(64 * 1024);
    tokio::spawn(bridge(ws, far));
    Ok(Box::new(near))
}

/// Carries bytes between the client's end of a duplex pipe and the WebSocket, as Binary messages
/// (MQTT 5.0 §6: packets need not align with messages). Ends, closing the pipe, when either side does.
async fn bridge(ws: tokio_tungstenite::WebSocketStream<Box<dyn Io>>, far: tokio::io::DuplexStream) {
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(far);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.close().await;
                    return;
                }
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if sink.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if wr.write_all(&data).await.is_err() => return,
                Message::Binary(_) => {}
                Message::Close(_) => return,
                // tungstenite answers pings by itself; text is not MQTT.
                _ => {}
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// One connection to the broker: packets in and out, PINGREQ when quiet.
pub(crate) struct Client {
    stream: Box<dyn Io>,
    version: ProtocolVersion,
    read_buf: BytesMut,
    /// Encoded packets not yet written; kept across cancellation (see [`Client::flush`]).
    write_buf: BytesMut,
    keep_alive: Option<Duration>,
    /// When the last packet went out: a PINGREQ goes out a keep-alive after it.
    last_sent: Instant,
    /// A PINGREQ waits for its PINGRESP since then.
    ping_sent: Option<Instant>,
    next_id: u16,
    /// `-d`: every packet sent and received is described on standard error.
    debug: bool,
}

impl Client {
    /// Opens the transport, sends `connect` and waits for the CONNACK.
    ///
    /// # Errors
    /// A network failure (exit code 3) or a refusal, with the CONNACK's reason (exit code 4).
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        tls: &TlsSettings,
        connect: Connect,
        debug: bool,
    ) -> Result<(Client, ConnAck), Failure> {
        let connector = if endpoint.scheme.tls() { Some(tls_connector(&endpoint.host, tls)?) } else { None };
        let keep_alive = (connect.keep_alive > 0).then(|| Duration::from_secs(connect.keep_alive.into()));
        let version = connect.protocol;
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let stream = open(endpoint, connector.as_ref()).await?;
            let mut client = Client {
                stream,
                version,
                read_buf: BytesMut::with_capacity(8 * 1024),
                write_buf: BytesMut::new(),
                keep_alive,
                last_sent: Instant::now(),
                ping_sent: None,
                next_id: 0,
                debug,
            };
            client.send(&Packet::Connect(Box::new(connect))).await?;
            match client.read_packet().await? {
                Some(Packet::ConnAck(ack)) => Ok((client, ack)),
                Some(other) => {
                    Err(Failure::error(format!("expected CONNACK, {endpoint} sent {}", other.name())))
                }
                None => Err(Failure::network(format!("{endpoint} closed the connection before CONNACK"))),
            }
        })
        .await
        .map_err(|_| {
            Failure::network(format!("no connection to {endpoint} within {} s", CONNECT_TIMEOUT.as_secs()))
        })??;
        let (mut client, ack) = opened;
        // MQTT 5.0 §3.2.2.3.14: the broker's Server Keep Alive replaces the one asked for.
        if let Some(seconds) = ack.properties.server_keep_alive {
            client.keep_alive = (seconds > 0).then(|| Duration::from_secs(seconds.into()));
        }
        if ack.reason_code.is_error() {
            let mut message = format!("{endpoint} refused the connection: {}", ack.reason_code);
            if let Some(reason) = &ack.properties.reason_string {
                message.push_str(&format!(": {reason}"));
            }
            return Err(Failure::refused(message));
        }
        Ok((client, ack))
    }

    /// The protocol version of the connection.
    pub(crate) fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// A packet identifier not used by this connection recently.
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        PacketId::new(self.next_id).unwrap_or(PacketId::MIN)
    }

    /// Encodes `packet` and writes it with what was left unwritten before.
    ///
    /// # Cancel safety
    /// The packet is encoded at once; if the write is cancelled, the rest goes out with the next
    /// `send`. The stream never holds half a packet followed by another.
    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), Failure> {
        encode(packet, self.version, &mut self.write_buf)
            .map_err(|e| Failure::error(format!("cannot encode {}: {e}", packet.name())))?;
        if self.debug {
            eprintln!("sent {}", describe(packet));
        }
        self.last_sent = Instant::now();
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        let lost = |e: std::io::Error| Failure::network(format!("connection to the broker lost: {e}"));
        while !self.write_buf.is_empty() {
            if self.stream.write_buf(&mut self.write_buf).await.map_err(lost)? == 0 {
                return Err(Failure::network("connection to the broker lost: nothing written"));
            }
        }
        self.stream.flush().await.map_err(lost)
    }

    /// Reads one packet; `Ok(None)` when the broker closed the connection between packets.
    ///
    /// # Cancel safety
    /// Safe: partial input stays in the read buffer.
    async fn read_packet(&mut self) -> Result<Option<Packet>, Failure> {
        loop {
            match decode(&mut self.read_buf, self.version, MAX_PACKET) {
                Ok(Some(packet)) => {
                    if self.debug {
                        eprintln!("received {}", describe(&packet));
                    }
                    return Ok(Some(packet));
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::error(format!("malformed packet from the broker: {e}"))),
            }
            let n = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| Failure::network(format!("connection to the broker lost: {e}")))?;
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Failure::network("the broker closed the connection in the middle of a packet"))
                };
            }
        }
    }

    /// The next packet from the broker other than PINGRESP, sending PINGREQs while the connection
    /// is quiet. A closed connection, a missing PINGRESP or a DISCONNECT from the broker is an error.
    ///
    /// # Cancel safety
    /// Safe: see [`Client::send`] and [`Client::read_packet`].
    pub(crate) async fn next(&mut self) -> Result<Packet, Failure> {
        loop {
            let deadline = self.keep_alive.map(|k| match self.ping_sent {
                Some(sent) => sent + k,
                None => self.last_sent + k,
            });
            let packet = tokio::select! {
                read = self.read_packet() => read?,
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if self.ping_sent.is_some() {
                        return Err(Failure::network("the broker did not answer PINGREQ: connection lost"));
                    }
                    self.ping_sent = Some(Instant::now());
                    self.send(&Packet::PingReq).await?;
                    continue;
                }
            };
            match packet {
                None => return Err(Failure::network("the broker closed the connection")),
                Some(Packet::PingResp) => self.ping_sent = None,
                Some(Packet::Disconnect(d)) => {
                    let mut message = format!("the broker disconnected: {}", d.reason_code);
                    if let Some(reason) = &d.properties.reason_string {
                        message.push_str(&format!(": {reason}"));
                    }
                    return Err(Failure::error(message));
                }
                Some(packet) => return Ok(packet),
            }
        }
    }

    /// Sends DISCONNECT (normal: the will is not published) and closes the connection.
    pub(crate) async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }
}

/// A packet for `-d`: its name and what tells it apart.
fn describe(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!(
            "CONNECT (client id {:?}, clean start {}, keep alive {})",
            c.client_id, c.clean_start, c.keep_alive
        ),
        Packet::ConnAck(a) => {
            format!("CONNACK ({}, session present {})", a.reason_code, a.session_present)
        }
        Packet::Publish(p) => format!(
            "PUBLISH (topic {:?}, qos {}, retain {}, id {}, {} bytes)",
            p.topic,
            p.qos as u8,
            p.retain,
            p.packet_id.map_or(0, |id| id.get()),
            p.payload.len()
        ),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            format!("{} (id {}, {})", packet.name(), a.packet_id, a.reason_code)
        }
        Packet::SubAck(a) => {
            let codes: Vec<String> = a.reason_codes.iter().map(ToString::to_string).collect();
            format!("SUBACK (id {}, {})", a.packet_id, codes.join(", "))
        }
        Packet::Disconnect(d) => format!("DISCONNECT ({})", d.reason_code),
        other => other.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_scheme_host_port_path_and_credentials() {
        let e = Endpoint::parse("mqtt://broker.example").unwrap();
        assert_eq!((e.scheme, e.host.as_str(), e.port), (Scheme::Tcp, "broker.example", 1883));
        let e = Endpoint::parse("mqtts://u:p%40ss@[::1]:8884").unwrap();
        assert_eq!((e.scheme, e.host.as_str(), e.port), (Scheme::Tls, "::1", 8884));
        assert_eq!((e.username.as_deref(), e.password.as_deref()), (Some("u"), Some("p@ss")));
        let e = Endpoint::parse("ws://127.0.0.1:9001").unwrap();
        assert_eq!((e.scheme, e.port, e.path.as_str()), (Scheme::Ws, 9001, "/mqtt"));
        assert_eq!(e.to_string(), "ws://127.0.0.1:9001/mqtt");
        let e = Endpoint::parse("WSS://h/ws/mqtt").unwrap();
        assert_eq!((e.scheme, e.port, e.path.as_str()), (Scheme::Wss, 443, "/ws/mqtt"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(Endpoint::parse("broker:1883").unwrap_err().contains("SCHEME://"));
        assert!(Endpoint::parse("http://h").unwrap_err().contains("unknown scheme"));
        assert!(Endpoint::parse("mqtt://h:0").unwrap_err().contains("port"));
        assert!(Endpoint::parse("mqtt://h:x").unwrap_err().contains("port"));
        assert!(Endpoint::parse("mqtt://h/topic").unwrap_err().contains("only for ws"));
        assert!(Endpoint::parse("mqtt://:1883").unwrap_err().contains("no host"));
        assert!(Endpoint::parse("mqtt://[nope]").unwrap_err().contains("IPv6"));
    }
}
