//! openraft wiring: the type config, sled storage, the tonic transport and the state
//! machine that applies [`crate::state::Request`]s. openraft's types stay inside this module
//! (and `control`/`api` use only what is re-exported here) so a move to openraft 0.10 stays
//! contained.

pub mod network;
pub mod pool;
pub mod service;
pub mod store;
pub mod transfer;

#[cfg(test)]
mod cluster_tests;

pub use network::{ForwardError, ForwardReject, NetworkFactory, Peers, MAX_MESSAGE_SIZE};
pub use pool::ChannelPool;
pub use service::server;
pub use store::{
    is_empty_dir, open as open_store, seed_restored, AuditLog, LogStore, StateMachineStore,
    StoreError,
};

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::{Event, Request, Response, State};

/// A coordinator node's id, unique within a cluster.
pub type NodeId = u64;

/// Where a node listens and which region it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` serving the public API (and Raft, unless the node has a separate peer
    /// listener: peers then dial it at their `[dial]` address for it).
    pub addr: String,
    /// The node's region (its vantage point).
    pub region: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.addr, self.region)
    }
}

openraft::declare_raft_types!(
    /// baton's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's metrics for this config.
pub type Metrics = openraft::RaftMetrics<NodeId, NodeInfo>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;

/// The openraft names the rest of baton uses, re-exported here (as openraft's examples keep
/// a `typ` module) so every other module imports them from `raft` and an openraft upgrade is
/// a change of this module.
pub mod typ {
    pub use openraft::{
        ChangeMembers, CommittedLeaderId, Config, LogId, Membership, ServerState, SnapshotPolicy,
        StoredMembership,
    };

    /// openraft's error types.
    pub mod error {
        pub use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
    }
}

/// The applied state machine as readers see it.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    /// The replicated model.
    pub state: State,
    /// Index of the last applied log entry (0 = none).
    pub applied: u64,
}

/// Shared, read-mostly access to the applied state. A std lock: held only for short,
/// non-async sections (apply one batch, copy one answer).
pub type SharedState = Arc<RwLock<StateView>>;

/// What the state machine tells watchers after it applies entries.
#[derive(Debug, Clone)]
pub enum Change {
    /// The events of one revision, in revision order.
    Events {
        /// The revision.
        revision: u64,
        /// Its events.
        events: Arc<Vec<Event>>,
    },
    /// The state was replaced by a snapshot: re-read history from your last revision.
    Reset {
        /// Applied index after the install.
        applied: u64,
    },
}

/// When this node, as leader, last had its leadership confirmed by a quorum: the start of
/// the last successful confirmation round (the read barrier records it; the transport tells
/// followers its age with every AppendEntries).
#[derive(Debug)]
pub struct Confirmed {
    origin: Instant,
    /// ms after `origin` (0 = never).
    at_ms: AtomicU64,
}

impl Default for Confirmed {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl Confirmed {
    /// A round that started at `started` succeeded.
    pub fn record(&self, started: Instant) {
        let ms = started.saturating_duration_since(self.origin).as_millis() as u64;
        self.at_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// How long ago the last successful round started (`None`: never).
    pub fn age(&self) -> Option<std::time::Duration> {
        match self.at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(ms)),
            ),
        }
    }
}

/// How fresh this node's state is as a follower (for LOCAL read staleness and watch
/// progress): the instant its leader last vouched for, i.e. an AppendEntries' receipt less
/// the age of that leader's last quorum confirmation.
#[derive(Debug)]
pub struct LeaderContact {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    /// Records contact now, vouched for as of `age` ago (`None`: as of now — a sender that
    /// does not say).
    pub fn touch(&self, age: Option<std::time::Duration>) {
        let now = self.origin.elapsed();
        let fresh = now.saturating_sub(age.unwrap_or_default());
        if fresh.is_zero() {
            return;
        }
        self.last_ms
            .fetch_max((fresh.as_millis() as u64).max(1), Ordering::Relaxed);
    }

    /// Milliseconds since the last contact; `None` if never.
    pub fn age_ms(&self) -> Option<u64> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((self.origin.elapsed().as_millis() as u64).saturating_sub(ms)),
        }
    }
}

/// Sender of [`Change`]s; subscribe for watches.
pub type Changes = broadcast::Sender<Change>;

/// The current voters: node id -> region (the vantage points).
pub fn voters(raft: &Raft) -> std::collections::BTreeMap<NodeId, String> {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.region.clone())))
        .collect()
}

/// Whether the heartbeat interval leaves room for the measured round trips. openraft 0.9
/// gives each AppendEntries, and so each leadership confirmation behind linearizable reads
/// and lease renewals, a single heartbeat interval: when the round trip to the quorum's
/// slowest needed member takes more than half of it, confirmations start to fail and
/// renewals with them. `rtts` are the last round trips to the other voters; `voters` counts
/// all voters including this node. Returns the warning to log, if any.
pub fn heartbeat_check(
    heartbeat: std::time::Duration,
    rtts: &std::collections::HashMap<NodeId, std::time::Duration>,
    voters: usize,
) -> Option<String> {
    // This node plus the (quorum − 1) fastest others make a quorum.
    let needed = voters / 2;
    if needed == 0 {
        return None;
    }
    let mut sorted: Vec<std::time::Duration> = rtts.values().copied().collect();
    sorted.sort();
    let quorum_rtt = *sorted.get(needed - 1)?;
    (quorum_rtt * 2 > heartbeat).then(|| {
        format!(
            "timing.heartbeat ({}) is less than twice the round trip to a quorum of voters ({}): \
             leadership confirmations, and the linearizable reads and lease renewals behind \
             them, will time out; raise timing.heartbeat (and the election timeouts with it)",
            humantime::format_duration(heartbeat),
            humantime::format_duration(std::time::Duration::from_millis(
                quorum_rtt.as_millis() as u64
            ))
        )
    })
}

#[cfg(test)]
mod heartbeat_tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::heartbeat_check;

    #[test]
    fn the_heartbeat_must_cover_twice_the_quorum_round_trip() {
        let ms = Duration::from_millis;
        // 3 voters: this node + the fastest other is a quorum.
        let rtts = HashMap::from([(2, ms(20)), (3, ms(400))]);
        assert_eq!(heartbeat_check(ms(50), &rtts, 3), None);
        let slow = HashMap::from([(2, ms(30)), (3, ms(400))]);
        let w = heartbeat_check(ms(50), &slow, 3).expect("a warning");
        assert!(w.contains("timing.heartbeat"), "{w}");
        // 5 voters: the second fastest other decides.
        let five = HashMap::from([(2, ms(5)), (3, ms(80)), (4, ms(500)), (5, ms(900))]);
        assert!(heartbeat_check(ms(150), &five, 5).is_some());
        assert_eq!(heartbeat_check(ms(200), &five, 5), None);
        // Nothing measured yet: no verdict.
        assert_eq!(heartbeat_check(ms(50), &HashMap::new(), 3), None);
    }
}
