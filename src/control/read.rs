//! Linearizable reads: concurrent readers share one quorum round.
//!
//! openraft 0.9 has no lease reads: `ensure_linearizable` costs one heartbeat round to a
//! quorum. Readers queue here; one task runs rounds back to back, and every reader waiting
//! when a round *starts* is answered by that round. A reader that arrives during a round
//! waits for the next one, because a round that started before its request cannot vouch for
//! it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::ControlError;
use crate::raft::{Confirmed, NodeId, NodeInfo, Raft};

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
}

impl ReadBarrier {
    /// Starts the batching task; it ends when every handle is dropped or `shutdown` turns
    /// true while no reader waits (a node signals it once its servers have drained, so reads
    /// are served to the end; a reader arriving after that is told the node is stopping).
    pub fn start(
        raft: Raft,
        round_timeout: Duration,
        confirmed: Arc<Confirmed>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let record = confirmed.clone();
        tasks.spawn(async move {
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
                let started = Instant::now();
                let mut round_start = started;
                let mut result = one_round(&raft, round_timeout).await;
                // openraft gives each confirmation a single heartbeat interval: on a busy host
                // one late answer fails the round. Try again (a fresh round, still started after
                // every waiter arrived) before failing every reader and renewal waiting on it.
                for _ in 1..ROUND_ATTEMPTS {
                    if !matches!(result, Err(ControlError::NoQuorum(_))) {
                        break;
                    }
                    if started.elapsed() >= round_timeout {
                        break;
                    }
                    round_start = Instant::now();
                    result =
                        one_round(&raft, round_timeout.saturating_sub(started.elapsed())).await;
                }
                if result.is_ok() {
                    record.record(round_start);
                }
                for w in batch {
                    // A reader that gave up (dropped its receiver) is no error.
                    let _ = w.send(result.clone());
                }
            }
        });
        Self {
            tx,
            paused: Arc::default(),
            confirmed,
        }
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
