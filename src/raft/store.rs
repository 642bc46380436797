//! Durable storage for one node: the Raft log, the vote, the state-machine snapshot and the
//! audit trail, in one sled database per node directory.
//!
//! Trees:
//! - `logs`: big-endian `u64` index -> bincode [`Entry`](openraft::Entry);
//! - `meta`: `vote`, `committed`, `last_purged`;
//! - `snapshot`: the latest snapshot (a header plus chunks, see [`state_machine`]);
//! - `audit`: big-endian `u64` seq -> bincode [`AuditEntry`], the retained tail of the trail
//!   (older entries are compacted away at snapshots, see [`audit`]).
//!
//! Every write that openraft (or a client) is told is durable goes through [`Durable::sync`],
//! the one place where data reaches the disk.

pub mod audit;
mod log;
mod state_machine;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::state::audit::GENESIS;
use crate::state::{AuditEntry, State};

pub use self::log::LogStore;
pub use self::state_machine::{SnapshotBuilder, StateMachineStore};

use super::NodeId;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The sled database failed.
    #[error("storage engine: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation (fsync, open) failed.
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    /// A value could not be encoded or decoded.
    #[error("storage encoding: {0}")]
    Codec(#[from] bincode::Error),
    /// The stored data does not make sense (a bad key, a missing snapshot chunk).
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Converts to openraft's error, naming what was being done.
    pub(crate) fn into_raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Makes writes durable. Kept behind a trait so the durability step is one obvious place
/// (and can be replaced, e.g. by a no-op for throwaway `baton dev` clusters).
pub trait Durable: Send + Sync + 'static {
    /// Returns once every write made before the call survives a crash or power loss.
    fn sync(&self) -> io::Result<()>;
}

/// [`Durable`] for a sled database: `flush` plus `fdatasync` of its data file.
///
/// Why not just `Db::flush()`: on Linux sled 0.34 writes its log with `pwrite` and then
/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`. That pushes the pages to the device
/// but neither flushes the device's volatile write cache nor persists the file-size metadata
/// of a grown file, so an acknowledged write can vanish on power loss. `fdatasync` on the
/// same file (`<dir>/db`, sled's only log file; its `snap.*` page-table files are
/// `fsync`ed by sled itself) does both.
pub struct SledDisk {
    db: sled::Db,
    data: File,
    blobs: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl SledDisk {
    fn open(db: sled::Db, dir: &Path) -> Result<Self, StoreError> {
        // Opened once and kept: fsync on any descriptor of the file flushes all its pages.
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        // sled created the file (and `blobs/`) without syncing the directory entries.
        sync_dir(dir)?;
        Ok(Self {
            db,
            data,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// sled writes page images larger than about a quarter of a segment (~128 KiB) to
    /// separate files under `blobs/` without ever syncing them. We keep values small
    /// (snapshots are chunked), so this normally finds nothing; it is the safety net for
    /// oversized log or audit entries.
    fn sync_blobs(&self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .map_err(|_| io::Error::other("blob sync set poisoned"))?;
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Garbage-collected by sled in the meantime.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs)?;
        }
        // Forget blobs sled has removed, so the set does not grow forever.
        *synced = present;
        Ok(())
    }
}

impl Durable for SledDisk {
    fn sync(&self) -> io::Result<()> {
        // Blobs first: sled writes a blob file inside the insert call, before the log record
        // that points to it, so every blob of a completed write already exists here.
        self.sync_blobs()?;
        self.db.flush().map_err(io::Error::other)?;
        self.data.sync_data()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The trees and the durability step shared by the log store, the state machine and the
/// audit reader.
#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) logs: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) snapshot: sled::Tree,
    pub(crate) audit: sled::Tree,
    pub(crate) disk: Arc<dyn Durable>,
}

impl Trees {
    /// Runs `sync` on a blocking thread so an fsync does not stall the runtime's workers.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let disk = self.disk.clone();
        blocking(move || disk.sync().map_err(StoreError::from)).await
    }
}

/// Runs blocking storage work off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Big-endian key, so sled's byte order is numeric order.
pub(crate) fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Decodes a [`key`].
pub(crate) fn key_to_u64(k: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = k
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("key of {} bytes, expected 8", k.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// Audit entries kept behind the audit head at each snapshot by default. An entry is about
/// 1.2 KiB (before/after documents), and every kept entry is sent with each snapshot and
/// read by openraft at each start (`get_current_snapshot`): measured with 1,000,000 log
/// entries (`baton bench restart`), 100,000 kept made a 115 MB snapshot, 1.1 s to ready and
/// 160 MB RSS; 10,000 make 13 MB, 0.2 s and 45 MB.
pub const DEFAULT_AUDIT_RETENTION: u64 = 10_000;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// Revisions of watch history a fresh state keeps.
    pub history_limit: usize,
    /// Audit entries kept behind the audit head at each snapshot (at least 1).
    pub audit_retention: u64,
    /// Archive compacted audit entries to segment files under `audit-archive/`.
    pub audit_archive: bool,
}

impl Options {
    /// The defaults, with `history_limit`.
    pub fn new(history_limit: usize) -> Self {
        Self {
            history_limit,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            audit_archive: true,
        }
    }
}

/// Opens (or creates) the store in `dir`: the Raft log store, the state machine (loaded from
/// the latest snapshot; openraft re-applies later committed entries) and a reader of the
/// audit trail. `history_limit` sizes the watch history of a fresh state.
pub fn open(
    dir: &Path,
    history_limit: usize,
) -> Result<(LogStore, StateMachineStore, AuditLog), StoreError> {
    open_with(dir, &Options::new(history_limit), |disk| disk)
}

/// Like [`open`], with every option.
pub fn open_opts(
    dir: &Path,
    opts: &Options,
) -> Result<(LogStore, StateMachineStore, AuditLog), StoreError> {
    open_with(dir, opts, |disk| disk)
}

/// Like [`open_opts`], with `wrap` around the durability step (tests count syncs with it).
pub(crate) fn open_with(
    dir: &Path,
    opts: &Options,
    wrap: impl FnOnce(Arc<dyn Durable>) -> Arc<dyn Durable>,
) -> Result<(LogStore, StateMachineStore, AuditLog), StoreError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        // Make the new directory's own entry durable too.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let db = sled::Config::new().path(dir).open()?;
    let disk = wrap(Arc::new(SledDisk::open(db.clone(), dir)?));
    let trees = Trees {
        logs: db.open_tree("logs")?,
        meta: db.open_tree("meta")?,
        snapshot: db.open_tree("snapshot")?,
        audit: db.open_tree("audit")?,
        disk,
    };
    let log = LogStore::open(trees.clone())?;
    let retention = audit::Retention {
        keep: opts.audit_retention.max(1),
        archive: opts.audit_archive.then(|| dir.join(audit::ARCHIVE_DIR)),
    };
    let sm = StateMachineStore::open(trees.clone(), opts.history_limit, retention)?;
    let audit = AuditLog { trees };
    Ok((log, sm, audit))
}

/// Whether `dir` is absent or an empty directory (a restore writes only there).
pub fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Seeds the data directory `dir` (absent or empty) with a store in `dir/sub` holding a
/// restored state at log index `revision` and a new membership of `members` (see
/// `state_machine::seed` for why this is how a restored cluster starts). Built in a sibling
/// temporary directory, checked by opening it as a node would, then renamed into place: a
/// failure leaves `dir` as it was.
pub fn seed_restored(
    dir: &Path,
    sub: &str,
    state: &State,
    audit: &[AuditEntry],
    revision: u64,
    members: std::collections::BTreeMap<NodeId, crate::raft::NodeInfo>,
) -> Result<(), StoreError> {
    if !is_empty_dir(dir)? {
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is not empty: restore only into an empty or absent data directory",
                dir.display()
            ),
        )));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| StoreError::Corrupt(format!("{} names no directory", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let tmp = parent.join(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let built = (|| -> Result<(), StoreError> {
        let store = tmp.join(sub);
        {
            std::fs::create_dir_all(&store)?;
            let db = sled::Config::new().path(&store).open()?;
            let disk: Arc<dyn Durable> = Arc::new(SledDisk::open(db.clone(), &store)?);
            let trees = Trees {
                logs: db.open_tree("logs")?,
                meta: db.open_tree("meta")?,
                snapshot: db.open_tree("snapshot")?,
                audit: db.open_tree("audit")?,
                disk,
            };
            state_machine::seed(&trees, state, audit, revision, members)?;
        }
        // Open it as a node will: the snapshot loads and its audit trail is whole.
        let (_log, _sm, audit_log) = reopen(&store)?;
        if audit_log.next_seq()? != state.audit_head().next_seq {
            return Err(StoreError::Corrupt(
                "the seeded audit trail is incomplete".into(),
            ));
        }
        sync_dir(&tmp)?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&tmp, dir)?;
    sync_dir(&parent)?;
    Ok(())
}

/// Opens `store` again in this process once the handle just dropped has let go of it: sled's
/// background flusher holds the database (and its file lock) a moment after the last handle
/// is dropped, longer on a busy machine, and opening meanwhile fails with WouldBlock.
fn reopen(store: &Path) -> Result<(LogStore, StateMachineStore, AuditLog), StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match open(store, crate::state::history::DEFAULT_HISTORY) {
            // sled reports the held lock as an `Other` error naming WouldBlock.
            Err(StoreError::Sled(sled::Error::Io(e)))
                if (e.kind() == io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Read access to the replicated audit trail as this node has applied it.
#[derive(Clone)]
pub struct AuditLog {
    trees: Trees,
}

impl AuditLog {
    /// The oldest seq this node still has: entries before it were compacted away (0 when
    /// none were).
    pub fn oldest_seq(&self) -> Result<u64, StoreError> {
        audit::oldest_seq(&self.trees)
    }

    /// The compaction checkpoint: seq and hash of the last entry dropped, if any.
    pub fn checkpoint(&self) -> Result<Option<audit::Checkpoint>, StoreError> {
        audit::read_checkpoint(&self.trees)
    }

    /// Up to `limit` entries with `seq >= from_seq`, in order; only those of `service` when
    /// given (the page then skips entries of other services and may be sparse). Entries
    /// below [`AuditLog::oldest_seq`] are not returned (callers check it first).
    pub fn list(
        &self,
        from_seq: u64,
        limit: usize,
        service: Option<&str>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let from_seq = from_seq.max(self.oldest_seq()?);
        for kv in self.trees.audit.range(key(from_seq)..) {
            let (_, v) = kv?;
            let entry: AuditEntry = bincode::deserialize(&v)?;
            if service.is_none_or(|s| entry.service == s) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The hash a page starting at `seq` must link to: [`GENESIS`] for seq 0, the hash of
    /// entry `seq - 1` otherwise (the checkpoint's when that entry was compacted), `None` if
    /// this node does not have it.
    pub fn hash_before(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let Some(prev) = seq.checked_sub(1) else {
            return Ok(Some(GENESIS.to_string()));
        };
        if let Some(cp) = audit::read_checkpoint(&self.trees)?.filter(|cp| cp.seq == prev) {
            return Ok(Some(cp.hash));
        }
        match self.trees.audit.get(key(prev))? {
            Some(v) => {
                let entry: AuditEntry = bincode::deserialize(&v)?;
                Ok(Some(entry.hash))
            }
            None => Ok(None),
        }
    }

    /// Sequence number after the last stored entry (0 when empty).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        match self.trees.audit.last()? {
            Some((k, _)) => Ok(key_to_u64(&k)? + 1),
            None => self.oldest_seq(),
        }
    }

    /// Makes everything written so far durable (for a clean shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.trees.sync().await
    }
}
