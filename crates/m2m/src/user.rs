//! `m2m user` and `m2m token`: the operators of a node's API and console, and its API tokens.
//!
//! As for `m2m device`: a running node through its HTTP API (which audits under the caller's
//! name), a stopped node's store directly (audited with the actor `cli`). On a stopped node this
//! is also how a lost admin password is reset: `m2m user set admin --password-stdin`.

use anyhow::{bail, Context};
use m2m_access::{AuditLog, Operators, Role};
use serde_json::{json, Value};

use crate::device::{reach, Api, Audit, Node, Place};
use crate::remote::segment;

/// `m2m user ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum UserCommand {
    /// Adds a user; without a password, one is made up and printed.
    Add {
        /// Login name.
        name: String,
        /// viewer (reads), operator (also changes devices, quarantine, rules...), admin (also
        /// users and tokens).
        #[arg(long, default_value = "viewer")]
        role: Role,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Lists the users.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Changes a user's role or password (their console sessions end).
    Set {
        /// Login name.
        name: String,
        /// A new role.
        #[arg(long)]
        role: Option<Role>,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Removes a user (not the last admin).
    Remove {
        /// Login name.
        name: String,
    },
}

/// A password from the command line or standard input.
#[derive(Debug, clap::Args)]
pub(crate) struct PasswordArgs {
    /// The password (visible to other users of this machine; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        crate::device::password_from(self.password.as_ref(), self.password_stdin)
    }

    /// The password given, or one made up (and `true`: to be printed).
    fn or_made_up(&self) -> anyhow::Result<(String, bool)> {
        Ok(match self.read()? {
            Some(p) => (p, false),
            None => (m2m_access::random_text(18), true),
        })
    }

    /// The new password of a change, if any; an error when the change has neither it nor `role`.
    fn for_change(&self, role: Option<Role>) -> anyhow::Result<Option<String>> {
        let password = self.read()?;
        if role.is_none() && password.is_none() {
            bail!("nothing to change: give --role, --password or --password-stdin");
        }
        Ok(password)
    }
}

/// `m2m token ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Creates an API token and prints its secret (shown this once).
    Create {
        /// What it is for, e.g. `grafana`.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
    /// Lists the tokens (without their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a token.
    Revoke {
        /// The token's id (from `list`).
        id: String,
    },
}

fn now_ms() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now())
}

fn created(ms: u64) -> String {
    m2m_history::time::format_rfc3339(ms.saturating_mul(1000))
}

fn print_rows(rows: &[Value], json: bool, columns: &[&str]) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    for row in rows {
        let cells: Vec<&str> = columns.iter().map(|c| row[*c].as_str().unwrap_or("")).collect();
        println!("{}", cells.join("\t"));
    }
    Ok(())
}

pub(crate) fn run_user(place: &Place, command: UserCommand) -> anyhow::Result<()> {
    match reach(place)? {
        Node::Stopped(store) => {
            let operators = Operators::open(Some(store.clone())).context("cannot read the operators")?;
            user_in_store(&operators, &Audit(AuditLog::new(Some(store))), command)
        }
        Node::Running(api) => user_over_api(&api, command),
    }
}

fn user_in_store(operators: &Operators, audit: &Audit, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, role, password } => {
            let (password, made_up) = password.or_made_up()?;
            let user = operators.add_user(&name, &password, role, now_ms())?;
            audit.record("user.add", &user.name, role.as_str())?;
            announce(&user.name, role, made_up.then_some(password.as_str()));
        }
        UserCommand::List { json } => {
            let rows: Vec<Value> = operators
                .users()
                .iter()
                .map(|u| json!({"name": u.name, "role": u.role, "created": created(u.created_ms)}))
                .collect();
            print_rows(&rows, json, &["name", "role", "created"])?;
        }
        UserCommand::Set { name, role, password } => {
            let password = password.for_change(role)?;
            let user = operators.update_user(&name, password.as_deref(), role)?;
            audit.record("user.set", &user.name, &m2m_access::change_summary(password.is_some(), role))?;
            println!("user {} changed (role {})", user.name, user.role);
        }
        UserCommand::Remove { name } => {
            let user = operators.remove_user(&name)?;
            audit.record("user.remove", &user.name, "")?;
            println!("user {} removed", user.name);
        }
    }
    Ok(())
}

fn announce(name: &str, role: Role, made_up: Option<&str>) {
    match made_up {
        Some(password) => println!("user {name} added (role {role}); password: {password}"),
        None => println!("user {name} added (role {role})"),
    }
}

fn user_over_api(api: &Api, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, role, password } => {
            let (password, made_up) = password.or_made_up()?;
            let body = json!({"name": name, "role": role, "password": password});
            let user: Value = api.send("POST", "/users", body)?;
            announce(user["name"].as_str().unwrap_or(&name), role, made_up.then_some(password.as_str()));
        }
        UserCommand::List { json } => {
            let users: Vec<Value> = api.get("/users")?;
            print_rows(&users, json, &["name", "role", "created"])?;
        }
        UserCommand::Set { name, role, password } => {
            let password = password.for_change(role)?;
            let mut body = json!({});
            if let Some(p) = password {
                body["password"] = json!(p);
            }
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            let user: Value = api.send("PATCH", &format!("/users/{}", segment(&name)), body)?;
            println!("user {} changed (role {})", name, user["role"].as_str().unwrap_or("?"));
        }
        UserCommand::Remove { name } => {
            api.delete(&format!("/users/{}", segment(&name)))?;
            println!("user {name} removed");
        }
    }
    Ok(())
}

pub(crate) fn run_token(place: &Place, command: TokenCommand) -> anyhow::Result<()> {
    match reach(place)? {
        Node::Stopped(store) => {
            let operators = Operators::open(Some(store.clone())).context("cannot read the operators")?;
            let audit = Audit(AuditLog::new(Some(store)));
            match command {
                TokenCommand::Create { name, role } => {
                    let (token, secret) = operators.create_token(&name, role, now_ms())?;
                    audit.record("token.create", &token.id, &format!("{} ({role})", token.name))?;
                    print_secret(&token.id, &token.name, role, &secret);
                }
                TokenCommand::List { json } => {
                    let rows: Vec<Value> = operators
                        .tokens()
                        .iter()
                        .map(|t| json!({"id": t.id, "name": t.name, "role": t.role, "created": created(t.created_ms)}))
                        .collect();
                    print_rows(&rows, json, &["id", "name", "role", "created"])?;
                }
                TokenCommand::Revoke { id } => {
                    let token = operators.revoke_token(&id)?;
                    audit.record("token.revoke", &token.id, &token.name)?;
                    println!("token {} ({}) revoked", token.id, token.name);
                }
            }
        }
        Node::Running(api) => match command {
            TokenCommand::Create { name, role } => {
                let made: Value = api.send("POST", "/tokens", json!({"name": name, "role": role}))?;
                let secret = made["token"].as_str().context("the node did not answer a token")?;
                print_secret(made["id"].as_str().unwrap_or("?"), &name, role, secret);
            }
            TokenCommand::List { json } => {
                let tokens: Vec<Value> = api.get("/tokens")?;
                print_rows(&tokens, json, &["id", "name", "role", "created"])?;
            }
            TokenCommand::Revoke { id } => {
                api.delete(&format!("/tokens/{}", segment(&id)))?;
                println!("token {id} revoked");
            }
        },
    }
    Ok(())
}

fn print_secret(id: &str, name: &str, role: Role, secret: &str) {
    println!("token {id} ({name}, role {role}): {secret}");
    println!("(shown once: send it as `Authorization: Bearer <token>`)");
}
