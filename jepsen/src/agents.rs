//! Real `baton agent` processes, one per region, and their hook records.
//!
//! Each agent reaches the nodes through its own pseudo node [`agent_source`]`(r)` in the
//! proxy fabric (links with its region's latencies, own region's node first), so a nemesis
//! can cut one agent from the leader without touching the region's other clients. Its
//! hooks are tiny `sh -c` commands appending `<event> <token> <CLOCK_REALTIME ns>` to
//! `agents/<region>.hooks` in the run folder: `promote` is written when the promote hook
//! starts, `demote` when the demote hook ends (it is the hook's only and last command).
//! Both are a few milliseconds inside the true interval (fork and exec of `date`), so an
//! overlap shorter than that can be missed, never invented.
//!
//! At the end of the run the files are turned into `hook` records on the history clock
//! through the run's `clock_sync` record; `check` re-reads them (see [`ingest`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

use crate::history::{Event, History, HistoryWriter, Record};
use crate::nemesis::NodeId;

/// Pseudo node id of region `REGIONS[r]`'s real agent in the proxy fabric.
pub fn agent_source(region_index: usize) -> NodeId {
    110 + region_index as NodeId
}

/// Agent id of a region's real agent.
pub fn agent_id(region: &str) -> String {
    format!("{region}-proc")
}

/// `CLOCK_REALTIME` in ns since the Unix epoch (0 if the clock is before it).
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Hook timeout of the real agents: short against the 2 s TTL, long for a one-line hook.
pub const HOOK_TIMEOUT: Duration = Duration::from_millis(300);

/// The `sh -c` command of a hook that appends `<event> <token> <ns>` to `file`.
pub fn hook_command(event: &str, file: &Path) -> String {
    // Single-quoted, with any quote in the path (from --out) closed, escaped and reopened.
    let path = file.display().to_string().replace('\'', "'\\''");
    format!("echo \"{event} $BATON_TOKEN $(date +%s%N)\" >> '{path}'")
}

/// One line of a hook file: `(event, token, realtime ns)`; `None` for a malformed or torn
/// line (an agent killed while its hook was writing).
pub fn parse_hook_line(line: &str) -> Option<(String, u64, u64)> {
    let mut it = line.split_whitespace();
    let event = it.next()?;
    if event != "promote" && event != "demote" {
        return None;
    }
    let token = it.next()?.parse().ok()?;
    let ns = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((event.to_string(), token, ns))
}

/// The `hook` records of every hook file under `<dir>/agents/`, mapped onto the history
/// clock with `sync = (t, realtime_ns)`. Returns the records and the malformed lines.
pub fn hook_records(dir: &Path, sync: (u64, u64), service: &str) -> (Vec<Record>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("agents")) else {
        return (out, bad);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hooks"))
        .collect();
    files.sort();
    for f in files {
        let Some(region) = f.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&f) else {
            bad.push(format!("{}: unreadable", f.display()));
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_hook_line(line) {
                Some((event, token, ns)) => {
                    // t = sync.t + (ns − sync.realtime), clamped at the run's start.
                    let t = (sync.0 as i128 + ns as i128 - sync.1 as i128).max(0) as u64;
                    out.push(Record {
                        t,
                        event: Event::Hook {
                            agent: agent_id(&region),
                            region: region.clone(),
                            service: service.to_string(),
                            event,
                            token,
                            realtime_ns: ns,
                        },
                    });
                }
                None => bad.push(format!("{}: {line:?}", f.display())),
            }
        }
    }
    out.sort_by_key(|r| r.t);
    (out, bad)
}

/// The history's first `clock_sync` as `(t, realtime_ns)`.
pub fn clock_sync(h: &History) -> Option<(u64, u64)> {
    h.records.iter().find_map(|r| match &r.event {
        Event::ClockSync { realtime_ns } => Some((r.t, *realtime_ns)),
        _ => None,
    })
}

/// Replaces the history's `hook` records with a fresh read of `<dir>/agents/*.hooks`
/// (when the run has a `clock_sync` and the folder exists), so `check` always judges
/// what the hooks wrote. Returns the malformed lines.
pub fn ingest(dir: &Path, h: &mut History) -> Vec<String> {
    let Some(sync) = clock_sync(h) else {
        return Vec::new();
    };
    if !dir.join("agents").is_dir() {
        return Vec::new();
    }
    let service = h
        .meta()
        .and_then(|m| m.services.first().cloned())
        .unwrap_or_else(|| crate::runner::SERVICE.to_string());
    let (hooks, bad) = hook_records(dir, sync, &service);
    h.records.retain(|r| !matches!(r.event, Event::Hook { .. }));
    h.records.extend(hooks);
    // Stable: records with equal times keep their recorded order.
    h.records.sort_by_key(|r| r.t);
    bad
}

#[derive(Debug)]
struct Proc {
    region: String,
    child: Option<Child>,
    http: SocketAddr,
    paused: bool,
}

/// The real agent processes of a run.
#[derive(Debug, Default)]
pub struct AgentProcs {
    procs: tokio::sync::Mutex<Vec<Proc>>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Region name.
    pub region: String,
    /// Endpoints (proxy links of the agent's source, own region first).
    pub endpoints: Vec<String>,
}

fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn signal(child: &Child, sig: libc::c_int) -> bool {
    match child.id() {
        // SAFETY: plain syscall on a child we own and have not reaped.
        Some(pid) => unsafe { libc::kill(pid as i32, sig) == 0 },
        None => false,
    }
}

impl AgentProcs {
    /// Starts one `baton agent` per spec; hook files and logs go to `<dir>/agents/`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        baton: &Path,
        dir: &Path,
        service: &str,
        specs: &[AgentSpec],
        drift: f64,
        margin: Duration,
        history: &HistoryWriter,
    ) -> io::Result<()> {
        let adir = dir.join("agents");
        std::fs::create_dir_all(&adir)?;
        let mut procs = self.procs.lock().await;
        for s in specs {
            let hooks = adir.join(format!("{}.hooks", s.region));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(adir.join(format!("{}.log", s.region)))?;
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let child = Command::new(baton)
                .arg("--endpoints")
                .arg(s.endpoints.join(","))
                .arg("agent")
                .args(["--service", service, "--region", &s.region])
                .args(["--agent-id", &agent_id(&s.region)])
                .arg("--on-promote")
                .arg(hook_command("promote", &hooks))
                .arg("--on-demote")
                .arg(hook_command("demote", &hooks))
                .arg("--hook-timeout")
                .arg(format!("{}ms", HOOK_TIMEOUT.as_millis()))
                .arg("--drift")
                .arg(drift.to_string())
                .arg("--margin")
                .arg(format!("{}ms", margin.as_millis()))
                .arg("--http-listen")
                .arg(http.to_string())
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?;
            history.record(Event::AgentProcess {
                agent: agent_id(&s.region),
                region: s.region.clone(),
                action: "started".into(),
                pid: child.id().unwrap_or(0),
            });
            procs.push(Proc {
                region: s.region.clone(),
                child: Some(child),
                http,
                paused: false,
            });
        }
        Ok(())
    }

    async fn signal_region(&self, region: &str, sig: libc::c_int) -> Option<u32> {
        let mut procs = self.procs.lock().await;
        let p = procs.iter_mut().find(|p| p.region == region)?;
        let child = p.child.as_ref()?;
        if !signal(child, sig) {
            return None;
        }
        p.paused = sig == libc::SIGSTOP;
        child.id()
    }

    /// SIGSTOP the region's agent; its pid when it was running.
    pub async fn pause(&self, region: &str, history: &HistoryWriter) -> Option<u32> {
        let pid = self.signal_region(region, libc::SIGSTOP).await?;
        history.record(Event::AgentProcess {
            agent: agent_id(region),
            region: region.to_string(),
            action: "paused".into(),
            pid,
        });
        Some(pid)
    }

    /// SIGCONT the region's agent.
    pub async fn resume(&self, region: &str, history: &HistoryWriter) {
        if let Some(pid) = self.signal_region(region, libc::SIGCONT).await {
            history.record(Event::AgentProcess {
                agent: agent_id(region),
                region: region.to_string(),
                action: "resumed".into(),
                pid,
            });
        }
    }

    /// The region agent's published lease validity end (`valid_until_unix_ms`), when it
    /// is primary; `None` otherwise or when its state endpoint does not answer.
    pub async fn valid_until_unix_ms(&self, region: &str) -> Option<u64> {
        let addr = {
            let procs = self.procs.lock().await;
            procs.iter().find(|p| p.region == region)?.http
        };
        let body = http_get(addr, Duration::from_millis(200)).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v.get("valid_until_unix_ms")?.as_u64()
    }

    /// Waits (polling every 5 ms, at most `timeout`) for the region's agent to publish a
    /// later validity than the one it had when called: a renewal was just acknowledged.
    /// Returns the new `valid_until_unix_ms`.
    pub async fn wait_renewal(&self, region: &str, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(v) = self.valid_until_unix_ms(region).await {
                match first {
                    None => first = Some(v),
                    // Published in whole ms: a renewal moves it by the renew interval.
                    Some(f) if v > f + 5 => return Some(v),
                    Some(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Agents that exited by themselves since the last call (reaped and recorded).
    pub async fn reap(&self, history: &HistoryWriter) -> Vec<(String, String)> {
        let mut procs = self.procs.lock().await;
        let mut out = Vec::new();
        for p in procs.iter_mut() {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    history.record(Event::AgentProcess {
                        agent: agent_id(&p.region),
                        region: p.region.clone(),
                        action: "exited".into(),
                        pid: c.id().unwrap_or(0),
                    });
                    out.push((p.region.clone(), status.to_string()));
                    p.child = None;
                }
            }
        }
        out
    }

    /// Stops every agent: SIGCONT (if paused) and SIGTERM, so it demotes with
    /// `BATON_REASON=shutdown`; one still running after `grace` is SIGKILLed (recorded as
    /// `killed`: its role then ends by the lease's validity at the latest).
    pub async fn stop(&self, grace: Duration, history: &HistoryWriter) {
        let mut procs = self.procs.lock().await;
        for p in procs.iter_mut() {
            if let Some(c) = p.child.as_ref() {
                if p.paused {
                    signal(c, libc::SIGCONT);
                    p.paused = false;
                }
                signal(c, libc::SIGTERM);
            }
        }
        for p in procs.iter_mut() {
            let Some(mut c) = p.child.take() else {
                continue;
            };
            let pid = c.id().unwrap_or(0);
            let action = match tokio::time::timeout(grace, c.wait()).await {
                Ok(_) => "stopped",
                Err(_) => {
                    // Recorded before the signal: the role may end any time from here.
                    history.record(Event::AgentProcess {
                        agent: agent_id(&p.region),
                        region: p.region.clone(),
                        action: "killed".into(),
                        pid,
                    });
                    signal(&c, libc::SIGKILL);
                    let _ = c.wait().await;
                    continue;
                }
            };
            history.record(Event::AgentProcess {
                agent: agent_id(&p.region),
                region: p.region.clone(),
                action: action.into(),
                pid,
            });
        }
    }
}

/// `GET /` from the agent's state endpoint; the body (200 or 503 alike: both carry the
/// state), or `None` without an answer within `timeout`.
async fn http_get(addr: SocketAddr, timeout: Duration) -> Option<String> {
    use baton::http_client::{self, Method};
    let addr = addr.to_string();
    let request = http_client::request(Method::GET, &addr, "/", &[], "").ok()?;
    let answer = http_client::fetch(&addr, request, timeout, 64 * 1024, |_, _| false)
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&answer.body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_published_validity_from_a_real_state_endpoint() {
        use baton::agent::{serve_http, AgentState, Role};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(AgentState::replica("s", "us-east", "a"));
        let server = tokio::spawn(serve_http(listener, rx));
        // A replica (503) still publishes its state.
        let body = http_get(addr, Duration::from_secs(2)).await.unwrap();
        assert!(body.contains("\"replica\""), "{body}");
        tx.send_replace(AgentState {
            role: Role::Primary,
            token: Some(3),
            valid_until: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
            ..AgentState::replica("s", "us-east", "a")
        });
        let body = http_get(addr, Duration::from_secs(2)).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["valid_until_unix_ms"].as_u64().is_some(), "{body}");
        server.abort();
    }

    #[test]
    fn hook_commands_quote_the_path() {
        let c = hook_command("demote", Path::new("/tmp/it's/us.hooks"));
        assert_eq!(
            c,
            r#"echo "demote $BATON_TOKEN $(date +%s%N)" >> '/tmp/it'\''s/us.hooks'"#
        );
    }

    #[test]
    fn hook_lines_parse_and_torn_lines_do_not() {
        assert_eq!(
            parse_hook_line("promote 5 1700000000123456789"),
            Some(("promote".into(), 5, 1_700_000_000_123_456_789))
        );
        assert_eq!(parse_hook_line("demote 5"), None);
        assert_eq!(parse_hook_line("demote x 1"), None);
        assert_eq!(parse_hook_line("elect 5 1"), None);
        assert_eq!(parse_hook_line("demote 5 1 2"), None);
    }

    #[test]
    fn hook_files_map_onto_the_history_clock() {
        let dir = std::env::temp_dir().join(format!("jepsen-hooks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("agents")).unwrap();
        std::fs::write(
            dir.join("agents/us-east.hooks"),
            "promote 3 10000000000\ndemote 3 10500000000\npromote 4 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("agents/eu-west.hooks"), "promote 7 10200000000\n").unwrap();
        // realtime 9.0 s was read at history t = 1.0 s.
        let (recs, bad) = hook_records(&dir, (1_000_000_000, 9_000_000_000), "payments");
        assert!(bad.is_empty(), "{bad:?}");
        let ts: Vec<u64> = recs.iter().map(|r| r.t).collect();
        // The line from before the run's start clamps to 0.
        assert_eq!(ts, vec![0, 2_000_000_000, 2_200_000_000, 2_500_000_000]);
        let us = recs
            .iter()
            .filter(|r| matches!(&r.event, Event::Hook { region, .. } if region == "us-east"))
            .count();
        assert_eq!(us, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
