//! PostgreSQL behind baton (cluster/postgres/): a writer that follows baton's primary and
//! tags every row with the fencing token, the checks of its log against the database, and
//! the rounds of `baton bench postgres` (failover after a region dies, planned switchover),
//! measured as `../shared/peers/patroni/measure.py` measures Patroni.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::client::{Client, Consistency};
use crate::proto;

/// Where each region's PostgreSQL listens: region → (host, port).
pub type Targets = BTreeMap<String, (String, u16)>;

/// Parses `us-east=10.78.0.11:5432,eu-west=...`.
pub fn parse_targets(s: &str) -> Result<Targets, String> {
    let mut out = Targets::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (region, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}': expected REGION=HOST:PORT"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("'{item}': expected REGION=HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{item}': '{port}' is not a port"))?;
        if region.is_empty() || host.is_empty() {
            return Err(format!("'{item}': expected REGION=HOST:PORT"));
        }
        if out
            .insert(region.to_string(), (host.to_string(), port))
            .is_some()
        {
            return Err(format!("region '{region}' is given twice"));
        }
    }
    if out.len() < 2 {
        return Err("give at least two regions: REGION=HOST:PORT,REGION=HOST:PORT".into());
    }
    Ok(out)
}

/// Opens a session to `target` (1 s to connect, statements cut at 1 s).
pub async fn connect(target: &(String, u16)) -> Result<tokio_postgres::Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&target.0)
        .port(target.1)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .options("-c statement_timeout=1000");
    let (client, conn) = tokio::time::timeout(Duration::from_secs(2), cfg.connect(NoTls))
        .await
        .map_err(|_| format!("{}:{}: connect timed out", target.0, target.1))?
        .map_err(|e| format!("{}:{}: {e}", target.0, target.1))?;
    // The connection task ends when the client is dropped or the server goes away.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The writer's sequence number (the row's key with the writer's name).
    pub seq: u64,
    /// The token the row carried.
    pub token: u64,
    /// The region whose server accepted it (stamped by the server).
    pub region: String,
    /// The server's commit-time clock, µs since the Unix epoch.
    pub server_us: i64,
    /// When the writer got the acknowledgement.
    pub at: Instant,
}

/// Who the writer believes is primary: (region, token).
type Primary = Option<(String, u64)>;

/// A writer: one INSERT every `interval` on the server of the region baton names, each
/// row tagged with baton's token; every acknowledged write is kept (and written as a JSON
/// line to the log file, if any).
pub struct Writer {
    /// The writer's name (rows are keyed by it).
    pub name: String,
    /// When it started (log times are relative to it).
    pub epoch: Instant,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    follow: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing (needs a Tokio runtime).
    pub fn start(
        client: Client,
        service: &str,
        targets: Targets,
        interval: Duration,
        log: Option<PathBuf>,
    ) -> Result<Writer, String> {
        let name = format!(
            "writer-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let log = match log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| format!("cannot open the writer log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let epoch = Instant::now();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = watch::channel(false);
        let (primary_tx, primary_rx) = watch::channel::<Primary>(None);
        let primary_tx = Arc::new(primary_tx);
        let follow = tokio::spawn(follow_primary(
            client.clone(),
            service.to_string(),
            primary_tx.clone(),
        ));
        let task = tokio::spawn(write_loop(WriteLoop {
            client,
            service: service.to_string(),
            targets,
            name: name.clone(),
            interval,
            acks: acks.clone(),
            stop: stop_rx,
            primary: primary_rx,
            primary_tx,
            log,
            epoch,
        }));
        Ok(Writer {
            name,
            epoch,
            acks,
            stop,
            task,
            follow,
        })
    }

    /// The acknowledged writes so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The first acknowledged write after `t` accepted by a region other than `not`.
    pub fn first_after(&self, t: Instant, not: Option<&str>) -> Option<Ack> {
        let acks = self.acks.lock().ok()?;
        acks.iter()
            .find(|a| a.at > t && not.is_none_or(|n| a.region != n))
            .cloned()
    }

    /// Stops writing; returns every acknowledged write.
    pub async fn stop(self) -> Vec<Ack> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.follow.abort();
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Follows the service's lease with a watch: every grant names the new primary and token.
async fn follow_primary(client: Client, service: String, tx: Arc<watch::Sender<Primary>>) {
    loop {
        let mut w = client.watch(vec![service.clone()], 0);
        while let Some(item) = w.next().await {
            let Ok(resp) = item else { break };
            for ev in resp.events {
                if let Some(l) = ev.lease {
                    if l.state() == proto::LeaseState::Held && !l.holder_region.is_empty() {
                        tx.send_replace(Some((l.holder_region.clone(), l.token)));
                    }
                }
            }
        }
        // The watcher gave up (it resumes by itself on node failures): start a new one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct WriteLoop {
    client: Client,
    service: String,
    targets: Targets,
    name: String,
    interval: Duration,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: watch::Receiver<bool>,
    primary: watch::Receiver<Primary>,
    primary_tx: Arc<watch::Sender<Primary>>,
    log: Option<std::fs::File>,
    epoch: Instant,
}

const INSERT: &str = "INSERT INTO baton_writes(writer, seq, token) VALUES ($1, $2, $3) \
                      RETURNING region, (extract(epoch FROM at) * 1000000)::bigint";

async fn write_loop(mut w: WriteLoop) {
    let mut conn: Option<(String, tokio_postgres::Client)> = None;
    let mut seq: u64 = 0;
    let mut failing_since: Option<Instant> = None;
    let mut asked = Instant::now() - Duration::from_secs(1);
    loop {
        if *w.stop.borrow() {
            return;
        }
        let tick = Instant::now();
        let current = w.primary.borrow().clone();
        let ok = match current {
            None => false,
            Some((region, token)) => {
                if conn.as_ref().is_some_and(|(r, _)| *r != region) {
                    conn = None;
                }
                if conn.is_none() {
                    if let Some(t) = w.targets.get(&region) {
                        if let Ok(c) = connect(t).await {
                            conn = Some((region.clone(), c));
                        }
                    }
                }
                match &conn {
                    None => false,
                    Some((_, c)) => {
                        seq += 1;
                        let (s, t) = (seq as i64, token as i64);
                        let res = tokio::time::timeout(
                            Duration::from_secs(1),
                            c.query_one(INSERT, &[&w.name, &s, &t]),
                        )
                        .await;
                        match res {
                            Ok(Ok(row)) => {
                                let ack = Ack {
                                    seq,
                                    token,
                                    region: row.try_get(0).unwrap_or_default(),
                                    server_us: row.try_get(1).unwrap_or_default(),
                                    at: Instant::now(),
                                };
                                if let Some(f) = w.log.as_mut() {
                                    let line = json!({
                                        "writer": w.name, "seq": ack.seq, "token": ack.token,
                                        "region": ack.region, "server_us": ack.server_us,
                                        "ack_ms": ack.at.duration_since(w.epoch).as_secs_f64() * 1e3,
                                    });
                                    let _ = writeln!(f, "{line}");
                                }
                                if let Ok(mut a) = w.acks.lock() {
                                    a.push(ack);
                                }
                                true
                            }
                            Ok(Err(e)) => {
                                // A refused write (read-only replica, fence) keeps the
                                // session; a broken one is reopened.
                                if e.is_closed() || e.as_db_error().is_none() {
                                    conn = None;
                                }
                                false
                            }
                            Err(_) => {
                                conn = None;
                                false
                            }
                        }
                    }
                }
            }
        };
        if ok {
            failing_since = None;
        } else {
            let since = *failing_since.get_or_insert(tick);
            // Writes keep failing: ask baton directly too, in case the watch lags.
            if since.elapsed() > Duration::from_millis(200)
                && asked.elapsed() > Duration::from_millis(200)
            {
                asked = Instant::now();
                let quick = w.client.with_timeout(Duration::from_millis(500));
                if let Ok(r) = quick.primary(&w.service, Consistency::Linearizable).await {
                    if let Some(l) = r.lease {
                        if l.state() == proto::LeaseState::Held && !l.holder_region.is_empty() {
                            let newer = w
                                .primary
                                .borrow()
                                .as_ref()
                                .is_none_or(|(_, t)| *t < l.token);
                            if newer {
                                w.primary_tx.send_replace(Some((l.holder_region, l.token)));
                            }
                        }
                    }
                }
            }
        }
        let next = tick + w.interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = w.stop.changed() => {}
        }
    }
}

/// One row of `baton_fence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The token a primary was promoted with.
    pub token: u64,
    /// Its region.
    pub region: String,
    /// When the promote hook recorded it, µs since the Unix epoch (server clock).
    pub promoted_us: i64,
}

/// What the writer's log and the database say together.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Acknowledged writes.
    pub acked: usize,
    /// Acknowledged writes missing on the final primary (their seq).
    pub lost: Vec<u64>,
    /// Writes accepted by a primary while another one was (already) primary, explained.
    pub overlaps: Vec<String>,
    /// The fence table of the final primary.
    pub fence: Vec<Fence>,
    /// The final primary's `synchronous_standby_names` (empty: asynchronous).
    pub synchronous: String,
}

/// Checks `acks` of writer `name` against the server of `primary`: every acknowledged
/// write must be there (none lost); no two primaries may have accepted writes in
/// overlapping intervals, judged from the writer's log (tokens of acknowledged writes never
/// go back, one region per token) and from the database (every row's token was recorded by
/// a promotion of the same region, and committed before the next promotion).
pub async fn check(primary: &(String, u16), name: &str, acks: &[Ack]) -> Result<Checks, String> {
    let c = connect(primary).await?;
    let q = |e: tokio_postgres::Error| format!("reading the final primary: {e}");
    let rows = c
        .query(
            "SELECT seq, token, region, (extract(epoch FROM at) * 1000000)::bigint \
             FROM baton_writes WHERE writer = $1",
            &[&name],
        )
        .await
        .map_err(q)?;
    let fence: Vec<Fence> = c
        .query(
            "SELECT token, region, (extract(epoch FROM promoted_at) * 1000000)::bigint \
             FROM baton_fence ORDER BY token",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| {
            Ok(Fence {
                token: r.try_get::<_, i64>(0)? as u64,
                region: r.try_get(1)?,
                promoted_us: r.try_get(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(q)?;
    let synchronous: String = c
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    let stored: BTreeMap<u64, (u64, String, i64)> = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<_, i64>(0)? as u64,
                (r.try_get::<_, i64>(1)? as u64, r.try_get(2)?, r.try_get(3)?),
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(q)?;
    let lost = acks
        .iter()
        .filter(|a| !stored.contains_key(&a.seq))
        .map(|a| a.seq)
        .collect();
    let mut overlaps = Vec::new();
    // The writer's log, in acknowledgement order.
    let mut highest: Option<&Ack> = None;
    let mut region_of: BTreeMap<u64, &str> = BTreeMap::new();
    for a in acks {
        if let Some(h) = highest {
            if a.token < h.token {
                overlaps.push(format!(
                    "write {} acknowledged by {} with token {} after write {} by {} with token {}",
                    a.seq, a.region, a.token, h.seq, h.region, h.token
                ));
            }
        }
        if highest.is_none_or(|h| a.token > h.token) {
            highest = Some(a);
        }
        match region_of.get(&a.token) {
            Some(r) if *r != a.region => overlaps.push(format!(
                "token {} accepted by both {} and {}",
                a.token, r, a.region
            )),
            _ => {
                region_of.insert(a.token, &a.region);
            }
        }
    }
    // The database: each row against the promotions.
    let by_token: BTreeMap<u64, &Fence> = fence.iter().map(|f| (f.token, f)).collect();
    for (seq, (token, region, at)) in &stored {
        match by_token.get(token) {
            None => overlaps.push(format!(
                "row {seq} carries token {token}, which no promotion recorded"
            )),
            Some(f) if f.region != *region => overlaps.push(format!(
                "row {seq} with token {token} accepted by {region}, but {} was promoted with it",
                f.region
            )),
            Some(_) => {}
        }
        if let Some((_, next)) = by_token.range(token + 1..).next() {
            if next.promoted_us <= *at {
                overlaps.push(format!(
                    "row {seq} (token {token}, {region}) committed after {} was promoted with token {}",
                    next.region, next.token
                ));
            }
        }
    }
    Ok(Checks {
        acked: acks.len(),
        lost,
        overlaps,
        fence,
        synchronous,
    })
}

/// What `baton bench postgres` drives.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The service whose primary is PostgreSQL.
    pub service: String,
    /// Each region's server.
    pub targets: Targets,
    /// The launcher (`cluster/postgres/pg.sh`): called with `kill-region R` and
    /// `revive-region R`.
    pub control: PathBuf,
    /// Failover rounds.
    pub failovers: usize,
    /// Switchover rounds.
    pub switchovers: usize,
    /// Time between two writes.
    pub interval: Duration,
    /// Where the writer logs every acknowledged write (JSON lines).
    pub writer_log: Option<PathBuf>,
    /// How long to wait for the cluster to be healthy again between rounds.
    pub settle: Duration,
}

/// One failover round.
#[derive(Debug, Clone)]
pub struct FailoverRound {
    /// The region killed (it was primary).
    pub killed: String,
    /// Whether baton's Raft leader was in it.
    pub leader_killed: bool,
    /// The region that took over.
    pub new: String,
    /// From the kill to the first acknowledged write on the new primary.
    pub first_write: Duration,
}

/// One switchover round.
#[derive(Debug, Clone)]
pub struct SwitchoverRound {
    /// The old primary.
    pub from: String,
    /// The new one.
    pub to: String,
    /// How long `Failover` took.
    pub call: Duration,
    /// From the call to the first acknowledged write on the new primary.
    pub first_write: Duration,
    /// The longest time without an acknowledged write, from 1 s before the call to 0.5 s
    /// after the first write on the new primary (measure.py's `unavail_s`).
    pub gap: Duration,
}

/// The result of `baton bench postgres`.
#[derive(Debug, Clone)]
pub struct Report {
    /// Failover rounds.
    pub failovers: Vec<FailoverRound>,
    /// Switchover rounds.
    pub switchovers: Vec<SwitchoverRound>,
    /// The writer's log against the final primary.
    pub checks: Checks,
    /// The writer's name.
    pub writer: String,
}

/// A pseudo-random fraction in [0, 1): the phase of a round against the renewal period, as
/// measure.py randomizes it against Patroni's loop (no randomness crate for this).
fn phase() -> f64 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1000) / 1000.0
}

async fn run_control(control: &PathBuf, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(control)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", control.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {} failed: {}",
            control.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The holder once baton has one, its server is primary with both replicas streaming, and
/// the writer has had a write acknowledged there in the last 0.5 s.
async fn wait_healthy(
    client: &Client,
    opts: &BenchOptions,
    writer: &Writer,
) -> Result<String, String> {
    let deadline = Instant::now() + opts.settle;
    let mut last = String::from("no answer yet");
    let replicas = opts.targets.len() as i64 - 1;
    while Instant::now() < deadline {
        match healthy_once(client, opts, writer, replicas).await {
            Ok(holder) => return Ok(holder),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the cluster was not healthy within {:?}: {last}",
        opts.settle
    ))
}

async fn healthy_once(
    client: &Client,
    opts: &BenchOptions,
    writer: &Writer,
    replicas: i64,
) -> Result<String, String> {
    let r = client
        .primary(&opts.service, Consistency::Linearizable)
        .await
        .map_err(|e| e.to_string())?;
    let lease = r.lease.ok_or("no lease")?;
    if lease.state() != proto::LeaseState::Held {
        return Err("the lease is not held".into());
    }
    let holder = lease.holder_region;
    let t = opts
        .targets
        .get(&holder)
        .ok_or_else(|| format!("baton's primary {holder} is not among --pg"))?;
    let c = connect(t).await?;
    // Replicas by name: a pg_basebackup still cloning one also streams WAL.
    let names: Vec<String> = opts.targets.keys().cloned().collect();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE state = 'streaming' AND application_name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| e.to_string())?
        .try_get(0)
        .map_err(|e| e.to_string())?;
    if n < replicas {
        return Err(format!(
            "{n} of {replicas} replicas streaming from {holder}"
        ));
    }
    let recent = Instant::now() - Duration::from_millis(500);
    if writer
        .first_after(recent, None)
        .is_none_or(|a| a.region != holder)
    {
        return Err(format!("no recent write acknowledged by {holder}"));
    }
    Ok(holder)
}

async fn leader_region(client: &Client) -> Option<String> {
    let s = client.status().await.ok()?;
    s.members
        .iter()
        .find(|m| m.id == s.leader_id)
        .map(|m| m.region.clone())
}

/// Waits for the writer's first acknowledged write after `t0` not accepted by `old`.
async fn first_write(writer: &Writer, t0: Instant, old: &str) -> Result<Ack, String> {
    let deadline = t0 + Duration::from_secs(120);
    loop {
        if let Some(a) = writer.first_after(t0, Some(old)) {
            return Ok(a);
        }
        if Instant::now() > deadline {
            return Err("no write was acknowledged by a new primary within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the rounds: failovers (kill the primary's region, wait for the first write on the
/// new primary, revive it), then switchovers (`Failover` to another region; the write
/// gap), then checks the writer's log against the final primary.
pub async fn bench(client: &Client, opts: &BenchOptions) -> Result<Report, String> {
    let writer = Writer::start(
        client.clone(),
        &opts.service,
        opts.targets.clone(),
        opts.interval,
        opts.writer_log.clone(),
    )?;
    let result = rounds(client, opts, &writer).await;
    let name = writer.name.clone();
    let acks = writer.stop().await;
    let (failovers, switchovers) = result?;
    let holder = client
        .primary(&opts.service, Consistency::Linearizable)
        .await
        .map_err(|e| e.to_string())?
        .lease
        .map(|l| l.holder_region)
        .unwrap_or_default();
    let t = opts
        .targets
        .get(&holder)
        .ok_or_else(|| format!("baton's primary '{holder}' is not among --pg"))?;
    let checks = check(t, &name, &acks).await?;
    Ok(Report {
        failovers,
        switchovers,
        checks,
        writer: name,
    })
}

async fn rounds(
    client: &Client,
    opts: &BenchOptions,
    writer: &Writer,
) -> Result<(Vec<FailoverRound>, Vec<SwitchoverRound>), String> {
    let mut failovers = Vec::new();
    for i in 0..opts.failovers {
        let old = wait_healthy(client, opts, writer).await?;
        let leader_killed = leader_region(client).await.as_deref() == Some(old.as_str());
        tokio::time::sleep(Duration::from_secs_f64(1.0 + phase() / 3.0)).await;
        let t0 = Instant::now();
        run_control(&opts.control, &["kill-region", &old]).await?;
        let ack = first_write(writer, t0, &old).await?;
        let round = FailoverRound {
            killed: old.clone(),
            leader_killed,
            new: ack.region.clone(),
            first_write: ack.at.duration_since(t0),
        };
        eprintln!(
            "failover {}: killed {} (leader there: {}), first write on {} after {:.3} s",
            i + 1,
            round.killed,
            round.leader_killed,
            round.new,
            round.first_write.as_secs_f64()
        );
        failovers.push(round);
        run_control(&opts.control, &["revive-region", &old]).await?;
    }
    let mut switchovers = Vec::new();
    for i in 0..opts.switchovers {
        let old = wait_healthy(client, opts, writer).await?;
        let others: Vec<&String> = opts.targets.keys().filter(|r| **r != old).collect();
        let to = others[(phase() * others.len() as f64) as usize % others.len()].clone();
        tokio::time::sleep(Duration::from_secs_f64(1.0 + phase() / 3.0)).await;
        let t0 = Instant::now();
        client
            .with_timeout(Duration::from_secs(30))
            .failover(proto::FailoverRequest {
                service: opts.service.clone(),
                to_region: to.clone(),
                reason: format!("baton bench postgres, switchover {}", i + 1),
                expected_token: 0,
                dry_run: false,
            })
            .await
            .map_err(|e| format!("switchover to {to}: {e}"))?;
        let call = t0.elapsed();
        let ack = first_write(writer, t0, &old).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let from = t0 - Duration::from_secs(1);
        let times: Vec<Instant> = writer
            .acks()
            .iter()
            .map(|a| a.at)
            .filter(|t| *t >= from)
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default();
        let round = SwitchoverRound {
            from: old,
            to: ack.region.clone(),
            call,
            first_write: ack.at.duration_since(t0),
            gap,
        };
        eprintln!(
            "switchover {}: {} -> {}, call {:.3} s, first write {:.3} s, write gap {:.3} s",
            i + 1,
            round.from,
            round.to,
            round.call.as_secs_f64(),
            round.first_write.as_secs_f64(),
            round.gap.as_secs_f64()
        );
        switchovers.push(round);
    }
    Ok((failovers, switchovers))
}

/// `median [min-max]` in seconds, as measure.py prints it.
pub fn spread(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    format!("{median:.3} [{:.3}-{:.3}]", s[0], s[n - 1])
}

/// The median of `v` in seconds (0 when empty).
pub fn median_secs(v: &[Duration]) -> f64 {
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One row of Patroni's results/summary.txt: scenario, label, and its five columns (key
/// expired, key->new, write OK, patronictl, write gap), each `median [min-max]` or absent.
#[derive(Debug, Clone, PartialEq)]
pub struct PatroniRow {
    /// failover or switchover.
    pub scenario: String,
    /// defaults, aggressive, ...
    pub label: String,
    /// ttl/loop_wait/retry_timeout.
    pub settings: String,
    /// The five columns.
    pub columns: Vec<Option<String>>,
}

impl PatroniRow {
    /// The median of column `i`, in seconds.
    pub fn median(&self, i: usize) -> Option<f64> {
        self.columns
            .get(i)?
            .as_ref()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Parses measure.py's summary table.
pub fn parse_patroni_summary(text: &str) -> Vec<PatroniRow> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 5 || !(toks[0] == "failover" || toks[0] == "switchover") {
            continue;
        }
        let mut columns = Vec::new();
        let mut i = 4;
        while i < toks.len() {
            if toks[i] == "-" {
                columns.push(None);
                i += 1;
            } else if i + 1 < toks.len() && toks[i + 1].starts_with('[') {
                columns.push(Some(format!("{} {}", toks[i], toks[i + 1])));
                i += 2;
            } else {
                columns.push(Some(toks[i].to_string()));
                i += 1;
            }
        }
        rows.push(PatroniRow {
            scenario: toks[0].into(),
            label: toks[1].into(),
            settings: toks[2].into(),
            columns,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_are_named() {
        let t = parse_targets("us-east=10.0.0.1:5432, eu-west=127.0.0.1:17142").unwrap();
        assert_eq!(t["eu-west"], ("127.0.0.1".to_string(), 17142));
        assert!(parse_targets("us-east=10.0.0.1")
            .unwrap_err()
            .contains("REGION=HOST:PORT"));
        assert!(parse_targets("a=h:1,a=h:2").unwrap_err().contains("twice"));
        assert!(parse_targets("a=h:x,b=h:2").unwrap_err().contains("port"));
        assert!(parse_targets("a=h:1").unwrap_err().contains("two regions"));
    }

    #[test]
    fn patroni_summary_parses() {
        let text = "scenario    label      ttl/lw/rt  n          key expired             key->new             write OK           patronictl            write gap\n\
failover    aggressive 20/1/3     7  19.89 [19.64-20.09]  19.99 [19.74-20.19]  20.05 [19.80-20.24]                    -                    -\n\
switchover  aggressive 20/1/3     7                    -     2.76 [2.71-2.81]     2.86 [2.81-2.91]     3.44 [3.39-3.47]     2.36 [2.35-2.36]\n";
        let rows = parse_patroni_summary(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].median(2), Some(20.05));
        assert_eq!(rows[0].columns[3], None);
        assert_eq!(rows[1].median(4), Some(2.36));
        assert_eq!(rows[1].columns[0], None);
    }

    #[test]
    fn spread_is_median_min_max() {
        let v = [3, 1, 2].map(Duration::from_secs);
        assert_eq!(spread(&v), "2.000 [1.000-3.000]");
        assert_eq!(spread(&[]), "-");
        assert_eq!(median_secs(&[1, 2].map(Duration::from_secs)), 1.5);
    }
}
