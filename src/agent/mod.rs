//! The region agent (`baton agent --service S --region R`): holds the region's lease
//! session for one service, tells the service beside it when to act as primary and when to
//! stop (hooks), acknowledges demotions to the coordinator, fences itself when it can no
//! longer prove its lease valid — also when the cluster is unreachable — and publishes its
//! state in a file and/or on a small HTTP endpoint.
//!
//! Hooks are shell commands (`sh -c`) with this environment:
//!
//! | variable               | value                                                       |
//! |------------------------|-------------------------------------------------------------|
//! | `BATON_EVENT`          | `promote` or `demote`                                       |
//! | `BATON_SERVICE`        | the service                                                 |
//! | `BATON_REGION`         | the agent's region                                          |
//! | `BATON_AGENT_ID`       | the agent's id                                              |
//! | `BATON_TOKEN`          | the fencing token promoted with / demoted from              |
//! | `BATON_VALID_UNTIL_MS` | ms from now the lease is certainly valid (promote), or by which it ends at the latest (demote after a revocation); else 0 |
//! | `BATON_REASON`         | demote only: `revoked`, `expired`, `not-holder`, `shutdown` |
//!
//! Hooks never overlap and alternate strictly: promote(T), demote(T), promote(T'), ...
//!
//! The timing rule the guarantee rests on: `on_demote` runs for at most `demote_timeout`
//! and starts `demote_timeout` before the lease's validity ends, so the service has stopped
//! acting as primary before the coordinator may grant the lease elsewhere. A promote hook
//! still running then is killed first. A revocation is acknowledged only after `on_demote`
//! *succeeded*; after a failure or a timeout the agent stays silent and the coordinator
//! waits out the TTL.
//!
//! The decisions live in [`AgentCore`], a state machine without I/O; [`run`] is a thin
//! driver around it.

mod driver;
mod hook;
mod machine;
mod publish;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::client::{Client, ClientError, LeaseOptions};
use crate::state::names::check_name;
use crate::wire::MAX_AGENT_ID;

pub use self::hook::{run_hook, run_hook_until};
pub use self::machine::{
    Action, AgentCore, AgentState, DemoteReason, Hook, HookKind, HookOutcome, Role,
};
pub use self::publish::{respond, serve_http, write_state_file, Reply};

use self::driver::{drive, HookCommands};
use self::publish::file_writer;

/// Default time the promote hook may run before it is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time the demote hook may run before it is killed. Demotion starts this long
/// before the lease's validity ends, so it must be well under the renewal interval's slack:
/// about a quarter of the lease TTL at most (the agent warns when it is not).
pub const DEFAULT_DEMOTE_TIMEOUT: Duration = Duration::from_millis(500);

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Coordinator endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// TLS to the coordinators (`--cacert`, `--cert`, `--key`); `None`: plaintext.
    pub tls: Option<crate::client::ClientTls>,
    /// The service whose lease the agent holds for its region.
    pub service: String,
    /// The agent's region.
    pub region: String,
    /// Who renews (1-128 bytes); [`default_agent_id`] gives `hostname-pid`.
    pub agent_id: String,
    /// Run with `sh -c` when the region gets the lease (a new token).
    pub on_promote: Option<String>,
    /// Run with `sh -c` when the service must stop acting as primary.
    pub on_demote: Option<String>,
    /// A promote hook still running after this is killed (with everything it started).
    pub hook_timeout: Duration,
    /// A demote hook still running after this is killed; demotion starts this long before
    /// the lease's validity ends, so the service has stopped before anyone else may start.
    pub demote_timeout: Duration,
    /// Where to publish the state as JSON (replaced atomically).
    pub state_file: Option<PathBuf>,
    /// Where to serve the state over HTTP (`GET /`: 200 when primary, 503 otherwise).
    pub http_listen: Option<SocketAddr>,
    /// How the lease session renews. `auto_ack_demotion` must be false: the agent
    /// acknowledges after `on_demote`.
    pub lease: LeaseOptions,
    /// Bearer token of a principal with the `agent` role bound to this service and region
    /// (clusters with `[auth]` on).
    pub token: Option<String>,
}

impl AgentOptions {
    /// Options with the defaults: agent id `hostname-pid`, no hooks, a hook timeout of
    /// [`DEFAULT_HOOK_TIMEOUT`], nothing published, default lease options.
    pub fn new(endpoints: Vec<String>, service: &str, region: &str) -> Self {
        Self {
            endpoints,
            tls: None,
            service: service.to_string(),
            region: region.to_string(),
            agent_id: default_agent_id(),
            on_promote: None,
            on_demote: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            demote_timeout: DEFAULT_DEMOTE_TIMEOUT,
            state_file: None,
            http_listen: None,
            lease: LeaseOptions::default(),
            token: None,
        }
    }

    /// Checks the options before anything starts.
    pub fn validate(&self) -> Result<(), AgentError> {
        check_name("service", &self.service).map_err(AgentError::Invalid)?;
        check_name("region", &self.region).map_err(AgentError::Invalid)?;
        if self.agent_id.is_empty() || self.agent_id.len() > MAX_AGENT_ID {
            return Err(AgentError::Invalid(format!(
                "agent id must be 1-{MAX_AGENT_ID} bytes, got {}",
                self.agent_id.len()
            )));
        }
        if self.endpoints.is_empty() {
            return Err(AgentError::Invalid(
                "no coordinator endpoints: give at least one host:port".into(),
            ));
        }
        for (name, hook) in [
            ("on-promote", &self.on_promote),
            ("on-demote", &self.on_demote),
        ] {
            if hook.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(AgentError::Invalid(format!(
                    "the {name} command is empty; leave it out to run nothing"
                )));
            }
        }
        if self.hook_timeout.is_zero() || self.demote_timeout.is_zero() {
            return Err(AgentError::Invalid(
                "the hook timeouts must be positive".into(),
            ));
        }
        if self.lease.auto_ack_demotion {
            return Err(AgentError::Invalid(
                "auto_ack_demotion must be off: the agent acknowledges a demotion only after \
                 on_demote ran"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The options are not usable.
    #[error("invalid agent options: {0}")]
    Invalid(String),
    /// The client could not be made (bad endpoint).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The cluster refused the lease session for good (unknown service, region not
    /// allowed, ...). The service was demoted first if it was primary.
    #[error("lease session ended: {0}")]
    Session(ClientError),
    /// A local resource (state file, HTTP listener) could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

/// `hostname-pid`, the default agent id: unique per process, recognisable in the
/// coordinator's logs. The host name is cut so the id fits the coordinator's limit.
pub fn default_agent_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "agent".to_string());
    let pid = std::process::id().to_string();
    let room = MAX_AGENT_ID.saturating_sub(pid.len() + 1);
    let mut cut = host.len().min(room);
    while !host.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{pid}", &host[..cut])
}

/// Runs the agent until `shutdown` resolves, or the cluster refuses the lease session for
/// good. On shutdown it demotes the service first if it is primary (`BATON_REASON=shutdown`),
/// publishes `replica`, then stops renewing: the coordinator lets the lease expire after
/// its TTL (another agent of the region may still renew it).
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    opts.validate()?;
    let client = Client::with_options(
        opts.endpoints.clone(),
        crate::client::ClientOptions {
            tls: opts.tls.clone(),
            token: opts.token.clone(),
            ..Default::default()
        },
    )?;
    let initial = AgentState::replica(&opts.service, &opts.region, &opts.agent_id);
    let (publish, _) = watch::channel(initial.clone());

    // Both publishers are set up before the lease session starts, so a bad path or a busy
    // port fails the start instead of leaving a primary nobody can see.
    let writer = match &opts.state_file {
        Some(path) => {
            write_state_file(path, &initial, Instant::now()).map_err(|source| AgentError::Io {
                context: format!("cannot write the state file {}", path.display()),
                source,
            })?;
            Some(tokio::spawn(file_writer(path.clone(), publish.subscribe())))
        }
        None => None,
    };
    let server = match opts.http_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Io {
                    context: format!("cannot listen on {addr} for the state endpoint"),
                    source,
                })?;
            let bound = listener.local_addr().map_or(addr, |a| a);
            info!(addr = %bound, "serving the agent state over HTTP");
            Some(tokio::spawn(serve_http(listener, publish.subscribe())))
        }
        None => None,
    };

    info!(
        service = %opts.service,
        region = %opts.region,
        agent_id = %opts.agent_id,
        on_promote = opts.on_promote.is_some(),
        on_demote = opts.on_demote.is_some(),
        "agent starting"
    );
    let core = AgentCore::new(
        &opts.service,
        &opts.region,
        &opts.agent_id,
        opts.on_promote.is_some(),
        opts.on_demote.is_some(),
    )
    .with_demote_lead(opts.demote_timeout);
    let hooks = HookCommands {
        on_promote: opts.on_promote.clone(),
        on_demote: opts.on_demote.clone(),
        promote_timeout: opts.hook_timeout,
        demote_timeout: opts.demote_timeout,
    };
    let session = client.keep_alive(&opts.service, &opts.region, &opts.agent_id, opts.lease);
    let result = drive(session, core, &hooks, &publish, shutdown).await;

    // The last state (replica) reaches the file before returning: the writer drains the
    // channel once the sender is gone.
    drop(publish);
    if let Some(w) = writer {
        if tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .is_err()
        {
            warn!("the state file writer did not finish in 5 s");
        }
    }
    if let Some(s) = server {
        s.abort();
    }
    result
}

#[cfg(test)]
mod tests;
