//! Storage tests: openraft's conformance suite plus restart, snapshot and audit behaviour.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote,
};
use tempfile::TempDir;

use super::*;
use crate::raft::{Change, NodeInfo, TypeConfig};
use crate::state::{audit, Command, Request, Response, ServiceSpec, State};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm, _audit) = open(dir.path(), 100).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn put(i: u64) -> Request {
    Request {
        at_ms: 1_000 + i as i64,
        actor: "tester".into(),
        command: Command::PutService {
            spec: ServiceSpec::new(&format!("svc-{}", i % 7), &["us-east", "eu-west"]),
            reason: format!("put {i}"),
        },
    }
}

fn normal(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(put(index)),
    }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let nodes = BTreeMap::from([(
        1,
        NodeInfo {
            addr: "127.0.0.1:1".into(),
            region: "us-east".into(),
        },
    )]);
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1].into()], nodes)),
    }
}

/// Appends entries through openraft's API and waits for the flush callback.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.unwrap();
}

fn state_of(sm: &StateMachineStore) -> (State, u64) {
    let view = sm.shared().read().unwrap().clone();
    (view.state, view.applied)
}

/// Entries 1..=n: a membership entry first, then normal ones.
fn entries(n: u64) -> Vec<Entry<TypeConfig>> {
    (1..=n)
        .map(|i| if i == 1 { membership(i) } else { normal(i) })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_vote_logs_committed_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap_meta;
    {
        let (mut log, mut sm, _) = open(dir.path(), 100).unwrap();
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        append(&mut log, entries(10)).await;
        log.save_committed(Some(log_id(1, 1, 8))).await.unwrap();
        sm.apply(entries(6)).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        snap_meta = snap.meta;
        log.purge(log_id(1, 1, 3)).await.unwrap();
    }
    let (mut log, mut sm, _) = open(dir.path(), 100).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 8)));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 10)));
    let got = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (4..=10).collect::<Vec<_>>()
    );
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap_meta);
    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 6)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1, 1)));
    assert_eq!(sm.shared().read().unwrap().applied, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_reapply_reproduces_state() {
    let dir = tempfile::tempdir().unwrap();
    let (before, audit_before);
    {
        let (mut log, mut sm, audit) = open(dir.path(), 100).unwrap();
        append(&mut log, entries(30)).await;
        sm.apply(entries(30).into_iter().take(12)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(entries(30).into_iter().skip(12)).await.unwrap();
        before = state_of(&sm);
        audit_before = audit.list(0, 1000, None).unwrap();
        assert_eq!(audit_before.len(), 29);
    }
    let (mut log, mut sm, audit) = open(dir.path(), 100).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 12)));
    // What openraft does on restart: re-apply the committed entries after the snapshot.
    let rest = log.try_get_log_entries(13..=30).await.unwrap();
    sm.apply(rest).await.unwrap();
    assert_eq!(state_of(&sm), before);
    assert_eq!(audit.list(0, 1000, None).unwrap(), audit_before);
    audit::verify(&audit_before, None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_built_while_applying_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _) = open(dir.path(), 100).unwrap();
    sm.apply(entries(20)).await.unwrap();
    let at_builder = state_of(&sm);
    let mut builder = sm.get_snapshot_builder().await;
    // Keep applying while the snapshot is serialized.
    let more: Vec<_> = (21..=60).map(normal).collect();
    let (snap, applied) = tokio::join!(builder.build_snapshot(), sm.apply(more));
    applied.unwrap();
    let built = snap.unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 20)));
    // What is sent: the stored snapshot with its audit trail.
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snap.meta, built.meta);

    // Install it on a fresh store: the state is exactly the one the builder copied.
    let dir2 = tempfile::tempdir().unwrap();
    let (_log2, mut sm2, audit2) = open(dir2.path(), 100).unwrap();
    let mut rx = sm2.changes().subscribe();
    sm2.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(state_of(&sm2), at_builder);
    let trail = audit2.list(0, 1000, None).unwrap();
    assert_eq!(trail.len() as u64, at_builder.0.audit_head().next_seq);
    audit::verify(&trail, None).unwrap();
    assert!(matches!(rx.try_recv(), Ok(Change::Reset { applied: 20 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_survives_snapshot_install_on_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, audit) = open(dir.path(), 100).unwrap();
    sm.apply(entries(15)).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    let source_trail = audit.list(0, 1000, None).unwrap();

    let dir2 = tempfile::tempdir().unwrap();
    {
        let (_log2, mut sm2, _) = open(dir2.path(), 100).unwrap();
        let mut data = sm2.begin_receiving_snapshot().await.unwrap();
        *data = Cursor::new(snap.snapshot.into_inner());
        sm2.install_snapshot(&snap.meta, data).await.unwrap();
    }
    // ...and across a restart of the receiving store.
    let (_log2, mut sm2, audit2) = open(dir2.path(), 100).unwrap();
    assert_eq!(audit2.list(0, 1000, None).unwrap(), source_trail);
    assert_eq!(
        audit2.hash_before(5).unwrap(),
        Some(source_trail[4].hash.clone())
    );
    assert_eq!(
        audit2.hash_before(0).unwrap().as_deref(),
        Some(audit::GENESIS)
    );
    assert_eq!(audit2.next_seq().unwrap(), 14);
    let svc = audit2.list(0, 100, Some("svc-3")).unwrap();
    assert!(!svc.is_empty() && svc.iter().all(|e| e.service == "svc-3"));
    assert_eq!(audit2.list(10, 2, None).unwrap().len(), 2);
    assert_eq!(sm2.applied_state().await.unwrap().0, Some(log_id(1, 1, 15)));
    audit2.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_publishes_events_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _) = open(dir.path(), 100).unwrap();
    let mut rx = sm.changes().subscribe();
    let out = sm.apply(entries(3)).await.unwrap();
    assert_eq!(out[0], Response::Internal);
    assert!(matches!(out[1], Response::Applied { revision: 2, .. }));
    match rx.try_recv().unwrap() {
        Change::Events { revision, events } => {
            assert_eq!(revision, 2);
            assert!(!events.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshots_are_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let built;
    {
        let (_log, mut sm, _) = open(dir.path(), 100).unwrap();
        // 1,000 services with long health-check targets: the state itself is over 1 MiB.
        let many = (1..=1_000u64).map(|i| {
            let mut spec = ServiceSpec::new(&format!("svc-{i}"), &["us-east", "eu-west"]);
            for region in ["us-east", "eu-west"] {
                let check = crate::state::HealthCheck {
                    kind: "http".into(),
                    target: format!("http://{region}.example/{}", "a".repeat(480)),
                    interval_ms: 1_000,
                    timeout_ms: 500,
                    threshold: 3,
                };
                spec.health.insert(region.to_string(), check);
            }
            Entry {
                log_id: log_id(1, 1, i),
                payload: EntryPayload::Normal(Request {
                    at_ms: 1,
                    actor: "tester".into(),
                    command: Command::PutService {
                        spec,
                        reason: "r".into(),
                    },
                }),
            }
        });
        sm.apply(many).await.unwrap();
        built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let bytes = built.snapshot.into_inner();
    assert!(bytes.len() > 1 << 20, "snapshot is {} bytes", bytes.len());
    let (_log, mut sm, _) = open(dir.path(), 100).unwrap();
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, built.meta);
    // Sent with its audit trail appended to the stored bytes.
    let sent = cur.snapshot.into_inner();
    assert_eq!(sent[..bytes.len() - 8], bytes[..bytes.len() - 8]);
    assert!(sent.len() > bytes.len());
    // Nothing spilled into sled's unsynced blob files.
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert_eq!(blobs, 0);
}

/// Counts syncs and delegates to the real disk.
struct Counting(Arc<dyn Durable>, Arc<std::sync::atomic::AtomicUsize>);

impl Durable for Counting {
    fn sync(&self) -> std::io::Result<()> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.sync()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sync_per_append_vote_and_snapshot() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let (mut log, mut sm, _) = open_with(dir.path(), &Options::new(100), |d| {
        Arc::new(Counting(d, n2)) as Arc<dyn Durable>
    })
    .unwrap();
    append(&mut log, entries(50)).await;
    assert_eq!(n.load(Ordering::SeqCst), 1, "one batch, one sync");
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert_eq!(
        n.load(Ordering::SeqCst),
        2,
        "a vote is synced before returning"
    );
    log.save_committed(Some(log_id(1, 1, 50))).await.unwrap();
    sm.apply(entries(50)).await.unwrap();
    assert_eq!(
        n.load(Ordering::SeqCst),
        2,
        "apply and committed ride on later syncs"
    );
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(
        n.load(Ordering::SeqCst),
        3,
        "a snapshot is synced before purging is allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_batches_are_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm, _) = open(dir.path(), 100).unwrap();
    // 40 entries of ~50 KB each: 2 MB in all, four times the batch budget.
    let big = |index: u64| Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Request {
            at_ms: 1,
            actor: "tester".into(),
            command: Command::DeleteService {
                name: "svc".into(),
                reason: "r".repeat(50_000),
            },
        }),
    };
    append(&mut log, (1..=40).map(big).collect()).await;
    let mut next = 1;
    let mut batches = 0;
    while next <= 40 {
        let got = log.limited_get_log_entries(next, 41).await.unwrap();
        assert!(!got.is_empty(), "a non-empty range must return entries");
        assert!(
            got.len() * 50_000 <= super::log::REPLICATION_BATCH_BYTES,
            "{}",
            got.len()
        );
        assert_eq!(got[0].log_id.index, next);
        next = got.last().unwrap().log_id.index + 1;
        batches += 1;
    }
    assert!(batches >= 4, "{batches} batches");
    // One entry over the budget still goes alone (never an empty batch).
    let dir2 = tempfile::tempdir().unwrap();
    let (mut log2, _sm2, _) = open(dir2.path(), 100).unwrap();
    let mut huge = big(1);
    if let EntryPayload::Normal(r) = &mut huge.payload {
        r.command = Command::DeleteService {
            name: "svc".into(),
            reason: "r".repeat(super::log::REPLICATION_BATCH_BYTES + 1),
        };
    }
    append(&mut log2, vec![huge, big(2)]).await;
    assert_eq!(log2.limited_get_log_entries(1, 3).await.unwrap().len(), 1);
    // Counts are still bounded by the range.
    assert_eq!(log.limited_get_log_entries(5, 6).await.unwrap().len(), 1);
}

#[test]
fn a_restored_store_is_reopened_once_the_previous_handle_lets_go() {
    // A restore seeds the store, drops it and opens it again to check it; on a busy machine
    // the first handle (sled's flusher) still held the file lock and the check failed.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("raft");
    let held = super::open(&store, crate::state::history::DEFAULT_HISTORY).unwrap();
    let letting_go = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let again = super::reopen(&store);
    letting_go.join().unwrap();
    assert!(again.is_ok(), "{:?}", again.err());
}

/// The shape of a snapshot's bytes (the state machine's `Payload`), to look inside.
#[derive(serde::Deserialize)]
struct Decoded {
    state: State,
    _last_applied: Option<crate::raft::LogId>,
    _last_membership: openraft::StoredMembership<NodeId, NodeInfo>,
    audit: Vec<crate::state::AuditEntry>,
}

fn retaining(keep: u64) -> Options {
    Options {
        history_limit: 100,
        audit_retention: keep,
        audit_archive: true,
    }
}

/// The trail a node keeps, checked to link to its checkpoint and to end at the head.
fn kept_trail(a: &AuditLog, head: &crate::state::AuditHead) -> Vec<crate::state::AuditEntry> {
    let oldest = a.oldest_seq().unwrap();
    let trail = a.list(oldest, 100_000, None).unwrap();
    let anchor = a.hash_before(oldest).unwrap().unwrap();
    audit::verify(&trail, Some(&anchor)).unwrap();
    assert_eq!(trail.first().unwrap().seq, oldest);
    assert_eq!(trail.last().unwrap().hash, head.last_hash);
    assert_eq!(trail.len() as u64, head.next_seq - oldest);
    trail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_snapshot_trail_and_a_follower_verifies_it() {
    const R: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, audit_log) = open_opts(dir.path(), &retaining(R)).unwrap();
    // 3R + 1 entries: a membership, then 3R commands, each leaving one audit entry.
    sm.apply(entries(3 * R + 1)).await.unwrap();
    let (state, _) = state_of(&sm);
    let head = state.audit_head().clone();
    assert_eq!(head.next_seq, 3 * R);
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The built snapshot is only what is stored: the trail is appended when it is sent.
    let stored: Decoded = bincode::deserialize(&snap.snapshot.into_inner()).unwrap();
    assert!(stored.audit.is_empty());
    let bytes = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap()
        .snapshot
        .into_inner();
    let decoded: Decoded = bincode::deserialize(&bytes).unwrap();
    assert_eq!(decoded.state, state);
    assert!(decoded.audit.len() as u64 <= R, "{}", decoded.audit.len());
    assert_eq!(decoded.audit.first().unwrap().seq, 2 * R);

    // The leader dropped what it does not keep, with a checkpoint its trail links to.
    assert_eq!(audit_log.oldest_seq().unwrap(), 2 * R);
    let cp = audit_log.checkpoint().unwrap().unwrap();
    assert_eq!(cp.seq, 2 * R - 1);
    assert_eq!(cp.hash, decoded.audit[0].prev_hash);
    let leader_trail = kept_trail(&audit_log, &head);
    assert!(audit_log.list(0, 5, None).unwrap()[0].seq >= 2 * R);

    // A snapshot without its trail is refused, not installed as an empty trail.
    let dir3 = tempfile::tempdir().unwrap();
    let (_log3, mut sm3, _) = open_opts(dir3.path(), &retaining(R)).unwrap();
    let bare = bincode::serialize(&(
        &stored.state,
        &stored._last_applied,
        &stored._last_membership,
        Vec::<crate::state::AuditEntry>::new(),
    ))
    .unwrap();
    assert!(sm3
        .install_snapshot(&snap.meta, Box::new(Cursor::new(bare)))
        .await
        .is_err());

    // A follower with a longer trail of its own ends with exactly the leader's kept range.
    let dir2 = tempfile::tempdir().unwrap();
    let (_log2, mut sm2, audit2) = open_opts(dir2.path(), &retaining(1_000)).unwrap();
    sm2.apply(entries(5)).await.unwrap();
    sm2.install_snapshot(&snap.meta, Box::new(Cursor::new(bytes.clone())))
        .await
        .unwrap();
    assert_eq!(state_of(&sm2).0, state);
    assert_eq!(kept_trail(&audit2, &head), leader_trail);
    assert_eq!(audit2.checkpoint().unwrap(), Some(cp.clone()));
    // It sends on exactly what it received.
    let resent = sm2.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(resent.snapshot.into_inner(), bytes);
    // And keeps applying on top of it.
    let more: Vec<_> = (3 * R + 2..3 * R + 5).map(normal).collect();
    sm2.apply(more).await.unwrap();
    let head2 = state_of(&sm2).0.audit_head().clone();
    assert_eq!(kept_trail(&audit2, &head2).len() as u64, R + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_store_reopens_with_its_trail_checkpoint_and_archive() {
    const R: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let (head, trail, built);
    {
        let (mut log, mut sm, audit_log) = open_opts(dir.path(), &retaining(R)).unwrap();
        append(&mut log, entries(3 * R + 1)).await;
        log.save_committed(Some(log_id(1, 1, 3 * R + 1)))
            .await
            .unwrap();
        sm.apply(entries(3 * R + 1)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        built = snap.snapshot.into_inner();
        head = state_of(&sm).0.audit_head().clone();
        trail = kept_trail(&audit_log, &head);
    }
    let (_log, mut sm, audit_log) = open_opts(dir.path(), &retaining(R)).unwrap();
    assert_eq!(state_of(&sm).0.audit_head(), &head);
    assert_eq!(kept_trail(&audit_log, &head), trail);
    assert_eq!(audit_log.next_seq().unwrap(), 3 * R);
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.snapshot.into_inner(), built);

    // The dropped entries are in a checksummed segment that links to the kept trail.
    let archive = dir.path().join(super::audit::ARCHIVE_DIR);
    let name = format!("{:020}-{:020}.jsonl", 0, 2 * R - 1);
    let text = std::fs::read_to_string(archive.join(&name)).unwrap();
    let sum = std::fs::read_to_string(archive.join(format!("{name}.sha256"))).unwrap();
    use sha2::Digest;
    assert_eq!(
        sum,
        format!("{}  {name}\n", hex::encode(sha2::Sha256::digest(&text)))
    );
    let archived: Vec<crate::state::AuditEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived.len() as u64, 2 * R);
    audit::verify(&archived, None).unwrap();
    assert_eq!(archived.last().unwrap().hash, trail[0].prev_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stored_with_its_whole_trail_still_loads_and_is_sent_as_it_is() {
    // Before the trail left the snapshot, the stored payload held every entry from 0.
    let dir = tempfile::tempdir().unwrap();
    let (meta, data);
    {
        let (_log, mut sm, audit_log) = open(dir.path(), 100).unwrap();
        sm.apply(entries(15)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(audit_log.oldest_seq().unwrap(), 0);
        meta = snap.meta;
        data = snap.snapshot.into_inner();
        let decoded: Decoded = bincode::deserialize(&data).unwrap();
        assert_eq!(decoded.audit.len(), 14);
    }
    // Rewrite the stored snapshot the old way: whole payload, no marker.
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("snapshot").unwrap();
        t.remove(b"audit_tail").unwrap();
        let chunks = data.len().div_ceil(state_machine::CHUNK) as u32;
        for (i, c) in (0u32..).zip(data.chunks(state_machine::CHUNK)) {
            let b = i.to_be_bytes();
            t.insert([b'c', b[0], b[1], b[2], b[3]], c).unwrap();
        }
        #[derive(serde::Serialize)]
        struct Header<'a> {
            meta: &'a openraft::SnapshotMeta<NodeId, NodeInfo>,
            len: u64,
            chunks: u32,
        }
        let h = Header {
            meta: &meta,
            len: data.len() as u64,
            chunks,
        };
        t.insert(b"header", bincode::serialize(&h).unwrap())
            .unwrap();
        // ...and lose an audit entry, which the old payload restores.
        db.open_tree("audit").unwrap().remove(key(3)).unwrap();
        db.flush().unwrap();
    }
    let (_log, mut sm, audit_log) = super::reopen(dir.path()).unwrap();
    let head = state_of(&sm).0.audit_head().clone();
    assert_eq!(kept_trail(&audit_log, &head).len(), 14);
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.snapshot.into_inner(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_compacted_trail_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, audit_log) = open_opts(dir.path(), &retaining(4)).unwrap();
    sm.apply(entries(13)).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (state, applied) = state_of(&sm);
    let head = state.audit_head().clone();
    let tail = kept_trail(&audit_log, &head);
    assert_eq!(tail[0].seq, 8);

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let members = BTreeMap::from([(
        1,
        NodeInfo {
            addr: "127.0.0.1:1".into(),
            region: "us-east".into(),
        },
    )]);
    seed_restored(&data, "raft", &state, &tail, applied, members).unwrap();
    let (_log2, mut sm2, audit2) = super::reopen(&data.join("raft")).unwrap();
    assert_eq!(state_of(&sm2).0, state);
    assert_eq!(kept_trail(&audit2, &head), tail);
    assert_eq!(audit2.oldest_seq().unwrap(), 8);
    // It sends the same trail on.
    let sent = sm2.get_current_snapshot().await.unwrap().unwrap();
    let decoded: Decoded = bincode::deserialize(&sent.snapshot.into_inner()).unwrap();
    assert_eq!(decoded.audit, tail);
}
