//! An in-process cluster over real tonic servers on loopback: replication, forwarding,
//! snapshots and purging, a learner catching up by snapshot install, and a storage restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Config, SnapshotPolicy};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::proto::raft_client::RaftClient;
use crate::proto::RaftRequest;
use crate::state::{Command, Request, Response, ServiceSpec};

const CLUSTER: &str = "test-cluster";
const WAIT: Duration = Duration::from_secs(10);

fn config() -> Arc<Config> {
    let c = Config {
        cluster_name: CLUSTER.into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // Snapshots only when the test asks; keep no log behind them, so a new learner must
        // be sent the snapshot.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    };
    Arc::new(c.validate().unwrap())
}

fn put(name: &str) -> Request {
    Request {
        at_ms: 1_700_000_000_000,
        actor: "tester".into(),
        command: Command::PutService {
            spec: ServiceSpec::new(name, &["us-east", "eu-west"]),
            reason: format!("create {name}"),
        },
    }
}

struct Node {
    id: NodeId,
    info: NodeInfo,
    raft: Raft,
    shared: SharedState,
    audit: AuditLog,
    peers: Peers,
    contact: Arc<LeaderContact>,
    confirmed: Arc<super::Confirmed>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// Opens the store, retrying while a just-stopped node's tasks still hold sled's file lock.
async fn open_retrying(dir: &Path) -> (LogStore, StateMachineStore, AuditLog) {
    let deadline = Instant::now() + WAIT;
    loop {
        match open_store(dir, 1_000) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("store still locked: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen store: {e}"),
        }
    }
}

async fn start(id: NodeId, dir: &Path, listener: TcpListener) -> Node {
    let addr = listener.local_addr().unwrap().to_string();
    let info = NodeInfo {
        addr,
        region: format!("region-{id}"),
    };
    let (log, sm, audit) = open_retrying(dir).await;
    let shared = sm.shared();
    let confirmed = Arc::new(super::Confirmed::default());
    let peers = Peers::new(CLUSTER, id).with_confirmed(confirmed.clone());
    let raft = Raft::new(id, config(), peers.factory(), log, sm)
        .await
        .unwrap();
    let contact = Arc::new(LeaderContact::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = server(raft.clone(), CLUSTER, contact.clone());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Node {
        id,
        info,
        raft,
        shared,
        audit,
        peers,
        contact,
        confirmed,
        stop,
        server,
    }
}

impl Node {
    async fn stop(self) -> String {
        self.raft.shutdown().await.unwrap();
        let _ = self.stop.send(());
        self.server.await.unwrap();
        self.info.addr
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), format!("node {} applies {index}", self.id))
            .await
            .unwrap();
    }

    fn state(&self) -> (crate::state::State, u64) {
        let v = self.shared.read().unwrap();
        (v.state.clone(), v.applied)
    }
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_forward_snapshot_and_restart() {
    let dirs: Vec<TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start(id, dirs[id as usize - 1].path(), listener().await).await);
    }
    let members: BTreeMap<NodeId, NodeInfo> =
        nodes.iter().map(|n| (n.id, n.info.clone())).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    let m = nodes[0]
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .unwrap();
    let leader_id = m.current_leader.unwrap();
    let li = nodes.iter().position(|n| n.id == leader_id).unwrap();
    let fi = (li + 1) % 3;

    // --- a write on the leader is applied everywhere
    let resp = nodes[li].raft.client_write(put("payments")).await.unwrap();
    assert!(
        matches!(resp.data, Response::Applied { .. }),
        "{:?}",
        resp.data
    );
    for n in &nodes {
        n.wait_applied(resp.log_id.index).await;
        assert!(n.state().0.service("payments").is_some(), "node {}", n.id);
    }
    // Followers hear from the leader, which vouches for their state as of its last quorum
    // confirmation (the read barrier records those in a node; here the test does).
    let started = std::time::Instant::now();
    nodes[li].raft.ensure_linearizable().await.unwrap();
    nodes[li].confirmed.record(started);
    let deadline = Instant::now() + WAIT;
    while nodes[fi].contact.age_ms().is_none() {
        assert!(
            Instant::now() < deadline,
            "the follower never heard a confirmed leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // --- a write forwarded from a follower
    let leader_info = nodes[li].info.clone();
    let got = nodes[fi]
        .peers
        .forward(&leader_info, &put("orders"))
        .await
        .unwrap();
    let Response::Applied { revision, .. } = got else {
        panic!("forward answered {got:?}")
    };
    for n in &nodes {
        n.wait_applied(revision).await;
        assert!(n.state().0.service("orders").is_some(), "node {}", n.id);
    }
    // Forwarding to a follower says who leads.
    let follower_info = nodes[(li + 2) % 3].info.clone();
    match nodes[fi].peers.forward(&follower_info, &put("nope")).await {
        Err(ForwardError::NotLeader { leader_id: l, .. }) => assert_eq!(l, Some(leader_id)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Nobody listening: unreachable, not "unknown outcome".
    let dead = NodeInfo {
        addr: "127.0.0.1:1".into(),
        region: "nowhere".into(),
    };
    assert!(matches!(
        nodes[fi].peers.forward(&dead, &put("nope")).await,
        Err(ForwardError::Unreachable { .. })
    ));
    // A node of another cluster is refused with both names.
    let mut raw = RaftClient::connect(format!("http://{}", leader_info.addr))
        .await
        .unwrap();
    let status = raw
        .vote(RaftRequest {
            to: None,
            leader_confirmed_age_ms: None,
            cluster: "other-cluster".into(),
            from: 9,
            payload: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("other-cluster") && status.message().contains(CLUSTER));

    // --- snapshot and purge on the leader
    let last = nodes[li].raft.metrics().borrow().last_applied.unwrap();
    nodes[li].raft.trigger().snapshot().await.unwrap();
    nodes[li]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last.index),
            "snapshot built",
        )
        .await
        .unwrap();
    nodes[li]
        .raft
        .trigger()
        .purge_log(last.index)
        .await
        .unwrap();
    nodes[li]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= last.index),
            "log purged",
        )
        .await
        .unwrap();

    // --- a learner catches up by snapshot install
    let n4 = start(4, dirs[3].path(), listener().await).await;
    nodes[li]
        .raft
        .add_learner(4, n4.info.clone(), true)
        .await
        .unwrap();
    n4.wait_applied(last.index).await;
    assert!(
        n4.raft.metrics().borrow().snapshot.is_some(),
        "the learner got a snapshot"
    );
    assert!(n4.state().0.service("orders").is_some());
    let trail = nodes[li].audit.list(0, 1_000, None).unwrap();
    assert_eq!(n4.audit.list(0, 1_000, None).unwrap(), trail);
    crate::state::audit::verify(&trail, None).unwrap();
    nodes.push(n4);

    // --- restart one follower's storage (with a snapshot of its own, then more log)
    let ri = (li + 2) % 3;
    nodes[ri].raft.trigger().snapshot().await.unwrap();
    nodes[ri]
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "follower snapshot")
        .await
        .unwrap();
    let resp = nodes[li].raft.client_write(put("ledger")).await.unwrap();
    let idx = resp.log_id.index;
    nodes[ri].wait_applied(idx).await;
    let before = nodes[ri].state();
    let term = nodes[ri].raft.metrics().borrow().current_term;

    let node = nodes.remove(ri);
    let id = node.id;
    let addr = node.stop().await;
    let dir = dirs[id as usize - 1].path();
    {
        // The snapshot is loaded on open; the rest comes back from the log below.
        let (_log, sm, audit) = open_retrying(dir).await;
        let applied = sm.shared().read().unwrap().applied;
        assert!(applied > 0 && applied < idx, "loaded snapshot at {applied}");
        assert!(audit.next_seq().unwrap() > 0);
    }
    let restarted = start(id, dir, TcpListener::bind(&addr).await.unwrap()).await;
    restarted.wait_applied(idx).await;
    assert!(restarted.raft.metrics().borrow().current_term >= term);
    assert_eq!(restarted.state(), before);

    // ...and keeps replicating.
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    let resp = leader.raft.client_write(put("billing")).await.unwrap();
    restarted.wait_applied(resp.log_id.index).await;
    leader.wait_applied(resp.log_id.index).await;
    assert_eq!(restarted.state(), leader.state());
    assert_eq!(
        restarted.audit.list(0, 1_000, None).unwrap(),
        leader.audit.list(0, 1_000, None).unwrap()
    );

    restarted.stop().await;
    for n in nodes {
        n.stop().await;
    }
}
