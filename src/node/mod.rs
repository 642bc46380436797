//! One coordinator process: storage, Raft, the API and the lease keeper wired together.

pub mod dev;

use crate::config::NodeConfig;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Anything else, said plainly.
    #[error("{0}")]
    Other(String),
}

/// Runs a node until SIGINT/SIGTERM.
pub async fn run_server(config: NodeConfig) -> Result<(), NodeError> {
    let _ = config;
    Err(NodeError::Other("node not wired yet".into()))
}
