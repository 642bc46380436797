//! `baton bench restart`: how long a node with a long history takes to come back.
//!
//! Builds a single-node data directory by driving the store directly, as openraft would:
//! a membership entry, `services` PutService commands, then freeze/unfreeze commands up to
//! `entries` log entries, appended and applied in batches, with a snapshot every
//! `snapshot_every` entries and the log purged behind it (keeping `keep_behind_snapshot`).
//! Then it starts `baton server` on that directory and measures the time from spawning the
//! process to the first linearizable read it answers, and its RSS then; and, in this
//! process, the snapshot's size, build time, and install time on a fresh follower store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, Vote};

use crate::raft::store::{self, Options};
use crate::raft::{NodeInfo, TypeConfig};
use crate::state::limits::MAX_SERVICES;
use crate::state::{Command, Request, ServiceSpec};

/// `baton bench restart`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// Log entries applied before the restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Services created first (a cluster holds at most 1,000).
    #[arg(long, default_value_t = MAX_SERVICES as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SERVICES as u64))]
    pub services: u64,
    /// `[storage] snapshot_every` of the node.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// `[storage] keep_behind_snapshot` of the node.
    #[arg(long, default_value_t = 1_000)]
    pub keep_behind_snapshot: u64,
    /// `[storage] audit_retention` of the node.
    #[arg(long, default_value_t = store::DEFAULT_AUDIT_RETENTION)]
    pub audit_retention: u64,
    /// Build (or reuse, when it already holds a store) the data directory here instead of
    /// a temporary one, and keep it.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Restarts measured on the built directory.
    #[arg(long, default_value_t = 3)]
    pub restarts: u32,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RestartReport {
    /// Log entries applied.
    pub entries: u64,
    /// Services.
    pub services: u64,
    /// Time to build the data directory (not a figure of baton's, of this harness).
    pub build: Duration,
    /// Audit entries the state's head has passed.
    pub audit_total: u64,
    /// Audit entries the node keeps.
    pub audit_kept: u64,
    /// Bytes of the data directory (sled files and archive segments).
    pub dir_bytes: u64,
    /// Time of the last snapshot build (state copy, encode, store, compact, sync).
    pub snapshot_build: Duration,
    /// Bytes of the snapshot as sent to a follower (state and retained audit tail).
    pub snapshot_bytes: u64,
    /// Bytes of the snapshot as stored (state only).
    pub snapshot_stored_bytes: u64,
    /// Time to read the snapshot as sent (`get_current_snapshot`).
    pub snapshot_read: Duration,
    /// Time to install it on a fresh follower store (decode, write trail, store, sync).
    pub snapshot_install: Duration,
    /// Time to open the store in this process (snapshot load), without Raft.
    pub store_open: Duration,
    /// Spawn of `baton server` to its first answered linearizable read, per restart.
    pub ready: Vec<Duration>,
    /// RSS of the server once ready, KiB, per restart.
    pub rss_kib: Vec<u64>,
}

const NODE: u64 = 1;
const REGIONS: [&str; 2] = ["us-east", "eu-west"];
/// Entries appended and applied at once.
const BATCH: u64 = 1_000;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(openraft::CommittedLeaderId::new(1, NODE), index)
}

fn service_name(i: u64) -> String {
    format!("svc-{i:05}")
}

/// The command at log index `index` (2..): the services first, then freeze toggles.
fn command(index: u64, services: u64) -> Command {
    let n = index - 2;
    if n < services {
        let mut spec = ServiceSpec::new(&service_name(n), &REGIONS);
        spec.lease_ttl_ms = 10_000;
        return Command::PutService {
            spec,
            reason: "bench: create".into(),
        };
    }
    let k = n - services;
    Command::SetFrozen {
        service: service_name(k % services),
        frozen: (k / services).is_multiple_of(2),
        reason: format!("bench: maintenance window {k}"),
    }
}

fn entry(index: u64, services: u64, addr: &str) -> Entry<TypeConfig> {
    let payload = if index == 1 {
        let nodes = BTreeMap::from([(
            NODE,
            NodeInfo {
                addr: addr.to_string(),
                region: REGIONS[0].to_string(),
            },
        )]);
        EntryPayload::Membership(Membership::new(vec![[NODE].into()], nodes))
    } else {
        EntryPayload::Normal(Request {
            at_ms: 1_700_000_000_000 + index as i64,
            actor: "bench".into(),
            command: command(index, services),
        })
    };
    Entry {
        log_id: log_id(index),
        payload,
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn opts(a: &RestartArgs) -> Options {
    Options {
        history_limit: crate::state::history::DEFAULT_HISTORY,
        audit_retention: a.audit_retention,
        audit_archive: true,
    }
}

/// Writes the log, state and snapshots of `a.entries` applied entries into `raft_dir`.
async fn build(a: &RestartArgs, raft_dir: &Path, addr: &str) -> Result<Duration, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let (mut log, mut sm, _audit) = store::open_opts(raft_dir, &opts(a)).map_err(|x| e(&x))?;
    log.save_vote(&Vote::new_committed(1, NODE))
        .await
        .map_err(|x| e(&x))?;
    let mut last_snapshot = 0;
    let mut next = 1;
    let mut last_report = Instant::now();
    let started = Instant::now();
    while next <= a.entries {
        let end = (next + BATCH).min(a.entries + 1);
        let batch: Vec<_> = (next..end).map(|i| entry(i, a.services, addr)).collect();
        log.blocking_append(batch.clone())
            .await
            .map_err(|x| e(&x))?;
        log.save_committed(Some(log_id(end - 1)))
            .await
            .map_err(|x| e(&x))?;
        sm.apply(batch).await.map_err(|x| e(&x))?;
        next = end;
        let applied = end - 1;
        if applied - last_snapshot >= a.snapshot_every {
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .map_err(|x| e(&x))?;
            last_snapshot = applied;
            if let Some(upto) = applied.checked_sub(a.keep_behind_snapshot) {
                log.purge(log_id(upto)).await.map_err(|x| e(&x))?;
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  built {applied} of {} entries ({:.0}/s)",
                a.entries,
                applied as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    Ok(started.elapsed())
}

/// Snapshot figures measured in this process on the built store.
async fn measure_snapshot(
    a: &RestartArgs,
    raft_dir: &Path,
    r: &mut RestartReport,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let t = Instant::now();
    let (_log, mut sm, audit) = store::open_opts(raft_dir, &opts(a)).map_err(|x| e(&x))?;
    r.store_open = t.elapsed();
    {
        let view = sm.shared();
        let v = view.read().map_err(|_| "state lock poisoned".to_string())?;
        r.audit_total = v.state.audit_head().next_seq;
    }
    let t = Instant::now();
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .map_err(|x| e(&x))?;
    r.snapshot_build = t.elapsed();
    r.audit_kept = r.audit_total - audit.oldest_seq().map_err(|x| e(&x))?;
    r.snapshot_stored_bytes = built.snapshot.get_ref().len() as u64;
    let t = Instant::now();
    let snap = sm
        .get_current_snapshot()
        .await
        .map_err(|x| e(&x))?
        .ok_or("no snapshot was stored")?;
    r.snapshot_read = t.elapsed();
    r.snapshot_bytes = snap.snapshot.get_ref().len() as u64;
    let follower = tempfile::tempdir().map_err(|x| e(&x))?;
    let (_flog, mut fsm, _faudit) =
        store::open_opts(follower.path(), &opts(a)).map_err(|x| e(&x))?;
    let t = Instant::now();
    fsm.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .map_err(|x| e(&x))?;
    r.snapshot_install = t.elapsed();
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `baton server` on the directory; returns the time to the first linearizable read
/// and the RSS then.
async fn restart_once(
    exe: &Path,
    config: &Path,
    log: &Path,
    addr: &str,
) -> Result<(Duration, u64), String> {
    let service = service_name(0);
    let started = Instant::now();
    let mut child = super::spawn(exe, config, log).map_err(|e| e.to_string())?;
    let pid = child.id();
    let result = async {
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the server exited ({status}); see {}",
                    log.display()
                ));
            }
            if let Ok(ch) = super::channel(addr) {
                let ok = crate::proto::coordinator_client::CoordinatorClient::new(ch)
                    .get_primary(crate::proto::GetPrimaryRequest {
                        service: service.clone(),
                        consistency: crate::proto::Consistency::Linearizable as i32,
                    })
                    .await
                    .is_ok();
                if ok {
                    let ready = started.elapsed();
                    return Ok((ready, rss_kib(pid).unwrap_or(0)));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 120 s; see {}", log.display()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    // SIGTERM, so the node stops cleanly as in a real restart.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let stop = Instant::now();
    while stop.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs the benchmark: build (or reuse) the directory, measure the snapshot, restart
/// `baton server` on it `a.restarts` times.
pub async fn restart(exe: &Path, a: &RestartArgs) -> Result<RestartReport, String> {
    let tmp;
    let root = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_path_buf()
        }
    };
    let data_dir = root.join("data");
    let raft_dir = data_dir.join(crate::node::RAFT_DIR);
    // The membership names the node's address: keep it across reuses of the directory.
    let port_file = root.join("port");
    let port = match std::fs::read_to_string(&port_file) {
        Ok(p) if raft_dir.exists() => p.trim().parse().map_err(|_| "bad port file")?,
        _ => free_port()?,
    };
    let addr = format!("127.0.0.1:{port}");
    let mut r = RestartReport {
        entries: a.entries,
        services: a.services.min(a.entries.saturating_sub(1)),
        ..Default::default()
    };
    if !raft_dir.exists() {
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        std::fs::write(&port_file, port.to_string()).map_err(|e| e.to_string())?;
        eprintln!(
            "building {} with {} entries, {} services",
            data_dir.display(),
            a.entries,
            r.services
        );
        r.build = build(a, &raft_dir, &addr).await?;
    }
    // sled's flusher lets go of the directory a moment after the last handle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    measure_snapshot(a, &raft_dir, &mut r).await?;
    r.dir_bytes = dir_size(&raft_dir);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let config = root.join("node.toml");
    let toml = format!(
        "cluster = \"bench-restart\"\nid = {NODE}\nregion = \"{}\"\nlisten = \"{addr}\"\n\
         data_dir = \"{}\"\n\n[storage]\nsnapshot_every = {}\nkeep_behind_snapshot = {}\n\
         audit_retention = {}\n\n[[peers]]\nid = {NODE}\naddr = \"{addr}\"\nregion = \"{}\"\n",
        REGIONS[0],
        data_dir.display(),
        a.snapshot_every,
        a.keep_behind_snapshot,
        a.audit_retention,
        REGIONS[0],
    );
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let log = root.join("server.log");
    for _ in 0..a.restarts {
        let (ready, rss) = restart_once(exe, &config, &log, &addr).await?;
        r.ready.push(ready);
        r.rss_kib.push(rss);
    }
    Ok(r)
}

fn ms(d: Duration) -> serde_json::Value {
    serde_json::Value::from((d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0)
}

/// The report as `name, value` pairs (durations in ms, sizes in bytes, RSS in KiB).
pub fn fields(r: &RestartReport) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::Value;
    let list = |v: Vec<Value>| Value::Array(v);
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().map_or(Value::Null, ms)
    };
    vec![
        ("entries", Value::from(r.entries)),
        ("services", Value::from(r.services)),
        ("build_ms", ms(r.build)),
        ("audit_entries_total", Value::from(r.audit_total)),
        ("audit_entries_kept", Value::from(r.audit_kept)),
        ("data_dir_bytes", Value::from(r.dir_bytes)),
        ("store_open_ms", ms(r.store_open)),
        ("snapshot_build_ms", ms(r.snapshot_build)),
        (
            "snapshot_stored_bytes",
            Value::from(r.snapshot_stored_bytes),
        ),
        ("snapshot_sent_bytes", Value::from(r.snapshot_bytes)),
        ("snapshot_read_ms", ms(r.snapshot_read)),
        ("snapshot_install_ms", ms(r.snapshot_install)),
        (
            "restart_to_ready_ms",
            list(r.ready.iter().copied().map(ms).collect()),
        ),
        ("restart_to_ready_median_ms", median(&r.ready)),
        (
            "rss_after_ready_kib",
            list(r.rss_kib.iter().copied().map(Value::from).collect()),
        ),
    ]
}
