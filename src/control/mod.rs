//! The leader-side control plane: linearizable read batching ([`read`]) and the lease
//! keeper ([`keeper`]): in-memory renewals, expiry, and fencing before a new grant.

pub mod controller;
pub mod keeper;
pub mod moves;
pub mod policy;
pub mod read;
pub mod timing;

pub use keeper::{FenceOutcome, Keeper, KeeperTiming, Renewal, RenewalMsg};
pub use read::ReadBarrier;
pub use timing::TimingConfig;

use crate::raft::{NodeId, NodeInfo, Raft};
use crate::state::{Command, Request, Response};

/// Why a control operation could not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// This node is not the leader (the leader, when known).
    #[error("this node is not the leader")]
    NotLeader(Option<(NodeId, NodeInfo)>),
    /// The leader could not reach a quorum.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Leadership changed while waiting.
    #[error("leadership changed while {0}; the operation may be retried")]
    LeadershipLost(String),
    /// A wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// The node is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Raft stopped with a fatal error.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The command breaks a limit (too big to replicate); nothing was proposed.
    #[error("{0}")]
    Invalid(String),
}

/// How long the leader may answer no renewal without any holder's validity running out:
/// for the shortest held TTL, the validity after a renewal (`ttl·(1−drift) − margin`) less the
/// renewal interval (`ttl/3`) that may already have passed. `None` when nothing is held.
pub fn quiet_budget<'a>(
    leases: impl Iterator<Item = &'a crate::state::Lease>,
    drift: f64,
    margin: std::time::Duration,
) -> Option<std::time::Duration> {
    leases
        .filter(|l| l.state != crate::state::LeaseState::Vacant)
        .map(|l| {
            let ttl = std::time::Duration::from_millis(l.ttl_ms);
            ttl.mul_f64((1.0 - drift).clamp(0.0, 1.0))
                .saturating_sub(margin)
                .saturating_sub(ttl / 3)
        })
        .min()
}

pub use crate::clock::wall_clock_ms;

/// How long a write may wait for its commit: a leader cut off from its quorum (openraft 0.9
/// leaders do not step down) would otherwise hold the caller forever. Ten election timeouts,
/// at least 5 s: far beyond any healthy commit, short enough to answer during an incident.
pub fn write_timeout(raft: &Raft) -> std::time::Duration {
    let election = std::time::Duration::from_millis(raft.config().election_timeout_max);
    (election * 10).max(std::time::Duration::from_secs(5))
}

/// Proposes a command through Raft and waits until it is applied on this (leader) node.
/// Gives up after [`write_timeout`] with [`ControlError::Timeout`] (DEADLINE_EXCEEDED): the
/// outcome is then unknown (the entry may still commit), which the message says.
pub async fn propose(
    raft: &Raft,
    actor: &str,
    command: Command,
) -> Result<(u64, Response), ControlError> {
    use crate::raft::typ::error::{ClientWriteError, RaftError};
    let req = Request {
        at_ms: wall_clock_ms(),
        actor: actor.to_string(),
        command,
    };
    // An oversized entry would be copied to every node and into every snapshot: refuse it
    // before it enters the log.
    crate::state::limits::check_command_size(&req).map_err(ControlError::Invalid)?;
    let limit = write_timeout(raft);
    let Ok(written) = tokio::time::timeout(limit, raft.client_write(req)).await else {
        return Err(ControlError::Timeout(format!(
            "the write did not commit within {}: this leader may be cut off from a majority; \
             the outcome is unknown, read the state before retrying",
            humantime::format_duration(limit)
        )));
    };
    match written {
        Ok(resp) => Ok((resp.log_id.index, resp.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(
            ControlError::NotLeader(read::leader_of(f.leader_id, f.leader_node)),
        ),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ControlError::Fatal(e.to_string()))
        }
        Err(RaftError::Fatal(f)) => Err(ControlError::Fatal(f.to_string())),
    }
}

#[cfg(test)]
mod budget_tests {
    use std::time::Duration;

    use super::quiet_budget;
    use crate::state::{Lease, LeaseState};

    #[test]
    fn the_quiet_budget_is_set_by_the_shortest_held_lease() {
        let mut short = Lease::vacant(2_000);
        short.state = LeaseState::Held;
        short.holder = Some("us-east".into());
        let mut long = short.clone();
        long.ttl_ms = 30_000;
        let vacant = Lease::vacant(100);
        let b = quiet_budget(
            [&long, &short, &vacant].into_iter(),
            0.05,
            Duration::from_millis(50),
        );
        // 2000·0.95 − 50 − 666.67 ms.
        assert_eq!(b.map(|d| d.as_millis()), Some(1183));
        assert_eq!(
            quiet_budget([&vacant].into_iter(), 0.05, Duration::ZERO),
            None
        );
    }
}
