//! Helpers shared by the tests that run the built `m2m` binary as a child process.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a command that should exit promptly may run.
pub(crate) const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// The binary with no `M2M_*` variables inherited from the environment running the tests.
pub(crate) fn m2m(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m2m"));
    for (name, _) in std::env::vars() {
        if name.starts_with("M2M_") {
            cmd.env_remove(name);
        }
    }
    // Tests run nodes side by side: each one's HTTP API on a port of its own.
    cmd.env_remove("RUST_LOG")
        .env("M2M_HTTP_LISTEN", "127.0.0.1:0")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    cmd
}

/// Runs a command to completion, failing the test if it takes longer than [`EXIT_LIMIT`].
pub(crate) async fn run(mut cmd: Command) -> Output {
    let child = cmd.spawn().expect("start m2m");
    match tokio::time::timeout(EXIT_LIMIT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for m2m"),
        Err(_) => panic!("m2m did not exit within {EXIT_LIMIT:?}; killed"),
    }
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A port that was free a moment ago (the node does not report the port it bound yet).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe listener");
    listener.local_addr().expect("probe address").port()
}

/// Waits until the node accepts TCP connections, failing early if it exits.
pub(crate) async fn wait_until_listening(node: &mut Child, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Some(status) = node.try_wait().expect("try_wait") {
            panic!("the node exited with {status} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "the node did not listen on {addr} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
