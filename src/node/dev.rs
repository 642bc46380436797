//! `baton dev`: a local three-region cluster for trying baton out.

use std::path::PathBuf;

use super::NodeError;

/// Options of `baton dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where to keep data (default: a temporary directory removed at exit).
    pub data_dir: Option<PathBuf>,
    /// First port; nodes use base, base+1, base+2.
    pub base_port: u16,
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(opts: DevOptions) -> Result<(), NodeError> {
    let _ = opts;
    Err(NodeError::Other("dev not wired yet".into()))
}
