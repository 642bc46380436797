//! The node processes: starting the cluster (fabric, configs, tmpfs, libfaketime),
//! spawning, killing, pausing and resuming nodes, and reading their state.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::client::{Client, ClientOptions, Consistency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::process::Command;

use super::*;
use crate::agents::agent_source;
use crate::history::{Event, HistoryWriter};
use crate::nemesis::{AgentTarget, Cut};
use crate::proxy::{LinkState, Mode};

fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
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
    pub(super) fn bump_peer_latency(&self, node: NodeId, extra: Duration) {
        for j in self.ids().into_iter().filter(|&j| j != node) {
            let (lat, jitter) = self.base_latency(node, j);
            self.fabric.set_latency(node, j, lat + extra, jitter);
            self.fabric.set_latency(j, node, lat + extra, jitter);
        }
    }

    /// Changes `service`'s lease TTL with Admin `PutService` (the rest of the spec as the
    /// cluster has it); records `ttl_changed` with the TTL the answer's lease carries.
    pub(super) async fn set_service_ttl(
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
    pub(super) async fn agent_region(
        &self,
        target: &AgentTarget,
        service: &str,
    ) -> Result<String, String> {
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
    pub(super) fn cut(&self, cuts: &BTreeSet<Cut>) {
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
