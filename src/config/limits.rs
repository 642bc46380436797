//! `[limits]`: how much one node lets clients hold open.

use serde::{Deserialize, Serialize};

/// Connection and stream limits of one node (`[limits]` in `node.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most connections open at once (clients, agents and peers); further ones are closed
    /// at once. Capped by the descriptor limit (`ulimit -n`) less a reserve of 256.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls, watches, KeepAlives) on one connection.
    pub max_streams_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: crate::node::conn::MAX_CONNECTIONS,
            max_streams_per_connection: 512,
        }
    }
}
