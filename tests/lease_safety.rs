//! The split-brain windows of issue 7, each tried against real processes. Every assertion
//! is a lower bound on how long the old holder is protected (time only makes them easier
//! to meet on a slow machine) or an answer that must come at all.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::proto::coordinator_client::CoordinatorClient;
use baton::proto::{self, KeepAliveRequest, KeepAliveResponse, KeepAliveStatus};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::support::{baton_bin, client, eventually, lease, service_toml, switchover, TestCluster};

/// A KeepAlive stream driven by hand, as a foreign client would.
struct RawAgent {
    co: CoordinatorClient<Channel>,
    tx: mpsc::Sender<KeepAliveRequest>,
    rx: Streaming<KeepAliveResponse>,
    region: String,
    agent_id: String,
    seq: u64,
}

impl RawAgent {
    async fn open(c: &TestCluster, node: usize, region: &str, agent_id: &str) -> RawAgent {
        let co = c.coordinator(node).await;
        let (tx, rx) = Self::stream(co.clone(), region, agent_id, 1).await;
        RawAgent {
            co,
            tx,
            rx,
            region: region.into(),
            agent_id: agent_id.into(),
            seq: 1,
        }
    }

    async fn stream(
        mut co: CoordinatorClient<Channel>,
        region: &str,
        agent_id: &str,
        seq: u64,
    ) -> (mpsc::Sender<KeepAliveRequest>, Streaming<KeepAliveResponse>) {
        let (tx, rx) = mpsc::channel(16);
        // The server waits for the first message before it answers with headers.
        tx.send(KeepAliveRequest {
            service: "payments".into(),
            region: region.into(),
            agent_id: agent_id.into(),
            seq,
            demoted: false,
            token: 0,
        })
        .await
        .expect("queue the first message");
        let rx = co
            .keep_alive(ReceiverStream::new(rx))
            .await
            .expect("keepalive stream")
            .into_inner();
        (tx, rx)
    }

    /// A new stream, as a real agent opens after its stream failed (e.g. a confirmation
    /// round that timed out on a loaded machine). Consumes the first message's answer.
    async fn reopen(&mut self) {
        self.seq += 1;
        let (tx, rx) = Self::stream(self.co.clone(), &self.region, &self.agent_id, self.seq).await;
        self.tx = tx;
        self.rx = rx;
        let _ = self.answer().await;
    }

    async fn send(&mut self, demoted: bool, token: u64) {
        self.seq += 1;
        let _ = self
            .tx
            .send(KeepAliveRequest {
                service: "payments".into(),
                region: self.region.clone(),
                agent_id: self.agent_id.clone(),
                seq: self.seq,
                demoted,
                token,
            })
            .await;
    }

    async fn answer(&mut self) -> Result<KeepAliveResponse, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
            Ok(Ok(Some(a))) => Ok(a),
            Ok(Ok(None)) => Err(tonic::Status::unavailable("stream closed")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no keepalive answer within 20 s"),
        }
    }

    /// Renews (on a new stream if this one failed); returns the answer's status, its TTL and
    /// the send time of the renewal that was answered.
    async fn renew(&mut self, token: u64) -> (KeepAliveStatus, u64, Instant) {
        for _ in 0..10 {
            let sent = Instant::now();
            self.send(false, token).await;
            match self.answer().await {
                Ok(a) => {
                    let ttl = a.lease.as_ref().map_or(0, |l| l.ttl_ms);
                    return (a.status(), ttl, sent);
                }
                Err(_) => self.reopen().await,
            }
        }
        panic!("ten keepalive streams failed in a row");
    }
}

/// The holder's promise after a renewal sent at `sent` under `ttl_ms`, drift 5%, margin 50 ms.
fn valid_until(sent: Instant, ttl_ms: u64) -> Instant {
    sent + Duration::from_millis(ttl_ms).mul_f64(0.95) - Duration::from_millis(50)
}

/// A new leader counts demotion acks only once it has led for a whole TTL (plus drift and
/// margin): renewals its predecessor accepted may still be valid until then. Tests of what an
/// ack can do start after that point (the agent renewing meanwhile), or any ack would look
/// harmless. Returns the last renewal's (status, ttl, send time).
async fn renew_past_new_leader_wait(
    agent: &mut RawAgent,
    token: u64,
    led_since: Instant,
    ttl: Duration,
) -> (KeepAliveStatus, u64, Instant) {
    let from = led_since + ttl.mul_f64(1.05) + Duration::from_millis(100);
    loop {
        let r = agent.renew(token).await;
        assert_eq!(r.0, KeepAliveStatus::Renewed);
        if Instant::now() >= from {
            return r;
        }
        tokio::time::sleep(ttl / 6).await;
    }
}

/// Starts a switchover to eu-west in the background; resolves to when it returned.
fn switch_in_background(c: &TestCluster, token: u64) -> tokio::task::JoinHandle<Instant> {
    let cl = client(c);
    tokio::spawn(async move {
        let r = cl.failover(switchover("payments", "eu-west", token)).await;
        assert!(r.is_ok(), "switchover failed: {r:?}");
        Instant::now()
    })
}

/// A holder that renewed past the new leader's wait-out, and a switchover to eu-west that
/// has revoked its lease (the holder saw REVOKE). Returns the holder, the switchover's end,
/// and the validity the holder was last promised.
async fn revoked_holder(
    c: &TestCluster,
) -> (RawAgent, tokio::task::JoinHandle<Instant>, u64, Instant) {
    let leader = c.leader(Duration::from_secs(20)).await;
    let led_since = Instant::now();
    let token = lease(&client(c), "payments").await.token;
    let mut holder = RawAgent::open(c, leader, "us-east", "us-agent").await;
    let _ = holder.answer().await; // the first message's answer
    let (status, ttl, sent) =
        renew_past_new_leader_wait(&mut holder, token, led_since, Duration::from_secs(3)).await;
    assert_eq!(status, KeepAliveStatus::Renewed);
    let done = switch_in_background(c, token);
    while holder.renew(token).await.0 != KeepAliveStatus::Revoke {}
    (holder, done, token, valid_until(sent, ttl))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_naming_an_older_token_does_not_fence_the_holder() {
    let c = TestCluster::start(3, &service_toml("payments", "3s")).await;
    let (mut holder, done, token, promised) = revoked_holder(&c).await;
    // Acknowledge an *older* token from the holder's own stream.
    holder.send(true, token - 1).await;
    let _ = holder.answer().await;
    let finished = done.await.unwrap();
    assert!(
        finished >= promised,
        "the switchover completed {:?} before the holder's validity ended: a stale ack fenced it",
        promised - finished
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_on_another_stream_does_not_fence_the_holder() {
    let c = TestCluster::start(3, &service_toml("payments", "3s")).await;
    let (_holder, done, token, promised) = revoked_holder(&c).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut forger = RawAgent::open(&c, leader, "us-east", "us-agent").await;
    if let Ok(first) = forger.answer().await {
        assert_eq!(first.status(), KeepAliveStatus::Revoke);
    }
    // The holder's own id and the current token, from a stream that never held the lease.
    forger.send(true, token).await;
    let _ = forger.answer().await;
    let finished = done.await.unwrap();
    assert!(
        finished >= promised,
        "the switchover completed {:?} before the holder's validity ended: a forged ack fenced it",
        promised - finished
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_held_leases_ttl_does_not_shorten_what_the_holder_was_promised() {
    let c = TestCluster::start(3, &service_toml("payments", "6s")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let token = lease(&cl, "payments").await.token;
    let mut us = RawAgent::open(&c, leader, "us-east", "us-agent").await;
    let _ = us.answer().await;
    let (status, ttl, sent) = us.renew(token).await;
    assert_eq!((status, ttl), (KeepAliveStatus::Renewed, 6000));
    // The operator lowers the TTL to 2 s while the holder is silent (cut off).
    let mut spec = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .spec
        .unwrap();
    spec.lease_ttl_ms = 2000;
    cl.put_service(spec, "shorter TTL").await.unwrap();
    drop(us);
    let gone = eventually(Duration::from_secs(30), "the lease to expire", || async {
        let l = cl
            .primary("payments", proto::Consistency::Linearizable)
            .await
            .ok()?
            .lease?;
        (l.token != token || l.state != proto::LeaseState::Held as i32).then(Instant::now)
    })
    .await;
    assert!(
        gone >= valid_until(sent, 6000),
        "the lease ended {:?} before the holder's 6 s validity",
        valid_until(sent, 6000) - gone
    );
    // The new TTL applies from the next grant.
    let spec = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.lease_ttl_ms, 2000);
}

fn spawn_agent(c: &TestCluster, region: &str, on_demote: &str, log: &std::path::Path) -> Child {
    Command::new(baton_bin())
        .args(["--endpoints", &c.endpoints().join(","), "agent"])
        .args(["--service", "payments", "--region", region])
        .args(["--agent-id", &format!("agent-{region}")])
        .args([
            "--on-promote",
            &format!("echo promote >> {}", log.display()),
            "--on-demote",
            on_demote,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_demote_hook_is_not_acknowledged_so_the_switchover_waits_out_the_ttl() {
    let c = TestCluster::start(3, &service_toml("payments", "3s")).await;
    c.leader(Duration::from_secs(20)).await;
    let led_since = Instant::now();
    let cl = client(&c);
    let log = c.root.path().join("hooks.log");
    let mut agent = spawn_agent(&c, "us-east", "exit 3", &log);
    let token = lease(&cl, "payments").await.token;
    eventually(Duration::from_secs(20), "us-east promoted", || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("promote"))
            .map(|_| ())
    })
    .await;
    // Past the new leader's wait-out (see `renew_past_new_leader_wait`); the agent renews
    // by itself meanwhile.
    tokio::time::sleep_until((led_since + Duration::from_millis(3_300)).into()).await;
    // The agent renews every second; the leader accepted one within the last second or so.
    let started = Instant::now();
    let r = cl.failover(switchover("payments", "eu-west", token)).await;
    let took = started.elapsed();
    let _ = agent.kill();
    let _ = agent.wait();
    let r = r.expect("switchover");
    assert_eq!(r.fenced_by, "ttl-expired", "{r:?}");
    // Its last renewal may be up to one interval (1 s) old: at least ~2 s of TTL remained.
    assert!(
        took >= Duration::from_millis(1800),
        "fenced after {took:?}: the failed demote was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_answers_writes_and_reports_its_staleness() {
    let c = TestCluster::start(3, &service_toml("payments", "2s")).await;
    c.leader(Duration::from_secs(20)).await;
    // The bootstrap service is committed before the quorum goes; then the current leader.
    lease(&client(&c), "payments").await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut co = c.coordinator(leader).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &f in &followers {
        c.signal(f, libc::SIGSTOP);
    }
    // LOCAL reads on the cut-off leader say how stale they may be.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let r = co
            .get_primary(proto::GetPrimaryRequest {
                service: "payments".into(),
                consistency: proto::Consistency::Local as i32,
            })
            .await
            .map(|r| r.into_inner().staleness_ms);
        if matches!(r, Ok(ms) if ms >= 1500) {
            break;
        }
        seen.push(format!("{r:?}"));
        if Instant::now() > deadline {
            for &f in &followers {
                c.signal(f, libc::SIGCONT);
            }
            panic!(
                "staleness never reached 1.5 s: {:?}\nleader log:\n{}",
                &seen[seen.len().saturating_sub(5)..],
                c.log(leader)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write answers (outcome unknown) instead of hanging.
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        co.freeze(proto::FreezeRequest {
            service: "payments".into(),
            freeze: true,
            reason: "cut off".into(),
        }),
    )
    .await;
    for &f in &followers {
        c.signal(f, libc::SIGCONT);
    }
    let err = got
        .expect("the write hung on a leader without quorum")
        .expect_err("a write without quorum succeeded");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_cluster_stops_sending_watch_progress() {
    let c = TestCluster::start(3, &service_toml("payments", "2s")).await;
    lease(&client(&c), "payments").await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let watched = (leader + 1) % 3;
    let mut co = c.coordinator(watched).await;
    let mut stream = co
        .watch(proto::WatchRequest {
            services: vec!["payments".into()],
            start_revision: 0,
            progress_interval_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    // Progress flows while the node hears from its leader.
    let progress = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(m)) = stream.message().await {
            if m.progress {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        progress,
        Ok(true),
        "no progress message from a healthy node"
    );
    // Everyone else freezes: the watched node can no longer vouch for anything.
    let others: Vec<usize> = (0..3).filter(|&i| i != watched).collect();
    for &i in &others {
        c.signal(i, libc::SIGSTOP);
    }
    // Within an election timeout (600 ms here) progress stops: some 2 s pass in silence.
    let silent = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Err(_) => return true,
                Ok(Ok(Some(_))) => continue,
                Ok(_) => return false,
            }
        }
    })
    .await;
    for &i in &others {
        c.signal(i, libc::SIGCONT);
    }
    assert_eq!(
        silent,
        Ok(true),
        "a cut-off node kept vouching for its revision with progress messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_leader_without_quorum_reports_growing_staleness() {
    // A leader cut off from its majority still sends heartbeats to the followers on its
    // side: those must not count as fresh contact.
    let c = TestCluster::start(5, &service_toml("payments", "2s")).await;
    lease(&client(&c), "payments").await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 5;
    let others: Vec<usize> = (0..5).filter(|&i| i != leader && i != follower).collect();
    let mut co = c.coordinator(follower).await;
    let local = || proto::GetPrimaryRequest {
        service: "payments".into(),
        consistency: proto::Consistency::Local as i32,
    };
    // Until the first heartbeat carrying the leader's confirmation age arrives, a follower
    // honestly reports "unknown" (u64::MAX); on a busy machine that can outlast the first read.
    let fresh = crate::support::eventually(
        Duration::from_secs(20),
        "a healthy follower reporting fresh contact",
        || {
            let mut co = co.clone();
            async move {
                let s = co
                    .get_primary(local())
                    .await
                    .ok()?
                    .into_inner()
                    .staleness_ms;
                (s < 1500).then_some(s)
            }
        },
    )
    .await;
    assert!(fresh < 1500, "a healthy follower reported {fresh} ms");
    for &i in &others {
        c.signal(i, libc::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    let grew = loop {
        let r = co
            .get_primary(local())
            .await
            .map(|r| r.into_inner().staleness_ms);
        if matches!(r, Ok(ms) if ms >= 1500) {
            break true;
        }
        last.push(format!("{r:?}"));
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for &i in &others {
        c.signal(i, libc::SIGCONT);
    }
    assert!(
        grew,
        "the follower kept reporting fresh data: {:?}",
        &last[last.len().saturating_sub(5)..]
    );
}
