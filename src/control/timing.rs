//! `[timing]`: the Raft and lease timing a node runs by, and the rule a lease TTL must keep
//! against it. Parsed from `node.toml` by `config` (which re-exports it); used by the
//! keeper, leadership transfer and the API's checks of service definitions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Raft and lease timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// Leader heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Time allowed to send one snapshot chunk.
    #[serde(with = "humantime_serde")]
    pub install_snapshot_timeout: Duration,
    /// Worst relative clock-rate difference assumed between nodes and agents (0.05 = 5%).
    pub drift: f64,
    /// Extra safety margin added when waiting out a TTL before a new grant.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            install_snapshot_timeout: Duration::from_secs(10),
            drift: 0.05,
            margin: Duration::from_millis(50),
        }
    }
}

/// A lease TTL must span at least three heartbeats, so one lost heartbeat does not expire it,
/// and at least the shortest election timeout: followers wait that long before they elect a
/// new leader, so with a shorter TTL every leader failure would expire every lease. (Above
/// `election_timeout_max` a lease survives every leader change; in between, most.)
pub fn check_ttl(spec: &crate::state::ServiceSpec, timing: &TimingConfig) -> Result<(), String> {
    let beats = timing.heartbeat.saturating_mul(3).as_millis() as u64;
    if spec.lease_ttl_ms < beats {
        return Err(format!(
            "lease TTL {} ms is shorter than three heartbeats ({beats} ms): raise the TTL",
            spec.lease_ttl_ms
        ));
    }
    let election = timing.election_timeout_min.as_millis() as u64;
    if spec.lease_ttl_ms < election {
        return Err(format!(
            "lease TTL {} ms is shorter than the election timeout ({election} ms, \
             timing.election_timeout_min): every leader failure would expire the lease; raise \
             the TTL",
            spec.lease_ttl_ms
        ));
    }
    Ok(())
}
