//! The operators of a node as a user meets them: the first admin's one-time password on a new
//! node's standard output, `m2m user` and `m2m token` against the running node, and a lost admin
//! password reset on the stopped node's data directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{m2m, run, text, wait_until_listening};
use m2m_test::{free_port, http, within, TempDir};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A node on `dir`, its API on `http`; its standard output collected line by line.
struct Node {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
}

impl Node {
    async fn start(dir: &str, mqtt: u16, http: u16) -> Self {
        let mut cmd = m2m(&["node", "--data-dir", dir, "--listen", &format!("127.0.0.1:{mqtt}")]);
        cmd.env("M2M_HTTP_LISTEN", format!("127.0.0.1:{http}"));
        let mut child = cmd.spawn().expect("start the node");
        let stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let lines = out.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        wait_until_listening(&mut child, SocketAddr::from(([127, 0, 0, 1], http))).await;
        Self { child, out }
    }

    /// The password of the `console:` line, once it is printed.
    async fn admin_password(&self) -> String {
        within(async {
            loop {
                let found = self.out.lock().unwrap().iter().find_map(|l| {
                    l.strip_prefix("console: ")
                        .and_then(|rest| rest.split("password: ").nth(1))
                        .map(str::to_owned)
                });
                if let Some(p) = found {
                    return p.trim().to_owned();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("kill the node");
    }
}

async fn login(http_port: u16, user: &str, password: &str) -> m2m_test::HttpReply {
    let body = json!({"user": user, "password": password}).to_string();
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    http(addr, "POST", "/api/v1/login", &[], Some(("application/json", body.as_bytes()))).await
}

async fn ok(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(out.status.success(), "m2m {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn the_first_admin_manages_users_and_tokens_and_a_lost_password_is_reset_offline() {
    let dir = TempDir::new("cli-operators");
    let d = dir.as_str();
    let (mqtt, http_port) = (free_port(), free_port());
    let node = Node::start(d, mqtt, http_port).await;
    let password = node.admin_password().await;
    assert!(password.len() >= 16, "{password:?}");
    let console = node.out.lock().unwrap().iter().find(|l| l.starts_with("console: ")).cloned().unwrap();
    assert!(
        console.starts_with(&format!("console: http://127.0.0.1:{http_port}/  user: admin  password: ")),
        "{console}"
    );
    let admin = login(http_port, "admin", &password).await;
    assert_eq!((admin.status, admin.json()["role"].clone()), (200, json!("admin")), "{}", admin.text());
    assert_eq!(login(http_port, "admin", "a wrong password").await.status, 401);

    // Users and tokens through the running node's API.
    let api = format!("http://127.0.0.1:{http_port}");
    let added =
        ok(&["user", "--api", &api, "add", "ana", "--role", "operator", "--password", "ana's password"])
            .await;
    assert_eq!(added.trim(), "user ana added (role operator)");
    assert_eq!(login(http_port, "ana", "ana's password").await.json()["role"], "operator");
    let made_up = ok(&["user", "--api", &api, "add", "vic"]).await;
    let vic_password = made_up.trim().split("password: ").nth(1).expect("a made-up password").to_owned();
    assert_eq!(login(http_port, "vic", &vic_password).await.json()["role"], "viewer");

    let created = ok(&["token", "--api", &api, "create", "scraper", "--role", "viewer"]).await;
    let secret = created.lines().next().and_then(|l| l.rsplit(": ").next()).expect("the secret").to_owned();
    assert!(secret.starts_with("m2m_"), "{created}");
    let bearer = format!("Bearer {secret}");
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    assert_eq!(http(addr, "GET", "/api/v1/devices", &[("authorization", &bearer)], None).await.status, 200);
    let body = br#"{"id": "d1"}"#;
    let refused = http(
        addr,
        "POST",
        "/api/v1/devices",
        &[("authorization", &bearer)],
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(refused.status, 403);
    // The CLI with that token is refused too, and says why.
    let out = run(m2m(&["device", "--api", &api, "--token", &secret, "add", "d1"])).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("role"), "{}", text(&out.stderr));
    let listed = ok(&["token", "--api", &api, "list"]).await;
    assert!(listed.contains("scraper\tviewer") && !listed.contains(&secret), "{listed}");
    node.stop().await;

    // Offline: a new admin password, set on the data directory.
    let reset = ok(&["user", "--data-dir", d, "set", "admin", "--password", "the new admin password"]).await;
    assert_eq!(reset.trim(), "user admin changed (role admin)");
    let users = ok(&["user", "--data-dir", d, "list"]).await;
    let names: Vec<&str> = users.lines().map(|l| l.split('\t').next().unwrap_or("")).collect();
    assert_eq!(names, ["admin", "ana", "vic"]);
    let audit = ok(&["audit", "--data-dir", d, "list", "--limit", "5"]).await;
    assert!(audit.contains("user.set"), "{audit}");

    let node = Node::start(d, mqtt, http_port).await;
    assert_eq!(login(http_port, "admin", "the new admin password").await.status, 200);
    assert_eq!(login(http_port, "admin", &password).await.status, 401);
    assert!(
        !node.out.lock().unwrap().iter().any(|l| l.contains("password:")),
        "an admin exists: no new password is printed"
    );
    node.stop().await;
}
