//! `baton server` and `baton dev`: run nodes.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Exit};
use crate::config::NodeConfig;
use crate::node::{self, dev::DevOptions};

/// `baton server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The node's configuration (TOML: id, region, listen address, peers, data dir,
    /// timings).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

/// `baton dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep the data here (and reuse it on the next start) instead of a temporary
    /// directory removed at exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port of the first node; the others use the next two.
    #[arg(long, default_value_t = 7101, value_parser = clap::value_parser!(u16).range(1..=65533))]
    pub base_port: u16,
}

/// Runs one node until SIGINT/SIGTERM.
pub async fn server(args: ServerArgs) -> Result<Exit, CliError> {
    let config = NodeConfig::load(&args.config)?;
    node::run_server(config).await?;
    Ok(Exit::Ok)
}

/// Runs the dev cluster until Ctrl-C.
pub async fn dev(args: DevArgs) -> Result<Exit, CliError> {
    node::dev::run(DevOptions {
        data_dir: args.data_dir,
        base_port: args.base_port,
    })
    .await?;
    Ok(Exit::Ok)
}
