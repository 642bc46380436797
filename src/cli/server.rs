//! `baton server` and `baton dev`: run nodes.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Exit};
use crate::config::NodeConfig;
use crate::dev::DevOptions;
use crate::node;

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
    /// Port of the first node; the others use the next two, and their Raft peer
    /// listeners base+20..base+22.
    #[arg(long, default_value_t = 7101, value_parser = clap::value_parser!(u16).range(1..=65503))]
    pub base_port: u16,
    /// Serve both listeners with TLS and require client certificates: makes a dev CA, node
    /// and client certificates in the data directory and prints the CLI flags to use.
    #[arg(long)]
    pub tls: bool,
    /// Act on a running dev cluster instead of starting one.
    #[command(subcommand)]
    pub action: Option<DevAction>,
}

/// What to do to a running dev cluster.
#[derive(Debug, clap::Subcommand)]
pub enum DevAction {
    /// Simulate an outage of a region: its agent stops renewing and its health endpoint
    /// answers 503.
    Outage {
        /// us-east, eu-west or ap-south.
        region: String,
    },
    /// End a simulated outage.
    Heal {
        /// us-east, eu-west or ap-south.
        region: String,
    },
}

/// Runs one node until SIGINT/SIGTERM.
pub async fn server(args: ServerArgs) -> Result<Exit, CliError> {
    let config = NodeConfig::load(&args.config)?;
    node::run_server(config).await?;
    Ok(Exit::Ok)
}

/// Runs the dev cluster until Ctrl-C.
pub async fn dev(args: DevArgs) -> Result<Exit, CliError> {
    if let Some(action) = args.action {
        let (region, up) = match action {
            DevAction::Outage { region } => (region, false),
            DevAction::Heal { region } => (region, true),
        };
        return match crate::dev::regions::request(args.base_port, &region, up).await {
            Ok(_) => {
                println!("{region}: {}", if up { "healed" } else { "outage started" });
                Ok(Exit::Ok)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(Exit::Error)
            }
        };
    }
    crate::dev::run(DevOptions {
        data_dir: args.data_dir,
        base_port: args.base_port,
        tls: args.tls,
    })
    .await?;
    Ok(Exit::Ok)
}
