//! The network shell of an m2m node: the MQTT listener, one task per connection, the CONNECT
//! handshake (client ids, wills, anonymous policy, enhanced authentication), and graceful shutdown.
//!
//! # Layout
//! - [`Broker`]: `bind` then `run(shutdown)`; reports its bound address, so tests use port 0.
//! - [`Config`]: the validated settings of the MQTT side.
//! - [`Authenticator`]: the hook for MQTT 5 enhanced authentication methods.
//! - [`AccessControl`]: usernames and passwords against the device registry, and the access rules
//!   applied to every PUBLISH and SUBSCRIBE.
//! - [`Clients`]: the directory of connected (and recently connected) clients and their counters.
//!
//! Protocol state lives in `m2m-session` (sans-IO) and routing in `m2m-router`; this crate only moves
//! bytes and packets between them. An error ends one connection, never the node.

mod access;
mod auth;
mod clients;
mod config;
mod connection;
mod detect;
mod error;
mod gate;
mod server;
mod tls;
mod ws;

pub use access::{AccessControl, Refusal};
pub use auth::{AuthExchange, AuthStep, Authenticator, NoEnhancedAuth};
pub use clients::{ClientInfo, ClientState, ClientSubscription, ClientTransport, Clients, OFFLINE_LIMIT};
pub use config::{Anonymous, Config, Listener, TlsFiles, Transport};
pub use detect::{DetectorConfig, DetectorsConfig, PublishBudget};
pub use error::{Error, Result};
pub use gate::Admission;
pub use m2m_router::{Metrics, RouterHandle, RouterStats};
pub use m2m_session::Limits;
pub use server::Broker;
pub use tls::TlsError;
