//! MQTT over WebSocket: a byte stream over binary WebSocket messages.
//!
//! MQTT 5.0 §6 and 3.1.1 §6 carry MQTT over WebSocket (RFC 6455) as a plain byte stream in Binary
//! messages: a message may hold several MQTT packets or part of one, and the receiver must not assume
//! that packets are aligned on message boundaries. So this module turns a WebSocket back into bytes and
//! the connection code reads and writes MQTT as it does over TCP or TLS.
//!
//! - [`accept`]: the server side of the opening handshake: path check and subprotocol negotiation.
//! - [`WsStream`]: `AsyncRead + AsyncWrite` over the accepted WebSocket.
//!
//! ```text
//!  client                                  WsStream
//!  Binary [CONNECT (first 10 bytes)]  -->  poll_read: 10 bytes
//!  Binary [CONNECT (rest)][PINGREQ]   -->  poll_read: the rest, then PINGREQ
//!  Ping                               -->  (Pong queued, sent by the next read or flush)
//!                                     <--  poll_write CONNACK, poll_write PUBLISH, poll_flush:
//!  Binary [CONNACK][PUBLISH]          <--    one Binary message
//!  Close                              -->  poll_read: EOF (Ok with 0 bytes)
//! ```
//!
//! It does not time the handshake out (the caller does) nor terminate TLS (`wss://` is a WebSocket over
//! a TLS stream: accept the TLS stream first, then pass it here).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::trace;

/// Subprotocols we speak, most preferred first: `mqtt` (MQTT 3.1.1 §6 and 5.0 §6) and `mqttv3.1`,
/// which MQTT 3.1 clients offer. Names are compared exactly, as RFC 6455 §4.1 has the server answer
/// with one of the values the client sent.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Largest WebSocket message (and frame) [`accept`] takes: the broker's default MQTT Maximum Packet
/// Size (1 MiB, `Limits::max_packet_size`) plus 1 MiB for smaller packets a client batches into the
/// same message. Also the largest message [`WsStream`] sends.
/// (The node passes its own bound to [`accept_with_max_message`]; tests use this one.)
#[cfg(test)]
pub(crate) const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// Initial capacity of the WebSocket read buffer, allocated per connection: tungstenite's 128 KiB
/// default is a lot for an idle device, and larger messages grow the buffer as needed.
const READ_BUFFER: usize = 8 * 1024;

/// What went wrong on a WebSocket connection. The caller logs it and drops the connection.
///
/// [`WsStream`] reports read and write failures as [`io::Error`]s whose source is one of these.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The request was for another path; it was refused with HTTP 404.
    #[error("websocket request for path {path:?}, not {expected:?}")]
    WrongPath { path: String, expected: String },
    /// The client offered subprotocols, none of them MQTT; it was refused with HTTP 400.
    #[error("websocket client offered subprotocols {offered:?}, not `mqtt` or `mqttv3.1`")]
    NoMqttSubprotocol { offered: String },
    /// The opening handshake failed: not an HTTP upgrade request, or IO.
    #[error("websocket handshake failed")]
    Handshake(#[source] tungstenite::Error),
    /// The client sent a Text message; MQTT travels in Binary messages only. The WebSocket was
    /// closed with status 1003 (unsupported data).
    #[error("websocket client sent a text message; mqtt needs binary messages")]
    TextMessage,
    /// The client broke the WebSocket protocol, or sent a message over the size limit (the WebSocket
    /// was closed with status 1002 or 1009).
    #[error("websocket protocol error")]
    Protocol(#[source] tungstenite::Error),
    /// A write after the WebSocket was closed.
    #[error("websocket already closed")]
    Closed,
}

/// Accepts a WebSocket for MQTT on `path`, taking messages of up to [`MAX_MESSAGE`] bytes.
///
/// See [`accept_with_max_message`].
///
/// # Errors
/// As [`accept_with_max_message`].
///
/// # Cancel safety
/// Not cancel safe: a cancelled handshake leaves the stream mid-request. Drop the stream.
#[cfg(test)]
pub(crate) async fn accept<S>(stream: S, path: &str) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with_max_message(stream, path, MAX_MESSAGE).await
}

/// Accepts a WebSocket for MQTT on `path`: the server side of the opening handshake (RFC 6455 §4.2).
///
/// A request for another path is refused with HTTP 404. The subprotocol is negotiated per MQTT 5.0 §6
/// and 3.1.1 §6: a client offering `mqtt` or `mqttv3.1` (in one or several `Sec-WebSocket-Protocol`
/// headers) gets the first of those, in that order of preference, back; a client offering only other
/// subprotocols is refused with HTTP 400. A client offering no subprotocol at all is accepted and
/// answered without one, as Mosquitto and EMQX do by default: the specs require clients to offer
/// `mqtt`, but some hand-rolled and browser clients do not, and such a client still has to send a
/// valid CONNECT before it gets anywhere.
///
/// `max_message` bounds what the peer can make us buffer: an incoming message (and frame) larger than
/// that is a read error, and outgoing messages are at most that large. It should be at least the MQTT
/// Maximum Packet Size the broker accepts, or a large packet sent in one message is refused here.
///
/// # Errors
/// [`WsError::WrongPath`] and [`WsError::NoMqttSubprotocol`] after sending the refusal,
/// [`WsError::Handshake`] if the request is not a WebSocket upgrade or the stream fails.
///
/// # Cancel safety
/// Not cancel safe: a cancelled handshake leaves the stream mid-request. Drop the stream.
pub(crate) async fn accept_with_max_message<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Zero would make every write return 0 bytes written; nothing needs a limit that small.
    let max_message = max_message.max(1);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    // The callback says why it refused; tungstenite only reports the HTTP response it sent.
    let mut refusal = None;
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's `Callback` returns the error response; called once"
    )]
    let callback = |request: &Request, response: Response| {
        negotiate(request, response, path).map_err(|(error, reply)| {
            refusal = Some(error);
            reply
        })
    };
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(inner) => Ok(WsStream::new(inner, max_message)),
        Err(e) => Err(refusal.unwrap_or(WsError::Handshake(e))),
    }
}

/// Checks the request's path and picks its subprotocol: the handshake response, or why it was refused
/// and the HTTP error to send.
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's `Callback` returns the error response; called once"
)]
fn negotiate(
    request: &Request,
    mut response: Response,
    path: &str,
) -> Result<Response, (WsError, ErrorResponse)> {
    if request.uri().path() != path {
        let error = WsError::WrongPath { path: request.uri().path().to_owned(), expected: path.to_owned() };
        return Err((error, refuse(StatusCode::NOT_FOUND, "no mqtt endpoint on this path")));
    }
    let mut offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .peekable();
    if offered.peek().is_none() {
        trace!("websocket client offered no subprotocol; accepted as mqtt");
        return Ok(response);
    }
    let offered: Vec<&str> = offered.collect();
    let Some(chosen) = SUBPROTOCOLS.into_iter().find(|ours| offered.contains(ours)) else {
        let error = WsError::NoMqttSubprotocol { offered: offered.join(", ") };
        return Err((error, refuse(StatusCode::BAD_REQUEST, "mqtt needs subprotocol `mqtt` or `mqttv3.1`")));
    };
    response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
    Ok(response)
}

/// An HTTP error response with a short plain-text explanation, after which the caller drops the stream.
fn refuse(status: StatusCode, message: &'static str) -> ErrorResponse {
    let mut response = http::Response::new(Some(format!("{message}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(message.len() + 1));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A WebSocket as a byte stream: reads return the payloads of Binary messages in order, writes are
/// buffered and each flush sends them as one Binary message.
///
/// Pings are answered and a client's Close is acknowledged only while the stream is read or flushed:
/// keep a read pending, as the connection loop does, and flush after writing.
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last Binary message read; at most `max_message` bytes.
    read_buf: Bytes,
    /// The read side has ended: the client closed, reset, or broke the protocol. Reads return EOF.
    read_done: bool,
    /// Bytes written since the last flush; never more than `max_message`.
    write_buf: BytesMut,
    /// A Close frame to send (for an error found while reading, or by shutdown), until the sink takes it.
    close_frame: Option<CloseFrame>,
    /// `poll_shutdown` has queued its Close frame.
    shutting_down: bool,
    /// Largest message sent, as negotiated at [`accept`]; at least 1.
    max_message: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    fn new(inner: WebSocketStream<S>, max_message: usize) -> Self {
        Self {
            inner,
            read_buf: Bytes::new(),
            read_done: false,
            write_buf: BytesMut::new(),
            close_frame: None,
            shutting_down: false,
            max_message,
        }
    }

    /// Hands the write buffer to the sink as one Binary message (not flushed yet).
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(into_io)?;
        let payload = self.write_buf.split().freeze();
        trace!(len = payload.len(), "websocket binary message out");
        Pin::new(&mut self.inner).start_send(Message::Binary(payload)).map_err(into_io)?;
        Poll::Ready(Ok(()))
    }

    /// Hands a pending error Close frame to the sink (not flushed yet).
    fn poll_send_close_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.close_frame.is_none() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(into_io)?;
        let frame = self.close_frame.take();
        Pin::new(&mut self.inner).start_send(Message::Close(frame)).map_err(into_io)?;
        Poll::Ready(Ok(()))
    }

    /// Ends the read side after a protocol violation: queues a Close frame with `code` and tries once
    /// to send it. If the socket is not writable now, [`AsyncWrite::poll_shutdown`] sends it.
    fn fail(&mut self, cx: &mut Context<'_>, code: CloseCode, reason: &'static str) {
        self.read_done = true;
        self.close_frame = Some(CloseFrame { code, reason: reason.into() });
        if let Poll::Ready(Ok(())) = self.poll_send_close_frame(cx) {
            // Best effort: the error goes to the caller either way.
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            // Polling also writes a queued Pong or Close reply, so pings are answered while we only read.
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => {
                    trace!(len = payload.len(), "websocket binary message in");
                    this.read_buf = payload;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.fail(cx, CloseCode::Unsupported, "mqtt needs binary messages");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        WsError::TextMessage,
                    )));
                }
                Some(Ok(Message::Close(frame))) => {
                    trace!(?frame, "websocket closed by the client");
                    this.read_done = true;
                    // Best effort: send tungstenite's queued Close reply now; a later flush or shutdown
                    // sends it otherwise.
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                // A TCP close without a Close frame reads as EOF, as it does over TCP; the MQTT layer
                // still notices a close in the middle of a packet.
                None
                | Some(Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    this.read_done = true;
                }
                Some(Err(tungstenite::Error::Io(e))) => {
                    this.read_done = true;
                    return Poll::Ready(Err(e));
                }
                Some(Err(e)) => {
                    let code = match e {
                        tungstenite::Error::Capacity(_) => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    this.fail(cx, code, "");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        WsError::Protocol(e),
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Buffers `buf`; a full buffer (the `max_message` given to
    /// [`accept_with_max_message`]) is first handed on as a message, so an MQTT packet larger than
    /// that spans messages (allowed by MQTT 5.0 §6).
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_buf.len() >= this.max_message {
            ready!(this.poll_send_buffered(cx))?;
        }
        let n = buf.len().min(this.max_message - this.write_buf.len());
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    /// Sends what was written since the last flush as one Binary message, with any queued Pong.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx).map_err(into_io)
    }

    /// Flushes, sends a Close frame (status 1000, or the error status of a failed read), then shuts
    /// down the underlying stream's write side. Reading on until EOF receives the client's Close reply.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shutting_down {
            this.shutting_down = true;
            // An error status queued by a failed read takes precedence.
            this.close_frame.get_or_insert(CloseFrame { code: CloseCode::Normal, reason: "".into() });
        }
        let closed = |result: io::Result<()>| match result {
            // The client closed first: nothing more to send.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && is_closed(&e) => Ok(()),
            other => other,
        };
        closed(ready!(this.poll_send_buffered(cx)))?;
        closed(ready!(this.poll_send_close_frame(cx)))?;
        closed(ready!(Pin::new(&mut this.inner).poll_close(cx)).map_err(into_io))?;
        Pin::new(this.inner.get_mut()).poll_shutdown(cx)
    }
}

/// An IO error for a WebSocket error; IO errors pass through unchanged.
fn into_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, WsError::Closed)
        }
        tungstenite::Error::Protocol(ProtocolError::SendAfterClosing) => {
            io::Error::new(io::ErrorKind::BrokenPipe, WsError::Closed)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, WsError::Protocol(e)),
    }
}

/// Whether `e` is [`into_io`]'s error for a write after the close.
fn is_closed(e: &io::Error) -> bool {
    matches!(e.get_ref().and_then(|e| e.downcast_ref::<WsError>()), Some(WsError::Closed))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures_util::{SinkExt, StreamExt};
    use m2m_codec::{decode, Packet, ProtocolVersion};
    use m2m_test::within;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::client;

    use super::*;

    const PATH: &str = "/mqtt";

    /// CONNECT (MQTT 3.1.1 §3.1): clean session, keep-alive 60, client id `ws-1`.
    const CONNECT: [u8; 18] =
        [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'w', b's', b'-', b'1'];
    /// PINGREQ (MQTT 3.1.1 §3.12).
    const PINGREQ: [u8; 2] = [0xC0, 0x00];

    type Client = WebSocketStream<TcpStream>;
    type Server = WsStream<TcpStream>;

    /// Listens on a loopback port; the task accepts one connection and its handshake on [`PATH`].
    async fn listen(max_message: Option<usize>) -> (SocketAddr, JoinHandle<Result<Server, WsError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match max_message {
                Some(max) => accept_with_max_message(tcp, PATH, max).await,
                None => accept(tcp, PATH).await,
            }
        });
        (addr, task)
    }

    /// Opens a WebSocket to `path`, offering `protocols` (one `Sec-WebSocket-Protocol` value) if any.
    async fn connect(
        addr: SocketAddr,
        path: &str,
        protocols: Option<&str>,
    ) -> Result<(Client, client::Response), tungstenite::Error> {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(protocols) = protocols {
            request
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocols).unwrap());
        }
        let tcp = TcpStream::connect(addr).await.unwrap();
        within(tokio_tungstenite::client_async(request, tcp)).await
    }

    /// A client and server connected over subprotocol `mqtt`.
    async fn pair(max_message: Option<usize>) -> (Client, Server) {
        let (addr, task) = listen(max_message).await;
        let (client, _) = connect(addr, PATH, Some("mqtt")).await.unwrap();
        let server = within(task).await.unwrap().unwrap();
        (client, server)
    }

    /// The subprotocol a successful handshake answered with.
    async fn answered_subprotocol(protocols: Option<&str>) -> Option<String> {
        let (addr, task) = listen(None).await;
        let (_client, response) = connect(addr, PATH, protocols).await.unwrap();
        within(task).await.unwrap().unwrap();
        let answer = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL)?;
        Some(answer.to_str().unwrap().to_owned())
    }

    /// Reads until one whole MQTT packet is in `buf` and decodes it.
    async fn read_packet(server: &mut Server, buf: &mut BytesMut) -> Packet {
        loop {
            if let Some(packet) = decode(buf, ProtocolVersion::V311, MAX_MESSAGE).unwrap() {
                return packet;
            }
            assert_ne!(within(server.read_buf(buf)).await.unwrap(), 0, "eof in the middle of a packet");
        }
    }

    fn assert_connect(packet: &Packet) {
        let Packet::Connect(connect) = packet else { panic!("expected CONNECT, got {packet:?}") };
        assert_eq!((&*connect.client_id, connect.keep_alive), ("ws-1", 60));
    }

    /// The next message the client receives, failing the test if the stream ends.
    async fn next_message(client: &mut Client) -> Message {
        within(client.next()).await.expect("websocket ended").expect("websocket error")
    }

    fn close_code(message: &Message) -> Option<CloseCode> {
        match message {
            Message::Close(frame) => frame.as_ref().map(|frame| frame.code),
            other => panic!("expected Close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn handshake_offering_mqtt_is_answered_with_mqtt() {
        assert_eq!(answered_subprotocol(Some("mqtt")).await.as_deref(), Some("mqtt"));
    }

    #[tokio::test]
    async fn handshake_offering_legacy_mqttv31_is_answered_with_mqttv31() {
        assert_eq!(answered_subprotocol(Some("mqttv3.1")).await.as_deref(), Some("mqttv3.1"));
    }

    #[tokio::test]
    async fn handshake_offering_several_subprotocols_prefers_mqtt() {
        assert_eq!(answered_subprotocol(Some("wamp, mqttv3.1, mqtt")).await.as_deref(), Some("mqtt"));
    }

    #[tokio::test]
    async fn handshake_without_subprotocol_is_accepted_without_one() {
        assert_eq!(answered_subprotocol(None).await, None);
    }

    #[tokio::test]
    async fn handshake_on_another_path_is_refused_with_404() {
        let (addr, task) = listen(None).await;
        let refused = connect(addr, "/other", Some("mqtt")).await.unwrap_err();
        let tungstenite::Error::Http(response) = refused else {
            panic!("expected HTTP error, got {refused:?}")
        };
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let error = within(task).await.unwrap().err().unwrap();
        assert!(matches!(&error, WsError::WrongPath { path, .. } if path == "/other"), "{error:?}");
        assert_eq!(error.to_string(), r#"websocket request for path "/other", not "/mqtt""#);
    }

    #[tokio::test]
    async fn handshake_offering_only_other_subprotocols_is_refused_with_400() {
        let (addr, task) = listen(None).await;
        let refused = connect(addr, PATH, Some("wamp, MQTT")).await.unwrap_err();
        let tungstenite::Error::Http(response) = refused else {
            panic!("expected HTTP error, got {refused:?}")
        };
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
        assert!(body.contains("mqtt"), "{body:?}");
        let error = within(task).await.unwrap().err().unwrap();
        assert!(
            matches!(&error, WsError::NoMqttSubprotocol { offered } if offered == "wamp, MQTT"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn handshake_of_a_plain_http_request_is_an_error() {
        let (addr, task) = listen(None).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let error = within(task).await.unwrap().err().unwrap();
        assert!(matches!(error, WsError::Handshake(_)), "{error:?}");
    }

    #[tokio::test]
    async fn binary_messages_read_back_as_one_byte_stream() {
        let (mut client, mut server) = pair(None).await;
        for message in [&b"abc"[..], b"", b"defgh", b"i"] {
            client.send(Message::binary(message.to_vec())).await.unwrap();
        }
        let mut read = [0; 9];
        within(server.read_exact(&mut read)).await.unwrap();
        assert_eq!(&read, b"abcdefghi");
    }

    #[tokio::test]
    async fn connect_split_across_two_messages_decodes_at_every_split_point() {
        let (mut client, mut server) = pair(None).await;
        let mut buf = BytesMut::new();
        for split in 1..CONNECT.len() {
            client.send(Message::binary(CONNECT[..split].to_vec())).await.unwrap();
            client.send(Message::binary(CONNECT[split..].to_vec())).await.unwrap();
            assert_connect(&read_packet(&mut server, &mut buf).await);
        }
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn two_packets_in_one_message_decode_as_two() {
        let (mut client, mut server) = pair(None).await;
        client.send(Message::binary([&CONNECT[..], &PINGREQ].concat())).await.unwrap();
        let mut buf = BytesMut::new();
        assert_connect(&read_packet(&mut server, &mut buf).await);
        assert_eq!(read_packet(&mut server, &mut buf).await, Packet::PingReq);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn writes_then_flush_arrive_as_one_binary_message() {
        let (mut client, mut server) = pair(None).await;
        let connack = [0x20, 2, 0, 0];
        let pingresp = [0xD0, 0];
        server.write_all(&connack).await.unwrap();
        server.write_all(&pingresp).await.unwrap();
        server.write_all(&pingresp).await.unwrap();
        within(server.flush()).await.unwrap();
        let expected = [&connack[..], &pingresp, &pingresp].concat();
        assert_eq!(next_message(&mut client).await, Message::binary(expected));

        server.write_all(&pingresp).await.unwrap();
        within(server.flush()).await.unwrap();
        assert_eq!(next_message(&mut client).await, Message::binary(pingresp.to_vec()));
    }

    #[tokio::test]
    async fn writes_larger_than_the_message_limit_span_messages() {
        let (mut client, mut server) = pair(Some(100)).await;
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        within(server.write_all(&data)).await.unwrap();
        within(server.flush()).await.unwrap();
        let mut received = Vec::new();
        let mut sizes = Vec::new();
        while received.len() < data.len() {
            let Message::Binary(payload) = next_message(&mut client).await else { panic!("expected Binary") };
            sizes.push(payload.len());
            received.extend_from_slice(&payload);
        }
        assert_eq!((sizes, received), (vec![100, 100, 50], data));
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_a_read_error_and_closes_with_1009() {
        let (mut client, mut server) = pair(Some(100)).await;
        client.send(Message::binary(vec![0; 101])).await.unwrap();
        let error = within(server.read(&mut [0; 16])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(error.get_ref().and_then(|e| e.downcast_ref()), Some(WsError::Protocol(_))),
            "{error:?}"
        );
        assert_eq!(close_code(&next_message(&mut client).await), Some(CloseCode::Size));
    }

    #[tokio::test]
    async fn a_text_message_is_a_read_error_and_closes_with_1003() {
        let (mut client, mut server) = pair(None).await;
        client.send(Message::text("CONNECT")).await.unwrap();
        let error = within(server.read(&mut [0; 16])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(error.get_ref().and_then(|e| e.downcast_ref()), Some(WsError::TextMessage)),
            "{error:?}"
        );
        assert_eq!(close_code(&next_message(&mut client).await), Some(CloseCode::Unsupported));
        assert_eq!(within(server.read(&mut [0; 16])).await.unwrap(), 0, "reads after the error are EOF");
    }

    #[tokio::test]
    async fn client_close_reads_as_eof_and_is_acknowledged() {
        let (mut client, mut server) = pair(None).await;
        client.send(Message::binary(PINGREQ.to_vec())).await.unwrap();
        client.close(None).await.unwrap();
        let mut read = Vec::new();
        within(server.read_to_end(&mut read)).await.unwrap();
        assert_eq!(read, PINGREQ, "data before the Close is delivered, then EOF");
        assert!(matches!(next_message(&mut client).await, Message::Close(_)), "close reply");
        within(server.shutdown()).await.expect("shutdown after the client's close");
        assert!(within(client.next()).await.is_none(), "the TCP close ends the client's stream");
    }

    #[tokio::test]
    async fn a_tcp_close_without_close_frame_reads_as_eof() {
        let (client, mut server) = pair(None).await;
        drop(client);
        assert_eq!(within(server.read(&mut [0; 16])).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn ping_is_answered_while_the_server_only_reads() {
        let (mut client, mut server) = pair(None).await;
        let reader = tokio::spawn(async move {
            let mut read = [0; 2];
            server.read_exact(&mut read).await.map(|_| read)
        });
        client.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
        assert_eq!(next_message(&mut client).await, Message::Pong(Bytes::from_static(b"are you there")));
        client.send(Message::binary(PINGREQ.to_vec())).await.unwrap();
        assert_eq!(within(reader).await.unwrap().unwrap(), PINGREQ);
    }

    #[tokio::test]
    async fn shutdown_flushes_and_closes_with_1000() {
        let (mut client, mut server) = pair(None).await;
        server.write_all(&[0xE0, 0]).await.unwrap();
        within(server.shutdown()).await.unwrap();
        assert_eq!(next_message(&mut client).await, Message::binary(vec![0xE0, 0]));
        assert_eq!(close_code(&next_message(&mut client).await), Some(CloseCode::Normal));
        assert!(within(client.next()).await.is_none());
        assert_eq!(within(server.read(&mut [0; 16])).await.unwrap(), 0, "the client's Close reply");
        let error = server.write_all(b"late").await.and(within(server.flush()).await).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
