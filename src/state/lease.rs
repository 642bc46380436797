//! The primary-region lease of one service.

use serde::{Deserialize, Serialize};

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// A region holds the lease.
    Held,
    /// Revocation committed; the holder must demote before anyone else is granted it.
    Revoking,
    /// Nobody holds it.
    Vacant,
}

/// What the primary may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LeaseMode {
    /// Normal operation.
    #[default]
    ReadWrite,
    /// Graceful degradation: the primary serves reads only.
    ReadOnly,
}

/// A service's lease as the replicated state holds it.
///
/// Invariant: `holder` is `Some` exactly when `state` is `Held` or `Revoking`; `token` is the
/// log index of the entry that granted the current or last lease (0 = never granted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Region holding (or, while revoking, last holding) the lease.
    pub holder: Option<String>,
    /// Fencing token: log index of the granting entry.
    pub token: u64,
    /// Revision (log index) of the last change to this service.
    pub revision: u64,
    /// Leader's wall clock at the grant, ms since the Unix epoch.
    pub granted_at_ms: i64,
    /// Time-to-live of renewals.
    pub ttl_ms: u64,
    /// Life-cycle state.
    pub state: LeaseState,
    /// Read-write or read-only.
    pub mode: LeaseMode,
}

impl Lease {
    /// A lease nobody has held yet.
    pub fn vacant(ttl_ms: u64) -> Self {
        Self {
            holder: None,
            token: 0,
            revision: 0,
            granted_at_ms: 0,
            ttl_ms,
            state: LeaseState::Vacant,
            mode: LeaseMode::ReadWrite,
        }
    }

    /// The region that may act as primary right now, if any.
    pub fn primary(&self) -> Option<&str> {
        match self.state {
            LeaseState::Held => self.holder.as_deref(),
            _ => None,
        }
    }
}
