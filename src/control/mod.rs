//! The leader-side control plane: linearizable read batching ([`read`]) and the lease
//! keeper ([`keeper`]): in-memory renewals, expiry, and fencing before a new grant.

pub mod controller;
pub mod keeper;
pub mod policy;
pub mod read;

use std::time::{SystemTime, UNIX_EPOCH};

pub use keeper::{FenceOutcome, Keeper, KeeperTiming, Renewal};
pub use read::ReadBarrier;

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

/// Milliseconds since the Unix epoch on this node's clock (the leader's stamp).
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Proposes a command through Raft and waits until it is applied on this (leader) node.
pub async fn propose(
    raft: &Raft,
    actor: &str,
    command: Command,
) -> Result<(u64, Response), ControlError> {
    use openraft::error::{ClientWriteError, RaftError};
    let req = Request {
        at_ms: wall_clock_ms(),
        actor: actor.to_string(),
        command,
    };
    // An oversized entry would be copied to every node and into every snapshot: refuse it
    // before it enters the log.
    crate::state::limits::check_command_size(&req).map_err(ControlError::Invalid)?;
    match raft.client_write(req).await {
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
