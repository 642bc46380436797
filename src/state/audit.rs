//! The audit trail: append-only, hash-chained, one entry per change and operator command.
//!
//! `hash = sha256(prev_hash || seq || revision || at_ms || actor || action || service ||
//! reason || before || after || outcome)`, each field length-prefixed so no two entries
//! encode the same bytes. The first entry's `prev_hash` is [`GENESIS`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor recorded for decisions the coordinator makes by itself.
pub const AUTOMATION: &str = "automation";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the trail, from 0, without gaps.
    pub seq: u64,
    /// Log index of the entry that produced it.
    pub revision: u64,
    /// Leader's wall clock, ms since the Unix epoch.
    pub at_ms: i64,
    /// Principal or [`AUTOMATION`].
    pub actor: String,
    /// What was asked (`put-service`, `failover.revoke`, ...).
    pub action: String,
    /// Service concerned (empty for cluster-wide actions).
    pub service: String,
    /// Why, in the caller's words.
    pub reason: String,
    /// JSON of the object before.
    pub before: String,
    /// JSON of the object after.
    pub after: String,
    /// `ok` or `rejected: ...`.
    pub outcome: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry's fields and `prev_hash` imply.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        put(self.prev_hash.as_bytes());
        put(&self.seq.to_be_bytes());
        put(&self.revision.to_be_bytes());
        put(&self.at_ms.to_be_bytes());
        put(self.actor.as_bytes());
        put(self.action.as_bytes());
        put(self.service.as_bytes());
        put(self.reason.as_bytes());
        put(self.before.as_bytes());
        put(self.after.as_bytes());
        put(self.outcome.as_bytes());
        hex::encode(h.finalize())
    }
}

/// The end of the chain: what the next entry links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence number of the next entry.
    pub next_seq: u64,
    /// Hash of the last entry ([`GENESIS`] when empty).
    pub last_hash: String,
}

impl Default for AuditHead {
    fn default() -> Self {
        Self {
            next_seq: 0,
            last_hash: GENESIS.to_string(),
        }
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An entry's stored hash differs from the hash of its contents.
    #[error("audit entry {seq} was altered: its hash does not match its contents")]
    Altered {
        /// The entry.
        seq: u64,
    },
    /// An entry does not link to its predecessor.
    #[error("audit entry {seq} does not link to the entry before it")]
    Broken {
        /// The entry.
        seq: u64,
    },
    /// Sequence numbers skip or repeat.
    #[error("audit sequence jumps from {prev} to {seq}: entries are missing or duplicated")]
    Gap {
        /// Previous entry's seq.
        prev: u64,
        /// This entry's seq.
        seq: u64,
    },
}

/// Verifies a contiguous run of entries. `prev_hash` is the hash of the entry before the
/// first one (or [`GENESIS`] when the run starts at seq 0).
pub fn verify(entries: &[AuditEntry], prev_hash: Option<&str>) -> Result<(), ChainError> {
    let mut expected_prev = prev_hash.map(str::to_string);
    let mut prev_seq: Option<u64> = None;
    for e in entries {
        if let Some(p) = prev_seq {
            if e.seq != p + 1 {
                return Err(ChainError::Gap {
                    prev: p,
                    seq: e.seq,
                });
            }
        } else if e.seq == 0 && expected_prev.is_none() {
            expected_prev = Some(GENESIS.to_string());
        }
        if let Some(p) = &expected_prev {
            if &e.prev_hash != p {
                return Err(ChainError::Broken { seq: e.seq });
            }
        }
        if e.compute_hash() != e.hash {
            return Err(ChainError::Altered { seq: e.seq });
        }
        expected_prev = Some(e.hash.clone());
        prev_seq = Some(e.seq);
    }
    Ok(())
}
