//! The state machine: [`State`] in memory, persisted only through snapshots.
//!
//! On restart the store loads the latest snapshot and openraft re-applies the committed log
//! entries after it (the log store keeps `committed`). Applying writes each audit entry to
//! the `audit` tree keyed by seq, so a replay rewrites the same bytes.
//!
//! The audit trail is not stored inside the snapshot: the `snapshot` tree holds the payload
//! with an empty trail plus a marker naming the retained range `[floor, next_seq)` in the
//! `audit` tree, and [`RaftStateMachine::get_current_snapshot`] appends that range when a
//! snapshot is sent. So a restart reads no audit entry, and what a follower receives holds
//! at most `audit_retention` entries (see [`super::audit`]). A snapshot stored without the
//! marker (written before) holds its whole trail and is used as it is.

use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::audit::{self, Retention};
use super::{blocking, key, StoreError, Trees};
use crate::raft::{Change, Changes, LogId, NodeId, NodeInfo, SharedState, StateView, TypeConfig};
use crate::state::{AuditEntry, Response, State};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, NodeInfo>;
type Meta = SnapshotMeta<NodeId, NodeInfo>;

/// Capacity of the [`Changes`] broadcast.
const CHANGES_CAPACITY: usize = 4096;

/// Snapshot bytes are stored in chunks of this size. sled writes any page image above ~128 KiB
/// (a quarter of its 512 KiB segment) to a separate, never-synced blob file, and a leaf page
/// holds up to 17 values before it splits: 17 x 4 KiB stays well below that.
pub(super) const CHUNK: usize = 4 * 1024;

const HEADER: &[u8] = b"header";
const CHUNK_PREFIX: u8 = b'c';
/// Key of the [`Tail`] marker in the `snapshot` tree.
const AUDIT_TAIL: &[u8] = b"audit_tail";
/// The bincode of an empty `Vec` (its u64 length): how a stored payload with a marker ends.
const EMPTY_VEC: [u8; 8] = [0; 8];

/// The audit entries `[floor, next_seq)` of the `audit` tree that belong to the stored
/// snapshot, whose own trail is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Tail {
    floor: u64,
    next_seq: u64,
}

/// What a snapshot holds. Field order is the encoding: keep [`PayloadRef`] in step. `audit`
/// is the retained tail of the trail, ending at the state's audit head; it starts at seq 0
/// only when nothing was compacted.
#[derive(Deserialize)]
struct Payload {
    state: State,
    last_applied: Option<LogId>,
    last_membership: Membership,
    audit: Vec<AuditEntry>,
}

/// The borrowed twin of [`Payload`] (bincode encodes both identically), so building a
/// snapshot does not copy the state a second time.
#[derive(Serialize)]
struct PayloadRef<'a> {
    state: &'a State,
    last_applied: &'a Option<LogId>,
    last_membership: &'a Membership,
    audit: &'a [AuditEntry],
}

/// How the stored snapshot is laid out in the `snapshot` tree.
#[derive(Serialize, Deserialize)]
struct Header {
    meta: Meta,
    len: u64,
    chunks: u32,
}

fn chunk_key(i: u32) -> [u8; 5] {
    let b = i.to_be_bytes();
    [CHUNK_PREFIX, b[0], b[1], b[2], b[3]]
}

/// A stored snapshot: its meta, its bytes, and where its audit trail is when not in them.
type Stored = (Meta, Vec<u8>, Option<Tail>);

/// Reads the stored snapshot, if any.
fn load_snapshot(trees: &Trees) -> std::result::Result<Option<Stored>, StoreError> {
    let Some(h) = trees.snapshot.get(HEADER)? else {
        return Ok(None);
    };
    let tail = match trees.snapshot.get(AUDIT_TAIL)? {
        Some(t) => Some(bincode::deserialize(&t)?),
        None => None,
    };
    let header: Header = bincode::deserialize(&h)?;
    let mut data = Vec::with_capacity(usize::try_from(header.len).unwrap_or(0));
    for i in 0..header.chunks {
        let chunk = trees
            .snapshot
            .get(chunk_key(i))?
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot chunk {i} is missing")))?;
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != header.len {
        return Err(StoreError::Corrupt(format!(
            "snapshot is {} bytes, its header says {}",
            data.len(),
            header.len
        )));
    }
    Ok(Some((header.meta, data, tail)))
}

/// The stored snapshot as it is sent: with its audit tail appended from the `audit` tree.
/// The caller holds the snapshot lock, so no compaction removes the tail meanwhile.
fn full_snapshot(trees: &Trees) -> std::result::Result<Option<(Meta, Vec<u8>)>, StoreError> {
    let Some((meta, mut data, tail)) = load_snapshot(trees)? else {
        return Ok(None);
    };
    if let Some(t) = tail {
        strip_empty_trail(&mut data)?;
        audit::encoded_range(trees, t.floor, t.next_seq, &mut data)?;
    }
    Ok(Some((meta, data)))
}

fn strip_empty_trail(data: &mut Vec<u8>) -> std::result::Result<(), StoreError> {
    if !data.ends_with(&EMPTY_VEC) {
        return Err(StoreError::Corrupt(
            "the stored snapshot has an audit marker but does not end with an empty trail".into(),
        ));
    }
    data.truncate(data.len() - EMPTY_VEC.len());
    Ok(())
}

/// Replaces the stored snapshot (and its audit marker) in one atomic batch, unless (without
/// `force`) the stored one is newer. Not synced: the caller syncs. Returns whether it
/// replaced. The caller holds the snapshot lock: compare-and-replace, compaction and reading
/// the tail for sending must not interleave.
fn store_snapshot(
    trees: &Trees,
    meta: &Meta,
    data: &[u8],
    tail: Option<Tail>,
    force: bool,
) -> std::result::Result<bool, StoreError> {
    let old: Option<Header> = match trees.snapshot.get(HEADER)? {
        Some(h) => Some(bincode::deserialize(&h)?),
        None => None,
    };
    if !force {
        if let Some(old) = &old {
            if old.meta.last_log_id > meta.last_log_id {
                return Ok(false);
            }
        }
    }
    let chunks = u32::try_from(data.len().div_ceil(CHUNK))
        .map_err(|_| StoreError::Corrupt("snapshot too large".into()))?;
    let mut batch = sled::Batch::default();
    for (i, chunk) in (0u32..).zip(data.chunks(CHUNK)) {
        batch.insert(&chunk_key(i)[..], chunk);
    }
    for i in chunks..old.map_or(0, |h| h.chunks) {
        batch.remove(&chunk_key(i)[..]);
    }
    let header = Header {
        meta: meta.clone(),
        len: data.len() as u64,
        chunks,
    };
    batch.insert(HEADER, bincode::serialize(&header)?);
    match tail {
        Some(t) => batch.insert(AUDIT_TAIL, bincode::serialize(&t)?),
        None => batch.remove(AUDIT_TAIL),
    }
    trees.snapshot.apply_batch(batch)?;
    Ok(true)
}

fn hold(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state machine. Readers use [`StateMachineStore::shared`]; watchers subscribe to
/// [`StateMachineStore::changes`].
pub struct StateMachineStore {
    trees: Trees,
    shared: SharedState,
    changes: Changes,
    last_applied: Option<LogId>,
    last_membership: Membership,
    snapshot_lock: Arc<Mutex<()>>,
    retention: Retention,
}

impl StateMachineStore {
    pub(super) fn open(
        trees: Trees,
        history_limit: usize,
        retention: Retention,
    ) -> std::result::Result<Self, StoreError> {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let mut sm = Self {
            trees,
            shared: Arc::new(std::sync::RwLock::new(StateView {
                state: State::new(history_limit),
                applied: 0,
            })),
            changes,
            last_applied: None,
            last_membership: Membership::default(),
            snapshot_lock: Arc::new(Mutex::new(())),
            retention,
        };
        if let Some((meta, data, tail)) = load_snapshot(&sm.trees)? {
            let mut payload: Payload = bincode::deserialize(&data)?;
            check_payload(&meta, &payload)?;
            match tail {
                // The tail was in the tree before the snapshot naming it was written (and
                // synced with it); its two ends tell a damaged tree cheaply.
                Some(t) => {
                    for seq in [t.floor, t.next_seq.saturating_sub(1)] {
                        if seq < t.next_seq && !sm.trees.audit.contains_key(key(seq))? {
                            return Err(StoreError::Corrupt(format!(
                                "audit entry {seq} of the snapshot's retained trail is missing"
                            )));
                        }
                    }
                }
                // A snapshot written before the marker holds its whole trail: restore any
                // entries a damaged tree lost from that copy.
                None => {
                    for entry in &payload.audit {
                        if !sm.trees.audit.contains_key(key(entry.seq))? {
                            sm.trees
                                .audit
                                .insert(key(entry.seq), bincode::serialize(entry)?)?;
                        }
                    }
                }
            }
            payload.audit = Vec::new();
            sm.set_state(payload);
        }
        Ok(sm)
    }

    /// The applied state, shared with readers.
    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// The sender of applied changes; `subscribe()` to watch.
    pub fn changes(&self) -> Changes {
        self.changes.clone()
    }

    fn set_state(&mut self, payload: Payload) {
        let applied = payload.last_applied.map_or(0, |l| l.index);
        let mut view = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        view.state = payload.state;
        view.applied = applied;
        drop(view);
        self.last_applied = payload.last_applied;
        self.last_membership = payload.last_membership;
    }

    fn set_applied(&self, index: u64) -> std::result::Result<(), StoreError> {
        let mut view = self.write_view()?;
        view.applied = index;
        Ok(())
    }

    fn write_view(
        &self,
    ) -> std::result::Result<std::sync::RwLockWriteGuard<'_, StateView>, StoreError> {
        // A poisoned lock means a panic mid-apply: the state may be half-changed, stop here.
        self.shared
            .write()
            .map_err(|_| StoreError::Corrupt("state lock poisoned by a panic in apply".into()))
    }

    /// Applies one normal entry; returns the answer and the events to publish.
    fn apply_request(
        &self,
        log_id: LogId,
        req: &crate::state::Request,
    ) -> std::result::Result<(Response, Option<Change>), StoreError> {
        let mut view = self.write_view()?;
        let applied = view.state.apply(log_id.index, req);
        view.applied = log_id.index;
        // Written under the lock: a snapshot builder that saw this state's `next_seq` must
        // find the entry in the tree.
        self.trees
            .audit
            .insert(key(applied.audit.seq), bincode::serialize(&applied.audit)?)?;
        drop(view);
        let change = (!applied.events.is_empty()).then(|| Change::Events {
            revision: log_id.index,
            events: Arc::new(applied.events),
        });
        Ok((applied.response, change))
    }
}

fn check_payload(meta: &Meta, payload: &Payload) -> std::result::Result<(), StoreError> {
    if payload.last_applied != meta.last_log_id {
        return Err(StoreError::Corrupt(format!(
            "snapshot meta says {:?}, its data {:?}",
            meta.last_log_id, payload.last_applied
        )));
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let err = |e: StoreError| e.into_raft(ErrorSubject::Apply(log_id), ErrorVerb::Write);
            let (response, change) = match &entry.payload {
                EntryPayload::Normal(req) => self.apply_request(log_id, req).map_err(err)?,
                EntryPayload::Blank => {
                    self.set_applied(log_id.index).map_err(err)?;
                    (Response::Internal, None)
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = Membership::new(Some(log_id), m.clone());
                    self.set_applied(log_id.index).map_err(err)?;
                    (Response::Internal, None)
                }
            };
            self.last_applied = Some(log_id);
            if let Some(change) = change {
                // Fails only when nobody is watching.
                let _ = self.changes.send(change);
            }
            out.push(response);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // A consistent copy: `apply` takes `&mut self`, so nothing changes these meanwhile;
        // the read lock only orders us after readers/writers of the view.
        let state = {
            let view = self.shared.read().unwrap_or_else(PoisonError::into_inner);
            Arc::new(view.state.clone())
        };
        SnapshotBuilder {
            trees: self.trees.clone(),
            lock: self.snapshot_lock.clone(),
            state,
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            retention: self.retention.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let sig = Some(meta.signature());
        let err =
            |e: StoreError| e.into_raft(ErrorSubject::Snapshot(sig.clone()), ErrorVerb::Write);
        let mut data = snapshot.into_inner();
        let mut payload: Payload = bincode::deserialize(&data)
            .map_err(StoreError::from)
            .map_err(err)?;
        check_payload(meta, &payload).map_err(err)?;
        let next_seq = payload.state.audit_head().next_seq;
        audit::check_tail(&payload.audit, next_seq).map_err(err)?;

        // Disk first (audit, then snapshot, then one sync), memory after. The trail goes to
        // the `audit` tree; the snapshot is stored without it, with a marker of its range.
        let trees = self.trees.clone();
        let lock = self.snapshot_lock.clone();
        let meta_c = meta.clone();
        let payload = blocking(move || {
            let trail_bytes = bincode::serialized_size(&payload.audit)?;
            let keep = usize::try_from(trail_bytes)
                .ok()
                .and_then(|n| data.len().checked_sub(n))
                .ok_or_else(|| StoreError::Corrupt("snapshot shorter than its trail".into()))?;
            data.truncate(keep);
            data.extend_from_slice(&EMPTY_VEC);
            let tail = Tail {
                floor: payload.audit.first().map_or(next_seq, |e| e.seq),
                next_seq,
            };
            let _guard = hold(&lock);
            audit::replace(&trees, &payload.audit, next_seq)?;
            store_snapshot(&trees, &meta_c, &data, Some(tail), true)?;
            trees.disk.sync()?;
            payload.audit = Vec::new();
            Ok(payload)
        })
        .await
        .map_err(err)?;

        let applied = payload.last_applied.map_or(0, |l| l.index);
        self.set_state(payload);
        let _ = self.changes.send(Change::Reset { applied });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let trees = self.trees.clone();
        let lock = self.snapshot_lock.clone();
        let got = blocking(move || {
            let _guard = hold(&lock);
            full_snapshot(&trees)
        })
        .await
        .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(got.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken by
/// [`RaftStateMachine::get_snapshot_builder`], so applying continues meanwhile.
///
/// The [`Snapshot`] it returns carries no audit trail: openraft 0.9 takes only its meta
/// (`core/sm/worker.rs`) and sends what [`RaftStateMachine::get_current_snapshot`] returns,
/// which appends the trail. Reading up to `audit_retention` entries at every build only to
/// drop them would cost far more than the build itself. Should a trail-less snapshot ever be
/// installed, the install refuses it (`check_tail`) instead of losing the trail.
pub struct SnapshotBuilder {
    trees: Trees,
    lock: Arc<Mutex<()>>,
    state: Arc<State>,
    last_applied: Option<LogId>,
    last_membership: Membership,
    retention: Retention,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let trees = self.trees.clone();
        let lock = self.lock.clone();
        let state = self.state.clone();
        let last_applied = self.last_applied;
        let last_membership = self.last_membership.clone();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match last_applied {
            Some(l) => format!(
                "{}-{}-{}-{nanos}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("none-{nanos}"),
        };
        let meta = Meta {
            last_log_id: last_applied,
            last_membership: last_membership.clone(),
            snapshot_id,
        };
        let meta_c = meta.clone();
        let retention = self.retention.clone();
        let data = blocking(move || {
            let next_seq = state.audit_head().next_seq;
            // Entries of this state's trail beyond the retention are compacted away.
            let floor = next_seq.saturating_sub(retention.keep.max(1));
            let data = bincode::serialize(&PayloadRef {
                state: &state,
                last_applied: &last_applied,
                last_membership: &last_membership,
                audit: &[],
            })?;
            let tail = Tail { floor, next_seq };
            let _guard = hold(&lock);
            if store_snapshot(&trees, &meta_c, &data, Some(tail), false)? {
                // Only once the snapshot naming the new floor is stored: the one before it
                // may still be sent until then.
                audit::compact(&trees, floor, retention.archive.as_deref())?;
            }
            // A snapshot allows purging the log before it: it must be on disk first.
            trees.disk.sync()?;
            Ok(data)
        })
        .await
        .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Writes a fresh store as if it had installed a snapshot of `state` at log index
/// `revision` and purged its log behind it, with `members` as the voters.
///
/// Why not `Raft::initialize` plus a snapshot: tokens are log indexes, and an initialised
/// cluster starts its log at 0, so its next grants would reuse tokens the backup holds; and
/// openraft installs snapshots only from a leader whose log is already past them. Seeded this
/// way, openraft finds an initialised node (its log ends at `revision`, the membership is
/// committed there, no vote): the restored nodes elect a leader at term 1 and its first entry
/// is `revision + 1`, so every new token is higher than any in the backup. The log id uses
/// leader (term 0, node 0), the id openraft gives an initial membership entry, so every
/// restored node holds the same log id and any of them may win the first election.
pub(super) fn seed(
    trees: &Trees,
    state: &State,
    audit: &[AuditEntry],
    revision: u64,
    members: std::collections::BTreeMap<NodeId, NodeInfo>,
) -> std::result::Result<(), StoreError> {
    let log_id = LogId::new(openraft::CommittedLeaderId::new(0, 0), revision);
    let voters = members.keys().copied().collect();
    let last_membership = Membership::new(
        Some(log_id),
        openraft::Membership::new(vec![voters], members),
    );
    let meta = Meta {
        last_log_id: Some(log_id),
        last_membership: last_membership.clone(),
        snapshot_id: format!("restored-{revision}"),
    };
    let data = bincode::serialize(&PayloadRef {
        state,
        last_applied: &Some(log_id),
        last_membership: &last_membership,
        audit: &[],
    })?;
    let next_seq = state.audit_head().next_seq;
    audit::check_tail(audit, next_seq)?;
    audit::replace(trees, audit, next_seq)?;
    let tail = Tail {
        floor: audit.first().map_or(next_seq, |e| e.seq),
        next_seq,
    };
    store_snapshot(trees, &meta, &data, Some(tail), true)?;
    trees
        .meta
        .insert(super::log::LAST_PURGED, bincode::serialize(&log_id)?)?;
    trees.disk.sync()?;
    Ok(())
}
