//! `m2m bench` as a user runs it: small, bounded loads against a node (the built binary), a fake
//! broker written here that counts the CONNECTs it is sent, and the tool's own sink; the figures are
//! read from the `--json` output and must be exact.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{m2m, run, text, RunningNode};
use m2m_test::TempDir;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A node (the built binary) without the publish budget that would slow the load generators down.
async fn start_node(dir: &TempDir) -> RunningNode {
    RunningNode::with_config(dir.path(), "[detectors.publish_rate]\nenabled = false\n").await
}

/// Runs `m2m bench <args> --json`, expects success, and returns its report.
async fn bench(args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run(m2m(&all)).await;
    assert!(out.status.success(), "{args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// Runs `m2m bench <args>`, expects a failure, and returns its standard error.
async fn bench_fails(args: &[&str]) -> String {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let out = run(m2m(&all)).await;
    assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

#[tokio::test]
async fn fan_in_at_qos_1_and_2_receives_every_message_and_counts_them_exactly() {
    let dir = TempDir::new("bench-fan-in");
    let node = start_node(&dir).await;
    let addr = node.mqtt.to_string();
    for qos in ["1", "2"] {
        let args = [
            "fan-in",
            "--addr",
            &addr,
            "--qos",
            qos,
            "--publishers",
            "3",
            "--count",
            "400",
            "--window",
            "32",
        ];
        let r = bench(&args).await;
        assert_eq!(r["scenario"], "fan-in");
        assert_eq!(r["qos"].as_u64(), Some(qos.parse().unwrap()));
        assert_eq!((r["sent"].as_u64(), r["received"].as_u64()), (Some(1200), Some(1200)), "qos {qos}: {r}");
        assert_eq!(r["expected"].as_u64(), Some(1200));
        assert_eq!(r["errors"].as_u64(), Some(0), "qos {qos}: {r}");
        assert_eq!(
            (r["publishers"].as_u64(), r["subscribers"].as_u64(), r["clients"].as_u64()),
            (Some(3), Some(1), Some(4))
        );
        // Every message's acknowledgement flow completed: PUBACK at QoS 1, PUBCOMP at QoS 2.
        assert_eq!(r["latency"]["kind"], "ack");
        assert_eq!(r["latency"]["samples"].as_u64(), Some(1200), "qos {qos}: {r}");
        assert!(r["rate"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn fan_out_at_qos_2_delivers_each_message_to_every_subscriber() {
    let dir = TempDir::new("bench-fan-out");
    let node = start_node(&dir).await;
    let addr = node.mqtt.to_string();
    let r = bench(&["fan-out", "--addr", &addr, "--qos", "2", "--subscribers", "3", "--count", "300"]).await;
    assert_eq!((r["sent"].as_u64(), r["received"].as_u64()), (Some(300), Some(900)), "{r}");
    assert_eq!((r["errors"].as_u64(), r["rate_unit"].as_str()), (Some(0), Some("deliveries/s")));
}

#[tokio::test]
async fn latency_at_qos_2_measures_every_message_one_way() {
    let dir = TempDir::new("bench-latency");
    let node = start_node(&dir).await;
    let addr = node.mqtt.to_string();
    let r = bench(&["latency", "--addr", &addr, "--qos", "2", "--rate", "500", "--count", "250"]).await;
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64(), r["errors"].as_u64()),
        (Some(250), Some(250), Some(0))
    );
    assert_eq!(
        (r["latency"]["kind"].as_str(), r["latency"]["samples"].as_u64()),
        (Some("one-way"), Some(250))
    );
    let l = &r["latency"];
    assert!(
        l["p50_us"].as_f64() <= l["p99_us"].as_f64() && l["p99_us"].as_f64() <= l["max_us"].as_f64(),
        "{r}"
    );
}

/// A broker that only answers CONNECT with CONNACK (3.1.1 §3.2), counting the CONNECT packets it
/// reads, and then holds the connection until the client closes it.
async fn counting_broker() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = Arc::new(AtomicU64::new(0));
    let counter = connects.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if stream.read_exact(&mut first).await.is_ok() && first[0] == 0x10 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut rest = [0u8; 256];
                    // The CONNECT's body arrives in one segment on loopback; its bytes are not needed.
                    let _ = stream.read(&mut rest).await;
                    let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                }
            });
        }
    });
    (addr, connects)
}

#[tokio::test]
async fn storm_opens_exactly_the_connections_asked_for() {
    let (addr, connects) = counting_broker().await;
    let r = bench(&["storm", "--addr", &addr.to_string(), "--count", "300", "--concurrency", "32"]).await;
    assert_eq!(connects.load(Ordering::SeqCst), 300);
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64(), r["errors"].as_u64()),
        (Some(300), Some(300), Some(0))
    );
    assert_eq!(
        (r["latency"]["kind"].as_str(), r["latency"]["samples"].as_u64()),
        (Some("connack"), Some(300))
    );

    let dir = TempDir::new("bench-storm");
    let node = start_node(&dir).await;
    let r = bench(&["storm", "--addr", &node.mqtt.to_string(), "--count", "200", "--label", "m2m"]).await;
    assert_eq!(
        (r["received"].as_u64(), r["errors"].as_u64(), r["label"].as_str()),
        (Some(200), Some(0), Some("m2m"))
    );
    assert_eq!(r["rate_unit"], "conn/s");
}

#[tokio::test]
async fn the_sink_counts_exactly_what_was_sent() {
    let r = bench(&["sink", "--connections", "3", "--count", "100000"]).await;
    assert_eq!((r["sent"].as_u64(), r["received"].as_u64()), (Some(300_000), Some(300_000)), "{r}");
    assert_eq!(
        (r["errors"].as_u64(), r["qos"].as_u64(), r["payload_bytes"].as_u64()),
        (Some(0), Some(0), Some(64))
    );
    // A timed run checks by itself that the sink counted everything the publishers wrote.
    let r = bench(&["sink", "--connections", "2", "--duration", "1", "--payload", "200"]).await;
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert!(r["received"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn saved_reports_print_as_one_table() {
    let dir = TempDir::new("bench-table");
    let r = bench(&["sink", "--connections", "1", "--count", "1000"]).await;
    let file = dir.path().join("reports.jsonl");
    std::fs::write(&file, format!("{r}\n{r}\n")).unwrap();
    let out = run(m2m(&["bench", "table", "--markdown", file.to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.starts_with("| scenario | broker | qos |"), "{table}");
    assert!(table.contains("| sink | built-in sink | 0 | 64 B | 1 | 1 000 | 1 000 |"), "{table}");
    // As many cells in every row as there are columns.
    let cells: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
    assert!(cells.iter().all(|&n| n == cells[0]), "{table}");
    assert!(
        table.lines().next().unwrap().contains("| latency | p50 | p99 | max | memory/conn | errors |"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_with_a_clear_error() {
    let err = bench_fails(&["fan-in", "--qos", "3"]).await;
    assert!(err.contains("--qos") && err.contains("0..=2"), "{err}");
    let err = bench_fails(&["fan-in", "--publishers", "0", "--addr", "127.0.0.1:9"]).await;
    assert!(err.contains("--publishers and --subscribers must be at least 1"), "{err}");
    let err = bench_fails(&["storm", "--count", "0", "--addr", "127.0.0.1:9"]).await;
    assert!(err.contains("--count and --concurrency must be at least 1"), "{err}");
    let err = bench_fails(&["fan-in", "--count", "0", "--addr", "127.0.0.1:9"]).await;
    assert!(err.contains("--count must be at least 1"), "{err}");
    let err = bench_fails(&["latency", "--payload", "8", "--addr", "127.0.0.1:9"]).await;
    assert!(err.contains("at least 16 bytes"), "{err}");
    let err = bench_fails(&["fan-in", "--window", "0", "--addr", "127.0.0.1:9"]).await;
    assert!(err.contains("--window"), "{err}");
    // Nothing listens on the discard port: the broker cannot be reached.
    let err = bench_fails(&["fan-in", "--addr", "127.0.0.1:9", "--count", "1"]).await;
    assert!(err.contains("cannot connect to 127.0.0.1:9"), "{err}");
}
