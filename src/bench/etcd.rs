//! The etcd half of `baton bench compare`: a three-member etcd 3.4 cluster on 127.0.0.1
//! (Debian's `etcd-server`, started with the flags of the etcd peer's `cluster.sh`), and a
//! runner for every [`Shape`] that does what the peer's load generator (`etcdload`) does, so
//! its figures compare with the peer's `results/summary.txt` and with baton's runner.
//!
//! etcd is called through a subset of its own protos (`proto/etcd/`), not the etcd-client
//! crate: that one needs an installed protoc and a large dependency tree.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::shape::{Measured, ReadKind, Shape, Target, Timing};

mod pb {
    #![allow(clippy::all)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::maintenance_client::MaintenanceClient;
use pb::etcdserverpb::watch_client::WatchClient;
use pb::etcdserverpb::watch_request::RequestUnion;
use pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RangeRequest, StatusRequest, StatusResponse, WatchCreateRequest, WatchRequest,
};
use pb::mvccpb::event::EventType;

/// The keys and sizes of the peer's load generator.
const READ_KEY: &str = "bench/key";
const READ_VALUE_LEN: usize = 256;
const WATCH_KEY: &str = "watch/key";
const LEASE_TTL: i64 = 30;
/// A watcher that has not seen a round's event this long after the write missed it.
const WATCH_MISS: Duration = Duration::from_secs(10);
/// How long after the measured window the load tasks may take to finish before the run is
/// abandoned as hung (an etcd that stops answering must not hang the bench).
const GRACE: Duration = Duration::from_secs(30);

const ADVICE: &str =
    "install Debian's etcd-server (apt-get install etcd-server) or pass --etcd PATH";

/// The etcd binary: `explicit` if given, else `etcd` on PATH.
pub fn find_etcd(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(format!("etcd not found at {}: {ADVICE}", p.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("etcd"))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("etcd not found: {ADVICE}"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Three etcd processes on 127.0.0.1, killed (SIGKILL) and reaped on drop.
pub struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
    logs: Vec<PathBuf>,
}

impl EtcdCluster {
    /// Starts members m1..m3 with client ports `base_port..base_port+2` and peer ports
    /// `base_port+10..base_port+12`, fresh data directories `dir/m1..m3` and logs
    /// `dir/m1.log..`; returns once all three answer and agree on a leader (30 s at most).
    pub async fn start(etcd: &Path, dir: &Path, base_port: u16) -> Result<EtcdCluster, String> {
        if base_port.checked_add(12).is_none() {
            return Err(format!("base port {base_port}: needs 13 ports below 65536"));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let client_url = |i: u16| format!("http://127.0.0.1:{}", base_port + i);
        let peer_url = |i: u16| format!("http://127.0.0.1:{}", base_port + 10 + i);
        let initial: Vec<String> = (0..3)
            .map(|i| format!("m{}={}", i + 1, peer_url(i)))
            .collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            endpoints: (0..3).map(client_url).collect(),
            logs: Vec::new(),
        };
        for i in 0..3u16 {
            let name = format!("m{}", i + 1);
            let data = dir.join(&name);
            // A data directory left from an earlier start would make this member rejoin
            // that cluster instead of forming a new one.
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            }
            let log_path = dir.join(format!("{name}.log"));
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("{}: {e}", log_path.display()))?;
            let err_log = log.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(etcd)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url(i)])
                .args(["--advertise-client-urls", &client_url(i)])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "etcdpeer"])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .spawn()
                .map_err(|e| format!("{}: {e}", etcd.display()))?;
            cluster.children.push(child);
            cluster.logs.push(log_path);
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Polls every member's Status until all answer with the same leader.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Ok(Some(code)) = c.try_wait() {
                    return Err(format!(
                        "etcd m{} exited ({code}) while starting:\n{}",
                        i + 1,
                        self.log_tails()
                    ));
                }
            }
            let mut leaders = Vec::new();
            for e in &self.endpoints {
                leaders.push(status(e).await.ok().map(|s| s.leader));
            }
            if let Some(Some(l)) = leaders.first() {
                if *l != 0 && leaders.iter().all(|x| *x == Some(*l)) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd: no leader all three members agree on within {within:?}:\n{}",
                    self.log_tails()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every member's log, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in &self.logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("== {}\n", p.display()));
            for l in &lines[lines.len().saturating_sub(5)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Client URLs of m1, m2, m3 (`http://127.0.0.1:PORT`).
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The client URL of the member that reports itself leader.
    pub async fn leader_endpoint(&self) -> Result<String, String> {
        for e in &self.endpoints {
            if let Ok(s) = status(e).await {
                if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
                    return Ok(e.clone());
                }
            }
        }
        Err("etcd: no member reports itself leader".into())
    }

    /// Process ids of m1, m2, m3.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn status(endpoint: &str) -> Result<StatusResponse, String> {
    let ch = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{endpoint}: Status: {e}"))
}

/// One HTTP/2 connection.
async fn connect(endpoint: &str) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))
}

/// `n` connections, connection i to `targets[i % len]` (at least one).
async fn channels(targets: &[String], n: usize) -> Result<Vec<Channel>, String> {
    if targets.is_empty() {
        return Err("no etcd endpoint".into());
    }
    let mut out = Vec::with_capacity(n.max(1));
    for i in 0..n.max(1) {
        out.push(connect(&targets[i % targets.len()]).await?);
    }
    Ok(out)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Awaits every task until `deadline`; past it, aborts those left and fails.
async fn join_by<T>(
    handles: Vec<JoinHandle<T>>,
    deadline: Instant,
    what: &str,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(handles.len());
    let mut rest = handles.into_iter();
    while let Some(mut h) = rest.next() {
        let err = match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(Ok(v)) => {
                out.push(v);
                continue;
            }
            Ok(Err(e)) => format!("{what}: a task failed: {e}"),
            Err(_) => format!("{what}: etcd stopped answering (tasks still waiting)"),
        };
        h.abort();
        rest.for_each(|h| h.abort());
        return Err(err);
    }
    Ok(out)
}

/// Runs one shape against `cluster` as the etcd peer's load generator does.
pub async fn run(cluster: &EtcdCluster, shape: &Shape, timing: Timing) -> Result<Measured, String> {
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
            read(&targets, kind, conc, conns, timing).await
        }
        Shape::KeepAlive {
            streams,
            conns,
            interval,
        } => {
            // To the leader, as baton's agents renew: a follower would only relay.
            let leader = cluster.leader_endpoint().await?;
            keepalive(&[leader], streams, conns, interval, timing).await
        }
        Shape::Watch {
            watchers,
            conns,
            rounds,
            gap,
        } => watch(&cluster.endpoints(), watchers, conns, rounds, gap).await,
    }
}

/// `conc` closed-loop readers of one key. A request counts when it starts after the
/// warm-up and ends within the window.
async fn read(
    targets: &[String],
    kind: ReadKind,
    conc: usize,
    conns: usize,
    timing: Timing,
) -> Result<Measured, String> {
    let chans = channels(targets, conns).await?;
    KvClient::new(chans[0].clone())
        .put(PutRequest {
            key: READ_KEY.into(),
            value: vec![b'v'; READ_VALUE_LEN],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("etcd Put {READ_KEY}: {e}"))?;
    let req = RangeRequest {
        key: READ_KEY.into(),
        serializable: kind == ReadKind::Local,
        ..Default::default()
    };
    let warm_end = Instant::now() + timing.warmup;
    let end = warm_end + timing.duration;
    let mut handles = Vec::with_capacity(conc);
    for i in 0..conc {
        let mut kv = KvClient::new(chans[i % chans.len()].clone());
        let req = req.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = kv.range(req.clone()).await;
                let t1 = Instant::now();
                if t0 >= warm_end && t1 <= end {
                    match r {
                        Ok(_) => lat.push(micros(t1 - t0)),
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for (l, e) in join_by(handles, end + GRACE, "etcd read").await? {
        lat.extend(l);
        errors += e;
    }
    Ok(Measured::from_latencies(
        lat,
        timing.duration.as_secs_f64(),
        errors,
        0,
    ))
}

/// One LeaseKeepAlive stream of one lease: a request, then its reply.
struct KeepAlive {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Opens the stream with a first renewal and waits for its reply, as etcd-client's
    /// `keep_alive` does (etcd sends the response headers with the first reply).
    async fn open(lc: &mut LeaseClient<Channel>, id: i64) -> Result<KeepAlive, String> {
        let (tx, rx) = mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|e| e.to_string())?;
        let mut rx = lc
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        match rx.message().await {
            Ok(Some(r)) if r.ttl > 0 => Ok(KeepAlive { id, tx, rx }),
            Ok(Some(_)) => Err(format!("lease {id:x} not found")),
            Ok(None) => Err("keepalive stream closed".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One renewal: the TTL etcd answered (<= 0: the lease is gone).
    async fn renew(&mut self) -> Result<i64, String> {
        self.tx
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|e| e.to_string())?;
        match self.rx.message().await {
            Ok(Some(r)) => Ok(r.ttl),
            Ok(None) => Err("keepalive stream closed".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Default)]
struct StreamOut {
    lat: Vec<u64>,
    errors: u64,
    failed: bool,
}

/// One stream's loop: closed (`interval` None) or one renewal per `interval`, the first
/// `stagger` after the stream opened. On an error it reopens after 50 ms, as the peer's
/// generator does.
async fn keepalive_stream(
    mut lc: LeaseClient<Channel>,
    id: i64,
    interval: Option<Duration>,
    stagger: Duration,
    warm_end: Instant,
    end: Instant,
) -> StreamOut {
    let mut out = StreamOut::default();
    let mut ka = match KeepAlive::open(&mut lc, id).await {
        Ok(ka) => ka,
        Err(_) => {
            out.errors += 1;
            out.failed = true;
            return out;
        }
    };
    let mut next = Instant::now() + stagger;
    loop {
        if let Some(iv) = interval {
            tokio::time::sleep_until(next).await;
            next += iv;
        }
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let r = ka.renew().await;
        let t1 = Instant::now();
        let counted = t0 >= warm_end && t1 <= end;
        match r {
            Ok(ttl) => {
                if ttl <= 0 {
                    out.failed = true;
                }
                if counted {
                    out.lat.push(micros(t1 - t0));
                }
            }
            Err(_) => {
                out.failed = true;
                if counted {
                    out.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Ok(k) = KeepAlive::open(&mut lc, id).await {
                    ka = k;
                }
            }
        }
    }
    out
}

/// `streams` leases (TTL 30 s), one KeepAlive stream each over `conns` connections to all
/// members. Leases are granted before and revoked after, untimed.
async fn keepalive(
    endpoints: &[String],
    streams: usize,
    conns: usize,
    interval: Option<Duration>,
    timing: Timing,
) -> Result<Measured, String> {
    let chans = channels(endpoints, conns).await?;
    let ids = grant_all(&chans, streams).await?;
    let interval = interval.filter(|d| !d.is_zero());
    // The peer's generator: warm-up plus 200 ms, for the streams to open.
    let warm_end = Instant::now() + timing.warmup + Duration::from_millis(200);
    let end = warm_end + timing.duration;
    let mut handles = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().copied().enumerate() {
        // The peer's stagger: stream i starts (7 i mod interval) ms after opening.
        let stagger = interval.map_or(Duration::ZERO, |iv| {
            let ms = u64::try_from(iv.as_millis()).unwrap_or(u64::MAX).max(1);
            Duration::from_millis((i as u64).wrapping_mul(7) % ms)
        });
        let lc = LeaseClient::new(chans[i % chans.len()].clone());
        handles.push(tokio::spawn(keepalive_stream(
            lc, id, interval, stagger, warm_end, end,
        )));
    }
    let joined = join_by(handles, end + GRACE, "etcd keepalive").await;
    revoke_all(&chans, ids).await;
    let mut lat = Vec::new();
    let (mut errors, mut failed) = (0, 0);
    for s in joined? {
        lat.extend(s.lat);
        errors += s.errors;
        failed += u64::from(s.failed);
    }
    Ok(Measured::from_latencies(
        lat,
        timing.duration.as_secs_f64(),
        errors,
        failed,
    ))
}

/// Grants `n` leases over 16 workers, as the peer's generator does.
async fn grant_all(chans: &[Channel], n: usize) -> Result<Vec<i64>, String> {
    const WORKERS: usize = 16;
    let per = n.div_ceil(WORKERS);
    let mut handles = Vec::with_capacity(WORKERS);
    for w in 0..WORKERS {
        let mut lc = LeaseClient::new(chans[w % chans.len()].clone());
        let cnt = per.min(n.saturating_sub(w * per));
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(cnt);
            for _ in 0..cnt {
                let r = lc
                    .lease_grant(LeaseGrantRequest {
                        ttl: LEASE_TTL,
                        id: 0,
                    })
                    .await
                    .map(tonic::Response::into_inner);
                match r {
                    Ok(r) if r.error.is_empty() => ids.push(r.id),
                    Ok(r) => return (ids, Some(format!("etcd LeaseGrant: {}", r.error))),
                    Err(e) => return (ids, Some(format!("etcd LeaseGrant: {e}"))),
                }
            }
            (ids, None)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = Vec::with_capacity(n);
    let mut first_err = None;
    for (got, err) in join_by(handles, deadline, "etcd LeaseGrant").await? {
        ids.extend(got);
        first_err = first_err.or(err);
    }
    if let Some(e) = first_err {
        revoke_all(chans, ids).await;
        return Err(e);
    }
    Ok(ids)
}

/// Revokes leases over 32 workers, errors ignored: cleanup, so the next shape does not
/// run while thousands of leases expire.
async fn revoke_all(chans: &[Channel], ids: Vec<i64>) {
    let mut handles = Vec::new();
    for (i, chunk) in ids.chunks(ids.len() / 32 + 1).enumerate() {
        let mut lc = LeaseClient::new(chans[i % chans.len()].clone());
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            for id in chunk {
                let _ = lc.lease_revoke(LeaseRevokeRequest { id }).await;
            }
        }));
    }
    let _ = join_by(
        handles,
        Instant::now() + Duration::from_secs(60),
        "etcd revoke",
    )
    .await;
}

/// What one watcher saw: (round, time of receipt) for each event.
#[derive(Default)]
struct WatcherOut {
    got: Vec<(usize, Instant)>,
    error: bool,
}

/// One Watch stream with one watch on [`WATCH_KEY`]: signals `created` (true, or false if
/// it could not be created), then records each PUT event's round (its value) until it has
/// the last one.
async fn watcher(
    mut wc: WatchClient<Channel>,
    rounds: usize,
    created: &mpsc::UnboundedSender<bool>,
    out: &mut WatcherOut,
) {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: WATCH_KEY.into(),
            ..Default::default()
        })),
    };
    // The request side stays open while this watcher runs (etcd ends the watch stream when
    // it closes) and closes when it returns and drops `_open`: a stream merely dropped on
    // the receiving side stays open in etcd, and the next run would share the member with
    // this run's leftover watchers.
    let (_open, rx) = mpsc::channel::<WatchRequest>(1);
    let requests = futures::StreamExt::chain(
        futures::stream::once(async move { create }),
        tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    let mut inbound = match wc.watch(requests).await {
        Ok(r) => r.into_inner(),
        Err(_) => {
            out.error = true;
            let _ = created.send(false);
            return;
        }
    };
    let mut is_created = false;
    loop {
        let msg = inbound.message().await;
        let at = Instant::now();
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => break,
        };
        if resp.created && !is_created {
            is_created = true;
            let _ = created.send(true);
        }
        if resp.canceled {
            break;
        }
        for ev in resp.events {
            if ev.r#type != EventType::Put as i32 {
                continue;
            }
            let round = ev
                .kv
                .and_then(|kv| String::from_utf8(kv.value).ok())
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(r) = round {
                out.got.push((r, at));
                if r + 1 == rounds {
                    return;
                }
            }
        }
    }
    // The stream ended or was canceled before the last round.
    out.error = true;
    if !is_created {
        let _ = created.send(false);
    }
}

/// `watchers` watches of one key (one Watch stream each) over `conns` connections to all
/// members; once all are created, `rounds` writes `gap` apart (the first after one gap).
/// Latency is from a write's send to each watcher's receipt; percentiles are medians over
/// rounds of each round's.
async fn watch(
    endpoints: &[String],
    watchers: usize,
    conns: usize,
    rounds: usize,
    gap: Duration,
) -> Result<Measured, String> {
    let chans = channels(endpoints, conns).await?;
    // The writer has connections of its own, as the peer's generator (a fresh client).
    let writers = channels(endpoints, endpoints.len()).await?;
    let (created_tx, mut created_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    // Dropped (on return or early error) it stops every watcher still waiting.
    let (stop_tx, stop_rx) = signal::channel(());
    for s in 0..watchers {
        let wc = WatchClient::new(chans[s % chans.len()].clone());
        let (created_tx, done_tx, mut stop_rx) =
            (created_tx.clone(), done_tx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut out = WatcherOut::default();
            tokio::select! {
                _ = stop_rx.changed() => {}
                _ = watcher(wc, rounds, &created_tx, &mut out) => {}
            }
            let _ = done_tx.send(out);
        });
    }
    drop((created_tx, done_tx, stop_rx));
    // Every watch created (or failed) before the first write; one that is not by then will
    // miss events and count as failed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while answered < watchers {
        match tokio::time::timeout_at(deadline, created_rx.recv()).await {
            Ok(Some(_)) => answered += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let mut sent = Vec::with_capacity(rounds);
    for round in 0..rounds {
        tokio::time::sleep(gap).await;
        let mut kv = KvClient::new(writers[round % writers.len()].clone());
        sent.push(Instant::now());
        kv.put(PutRequest {
            key: WATCH_KEY.into(),
            value: round.to_string().into_bytes(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("etcd Put {WATCH_KEY}: {e}"))?;
    }
    // Watchers finish on the last round's event; those still waiting 10 s after the last
    // write are stopped and give what they have.
    let mut outs = Vec::with_capacity(watchers);
    let deadline = sent
        .last()
        .map_or_else(Instant::now, |&last| last + WATCH_MISS);
    while outs.len() < watchers {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(o)) => outs.push(o),
            Ok(None) | Err(_) => break,
        }
    }
    drop(stop_tx);
    while outs.len() < watchers {
        match tokio::time::timeout(GRACE, done_rx.recv()).await {
            Ok(Some(o)) => outs.push(o),
            Ok(None) => break,
            Err(_) => return Err("etcd watch: watchers did not stop".into()),
        }
    }
    let mut per_round: Vec<Vec<u64>> = vec![Vec::with_capacity(watchers); rounds];
    let mut errors = 0;
    // Watchers that never reported (a panicked task) missed every round.
    let mut failed = (watchers - outs.len()) as u64;
    for o in outs {
        let mut seen = vec![false; rounds];
        for (r, at) in o.got {
            let Some(&t0) = sent.get(r) else { continue };
            let lat = at.saturating_duration_since(t0);
            if !seen[r] && lat <= WATCH_MISS {
                seen[r] = true;
                per_round[r].push(micros(lat));
            }
        }
        errors += u64::from(o.error);
        failed += u64::from(seen.contains(&false));
    }
    Ok(Measured::from_rounds(per_round, errors, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base port whose 13 ports are free now, below the ephemeral range (where outgoing
    /// connections would take them).
    fn free_base() -> u16 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let mut x = (u64::from(std::process::id()) << 32) ^ now.as_nanos() as u64 | 1;
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = 20_000 + (x % 12_000) as u16;
            let free = (0..3)
                .chain(10..13)
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
            if free {
                return base;
            }
        }
        panic!("no free ports for an etcd cluster");
    }

    /// The watch streams member `addr` has open, from its metrics.
    async fn watch_streams(addr: &str) -> Option<u64> {
        let req =
            crate::http_client::request(hyper::Method::GET, addr, "/metrics", &[], "").ok()?;
        let answer =
            crate::http_client::fetch(addr, req, Duration::from_secs(5), 4 << 20, |_, _| false)
                .await
                .ok()?;
        String::from_utf8_lossy(&answer.body)
            .lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watch_stream_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_shape_kind_runs_against_a_real_etcd_cluster() {
        let etcd = match find_etcd(None) {
            Ok(p) => p,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true: {e}");
                }
                eprintln!("SKIP: etcd not installed ({e})");
                return;
            }
        };
        assert!(find_etcd(Some(Path::new("/nonexistent/etcd")))
            .unwrap_err()
            .contains("apt-get install etcd-server"));
        let dir = tempfile::tempdir().unwrap();
        let cluster = EtcdCluster::start(&etcd, dir.path(), free_base())
            .await
            .unwrap();
        let pids = cluster.pids();
        assert_eq!(pids.len(), 3);
        let leader = cluster.leader_endpoint().await.unwrap();
        assert!(cluster.endpoints().contains(&leader));

        let short = Timing {
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        };
        for (kind, target) in [
            (ReadKind::Linearizable, Target::All),
            (ReadKind::Local, Target::Leader),
        ] {
            let shape = Shape::Read {
                kind,
                conc: 4,
                conns: 3,
                target,
            };
            let m = run(&cluster, &shape, short).await.unwrap();
            eprintln!("{shape:?}: {m:?}");
            assert!(
                m.ops > 0 && m.errors == 0 && m.failed == 0,
                "{shape:?}: {m:?}"
            );
            assert!(m.p99_us > 0 && m.p50_us <= m.p99_us, "{m:?}");
        }

        let shape = Shape::KeepAlive {
            streams: 10,
            conns: 3,
            interval: Some(Duration::from_millis(100)),
        };
        let timing = Timing {
            warmup: Duration::from_millis(100),
            duration: Duration::from_secs(1),
        };
        let m = run(&cluster, &shape, timing).await.unwrap();
        eprintln!("{shape:?}: {m:?}");
        // 10 streams at 10 Hz for 1 s: about 100 renewals.
        assert!(m.ops >= 50 && m.errors == 0 && m.failed == 0, "{m:?}");

        let shape = Shape::Watch {
            watchers: 20,
            conns: 3,
            rounds: 2,
            gap: Duration::from_millis(100),
        };
        let m = run(&cluster, &shape, short).await.unwrap();
        eprintln!("{shape:?}: {m:?}");
        assert_eq!((m.ops, m.errors, m.failed), (40, 0, 0), "{m:?}");
        assert!(m.p99_us > 0, "{m:?}");
        // A run leaves no watch stream behind: leftovers made every later run slower (the
        // 1k shape's p99 went 9 -> 15 -> 20 ms over three runs before the fix).
        for ep in cluster.endpoints() {
            let addr = ep.trim_start_matches("http://").to_string();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let open = watch_streams(&addr).await;
                if open == Some(0) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{addr} still has {open:?} watch streams open after the run"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        drop(cluster);
        for p in pids {
            assert!(!Path::new(&format!("/proc/{p}")).exists(), "etcd {p} left");
        }
    }
}
