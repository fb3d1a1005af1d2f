//! Helpers shared by the tests that run the built `m2m` binary as a child process.
#![allow(dead_code)]

use std::net::SocketAddr;
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

/// Starts `cmd` and reads whatever the process writes to its standard output and error, so that a
/// node that logs a lot (a mesh node whose peer is down, say) never waits on a full pipe.
pub(crate) fn spawn_drained(cmd: &mut Command) -> Child {
    let mut child = cmd.spawn().expect("start m2m");
    if let Some(mut out) = child.stdout.take() {
        tokio::spawn(async move { tokio::io::copy(&mut out, &mut tokio::io::sink()).await });
    }
    if let Some(mut err) = child.stderr.take() {
        tokio::spawn(async move { tokio::io::copy(&mut err, &mut tokio::io::sink()).await });
    }
    child
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

/// A node run as a child process: its MQTT and HTTP addresses read from its start-up log, its
/// standard output collected line by line (a new node prints its first admin's password there).
pub(crate) struct RunningNode {
    pub(crate) child: Child,
    pub(crate) mqtt: SocketAddr,
    pub(crate) api: SocketAddr,
    pub(crate) out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RunningNode {
    /// Starts `m2m node` on the data directory `dir`, MQTT on a port it picks, with `env` (the
    /// HTTP API on 127.0.0.1:0 unless `env` sets `M2M_HTTP_LISTEN`).
    pub(crate) async fn start(dir: &str, env: &[(&str, &str)]) -> Self {
        let args = ["node", "--listen", "127.0.0.1:0", "--data-dir", dir, "--log-level", "info"];
        Self::start_with(&args, env).await
    }

    /// Starts `m2m node` with the configuration file `config` (TOML, may be empty) written into
    /// `dir`, its data in `dir/data`, MQTT on a port it picks.
    pub(crate) async fn with_config(dir: &std::path::Path, config: &str) -> Self {
        let file = dir.join("m2m.toml");
        std::fs::write(&file, config).expect("write m2m.toml");
        let (file, data) = (file.display().to_string(), dir.join("data").display().to_string());
        let args = [
            "node",
            "--config",
            &file,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--log-level",
            "info",
        ];
        Self::start_with(&args, &[]).await
    }

    /// Starts `m2m` with `args` (a `node` command logging at info level at least) and `env`.
    pub(crate) async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut cmd = m2m(args);
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("start the node");
        let stdout = child.stdout.take().expect("the node's stdout is piped");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = out.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
            }
        });
        let stderr = child.stderr.take().expect("the node's stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match lines.next_line().await.expect("read the node's log") {
                    Some(line) if line.contains("m2m node starting") => return line,
                    Some(_) => {}
                    None => panic!("the node exited before it started"),
                }
            }
        })
        .await
        .expect("the node did not start within 10 s");
        // Go on reading, so that the node never waits on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // `... m2m node starting mqtt=127.0.0.1:40001 http=Some(127.0.0.1:40002) data_dir=...`
        let field = |name: &str| -> SocketAddr {
            let value = started
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {started:?}"));
            let value = value.trim_start_matches("Some(").trim_end_matches(')');
            value.parse().unwrap_or_else(|e| panic!("{name}{value} in {started:?}: {e}"))
        };
        Self { mqtt: field("mqtt="), api: field("http="), child, out }
    }

    /// Its MQTT port, as text for a command line.
    pub(crate) fn mqtt_port(&self) -> String {
        self.mqtt.port().to_string()
    }

    /// The base URL of its HTTP API.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The password of its `console: http://...  user: admin  password: <pw>` line, if it prints
    /// one within 5 s (a new node does).
    pub(crate) async fn admin_password(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found =
                self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().find_map(|l| {
                    l.strip_prefix("console: ")?.split_once("password:").map(|(_, p)| p.trim().to_owned())
                });
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the node and waits for it to be gone.
    pub(crate) async fn stop(mut self) {
        self.child.kill().await.expect("stop the node");
        self.child.wait().await.expect("wait for the node");
    }

    /// Stops the node as an operator would (SIGTERM) and waits for it to exit cleanly.
    pub(crate) async fn terminate(mut self) {
        let pid = self.child.id().expect("the node runs").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(exit.expect("the node stops within 10 s").expect("wait").success());
    }
}
