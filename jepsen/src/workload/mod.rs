//! The workload: everything that talks to the cluster under test and records what it saw.
//!
//! - **readers**, one per node (their first endpoint is that node): linearizable and local
//!   `GetPrimary`, and linearizable `ValidateToken` of tokens seen so far;
//! - **a switchover client**: a linearizable read, then a `Failover` with the read's token
//!   as `expected_token` to another region, every 1–2 s;
//! - **agents**, one or two per region, holding the lease with `KeepAlive`; they record
//!   every acknowledged renewal (send time and validity on the history clock), promotion,
//!   revocation, demotion and self-fencing, and write to the fenced resource every ~50 ms
//!   while their lease is valid;
//! - **the fenced resource**, a register owned by the harness that accepts a write only
//!   with a token not lower than the highest it accepted;
//! - **watchers**, one per node, recording every event, progress notification, error and
//!   resume;
//! - the **final phase**: final linearizable reads and every node's local final state.
//!
//! Recording follows the rules of the README ("What the workload must record"): clock read
//! just before sending and just after the answer, `fail` only when the operation certainly
//! had no effect, a new process name after every unknown outcome.
//!
//! # Layout
//!
//! One file per actor — `reader`, `switchover`, `agent`, `fenced` (the resource),
//! `watcher`, `finals` (the final phase) — on top of `recording` (the shared context,
//! process names and error classes every actor records with) and `calls` (the recorded
//! client calls more than one actor makes). This file starts and stops them all.

mod agent;
mod calls;
mod fenced;
mod finals;
mod reader;
mod recording;
mod switchover;
mod watcher;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::client::{Client, ClientOptions, Consistency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{region_index, Cluster, REGIONS};
use crate::history::HistoryWriter;

use agent::{Agent, AgentView};
use calls::get_primary;
use reader::reader;
use recording::{Ctx, Process};
use switchover::switchover;
use watcher::{watcher, Position};

// The actors' public pieces keep their `crate::workload::X` paths.
pub use fenced::FencedResource;
pub use finals::record_node_finals;
pub use recording::{failover_failure, lease_obs, read_failure, watch_kind, Failure};

/// Workload parameters.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The service every client works on.
    pub service: String,
    /// Seed of every random choice of the workload.
    pub seed: u64,
    /// Lease TTL of the service (agents' renewals are judged with it).
    pub lease_ttl: Duration,
    /// Drift fraction the agents assume.
    pub drift: f64,
    /// Safety margin the agents subtract from their validity.
    pub margin: Duration,
    /// Pause between two operations of a reader.
    pub read_pause: (Duration, Duration),
    /// Pause between two switchovers.
    pub switchover_pause: (Duration, Duration),
    /// Period of an agent's writes to the fenced resource.
    pub fence_period: Duration,
    /// Agents acknowledge revocations through the client library at once
    /// (`auto_ack_demotion`), instead of recording `demoted` first and then acknowledging.
    pub auto_ack: bool,
    /// Deadline of a failover call (it may wait out the old holder's TTL).
    pub failover_timeout: Duration,
    /// Deadline of a read.
    pub read_timeout: Duration,
}

impl WorkloadConfig {
    /// Defaults for `service` with the given lease timing.
    pub fn new(
        service: &str,
        seed: u64,
        lease_ttl: Duration,
        drift: f64,
        margin: Duration,
    ) -> Self {
        Self {
            service: service.to_string(),
            seed,
            lease_ttl,
            drift,
            margin,
            read_pause: (Duration::from_millis(20), Duration::from_millis(150)),
            switchover_pause: (Duration::from_millis(1000), Duration::from_millis(2000)),
            fence_period: Duration::from_millis(50),
            auto_ack: false,
            failover_timeout: lease_ttl * 3 + Duration::from_secs(4),
            read_timeout: Duration::from_secs(3),
        }
    }
}

/// The running workload.
pub struct Workload {
    ctx: Arc<Ctx>,
    fence: Arc<FencedResource>,
    stop_clients: watch::Sender<bool>,
    stop_rest: watch::Sender<bool>,
    clients: Vec<JoinHandle<()>>,
    rest: Vec<JoinHandle<()>>,
    watchers: Vec<(String, Position)>,
}

fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            timeout,
            actor: Some("jepsen".into()),
            ..ClientOptions::default()
        },
    )
    .expect("proxy addresses are valid endpoints")
}

impl Workload {
    /// Starts agents, watchers, readers and the switchover client against `cluster`.
    pub fn start(cluster: &Cluster, history: &HistoryWriter, cfg: WorkloadConfig) -> Workload {
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x776f_726b_6c6f_6164);
        let ctx = Arc::new(Ctx {
            history: history.clone(),
            cfg: cfg.clone(),
            tokens: Mutex::new(BTreeSet::new()),
            ttl_ms: cluster.ttl_handle(),
            hold_switchovers: cluster.switchover_hold(),
        });
        let fence = Arc::new(FencedResource::new("r", history.clone()));
        let (stop_clients, stop_c) = watch::channel(false);
        let (stop_rest, stop_r) = watch::channel(false);
        let mut clients = Vec::new();
        let mut rest = Vec::new();
        let mut watchers = Vec::new();

        // Agents: one or two per region, reaching the cluster through their region's links.
        for (ri, region) in REGIONS.iter().enumerate() {
            let first = cluster
                .ids()
                .into_iter()
                .find(|&i| region_index(i) == ri)
                .unwrap_or(1);
            let count = if rng.random_bool(0.5) { 2 } else { 1 };
            for k in 0..count {
                let id = format!("{region}-{}", (b'a' + k as u8) as char);
                let agent = Agent {
                    ctx: ctx.clone(),
                    id,
                    region: region.to_string(),
                    fence: fence.clone(),
                    view: AgentView::default(),
                };
                let c = client(cluster.client_endpoints(ri, first), cfg.read_timeout);
                rest.push(tokio::spawn(agent.run(c, stop_r.clone())));
            }
        }
        // Watchers and readers: one each per node, first endpoint that node.
        for n in cluster.nodes() {
            let ri = region_index(n.id);
            let name = format!("w{}", n.id);
            let pos: Position = Arc::new(AtomicU64::new(0));
            watchers.push((name.clone(), pos.clone()));
            let c = client(cluster.client_endpoints(ri, n.id), cfg.read_timeout);
            rest.push(tokio::spawn(watcher(
                ctx.clone(),
                name,
                n.id,
                c,
                pos,
                stop_r.clone(),
            )));
            let c = client(cluster.client_endpoints(ri, n.id), cfg.read_timeout);
            clients.push(tokio::spawn(reader(
                ctx.clone(),
                format!("r{}", n.id),
                n.id,
                c,
                rng.random(),
                stop_c.clone(),
            )));
        }
        // The switchover client, in the first region.
        let c = client(cluster.client_endpoints(0, 1), cfg.read_timeout);
        let fc = c.with_timeout(cfg.failover_timeout);
        clients.push(tokio::spawn(switchover(
            ctx.clone(),
            1,
            c,
            fc,
            rng.random(),
            stop_c.clone(),
        )));
        Workload {
            ctx,
            fence,
            stop_clients,
            stop_rest,
            clients,
            rest,
            watchers,
        }
    }

    /// Stops the readers and the switchover client (waits for their last operation).
    pub async fn stop_clients(&mut self) {
        let _ = self.stop_clients.send(true);
        for h in self.clients.drain(..) {
            let _ = h.await;
        }
    }

    /// The final linearizable read (`final_read: true`), retried until it succeeds or
    /// `timeout` passes; true when one succeeded.
    pub async fn final_read(&self, cluster: &Cluster, timeout: Duration) -> bool {
        let c = client(cluster.client_endpoints(0, 1), self.ctx.cfg.read_timeout);
        let mut p = Process::new("final");
        let deadline = Instant::now() + timeout;
        loop {
            if get_primary(&self.ctx, &c, &mut p, 1, Consistency::Linearizable, true)
                .await
                .is_some()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Separate attempts are separate operations of separate processes.
            p.after(true);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every watcher reached `revision`; returns the watchers that did not.
    pub async fn wait_watchers(&self, revision: u64, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<String> = self
                .watchers
                .iter()
                .filter(|(_, p)| p.load(Ordering::Relaxed) < revision)
                .map(|(n, _)| n.clone())
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops agents and watchers, then records the fenced resource's final contents.
    pub async fn stop(mut self) {
        let _ = self.stop_clients.send(true);
        let _ = self.stop_rest.send(true);
        for h in self.clients.drain(..).chain(self.rest.drain(..)) {
            let _ = h.await;
        }
        self.fence.finish();
    }
}
