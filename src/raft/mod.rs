//! openraft wiring: the type config, sled storage, the tonic transport and the state
//! machine that applies [`crate::state::Request`]s. openraft's types stay inside this module
//! (and `control`/`api` use only what is re-exported here) so a move to openraft 0.10 stays
//! contained.

pub mod network;
pub mod service;
pub mod store;

#[cfg(test)]
mod cluster_tests;

pub use network::{ForwardError, NetworkFactory, Peers, MAX_MESSAGE_SIZE};
pub use service::server;
pub use store::{open as open_store, AuditLog, LogStore, StateMachineStore, StoreError};

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

/// When this node last heard from a leader (for LOCAL read staleness).
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
    /// Records contact now.
    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms.max(1), Ordering::Relaxed);
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
