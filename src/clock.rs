//! The node's wall clock, in one place below every layer that stamps commands (control,
//! api, raft's forwarding service, auth's audit records): time enters the replicated state
//! only as the stamp a leader puts into a command.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this node's clock (the leader's stamp); 0 for a
/// clock set before 1970.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
