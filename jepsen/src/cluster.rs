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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::client::{Client, ClientOptions, Consistency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::agents::{agent_source, AgentProcs};
use crate::history::{Event, HistoryWriter};
use crate::nemesis::{
    partition_cuts, AgentFault, AgentTarget, ClockFault, Cut, DiskFault, Fault, KillTarget, NodeId,
    PartitionKind, PauseTarget, Schedule,
};
use crate::proxy::{Fabric, LinkState, Mode};

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

/// Upper bound (seconds) on the lag between spawning a node and libfaketime initialising
/// in it (see [`FakeClock::change`]).
const START_SLACK_S: f64 = 0.25;

/// A node's clock as libfaketime is told to run it: `fake = real + offset +
/// (rate - 1) * (now - process start)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FakeClock {
    offset_s: f64,
    rate: f64,
}

impl FakeClock {
    const REAL: FakeClock = FakeClock {
        offset_s: 0.0,
        rate: 1.0,
    };

    /// How far ahead of real time the clock is `elapsed_s` after the process started.
    fn ahead_at(&self, elapsed_s: f64) -> f64 {
        self.offset_s + (self.rate - 1.0) * elapsed_s
    }

    /// The setting that keeps the clock continuous at `elapsed_s`, then jumps it by
    /// `jump_s` and runs it at `rate` from there.
    ///
    /// libfaketime measures its rate from when it initialised in the process, a little
    /// after the harness's `started`; by that lag, a faster rate would pull the clock
    /// *back* at the change. A small forward jump ([`START_SLACK_S`] per unit of rate
    /// increase) covers the lag, so the clock never runs backwards.
    fn change(&self, elapsed_s: f64, jump_s: f64, rate: f64) -> FakeClock {
        let slack = (rate - self.rate).max(0.0) * START_SLACK_S;
        let ahead = self.ahead_at(elapsed_s) + jump_s + slack;
        FakeClock {
            offset_s: ahead - (rate - 1.0) * elapsed_s,
            rate,
        }
    }

    /// libfaketime's `FAKETIME` syntax: `+1.500000 x2`.
    fn spec(&self) -> String {
        let sign = if self.offset_s < 0.0 { '-' } else { '+' };
        format!("{sign}{:.6} x{}", self.offset_s.abs(), self.rate)
    }
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

fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
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

impl Cluster {
    /// Builds the proxy fabric, writes every node's config and starts the nodes.
    pub async fn start(cfg: ClusterConfig) -> io::Result<Cluster> {
        let n = cfg.nodes as usize;
        let ids: Vec<NodeId> = (1..=n as NodeId).collect();
        let ports = free_ports(n)?;
        std::fs::create_dir_all(cfg.dir.join("nodes"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join("harness.log"))?;

        // Seeded latencies per region pair.
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x6c61_7465_6e63_7921);
        let mut latencies = BTreeMap::new();
        for a in 0..REGIONS.len() {
            for b in 0..REGIONS.len() {
                if a == b {
                    latencies.insert((a, b), cfg.latency.same_region);
                } else if a < b {
                    let (lo, hi) = cfg.latency.cross_region;
                    let l = rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64);
                    latencies.insert((a, b), Duration::from_millis(l));
                    latencies.insert((b, a), Duration::from_millis(l));
                }
            }
        }
        let link_state = |a: usize, b: usize| {
            let jitter = if a == b {
                cfg.latency.same_jitter
            } else {
                cfg.latency.cross_jitter
            };
            LinkState::with_latency(latencies[&(a, b)], jitter)
        };

        let libfaketime = if cfg.clock { find_libfaketime() } else { None };
        let tmpfs = cfg.disk && is_root();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let listen: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();

        let mut fabric = Fabric::new();
        let mut dial: BTreeMap<NodeId, BTreeMap<NodeId, SocketAddr>> = BTreeMap::new();
        for &i in &ids {
            for &j in &ids {
                if i == j {
                    continue;
                }
                let st = link_state(region_index(i), region_index(j));
                let addr = fabric
                    .add(i, j, any, listen[j as usize - 1], st, cfg.seed)
                    .await?;
                dial.entry(i).or_default().insert(j, addr);
            }
        }
        let mut client_links = BTreeMap::new();
        for r in 0..REGIONS.len() {
            // The region's clients, and its real agent on links of its own (so a fault can
            // cut the agent alone).
            for src in [client_source(r), agent_source(r)] {
                for &j in &ids {
                    let st = link_state(r, region_index(j));
                    let addr = fabric
                        .add(src, j, any, listen[j as usize - 1], st, cfg.seed)
                        .await?;
                    client_links.insert((src, j), addr);
                }
            }
        }

        let mut peers = String::new();
        for &i in &ids {
            // Port 0: a leader hint naming it cannot be followed (see the module docs).
            peers.push_str(&format!(
                "[[peers]]\nid = {i}\naddr = \"127.0.0.1:0\"\nregion = \"{}\"\n",
                REGIONS[region_index(i)]
            ));
        }
        let mut services = String::new();
        for s in &cfg.services {
            services.push_str(&format!(
                "[[services]]\nname = \"{s}\"\nregions = [{}]\nlease_ttl = \"{}\"\nauto_failover = {}\n",
                REGIONS
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                ms(cfg.timing.lease_ttl),
                cfg.automation
            ));
        }
        let t = &cfg.timing;
        let timing = format!(
            "[timing]\nheartbeat = \"{}\"\nelection_timeout_min = \"{}\"\nelection_timeout_max = \"{}\"\ndrift = {}\nmargin = \"{}\"\n",
            ms(t.heartbeat),
            ms(t.election_timeout_min),
            ms(t.election_timeout_max),
            t.drift,
            ms(t.margin)
        );

        let mut nodes = Vec::new();
        for &i in &ids {
            let dir = cfg.dir.join("nodes").join(format!("n{i}"));
            std::fs::create_dir_all(&dir)?;
            let mount = if tmpfs {
                let m = dir.join("disk");
                std::fs::create_dir_all(&m)?;
                match run_cmd(
                    "mount",
                    &[
                        "-t",
                        "tmpfs",
                        "-o",
                        "size=256m",
                        "tmpfs",
                        &m.display().to_string(),
                    ],
                ) {
                    Ok(()) => Some(m),
                    Err(e) => {
                        eprintln!("warning: no tmpfs data directory for node {i} ({e}): disk faults will be skipped");
                        None
                    }
                }
            } else {
                None
            };
            let data_dir = match &mount {
                Some(m) => m.join("data"),
                None => dir.join("data"),
            };
            let faketime_file = libfaketime.as_ref().map(|_| dir.join("faketime.rc"));
            if let Some(f) = &faketime_file {
                write_atomic(f, &FakeClock::REAL.spec())?;
            }
            let mut dial_toml = String::from("[dial]\n");
            for (j, a) in &dial[&i] {
                dial_toml.push_str(&format!("\"{j}\" = \"{a}\"\n"));
            }
            let config = dir.join("node.toml");
            let text = format!(
                "cluster = \"jepsen\"\nid = {i}\nregion = \"{}\"\nlisten = \"{}\"\nadvertise = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{timing}\n[storage]\n{}\n{dial_toml}\n{peers}\n{services}",
                REGIONS[region_index(i)],
                listen[i as usize - 1],
                data_dir.display(),
                cfg.storage_toml,
            );
            std::fs::write(&config, text)?;
            nodes.push(Node {
                id: i,
                region: REGIONS[region_index(i)].to_string(),
                listen: listen[i as usize - 1],
                dir,
                config,
                data_dir,
                mount,
                faketime_file,
            });
        }
        let direct = Client::with_options(
            listen.iter().map(|a| a.to_string()).collect(),
            ClientOptions {
                timeout: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            },
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let ttl_ms = cfg.timing.lease_ttl.as_millis() as u64;
        let procs = nodes
            .iter()
            .map(|_| Proc {
                child: None,
                paused: false,
                started: Instant::now(),
                clock: FakeClock::REAL,
            })
            .collect();
        let cluster = Cluster {
            cfg,
            nodes,
            procs: tokio::sync::Mutex::new(procs),
            fabric,
            client_links,
            latencies,
            libfaketime,
            direct,
            log: Mutex::new(Some(log)),
            crashes: std::sync::atomic::AtomicUsize::new(0),
            agents: AgentProcs::default(),
            ttl_ms: Arc::new(AtomicU64::new(ttl_ms)),
            hold_switchovers: Arc::new(AtomicBool::new(false)),
        };
        for &i in &ids {
            cluster.spawn(i).await?;
        }
        Ok(cluster)
    }

    /// Appends a line to the run's `harness.log` (and stderr when `loud`).
    pub fn note(&self, loud: bool, msg: &str) {
        if loud {
            eprintln!("{msg}");
        }
        if let Ok(mut g) = self.log.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "{msg}");
            }
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The node with `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// Configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Whether clock faults can be applied (libfaketime found and nodes run under it).
    pub fn libfaketime(&self) -> Option<&Path> {
        self.libfaketime.as_deref()
    }

    /// One-way latency between two regions (by index).
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        self.latencies
            .get(&(a, b))
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// Endpoints for a client located in region `region` (index), `first` first: the links
    /// from that region's client source to every node.
    pub fn client_endpoints(&self, region: usize, first: NodeId) -> Vec<String> {
        let src = client_source(region);
        let mut ids = self.ids();
        ids.retain(|&i| i != first);
        ids.insert(0, first);
        ids.iter()
            .filter_map(|i| self.client_links.get(&(src, *i)))
            .map(|a| a.to_string())
            .collect()
    }

    /// Endpoints of region `region`'s real agent: its own links, its region's first node
    /// first.
    pub fn agent_endpoints(&self, region: usize) -> Vec<String> {
        let src = agent_source(region);
        let mut ids = self.ids();
        ids.sort_by_key(|&i| (region_index(i) != region, i));
        ids.iter()
            .filter_map(|i| self.client_links.get(&(src, *i)))
            .map(|a| a.to_string())
            .collect()
    }

    /// The lease TTL the harness last set for the services (the run's, unless the TTL
    /// nemesis changed it).
    pub fn lease_ttl_now(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The TTL the harness last set, shared (agents record it with their renewals).
    pub fn ttl_handle(&self) -> Arc<AtomicU64> {
        self.ttl_ms.clone()
    }

    /// Set while the switchover client must hold its failovers, shared with the workload.
    pub fn switchover_hold(&self) -> Arc<AtomicBool> {
        self.hold_switchovers.clone()
    }

    /// One-way latency and jitter of the links between nodes `a` and `b`, as configured.
    fn base_latency(&self, a: NodeId, b: NodeId) -> (Duration, Duration) {
        let (ra, rb) = (region_index(a), region_index(b));
        let jitter = if ra == rb {
            self.cfg.latency.same_jitter
        } else {
            self.cfg.latency.cross_jitter
        };
        (self.latency(ra, rb), jitter)
    }

    /// Adds `extra` one-way latency to every link of `node` with the other nodes (both
    /// ways); `Duration::ZERO` restores the configured latency.
    fn bump_peer_latency(&self, node: NodeId, extra: Duration) {
        for j in self.ids().into_iter().filter(|&j| j != node) {
            let (lat, jitter) = self.base_latency(node, j);
            self.fabric.set_latency(node, j, lat + extra, jitter);
            self.fabric.set_latency(j, node, lat + extra, jitter);
        }
    }

    /// Changes `service`'s lease TTL with Admin `PutService` (the rest of the spec as the
    /// cluster has it); records `ttl_changed` with the TTL the answer's lease carries.
    async fn set_service_ttl(
        &self,
        service: &str,
        ttl_ms: u64,
        history: &HistoryWriter,
    ) -> Result<u64, String> {
        let got = self
            .direct
            .get_service(service)
            .await
            .map_err(|e| format!("reading the service: {e}"))?;
        let mut spec = got
            .service
            .and_then(|s| s.spec)
            .ok_or("the service answer has no spec")?;
        spec.lease_ttl_ms = ttl_ms;
        let resp = self
            .direct
            .put_service(spec, "jepsen: lease TTL nemesis")
            .await
            .map_err(|e| format!("PutService: {e}"))?;
        let lease_ttl_ms = resp
            .service
            .and_then(|s| s.lease)
            .map(|l| l.ttl_ms)
            .unwrap_or(0);
        self.ttl_ms.store(ttl_ms, Ordering::Relaxed);
        history.record(Event::TtlChanged {
            service: service.to_string(),
            ttl_ms,
            lease_ttl_ms,
        });
        Ok(lease_ttl_ms)
    }

    /// The region an agent fault aims at: the lease holder's, or a fixed one.
    async fn agent_region(&self, target: &AgentTarget, service: &str) -> Result<String, String> {
        match target {
            AgentTarget::Holder => self
                .primary_region(service)
                .await
                .map_err(|e| format!("cannot read the lease: {e}"))?
                .ok_or_else(|| "the lease is vacant: no holder's agent to aim at".to_string()),
            AgentTarget::Region { region } => Ok(REGIONS[region % REGIONS.len()].to_string()),
        }
    }

    /// A client talking straight to the nodes (no proxy): the harness's own control plane.
    pub fn direct(&self) -> &Client {
        &self.direct
    }

    /// A direct client of one node only (for local reads of that node).
    pub fn direct_to(&self, id: NodeId) -> Client {
        Client::with_options(
            vec![self.node(id).listen.to_string()],
            ClientOptions {
                timeout: Duration::from_secs(3),
                attempt_timeout: Duration::from_secs(3),
                ..ClientOptions::default()
            },
        )
        .expect("a socket address is a valid endpoint")
    }

    async fn spawn_locked(&self, procs: &mut [Proc], id: NodeId) -> io::Result<()> {
        let node = self.node(id);
        let p = &mut procs[id as usize - 1];
        if p.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("node.log"))?;
        let mut cmd = Command::new(&self.cfg.baton);
        cmd.arg("server")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let (Some(lib), Some(file)) = (&self.libfaketime, &node.faketime_file) {
            // A fresh process starts with a true clock; the file is re-read on every clock
            // call (FAKETIME_NO_CACHE), so faults apply at once. No shared memory: killed
            // processes would leave segments behind.
            p.clock = FakeClock::REAL;
            write_atomic(file, &p.clock.spec())?;
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DISABLE_SHM", "1");
        }
        let child = cmd.spawn()?;
        p.started = Instant::now();
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    /// Starts node `id` (no-op when it runs).
    pub async fn spawn(&self, id: NodeId) -> io::Result<()> {
        let mut procs = self.procs.lock().await;
        self.spawn_locked(&mut procs, id).await
    }

    /// `kill -9` node `id` and reaps it.
    pub async fn kill(&self, id: NodeId) {
        let mut procs = self.procs.lock().await;
        let p = &mut procs[id as usize - 1];
        if let Some(mut c) = p.child.take() {
            if let Some(pid) = c.id() {
                // SAFETY: plain syscall on a child we own and have not reaped.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            let _ = c.wait().await;
        }
        p.paused = false;
    }

    /// Sends `sig` to node `id`; false when it is not running.
    async fn signal(&self, id: NodeId, sig: libc::c_int) -> bool {
        let mut procs = self.procs.lock().await;
        let p = &mut procs[id as usize - 1];
        let Some(pid) = p.child.as_ref().and_then(|c| c.id()) else {
            return false;
        };
        // SAFETY: plain syscall on a child we own and have not reaped.
        let ok = unsafe { libc::kill(pid as i32, sig) } == 0;
        if ok {
            p.paused = sig == libc::SIGSTOP;
        }
        ok
    }

    /// SIGSTOP node `id`.
    pub async fn pause(&self, id: NodeId) -> bool {
        self.signal(id, libc::SIGSTOP).await
    }

    /// SIGCONT node `id`.
    pub async fn resume(&self, id: NodeId) -> bool {
        self.signal(id, libc::SIGCONT).await
    }

    /// Nodes that exited on their own (crashed) since the last call: reaped, and reported.
    pub async fn crashed(&self) -> Vec<(NodeId, String)> {
        let mut procs = self.procs.lock().await;
        let mut out = Vec::new();
        for (i, p) in procs.iter_mut().enumerate() {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((i as NodeId + 1, status.to_string()));
                    p.child = None;
                    p.paused = false;
                }
            }
        }
        out
    }

    /// Restarts every node that is not running (after a crash); returns their ids.
    pub async fn revive(&self) -> Vec<NodeId> {
        let crashed = self.crashed().await;
        self.crashes
            .fetch_add(crashed.len(), std::sync::atomic::Ordering::Relaxed);
        for (id, status) in &crashed {
            self.note(
                true,
                &format!(
                    "node {id} exited by itself ({status}); see {}; restarting it",
                    self.node(*id).dir.join("node.log").display()
                ),
            );
        }
        let mut procs = self.procs.lock().await;
        let mut revived = Vec::new();
        for id in self.ids() {
            if procs[id as usize - 1].child.is_none() {
                if let Err(e) = self.spawn_locked(&mut procs, id).await {
                    self.note(true, &format!("cannot restart node {id}: {e}"));
                } else {
                    revived.push(id);
                }
            }
        }
        revived
    }

    /// How many times a node process exited by itself (crashed) so far.
    pub fn crashes(&self) -> usize {
        self.crashes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes node `id`'s clock: a jump of `jump_s` seconds, then `rate` times real
    /// speed. The clock stays continuous apart from the jump.
    pub async fn set_clock(&self, id: NodeId, jump_s: f64, rate: f64) -> io::Result<()> {
        let Some(file) = &self.node(id).faketime_file else {
            return Err(io::Error::other("the node does not run under libfaketime"));
        };
        let mut procs = self.procs.lock().await;
        let p = &mut procs[id as usize - 1];
        let elapsed = p.started.elapsed().as_secs_f64();
        p.clock = p.clock.change(elapsed, jump_s, rate);
        write_atomic(file, &p.clock.spec())
    }

    /// The leader the nodes report (highest term wins), asked directly, without the proxy.
    pub async fn leader(&self) -> Option<NodeId> {
        let all = self.direct.cluster_status_all().await;
        all.iter()
            .filter_map(|s| s.result.as_ref().ok())
            .filter(|s| s.leader_id != 0)
            .max_by_key(|s| s.term)
            .map(|s| s.leader_id)
    }

    /// Region currently holding (or revoking) `service`'s lease, asked directly: `Ok(None)`
    /// when the lease is vacant, `Err` when it could not be read.
    pub async fn primary_region(&self, service: &str) -> Result<Option<String>, String> {
        let r = self
            .direct
            .primary(service, Consistency::Linearizable)
            .await
            .map_err(|e| e.to_string())?;
        let l = r.lease.ok_or("the answer has no lease")?;
        Ok((!l.holder_region.is_empty()).then_some(l.holder_region))
    }

    /// Waits until a linearizable read of `service` succeeds.
    pub async fn wait_ready(&self, service: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self
                .direct
                .primary(service, Consistency::Linearizable)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            if let Some((id, status)) = self.crashed().await.into_iter().next() {
                return Err(format!(
                    "node {id} exited ({status}) while starting; see {}",
                    self.node(id).dir.join("node.log").display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "no linearizable read of {service} within {timeout:?}: {last}"
        ))
    }

    /// Waits until every node has applied the leader's commit index (the final state is
    /// then comparable across nodes); false on timeout.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let all = self.direct.cluster_status_all().await;
            let ok: Vec<_> = all.iter().filter_map(|s| s.result.as_ref().ok()).collect();
            if ok.len() == self.nodes.len() {
                let commit = ok.iter().map(|s| s.commit_index).max().unwrap_or(0);
                if ok
                    .iter()
                    .all(|s| s.applied_index >= commit && s.leader_id != 0)
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Applies partition cuts between nodes, plus client cuts.
    fn cut(&self, cuts: &BTreeSet<Cut>) {
        self.fabric.apply_cuts(cuts.iter(), Mode::Hold, false);
    }

    /// Heals every link.
    pub fn heal_network(&self) {
        self.fabric.heal_all();
    }

    /// Stops every node, heals everything and unmounts the tmpfs data directories.
    pub async fn shutdown(&self) {
        self.fabric.heal_all();
        for id in self.ids() {
            self.kill(id).await;
        }
        for n in &self.nodes {
            if let Some(m) = &n.mount {
                let m = m.display().to_string();
                let _ = run_cmd("umount", &[&m]).or_else(|_| run_cmd("umount", &["-l", &m]));
            }
        }
        if let Ok(mut g) = self.log.lock() {
            g.take();
        }
    }
}

fn write_atomic(path: &Path, content: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{content}\n"))?;
    std::fs::rename(&tmp, path)
}

/// A fault as applied, with what its symbolic targets resolved to.
#[derive(Debug)]
enum Applied {
    /// One agent's links to the leader cut; the leader's peer links slowed around the heal.
    AgentCut {
        leader: NodeId,
        cuts: BTreeSet<Cut>,
        heal_latency: Duration,
    },
    /// An agent paused until `resume_at`.
    AgentPaused {
        region: String,
        resume_at: tokio::time::Instant,
        cuts: BTreeSet<Cut>,
    },
    /// A service's TTL changed; the heal puts `restore_ms` back.
    Ttl {
        service: String,
        restore_ms: u64,
        cuts: BTreeSet<Cut>,
    },
    Cuts,
    Killed(Vec<NodeId>),
    Paused(Vec<NodeId>),
    Clock(NodeId),
    DiskFull {
        filler: PathBuf,
    },
    DiskReadOnly {
        node: NodeId,
        mount: PathBuf,
        restarted: bool,
    },
}

/// How a clock fault lasting `duration` is applied: `(node, jump in seconds, rate)`.
///
/// libfaketime fakes the monotonic clock too (which is what baton's leases and openraft's
/// timers run on), and no operating system lets `CLOCK_MONOTONIC` go backwards — openraft
/// asserts it does not. So the clock only ever jumps forward: a positive offset is a jump;
/// a negative offset is realised as the clock falling behind by that much over the fault,
/// running slow at `(duration − |offset|) / duration` (at least 0.1× real speed). Healing
/// restores real speed without jumping back.
pub fn realize_clock_fault(fault: &ClockFault, duration: Duration) -> (NodeId, f64, f64) {
    match fault {
        ClockFault::Offset { node, offset_ms } if *offset_ms >= 0 => {
            (*node, *offset_ms as f64 / 1000.0, 1.0)
        }
        ClockFault::Offset { node, offset_ms } => {
            let d = duration.as_secs_f64().max(0.001);
            let behind = offset_ms.unsigned_abs() as f64 / 1000.0;
            (*node, 0.0, ((d - behind) / d).max(0.1))
        }
        ClockFault::Rate { node, rate } => (*node, 0.0, rate.max(0.1)),
    }
}

/// Client cuts that make region `r` an island together with its nodes: region `r`'s
/// clients lose the nodes of other regions, and other regions' clients lose region `r`'s
/// nodes, both ways.
pub fn region_island(nodes: &[NodeId], r: usize) -> BTreeSet<Cut> {
    let mut cuts = BTreeSet::new();
    for &n in nodes {
        for s in 0..REGIONS.len() {
            let inside = region_index(n) == r;
            if (s == r) != inside {
                cuts.insert((client_source(s), n));
                cuts.insert((n, client_source(s)));
            }
        }
    }
    cuts
}

/// Both directions between the leader and region `r`'s agents: its real agent's source and
/// its clients' source (the in-harness agents).
pub fn leader_cuts(leader: NodeId, r: usize) -> BTreeSet<Cut> {
    let mut cuts = BTreeSet::new();
    for src in [agent_source(r), client_source(r)] {
        cuts.insert((src, leader));
        cuts.insert((leader, src));
    }
    cuts
}

fn fill(path: &Path) -> io::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e),
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

impl Cluster {
    /// Applies `fault`; returns what was applied and the resolved detail, or why it cannot
    /// be applied here.
    async fn apply(
        &self,
        fault: &Fault,
        duration: Duration,
        service: &str,
        history: &HistoryWriter,
    ) -> Result<(Applied, serde_json::Value), String> {
        let ids = self.ids();
        match fault {
            Fault::Agents { agents } => self.apply_agents(agents, service, history).await,
            Fault::Partition { partition } => {
                let leader = match partition {
                    PartitionKind::IsolateLeader => self.leader().await,
                    _ => None,
                };
                let (region_nodes, region) = match partition {
                    PartitionKind::IsolatePrimaryRegion => {
                        let region = self
                            .primary_region(service)
                            .await
                            .map_err(|e| format!("cannot read the lease: {e}"))?
                            .ok_or("the lease is vacant: no primary region to isolate")?;
                        let nodes: Vec<NodeId> = self
                            .nodes
                            .iter()
                            .filter(|n| n.region == region)
                            .map(|n| n.id)
                            .collect();
                        (nodes, Some(region))
                    }
                    _ => (Vec::new(), None),
                };
                let node_cuts = partition_cuts(partition, &ids, leader, &region_nodes)
                    .ok_or("the partition's target (leader or primary region) is unknown")?;
                let mut cuts = node_cuts.clone();
                if let Some(r) = &region {
                    let ri = REGIONS.iter().position(|x| x == r).unwrap_or(0);
                    cuts.extend(region_island(&ids, ri));
                }
                self.cut(&cuts);
                let resolved = json!({
                    "leader": leader, "primary_region": region, "nodes": region_nodes,
                    "cuts": node_cuts, "client_cuts": cuts.len() - node_cuts.len(),
                });
                Ok((Applied::Cuts, resolved))
            }
            Fault::Kill { target } => {
                let victims = match target {
                    KillTarget::One { node } => vec![*node],
                    KillTarget::Minority { nodes } => nodes.clone(),
                    KillTarget::Leader => vec![self.leader().await.ok_or("no leader known")?],
                    KillTarget::All => ids.clone(),
                };
                for &v in &victims {
                    self.kill(v).await;
                }
                Ok((
                    Applied::Killed(victims.clone()),
                    json!({ "nodes": victims }),
                ))
            }
            Fault::Pause { target } => {
                let victims = match target {
                    PauseTarget::One { node } => vec![*node],
                    PauseTarget::Leader => vec![self.leader().await.ok_or("no leader known")?],
                };
                let mut paused = Vec::new();
                for &v in &victims {
                    if self.pause(v).await {
                        paused.push(v);
                    }
                }
                if paused.is_empty() {
                    return Err(format!("node(s) {victims:?} not running"));
                }
                Ok((Applied::Paused(paused.clone()), json!({ "nodes": paused })))
            }
            Fault::Clock { clock } => {
                if self.libfaketime.is_none() {
                    return Err(
                        "libfaketime is not installed (Debian package `faketime`): clock faults skipped"
                            .into(),
                    );
                }
                let (node, jump, rate) = realize_clock_fault(clock, duration);
                self.set_clock(node, jump, rate)
                    .await
                    .map_err(|e| format!("cannot write the faketime file: {e}"))?;
                Ok((
                    Applied::Clock(node),
                    json!({ "node": node, "jump_s": jump, "rate": rate }),
                ))
            }
            Fault::Disk { disk } => {
                if !is_root() {
                    return Err("not root: disk faults need a tmpfs mount; skipped".into());
                }
                let node = match disk {
                    DiskFault::Full { node } | DiskFault::ReadOnly { node } => *node,
                };
                let mount = self
                    .node(node)
                    .mount
                    .clone()
                    .ok_or("the node's data directory is not on its own tmpfs")?;
                match disk {
                    DiskFault::Full { .. } => {
                        let filler = mount.join("jepsen-filler");
                        let bytes = fill(&filler).map_err(|e| format!("filling: {e}"))?;
                        Ok((
                            Applied::DiskFull { filler },
                            json!({ "node": node, "filler_bytes": bytes }),
                        ))
                    }
                    DiskFault::ReadOnly { .. } => {
                        let m = mount.display().to_string();
                        // Live first; a filesystem with files open for writing refuses
                        // (EBUSY), and then the node is restarted onto the read-only disk.
                        let restarted = match run_cmd("mount", &["-o", "remount,ro", &m]) {
                            Ok(()) => false,
                            Err(_) => {
                                self.kill(node).await;
                                run_cmd("mount", &["-o", "remount,ro", &m])?;
                                let _ = self.spawn(node).await;
                                true
                            }
                        };
                        Ok((
                            Applied::DiskReadOnly {
                                node,
                                mount,
                                restarted,
                            },
                            json!({ "node": node, "restarted_onto_read_only": restarted }),
                        ))
                    }
                }
            }
        }
    }

    async fn apply_agents(
        &self,
        fault: &AgentFault,
        service: &str,
        history: &HistoryWriter,
    ) -> Result<(Applied, serde_json::Value), String> {
        match fault {
            AgentFault::CutFromLeader {
                target,
                heal_latency_ms,
            } => {
                let region = self.agent_region(target, service).await?;
                let ri = REGIONS.iter().position(|r| *r == region).unwrap_or(0);
                let leader = self.leader().await.ok_or("no leader known")?;
                // The region's in-harness agents lose the leader too: while any agent of
                // the region renews, the lease cannot expire and the race cannot happen.
                let cuts = leader_cuts(leader, ri);
                self.cut(&cuts);
                Ok((
                    Applied::AgentCut {
                        leader,
                        cuts,
                        heal_latency: Duration::from_millis(*heal_latency_ms),
                    },
                    json!({ "region": region, "leader": leader }),
                ))
            }
            AgentFault::PauseAtDeadline { target, offset_ms } => {
                // No switchovers meanwhile: a lease under a switchover is revoked by the
                // run, not expired, and the expiry is the race this fault aims at. Cleared
                // at the heal (and on a skip).
                self.hold_switchovers.store(true, Ordering::Relaxed);
                let r = self
                    .pause_at_deadline(target, *offset_ms, service, history)
                    .await;
                if r.is_err() {
                    self.hold_switchovers.store(false, Ordering::Relaxed);
                }
                r
            }
            AgentFault::ChangeTtl { ttl_ms, cut_holder } => {
                let before = self.lease_ttl_now();
                let mut holder = None;
                if *cut_holder {
                    let region = self.agent_region(&AgentTarget::Holder, service).await?;
                    // Best effort: right after a renewal under the old TTL.
                    self.agents.wait_renewal(&region, before / 2).await;
                    holder = Some(region);
                }
                let got = self.set_service_ttl(service, *ttl_ms, history).await?;
                let mut cuts = BTreeSet::new();
                let mut leader = None;
                if let Some(region) = &holder {
                    leader = self.leader().await;
                    let ri = REGIONS.iter().position(|r| r == region).unwrap_or(0);
                    cuts = leader.map(|l| leader_cuts(l, ri)).unwrap_or_default();
                    self.cut(&cuts);
                }
                Ok((
                    Applied::Ttl {
                        service: service.to_string(),
                        restore_ms: before.as_millis() as u64,
                        cuts,
                    },
                    json!({
                        "from_ms": before.as_millis() as u64, "to_ms": ttl_ms,
                        "lease_ttl_ms": got, "holder_cut": holder, "leader": leader,
                    }),
                ))
            }
        }
    }

    /// `pause_at_deadline`: see [`AgentFault::PauseAtDeadline`].
    async fn pause_at_deadline(
        &self,
        target: &AgentTarget,
        offset: i64,
        service: &str,
        history: &HistoryWriter,
    ) -> Result<(Applied, serde_json::Value), String> {
        let ttl = self.lease_ttl_now();
        let t = &self.cfg.timing;
        // Right after a renewal: the agent's validity moved forward. The holder
        // changes often (switchovers), so it is looked up again for each try.
        let give_up = tokio::time::Instant::now() + ttl * 2;
        let (region, valid_until) = loop {
            let region = self.agent_region(target, service).await?;
            if let Some(v) = self.agents.wait_renewal(&region, ttl / 2).await {
                break (region, v);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!(
                    "{region}'s agent published no renewal within {:?}",
                    ttl * 2
                ));
            }
        };
        self.agents
            .pause(&region, history)
            .await
            .ok_or_else(|| format!("{region}'s agent is not running"))?;
        // As for the cut: the region's in-harness agents must not keep the lease
        // alive while the real one sleeps.
        let ri = REGIONS.iter().position(|r| *r == region).unwrap_or(0);
        let leader = self.leader().await;
        let cuts = leader.map(|l| leader_cuts(l, ri)).unwrap_or_default();
        self.cut(&cuts);
        // The agent's validity is sent + ttl·(1−drift) − margin; the leader's
        // deadline for that renewal is about sent + ttl·(1+drift) + margin.
        let ms = |d: Duration| d.as_millis() as i64;
        let span = ms(ttl.mul_f64(1.0 - t.drift)) - ms(t.margin);
        let sent = valid_until as i64 - span;
        let deadline = sent + ms(ttl.mul_f64(1.0 + t.drift)) + ms(t.margin);
        let resume_unix = deadline + offset;
        let now_unix = (crate::agents::realtime_ns() / 1_000_000) as i64;
        let wait = Duration::from_millis((resume_unix - now_unix).max(0) as u64);
        Ok((
            Applied::AgentPaused {
                region: region.clone(),
                resume_at: tokio::time::Instant::now() + wait,
                cuts,
            },
            json!({
                "region": region, "leader": leader, "valid_until_unix_ms": valid_until,
                "leader_deadline_unix_ms": deadline, "resume_unix_ms": resume_unix,
            }),
        ))
    }

    /// Heals what `apply` did.
    async fn heal(&self, applied: &Applied, history: &HistoryWriter) {
        match applied {
            Applied::AgentCut { cuts, .. } => {
                self.fabric.apply_cuts(cuts.iter(), Mode::Open, false)
            }
            Applied::AgentPaused { region, cuts, .. } => {
                self.agents.resume(region, history).await;
                self.hold_switchovers.store(false, Ordering::Relaxed);
                self.fabric.apply_cuts(cuts.iter(), Mode::Open, false);
            }
            Applied::Ttl {
                service,
                restore_ms,
                cuts,
            } => {
                self.fabric.apply_cuts(cuts.iter(), Mode::Open, false);
                // Retried: a TTL left lowered would change every later judgement.
                let mut last = String::new();
                for _ in 0..20 {
                    match self.set_service_ttl(service, *restore_ms, history).await {
                        Ok(_) => {
                            last.clear();
                            break;
                        }
                        Err(e) => last = e,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                if !last.is_empty() {
                    self.note(true, &format!("cannot restore {service}'s TTL: {last}"));
                }
            }
            Applied::Cuts => self.heal_network(),
            Applied::Killed(nodes) => {
                for &n in nodes {
                    if let Err(e) = self.spawn(n).await {
                        self.note(true, &format!("cannot restart node {n}: {e}"));
                    }
                }
            }
            Applied::Paused(nodes) => {
                for &n in nodes {
                    self.resume(n).await;
                }
            }
            Applied::Clock(node) => {
                if let Err(e) = self.set_clock(*node, 0.0, 1.0).await {
                    self.note(true, &format!("cannot reset node {node}'s clock: {e}"));
                }
            }
            Applied::DiskFull { filler, .. } => {
                let _ = std::fs::remove_file(filler);
            }
            Applied::DiskReadOnly {
                node,
                mount,
                restarted,
            } => {
                let m = mount.display().to_string();
                if *restarted {
                    self.kill(*node).await;
                }
                if let Err(e) = run_cmd("mount", &["-o", "remount,rw", &m]) {
                    self.note(true, &format!("cannot remount {m} read-write: {e}"));
                }
                if *restarted {
                    let _ = self.spawn(*node).await;
                }
            }
        }
    }
}

/// Runs `schedule` against the cluster: each step's fault is applied at its time (from
/// `start`), recorded as `nemesis_start`, healed after its duration and recorded as
/// `nemesis_stop` with the same detail. Returns once the time limit has passed and every
/// fault is healed, or early (with everything healed) when `abort` turns true.
pub async fn execute(
    cluster: &Cluster,
    schedule: &Schedule,
    service: &str,
    history: &HistoryWriter,
    start: tokio::time::Instant,
    mut abort: watch::Receiver<bool>,
) {
    let sleep_until = |at: tokio::time::Instant, abort: &mut watch::Receiver<bool>| {
        let mut abort = abort.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => true,
                _ = abort.wait_for(|a| *a) => false,
            }
        }
    };
    for step in &schedule.steps {
        if !sleep_until(start + Duration::from_millis(step.at_ms), &mut abort).await {
            break;
        }
        let family = step.fault.family().name().to_string();
        let mut detail = step.fault.detail();
        let t_start = history.now_ns();
        let duration = Duration::from_millis(step.duration_ms);
        match cluster.apply(&step.fault, duration, service, history).await {
            Err(reason) => {
                cluster.note(false, &format!("skipped {family} fault: {reason}"));
                history.record(Event::NemesisSkipped {
                    family,
                    detail,
                    reason,
                });
            }
            Ok((applied, resolved)) => {
                detail["resolved"] = resolved;
                // Recorded with the time taken just before applying: the fault may have
                // acted from then on.
                history.record_at(
                    t_start,
                    Event::NemesisStart {
                        family: family.clone(),
                        detail: detail.clone(),
                    },
                );
                cluster.note(
                    false,
                    &format!("{:>8} ms start {detail}", t_start / 1_000_000),
                );
                let end = start + Duration::from_millis(step.at_ms + step.duration_ms);
                match &applied {
                    Applied::AgentCut {
                        leader,
                        heal_latency,
                        ..
                    } => {
                        // Slow the leader's peer links for a second around the heal: the
                        // agent's held renewals arrive while commits take longer.
                        let half = Duration::from_millis(500);
                        sleep_until(end.checked_sub(half).unwrap_or(end), &mut abort).await;
                        cluster.bump_peer_latency(*leader, *heal_latency);
                        sleep_until(end, &mut abort).await;
                        cluster.heal(&applied, history).await;
                        tokio::time::sleep(half).await;
                        cluster.bump_peer_latency(*leader, Duration::ZERO);
                    }
                    Applied::AgentPaused { resume_at, .. } => {
                        // At the computed time even past the step's end (by at most a
                        // renew interval): a pause cut short misses the deadline.
                        sleep_until(*resume_at, &mut abort).await;
                        cluster.heal(&applied, history).await;
                        sleep_until(end, &mut abort).await;
                    }
                    _ => {
                        sleep_until(end, &mut abort).await;
                        cluster.heal(&applied, history).await;
                    }
                }
                let revived = cluster.revive().await;
                for (region, status) in cluster.agents.reap(history).await {
                    cluster.note(
                        true,
                        &format!("{region}'s agent exited by itself ({status})"),
                    );
                }
                let t = history.record(Event::NemesisStop {
                    family,
                    detail: detail.clone(),
                });
                cluster.note(false, &format!("{:>8} ms stop  {detail}", t / 1_000_000));
                if !revived.is_empty() {
                    cluster.note(
                        false,
                        &format!("restarted crashed node(s) {revived:?} at the heal"),
                    );
                }
            }
        }
    }
    sleep_until(
        start + Duration::from_millis(schedule.time_limit_ms),
        &mut abort,
    )
    .await;
    // Belt and braces: nothing stays cut.
    cluster.heal_network();
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

    #[test]
    fn fake_clock_changes_are_continuous_apart_from_the_jump() {
        let c = FakeClock::REAL;
        // At 10 s, run at double speed: only the start slack as a jump.
        let fast = c.change(10.0, 0.0, 2.0);
        assert!((fast.ahead_at(10.0) - START_SLACK_S).abs() < 1e-9);
        // 5 s later the clock is 5 s (plus slack) ahead; healing keeps it there.
        assert!((fast.ahead_at(15.0) - 5.0 - START_SLACK_S).abs() < 1e-9);
        let healed = fast.change(15.0, 0.0, 1.0);
        assert!((healed.ahead_at(15.0) - fast.ahead_at(15.0)).abs() < 1e-9);
        assert!((healed.ahead_at(100.0) - healed.ahead_at(15.0)).abs() < 1e-9);
        // A forward jump of 3 s.
        let jumped = healed.change(20.0, 3.0, 1.0);
        assert!((jumped.ahead_at(20.0) - healed.ahead_at(20.0) - 3.0).abs() < 1e-9);
        // Even if libfaketime started its rate clock up to the slack later than we think,
        // a rate increase never moves the clock back.
        for lag in [0.0, 0.1, START_SLACK_S] {
            let before = healed.ahead_at(30.0 - lag) + (30.0 - lag);
            let after = {
                let f = healed.change(30.0, 0.0, 2.0);
                f.offset_s + f.rate * (30.0 - lag)
            };
            assert!(after >= before - 1e-9, "lag {lag}: {before} -> {after}");
        }
        assert_eq!(FakeClock::REAL.spec(), "+0.000000 x1");
        assert_eq!(
            FakeClock {
                offset_s: -1.5,
                rate: 0.5
            }
            .spec(),
            "-1.500000 x0.5"
        );
    }

    #[test]
    fn clock_faults_never_turn_the_clock_back() {
        let d = Duration::from_secs(10);
        let fwd = ClockFault::Offset {
            node: 2,
            offset_ms: 3_000,
        };
        assert_eq!(realize_clock_fault(&fwd, d), (2, 3.0, 1.0));
        let back = ClockFault::Offset {
            node: 1,
            offset_ms: -4_000,
        };
        let (n, jump, rate) = realize_clock_fault(&back, d);
        assert_eq!((n, jump), (1, 0.0));
        assert!((rate - 0.6).abs() < 1e-9, "{rate}");
        let far_back = ClockFault::Offset {
            node: 1,
            offset_ms: -60_000,
        };
        assert_eq!(realize_clock_fault(&far_back, d).2, 0.1);
        let fast = ClockFault::Rate { node: 3, rate: 2.0 };
        assert_eq!(realize_clock_fault(&fast, d), (3, 0.0, 2.0));
    }

    #[test]
    fn a_region_island_cuts_clients_across_its_border_only() {
        // Three nodes, one per region: region 0's island cuts its clients from nodes 2
        // and 3 and the other regions' clients from node 1, both ways.
        let cuts = region_island(&[1, 2, 3], 0);
        assert!(cuts.contains(&(client_source(0), 2)));
        assert!(cuts.contains(&(2, client_source(0))));
        assert!(cuts.contains(&(1, client_source(1))));
        assert!(!cuts.contains(&(client_source(0), 1)));
        assert!(!cuts.contains(&(client_source(1), 2)));
        assert_eq!(cuts.len(), 2 * (2 + 2));
        // Five nodes: region 0 has nodes 1 and 4.
        let cuts = region_island(&[1, 2, 3, 4, 5], 0);
        assert!(cuts.contains(&(client_source(2), 4)));
        assert!(!cuts.contains(&(client_source(0), 4)));
        assert_eq!(cuts.len(), 2 * (3 + 2 * 2));
    }
}
