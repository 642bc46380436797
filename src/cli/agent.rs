//! `baton agent`: hold a region's lease for a service, run hooks on promotion and
//! demotion, and fence itself when the lease can no longer be proved valid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{CliError, Exit, GlobalArgs};
use crate::agent::{self, AgentError, AgentOptions};
use crate::client::LeaseOptions;

/// Arguments of `baton agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Service whose lease this agent holds for its region.
    #[arg(long, value_name = "SERVICE")]
    pub service: String,
    /// This agent's region.
    #[arg(long, value_name = "REGION")]
    pub region: String,
    /// Agent id reported to the coordinator, 1-128 bytes [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Command (run with sh -c) when the region gets the lease; env BATON_SERVICE,
    /// BATON_REGION, BATON_TOKEN, BATON_VALID_UNTIL_MS, BATON_EVENT=promote.
    #[arg(long, value_name = "COMMAND")]
    pub on_promote: Option<String>,
    /// Command (sh -c) when the service must stop acting as primary; BATON_EVENT=demote,
    /// BATON_REASON=revoked|expired|not-holder|shutdown.
    #[arg(long, value_name = "COMMAND")]
    pub on_demote: Option<String>,
    /// A promote hook still running after this is killed (also when demotion becomes due).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    pub hook_timeout: Duration,
    /// A demote hook still running after this is killed. Demotion starts this long before
    /// the lease's validity ends; keep it under a quarter of the lease TTL. A failed or
    /// killed demote is not acknowledged: the coordinator then waits out the TTL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub demote_timeout: Duration,
    /// Write the agent's state as JSON to this file (replaced atomically).
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Serve the state over HTTP on this address: GET / is 200 when primary, 503 otherwise.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Time between renewals [default: a third of the lease TTL].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub renew_interval: Option<Duration>,
    /// Assumed worst clock-rate difference to the leader; at least the cluster's timing.drift.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub drift: f64,
    /// Safety margin subtracted from every validity deadline.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms", value_name = "DURATION")]
    pub margin: Duration,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(global: &GlobalArgs, a: AgentArgs) -> Result<Exit, CliError> {
    let mut opts = AgentOptions::new(global.endpoints.clone(), &a.service, &a.region);
    opts.tls = global.tls()?;
    if let Some(id) = a.agent_id {
        opts.agent_id = id;
    }
    opts.on_promote = a.on_promote;
    opts.on_demote = a.on_demote;
    opts.hook_timeout = a.hook_timeout;
    opts.demote_timeout = a.demote_timeout;
    opts.state_file = a.state_file;
    opts.http_listen = a.http_listen;
    opts.token = global.token.clone();
    opts.lease = LeaseOptions {
        renew_interval: a.renew_interval,
        drift: a.drift,
        margin: a.margin,
        auto_ack_demotion: false,
    };
    match agent::run(opts, crate::node::stop_signal()).await {
        Ok(()) => Ok(Exit::Ok),
        Err(AgentError::Invalid(m)) => Err(CliError::Usage(m)),
        Err(AgentError::Client(e)) | Err(AgentError::Session(e)) => Err(CliError::Client(e)),
        Err(e) => Err(CliError::Other(e.to_string())),
    }
}
