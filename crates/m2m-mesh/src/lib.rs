//! The mesh of m2m nodes: each node embeds a zenoh router; MQTT messages published on one node
//! reach the matching subscribers on every node, through intermediate nodes, and only the nodes that
//! want them.
//!
//! - [`keyexpr`]: MQTT topics and filters as zenoh key expressions (escaping).
//! - [`wire`]: a message as it travels between nodes.
//! - [`Mesh`]: the runtime: a router [`Tap`](m2m_router::Tap) out, zenoh subscribers per filter in.

pub mod keyexpr;
mod mesh;
mod outbox;
mod uplink;
pub mod wire;

pub use mesh::{
    guarded, Mesh, MeshAnswers, MeshConfig, MeshError, MeshStats, MeshStatus, MeshTls, NodeStatus,
    QueryHandler, DATA_PREFIX, NODE_PREFIX, PING_PREFIX, QUERY_PREFIX, RETAINED_PREFIX,
};
pub use outbox::{
    OutboxStats, ACK_PREFIX, INTEREST_PREFIX, OUT_PREFIX, RESEND_AFTER, STAMP_EVERY, STAMP_PREFIX, WINDOW,
};
pub use uplink::{
    tls_client, Route, Uplink, UplinkConfig, UplinkError, UplinkStatus, SESSION_EXPIRY, STABLE_AFTER,
};
