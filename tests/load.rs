//! Load: a flood of calls from one client is shed without starving Raft or the leases.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::proto::coordinator_client::CoordinatorClient;
use baton::proto::{Consistency, GetPrimaryRequest, WatchRequest};
use tonic::Code;

use crate::support::{agent, client, held, lease, service_toml, TestCluster};

/// A client connection to `addr` from the loopback address `from` (so the node counts it
/// as a caller of its own, apart from the agent and the test's checks on 127.0.0.1).
fn channel_from(addr: &str, from: [u8; 4]) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(IpAddr::from(from)))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
    first_other: std::sync::Mutex<Option<tonic::Status>>,
}

impl Tally {
    fn count<T>(&self, r: Result<T, tonic::Status>) {
        match r {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    s.message().contains("back off and retry"),
                    "a refusal that does not say what to do: {}",
                    s.message()
                );
                self.shed.fetch_add(1, Ordering::Relaxed)
            }
            Err(s) => {
                self.first_other.lock().unwrap().get_or_insert(s);
                self.other.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.shed.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// Terms of every node (the same term on all nodes means no election happened since).
async fn terms(c: &TestCluster) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..c.nodes.len() {
        out.push(c.status(i).await.map_or(0, |s| s.term));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_and_watches_is_shed_without_a_leader_change_or_lease_loss() {
    // Generous timings so a busy two-core machine alone never elects: what matters is that
    // the flood does not make things worse. To measure the same flood under other settings:
    // BATON_TEST_FLOOD_TIMING (a `[timing]` table), BATON_TEST_FLOOD_LIMITS (a `[limits]`
    // table; with limits nobody reaches, the test fails at "nothing was shed").
    let timing = std::env::var("BATON_TEST_FLOOD_TIMING").unwrap_or("[timing]\nheartbeat = \"100ms\"\nelection_timeout_min = \"1500ms\"\nelection_timeout_max = \"3s\"\n".into());
    let extra = std::env::var("BATON_TEST_FLOOD_LIMITS").unwrap_or_default();
    let mut c = TestCluster::prepare_timed(3, &service_toml("payments", "6s"), &extra, &timing);
    for i in 0..3 {
        c.spawn(i);
    }
    let cl = client(&c);
    lease(&cl, "payments").await;
    let us = agent(&c, "payments", "us-east");
    let token = held(&us).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let before = terms(&c).await;

    // 1,024 tasks reading (linearizable) and 128 opening and dropping watches, all from
    // 127.0.0.2, on 20 connections to the leader, for 8 s.
    let addr = c.nodes[leader].addr.clone();
    let reads = Arc::new(Tally::default());
    let watches = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for conn in 0..20 {
        let co = CoordinatorClient::new(channel_from(&addr, [127, 0, 0, 2]));
        let (n, watching) = if conn < 16 { (64, false) } else { (32, true) };
        for _ in 0..n {
            let mut co = co.clone();
            let (reads, watches) = (reads.clone(), watches.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    if watching {
                        let r = co
                            .watch(WatchRequest {
                                services: vec!["payments".into()],
                                start_revision: 0,
                                progress_interval_ms: 0,
                            })
                            .await;
                        watches.count(r);
                    } else {
                        let r = co
                            .get_primary(GetPrimaryRequest {
                                service: "payments".into(),
                                consistency: Consistency::Linearizable as i32,
                            })
                            .await;
                        reads.count(r);
                    }
                }
            }));
        }
    }
    // Meanwhile the holder must never lose its lease.
    let flood = futures::future::join_all(tasks);
    tokio::select! {
        r = flood => for t in r { t.expect("flood task"); },
        _ = us.lost() => panic!("the holder lost its lease during the flood: {:?}", *us.status().borrow()),
    }
    let (r_ok, r_shed, r_other) = reads.get();
    let (w_ok, w_shed, w_other) = watches.get();
    let missed = c.log(leader).matches("heartbeat error").count();
    eprintln!(
        "flood of node {} ({missed} heartbeat errors logged): reads ok {r_ok} shed {r_shed} other {r_other}; watch opens ok {w_ok} shed {w_shed} other {w_other}",
        leader + 1
    );
    assert!(r_shed + w_shed > 0, "nothing was shed");
    // Every call was answered or shed: none failed because Raft could not confirm the
    // leadership in time (which happened while Raft shared the runtime with the flood).
    assert_eq!(
        (r_other, w_other),
        (0, 0),
        "calls failed other than by shedding, first: {:?}",
        reads.first_other.lock().unwrap()
    );
    assert!(r_ok > 0 && w_ok > 0, "nothing was served during the flood");

    // No election: the same leader, every node still in the term it had.
    assert_eq!(c.leader(Duration::from_secs(20)).await, leader);
    assert_eq!(terms(&c).await, before, "an election happened during the flood");
    // The lease never moved, and the holder still holds it.
    assert_eq!(lease(&cl, "payments").await.token, token);
    assert!(us.is_valid() && us.token() == Some(token));
}
