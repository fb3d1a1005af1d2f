//! A small blocking HTTP/1.1 client for a running node's API (`m2m-http`), so that `m2m device`,
//! `group`, `quarantine` and `audit` can change a node without stopping it.
//!
//! One request per connection (`Connection: close`), `http://` only: the API speaks plain HTTP (TLS,
//! where needed, is added in front of it, and a tunnel or proxy gives an `http://` address again).
//! Request bodies carry a `Content-Length`; a response body is delimited by its `Content-Length`,
//! by chunked transfer coding, or by the end of the connection (RFC 9112 §6.3).
//!
//! # What this module does not do
//! No TLS, redirects, proxies, keep-alive or content codings (it sends no `Accept-Encoding`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// How long connecting to the node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write may wait (a large import is hashed by the node before it answers).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest status or header line accepted.
const MAX_LINE: usize = 8 * 1024;
/// The most header fields accepted in one response.
const MAX_HEADERS: usize = 100;
/// The largest response body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What went wrong talking to the API.
#[derive(Debug)]
pub(crate) enum RemoteError {
    /// The URL is not one this client can use.
    Url { url: String, why: String },
    /// No connection could be made to any address of the node.
    Connect { base: String, source: std::io::Error },
    /// The request could not be sent or the answer not read: a timeout, a closed connection, or an
    /// answer that is not HTTP/1.x.
    Exchange { base: String, source: std::io::Error },
    /// The API answered with a status other than 2xx.
    Status { base: String, status: u16, reason: String, message: Option<String> },
    /// A 2xx answer whose body is not the JSON expected.
    Body { base: String, source: serde_json::Error },
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Url { url, why } => write!(f, "invalid API URL {url:?}: {why}"),
            RemoteError::Connect { base, .. } => write!(f, "cannot connect to the HTTP API at {base}"),
            RemoteError::Exchange { base, .. } => write!(f, "no valid answer from the HTTP API at {base}"),
            RemoteError::Status { base, status, reason, message } => {
                write!(f, "the HTTP API at {base} answered {status}")?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                match message {
                    Some(message) => write!(f, ": {message}"),
                    None => Ok(()),
                }
            }
            RemoteError::Body { base, .. } => {
                write!(f, "the HTTP API at {base} answered with an unexpected body")
            }
        }
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RemoteError::Connect { source, .. } | RemoteError::Exchange { source, .. } => Some(source),
            RemoteError::Body { source, .. } => Some(source),
            RemoteError::Url { .. } | RemoteError::Status { .. } => None,
        }
    }
}

impl RemoteError {
    /// Whether the node was not reached or did not admit the request (as opposed to answering it
    /// with an error about the request itself, such as 404 for a device that does not exist).
    pub(crate) fn is_not_served(&self) -> bool {
        match self {
            RemoteError::Url { .. } | RemoteError::Connect { .. } | RemoteError::Exchange { .. } => true,
            RemoteError::Status { status, .. } => matches!(status, 401 | 403) || *status >= 500,
            RemoteError::Body { .. } => false,
        }
    }

    /// The HTTP status, for an answer that had one.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An `http://host[:port][/prefix]` URL: where the API's `/api/v1` routes are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    /// As in the `Host` header: a name, an IPv4 address or a bracketed IPv6 address.
    host: String,
    port: u16,
    /// Empty, or starting with `/` and not ending with one (the API behind a proxy's path).
    prefix: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, RemoteError> {
        let bad = |why: &str| RemoteError::Url { url: url.to_owned(), why: why.to_owned() };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("expected an http:// URL such as http://127.0.0.1:8080"));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(bad(
                "https is not supported: this client speaks plain HTTP, as the node's API does; \
                 reach a node behind TLS through an http:// address (a tunnel or a local proxy)",
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(bad("expected an http:// URL such as http://127.0.0.1:8080"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.contains(['?', '#']) || authority.contains(['?', '#']) {
            return Err(bad("a query or fragment has no place in the API's address"));
        }
        if authority.contains('@') {
            return Err(bad("credentials go in --token, not in the URL"));
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let Some((inside, after)) = after.split_once(']') else {
                return Err(bad("unclosed `[` in the host"));
            };
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between `[` and `]`"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected `:port` after `]`"))?),
            };
            (format!("[{inside}]"), port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad("no host, or one with spaces"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("invalid port"))?,
        };
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad("spaces in the path"));
        }
        let prefix = path.trim_end_matches('/').to_owned();
        Ok(Self { host, port, prefix })
    }

    /// `http://host:port[/prefix]`, for messages.
    fn base(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// A client of one node's API.
#[derive(Clone)]
pub(crate) struct Client {
    url: Url,
    /// Sent as `Authorization: Bearer <token>`; printable ASCII without spaces (checked).
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in output.
        f.debug_struct("Client")
            .field("url", &self.url.base())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the API at `url` (`http://host[:port][/prefix]`).
    ///
    /// # Errors
    /// [`RemoteError::Url`] for a URL that is not `http://`, or a token that cannot go in a header.
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<Self, RemoteError> {
        let url = Url::parse(url)?;
        Self::with_url(url, token)
    }

    /// A client of the API listening on `listen` (a node's `http.listen`): an unspecified address
    /// (`0.0.0.0`, `::`) is reached on loopback.
    pub(crate) fn for_listen(listen: SocketAddr, token: Option<String>) -> Result<Self, RemoteError> {
        let ip = match listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let host = match ip {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Self::with_url(Url { host, port: listen.port(), prefix: String::new() }, token)
    }

    fn with_url(url: Url, token: Option<String>) -> Result<Self, RemoteError> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = &token {
            // RFC 6750 §2.1 b64token; anything else would break the header, or smuggle another.
            let ok = t.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(RemoteError::Url {
                    url: url.base(),
                    why: "the token must be printable ASCII without spaces".to_owned(),
                });
            }
        }
        Ok(Self { url, token })
    }

    /// `http://host:port[/prefix]`, for messages.
    pub(crate) fn base(&self) -> String {
        self.url.base()
    }

    /// `GET /api/v1{path}`, its JSON body decoded.
    ///
    /// # Errors
    /// As [`Client::request`]; [`RemoteError::Body`] when the body is not a `T`.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RemoteError> {
        self.decode(self.request("GET", path, None)?)
    }

    /// `method /api/v1{path}` with a JSON body, the answer's JSON body decoded.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub(crate) fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, RemoteError> {
        self.send(method, path, "application/json", body.to_string().as_bytes())
    }

    /// `method /api/v1{path}` with a body of `content_type`, the answer's JSON body decoded.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<T, RemoteError> {
        self.decode(self.request(method, path, Some((content_type, body)))?)
    }

    fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, RemoteError> {
        serde_json::from_slice(&response.body)
            .map_err(|source| RemoteError::Body { base: self.base(), source })
    }

    /// Sends `method /api/v1{path}` with an optional body `(content type, bytes)` on a new
    /// connection, and reads the answer.
    ///
    /// # Errors
    /// [`RemoteError::Connect`] when no address of the node accepts a connection within 5 s;
    /// [`RemoteError::Exchange`] when sending or reading fails (30 s without progress is a
    /// failure) or the answer is not HTTP/1.x; [`RemoteError::Status`] for a status other than 2xx,
    /// with the API's message.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, RemoteError> {
        let base = self.base();
        let mut stream = self.connect()?;
        let exchange = |source| RemoteError::Exchange { base: base.clone(), source };
        let head = self.head(method, path, body.map(|(content_type, b)| (content_type, b.len())));
        let mut request = head.into_bytes();
        if let Some((_, bytes)) = body {
            request.extend_from_slice(bytes);
        }
        stream.write_all(&request).and_then(|()| stream.flush()).map_err(exchange)?;
        let response = read_response(&mut BufReader::new(stream)).map_err(exchange)?;
        if !(200..300).contains(&response.status) {
            return Err(RemoteError::Status {
                base,
                status: response.status,
                reason: response.reason.clone(),
                message: error_message(&response.body),
            });
        }
        Ok(response)
    }

    /// The request line and headers, up to and including the blank line.
    fn head(&self, method: &str, path: &str, body: Option<(&str, usize)>) -> String {
        let mut head = format!(
            "{method} {}/api/v1{path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: m2m/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            self.url.prefix,
            self.url.host,
            self.url.port,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        match body {
            Some((content_type, len)) => {
                head.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {len}\r\n"));
            }
            // Without a body, a method that usually has one still says so (RFC 9110 §8.6).
            None if matches!(method, "POST" | "PUT" | "PATCH") => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        head.push_str("\r\n");
        head
    }

    fn connect(&self) -> Result<TcpStream, RemoteError> {
        let base = self.base();
        let host = self.url.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, self.url.port)
            .to_socket_addrs()
            .map_err(|source| RemoteError::Connect { base: base.clone(), source })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let io = |source| RemoteError::Connect { base: base.clone(), source };
                    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(RemoteError::Connect { base, source: last })
    }
}

/// The `message` (or `error`) of an API error body, or the start of a body that is not JSON.
fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["message", "error"] {
            if let Some(message) = value.get(key).and_then(|m| m.as_str()) {
                return Some(message.to_owned());
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    const SHOWN: usize = 200;
    Some(match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    })
}

/// `s` as one path segment: everything but RFC 3986 unreserved characters percent-encoded.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP response, its body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) reason: String,
    /// In the order received, names as sent.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The value of the first header named `name` (case-insensitive).
    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn malformed(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Reads one response to a request that was not `HEAD`: interim (1xx) answers are skipped.
///
/// ```text
/// HTTP/1.1 200 OK\r\n                 status line: version, 3-digit status, reason (may be empty)
/// Content-Type: application/json\r\n  header fields, up to a blank line
/// Content-Length: 2\r\n
/// \r\n
/// []                                  the body: Content-Length bytes, chunks, or up to EOF
/// ```
///
/// # Errors
/// `InvalidData` for what is not HTTP/1.x or is over the limits; `UnexpectedEof` for an answer cut
/// short; and the reader's own errors (a timeout).
pub(crate) fn read_response<R: BufRead>(reader: &mut R) -> std::io::Result<Response> {
    loop {
        let line = read_line(reader)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection closed without an answer")
        })?;
        let (status, reason) = status_line(&line)?;
        let headers = read_headers(reader)?;
        // 101 would switch protocols, which was not asked for: treat it as final (and not 2xx).
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(reader, &headers)?
        };
        return Ok(Response { status, reason, headers, body });
    }
}

/// `HTTP/1.x SP status [SP reason]`.
fn status_line(line: &str) -> std::io::Result<(u16, String)> {
    let bad = || malformed(format!("not an HTTP/1.x status line: {:?}", truncated(line)));
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let mut chars = rest.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_digit()) || chars.next() != Some(' ') {
        return Err(bad());
    }
    let rest = chars.as_str();
    let (code, reason) = rest.split_at(rest.len().min(3));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let reason = match reason {
        "" => "",
        r => r.strip_prefix(' ').ok_or_else(bad)?,
    };
    let status: u16 = code.parse().map_err(|_| bad())?;
    if status < 100 {
        return Err(bad());
    }
    Ok((status, reason.trim().to_owned()))
}

fn read_headers<R: BufRead>(reader: &mut R) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the headers were cut short")
        })?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() == MAX_HEADERS {
            return Err(malformed(format!("more than {MAX_HEADERS} header fields")));
        }
        let field = line.split_once(':').filter(|(name, _)| is_token(name));
        let Some((name, value)) = field else {
            return Err(malformed(format!("not a header field: {:?}", truncated(&line))));
        };
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

/// An RFC 9110 §5.6.2 token (a header name): not empty, no spaces or separators.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn read_body<R: BufRead>(reader: &mut R, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    /// The comma-separated values of every field named `name`.
    fn values<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
        headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).flat_map(|(_, v)| v.split(','))
    }
    let codings: Vec<&str> =
        values(headers, "transfer-encoding").map(str::trim).filter(|c| !c.is_empty()).collect();
    if let Some(last) = codings.last() {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); a final coding other than
        // chunked is delimited by the end of the connection.
        return if last.eq_ignore_ascii_case("chunked") { read_chunked(reader) } else { read_to_end(reader) };
    }
    let mut length = None;
    for value in values(headers, "content-length") {
        let value = value.trim();
        let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<usize>().ok())
            .flatten()
            .ok_or_else(|| malformed(format!("invalid Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(malformed("conflicting Content-Length values"));
        }
        length = Some(n);
    }
    match length {
        Some(n) if n > MAX_BODY => {
            Err(malformed(format!("a body of {n} bytes is over the {MAX_BODY}-byte limit")))
        }
        Some(n) => read_exact(reader, n),
        None => read_to_end(reader),
    }
}

fn read_exact<R: BufRead>(reader: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(n.min(64 * 1024));
    reader.take(n as u64).read_to_end(&mut body)?;
    if body.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the body ended after {} of {n} bytes", body.len()),
        ));
    }
    Ok(body)
}

fn read_to_end<R: BufRead>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    reader.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
    if body.len() > MAX_BODY {
        return Err(malformed(format!("the body is over the {MAX_BODY}-byte limit")));
    }
    Ok(body)
}

/// Chunked transfer coding (RFC 9112 §7.1): `size-in-hex[;extensions] CRLF data CRLF`, ..., then a
/// `0` chunk, trailer fields (ignored) and a blank line.
fn read_chunked<R: BufRead>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the chunked body was cut short")
        })?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = (!size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| usize::from_str_radix(size, 16).ok())
            .flatten()
            .ok_or_else(|| malformed(format!("invalid chunk size line {:?}", truncated(&line))))?;
        if size == 0 {
            read_headers(reader)?;
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(malformed(format!("the body is over the {MAX_BODY}-byte limit")));
        }
        body.extend(read_exact(reader, size)?);
        if read_line(reader)?.as_deref() != Some("") {
            return Err(malformed("a chunk is not followed by CRLF"));
        }
    }
}

/// One line without its `\r\n` (a bare `\n` is accepted too, RFC 9112 §2.2); `None` at EOF.
fn read_line<R: BufRead>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    reader.take(MAX_LINE as u64 + 2).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(if line.len() > MAX_LINE {
            malformed(format!("a line is over {MAX_LINE} bytes"))
        } else {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the answer ended mid-line")
        });
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map(Some).map_err(|_| malformed("a status or header line is not UTF-8"))
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8]) -> std::io::Result<Response> {
        read_response(&mut &wire[..])
    }

    #[test]
    fn a_content_length_body_is_read_to_its_length_and_no_further() {
        let wire = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nContent-Length: 9\r\n\r\n{\"id\":\"a\"}extra";
        let response = parse(wire).unwrap();
        assert_eq!((response.status, response.reason.as_str()), (201, "Created"));
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.body, b"{\"id\":\"a\"");
    }

    #[test]
    fn a_chunked_body_is_decoded_with_extensions_and_trailers() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
                     4\r\n[1,2\r\nA;name=value\r\n,3,4,5,6,7\r\n1\r\n]\r\n0\r\nX-Trailer: yes\r\n\r\n";
        assert_eq!(parse(wire).unwrap().body, b"[1,2,3,4,5,6,7]");
    }

    #[test]
    fn a_body_without_length_is_read_to_the_end_of_the_connection() {
        let wire = b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nall of it\r\nuntil EOF";
        let response = parse(wire).unwrap();
        assert_eq!(response.body, b"all of it\r\nuntil EOF");
    }

    #[test]
    fn no_content_has_no_body_and_interim_answers_are_skipped() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nleftover";
        let response = parse(wire).unwrap();
        assert_eq!(response.status, 204);
        assert!(response.body.is_empty());
        let no_reason = parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((no_reason.status, no_reason.reason.as_str()), (200, ""));
    }

    #[test]
    fn malformed_answers_are_errors_naming_the_problem() {
        let cases: [(&[u8], &str); 12] = [
            (b"", "without an answer"),
            (b"SSH-2.0-OpenSSH\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 200OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "not a header field"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "headers were cut short"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "conflicting"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended after 5 of 10 bytes"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "not followed by CRLF",
            ),
        ];
        for (wire, expected) in cases {
            let err = parse(wire).expect_err(&String::from_utf8_lossy(wire));
            assert!(err.to_string().contains(expected), "{:?}: {err}", String::from_utf8_lossy(wire));
        }
        let cut = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").unwrap_err();
        assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof);
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_LINE + 10));
        assert!(parse(long.as_bytes()).unwrap_err().to_string().contains("over"));
    }

    #[test]
    fn urls_are_http_only_with_a_host_and_an_optional_port_and_prefix() {
        let url = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.prefix.as_str()), ("127.0.0.1", 8080, ""));
        let url = Url::parse("HTTP://node.example/m2m/").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.prefix.as_str()), ("node.example", 80, "/m2m"));
        let url = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[::1]", 9000));
        assert_eq!(url.base(), "http://[::1]:9000");
        let refused = [
            ("https://127.0.0.1:8443", "https is not supported"),
            ("127.0.0.1:8080", "expected an http:// URL"),
            ("ftp://x", "expected an http:// URL"),
            ("http://:8080", "no host"),
            ("http://host:99999", "invalid port"),
            ("http://host:0", "invalid port"),
            ("http://user:pw@host", "credentials go in --token"),
            ("http://host/?q=1", "query"),
            ("http://[::1", "unclosed"),
        ];
        for (url, expected) in refused {
            let err = Url::parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn a_token_that_would_break_the_header_is_refused() {
        assert!(Client::new("http://h", Some("ok.token-1_~+/=".into())).is_ok());
        for token in ["two words", "line\r\nX-Evil: 1", "é"] {
            let err = Client::new("http://h", Some(token.into())).unwrap_err().to_string();
            assert!(err.contains("printable ASCII"), "{token:?}: {err}");
        }
        assert!(!format!("{:?}", Client::new("http://h", Some("s3cret".into())).unwrap()).contains("s3cret"));
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        let v4 = Client::for_listen("0.0.0.0:8080".parse().unwrap(), None).unwrap();
        assert_eq!(v4.base(), "http://127.0.0.1:8080");
        let v6 = Client::for_listen("[::]:8080".parse().unwrap(), None).unwrap();
        assert_eq!(v6.base(), "http://[::1]:8080");
    }

    #[test]
    fn error_messages_come_from_the_json_body_or_its_text() {
        assert_eq!(error_message(br#"{"error": "no device \"x\""}"#).as_deref(), Some("no device \"x\""));
        assert_eq!(error_message(br#"{"message": "nope"}"#).as_deref(), Some("nope"));
        assert_eq!(
            error_message(br#"{"error": "not_found", "message": "no device \"x\""}"#).as_deref(),
            Some("no device \"x\"")
        );
        assert_eq!(error_message(b"  Bad Gateway\n").as_deref(), Some("Bad Gateway"));
        assert_eq!(error_message(b""), None);
        assert_eq!(error_message("x".repeat(300).as_bytes()).map(|m| m.len()), Some(203));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("lamp-1_a.b~"), "lamp-1_a.b~");
        assert_eq!(segment("a/b c?%é"), "a%2Fb%20c%3F%25%C3%A9");
    }

    /// Answers one connection with `answer` and hands back the request it read.
    fn one_shot_server(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap();
                }
                request.extend_from_slice(line.as_bytes());
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.extend(body);
            (&stream).write_all(answer).unwrap();
            request
        });
        (addr, server)
    }

    #[test]
    fn a_request_carries_the_token_and_its_body_and_asks_to_close() {
        let (addr, server) =
            one_shot_server(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\":\"x\"}\n");
        let client = Client::new(&format!("http://{addr}/base"), Some("t0k".into())).unwrap();
        let created: serde_json::Value =
            client.send_json("POST", "/devices", &serde_json::json!({"id": "x"})).unwrap();
        assert_eq!(created["id"], "x");
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(request.starts_with("POST /base/api/v1/devices HTTP/1.1\r\n"), "{request}");
        for line in ["Authorization: Bearer t0k\r\n", "Connection: close\r\n", "Content-Length: 10\r\n"] {
            assert!(request.contains(line), "{line:?} missing: {request}");
        }
        assert!(request.contains(&format!("Host: 127.0.0.1:{}\r\n", addr.port())), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"id\":\"x\"}"), "{request}");
    }

    #[test]
    fn an_error_status_is_an_error_with_the_apis_message() {
        let (addr, server) = one_shot_server(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 34\r\n\r\n{\"error\":\"the token is not valid\"}",
        );
        let client = Client::new(&format!("http://{addr}"), None).unwrap();
        let err = client.request("GET", "/devices", None).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.status(), Some(401));
        assert!(err.is_not_served());
        assert_eq!(
            err.to_string(),
            format!("the HTTP API at http://{addr} answered 401 Unauthorized: the token is not valid")
        );
    }

    #[test]
    fn a_node_that_is_not_there_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = client.request("GET", "/devices", None).unwrap_err();
        assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
        assert!(err.is_not_served());
        assert_eq!(err.to_string(), format!("cannot connect to the HTTP API at http://127.0.0.1:{port}"));
    }
}
