//! A real Mosquitto broker (the Debian package's `/usr/sbin/mosquitto`, which `scripts/test.sh`
//! installs) for tests that bridge to it or compare with it.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// A Mosquitto broker with one anonymous listener on a loopback port, persistence and its log in its
/// directory; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl Mosquitto {
    /// Starts Mosquitto with `extra` appended to a configuration of one anonymous listener on `port`
    /// (0: a free one) with persistence in `dir`, and waits until it accepts connections.
    ///
    /// # Panics
    /// When it cannot be started or does not listen within [`crate::STEP_LIMIT`].
    pub async fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let port = if port == 0 { crate::free_port() } else { port };
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nmax_queued_messages 0\nlog_dest file {}\n\
             # Run as root (a container), it would otherwise switch to the user mosquitto.\nuser root\n{extra}",
            dir.display(),
            dir.join("mosquitto.log").display(),
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start /usr/sbin/mosquitto (Debian package mosquitto)");
        crate::within(async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("mosquitto exited with {status} before listening on port {port}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        Mosquitto { port, child }
    }

    /// Stops it with SIGTERM, so that it saves its sessions (persistence), and waits for the end.
    ///
    /// # Panics
    /// When it cannot be signalled or does not stop within [`crate::STEP_LIMIT`].
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("mosquitto runs").to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        crate::within(self.child.wait()).await.expect("wait for mosquitto");
    }
}
