//! The bounded change history that lets watchers resume from a revision.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::lease::Lease;

/// Default number of revisions kept for watch resume.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What happened to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A region was granted the lease (new token).
    Granted,
    /// Revocation started: the holder must demote.
    Revoking,
    /// No primary any more (expired, released or revoked to vacancy).
    Vacated,
    /// Read-write / read-only changed.
    ModeChanged,
    /// The definition was created or changed.
    ServicePut,
    /// The service was deleted.
    ServiceDeleted,
    /// Automation was paused or resumed (maintenance).
    FreezeChanged,
}

/// One change to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Which service.
    pub service: String,
    /// Log index of the change.
    pub revision: u64,
    /// The lease after the change.
    pub lease: Lease,
    /// Why (operator's reason or automation's explanation).
    pub reason: String,
    /// Whether automation is paused for the service after the change.
    pub frozen: bool,
}

/// Every event of the last `limit` changing revisions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    limit: usize,
    /// (revision, events of that revision), revisions strictly increasing.
    entries: VecDeque<(u64, Vec<Event>)>,
    /// Highest revision dropped from the front (0 = nothing dropped yet).
    compacted_through: u64,
}

/// A resume point older than the history keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} has been compacted; the oldest revision available is {oldest}")]
pub struct Compacted {
    /// What the watcher asked for.
    pub requested: u64,
    /// The oldest revision it may ask for.
    pub oldest: u64,
}

impl History {
    /// An empty history keeping at most `limit` revisions (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            entries: VecDeque::new(),
            compacted_through: 0,
        }
    }

    /// Records the events of one revision; drops the oldest beyond the limit.
    pub fn push(&mut self, revision: u64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        debug_assert!(self.entries.back().is_none_or(|(r, _)| *r < revision));
        self.entries.push_back((revision, events));
        while self.entries.len() > self.limit {
            if let Some((r, _)) = self.entries.pop_front() {
                self.compacted_through = r;
            }
        }
    }

    /// The oldest revision a watcher may resume from.
    pub fn oldest_available(&self) -> u64 {
        self.compacted_through + 1
    }

    /// Every kept revision `>= from`, in order; an error if part of that range was dropped.
    pub fn since(&self, from: u64) -> Result<Vec<(u64, Vec<Event>)>, Compacted> {
        if self.compacted_through > 0 && from <= self.compacted_through {
            return Err(Compacted {
                requested: from,
                oldest: self.oldest_available(),
            });
        }
        let start = self.entries.partition_point(|(r, _)| *r < from);
        Ok(self.entries.range(start..).cloned().collect())
    }

    /// The last `n` kept revisions, oldest first (the status page's timeline).
    pub fn recent(&self, n: usize) -> Vec<(u64, Vec<Event>)> {
        let start = self.entries.len().saturating_sub(n);
        self.entries.range(start..).cloned().collect()
    }

    /// Number of revisions kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
