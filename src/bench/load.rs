//! baton's half of `baton bench compare`: a private three-process cluster, and a runner for
//! the read and KeepAlive [`Shape`]s written against the gRPC API alone (as a foreign
//! client would be). The watch shape's runner is [`super::watch_load`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::shape::{Measured, ReadKind, Shape, Target, Timing};
use crate::config::{LimitsConfig, ServiceConfig};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{
    Consistency, FailoverRequest, GetPrimaryRequest, KeepAliveRequest, KeepAliveStatus, LeaseState,
};

/// The service the read and watch shapes use.
pub const READ_SERVICE: &str = "payments";
/// The region every bench service starts held by.
pub const HOLDER: &str = "us-east";
/// baton bounds the agents renewing one service (keeper::MAX_AGENTS_PER_SERVICE); the
/// KeepAlive shapes spread their streams over services of this many agents each.
pub const AGENTS_PER_SERVICE: usize = 250;
/// KeepAlive services the bench cluster declares: room for 10,000 streams.
pub const KEEPALIVE_SERVICES: usize = 40;

/// Name of the i-th KeepAlive service.
pub fn keepalive_service(i: usize) -> String {
    format!("ka-{i}")
}

/// A three-process baton cluster on 127.0.0.1 (dev timings), with `payments` and the
/// KeepAlive services, stopped when dropped.
pub struct BatonCluster {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    addrs: Vec<String>,
}

impl BatonCluster {
    /// Starts the cluster on `base_port..` and waits until it has a leader every node
    /// agrees on and the leader serves a linearizable read.
    ///
    /// The per-caller rate limit is lifted: the load generator is one caller doing the work
    /// of a fleet, and etcd, which it is compared with, has no such limit.
    pub async fn start(exe: &Path, base_port: u16) -> Result<BatonCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut configs = crate::dev::cluster_configs(dir.path(), base_port, "compare", false);
        let mut children = Vec::new();
        for c in &mut configs {
            c.limits = LimitsConfig {
                requests_per_second_per_caller: 10_000_000,
                request_burst_per_caller: 10_000_000,
                ..c.limits
            };
            for i in 0..KEEPALIVE_SERVICES {
                c.services.push(bench_service(&keepalive_service(i)));
            }
            let path = dir.path().join(format!("node{}.toml", c.id));
            std::fs::write(&path, toml::to_string(c).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let log = dir.path().join(format!("node{}.log", c.id));
            children.push(super::spawn(exe, &path, &log).map_err(|e| e.to_string())?);
        }
        let cluster = BatonCluster {
            addrs: configs.iter().map(|c| c.listen.clone()).collect(),
            _dir: dir,
            children,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(leader) = cluster.leader_endpoint().await {
                if super::read_ok(&leader).await {
                    return Ok(cluster);
                }
            }
            if Instant::now() > deadline {
                return Err("the baton cluster had no leader serving reads within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client addresses (host:port) of the three nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// Process ids, for reading each node's RSS.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The leader's client address, when every node names the same leader.
    pub async fn leader_endpoint(&self) -> Result<String, String> {
        let mut seen = Vec::new();
        for a in &self.addrs {
            seen.push(super::leader_of(a).await);
        }
        match seen.first() {
            Some(Some(l)) if seen.iter().all(|s| s == &Some(*l)) => self
                .addrs
                .get((*l as usize).wrapping_sub(1))
                .cloned()
                .ok_or_else(|| format!("leader {l} is not a node of this cluster")),
            _ => Err(format!("the nodes do not agree on a leader: {seen:?}")),
        }
    }
}

impl Drop for BatonCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A service held by [`HOLDER`] from creation, without automation: a KeepAlive shape's
/// renewals are the only thing happening to it. TTL 30 s, as the etcd leases' TTL.
fn bench_service(name: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        lease_ttl: Duration::from_secs(30),
        auto_failover: false,
        failback: "manual".into(),
        health: Default::default(),
        ..crate::dev::sample_service(None)
    }
}

/// `n` channels to `targets` round-robin, connected now. Channel i leaves from
/// 127.0.0.(2 + i / per_ip): baton counts per client address, and a fleet of agents or
/// watchers comes from many addresses, not one.
pub async fn channels(targets: &[String], n: usize, per_ip: usize) -> Result<Vec<Channel>, String> {
    if targets.is_empty() {
        return Err("no endpoints".into());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let host = u8::try_from(2 + i / per_ip.max(1))
            .map_err(|_| format!("{n} connections need more than 250 source addresses"))?;
        let ch = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            targets[i % targets.len()]
        ))
        .map_err(|e| e.to_string())?
        .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", targets[i % targets.len()]))?;
        out.push(ch);
    }
    Ok(out)
}

/// Runs a read or KeepAlive shape against `cluster`.
pub async fn run(
    cluster: &BatonCluster,
    shape: &Shape,
    timing: Timing,
) -> Result<Measured, String> {
    match *shape {
        Shape::Read {
            kind,
            conc,
            conns,
            target,
        } => {
            let targets = match target {
                Target::All => cluster.endpoints(),
                Target::Leader => vec![cluster.leader_endpoint().await?],
            };
            let chans = channels(&targets, conns, conns).await?;
            reads(&chans, kind, conc, timing).await
        }
        Shape::KeepAlive {
            streams,
            conns,
            interval,
        } => {
            // baton's agents renew with the leader (a follower refuses: the renewal must be
            // judged by the node whose clock counts the lease).
            let leader = cluster.leader_endpoint().await?;
            let chans = channels(&[leader], conns, conns).await?;
            keepalives(&chans, streams, interval, timing).await
        }
        Shape::Watch {
            watchers,
            conns,
            rounds,
            gap,
        } => {
            super::watch_load::run(
                &cluster.endpoints(),
                READ_SERVICE,
                watchers,
                conns,
                rounds,
                gap,
            )
            .await
        }
    }
}

/// What one worker measured: latencies of its measured calls, and its errors.
type WorkerResult = (Vec<u64>, u64);

async fn reads(
    chans: &[Channel],
    kind: ReadKind,
    conc: usize,
    timing: Timing,
) -> Result<Measured, String> {
    let consistency = match kind {
        ReadKind::Linearizable => Consistency::Linearizable,
        ReadKind::Local => Consistency::Local,
    } as i32;
    let start = Instant::now() + timing.warmup;
    let end = start + timing.duration;
    let mut tasks = Vec::new();
    for w in 0..conc {
        let mut c = CoordinatorClient::new(chans[w % chans.len()].clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = c
                    .get_primary(GetPrimaryRequest {
                        service: READ_SERVICE.into(),
                        consistency,
                    })
                    .await;
                if t0 >= start {
                    match r {
                        Ok(_) => lat.push(t0.elapsed().as_micros().max(1) as u64),
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors)
        }));
    }
    collect(tasks, timing, 0).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<WorkerResult>>,
    timing: Timing,
    failed: u64,
) -> Result<Measured, String> {
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    Ok(Measured::from_latencies(
        lat,
        timing.duration.as_secs_f64(),
        errors,
        failed,
    ))
}

/// Makes sure [`HOLDER`] holds `service`, switching it there if not.
async fn hold(c: &mut CoordinatorClient<Channel>, service: &str) -> Result<(), String> {
    let lease = c
        .get_primary(GetPrimaryRequest {
            service: service.into(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .map_err(|e| format!("reading {service}: {}", e.message()))?
        .into_inner()
        .lease;
    if lease.is_some_and(|l| l.holder_region == HOLDER && l.state == LeaseState::Held as i32) {
        return Ok(());
    }
    c.failover(FailoverRequest {
        service: service.into(),
        to_region: HOLDER.into(),
        reason: "baton bench compare: the KeepAlive shape renews for this region".into(),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("moving {service} to {HOLDER}: {}", e.message()))?;
    Ok(())
}

/// Opens at most this many KeepAlive streams at once while setting up, below the per-caller
/// cap on calls in flight.
const OPENING: usize = 128;

async fn keepalives(
    chans: &[Channel],
    streams: usize,
    interval: Option<Duration>,
    timing: Timing,
) -> Result<Measured, String> {
    if streams > KEEPALIVE_SERVICES * AGENTS_PER_SERVICE {
        return Err(format!(
            "at most {} KeepAlive streams",
            KEEPALIVE_SERVICES * AGENTS_PER_SERVICE
        ));
    }
    // Between shapes nobody renews, so a lease may have expired: give it back to the
    // region the streams renew for, as an operator would.
    let mut coord = CoordinatorClient::new(chans[0].clone());
    for i in 0..streams.div_ceil(AGENTS_PER_SERVICE) {
        hold(&mut coord, &keepalive_service(i)).await?;
    }
    let failed = Arc::new(AtomicU64::new(0));
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(streams.max(1));
    let mut tasks = Vec::new();
    for s in 0..streams {
        let mut c = CoordinatorClient::new(chans[s % chans.len()].clone());
        let (failed, opening, mut go, ready_tx) = (
            failed.clone(),
            opening.clone(),
            go.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let service = keepalive_service(s / AGENTS_PER_SERVICE);
            let agent_id = format!("bench-{s}");
            let request = move |seq: u64| KeepAliveRequest {
                service: service.clone(),
                region: HOLDER.into(),
                agent_id: agent_id.clone(),
                seq,
                demoted: false,
                token: 0,
            };
            let (tx, rx) = mpsc::channel::<KeepAliveRequest>(4);
            let permit = opening.acquire().await;
            // The first renewal opens the stream; the answer proves it works.
            let _ = tx.send(request(1)).await;
            let opened = c
                .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            let mut inbound = match opened {
                Ok(r) => r.into_inner(),
                Err(_) => {
                    let _ = ready_tx.send(false).await;
                    return (Vec::new(), 0);
                }
            };
            let first = inbound.message().await;
            let ok = matches!(first, Ok(Some(r)) if r.status == KeepAliveStatus::Renewed as i32);
            drop(permit);
            let _ = ready_tx.send(ok).await;
            if !ok {
                return (Vec::new(), 0);
            }
            // Every stream starts its clock together, once all are open.
            if go.wait_for(|g| *g).await.is_err() {
                return (Vec::new(), 0);
            }
            let begin = Instant::now();
            let start = begin + timing.warmup;
            let end = start + timing.duration;
            // Paced streams start staggered over the first interval, as a fleet would.
            let mut next = begin
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64((s as f64 * 0.618_034).fract())
                });
            let (mut lat, mut errors, mut seq) = (Vec::new(), 0u64, 1u64);
            loop {
                tokio::time::sleep_until(next.into()).await;
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                seq += 1;
                if tx.send(request(seq)).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Pushes (seq 0) are not answers to this renewal.
                let answer = loop {
                    match inbound.message().await {
                        Ok(Some(r)) if r.seq == 0 => continue,
                        other => break other,
                    }
                };
                match answer {
                    Ok(Some(r)) if r.status == KeepAliveStatus::Renewed as i32 => {
                        if t0 >= start {
                            lat.push(t0.elapsed().as_micros().max(1) as u64);
                        }
                    }
                    Ok(Some(_)) => {
                        if t0 >= start {
                            errors += 1;
                        }
                    }
                    Ok(None) | Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                next = match interval {
                    Some(i) => next + i,
                    None => Instant::now(),
                };
            }
            (lat, errors)
        }));
    }
    drop(ready_tx);
    let mut open_failed = 0;
    for _ in 0..streams {
        match ready_rx.recv().await {
            Some(true) => {}
            Some(false) | None => open_failed += 1,
        }
    }
    let _ = go_tx.send(true);
    let mut m = collect(tasks, timing, 0).await?;
    m.failed = open_failed + failed.load(Ordering::Relaxed);
    Ok(m)
}
