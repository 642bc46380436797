//! `[limits]`: how much one node lets clients hold open.

use serde::{Deserialize, Serialize};

/// Most connections a node accepts at once by default (clients, agents and peers together).
pub const MAX_CONNECTIONS: usize = 4096;

/// Connection, stream and request limits of one node (`[limits]` in `node.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most connections open at once (clients, agents and peers); further ones are closed
    /// at once. Capped by the descriptor limit (`ulimit -n`) less a reserve of 256.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls, watches, KeepAlives) on one connection.
    pub max_streams_per_connection: u32,
    /// Client API calls (unary calls and stream openings) one caller (client IP address)
    /// may make per second on average; more are answered RESOURCE_EXHAUSTED.
    pub requests_per_second_per_caller: u32,
    /// Calls one caller may make at once after being idle (the token bucket's size).
    pub request_burst_per_caller: u32,
    /// Calls of one caller being served at once (a stream counts until it is open).
    pub max_requests_in_flight_per_caller: u32,
    /// Calls of all callers being served at once.
    pub max_requests_in_flight: u32,
    /// Callers whose rate and calls in flight are remembered at once (idle ones are
    /// forgotten first).
    pub max_tracked_callers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_streams_per_connection: 512,
            requests_per_second_per_caller: 20_000,
            request_burst_per_caller: 40_000,
            max_requests_in_flight_per_caller: 256,
            max_requests_in_flight: 2_048,
            max_tracked_callers: 10_000,
        }
    }
}

impl LimitsConfig {
    /// The first field that cannot work, with what to do about it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            (
                "requests_per_second_per_caller",
                self.requests_per_second_per_caller as usize,
            ),
            (
                "request_burst_per_caller",
                self.request_burst_per_caller as usize,
            ),
            (
                "max_requests_in_flight_per_caller",
                self.max_requests_in_flight_per_caller as usize,
            ),
            (
                "max_requests_in_flight",
                self.max_requests_in_flight as usize,
            ),
            ("max_tracked_callers", self.max_tracked_callers),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err((
                    field,
                    "must be at least 1 (0 would refuse every call); raise it".to_string(),
                ));
            }
        }
        Ok(())
    }
}
