//! The Raft log and vote, in the `logs` and `meta` trees.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{blocking, key, StoreError, Trees};
use crate::raft::{LogId, NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
pub(super) const LAST_PURGED: &[u8] = b"last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Most bytes of log entries in one AppendEntries (one entry is always sent, and commands
/// are bounded by `state::limits::MAX_COMMAND_BYTES`). openraft 0.9 gives every
/// AppendEntries one heartbeat interval, whatever it carries, so a batch must be small
/// enough to cross the link in one heartbeat: 512 KiB in 100 ms needs about 40 Mbit/s.
/// A follower far behind catches up in many small batches instead of timing out forever
/// on one large one.
pub const REPLICATION_BATCH_BYTES: usize = 512 * 1024;

/// The Raft log store. Cheap to clone: clones share the database (and serve as the log
/// reader of replication tasks).
#[derive(Clone)]
pub struct LogStore {
    trees: Trees,
}

impl LogStore {
    pub(super) fn open(trees: Trees) -> std::result::Result<Self, StoreError> {
        let store = Self { trees };
        // A purge writes `last_purged` before deleting entries; finish one a crash cut short.
        if let Some(purged) = store.get_meta::<LogId>(LAST_PURGED)? {
            let mut batch = sled::Batch::default();
            for k in store.trees.logs.range(..=key(purged.index)).keys() {
                batch.remove(k?);
            }
            store.trees.logs.apply_batch(batch)?;
        }
        Ok(store)
    }

    fn get_meta<T: DeserializeOwned>(
        &self,
        name: &[u8],
    ) -> std::result::Result<Option<T>, StoreError> {
        match self.trees.meta.get(name)? {
            Some(v) => Ok(Some(bincode::deserialize(&v)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        name: &[u8],
        value: &T,
    ) -> std::result::Result<(), StoreError> {
        self.trees.meta.insert(name, bincode::serialize(value)?)?;
        Ok(())
    }

    fn last_log_id(&self) -> std::result::Result<Option<LogId>, StoreError> {
        match self.trees.logs.last()? {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = bincode::deserialize(&v)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => Ok(None),
        }
    }

    fn read_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, StoreError> {
        let map = |b: Bound<u64>| match b {
            Bound::Included(i) => Bound::Included(key(i)),
            Bound::Excluded(i) => Bound::Excluded(key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.trees.logs.range::<[u8; 8], _>((map(start), map(end))) {
            let (_, v) = kv?;
            out.push(bincode::deserialize(&v)?);
        }
        Ok(out)
    }

    /// Entries `[start, end)` up to [`REPLICATION_BATCH_BYTES`] (at least one).
    fn read_limited(
        &self,
        start: u64,
        end: u64,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.trees.logs.range(key(start)..key(end)) {
            let (_, v) = kv?;
            bytes += v.len();
            if bytes > REPLICATION_BATCH_BYTES && !out.is_empty() {
                break;
            }
            out.push(bincode::deserialize(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        // An empty or inverted range would make sled panic.
        let empty = match (start, end) {
            (Bound::Included(s), Bound::Excluded(e)) => s >= e,
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Excluded(s), Bound::Excluded(e)) => s.saturating_add(1) >= e,
            (Bound::Excluded(s), Bound::Included(e)) => s >= e,
            _ => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        self.read_range(start, end)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        // Replication reads through here: bound each batch by bytes, not only by count.
        if start >= end {
            return Ok(Vec::new());
        }
        self.read_limited(start, end)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let read = || -> std::result::Result<_, StoreError> {
            let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
            let last = self.last_log_id()?.or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let err = |e: StoreError| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write);
        self.put_meta(VOTE, vote).map_err(err)?;
        // Raft's safety rests on a node never voting twice in a term: durable before returning.
        self.trees.sync().await.map_err(err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        // Not synced on purpose: it becomes durable with the next append or vote. Losing it
        // only means a restarted node waits for the leader before re-applying those entries.
        self.put_meta(COMMITTED, &committed)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>> {
        let got: Option<Option<LogId>> = self
            .get_meta(COMMITTED)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(got.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let trees = self.trees.clone();
        // Insert and sync on a blocking thread: one batch, one fsync per call.
        let res = blocking(move || {
            let mut batch = sled::Batch::default();
            for entry in &entries {
                batch.insert(&key(entry.log_id.index)[..], bincode::serialize(entry)?);
            }
            trees.logs.apply_batch(batch)?;
            trees.disk.sync()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                // Only now, with the entries on disk, may openraft count them toward a quorum.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_raft(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<()> {
        // Not synced: if the removal is lost in a crash the node simply still has entries it
        // would have had, had the conflicting append never arrived; the next append syncs it.
        let run = || -> std::result::Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            for k in self.trees.logs.range(key(log_id.index)..).keys() {
                batch.remove(k?);
            }
            self.trees.logs.apply_batch(batch)?;
            Ok(())
        };
        run().map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<()> {
        // `last_purged` first: a crash in between leaves extra entries that `open` removes.
        let run = || -> std::result::Result<(), StoreError> {
            self.put_meta(LAST_PURGED, &log_id)?;
            let mut batch = sled::Batch::default();
            for k in self.trees.logs.range(..=key(log_id.index)).keys() {
                batch.remove(k?);
            }
            self.trees.logs.apply_batch(batch)?;
            Ok(())
        };
        run().map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
