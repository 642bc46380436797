//! The audit trail's own store: the retained tail in the `audit` tree, a checkpoint for
//! what was compacted away, and (optionally) archive segments of the dropped entries.
//!
//! Every command leaves one entry, so the trail grows without bound. A snapshot build keeps
//! the last `audit_retention` entries before its audit head and drops the older ones: first
//! they are appended to a segment file (when archiving), then the checkpoint — seq and hash
//! of the last dropped entry — is written, then they are removed. The retained chain links
//! to the checkpoint's hash, so it still verifies; the archive segments link to each other
//! and to the retained chain the same way.
//!
//! Archive segments: `audit-archive/<first seq>-<last seq>.jsonl` in the store directory,
//! one JSON entry per line (the format of `baton audit export`, so `baton audit verify
//! --file` checks one), beside `<same>.jsonl.sha256` in `sha256sum` format.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{key, key_to_u64, StoreError, Trees};
use crate::state::AuditEntry;

/// Key of the checkpoint in the `meta` tree.
const CHECKPOINT: &[u8] = b"audit_checkpoint";

/// Folder of the archive segments, in the store directory.
pub const ARCHIVE_DIR: &str = "audit-archive";

/// Entries removed per batch while compacting (bounds the memory of one batch).
const REMOVE_BATCH: usize = 10_000;

/// The last entry compaction dropped: the retained trail starts at `seq + 1` and its first
/// entry's `prev_hash` is `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Seq of the last dropped entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// How the audit trail is kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Entries kept behind the audit head at each snapshot (at least 1).
    pub keep: u64,
    /// Where dropped entries are archived; `None` drops them for good.
    pub archive: Option<PathBuf>,
}

pub(super) fn read_checkpoint(trees: &Trees) -> Result<Option<Checkpoint>, StoreError> {
    match trees.meta.get(CHECKPOINT)? {
        Some(v) => Ok(Some(bincode::deserialize(&v)?)),
        None => Ok(None),
    }
}

pub(super) fn write_checkpoint(trees: &Trees, cp: Option<&Checkpoint>) -> Result<(), StoreError> {
    match cp {
        Some(cp) => trees.meta.insert(CHECKPOINT, bincode::serialize(cp)?)?,
        None => trees.meta.remove(CHECKPOINT)?,
    };
    Ok(())
}

/// The oldest seq this node keeps (0 when nothing was compacted).
pub(super) fn oldest_seq(trees: &Trees) -> Result<u64, StoreError> {
    Ok(read_checkpoint(trees)?.map_or(0, |cp| cp.seq + 1))
}

/// Removes every entry with `seq < floor` in batches. Not synced.
fn remove_below(trees: &Trees, floor: u64) -> Result<(), StoreError> {
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in trees.audit.range(..key(floor)).keys().take(REMOVE_BATCH) {
            batch.remove(k?);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        trees.audit.apply_batch(batch)?;
    }
}

/// Drops the entries below `floor` (archiving them first when configured) and records the
/// checkpoint. Returns how many were dropped. Not synced: the snapshot that follows syncs.
pub(super) fn compact(
    trees: &Trees,
    floor: u64,
    archive: Option<&Path>,
) -> Result<u64, StoreError> {
    let oldest = oldest_seq(trees)?;
    if floor <= oldest {
        return Ok(0);
    }
    let last = floor - 1;
    let hash = match trees.audit.get(key(last))? {
        Some(v) => bincode::deserialize::<AuditEntry>(&v)?.hash,
        None => {
            return Err(StoreError::Corrupt(format!(
                "audit entry {last} is missing; cannot compact the trail to {floor}"
            )))
        }
    };
    if let Some(dir) = archive {
        write_segment(trees, dir, oldest, floor)?;
    }
    // Checkpoint before removing: a crash in between leaves entries the checkpoint already
    // hides, which the next compaction removes (it removes everything below its floor).
    write_checkpoint(trees, Some(&Checkpoint { seq: last, hash }))?;
    remove_below(trees, floor)?;
    Ok(floor - oldest)
}

/// Writes entries `[from, to)` to a segment file, synced, and its checksum beside it. A
/// rerun after a crash rewrites the same file (its name depends only on the range).
fn write_segment(trees: &Trees, dir: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir)?;
    let name = format!("{from:020}-{:020}.jsonl", to - 1);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut sha = Sha256::new();
    {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        let mut expect = from;
        for kv in trees.audit.range(key(from)..key(to)) {
            let (k, v) = kv?;
            let seq = key_to_u64(&k)?;
            if seq != expect {
                return Err(StoreError::Corrupt(format!(
                    "audit entry {expect} is missing"
                )));
            }
            let entry: AuditEntry = bincode::deserialize(&v)?;
            let mut line = serde_json::to_vec(&entry)
                .map_err(|e| StoreError::Corrupt(format!("encoding audit entry {seq}: {e}")))?;
            line.push(b'\n');
            sha.update(&line);
            out.write_all(&line)?;
            expect += 1;
        }
        if expect != to {
            return Err(StoreError::Corrupt(format!(
                "audit entry {expect} is missing"
            )));
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    let sum = format!("{}  {name}\n", hex::encode(sha.finalize()));
    let sum_path = dir.join(format!("{name}.sha256"));
    let tmp = dir.join(format!(".{name}.sha256.tmp"));
    std::fs::write(&tmp, sum)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, sum_path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The bincode encoding of the entries `[from, to)` as a `Vec<AuditEntry>`: the length, then
/// the tree's values as stored (each is the bincode of one entry), checked to be complete.
pub(super) fn encoded_range(
    trees: &Trees,
    from: u64,
    to: u64,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    out.extend_from_slice(&(to.saturating_sub(from)).to_le_bytes());
    let mut expect = from;
    for kv in trees.audit.range(key(from)..key(to)) {
        let (k, v) = kv?;
        let seq = key_to_u64(&k)?;
        if seq != expect {
            return Err(StoreError::Corrupt(format!(
                "audit entry {expect} is missing"
            )));
        }
        out.extend_from_slice(&v);
        expect += 1;
    }
    if expect < to {
        return Err(StoreError::Corrupt(format!(
            "audit trail ends at {expect}, the state expects {to}"
        )));
    }
    Ok(())
}

/// Replaces the trail with `tail` (a contiguous run ending at `next_seq - 1`, or empty when
/// `next_seq` is 0 or the run starts there) and its checkpoint. Not synced.
pub(super) fn replace(trees: &Trees, tail: &[AuditEntry], next_seq: u64) -> Result<(), StoreError> {
    let floor = tail.first().map_or(next_seq, |e| e.seq);
    let checkpoint = match tail.first() {
        Some(first) if first.seq > 0 => Some(Checkpoint {
            seq: first.seq - 1,
            hash: first.prev_hash.clone(),
        }),
        Some(_) => None,
        None => read_checkpoint(trees)?.filter(|cp| cp.seq + 1 == next_seq),
    };
    write_checkpoint(trees, checkpoint.as_ref())?;
    remove_below(trees, floor)?;
    let mut batch = sled::Batch::default();
    for k in trees.audit.range(key(next_seq)..).keys() {
        batch.remove(k?);
    }
    for entry in tail {
        batch.insert(&key(entry.seq)[..], bincode::serialize(entry)?);
    }
    trees.audit.apply_batch(batch)?;
    Ok(())
}

/// Checks that `tail` is a contiguous, non-empty run ending at `next_seq - 1` (starting at 0
/// when nothing was compacted); the retention keeps at least one entry.
pub(super) fn check_tail(tail: &[AuditEntry], next_seq: u64) -> Result<(), StoreError> {
    let first = next_seq.saturating_sub(tail.len() as u64);
    for (i, e) in tail.iter().enumerate() {
        if e.seq != first + i as u64 {
            return Err(StoreError::Corrupt(format!(
                "snapshot audit entry {i} has seq {}, expected {}",
                e.seq,
                first + i as u64
            )));
        }
    }
    if tail.is_empty() && next_seq > 0 {
        return Err(StoreError::Corrupt(format!(
            "the snapshot carries no audit entry, its state has {next_seq}: it was built \
             without its trail (only get_current_snapshot appends it)"
        )));
    }
    if tail.len() as u64 > next_seq {
        return Err(StoreError::Corrupt(format!(
            "snapshot holds {} audit entries, the state has {next_seq}",
            tail.len()
        )));
    }
    Ok(())
}
