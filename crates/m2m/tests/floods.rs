//! Floods and slow peers against a real node (the built binary, in a process of its own): connection
//! floods, CONNECT floods with wrong passwords, half-sent packets, subscribers that never read, and a
//! large fan-out to slow subscribers. In each, a well-behaved client (an independent `rumqttc`
//! connection from 127.0.0.1) times its own QoS 1 messages' way back through the node before and during
//! the attack, and must keep a normal latency; the attackers connect from other loopback addresses
//! (127.0.0.2 and up), which the node limits like remote ones with `mqtt.limit_loopback = true`.
//!
//! The scenarios run one at a time (a lock), so that one's load does not count against another's
//! latency. Every attack loop is bounded in count and time.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::RunningNode;
use m2m_codec::{decode, encode, Packet, ProtocolVersion, QoS as CQoS, ReasonCode};
use m2m_test::{http, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The well-behaved client's messages during an attack: the median may be this many times the
/// median before it, plus [`SLACK`] (the attackers share the machine's two cores with the node).
const MEDIAN_FACTOR: u32 = 5;
const SLACK: Duration = Duration::from_millis(50);
/// No message of the well-behaved client may take longer than this during an attack.
const WORST: Duration = Duration::from_millis(500);

fn attacker(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn connect_packet(id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let mut connect = m2m_test::v5_connect(id);
    connect.protocol = ProtocolVersion::V311;
    connect.keep_alive = 0;
    if let Some((user, password)) = credentials {
        connect.username = Some(user.into());
        connect.password = Some(password.as_bytes().to_vec().into());
    }
    let mut wire = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V311, &mut wire).unwrap();
    wire.to_vec()
}

/// What a connection attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// CONNACK with this reason code (3.1.1 return codes as MQTT 5 reason codes).
    Answered(ReasonCode),
    /// Closed (or reset) before any CONNACK.
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// Reads the CONNACK of a connection (within `wait`).
async fn connack(stream: &mut TcpStream, wait: Duration) -> Outcome {
    let mut buf = BytesMut::new();
    let read = tokio::time::timeout(wait, async {
        loop {
            if let Ok(Some(Packet::ConnAck(ack))) = decode(&mut buf, ProtocolVersion::V311, 1 << 16) {
                return Outcome::Answered(ack.reason_code);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        }
    })
    .await;
    read.unwrap_or(Outcome::Silent)
}

/// Connects from `from`, sends CONNECT and reads the answer.
async fn attempt(
    from: IpAddr,
    to: SocketAddr,
    id: &str,
    credentials: Option<(&str, &str)>,
) -> (Outcome, Option<TcpStream>) {
    let Ok(mut stream) = connect_from(from, to).await else { return (Outcome::Closed, None) };
    if stream.write_all(&connect_packet(id, credentials)).await.is_err() {
        return (Outcome::Closed, None);
    }
    let outcome = connack(&mut stream, Duration::from_secs(10)).await;
    (outcome, Some(stream))
}

/// A well-behaved client: `rumqttc` (MQTT 3.1.1) from 127.0.0.1, subscribed at QoS 1 to a topic of
/// its own, timing the way back of each QoS 1 message it publishes there.
struct Probe {
    client: AsyncClient,
    topic: String,
    seen: mpsc::UnboundedReceiver<Result<u64, String>>,
    next: u64,
}

impl Probe {
    async fn start(addr: SocketAddr, id: &str, credentials: Option<(&str, &str)>) -> Probe {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        let (tx, seen) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let topic = format!("probe/{id}");
        let sub = (client.clone(), topic.clone());
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(RPacket::ConnAck(_))) => {
                        sub.0.subscribe(&sub.1, QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(RPacket::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(RPacket::Publish(p))) => {
                        let n = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                        if tx.send(Ok(n)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The probe must never lose its connection while it measures (the node stops at
                    // the end of each test).
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed).await.unwrap().unwrap();
        Probe { client, topic, seen, next: 0 }
    }

    /// Sends `n` messages one after the other, `gap` apart, and returns how long each took to come
    /// back; fails the test if one does not within 5 s.
    async fn round_trips(&mut self, n: usize, gap: Duration) -> Vec<Duration> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            self.next += 1;
            let sent = Instant::now();
            self.client.publish(&self.topic, QoS::AtLeastOnce, false, self.next.to_string()).await.unwrap();
            loop {
                let got = tokio::time::timeout(Duration::from_secs(5), self.seen.recv()).await;
                let got =
                    got.unwrap_or_else(|_| panic!("message {} did not come back within 5 s", self.next));
                let got = got.unwrap_or_else(|| panic!("the well-behaved client's connection task ended"));
                if got.unwrap_or_else(|e| panic!("the well-behaved client lost its connection: {e}"))
                    == self.next
                {
                    break;
                }
            }
            times.push(sent.elapsed());
            tokio::time::sleep(gap).await;
        }
        times
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// The well-behaved client kept a normal latency: its median during the attack within
/// [`MEDIAN_FACTOR`] times (plus [`SLACK`]) its median before, and no message over [`WORST`].
fn assert_normal(before: &[Duration], during: &[Duration], what: &str) {
    let (b, d) = (median(before), median(during));
    let worst = during.iter().max().copied().unwrap_or_default();
    eprintln!("{what}: well-behaved client's round trip median {b:?} before, {d:?} during (worst {worst:?})");
    assert!(d <= b * MEDIAN_FACTOR + SLACK, "{what}: median {d:?} during the attack, {b:?} before");
    assert!(worst <= WORST, "{what}: a message took {worst:?} during the attack");
}

/// The value of an unlabelled metric on the node's `/metrics`.
async fn metric(node: &RunningNode, name: &str) -> f64 {
    let metrics = http(node.api, "GET", "/metrics", &[], None).await.text();
    let line =
        metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The node's resident memory, in MiB.
fn rss_mib(node: &RunningNode) -> u64 {
    let pid = node.child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// One scenario's node (`[mqtt]` settings `mqtt` besides `limit_loopback`; further sections may
/// follow them), its devices (`id`, `password`; the first is the probe's, if any) and the probe with
/// its round trips before the attack. Holds the lock that runs scenarios one at a time.
struct Scenario {
    node: RunningNode,
    probe: Probe,
    before: Vec<Duration>,
    _dir: TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn scenario(name: &str, mqtt: &str, devices: &[(&str, &str)]) -> Scenario {
    let serial = SERIAL.lock().await;
    let dir = TempDir::new(name);
    let node = RunningNode::with_config(dir.path(), &format!("[mqtt]\nlimit_loopback = true\n{mqtt}")).await;
    for (id, password) in devices {
        let body = format!(r#"{{"id": "{id}", "password": "{password}", "rules": ["allow both probe/%u"]}}"#);
        let reply =
            http(node.api, "POST", "/api/v1/devices", &[], Some(("application/json", body.as_bytes()))).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let mut probe = Probe::start(node.mqtt, "probe", devices.first().copied()).await;
    let before = probe.round_trips(30, Duration::from_millis(10)).await;
    Scenario { node, probe, before, _dir: dir, _serial: serial }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_held_to_its_share_and_rate_while_others_are_served() {
    let config =
        "max_connections_per_address = 30\nconnect_rate_per_address = 20\nconnect_burst_per_address = 200\n";
    let mut s = scenario("flood-conns", config, &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);

    // Phase 1: one address opens connections as fast as it can for 2 s and keeps every one it gets.
    let to = node.mqtt;
    let flood = tokio::spawn(async move {
        let (mut held, mut turned, mut n) = (Vec::new(), 0, 0);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && n < 3000 {
            n += 1;
            match attempt(attacker(2), to, &format!("flood-{n}"), None).await {
                (Outcome::Answered(ReasonCode::SUCCESS), Some(s)) => held.push(s),
                (Outcome::Closed, _) => turned += 1,
                other => panic!("unexpected answer to a flood connection: {:?}", other.0),
            }
        }
        (held, turned)
    });
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    // Meanwhile another address is not held back by the first one's share.
    let (other, _kept) = attempt(attacker(3), to, "neighbour", None).await;
    assert_eq!(other, Outcome::Answered(ReasonCode::SUCCESS));
    let (held, turned) = flood.await.unwrap();
    eprintln!("held {} connections, {turned} turned away", held.len());
    assert_eq!(held.len(), 30, "the address holds exactly its share of connections");
    assert!(turned > 0);
    assert_normal(before, &during, "connection flood");

    // Phase 2: with its connections closed, it may reconnect only as fast as its rate (20/s, after a
    // burst of 200).
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (mut accepted, mut n) = (0u32, 0);
    while started.elapsed() < Duration::from_secs(2) && n < 5000 {
        n += 1;
        if let (Outcome::Answered(ReasonCode::SUCCESS), _) =
            attempt(attacker(2), to, &format!("again-{n}"), None).await
        {
            accepted += 1;
        }
    }
    // The bucket refilled while the connections were held: 200 tokens.
    let allowed = 200.0 + 20.0 * (started.elapsed().as_secs_f64() + 0.3);
    eprintln!("{accepted} of {n} reconnections accepted in {:?} (at most {allowed:.0})", started.elapsed());
    assert!(f64::from(accepted) <= allowed, "{accepted} accepted, more than the rate allows");
    assert!(accepted >= 150, "the burst was not granted: {accepted}");
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_wide_accept_rate_paces_a_flood_from_many_addresses_without_refusing_it() {
    let mut s = scenario("accept-rate", "accept_rate = 50\n", &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;
    // 100 connections from 10 addresses, 10 at a time: each is accepted, but no faster than 50 a second.
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut all = Vec::new();
        for a in 0..10u8 {
            all.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..10 {
                    answers.push(attempt(attacker(70 + a), to, &format!("paced-{a}-{n}"), None).await.0);
                }
                answers
            }));
        }
        let mut answers = Vec::new();
        for a in all {
            answers.extend(a.await.unwrap());
        }
        answers
    });
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    let answers = tokio::time::timeout(Duration::from_secs(30), flood).await.unwrap().unwrap();
    let took = started.elapsed();
    eprintln!("100 connections accepted in {took:?} at 50 a second");
    assert!(answers.iter().all(|a| *a == Outcome::Answered(ReasonCode::SUCCESS)), "{answers:?}");
    assert!(took >= Duration::from_millis(1900), "100 connections at 50/s took only {took:?}");
    assert_normal(before, &during, "paced accepts");
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_from_many_addresses_neither_starves_good_clients_nor_eats_memory() {
    let devices = [("probe", "probe-pw"), ("victim", "right"), ("late", "late-pw")];
    let mut s = scenario("flood-auth", "", &devices).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let rss_before = rss_mib(node);

    // 20 addresses, each with 8 connections at once trying wrong passwords 15 times in all (under
    // the threshold of the detector that bans an address): 300 password verifications of ~20 MiB
    // each, which the node makes wait for a verification slot instead of running them all at once.
    let to = node.mqtt;
    let mut attackers = Vec::new();
    for a in 0..20u8 {
        for c in 0..8u32 {
            attackers.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for k in 0..2u32 {
                    if c * 2 + k >= 15 {
                        break;
                    }
                    let id = format!("guess-{a}-{c}-{k}");
                    let (outcome, _) =
                        attempt(attacker(10 + a), to, &id, Some(("victim", &format!("wrong-{k}")))).await;
                    outcomes.push(outcome);
                }
                outcomes
            }));
        }
    }
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    let rss_during = rss_mib(node);
    let mut outcomes = Vec::new();
    for a in attackers {
        outcomes.extend(tokio::time::timeout(Duration::from_secs(60), a).await.unwrap().unwrap());
    }
    let refused =
        outcomes.iter().filter(|o| **o == Outcome::Answered(ReasonCode::BAD_USER_NAME_OR_PASSWORD)).count();
    let busy = outcomes.iter().filter(|o| **o == Outcome::Answered(ReasonCode::SERVER_UNAVAILABLE)).count();
    eprintln!("{} wrong passwords: {refused} refused, {busy} told the server is busy; RSS {rss_before} -> {rss_during} MiB", outcomes.len());
    assert_eq!(refused + busy, outcomes.len(), "every guess is refused: {outcomes:?}");
    assert!(refused > 0);
    assert!(rss_during < rss_before + 200, "memory grew from {rss_before} to {rss_during} MiB");
    assert_normal(before, &during, "wrong-password flood");

    // A good client that was never verified before gets in once the flood is over.
    let (late, _kept) = attempt(attacker(1), to, "late", Some(("late", "late-pw"))).await;
    assert_eq!(late, Outcome::Answered(ReasonCode::SUCCESS));
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_that_wait_too_long_for_a_password_check_are_told_the_server_is_busy() {
    // One check at a time, a CONNECT waits 200 ms for its turn at most.
    let config = "password_checks = 1\npassword_check_wait_ms = 200\n";
    let devices = [("probe", "probe-pw"), ("victim", "right"), ("late", "late-pw")];
    let mut s = scenario("busy-auth", config, &devices).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;
    let rejected_before = metric(node, "m2m_connections_rejected_total").await;

    // 80 wrong passwords at once from 8 addresses (10 each, under the ban threshold): about 20 ms
    // of argon2 each, one at a time, so most cannot have their turn within 200 ms.
    let mut guesses = Vec::new();
    for a in 0..8u8 {
        for k in 0..10u32 {
            guesses.push(tokio::spawn(async move {
                let started = Instant::now();
                let id = format!("guess-{a}-{k}");
                let (outcome, _) = attempt(attacker(50 + a), to, &id, Some(("victim", "wrong"))).await;
                (outcome, started.elapsed())
            }));
        }
    }
    let during = probe.round_trips(30, Duration::from_millis(10)).await;
    let mut outcomes = Vec::new();
    for g in guesses {
        outcomes.push(tokio::time::timeout(Duration::from_secs(30), g).await.unwrap().unwrap());
    }
    let took = |code| -> Vec<Duration> {
        outcomes.iter().filter(|(o, _)| *o == Outcome::Answered(code)).map(|(_, t)| *t).collect()
    };
    let (wrong, busy) = (took(ReasonCode::BAD_USER_NAME_OR_PASSWORD), took(ReasonCode::SERVER_UNAVAILABLE));
    let (slowest_busy, wrong, busy) = (busy.iter().max().copied(), wrong.len(), busy.len());
    eprintln!("80 wrong passwords: {wrong} checked and refused, {busy} told busy (slowest {slowest_busy:?})");
    assert_eq!(wrong + busy, 80, "each is refused one way or the other: {outcomes:?}");
    assert!(wrong >= 1 && busy >= 40, "{wrong} checked, {busy} busy");
    // Told busy after the wait, not kept for the queue's length (80 x 20 ms).
    assert!(slowest_busy.is_some_and(|t| t < Duration::from_millis(1500)), "{slowest_busy:?}");
    // Refusals are counted; the probe, whose password was verified before, never queued.
    let rejected = metric(node, "m2m_connections_rejected_total").await - rejected_before;
    assert!(rejected >= 80.0, "{rejected} rejections counted");
    assert_normal(before, &during, "busy password checks");

    // Once the guesses are over, a device never verified before gets its turn.
    let (late, _kept) = attempt(attacker(1), to, "late", Some(("late", "late-pw"))).await;
    assert_eq!(late, Outcome::Answered(ReasonCode::SUCCESS));
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_packets_cannot_hold_connections_or_handshake_slots() {
    let config = "connect_timeout_secs = 2\npacket_timeout_secs = 2\nmax_pending_connects = 100\n";
    let mut s = scenario("slowloris", config, &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;

    // 100 connections send half a CONNECT and stall: they take every handshake slot...
    let connect = connect_packet("slow", None);
    let mut stalled = Vec::new();
    for a in 0..4u8 {
        for _ in 0..25 {
            let mut s = connect_from(attacker(20 + a), to).await.unwrap();
            s.write_all(&connect[..connect.len() / 2]).await.unwrap();
            stalled.push(s);
        }
    }
    // ...and one more connection after them waits for a slot, then gets in as the stalled ones are
    // closed at the CONNECT deadline.
    let started = Instant::now();
    let (late, _kept) = attempt(attacker(30), to, "patient", None).await;
    assert_eq!(late, Outcome::Answered(ReasonCode::SUCCESS));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6), "waited {waited:?}");
    for mut s in stalled {
        assert_eq!(
            connack(&mut s, Duration::from_secs(5)).await,
            Outcome::Closed,
            "a stalled CONNECT is closed"
        );
    }

    // After CONNECT, with keep-alive off: the first bytes of a PUBLISH, then nothing.
    let mut connected = Vec::new();
    for n in 0..50 {
        let (outcome, stream) = attempt(attacker(40), to, &format!("stall-{n}"), None).await;
        assert_eq!(outcome, Outcome::Answered(ReasonCode::SUCCESS));
        let mut s = stream.unwrap();
        // PUBLISH QoS 0, remaining length 100, and 3 bytes of it.
        s.write_all(&[0x30, 100, 0, 5, b't']).await.unwrap();
        connected.push(s);
    }
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    let started = Instant::now();
    for mut s in connected {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a connection with a half-sent packet was not closed");
    }
    eprintln!("half-sent packets closed {:?} after the probe's round trips", started.elapsed());
    assert_normal(before, &during, "half-sent packets");
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_packets_left_half_sent_are_held_to_the_memory_budget() {
    let config = "packet_timeout_secs = 5\nmax_packet_size = 4194304\n[node]\nmemory_budget = \"8MiB\"\n";
    let mut s = scenario("big-slowloris", config, &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;

    // 16 connections each begin a 3 MiB PUBLISH, send 1 MiB of it and stall: 16 MiB of buffers
    // wanted, 8 MiB of budget.
    let mut header = BytesMut::new();
    encode(
        &Packet::Publish(m2m_test::raw_publish("big", CQoS::AtLeastOnce, Some(1), &[0; 3 << 20])),
        ProtocolVersion::V311,
        &mut header,
    )
    .unwrap();
    let part = header[..1 << 20].to_vec();
    let mut stalled = Vec::new();
    for n in 0..16u8 {
        let (outcome, stream) = attempt(attacker(60 + n % 4), to, &format!("big-{n}"), None).await;
        assert_eq!(outcome, Outcome::Answered(ReasonCode::SUCCESS));
        let mut stream = stream.unwrap();
        // A connection the node has closed may refuse the rest of the bytes: that is the point.
        let _ = stream.write_all(&part).await;
        stalled.push(stream);
    }
    let during = probe.round_trips(30, Duration::from_millis(10)).await;
    let (queued, refused) =
        (metric(node, "m2m_memory_queued_bytes").await, metric(node, "m2m_memory_refused_total").await);
    // Those that found no room were closed at once, the others are held until the packet deadline.
    let mut closed_at_once = 0;
    let mut held = Vec::new();
    for mut stream in stalled {
        if connack(&mut stream, Duration::from_millis(100)).await == Outcome::Closed {
            closed_at_once += 1;
        } else {
            held.push(stream);
        }
    }
    eprintln!("16 half-sent 3 MiB packets: {closed_at_once} closed at once, {} held; {queued} bytes charged, {refused} charges refused", held.len());
    assert!(queued <= f64::from(8u32 << 20), "{queued} bytes charged, over the budget");
    assert!(
        refused > 0.0 && closed_at_once >= 6 && !held.is_empty(),
        "{closed_at_once} closed, {} held",
        held.len()
    );
    assert_normal(before, &during, "large half-sent packets");

    // At the deadline the rest are closed and their buffers given back: a large packet fits again.
    for mut stream in held {
        assert_eq!(connack(&mut stream, Duration::from_secs(8)).await, Outcome::Closed);
    }
    charged_below(node, 1 << 20, "the stalled buffers' charges were not given back").await;
    let mut good = m2m_test::raw_connect_ok(to, m2m_test::v5_connect("good-big")).await;
    good.send(&Packet::Publish(m2m_test::raw_publish("big", CQoS::AtLeastOnce, Some(7), &[1; 3 << 20])))
        .await;
    assert!(matches!(good.recv().await, Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::SUCCESS));
    // Read, stored and written to the history: nothing of it stays charged.
    charged_below(node, 64 << 10, "the large packet's charge was not given back").await;
    s.node.stop().await;
}

/// Waits (up to 5 s) until the node's memory budget holds less than `bytes`.
async fn charged_below(node: &RunningNode, bytes: u32, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let charged = metric(node, "m2m_memory_queued_bytes").await;
        if charged < f64::from(bytes) {
            return;
        }
        assert!(Instant::now() < deadline, "{failure}: {charged} bytes charged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw MQTT 3.1.1 client that subscribes to `filter` at QoS 1 and then never reads.
async fn never_reader(from: IpAddr, to: SocketAddr, id: &str, filter: &str) -> TcpStream {
    let (outcome, stream) = attempt(from, to, id, None).await;
    assert_eq!(outcome, Outcome::Answered(ReasonCode::SUCCESS));
    let mut stream = stream.unwrap();
    let subscribe = m2m_codec::Subscribe {
        packet_id: m2m_test::pid(1),
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![(
            filter.into(),
            m2m_codec::SubscriptionOptions { qos: CQoS::AtLeastOnce, ..Default::default() },
        )],
    };
    let mut wire = BytesMut::new();
    encode(&Packet::Subscribe(subscribe), ProtocolVersion::V311, &mut wire).unwrap();
    stream.write_all(&wire).await.unwrap();
    stream
}

/// A `rumqttc` publisher (`id`) that sends `messages` as fast as it can (100 in flight) and ends once
/// every QoS 1 one is acknowledged (within 2 minutes).
fn publish_all(
    to: SocketAddr,
    id: &str,
    messages: Vec<(String, QoS, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    let mut options = MqttOptions::new(id, to.ip().to_string(), to.port());
    options.set_keep_alive(Duration::from_secs(30)).set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 256);
    let acks = messages.iter().filter(|(_, qos, _)| *qos != QoS::AtMostOnce).count();
    tokio::spawn(async move {
        let driver = tokio::spawn(async move {
            let mut acked = 0;
            while acked < acks {
                if let Event::Incoming(RPacket::PubAck(_)) = events.poll().await.unwrap() {
                    acked += 1;
                }
            }
        });
        for (topic, qos, payload) in messages {
            client.publish(topic, qos, false, payload).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(120), driver).await.unwrap().unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_hit_their_limits_and_slow_no_one_else() {
    let config = "write_timeout_secs = 3\nmax_queued = 200\n[node]\nmemory_budget = \"32MiB\"\n";
    let mut s = scenario("never-read", config, &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;
    let mut stuck = Vec::new();
    for n in 0..20 {
        stuck.push(never_reader(attacker(50), to, &format!("deaf-{n}"), "busy/#").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_mib(node);

    // A publisher sends 4 KiB messages to them as fast as it can: 20 000 at QoS 0, then 2 000 at
    // QoS 1 (the node throttles it while their queues are full, for at most a second at a time).
    let messages = (0..22_000u32).map(|n| {
        let qos = if n < 20_000 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        (format!("busy/{}", n % 10), qos, vec![b'x'; 4096])
    });
    let publisher = publish_all(to, "busy-publisher", messages.collect());
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    tokio::time::timeout(Duration::from_secs(150), publisher).await.unwrap().unwrap();
    let rss_during = rss_mib(node);
    eprintln!("RSS {rss_before} -> {rss_during} MiB with 20 subscribers not reading");
    assert!(rss_during < rss_before + 100, "memory grew from {rss_before} to {rss_during} MiB");
    // The budget (32 MiB) was reached: QoS 0 deliveries and history records were refused.
    let refused = metric(node, "m2m_memory_refused_total").await;
    let budget = metric(node, "m2m_memory_budget_bytes").await;
    eprintln!("memory budget {budget} bytes, {refused} messages refused");
    assert_eq!(budget, f64::from(32u32 << 20));
    assert!(refused > 0.0, "the budget was never reached");
    assert_normal(before, &during, "subscribers that never read");

    // Their writes block: the node drops them at the write timeout.
    let started = Instant::now();
    for mut s in stuck {
        let mut sink = vec![0u8; 1 << 16];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a subscriber that never reads was not disconnected");
    }
    eprintln!("never-reading subscribers closed within {:?}", started.elapsed());
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_to_slow_subscribers_reaches_the_fast_ones_and_keeps_latency() {
    let mut s = scenario("fan-out", "write_timeout_secs = 5\n", &[]).await;
    let (node, probe, before) = (&s.node, &mut s.probe, &s.before);
    let to = node.mqtt;
    // 300 subscribers that never read, and 20 that do (rumqttc, counting what they get).
    let mut stuck = Vec::new();
    for n in 0..300 {
        stuck.push(never_reader(attacker(60 + (n % 3) as u8), to, &format!("slow-{n}"), "fan/#").await);
    }
    let (count_tx, mut counts) = mpsc::unbounded_channel::<u32>();
    let mut readers = Vec::new();
    for n in 0..20 {
        let mut options = MqttOptions::new(format!("fast-{n}"), to.ip().to_string(), to.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        let tx = count_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0u32;
            loop {
                match tokio::time::timeout(Duration::from_secs(3), events.poll()).await {
                    Ok(Ok(Event::Incoming(RPacket::ConnAck(_)))) => {
                        client.subscribe("fan/#", QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Ok(Event::Incoming(RPacket::SubAck(_)))) => tx.send(0).unwrap(),
                    Ok(Ok(Event::Incoming(RPacket::Publish(_)))) => got += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("a fast subscriber lost its connection: {e}"),
                    // Quiet for 3 s: the publisher is done.
                    Err(_) if got > 0 => return got,
                    Err(_) => {}
                }
            }
        }));
    }
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(10), counts.recv()).await.unwrap();
    }
    // 1 000 QoS 1 messages of 1 KiB to 320 subscribers.
    let messages = (0..1000u32).map(|n| (format!("fan/{}", n % 7), QoS::AtLeastOnce, vec![b'f'; 1024]));
    let publisher = publish_all(to, "fan-publisher", messages.collect());
    let during = probe.round_trips(60, Duration::from_millis(20)).await;
    tokio::time::timeout(Duration::from_secs(150), publisher).await.unwrap().unwrap();
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(30), r).await.unwrap().unwrap();
        assert_eq!(got, 1000, "a subscriber that reads gets every QoS 1 message");
    }
    assert_normal(before, &during, "fan-out to slow subscribers");
    drop(stuck);
    s.node.stop().await;
}
