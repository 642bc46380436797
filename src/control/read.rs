//! Linearizable reads: concurrent readers share one quorum round.
//!
//! openraft 0.9 has no lease reads: `ensure_linearizable` costs one heartbeat round to a
//! quorum. Readers queue here; one task runs rounds back to back, and every reader waiting
//! when a round *starts* is answered by that round. A reader that arrives during a round
//! waits for the next one, because a round that started before its request cannot vouch for
//! it.
//!
//! A follower serves linearizable reads itself (etcd's follower reads): its readers queue
//! the same way, one `ReadIndex` call per batch asks the leader for a read point (the
//! leader answers from its own rounds, after the call arrived), and the batch is answered
//! once this node has applied that far. No read is forwarded, and the leader does one
//! small call per follower batch instead of every follower read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::ControlError;
use crate::raft::{Confirmed, ForwardError, NodeId, NodeInfo, Peers, Raft};

type Waiter = oneshot::Sender<Result<(), ControlError>>;

/// Confirmation rounds tried for one batch before its readers are told there is no quorum.
const ROUND_ATTEMPTS: usize = 3;

/// Batches linearizable read barriers.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
    /// Set during a leadership transfer: reads would refresh the followers' leader lease.
    paused: Arc<AtomicBool>,
    /// When the last successful round started: this node was the leader with everything
    /// committed applied at that instant.
    confirmed: Arc<Confirmed>,
    /// Readers of a follower, waiting for a read index from the leader.
    follower_tx: mpsc::UnboundedSender<Waiter>,
    raft: Raft,
    me: NodeId,
}

impl ReadBarrier {
    /// Starts the batching task; it ends when every handle is dropped or `shutdown` turns
    /// true while no reader waits (a node signals it once its servers have drained, so reads
    /// are served to the end; a reader arriving after that is told the node is stopping).
    pub fn start(
        raft: Raft,
        peers: Peers,
        round_timeout: Duration,
        confirmed: Arc<Confirmed>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let me = raft.metrics().borrow().id;
        let (follower_tx, follower_rx) = mpsc::unbounded_channel::<Waiter>();
        let (r, s) = (raft.clone(), shutdown.clone());
        tasks.spawn(batches(follower_rx, s, move || {
            follower_round(r.clone(), peers.clone(), me, round_timeout)
        }));
        let (tx, rx) = mpsc::unbounded_channel::<Waiter>();
        let (r, record) = (raft.clone(), confirmed.clone());
        tasks.spawn(batches(rx, shutdown, move || {
            leader_round(r.clone(), record.clone(), round_timeout)
        }));
        Self {
            tx,
            paused: Arc::default(),
            confirmed,
            follower_tx,
            raft,
            me,
        }
    }

    /// Returns once this node's state includes every write acknowledged before this call
    /// began, so a read served from it is linearizable: on the leader a confirmation round
    /// ([`Self::linearize`]); on a follower the leader's read index, applied here. Unlike
    /// `linearize`, success does not mean this node leads: only reads may use it.
    pub async fn read_point(&self) -> Result<(), ControlError> {
        let leader = self.raft.metrics().borrow().current_leader;
        if leader.is_none() || leader == Some(self.me) {
            return self.linearize().await;
        }
        let (tx, rx) = oneshot::channel();
        self.follower_tx
            .send(tx)
            .map_err(|_| ControlError::ShuttingDown)?;
        rx.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// How long ago the last successful round started: an honest upper bound on how stale
    /// this node's state may be while it believes it leads (`None`: never confirmed).
    pub fn confirmed_age(&self) -> Option<Duration> {
        self.confirmed.age()
    }

    /// Pauses (or resumes) reads; paused reads answer "not leader" so clients retry.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Returns once this node has confirmed, with a quorum, after this call began, that it
    /// is the leader, and has applied everything committed before that.
    pub async fn linearize(&self) -> Result<(), ControlError> {
        if self.paused.load(Ordering::Relaxed) {
            return Err(ControlError::NotLeader(None));
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| ControlError::ShuttingDown)?;
        rx.await.map_err(|_| ControlError::ShuttingDown)?
    }
}

/// One confirmation round for a leader's batch, retried on a timeout; records when the
/// successful one started.
async fn leader_round(
    raft: Raft,
    record: Arc<Confirmed>,
    round_timeout: Duration,
) -> Result<(), ControlError> {
    let started = Instant::now();
    let mut round_start = started;
    let mut result = one_round(&raft, round_timeout).await;
    // openraft gives each confirmation a single heartbeat interval: on a busy host one late
    // answer fails the round. Try again (a fresh round, still started after every waiter
    // arrived) before failing every reader and renewal waiting on it.
    for _ in 1..ROUND_ATTEMPTS {
        if !matches!(result, Err(ControlError::NoQuorum(_))) {
            break;
        }
        if started.elapsed() >= round_timeout {
            break;
        }
        round_start = Instant::now();
        result = one_round(&raft, round_timeout.saturating_sub(started.elapsed())).await;
    }
    if result.is_ok() {
        record.record(round_start);
    }
    result
}

/// Answers queued waiters in batches: every waiter queued when a round starts gets that
/// round's result; rounds run back to back. Ends like the leader's batcher.
async fn batches<F, Fut>(
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    round: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>>,
{
    loop {
        let first = tokio::select! {
            biased;
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => {
                rx.close();
                while let Ok(w) = rx.try_recv() {
                    let _ = w.send(Err(ControlError::ShuttingDown));
                }
                return;
            }
        };
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        let result = round().await;
        for w in batch {
            // A reader that gave up (dropped its receiver) is no error.
            let _ = w.send(result.clone());
        }
    }
}

/// One read point for a follower's batch: the leader's read index, then this node's apply
/// catching up to it. Any failure sends the batch's readers back to forwarding.
async fn follower_round(
    raft: Raft,
    peers: Peers,
    me: NodeId,
    timeout: Duration,
) -> Result<(), ControlError> {
    let started = Instant::now();
    let (leader, node) = {
        let m = raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l != me => (l, m.membership_config.membership().get_node(&l).cloned()),
            // Became leader meanwhile (or lost it): the reader retries the usual way.
            _ => return Err(ControlError::NotLeader(None)),
        }
    };
    let Some(node) = node else {
        return Err(ControlError::NotLeader(None));
    };
    let index = peers
        .read_index_to(leader, &node, timeout)
        .await
        .map_err(|e| match e {
            ForwardError::NotLeader {
                leader_id, leader, ..
            } => ControlError::NotLeader(leader_of(leader_id, leader)),
            other => ControlError::NoQuorum(format!("no read index from the leader: {other}")),
        })?;
    raft.wait(Some(timeout.saturating_sub(started.elapsed())))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map_err(|e| {
            ControlError::NoQuorum(format!(
                "this node did not apply up to the leader's read index {index}: {e}"
            ))
        })?;
    Ok(())
}

async fn one_round(raft: &Raft, timeout: Duration) -> Result<(), ControlError> {
    use crate::raft::typ::error::{CheckIsLeaderError, RaftError};
    match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
        Err(_) => Err(ControlError::NoQuorum(format!(
            "no quorum confirmed leadership within {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Err(
            ControlError::NotLeader(leader_of(f.leader_id, f.leader_node)),
        ),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
            Err(ControlError::NoQuorum(q.to_string()))
        }
        Ok(Err(RaftError::Fatal(f))) => Err(ControlError::Fatal(f.to_string())),
    }
}

/// The known leader from a forward hint.
pub(crate) fn leader_of(id: Option<NodeId>, node: Option<NodeInfo>) -> Option<(NodeId, NodeInfo)> {
    match (id, node) {
        (Some(id), Some(node)) => Some((id, node)),
        _ => None,
    }
}
