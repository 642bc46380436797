//! The nemesis executor: applies each fault of a [`Schedule`] to the cluster at its time,
//! records it, and heals it after its duration.

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::*;
use crate::agents::agent_source;
use crate::history::{Event, HistoryWriter};
use crate::nemesis::{
    partition_cuts, AgentFault, AgentTarget, ClockFault, Cut, DiskFault, Fault, KillTarget,
    PartitionKind, PauseTarget, Schedule,
};
use crate::proxy::Mode;

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
