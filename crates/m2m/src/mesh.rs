//! `m2m mesh status`: the mesh as a running node sees it, through its HTTP API.

use anyhow::bail;
use serde_json::Value;

use crate::device::{reach, Node, Place};

/// What `m2m mesh` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum MeshCommand {
    /// This node, the other nodes (reachable or not), round trips, backlogs and filters.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The bridges to external brokers: connected, backlog, counters, the last error.
    Uplinks {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(place: &Place, command: MeshCommand) -> anyhow::Result<()> {
    let api = match reach(place)? {
        Node::Running(api) => api,
        Node::Stopped(_) => bail!(
            "the node is not running: the mesh status comes from a running node (start it, or give --api)"
        ),
    };
    let json = match command {
        MeshCommand::Status { json } => json,
        MeshCommand::Uplinks { json } => {
            let uplinks: Value = api.get("/uplinks")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&uplinks)?);
            } else {
                print!("{}", uplinks_table(&uplinks));
            }
            return Ok(());
        }
    };
    let status: Value = api.get("/mesh")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!("{}", table(&status));
    Ok(())
}

/// The status as text: a line for the node, then a row per other node.
fn table(status: &Value) -> String {
    let mut out = format!(
        "node {}  listen {}  connect {}\nsent {}  received {}  dropped {}  malformed {}\n",
        status["node_id"].as_str().unwrap_or("?"),
        list(&status["listen"]),
        list(&status["connect"]),
        status["sent"],
        status["received"],
        status["dropped"],
        status["malformed"],
    );
    let nodes = status["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if nodes.is_empty() {
        out.push_str("no other node known\n");
        return out;
    }
    out.push_str(&format!(
        "{:<20} {:<11} {:<6} {:>9} {:>9} {:>12}  filters\n",
        "NODE", "STATE", "LINK", "RTT ms", "BACKLOG", "ACKNOWLEDGED"
    ));
    for n in nodes {
        let rtt = n["rtt_ms"].as_f64().map_or("-".to_owned(), |ms| format!("{ms:.2}"));
        out.push_str(&format!(
            "{:<20} {:<11} {:<6} {:>9} {:>9} {:>12}  {}\n",
            n["id"].as_str().unwrap_or("?"),
            if n["reachable"].as_bool() == Some(true) { "reachable" } else { "unreachable" },
            if n["linked"].as_bool() == Some(true) { "direct" } else { "-" },
            rtt,
            n["backlog"].as_u64().unwrap_or(0),
            n["acknowledged"].as_u64().unwrap_or(0),
            list(&n["filters"]),
        ));
    }
    out
}

/// The uplinks as text, a row each.
fn uplinks_table(uplinks: &Value) -> String {
    let all = uplinks.as_array().map(Vec::as_slice).unwrap_or_default();
    if all.is_empty() {
        return "no uplink configured\n".to_owned();
    }
    let mut out = format!(
        "{:<16} {:<10} {:>9} {:>10} {:>12} {:>10} {:>10}  {}\n",
        "UPLINK", "STATE", "BACKLOG", "SENT", "ACKNOWLEDGED", "RECEIVED", "RECONNECTS", "URL (LAST ERROR)"
    );
    for u in all {
        let error = u["last_error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<10} {:>9} {:>10} {:>12} {:>10} {:>10}  {}{}\n",
            u["name"].as_str().unwrap_or("?"),
            if u["connected"].as_bool() == Some(true) { "connected" } else { "down" },
            u["backlog"].as_u64().unwrap_or(0),
            u["sent"].as_u64().unwrap_or(0),
            u["acknowledged"].as_u64().unwrap_or(0),
            u["received"].as_u64().unwrap_or(0),
            u["reconnects"].as_u64().unwrap_or(0),
            u["url"].as_str().unwrap_or("?"),
            error,
        ));
    }
    out
}

fn list(v: &Value) -> String {
    let items: Vec<&str> =
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_node() {
        let status = serde_json::json!({
            "node_id": "a", "listen": ["tcp/127.0.0.1:7447"], "connect": [], "sent": 5, "received": 2,
            "dropped": 0, "malformed": 0,
            "nodes": [
                {"id": "b", "reachable": true, "linked": true, "rtt_ms": 0.412, "backlog": 0, "acknowledged": 7, "filters": ["plant/#"]},
                {"id": "c", "reachable": false, "linked": false, "rtt_ms": null, "backlog": 1200, "acknowledged": 0, "filters": []}
            ]
        });
        let text = table(&status);
        assert!(text.starts_with("node a  listen tcp/127.0.0.1:7447  connect -\n"), "{text}");
        assert!(
            text.contains(
                "b                    reachable   direct      0.41         0            7  plant/#"
            ),
            "{text}"
        );
        assert!(
            text.contains("c                    unreachable -              -      1200            0  -"),
            "{text}"
        );
    }
}
