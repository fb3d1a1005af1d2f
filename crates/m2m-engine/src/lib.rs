//! The rules engine of a node: runs the rules of `m2m-rules` on the messages the router accepts and on
//! client events, off the message path, and carries out their actions (republish, webhook,
//! quarantine, a derived series in the history).

pub mod webhook;
