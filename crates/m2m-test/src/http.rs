//! A small HTTP/1.1 client over a plain TCP socket, for tests of the node's HTTP API: one request
//! per connection (`Connection: close`), the whole answer read (length-delimited, chunked, or up
//! to the end of the stream).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// If it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{}: the body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `headers` and `body` (content type, bytes) to `addr`, within the
/// test deadline.
///
/// # Panics
/// If the node cannot be reached or answers something that is not HTTP/1.1.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> HttpReply {
    crate::within(async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the HTTP server");
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                request.push_str(&format!("content-type: {content_type}\r\n"));
                bytes
            }
            None => &[],
        };
        request.push_str(&format!("content-length: {}\r\n\r\n", payload.len()));
        stream.write_all(request.as_bytes()).await.expect("send the request");
        stream.write_all(payload).await.expect("send the body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the answer");
        parse(&raw)
    })
    .await
}

/// An open Server-Sent Events stream: its answer's head, and its events as they come.
#[derive(Debug)]
pub struct SseStream {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked text not yet split into events.
    text: String,
}

/// Opens `GET path` on `addr` as an event stream.
///
/// # Panics
/// If the node cannot be reached or its answer's head is not HTTP/1.1.
pub async fn sse(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
    crate::within(async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the HTTP server");
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "the stream ended before its head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = parse(&raw[..end + 4]);
        let rest = raw[end + 4..].to_vec();
        SseStream { status: head.status, headers: head.headers, stream, raw: rest, text: String::new() }
    })
    .await
}

impl SseStream {
    /// The next event: its name (`message` when it has none) and its data; `None` when the stream
    /// ended. Comments (keep-alives) are skipped.
    ///
    /// # Panics
    /// If reading fails.
    pub async fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() && block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                    continue;
                }
                return Some((name, data.join("\n")));
            }
            // De-chunk what has been read whole.
            while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..line_end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
                    .expect("a chunk size");
                if size == 0 {
                    return None;
                }
                if self.raw.len() < line_end + 2 + size + 2 {
                    break;
                }
                let chunk = self.raw[line_end + 2..line_end + 2 + size].to_vec();
                self.text.push_str(&String::from_utf8_lossy(&chunk));
                self.raw.drain(..line_end + 2 + size + 2);
            }
            if self.text.contains("\n\n") {
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await.expect("read the stream");
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits (within the test deadline) for the next event named `name`, skipping others; its
    /// data as JSON.
    ///
    /// # Panics
    /// If the stream ends first, or the data is not JSON.
    pub async fn expect(&mut self, name: &str) -> serde_json::Value {
        crate::within(async {
            loop {
                let (event, data) = self
                    .next_event()
                    .await
                    .unwrap_or_else(|| panic!("the stream ended before a {name} event"));
                if event == name {
                    return serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("{name} data is not JSON ({e}): {data}"));
                }
            }
        })
        .await
    }
}

fn parse(raw: &[u8]) -> HttpReply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("the end of the answer's head");
    let head = std::str::from_utf8(&raw[..end]).expect("a UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    HttpReply { status, headers, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_with_their_headers_and_chunked_bodies() {
        let plain = parse(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nSet-Cookie: a=b\r\n\r\n{\"x\":1}",
        );
        assert_eq!(plain.status, 201);
        assert_eq!(plain.header("set-cookie"), Some("a=b"));
        assert_eq!(plain.json()["x"], 1);
        let chunked =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(chunked.text(), "abcde");
    }
}
