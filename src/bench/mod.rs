//! Benchmarks: `baton bench leader-kill` and `compare` (start their own clusters of real
//! processes), `restart` (its own node), `switchover`, `watch` and `get-primary` (against a
//! running cluster).
//! They print figures; nothing here asserts a timing.

pub mod compare;
pub mod etcd;
pub mod load;
pub mod restart;
pub mod shape;
pub mod watch_load;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{LeaseHandle, LeaseOptions, LeaseStatus};
use crate::dev::cluster_configs;
use crate::proto::admin_client::AdminClient;
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{ClusterStatusRequest, Consistency, GetPrimaryRequest};

/// Figures of one leader-kill round.
#[derive(Debug, Clone, Copy)]
pub struct KillRound {
    /// kill -9 of the leader to a new leader reported by a survivor.
    pub new_leader: Duration,
    /// kill -9 of the leader to the first successful linearizable read on a survivor.
    pub first_read: Duration,
}

fn spawn(exe: &Path, config: &Path, log: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(exe)
        .arg("server")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

fn channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(200))
            .timeout(Duration::from_millis(500))
            .connect_lazy(),
    )
}

async fn leader_of(addr: &str) -> Option<u64> {
    let mut a = AdminClient::new(channel(addr).ok()?);
    let s = a
        .cluster_status(ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    (s.leader_id != 0).then_some(s.leader_id)
}

async fn read_ok(addr: &str) -> bool {
    let Ok(ch) = channel(addr) else { return false };
    CoordinatorClient::new(ch)
        .get_primary(GetPrimaryRequest {
            service: "payments".into(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .is_ok()
}

/// Starts a three-process cluster on `127.0.0.1:base..` (dev timings: heartbeat 50 ms,
/// election timeout 300-600 ms), then `rounds` times kills the leader with SIGKILL and
/// measures how long until a survivor reports a new leader and serves a linearizable read.
pub async fn leader_kill(
    exe: &Path,
    base_port: u16,
    rounds: usize,
) -> Result<Vec<KillRound>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let configs = cluster_configs(dir.path(), base_port, "bench", false);
    let mut paths = Vec::new();
    for c in &configs {
        let p = dir.path().join(format!("node{}.toml", c.id));
        std::fs::write(&p, toml::to_string(c).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        paths.push(p);
    }
    let logs: Vec<_> = configs
        .iter()
        .map(|c| dir.path().join(format!("node{}.log", c.id)))
        .collect();
    let mut children: Vec<Option<Child>> = Vec::new();
    for (p, l) in paths.iter().zip(&logs) {
        children.push(Some(spawn(exe, p, l).map_err(|e| e.to_string())?));
    }
    let addrs: Vec<String> = configs.iter().map(|c| c.listen.clone()).collect();
    let result = async {
        let mut out = Vec::new();
        for round in 0..rounds {
            // Wait for a stable leader that every node agrees on, and a working read.
            let deadline = Instant::now() + Duration::from_secs(30);
            let leader = loop {
                let mut seen = Vec::new();
                for a in &addrs {
                    seen.push(leader_of(a).await);
                }
                if let Some(Some(l)) = seen.first() {
                    if seen.iter().all(|s| *s == Some(*l))
                        && read_ok(&addrs[(*l - 1) as usize]).await
                    {
                        break *l;
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("round {round}: no stable leader within 30s"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            // Let the followers settle into steady heartbeats before the kill.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idx = (leader - 1) as usize;
            let killed_at = Instant::now();
            if let Some(mut c) = children[idx].take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let survivors: Vec<&String> = addrs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != idx)
                .map(|(_, a)| a)
                .collect();
            let mut new_leader = None;
            let mut first_read = None;
            let deadline = Instant::now() + Duration::from_secs(30);
            while new_leader.is_none() || first_read.is_none() {
                for a in &survivors {
                    if new_leader.is_none() {
                        if let Some(l) = leader_of(a).await {
                            if l != leader {
                                new_leader = Some(killed_at.elapsed());
                            }
                        }
                    }
                    if new_leader.is_some() && first_read.is_none() && read_ok(a).await {
                        first_read = Some(killed_at.elapsed());
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("round {round}: no new leader within 30s"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if let (Some(n), Some(r)) = (new_leader, first_read) {
                out.push(KillRound {
                    new_leader: n,
                    first_read: r,
                });
            }
            children[idx] = Some(spawn(exe, &paths[idx], &logs[idx]).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
    .await;
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}

/// p-th percentile (0-100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Figures of one planned switchover.
#[derive(Debug, Clone, Copy)]
pub struct SwitchRound {
    /// The Failover call: request sent to answer received.
    pub call: Duration,
    /// The write gap as the two regions' agents see it: the old holder stopped holding
    /// (told of the revocation) to the new holder holding (its first renewal answered).
    pub gap: Duration,
}

/// Holds a lease for `region` with an agent that acknowledges demotion at once.
fn bench_agent(client: &crate::client::Client, service: &str, region: &str) -> LeaseHandle {
    client.keep_alive(
        service,
        region,
        &format!("bench-{region}-{}", std::process::id()),
        LeaseOptions {
            auto_ack_demotion: true,
            ..LeaseOptions::default()
        },
    )
}

/// Switches `service` back and forth between `a` and `b`, `rounds` times, with an agent of
/// each region in this process, and measures each switchover's call and write gap. The
/// cluster's own agents of those regions (if any) take part as usual: every live agent of
/// the old holder region must acknowledge.
pub async fn switchover(
    client: &crate::client::Client,
    service: &str,
    a: &str,
    b: &str,
    rounds: usize,
) -> Result<Vec<SwitchRound>, String> {
    let agents = [
        bench_agent(client, service, a),
        bench_agent(client, service, b),
    ];
    let mut out = Vec::new();
    for _ in 0..rounds {
        // Whoever holds now: wait until one of the two agents does (a round may start
        // while the last grant's first renewal is still on its way).
        let deadline = Instant::now() + Duration::from_secs(60);
        let (from, token) = loop {
            if let Some(i) = agents.iter().position(|h| h.is_valid()) {
                if let Some(t) = agents[i].token() {
                    break (i, t);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "neither {a} nor {b} holds {service} (is it defined with both as \
                     candidates, and not frozen?)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let to = 1 - from;
        let mut old = agents[from].status();
        let mut new = agents[to].status();
        let target = [a, b][to];
        let started = Instant::now();
        let call = client.failover(crate::proto::FailoverRequest {
            service: service.to_string(),
            to_region: target.to_string(),
            reason: "baton bench switchover".into(),
            expected_token: token,
            dry_run: false,
        });
        let stopped = async {
            let _ = old
                .wait_for(|s| !matches!(s, LeaseStatus::Holding { .. }))
                .await;
            Instant::now()
        };
        let holding = async {
            let _ = new
                .wait_for(|s| matches!(s, LeaseStatus::Holding { token: t, .. } if *t > token))
                .await;
            Instant::now()
        };
        let (answer, stopped_at, holding_at) = tokio::join!(
            async {
                let r = call.await;
                (r, started.elapsed())
            },
            stopped,
            holding
        );
        let (r, call) = answer;
        r.map_err(|e| format!("switchover to {target}: {e}"))?;
        out.push(SwitchRound {
            call,
            gap: holding_at.saturating_duration_since(stopped_at),
        });
    }
    for h in agents {
        h.close().await;
    }
    Ok(out)
}
