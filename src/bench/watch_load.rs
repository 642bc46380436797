//! The baton runner of [`Shape::Watch`](super::shape::Shape::Watch), mirroring the etcd
//! peer's `etcdload watch`: `watchers` Watch streams of one service over `conns` HTTP/2
//! connections, then `rounds` writes `gap` apart that each produce exactly one event for
//! that service (`Freeze` toggling the service's frozen flag). Latency is from a write's
//! send to each watcher's receipt of its event.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};

use super::shape::Measured;
use crate::api::watch::MAX_WATCHERS_PER_CONNECTION;
use crate::client::{Client, Consistency};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{EventKind, WatchRequest};

/// A watcher that has not received a round's event this long after its write failed.
const MISS_AFTER: Duration = Duration::from_secs(10);

/// Runs the watch shape against the cluster at `endpoints` (`host:port` or
/// `http://host:port`). Connection `i` goes to endpoint `i mod n`; on a loopback endpoint
/// it comes from its own source address 127.0.0.2+i, so baton's per-caller watch limit
/// (which the bench must not raise) holds for every connection.
pub async fn run(
    endpoints: &[String],
    service: &str,
    watchers: usize,
    conns: usize,
    rounds: usize,
    gap: Duration,
) -> Result<Measured, String> {
    run_observed(endpoints, service, watchers, conns, rounds, gap, || {}).await
}

/// [`run`], calling `on_idle` once every watcher has its first response and has been idle
/// for `gap`, just before the first write (to measure the server's memory per watcher).
pub async fn run_observed(
    endpoints: &[String],
    service: &str,
    watchers: usize,
    conns: usize,
    rounds: usize,
    gap: Duration,
    on_idle: impl FnOnce(),
) -> Result<Measured, String> {
    if endpoints.is_empty() || watchers == 0 || conns == 0 {
        return Err("need at least one endpoint, one watcher and one connection".into());
    }
    if watchers.div_ceil(conns) > MAX_WATCHERS_PER_CONNECTION {
        return Err(format!(
            "{watchers} watchers over {conns} connections is more than baton's \
             {MAX_WATCHERS_PER_CONNECTION} per connection: use more connections"
        ));
    }
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        channels.push(connect(&endpoints[i % endpoints.len()], i).await?);
    }
    let receipts = Arc::new(Receipts::default());
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<bool, String>>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let client = CoordinatorClient::new(channels[w % conns].clone());
        tasks.push(tokio::spawn(watcher(
            client,
            service.to_string(),
            rounds,
            ready_tx.clone(),
            receipts.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    // Every watcher has the current state (and says whether the service is frozen).
    let mut frozen = None;
    for _ in 0..watchers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(f))) => frozen = Some(f),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => return Err("watchers did not all open within 60 s".into()),
        }
    }
    let initially = frozen.unwrap_or(false);
    let client = Client::new(endpoints.to_vec()).map_err(|e| e.to_string())?;
    // Finds the leader, so every write goes straight to it.
    client
        .primary(service, Consistency::Linearizable)
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = Vec::with_capacity(rounds);
    let mut errors = 0u64;
    tokio::time::sleep(gap).await;
    on_idle();
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(gap).await;
        }
        // Round r makes the flag differ from the initial one when r is even.
        let freeze = !initially ^ (round % 2 == 1);
        let t0 = Instant::now();
        if client
            .freeze(service, freeze, "baton bench watch")
            .await
            .is_err()
        {
            errors += 1;
        }
        sent.push(t0);
    }
    // Wait for every receipt, or for the last write's deadline.
    let all = watchers * rounds;
    let deadline = Instant::now() + MISS_AFTER;
    while receipts.count.load(Ordering::Relaxed) < all {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = tokio::time::timeout(deadline - now, receipts.more.notified()).await;
    }
    let _ = stop_tx.send(true);
    let mut per_round: Vec<Vec<u64>> = vec![Vec::with_capacity(watchers); rounds];
    let mut failed = 0u64;
    for t in tasks {
        let got = match t.await {
            Ok(Ok(got)) => got,
            Ok(Err(_)) | Err(_) => {
                failed += 1;
                continue;
            }
        };
        let mut missed = false;
        for (r, at) in sent.iter().enumerate() {
            match got.get(r).copied().flatten() {
                Some(recv) if recv.saturating_duration_since(*at) <= MISS_AFTER => {
                    per_round[r].push(recv.saturating_duration_since(*at).as_micros() as u64)
                }
                _ => missed = true,
            }
        }
        failed += u64::from(missed);
    }
    // Leave the service as it was.
    if rounds % 2 == 1
        && client
            .freeze(service, initially, "baton bench watch")
            .await
            .is_err()
    {
        errors += 1;
    }
    Ok(Measured::from_rounds(per_round, errors, failed))
}

/// How many events all watchers have received, and a wake-up for each.
#[derive(Default)]
struct Receipts {
    count: AtomicUsize,
    more: Notify,
}

/// Connection `i` to `endpoint`, from 127.0.0.2+i when the endpoint is on loopback.
async fn connect(endpoint: &str, i: usize) -> Result<Channel, String> {
    let addr = endpoint.trim_start_matches("http://");
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let local = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_loopback() => {
            let n = u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i as u32;
            Some(IpAddr::V4(Ipv4Addr::from(n)))
        }
        _ => None,
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .local_address(local)
        .connect()
        .await
        .map_err(|e| format!("connecting to {endpoint} (connection {i}): {e}"))
}

/// One watcher: reports the service's frozen flag from its first response, then records
/// when each round's event arrived until it has them all or is stopped.
async fn watcher(
    mut client: CoordinatorClient<Channel>,
    service: String,
    rounds: usize,
    ready: mpsc::Sender<Result<bool, String>>,
    receipts: Arc<Receipts>,
    mut stop: watch::Receiver<bool>,
) -> Result<Vec<Option<Instant>>, String> {
    let req = WatchRequest {
        services: vec![service.clone()],
        start_revision: 0,
        progress_interval_ms: 0,
    };
    let mut backoff = Duration::from_millis(10);
    let mut stream = loop {
        match client.watch(req.clone()).await {
            Ok(s) => break s.into_inner(),
            // A node sheds a burst of opens (each is a call in flight until its first
            // headers): back off and retry, as its message asks and as a fleet would.
            Err(e)
                if e.code() == tonic::Code::ResourceExhausted
                    && backoff <= Duration::from_secs(3) =>
            {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                let e = format!("opening a watch: {e}");
                let _ = ready.send(Err(e.clone())).await;
                return Err(e);
            }
        }
    };
    let first = match stream.message().await {
        Ok(Some(first)) => first,
        other => {
            let e = format!("no first response: {other:?}");
            let _ = ready.send(Err(e.clone())).await;
            return Err(e);
        }
    };
    let frozen = first
        .events
        .iter()
        .find(|e| e.service == service)
        .is_some_and(|e| e.frozen);
    let _ = ready.send(Ok(frozen)).await;
    drop(ready);
    let mut got = Vec::with_capacity(rounds);
    while got.len() < rounds {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            m = stream.message() => m,
        };
        let at = Instant::now();
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        };
        for ev in &resp.events {
            if ev.kind == EventKind::FreezeChanged as i32 && ev.service == service {
                got.push(Some(at));
                receipts.count.fetch_add(1, Ordering::Relaxed);
                receipts.more.notify_one();
            }
        }
    }
    Ok(got)
}
