//! The process runner and the nemesis executor: real `baton server` processes on
//! 127.0.0.1, every link between them (and every client link) through the fault proxy, and
//! the faults of a [`Schedule`] applied to them.
//!
//! # Topology
//!
//! Node `i` (1-based) is in region `REGIONS[(i - 1) % 3]`. For every ordered pair of nodes
//! `(i, j)` a proxy link `i → j` forwards to node `j`'s real listen address, and node `i`'s
//! config dials `j` there (`dial."j"`); so every Raft message and every forwarded client
//! request crosses exactly one link, with the one-way latency of its region pair. Clients
//! of region `r` (readers, agents, watchers, the switchover client) are the pseudo node
//! [`client_source`]`(r)` and reach node `j` through link `client_source(r) → j`.
//!
//! Nodes advertise an address with port 0 (`127.0.0.1:0`). Clients cannot parse a leader
//! hint naming it, so they never follow a hint *around* the proxy: a non-leader's answer
//! makes them try their next configured endpoint (their own region's links), and followers
//! forward linearizable reads and failovers to the leader over the peer links.
//!
//! # Faults
//!
//! Partitions hold bytes on links ([`Fabric::apply_cuts`]); kills are `SIGKILL` and a
//! restart with the same data directory; pauses are `SIGSTOP`/`SIGCONT`; clock faults
//! rewrite the node's libfaketime file (nodes are started under libfaketime when the run
//! has clock faults and the library is installed); disk faults fill or remount the node's
//! own small tmpfs data directory (when running as root). A fault that cannot be applied
//! here is recorded as `nemesis_skipped`, never silently dropped.
//!
//! # Layout
//!
//! - `processes`: starting, stopping, pausing and reading the node processes;
//! - `clock`: the libfaketime setting of one node's clock;
//! - `nemesis_exec`: applying and healing the faults of a schedule ([`execute`]).

mod clock;
mod nemesis_exec;
mod processes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::client::Client;
use tokio::process::Child;

use crate::agents::AgentProcs;
use crate::nemesis::NodeId;
use crate::proxy::Fabric;

use clock::FakeClock;
// The executor's free functions keep their `crate::cluster::X` paths.
pub use nemesis_exec::{execute, leader_cuts, realize_clock_fault, region_island};

/// The three regions of every run, in node order.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// Pseudo node id of the clients of region `REGIONS[r]` in the proxy fabric.
pub fn client_source(region_index: usize) -> NodeId {
    100 + region_index as NodeId
}

/// Region index of node `id`.
pub fn region_index(id: NodeId) -> usize {
    ((id - 1) % REGIONS.len() as NodeId) as usize
}

/// Raft and lease timing of the cluster under test.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Raft heartbeat (openraft also uses it as the AppendEntries timeout).
    pub heartbeat: Duration,
    /// Election timeout, lower bound.
    pub election_timeout_min: Duration,
    /// Election timeout, upper bound.
    pub election_timeout_max: Duration,
    /// Lease TTL of the test services.
    pub lease_ttl: Duration,
    /// Clock drift fraction assumed by nodes and agents.
    pub drift: f64,
    /// Safety margin of nodes and agents.
    pub margin: Duration,
}

impl Timing {
    /// Timings for 20–40 ms one-way latency between regions.
    pub fn wan() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_secs(1),
            election_timeout_max: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(2),
            drift: 0.05,
            margin: Duration::from_millis(50),
        }
    }
}

/// Network latency of the fabric.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// One-way latency between two different regions: drawn per region pair from this
    /// range (inclusive), from the seed.
    pub cross_region: (Duration, Duration),
    /// Jitter added on top, per chunk.
    pub cross_jitter: Duration,
    /// One-way latency inside a region.
    pub same_region: Duration,
    /// Jitter inside a region.
    pub same_jitter: Duration,
}

impl Default for Latency {
    fn default() -> Self {
        // 20–35 ms plus up to 5 ms of jitter: 20–40 ms each way.
        Self {
            cross_region: (Duration::from_millis(20), Duration::from_millis(35)),
            cross_jitter: Duration::from_millis(5),
            same_region: Duration::from_millis(1),
            same_jitter: Duration::from_millis(1),
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of nodes (3 or 5).
    pub nodes: u32,
    /// The `baton` binary.
    pub baton: PathBuf,
    /// Run folder: node folders go to `<dir>/nodes/n<id>`.
    pub dir: PathBuf,
    /// Seed of the latencies and the proxy jitter.
    pub seed: u64,
    /// Raft and lease timing.
    pub timing: Timing,
    /// Link latencies.
    pub latency: Latency,
    /// Services created at initialisation (candidate regions: all three).
    pub services: Vec<String>,
    /// Whether the services allow automatic failover.
    pub automation: bool,
    /// Start the nodes under libfaketime (when it is installed) so clock faults can apply.
    pub clock: bool,
    /// Give every node a small tmpfs data directory (when root) so disk faults can apply.
    pub disk: bool,
    /// Storage tuning written into every node config (TOML body of `[storage]`).
    pub storage_toml: String,
}

/// Where libfaketime is, if installed (Debian's `faketime` package).
pub fn find_libfaketime() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BATON_JEPSEN_LIBFAKETIME") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut candidates = vec![
        PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/lib/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"),
    ];
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        for e in rd.flatten() {
            candidates.push(e.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Whether this process runs as root (disk faults need mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One node's fixed facts.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Region.
    pub region: String,
    /// Real listen address (the harness's own control connections use it directly).
    pub listen: SocketAddr,
    /// The node's folder (config, log, faketime file).
    pub dir: PathBuf,
    /// `node.toml`.
    pub config: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// tmpfs mount point holding the data directory, when disk faults are on.
    pub mount: Option<PathBuf>,
    /// libfaketime control file, when clock faults are on.
    pub faketime_file: Option<PathBuf>,
}

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    paused: bool,
    started: Instant,
    clock: FakeClock,
}

/// A running cluster. Dropping it kills every node (their children are `kill_on_drop`);
/// call [`Cluster::shutdown`] to also unmount tmpfs data directories.
pub struct Cluster {
    cfg: ClusterConfig,
    nodes: Vec<Node>,
    procs: tokio::sync::Mutex<Vec<Proc>>,
    fabric: Fabric,
    /// (client source, node) → link address.
    client_links: BTreeMap<(NodeId, NodeId), SocketAddr>,
    /// One-way latency per (region index, region index).
    latencies: BTreeMap<(usize, usize), Duration>,
    libfaketime: Option<PathBuf>,
    direct: Client,
    log: Mutex<Option<std::fs::File>>,
    /// Node processes that exited by themselves (not killed by the nemesis).
    crashes: std::sync::atomic::AtomicUsize,
    /// The real `baton agent` processes (started by the workload).
    pub agents: AgentProcs,
    /// The services' lease TTL as last set (the run's, or the TTL nemesis's), ms.
    ttl_ms: Arc<AtomicU64>,
    /// Set while the switchover client must not start failovers (see `pause_at_deadline`).
    hold_switchovers: Arc<AtomicBool>,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_cycle_and_client_sources_do_not_collide_with_nodes() {
        assert_eq!(region_index(1), 0);
        assert_eq!(region_index(3), 2);
        assert_eq!(region_index(4), 0);
        assert_eq!(region_index(5), 1);
        assert!(client_source(0) > 5);
        assert_ne!(client_source(0), client_source(2));
    }
}
