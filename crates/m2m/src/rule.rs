//! `m2m rule`: the rules of a node's rules engine (SQL over messages and client events, and the
//! actions it takes on what the SQL selects).
//!
//! As `m2m device` does ([`crate::device`]): a running node is changed through its HTTP API (at
//! `--api URL`, or at its configured `http.listen` when its store is in use), where the rule runs
//! from the next message on and the node audits the change (actor `api`); a stopped node's store is
//! changed directly (rules checked as the engine checks them, changes audited with the actor
//! `cli`), and the node loads the rules when it starts. `m2m rule test` evaluates a rule on a
//! sample message here, without any node.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use m2m_access::AuditLog;
use m2m_engine::{ActionSpec, Engine, EngineError, RuleSpec, Sample};
use m2m_store::{Store, Table};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::device::{reach, Api, Audit, Node, Place};
use crate::remote::segment;

/// `m2m rule ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RuleCommand {
    /// Adds a rule: from options, or a whole rule as JSON with --file.
    Add(AddArgs),
    /// Lists the rules: id, state, counters and last error.
    List {
        /// Print JSON (an array of rules, each with its state and counters).
        #[arg(long)]
        json: bool,
    },
    /// Shows one rule as JSON, with its state and counters.
    Show {
        /// Rule id.
        id: String,
    },
    /// Runs a rule again (also one the node disabled for failing; its counters start again).
    Enable {
        /// Rule id.
        id: String,
    },
    /// Stops running a rule, keeping it.
    Disable {
        /// Rule id.
        id: String,
    },
    /// Removes a rule.
    Rm {
        /// Rule id.
        id: String,
    },
    /// Evaluates a query on a sample message and prints its output; runs no action and needs no
    /// node.
    Test {
        /// The query.
        #[arg(long)]
        sql: String,
        /// The message's topic (for an event, the topic it is about).
        #[arg(long, default_value = "")]
        topic: String,
        /// The message's payload, as text (JSON, or anything else).
        #[arg(long, default_value = "")]
        payload: String,
        /// The publisher's (or the event's) client id.
        #[arg(long)]
        clientid: Option<String>,
        /// The client's user name.
        #[arg(long)]
        username: Option<String>,
        /// QoS of the message.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// The message is retained.
        #[arg(long)]
        retain: bool,
        /// Evaluate as this event (`client_connected`, `silent`…) instead of a message.
        #[arg(long)]
        event: Option<String>,
        /// The event's fields as a JSON object, e.g. `{"reason": "keep_alive_timeout"}`.
        #[arg(long, value_name = "JSON")]
        fields: Option<String>,
        /// The `win.*` statistics a window rule sees, as a JSON object, e.g. `{"avg": 81.5, "count": 12}`.
        #[arg(long, value_name = "JSON")]
        window: Option<String>,
    },
}

/// What `m2m rule add` is given.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// Rule id: 1 to 64 of `A-Z a-z 0-9 _ - .`.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    id: Option<String>,
    /// The query, e.g. `SELECT payload.temp AS t FROM "plant/+/temp" WHERE payload.temp > 80`.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    sql: Option<String>,
    /// An action as JSON (repeatable, run in order), e.g.
    /// `{"type": "republish", "topic": "alerts/${clientid}"}`; types: republish, webhook,
    /// quarantine, history.
    #[arg(long = "action", value_name = "JSON", conflicts_with = "file")]
    actions: Vec<String>,
    /// Free text about the rule.
    #[arg(long, conflicts_with = "file")]
    description: Option<String>,
    /// Add it without running it (`m2m rule enable` starts it).
    #[arg(long, conflicts_with = "file")]
    disabled: bool,
    /// The rule as a JSON file `{id, sql, actions, enabled, description, window, silence}`; `-`
    /// reads standard input.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Replace the rule of that id if there is one (else an existing id is an error).
    #[arg(long)]
    replace: bool,
}

pub(crate) fn run(place: &Place, command: RuleCommand) -> anyhow::Result<()> {
    if matches!(command, RuleCommand::Test { .. }) {
        return run_test(command);
    }
    match reach(place)? {
        Node::Stopped(store) => in_store(&store, command),
        Node::Running(api) => over_api(&api, command),
    }
}

/// `m2m rule test`: needs no node.
fn run_test(command: RuleCommand) -> anyhow::Result<()> {
    let RuleCommand::Test { sql, topic, payload, clientid, username, qos, retain, event, fields, window } =
        command
    else {
        return Ok(());
    };
    let object = |what: &str, text: Option<String>| -> anyhow::Result<Option<Map<String, Value>>> {
        text.map(|t| {
            serde_json::from_str::<Map<String, Value>>(&t)
                .with_context(|| format!("--{what} must be a JSON object, e.g. {{\"reason\": \"normal\"}}"))
        })
        .transpose()
    };
    let sample = Sample {
        topic,
        payload: payload.into_bytes(),
        clientid,
        username,
        qos,
        retain,
        event,
        fields: object("fields", fields)?.unwrap_or_default(),
        window: object("window", window)?,
    };
    let output = Engine::test(&sql, &sample).context("cannot evaluate the rule")?;
    match output {
        Some(output) => println!("{}", serde_json::to_string_pretty(&output)?),
        None => println!("no output (WHERE is false)"),
    }
    Ok(())
}

/// The rule `add` describes.
fn spec_of(args: AddArgs) -> anyhow::Result<RuleSpec> {
    let AddArgs { id, sql, actions, description, disabled, file, replace: _ } = args;
    let value = match file {
        Some(file) => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the rule from standard input")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let name =
                if file.as_os_str() == "-" { "standard input".into() } else { file.display().to_string() };
            serde_json::from_str(&text).with_context(|| format!("the rule in {name} is not JSON"))?
        }
        None => {
            let mut parsed = Vec::new();
            for action in &actions {
                let spec: ActionSpec =
                    serde_json::from_str(action).with_context(|| format!("invalid --action {action}"))?;
                parsed.push(serde_json::to_value(spec)?);
            }
            json!({
                "id": id,
                "sql": sql,
                "actions": parsed,
                "enabled": !disabled,
                "description": description.unwrap_or_default(),
            })
        }
    };
    m2m_http::rule_from_json(value, None).map_err(anyhow::Error::msg)
}

/// Checks a rule as the engine does when it is added. A webhook action starts its sender on the
/// tokio runtime it is checked in: one is entered for the check, and the sender, never polled, goes
/// with it.
fn check(spec: &RuleSpec) -> anyhow::Result<Result<(), EngineError>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime to check the rule")?;
    let _entered = runtime.enter();
    Ok(Engine::check(spec))
}

fn stored(store: &Store, id: &str) -> anyhow::Result<Option<RuleSpec>> {
    let Some(value) = store.record(Table::Rules, id.as_bytes())? else { return Ok(None) };
    let spec =
        serde_json::from_slice(&value).with_context(|| format!("the stored rule {id:?} does not decode"))?;
    Ok(Some(spec))
}

fn store_rule(store: &Store, spec: &RuleSpec) -> anyhow::Result<()> {
    let mut batch = store.batch();
    batch.put_record(Table::Rules, spec.id.as_bytes(), serde_json::to_vec(spec)?);
    batch.commit().context("cannot write the rule to the store")?;
    Ok(())
}

/// A stored rule as `show` and `list --json` print it from a stopped node: its members and a
/// `state` (`enabled`, `disabled`, or `invalid` with an `error`). There are no counters: those are
/// a running node's.
#[derive(Debug, Serialize)]
struct StoredView {
    #[serde(flatten)]
    spec: RuleSpec,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StoredView {
    fn new(spec: RuleSpec) -> anyhow::Result<Self> {
        let (state, error) = match check(&spec)? {
            Err(e) => ("invalid", Some(e.to_string())),
            Ok(()) if spec.enabled => ("enabled", None),
            Ok(()) => ("disabled", None),
        };
        Ok(Self { spec, state, error })
    }
}

fn in_store(store: &Store, command: RuleCommand) -> anyhow::Result<()> {
    let audit = Audit(AuditLog::new(Some(store.clone())));
    let no_rule = |id: &str| anyhow::Error::new(EngineError::NotFound(id.to_owned()));
    match command {
        RuleCommand::Add(args) => {
            let replace = args.replace;
            let spec = spec_of(args)?;
            check(&spec)??;
            let exists = stored(store, &spec.id)?.is_some();
            if exists && !replace {
                return Err(EngineError::Exists(spec.id).into());
            }
            store_rule(store, &spec)?;
            let (action, done) = if exists { ("rule.replace", "replaced") } else { ("rule.add", "added") };
            audit.record(action, &spec.id, &spec.sql)?;
            println!("{done} rule {}", spec.id);
        }
        RuleCommand::List { json } => {
            let mut views = Vec::new();
            for (key, value) in store.records(Table::Rules)? {
                let spec: RuleSpec = serde_json::from_slice(&value).with_context(|| {
                    format!("the stored rule {:?} does not decode", String::from_utf8_lossy(&key))
                })?;
                views.push(StoredView::new(spec)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                let values = views.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
                print_rules(&values, false)?;
            }
        }
        RuleCommand::Show { id } => {
            let spec = stored(store, &id)?.ok_or_else(|| no_rule(&id))?;
            println!("{}", serde_json::to_string_pretty(&StoredView::new(spec)?)?);
        }
        RuleCommand::Enable { id } => set_enabled(store, &audit, &id, true)?,
        RuleCommand::Disable { id } => set_enabled(store, &audit, &id, false)?,
        RuleCommand::Rm { id } => {
            stored(store, &id)?.ok_or_else(|| no_rule(&id))?;
            let mut batch = store.batch();
            batch.remove_record(Table::Rules, id.as_bytes());
            batch.commit().context("cannot remove the rule from the store")?;
            audit.record("rule.remove", &id, "")?;
            println!("removed rule {id}");
        }
        test @ RuleCommand::Test { .. } => run_test(test)?,
    }
    Ok(())
}

fn set_enabled(store: &Store, audit: &Audit, id: &str, enabled: bool) -> anyhow::Result<()> {
    let mut spec = stored(store, id)?.ok_or_else(|| EngineError::NotFound(id.to_owned()))?;
    spec.enabled = enabled;
    store_rule(store, &spec)?;
    let (action, done) = if enabled { ("rule.enable", "enabled") } else { ("rule.disable", "disabled") };
    audit.record(action, id, "")?;
    println!("{done} rule {id}");
    Ok(())
}

fn over_api(api: &Api, command: RuleCommand) -> anyhow::Result<()> {
    let path = |id: &str| format!("/rules/{}", segment(id));
    match command {
        RuleCommand::Add(args) => {
            let replace = args.replace;
            let spec = spec_of(args)?;
            let body = serde_json::to_value(&spec)?;
            let exists =
                replace && api.get::<Vec<Value>>("/rules")?.iter().any(|r| r["id"] == spec.id.as_str());
            let _: Value = if replace {
                api.send("PUT", &path(&spec.id), body)?
            } else {
                api.send("POST", "/rules", body)?
            };
            println!("{} rule {}", if exists { "replaced" } else { "added" }, spec.id);
        }
        RuleCommand::List { json } => print_rules(&api.get::<Vec<Value>>("/rules")?, json)?,
        RuleCommand::Show { id } => {
            let rule: Value = api.get(&path(&id))?;
            println!("{}", serde_json::to_string_pretty(&rule)?);
        }
        RuleCommand::Enable { id } => {
            let _: Value = api.send("POST", &format!("{}/enable", path(&id)), json!({}))?;
            println!("enabled rule {id}");
        }
        RuleCommand::Disable { id } => {
            let _: Value = api.send("POST", &format!("{}/disable", path(&id)), json!({}))?;
            println!("disabled rule {id}");
        }
        RuleCommand::Rm { id } => {
            api.delete(&path(&id))?;
            println!("removed rule {id}");
        }
        test @ RuleCommand::Test { .. } => run_test(test)?,
    }
    Ok(())
}

/// The rules as JSON, or as a table: id, state, counters (`-` where there are none: a stopped
/// node's rules) and the last error.
fn print_rules(rules: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rules)?);
        return Ok(());
    }
    let header = ["ID", "STATE", "MATCHED", "PASSED", "FAILED", "ACTIONS OK/FAILED", "LAST ERROR"];
    let rows: Vec<Vec<String>> = rules.iter().map(row).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out
    };
    println!("{}", line(&header.map(String::from)));
    for row in &rows {
        println!("{}", line(row));
    }
    Ok(())
}

/// One rule's cells in the table.
fn row(rule: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let m = &rule["metrics"];
    let error = match (&m["last_error"], &rule["error"]) {
        (Value::String(e), _) | (_, Value::String(e)) => one_line(e),
        _ => "-".into(),
    };
    let actions = if m.is_null() {
        "-".into()
    } else {
        format!("{}/{}", text(&m["actions_ok"]), text(&m["actions_failed"]))
    };
    vec![
        text(&rule["id"]),
        text(&rule["state"]),
        text(&m["matched"]),
        text(&m["passed"]),
        text(&m["failed"]),
        actions,
        error,
    ]
}

/// `s` on one line: an error message may span several.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
