//! `baton-jepsen test`: one whole run — start the cluster, run the workload under the
//! seed's fault schedule, heal, keep the workload going for the liveness bound, take the
//! final reads and states, stop everything, check the history and write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::agents::AgentSpec;
use crate::cluster::{self, Cluster, ClusterConfig, Latency, Timing, REGIONS};
use crate::history::{Clock, Event, HistoryWriter, RunMeta};
use crate::nemesis::{generate, Family, ScheduleConfig};
use crate::report::{check_run, Results};
use crate::workload::{record_node_finals, Workload, WorkloadConfig};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// `--nemesis` as given (recorded in the meta record).
    pub nemesis: String,
    /// Families parsed from it.
    pub families: Vec<Family>,
    /// Length of the fault phase.
    pub time_limit: Duration,
    /// Seed of the schedule, the latencies and the workload.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: u32,
    /// Folder under which the run folder is created.
    pub out: PathBuf,
    /// The `baton` binary.
    pub baton: PathBuf,
    /// Services allow automatic failover (the checkers then accept hidden grants).
    pub automation: bool,
    /// After the last fault heals, the cluster must be live again within this bound; the
    /// workload keeps running at least this long after the heal.
    pub liveness_bound: Duration,
    /// Agents acknowledge revocations through the client library itself.
    pub auto_ack: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct TestOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// The verdicts.
    pub results: Results,
    /// The run was interrupted (Ctrl-C): the history is partial.
    pub interrupted: bool,
    /// Node processes that exited by themselves during the run (see `harness.log`).
    pub node_crashes: usize,
}

/// The service every run uses.
pub const SERVICE: &str = "payments";

/// `YYYYMMDDTHHMMSSZ` for the run folder's name (UTC, from the system clock).
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Storage settings that make snapshots (and install-snapshot to lagging nodes) happen
/// within a few minutes of switchovers.
const STORAGE: &str = "snapshot_every = 300\nkeep_behind_snapshot = 50\n";

/// Runs one test; an `Err` is a harness failure (the run could not be carried out).
pub async fn run(cfg: TestConfig) -> Result<TestOutcome, String> {
    let name = format!(
        "{}-{}-n{}-s{}",
        timestamp(),
        cfg.nemesis.replace(',', "+"),
        cfg.nodes,
        cfg.seed
    );
    let dir = cfg.out.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    if !cfg.baton.is_file() {
        return Err(format!(
            "no baton binary at {} (build it with `cargo build -p baton --bin baton`, or pass --baton PATH)",
            cfg.baton.display()
        ));
    }
    let timing = Timing::wan();
    let bound = cfg.liveness_bound;

    let clock = Clock::new();
    let history = HistoryWriter::create(&dir.join("history.jsonl"), clock)
        .map_err(|e| format!("history: {e}"))?;
    let wants = |f: Family| cfg.families.contains(&f);
    let ccfg = ClusterConfig {
        nodes: cfg.nodes,
        baton: cfg.baton.clone(),
        dir: dir.clone(),
        seed: cfg.seed,
        timing: timing.clone(),
        latency: Latency::default(),
        services: vec![SERVICE.to_string()],
        automation: cfg.automation,
        clock: wants(Family::Clock),
        disk: wants(Family::Disk),
        storage_toml: STORAGE.to_string(),
    };
    let mut regions = std::collections::BTreeMap::new();
    for i in 1..=cfg.nodes as u64 {
        regions.insert(i.to_string(), REGIONS[cluster::region_index(i)].to_string());
    }
    history.record(Event::Meta(RunMeta {
        seed: cfg.seed,
        nemesis: cfg.nemesis.clone(),
        nodes: cfg.nodes,
        time_limit_s: cfg.time_limit.as_secs(),
        lease_ttl_ms: timing.lease_ttl.as_millis() as u64,
        drift: timing.drift,
        liveness_bound_ms: bound.as_millis() as u64,
        automation: cfg.automation,
        regions,
        services: vec![SERVICE.to_string()],
        margin_ms: timing.margin.as_millis() as u64,
    }));
    // Pairs the history clock with CLOCK_REALTIME, which the agents' hooks write.
    let sync_t = history.now_ns();
    let sync_rt = crate::agents::realtime_ns();
    history.record_at(
        sync_t,
        Event::ClockSync {
            realtime_ns: sync_rt,
        },
    );
    if wants(Family::Clock) && cluster::find_libfaketime().is_none() {
        eprintln!("note: libfaketime not found (install Debian's `faketime`): clock faults will be recorded as skipped");
    }
    if wants(Family::Disk) && !cluster::is_root() {
        eprintln!("note: not root: disk faults will be recorded as skipped");
    }

    let mut schedule_cfg = ScheduleConfig::new(cfg.nodes, cfg.families.clone(), cfg.time_limit);
    // `baton-jepsen schedule` does the same, so it shows exactly this run's schedule.
    schedule_cfg.lease_ttl = timing.lease_ttl;
    let schedule = generate(cfg.seed, &schedule_cfg);
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_vec_pretty(&schedule).unwrap_or_default(),
    )
    .map_err(|e| format!("schedule.json: {e}"))?;

    let (abort_tx, abort_rx) = watch::channel(false);
    let ctrl_c = {
        let abort_tx = abort_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: healing, stopping the cluster and checking what was recorded"
                );
                let _ = abort_tx.send(true);
            }
        })
    };

    println!("run folder: {}", dir.display());
    let cluster = Arc::new(
        Cluster::start(ccfg)
            .await
            .map_err(|e| format!("starting the cluster: {e}"))?,
    );
    cluster.note(
        false,
        &format!(
            "baton binary {}; seed {}; nemesis {}; schedule in schedule.json",
            cfg.baton.display(),
            cfg.seed,
            cfg.nemesis
        ),
    );
    let outcome = drive(&cfg, &cluster, &history, &schedule, abort_rx.clone(), bound).await;
    // Stopped here too in case `drive` failed early (a no-op when already stopped).
    cluster.agents.stop(Duration::from_secs(5), &history).await;
    let (hooks, bad) = crate::agents::hook_records(&dir, (sync_t, sync_rt), SERVICE);
    for r in hooks {
        history.record_at(r.t, r.event);
    }
    for b in bad {
        cluster.note(true, &format!("malformed hook line skipped: {b}"));
    }
    let late = cluster.crashed().await;
    for (id, status) in &late {
        cluster.note(true, &format!("node {id} exited by itself ({status})"));
    }
    let node_crashes = cluster.crashes() + late.len();
    cluster.shutdown().await;
    ctrl_c.abort();
    history
        .close()
        .map_err(|e| format!("writing the history: {e}"))?;
    outcome?;

    let interrupted = *abort_rx.borrow();
    let results = check_run(&dir, None).map_err(|e| format!("checking: {e}"))?;
    Ok(TestOutcome {
        dir,
        results,
        interrupted,
        node_crashes,
    })
}

async fn drive(
    cfg: &TestConfig,
    cluster: &Cluster,
    history: &HistoryWriter,
    schedule: &crate::nemesis::Schedule,
    abort: watch::Receiver<bool>,
    bound: Duration,
) -> Result<(), String> {
    cluster.wait_ready(SERVICE, Duration::from_secs(60)).await?;
    let timing = &cluster.config().timing;
    let mut wcfg = WorkloadConfig::new(
        SERVICE,
        cfg.seed,
        timing.lease_ttl,
        timing.drift,
        timing.margin,
    );
    wcfg.auto_ack = cfg.auto_ack;
    let specs: Vec<AgentSpec> = REGIONS
        .iter()
        .enumerate()
        .map(|(ri, r)| AgentSpec {
            region: r.to_string(),
            endpoints: cluster.agent_endpoints(ri),
        })
        .collect();
    cluster
        .agents
        .start(
            &cfg.baton,
            &cluster.config().dir,
            SERVICE,
            &specs,
            timing.drift,
            timing.margin,
            history,
        )
        .await
        .map_err(|e| format!("starting the agent processes: {e}"))?;
    let mut workload = Workload::start(cluster, history, wcfg);
    println!(
        "cluster up ({} nodes, latencies us-east/eu-west {} ms, us-east/ap-south {} ms, eu-west/ap-south {} ms); {} faults over {} s",
        cfg.nodes,
        cluster.latency(0, 1).as_millis(),
        cluster.latency(0, 2).as_millis(),
        cluster.latency(1, 2).as_millis(),
        schedule.steps.len(),
        cfg.time_limit.as_secs()
    );

    let start = tokio::time::Instant::now();
    cluster::execute(cluster, schedule, SERVICE, history, start, abort.clone()).await;
    let aborted = *abort.borrow();
    if !aborted {
        // Quiet period: reads and switchovers go on for the liveness bound after the heal.
        println!(
            "faults healed; quiet period of {} s",
            (bound + Duration::from_secs(2)).as_secs()
        );
        let mut a = abort.clone();
        tokio::select! {
            _ = tokio::time::sleep(bound + Duration::from_secs(2)) => {}
            _ = a.wait_for(|x| *x) => {}
        }
    }
    let revived = cluster.revive().await;
    if !revived.is_empty() {
        cluster.note(
            true,
            &format!("restarted node(s) {revived:?} before the final phase"),
        );
    }
    workload.stop_clients().await;
    if !*abort.borrow() {
        if !workload.final_read(cluster, Duration::from_secs(30)).await {
            cluster.note(true, "no final read succeeded within 30 s");
        }
        if !cluster.wait_caught_up(Duration::from_secs(15)).await {
            cluster.note(
                true,
                "not every node applied the leader's commit index within 15 s",
            );
        }
        let final_rev = record_node_finals(cluster, history).await;
        let behind = workload
            .wait_watchers(final_rev, Duration::from_secs(10))
            .await;
        if !behind.is_empty() {
            cluster.note(
                true,
                &format!("watchers {behind:?} did not reach revision {final_rev} within 10 s"),
            );
        }
    }
    // Real agents stop with the in-harness ones: SIGTERM, so they demote (shutdown).
    tokio::join!(
        workload.stop(),
        cluster.agents.stop(Duration::from_secs(5), history)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_iso_basic_format() {
        let t = timestamp();
        assert_eq!(t.len(), 16, "{t}");
        assert!(t.starts_with("20"), "{t}");
        assert_eq!(&t[8..9], "T");
        assert!(t.ends_with('Z'));
    }
}
