//! The rules engine of a node: runs the rules of `m2m-rules` on the messages the router accepts and on
//! client events, off the message path, and carries out their actions (republish, webhook,
//! quarantine, a derived series in the history).
//!
//! # Data flow
//! The router (and the connections, for events) hand every input to [`Engine`] (a [`m2m_router::Tap`]):
//! when any enabled rule could want it, it goes into a bounded queue (full: dropped and counted),
//! never blocking. One worker thread takes the queue in order, finds the rules whose FROM matches
//! (a topic trie over every rule's filters), evaluates them and runs their actions.
//!
//! # Safety
//! A message republished by a rule carries a hop count (user property `m2m-rule-hops`); at
//! [`EngineConfig::max_hops`] it is not given to rules again, so rules cannot loop forever. Evaluation
//! errors and failed actions are counted per rule with the last error; a rule failing
//! [`EngineConfig::disable_after`] times in a row is disabled by the engine, with an audit entry.

mod engine;
mod spec;
pub mod webhook;

pub use engine::{Engine, EngineConfig, EngineError, RuleMetrics, RuleStatus, Sample, HOPS_PROPERTY};
pub use spec::{id_problem, ActionSpec, RuleSpec, SilenceSpec, WindowSpec};
