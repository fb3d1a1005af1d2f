//! The webhook client against real HTTP servers on loopback ports, run by the tests themselves.
//!
//! The server here is a small HTTP/1.1 server of its own (not the client's parser turned around):
//! it records every request it reads and answers as each test scripts it, down to the bytes.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use m2m_engine::webhook::{Webhook, WebhookConfig, WebhookError, WebhookStats};
use m2m_test::within;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request as the test server read it.
#[derive(Debug)]
struct Request {
    /// Which accepted connection it came on, from 0.
    connection: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the server does with a request.
enum Reply {
    /// Writes these bytes and reads the next request on the same connection.
    Send(Vec<u8>),
    /// Writes these bytes and closes the connection.
    SendAndClose(Vec<u8>),
    /// Never answers; waits for the client to close the connection.
    Hang,
    /// Writes these bytes, then nothing more until the client closes the connection.
    SendAndHang(Vec<u8>),
}

fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn ok() -> Reply {
    Reply::Send(response("200 OK", "", "{\"ok\":true}"))
}

/// A scripted HTTP server on a loopback port. `reply` is called with the number of the request
/// (from 0, over all connections).
struct Server {
    url: String,
    port: u16,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Connections the client closed (the server saw end of file where a request could start).
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test server");
        let port = listener.local_addr().expect("local address").port();
        let (tx, requests) = mpsc::unbounded_channel();
        let (connections, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reply = Arc::new(reply);
        let served = Arc::new(AtomicUsize::new(0));
        let (accepted, closed_by_client) = (Arc::clone(&connections), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let connection = accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, reply, served, closed) =
                    (tx.clone(), Arc::clone(&reply), Arc::clone(&served), Arc::clone(&closed_by_client));
                tokio::spawn(async move {
                    serve_connection(stream, connection, tx, reply.as_ref(), &served, &closed).await;
                });
            }
        });
        Server { url: format!("http://127.0.0.1:{port}"), port, requests, connections, closed, task }
    }

    async fn next_request(&mut self) -> Request {
        within(self.requests.recv()).await.expect("server running")
    }

    async fn take_requests(&mut self, n: usize) -> Vec<Request> {
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            requests.push(self.next_request().await);
        }
        requests
    }

    /// The requests received and not yet taken.
    fn pending_requests(&mut self) -> usize {
        let mut n = 0;
        while self.requests.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    connection: usize,
    requests: mpsc::UnboundedSender<Request>,
    reply: &(dyn Fn(usize) -> Reply + Send + Sync),
    served: &AtomicUsize,
    closed: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, connection).await else {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let n = served.fetch_add(1, Ordering::SeqCst);
        let _ = requests.send(request);
        match reply(n) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::SendAndClose(bytes) => {
                // The client may close first (it need not read a long body to the end).
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Hang => {
                wait_for_close(&mut stream, closed).await;
                return;
            }
            Reply::SendAndHang(bytes) => {
                let _ = stream.write_all(&bytes).await;
                wait_for_close(&mut stream, closed).await;
                return;
            }
        }
    }
}

/// Reads and ignores whatever comes until the client closes the connection.
async fn wait_for_close(stream: &mut TcpStream, closed: &AtomicUsize) {
    let mut sink = [0; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    closed.fetch_add(1, Ordering::SeqCst);
}

/// Reads one request with a `Content-Length` body; `None` at end of file or on an error.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, connection: usize) -> Option<Request> {
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8(buf[..head_len - 4].to_vec()).expect("request head is UTF-8");
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().expect("request line").split(' ');
    let (method, target) = (request_line.next()?.to_owned(), request_line.next()?.to_owned());
    assert_eq!(request_line.next(), Some("HTTP/1.1"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line has a colon");
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("numeric Content-Length"))
        .expect("request has a Content-Length");
    while buf.len() < head_len + len {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_len..head_len + len].to_vec();
    buf.drain(..head_len + len);
    Some(Request { connection, method, target, headers, body, at })
}

fn config(url: String) -> WebhookConfig {
    WebhookConfig {
        url,
        timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..WebhookConfig::default()
    }
}

/// Waits (within the step limit) until the stats satisfy `done`, and returns them.
async fn until(webhook: &Webhook, done: impl Fn(&WebhookStats) -> bool) -> WebhookStats {
    within(async {
        loop {
            let stats = webhook.stats();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn bodies_arrive_in_order_with_the_right_headers() {
    let mut server = Server::start(|_| ok()).await;
    let mut config = config(format!("{}/hooks/motor?site=7&x=%20", server.url));
    config.headers = vec![
        ("Authorization".to_owned(), "Bearer s3cr3t".to_owned()),
        ("X-Rule".to_owned(), "motor overheat".to_owned()),
    ];
    let webhook = Webhook::start(config).unwrap();
    for seq in 0..20 {
        assert!(webhook.send(json!({ "seq": seq, "temp": 91.5, "motor": "m-1" })));
    }

    let requests = server.take_requests(20).await;
    for (seq, request) in requests.iter().enumerate() {
        assert_eq!(request.json(), json!({ "seq": seq, "temp": 91.5, "motor": "m-1" }));
        assert_eq!((request.method.as_str(), request.target.as_str()), ("POST", "/hooks/motor?site=7&x=%20"));
        let host = format!("127.0.0.1:{}", server.port);
        assert_eq!(request.header("host"), Some(host.as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("content-length"), Some(request.body.len().to_string().as_str()));
        let user_agent = format!("m2m/{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(request.header("user-agent"), Some(user_agent.as_str()));
        assert_eq!(request.header("authorization"), Some("Bearer s3cr3t"));
        assert_eq!(request.header("x-rule"), Some("motor overheat"));
        assert_eq!(request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host")).count(), 1);
    }
    let stats = until(&webhook, |s| s.sent == 20 && s.queued == 0).await;
    assert_eq!(
        stats,
        WebhookStats { sent: 20, retries: 0, failed: 0, dropped: 0, queued: 0, last_error: None }
    );
}

#[tokio::test]
async fn a_server_failing_twice_with_503_then_succeeding_gets_the_body_after_two_retries() {
    let mut server = Server::start(|n| match n {
        0 | 1 => Reply::Send(response("503 Service Unavailable", "", "busy")),
        _ => ok(),
    })
    .await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    assert!(webhook.send(json!({ "alert": "overheat" })));

    let stats = until(&webhook, |s| s.sent == 1).await;
    assert_eq!((stats.retries, stats.failed, stats.queued), (2, 0, 0));
    assert_eq!(stats.last_error.as_deref(), Some("HTTP status 503 Service Unavailable"));
    for request in server.take_requests(3).await {
        assert_eq!(request.json(), json!({ "alert": "overheat" }));
    }
    assert_eq!(server.connections(), 1, "503 responses with a length keep the connection");
}

#[tokio::test]
async fn a_400_is_a_dead_letter_at_once_without_retries() {
    let mut server = Server::start(|_| Reply::Send(response("400 Bad Request", "", "no"))).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    assert!(webhook.send(json!(1)));
    assert!(webhook.send(json!(2)));

    let stats = until(&webhook, |s| s.failed == 2).await;
    assert_eq!((stats.sent, stats.retries, stats.queued), (0, 0, 0));
    assert_eq!(stats.last_error.as_deref(), Some("HTTP status 400 Bad Request"));
    let bodies: Vec<_> = server.take_requests(2).await.iter().map(Request::json).collect();
    assert_eq!(bodies, [json!(1), json!(2)]);
    assert_eq!(server.pending_requests(), 0, "no body was sent twice");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_the_body_becomes_a_dead_letter() {
    let mut server = Server::start(|_| Reply::Hang).await;
    let webhook = Webhook::start(WebhookConfig {
        timeout: Duration::from_millis(150),
        max_retries: 2,
        ..config(server.url.clone())
    })
    .unwrap();
    let started = Instant::now();
    assert!(webhook.send(json!({ "alert": "overheat" })));

    let stats = until(&webhook, |s| s.failed == 1).await;
    assert!(started.elapsed() >= Duration::from_millis(450), "three attempts of 150 ms each");
    assert_eq!((stats.sent, stats.retries, stats.queued), (0, 2, 0));
    assert_eq!(stats.last_error.as_deref(), Some("no response within 150ms"));
    assert_eq!(server.take_requests(3).await.len(), 3);
    assert_eq!(server.connections(), 3, "a timed-out connection is not used again");
}

#[tokio::test]
async fn an_endpoint_that_refuses_connections_is_retried_then_given_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let webhook = Webhook::start(WebhookConfig { max_retries: 1, ..config(url) }).unwrap();
    assert!(webhook.send(json!(null)));

    let stats = until(&webhook, |s| s.failed == 1).await;
    assert_eq!((stats.sent, stats.retries), (0, 1));
    let error = stats.last_error.expect("an error");
    assert!(error.starts_with("cannot connect: "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_bodies_and_never_blocks_the_caller() {
    let mut server = Server::start(|_| Reply::Hang).await;
    let webhook = Webhook::start(WebhookConfig {
        queue: 3,
        timeout: Duration::from_secs(30),
        ..config(server.url.clone())
    })
    .unwrap();

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut accepted = 0;
    for seq in 0..1000 {
        let before = Instant::now();
        accepted += usize::from(webhook.send(json!({ "seq": seq })));
        slowest = slowest.max(before.elapsed());
    }
    let elapsed = started.elapsed();
    assert_eq!(accepted, 3, "the queue bounds the bodies pending, the one in flight included");
    assert!(elapsed < Duration::from_secs(1), "1000 sends took {elapsed:?}");
    assert!(slowest < Duration::from_millis(250), "the slowest send took {slowest:?}");

    let stats = webhook.stats();
    assert_eq!((stats.dropped, stats.queued, stats.sent, stats.failed), (997, 3, 0, 0));
    assert_eq!(server.next_request().await.json(), json!({ "seq": 0 }));
}

#[tokio::test]
async fn several_bodies_share_one_kept_alive_connection() {
    let mut server = Server::start(|_| ok()).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    for seq in 0..10 {
        assert!(webhook.send(json!(seq)));
    }
    until(&webhook, |s| s.sent == 10).await;
    let requests = server.take_requests(10).await;
    assert!(requests.iter().all(|r| r.connection == 0));
    assert_eq!(server.connections(), 1);

    // Later bodies still use it.
    assert!(webhook.send(json!(10)));
    until(&webhook, |s| s.sent == 11).await;
    assert_eq!(server.next_request().await.connection, 0);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_connection_close_response_makes_the_client_reconnect() {
    let mut server =
        Server::start(|_| Reply::SendAndClose(response("200 OK", "Connection: close\r\n", ""))).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    for seq in 0..3 {
        assert!(webhook.send(json!(seq)));
    }
    let stats = until(&webhook, |s| s.sent == 3).await;
    assert_eq!((stats.retries, stats.failed), (0, 0));
    let connections: Vec<usize> = server.take_requests(3).await.iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 1, 2]);
}

#[tokio::test]
async fn a_kept_alive_connection_the_server_dropped_is_replaced_without_a_retry() {
    // The server promises keep-alive but closes after every response, as an idle timeout would.
    let mut server = Server::start(|_| Reply::SendAndClose(response("200 OK", "", "{}"))).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    for seq in 0..3 {
        assert!(webhook.send(json!(seq)));
        until(&webhook, |s| s.sent == seq + 1).await;
    }
    let stats = webhook.stats();
    assert_eq!((stats.sent, stats.retries, stats.failed, stats.last_error), (3, 0, 0, None));
    let bodies: Vec<_> = server.take_requests(3).await.iter().map(Request::json).collect();
    assert_eq!(bodies, [json!(0), json!(1), json!(2)]);
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn chunked_response_bodies_are_read_and_the_connection_kept() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
                   3;ext=1\r\n{\"a\r\n\
                   A\r\n\":[1,2,3]}\r\n\
                   0\r\nX-Checksum: 42\r\n\r\n";
    let mut server = Server::start(move |_| Reply::Send(chunked.as_bytes().to_vec())).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    for seq in 0..5 {
        assert!(webhook.send(json!(seq)));
    }
    let stats = until(&webhook, |s| s.sent == 5).await;
    assert_eq!((stats.retries, stats.failed, stats.last_error), (0, 0, None));
    assert!(server.take_requests(5).await.iter().all(|r| r.connection == 0));
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn interim_1xx_responses_are_skipped() {
    let mut reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".to_vec();
    reply.extend(response("201 Created", "", ""));
    let mut server = Server::start(move |_| Reply::Send(reply.clone())).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    assert!(webhook.send(json!(1)));
    assert!(webhook.send(json!(2)));
    let stats = until(&webhook, |s| s.sent == 2).await;
    assert_eq!((stats.retries, stats.failed), (0, 0));
    assert!(server.take_requests(2).await.iter().all(|r| r.connection == 0));
}

#[tokio::test]
async fn a_response_body_that_ends_with_the_connection_is_read_to_the_close() {
    let mut server =
        Server::start(|_| Reply::SendAndClose(b"HTTP/1.1 202 Accepted\r\n\r\nqueued for later".to_vec()))
            .await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    for seq in 0..3 {
        assert!(webhook.send(json!(seq)));
    }
    let stats = until(&webhook, |s| s.sent == 3).await;
    assert_eq!((stats.retries, stats.failed), (0, 0));
    let connections: Vec<usize> = server.take_requests(3).await.iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 1, 2]);
}

#[tokio::test]
async fn a_response_body_over_1_mib_is_left_unread_and_the_status_still_counts() {
    let two_mib = 2 * 1024 * 1024;
    let mut server = Server::start(move |_| {
        let mut bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {two_mib}\r\n\r\n").into_bytes();
        bytes.resize(bytes.len() + two_mib, b'x');
        Reply::SendAndClose(bytes)
    })
    .await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    assert!(webhook.send(json!(1)));
    assert!(webhook.send(json!(2)));
    let stats = until(&webhook, |s| s.sent == 2).await;
    assert_eq!((stats.retries, stats.failed), (0, 0));
    let connections: Vec<usize> = server.take_requests(2).await.iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 1], "a connection with an unread body is not used again");
}

#[tokio::test]
async fn a_status_counts_even_when_its_body_never_ends() {
    let mut partial = response("200 OK", "", "a body that never arrives whole");
    partial.truncate(partial.len() - 10);
    let mut server = Server::start(move |_| Reply::SendAndHang(partial.clone())).await;
    let webhook =
        Webhook::start(WebhookConfig { timeout: Duration::from_millis(200), ..config(server.url.clone()) })
            .unwrap();
    assert!(webhook.send(json!(1)));
    assert!(webhook.send(json!(2)));
    let stats = until(&webhook, |s| s.sent == 2).await;
    assert_eq!((stats.retries, stats.failed, stats.last_error), (0, 0, None));
    let connections: Vec<usize> = server.take_requests(2).await.iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 1], "a connection with a body left unread is not used again");
}

#[tokio::test]
async fn retry_after_on_429_sets_the_delay() {
    let mut server = Server::start(|n| match n {
        0 => Reply::Send(response("429 Too Many Requests", "Retry-After: 1\r\n", "")),
        _ => ok(),
    })
    .await;
    let webhook = Webhook::start(WebhookConfig {
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_secs(5),
        ..config(server.url.clone())
    })
    .unwrap();
    assert!(webhook.send(json!("x")));
    let requests = server.take_requests(2).await;
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(990) && gap < Duration::from_secs(4), "retried after {gap:?}");
    let stats = until(&webhook, |s| s.sent == 1).await;
    assert_eq!(stats.retries, 1);
}

#[tokio::test]
async fn retry_after_on_503_is_capped_by_max_backoff() {
    let mut server = Server::start(|n| match n {
        0 => Reply::Send(response("503 Service Unavailable", "Retry-After: 3600\r\n", "")),
        _ => ok(),
    })
    .await;
    let webhook = Webhook::start(WebhookConfig {
        max_backoff: Duration::from_millis(200),
        ..config(server.url.clone())
    })
    .unwrap();
    assert!(webhook.send(json!("x")));
    let requests = server.take_requests(2).await;
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(195) && gap < Duration::from_secs(3), "retried after {gap:?}");
    until(&webhook, |s| s.sent == 1 && s.retries == 1).await;
}

#[tokio::test]
async fn retry_delays_double_with_jitter_and_stop_at_max_backoff() {
    let mut server = Server::start(|_| Reply::Send(response("500 Internal Server Error", "", ""))).await;
    let webhook = Webhook::start(WebhookConfig {
        max_retries: 5,
        backoff: Duration::from_millis(60),
        max_backoff: Duration::from_millis(250),
        ..config(server.url.clone())
    })
    .unwrap();
    assert!(webhook.send(json!("x")));
    let stats = until(&webhook, |s| s.failed == 1).await;
    assert_eq!(stats.retries, 5);

    let requests = server.take_requests(6).await;
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Nominal delays 60, 120, 240, 250 (not 480), 250 (not 960) ms, each jittered to between half
    // and all of it.
    let floors = [30, 60, 120, 125, 125].map(Duration::from_millis);
    for (retry, (gap, floor)) in gaps.iter().zip(floors).enumerate() {
        assert!(*gap >= floor, "retry {} came after {gap:?}, before {floor:?}", retry + 1);
    }
    // Uncapped, the fifth delay would be at least 480 ms.
    assert!(gaps[4] < Duration::from_millis(470), "retry 5 came after {:?}", gaps[4]);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_task_and_closes_its_connection() {
    let mut server = Server::start(|_| ok()).await;
    let webhook = Webhook::start(config(server.url.clone())).unwrap();
    let clone = webhook.clone();
    assert!(clone.send(json!(1)));
    until(&webhook, |s| s.sent == 1).await;
    server.next_request().await;

    drop(webhook);
    assert!(clone.send(json!(2)), "a clone keeps the webhook running");
    until(&clone, |s| s.sent == 2).await;
    drop(clone);
    within(async {
        while server.closed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn dropping_the_last_handle_during_retries_gives_up_within_one_attempt() {
    let mut server = Server::start(|_| Reply::Hang).await;
    let webhook = Webhook::start(WebhookConfig {
        timeout: Duration::from_millis(200),
        max_retries: 100,
        ..config(server.url.clone())
    })
    .unwrap();
    assert!(webhook.send(json!(1)));
    assert!(webhook.send(json!(2)));
    server.next_request().await;
    let dropped_at = Instant::now();
    drop(webhook);

    // The attempt in flight times out and closes its connection; no retry and no second body follow.
    within(async {
        while server.closed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(dropped_at.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.pending_requests(), 0);
    assert_eq!(server.connections(), 1);
}

fn start_error(config: WebhookConfig) -> WebhookError {
    Webhook::start(config).expect_err("configuration refused")
}

fn invalid_url_reason(url: &str) -> &'static str {
    match start_error(WebhookConfig { url: url.to_owned(), ..WebhookConfig::default() }) {
        WebhookError::InvalidUrl { reason, .. } => reason,
        other => panic!("{url}: expected InvalidUrl, got {other:?}"),
    }
}

#[test]
fn invalid_urls_are_refused() {
    assert_eq!(invalid_url_reason(""), "expected http://host[:port]/path");
    assert_eq!(invalid_url_reason("http:///hook"), "missing host");
    assert_eq!(invalid_url_reason("http://:8080/hook"), "missing host");
    assert_eq!(invalid_url_reason("http://alerts:65536/hook"), "the port must be a number from 1 to 65535");
    assert_eq!(invalid_url_reason("http://alerts:http/hook"), "the port must be a number from 1 to 65535");
    assert_eq!(invalid_url_reason("http://alerts:0/hook"), "port 0 cannot be connected to");
    assert_eq!(invalid_url_reason("http://alerts/a\nb"), "contains whitespace or a control character");
    let error = start_error(WebhookConfig { url: "mqtt://alerts/".to_owned(), ..Default::default() });
    assert_eq!(error.to_string(), "invalid webhook URL \"mqtt://alerts/\": the scheme must be http or https");
}

#[test]
fn invalid_headers_and_limits_are_refused() {
    let with_header = |name: &str, value: &str| WebhookConfig {
        url: "http://alerts/hook".to_owned(),
        headers: vec![(name.to_owned(), value.to_owned())],
        ..WebhookConfig::default()
    };
    let error = start_error(with_header("X-Token", "abc\r\nX-Injected: 1"));
    assert!(matches!(&error, WebhookError::InvalidHeaderValue { name } if name == "X-Token"));
    assert!(!error.to_string().contains("abc"), "the value may be a secret: {error}");
    assert!(matches!(start_error(with_header("X-Token", "abc\n")), WebhookError::InvalidHeaderValue { .. }));
    assert!(matches!(start_error(with_header("X Token", "abc")), WebhookError::InvalidHeaderName { .. }));
    assert!(matches!(start_error(with_header("X-Token\n", "abc")), WebhookError::InvalidHeaderName { .. }));
    assert!(matches!(start_error(with_header("Content-Length", "3")), WebhookError::ReservedHeader { .. }));
    assert!(matches!(
        start_error(with_header("transfer-encoding", "chunked")),
        WebhookError::ReservedHeader { .. }
    ));

    let valid = WebhookConfig { url: "http://alerts/hook".to_owned(), ..WebhookConfig::default() };
    let error = start_error(WebhookConfig { queue: 0, ..valid.clone() });
    assert!(matches!(error, WebhookError::InvalidConfig { .. }));
    let error = start_error(WebhookConfig { timeout: Duration::ZERO, ..valid.clone() });
    assert!(matches!(error, WebhookError::InvalidConfig { .. }));
    assert!(matches!(start_error(valid), WebhookError::NoRuntime(_)), "outside a runtime");
}

#[test]
fn the_config_debug_output_leaves_header_values_out() {
    let config = WebhookConfig {
        url: "http://alerts/hook".to_owned(),
        headers: vec![("Authorization".to_owned(), "Bearer s3cr3t".to_owned())],
        ..WebhookConfig::default()
    };
    let debug = format!("{config:?}");
    assert!(debug.contains("Authorization") && !debug.contains("s3cr3t"), "{debug}");
}

#[test]
fn stats_serialize_as_json_objects() {
    let stats = WebhookStats {
        sent: 3,
        failed: 1,
        last_error: Some("HTTP status 400".to_owned()),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&stats).unwrap(),
        json!({ "sent": 3, "retries": 0, "failed": 1, "dropped": 0, "queued": 0, "last_error": "HTTP status 400" })
    );
}

/// An HTTPS server on a loopback port with a certificate (for `127.0.0.1` and `localhost`) from a CA
/// of its own, written to `<dir>/ca.pem`. Answers every request 200 and hands on its body.
async fn https_server(dir: &std::path::Path) -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "site ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake: nothing to serve.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(buf[end + 4..end + 4 + len].to_vec());
                    buf.drain(..end + 4 + len);
                    if tls.write_all(&response("200 OK", "", "{}")).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("https://127.0.0.1:{port}/hook"), rx)
}

#[tokio::test]
async fn https_bodies_arrive_when_the_servers_certificate_is_trusted_and_fail_when_it_is_not() {
    let dir = m2m_test::TempDir::new("webhook-https");
    let (url, mut bodies) = https_server(dir.path()).await;
    let trusting =
        Webhook::start(WebhookConfig { ca: Some(dir.path().join("ca.pem")), ..config(url.clone()) }).unwrap();
    assert!(trusting.send(json!({"alarm": "overheat"})));
    assert!(trusting.send(json!({"alarm": "cleared"})));
    let stats = until(&trusting, |s| s.sent == 2).await;
    assert_eq!((stats.failed, stats.retries), (0, 0));
    let first: serde_json::Value = serde_json::from_slice(&within(bodies.recv()).await.unwrap()).unwrap();
    assert_eq!(first, json!({"alarm": "overheat"}));

    // The public roots do not know the site's CA: the handshake fails, the body is a dead letter.
    let public = Webhook::start(WebhookConfig { max_retries: 0, ..config(url) }).unwrap();
    assert!(public.send(json!({"alarm": "nobody hears"})));
    let stats = until(&public, |s| s.failed == 1).await;
    assert_eq!(stats.sent, 0);
    let error = stats.last_error.unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");

    let missing = dir.path().join("nope.pem");
    let error = start_error(WebhookConfig { ca: Some(missing), ..config("https://127.0.0.1:1/".into()) });
    assert!(matches!(error, WebhookError::Tls(_)), "{error:?}");
    assert!(error.to_string().contains("cannot read the CA file"), "{error}");
}
