//! Interoperability with the real `mosquitto_pub` and `mosquitto_sub` (Debian package
//! `mosquitto-clients`), over MQTT 3.1.1 and 5.0, run as child processes against a node on
//! `127.0.0.1:0`.
//!
//! The binaries are required: a missing one fails the test with a message saying what to install
//! (`scripts/test.sh` installs it). Every child is bounded twice: `-W` makes `mosquitto_sub` give up
//! by itself, and each wait has a deadline after which the child is killed and the test fails.

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::Duration;

use m2m_test::{within, TestBroker};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// `-V` values of the two protocol versions.
const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];

/// How long any child may run before it is killed and the test fails.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// `-W` for `mosquitto_sub`: it stops by itself after this many seconds, well after a passing test.
const SUB_TIMEOUT_SECS: &str = "8";

/// A `mosquitto_pub` / `mosquitto_sub` command against `broker` with protocol `version`.
fn mosquitto(program: &str, broker: &TestBroker, version: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-h", "127.0.0.1", "-p", &broker.addr.port().to_string(), "-V", version])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command, what: &str) -> Child {
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{what}: the mosquitto client binaries are missing ({e}); install the Debian package \
             mosquitto-clients (`apt-get install mosquitto-clients`, as scripts/test.sh does)"
        ),
        Err(e) => panic!("{what}: cannot start: {e}"),
    }
}

/// A `mosquitto_sub` that prints each message with `format` and exits after `count` messages.
fn subscriber(broker: &TestBroker, version: &str, id: &str, filter: &str, count: u32, format: &str) -> Child {
    let mut cmd = mosquitto("mosquitto_sub", broker, version);
    cmd.args([
        "-i",
        id,
        "-t",
        filter,
        "-q",
        "2",
        "-C",
        &count.to_string(),
        "-W",
        SUB_TIMEOUT_SECS,
        "-F",
        format,
    ]);
    spawn(cmd, &format!("mosquitto_sub {id}"))
}

/// Waits for a child to exit (killing it after [`CHILD_LIMIT`]) and returns its output.
async fn finish(child: Child, what: &str) -> Output {
    match tokio::time::timeout(CHILD_LIMIT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: cannot wait: {e}")),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => panic!("{what} did not finish within {CHILD_LIMIT:?}; killed"),
    }
}

/// Waits for a child that must succeed and returns its stdout as lines.
async fn success_lines(child: Child, what: &str) -> Vec<String> {
    let output = finish(child, what).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed with {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Runs `mosquitto_pub` with `args` and waits for it to succeed.
async fn publish(broker: &TestBroker, version: &str, args: &[&str]) {
    let mut cmd = mosquitto("mosquitto_pub", broker, version);
    cmd.args(args);
    let what = format!("mosquitto_pub {}", args.join(" "));
    success_lines(spawn(cmd, &what), &what).await;
}

/// Waits until the node holds at least `n` subscriptions, so a publish cannot overtake a subscriber
/// that is still starting. Fails early if a subscriber exits instead.
async fn wait_for_subscriptions(broker: &TestBroker, n: usize, children: &mut [&mut Child]) {
    within(async {
        loop {
            if broker.router.stats().await.expect("router stats").subscriptions >= n {
                return;
            }
            for child in children.iter_mut() {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("a mosquitto_sub exited with {status} before subscribing");
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until exactly `n` clients are online.
async fn wait_for_online(broker: &TestBroker, n: usize) {
    within(async {
        while broker.router.stats().await.expect("router stats").online != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn mosquitto_pub_reaches_mosquitto_sub_at_qos_0_1_and_2_over_3_1_1_and_5() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let filter = format!("interop/{version}/#");
        let mut sub = subscriber(&broker, version, &format!("sub-{version}"), &filter, 3, "%t|%q|%r|%p");
        wait_for_subscriptions(&broker, 1, &mut [&mut sub]).await;
        let mut expected = BTreeSet::new();
        for qos in ["0", "1", "2"] {
            let topic = format!("interop/{version}/q{qos}");
            let payload = format!("payload at qos {qos} over {version}");
            publish(
                &broker,
                version,
                &["-i", &format!("pub-{version}-{qos}"), "-t", &topic, "-q", qos, "-m", &payload],
            )
            .await;
            expected.insert(format!("{topic}|{qos}|0|{payload}"));
        }
        // QoS 0 publishes from separate processes may arrive in any order: compare as sets.
        let got: BTreeSet<String> =
            success_lines(sub, &format!("mosquitto_sub over {version}")).await.into_iter().collect();
        assert_eq!(got, expected, "over {version}");
        broker.stop().await;
    }
}

#[tokio::test]
async fn a_retained_message_from_mosquitto_pub_reaches_a_later_mosquitto_sub() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let topic = format!("interop/retained/{version}");
        // QoS 1: mosquitto_pub exits only after PUBACK, so the message is stored by then.
        publish(&broker, version, &["-i", "retainer", "-t", &topic, "-q", "1", "-r", "-m", "first"]).await;
        publish(&broker, version, &["-i", "retainer", "-t", &topic, "-q", "1", "-r", "-m", "kept"]).await;
        let sub = subscriber(&broker, version, "late", &topic, 1, "%t|%r|%p");
        let lines = success_lines(sub, "mosquitto_sub -C 1").await;
        assert_eq!(
            lines,
            [format!("{topic}|1|kept")],
            "the newer retained message, flagged retained ({version})"
        );
        broker.stop().await;
    }
}

#[tokio::test]
async fn a_killed_mosquitto_sub_has_its_will_published() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let will_topic = format!("interop/will/{version}");
        let mut watcher = subscriber(&broker, version, "watcher", &will_topic, 1, "%t|%q|%p");
        let mut cmd = mosquitto("mosquitto_sub", &broker, version);
        cmd.args(["-i", "doomed", "-t", "interop/anything", "-W", SUB_TIMEOUT_SECS]);
        cmd.args(["--will-topic", &will_topic, "--will-payload", "doomed is gone", "--will-qos", "1"]);
        let mut doomed = spawn(cmd, "mosquitto_sub with a will");
        wait_for_subscriptions(&broker, 2, &mut [&mut watcher, &mut doomed]).await;

        within(doomed.kill()).await.expect("kill mosquitto_sub");
        let lines = success_lines(watcher, "will watcher").await;
        assert_eq!(lines, [format!("{will_topic}|1|doomed is gone")], "over {version}");
        broker.stop().await;
    }
}

#[tokio::test]
async fn a_clean_mosquitto_pub_disconnect_sends_no_will() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let topic = format!("interop/nowill/{version}");
        let mut watcher = subscriber(&broker, version, "watcher", &format!("{topic}/#"), 1, "%t|%p");
        wait_for_subscriptions(&broker, 1, &mut [&mut watcher]).await;
        let will_topic = format!("{topic}/will");
        publish(
            &broker,
            version,
            &["-i", "polite", "-t", "other", "-q", "1", "-m", "x", "--will-topic", &will_topic],
        )
        .await;
        // Once the router no longer counts `polite` online it has handled its end, will included; a
        // marker published after that reaches the watcher after any will would have.
        wait_for_online(&broker, 1).await;
        let marker = format!("{topic}/marker");
        publish(&broker, version, &["-i", "marker", "-t", &marker, "-q", "1", "-m", "marker"]).await;
        let lines = success_lines(watcher, "watcher").await;
        assert_eq!(lines, [format!("{marker}|marker")], "no will after a clean disconnect ({version})");
        broker.stop().await;
    }
}

#[tokio::test]
async fn mosquitto_v5_publish_properties_reach_a_v5_mosquitto_sub() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "mqttv5", "props", "interop/props", 1, "%P|%C|%R|%p");
    wait_for_subscriptions(&broker, 1, &mut [&mut sub]).await;
    let mut args = vec!["-i", "pub", "-t", "interop/props", "-q", "1", "-m", "with props"];
    args.extend(["-D", "publish", "user-property", "site", "plant-7"]);
    args.extend(["-D", "publish", "content-type", "text/plain"]);
    args.extend(["-D", "publish", "response-topic", "interop/replies"]);
    publish(&broker, "mqttv5", &args).await;
    let lines = success_lines(sub, "mosquitto_sub -F %P").await;
    assert_eq!(lines, ["site:plant-7|text/plain|interop/replies|with props"]);
    broker.stop().await;
}

#[tokio::test]
async fn a_persistent_mosquitto_sub_session_gets_what_was_published_while_it_was_away() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let topic = format!("interop/keep/{version}");
        // -c: clean session 0 (3.1.1) / a session that does not expire (5).
        let keeper = |broker: &TestBroker| {
            let mut cmd = mosquitto("mosquitto_sub", broker, version);
            cmd.args([
                "-c",
                "-i",
                "keeper",
                "-t",
                &topic,
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                SUB_TIMEOUT_SECS,
                "-F",
                "%p",
            ]);
            spawn(cmd, "persistent mosquitto_sub")
        };
        let mut first = keeper(&broker);
        wait_for_subscriptions(&broker, 1, &mut [&mut first]).await;
        publish(&broker, version, &["-i", "pub", "-t", &topic, "-q", "1", "-m", "while here"]).await;
        assert_eq!(success_lines(first, "first keeper").await, ["while here"], "over {version}");
        wait_for_online(&broker, 0).await;

        publish(&broker, version, &["-i", "pub", "-t", &topic, "-q", "1", "-m", "while away"]).await;
        let second = keeper(&broker);
        assert_eq!(
            success_lines(second, "second keeper").await,
            ["while away"],
            "queued for the session ({version})"
        );
        broker.stop().await;
    }
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_mosquitto_sub_of_the_group() {
    for version in VERSIONS {
        let broker = TestBroker::start().await;
        let group = format!("$share/workers/interop/shared/{version}");
        let mut a = subscriber(&broker, version, "worker-a", &group, 2, "%p");
        let mut b = subscriber(&broker, version, "worker-b", &group, 2, "%p");
        wait_for_subscriptions(&broker, 2, &mut [&mut a, &mut b]).await;

        // One connection, four QoS 1 messages (one per stdin line).
        let mut cmd = mosquitto("mosquitto_pub", &broker, version);
        cmd.args(["-i", "producer", "-t", &format!("interop/shared/{version}"), "-q", "1", "-l"])
            .stdin(Stdio::piped());
        let mut producer = spawn(cmd, "mosquitto_pub -l");
        let mut stdin = producer.stdin.take().expect("stdin");
        within(stdin.write_all(b"job-1\njob-2\njob-3\njob-4\n")).await.expect("write jobs");
        drop(stdin);
        success_lines(producer, "mosquitto_pub -l").await;

        // Round robin over the group: two each. Had both received every message, each would have
        // stopped after job-1 and job-2 and the union would miss job-3 and job-4.
        let (a, b) = tokio::join!(finish(a, "worker-a"), finish(b, "worker-b"));
        let lines =
            |o: &Output| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect::<Vec<_>>();
        let (got_a, got_b) = (lines(&a), lines(&b));
        let all: BTreeSet<&str> = got_a.iter().chain(&got_b).map(String::as_str).collect();
        assert!(
            a.status.success() && b.status.success() && all == BTreeSet::from(["job-1", "job-2", "job-3", "job-4"]),
            "over {version}: worker-a ({}) got {got_a:?}, stderr {:?}; worker-b ({}) got {got_b:?}, stderr {:?}",
            a.status,
            String::from_utf8_lossy(&a.stderr),
            b.status,
            String::from_utf8_lossy(&b.stderr),
        );
        broker.stop().await;
    }
}
