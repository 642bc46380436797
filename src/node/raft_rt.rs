//! Raft's own threads.
//!
//! openraft's core, its replication tasks, the connections to peers and the peer listener
//! run on a runtime of their own. On the node's main runtime, thousands of client calls
//! (even ones refused at once by load shedding) queue ahead of a heartbeat's task; measured
//! with a flood of 1,152 concurrent callers on a two-core machine, the leader missed dozens
//! of 50 ms AppendEntries deadlines and linearizable reads failed with "no quorum". On
//! threads of its own, Raft waits for the OS scheduler only, which favours threads that
//! mostly sleep.

use std::future::Future;

use super::NodeError;

/// Worker threads of the Raft runtime: the core and replication to each peer, with storage
/// work on its blocking pool.
const RAFT_THREADS: usize = 2;

/// The Raft runtime; shut down in the background when dropped (dropping a runtime from
/// async code would otherwise panic).
pub struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    /// Starts the runtime's threads.
    pub fn start(id: u64) -> Result<Self, NodeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_THREADS)
            .thread_name(format!("raft-{id}"))
            .enable_all()
            .build()
            .map_err(|e| NodeError::Other(format!("cannot start the Raft threads: {e}")))?;
        Ok(Self(Some(rt)))
    }

    /// A handle to spawn on the runtime or enter it.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            // Only `drop` takes the runtime out.
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Runs `f` on the Raft runtime and waits for its result.
    pub async fn run<F>(&self, f: F) -> Result<F::Output, NodeError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle()
            .spawn(f)
            .await
            .map_err(|e| NodeError::Other(format!("the Raft runtime failed: {e}")))
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
