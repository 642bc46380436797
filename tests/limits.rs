//! Hostile and oversized input: limits with clear errors, and a Raft log that keeps
//! replicating (and electing) with the largest entries the limits allow.

use std::collections::BTreeMap;
use std::time::Duration;

use baton::proto::{
    Consistency, FailoverRequest, GetPrimaryRequest, HealthCheck, ListAuditRequest, Plan, PlanStep,
    PutServiceRequest, ServiceSpec, TransferLeadershipRequest,
};
use baton::state::limits::MAX_SPEC_BYTES;
use tonic::Code;

use crate::support::{agent, client, eventually, held, lease, service_toml, TestCluster};

fn step(kind: &str, url: &str) -> PlanStep {
    PlanStep {
        kind: kind.into(),
        timeout_ms: 0,
        on_failure: String::new(),
        url: url.into(),
    }
}

fn spec_bytes(p: &ServiceSpec) -> Result<usize, String> {
    let s = baton::convert::spec_from_proto(p)?;
    s.validate()?;
    Ok(bincode::serialized_size(&s).map_err(|e| e.to_string())? as usize)
}

/// The `bulk` service padded with webhook steps to just under the spec size limit; `salt`
/// makes each version differ so every write is a real change.
fn largest_spec(salt: u32) -> ServiceSpec {
    let mut spec = ServiceSpec {
        name: "bulk".into(),
        regions: vec!["us-east".into(), "eu-west".into(), "ap-south".into()],
        lease_ttl_ms: 5_000 + u64::from(salt),
        failback: "manual".into(),
        ..Default::default()
    };
    let url = |i: usize, n: usize| format!("http://h{salt}-{i}.example/{}", "p".repeat(n));
    'fill: for kind in ["failover", "switchover", "failback"] {
        let mut steps = vec![step("precheck", ""), step("fence", ""), step("grant", "")];
        for i in 0..13 {
            steps.insert(0, step("webhook", &url(i, 990)));
            spec.plans.insert(
                kind.into(),
                Plan {
                    steps: steps.clone(),
                },
            );
            if spec_bytes(&spec).is_err() {
                // Over the limit: shorten this URL so the spec ends just under it.
                let size = |n| {
                    let mut s = spec.clone();
                    s.plans.get_mut(kind).unwrap().steps[0].url = url(i, n);
                    (spec_bytes(&s), s)
                };
                let fit = (0..990).rev().find(|n| size(*n).0.is_ok()).unwrap();
                spec = size(fit).1;
                break 'fill;
            }
        }
    }
    let bytes = spec_bytes(&spec).unwrap();
    assert!(bytes > MAX_SPEC_BYTES - 64, "{bytes}");
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_specs_replicate_across_leader_changes_and_oversized_ones_are_refused() {
    // A 10 s TTL: a restarted node may call an election before the leader's reconnect
    // backoff lets it hear a heartbeat (no pre-vote in openraft 0.9); that brief churn is
    // not what this test measures. A 150 ms heartbeat (as over a WAN): openraft gives every
    // AppendEntries one heartbeat, and a batch of the largest entries plus the follower's
    // fsync on a busy machine does not fit the other tests' 50 ms.
    let timing = "[timing]\nheartbeat = \"150ms\"\nelection_timeout_min = \"600ms\"\nelection_timeout_max = \"1200ms\"\n";
    let mut c = TestCluster::start_timed(3, &service_toml("payments", "10s"), timing).await;
    let cl = client(&c);
    lease(&cl, "payments").await;
    let us = agent(&c, "payments", "us-east");
    let token = held(&us).await;

    // Reads and renewals still work: a linearizable read answers from some node, and the
    // agent's lease is unchanged and valid.
    let check = |what: String| {
        let cl = &cl;
        let us = &us;
        async move {
            let l = lease(cl, "payments").await;
            assert_eq!(l.token, token, "{what}: the lease moved");
            let status = *us.status().borrow();
            assert!(
                us.is_valid() && us.token() == Some(token),
                "{what}: the agent is {status:?}"
            );
        }
    };

    let put = |i: u32| PutServiceRequest {
        spec: Some(largest_spec(i)),
        reason: format!("largest spec #{i}"),
    };
    let mut n = 0;
    for round in 0..3 {
        // A follower misses a run of big entries, then must catch up and lead.
        let leader = c.leader(Duration::from_secs(20)).await;
        let behind = (leader + 1) % 3;
        c.kill(behind);
        for _ in 0..8 {
            let mut admin = c.admin(leader).await;
            admin.put_service(put(n)).await.expect("largest spec");
            n += 1;
        }
        c.spawn(behind);
        let to = c.nodes[behind].id;
        eventually(
            Duration::from_secs(30),
            "the lagging node to take over",
            || {
                let c = &c;
                async move {
                    let l = c.leader(Duration::from_secs(20)).await;
                    if l == behind {
                        return Some(());
                    }
                    let _ = c
                        .admin(l)
                        .await
                        .transfer_leadership(TransferLeadershipRequest {
                            to,
                            campaign: false,
                        })
                        .await;
                    None
                }
            },
        )
        .await;
        check(format!("round {round}")).await;
    }

    let leader = c.leader(Duration::from_secs(20)).await;
    let mut admin = c.admin(leader).await;
    // One byte of padding too many: refused, naming the limit.
    let mut over = largest_spec(999);
    let shortest = over
        .plans
        .values_mut()
        .flat_map(|p| p.steps.iter_mut())
        .filter(|s| s.kind == "webhook")
        .min_by_key(|s| s.url.len())
        .unwrap();
    shortest.url.push_str(&"p".repeat(64));
    let err = admin
        .put_service(PutServiceRequest {
            spec: Some(over),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("limit is 32768"),
        "{}",
        err.message()
    );
    // A long health target: refused by its own limit.
    let mut long_target = largest_spec(1000);
    long_target.plans.clear();
    long_target.health = BTreeMap::from([(
        "us-east".to_string(),
        HealthCheck {
            kind: "http".into(),
            target: format!("http://{}", "x".repeat(500_000)),
            interval_ms: 1000,
            timeout_ms: 500,
            threshold: 2,
        },
    )]);
    let err = admin
        .put_service(PutServiceRequest {
            spec: Some(long_target.clone()),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("target") && err.message().contains("limit is 512"),
        "{}",
        err.message()
    );
    // 10 MB: refused before it is even decoded.
    long_target.health.get_mut("us-east").unwrap().target = "x".repeat(10 << 20);
    let err = admin
        .put_service(PutServiceRequest {
            spec: Some(long_target),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("too large"), "{err:?}");

    // A dry run's reason is bounded too; an unknown consistency is refused, not guessed.
    let mut co = c.coordinator(leader).await;
    let err = co
        .failover(FailoverRequest {
            service: "payments".into(),
            to_region: "eu-west".into(),
            reason: "r".repeat(100_000),
            expected_token: 0,
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 1024"), "{}", err.message());
    let err = co
        .get_primary(GetPrimaryRequest {
            service: "payments".into(),
            consistency: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("consistency 99"),
        "{}",
        err.message()
    );

    // Every audit page fits in a message, and paging reaches the end.
    let mut from_seq = 0;
    let mut seen = 0;
    loop {
        let page = co
            .list_audit(ListAuditRequest {
                from_seq,
                limit: 1000,
                service: String::new(),
            })
            .await
            .expect("an audit page")
            .into_inner();
        assert!(page.chain_ok);
        if page.entries.is_empty() {
            break;
        }
        seen += page.entries.len();
        from_seq = page.next_seq;
    }
    assert!(seen >= n as usize, "{seen} audit entries");
    // A follower answers ListServices with every large spec (no 4 MiB forwarding limit).
    let services = c
        .coordinator((leader + 1) % 3)
        .await
        .list_services(baton::proto::ListServicesRequest {
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .expect("list services from a follower")
        .into_inner();
    assert_eq!(services.services.len(), 2);
    check("the end".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_held_service_is_one_command_and_old_tokens_stay_superseded() {
    use baton::proto::{
        DeleteServiceRequest, LeaseState, TokenValidity, ValidateTokenRequest, WatchRequest,
    };
    let c = TestCluster::start(3, &service_toml("payments", "24h")).await;
    let cl = client(&c);
    let token = lease(&cl, "payments").await.token;
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut admin = c.admin(leader).await;

    // Held by us-east with a 24 h TTL and no agent to acknowledge: the delete cannot finish
    // until the TTL runs out, so it answers at once, pending, instead of blocking.
    let resp = admin
        .delete_service(DeleteServiceRequest {
            name: "payments".into(),
            reason: "retire".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(resp.pending, "{resp:?}");
    let l = lease(&cl, "payments").await;
    assert_eq!((l.state, l.token), (LeaseState::Revoking as i32, token));
    let again = PutServiceRequest {
        spec: Some(ServiceSpec {
            name: "payments".into(),
            regions: vec!["us-east".into(), "eu-west".into()],
            lease_ttl_ms: 5_000,
            failback: "manual".into(),
            ..Default::default()
        }),
        reason: "recreate".into(),
    };
    let err = admin.put_service(again.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("being deleted"), "{}", err.message());

    // A service whose holder can be fenced (2 s TTL, an agent that acknowledges demotion):
    // the same single delete completes by itself once it is, on whichever node leads.
    let orders = |ttl_ms: u64| PutServiceRequest {
        spec: Some(ServiceSpec {
            name: "orders".into(),
            regions: vec!["us-east".into(), "eu-west".into()],
            lease_ttl_ms: ttl_ms,
            failback: "manual".into(),
            ..Default::default()
        }),
        reason: "create".into(),
    };
    admin.put_service(orders(2_000)).await.expect("orders");
    let us = agent(&c, "orders", "us-east");
    let token = held(&us).await;
    admin
        .delete_service(DeleteServiceRequest {
            name: "orders".into(),
            reason: "retire".into(),
        })
        .await
        .expect("delete orders");
    eventually(Duration::from_secs(30), "orders to go", || {
        let cl = &cl;
        async move {
            let r = cl.primary("orders", Consistency::Linearizable).await;
            matches!(r, Err(e) if e.to_string().contains("does not exist")).then_some(())
        }
    })
    .await;
    let mut co = c.coordinator((leader + 1) % 3).await;
    let v = co
        .validate_token(ValidateTokenRequest {
            service: "orders".into(),
            token,
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .expect("validate a deleted service's token")
        .into_inner();
    assert_eq!(v.validity, TokenValidity::Superseded as i32, "{v:?}");
    assert!(v.lease.is_none());
    admin
        .put_service(orders(5_000))
        .await
        .expect("created again");

    // A watch from a revision that cannot exist is refused, naming what to do.
    let err = co
        .watch(WatchRequest {
            services: vec![],
            start_revision: u64::MAX,
            progress_interval_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("in the future"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_silent_sockets_are_closed() {
    use tokio::io::AsyncReadExt;
    let c = TestCluster::start_with(
        3,
        &service_toml("payments", "5s"),
        "[limits]\nmax_connections = 40\n",
    )
    .await;
    let cl = client(&c);
    lease(&cl, "payments").await;
    let us = agent(&c, "payments", "us-east");
    let token = held(&us).await;
    // A client connected before the flood.
    let mut co = c.coordinator(0).await;
    let read = GetPrimaryRequest {
        service: "payments".into(),
        consistency: Consistency::Linearizable as i32,
    };
    co.get_primary(read.clone()).await.expect("read before");

    // 60 sockets that connect and never speak, against a cap of 40.
    let mut silent = Vec::new();
    for _ in 0..60 {
        let s = tokio::net::TcpStream::connect(&c.nodes[0].addr)
            .await
            .expect("the kernel accepts the TCP connection");
        silent.push(s);
    }
    let closed = silent
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                // The server sends its HTTP/2 settings, then closes: EOF or a reset.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
        })
        .collect::<Vec<_>>();

    // The existing client, the agent and the node carry on meanwhile.
    for _ in 0..5 {
        co.get_primary(read.clone())
            .await
            .expect("read during the flood");
    }
    // Every silent socket is closed: those over the cap at once, the rest after the
    // handshake timeout.
    for h in closed {
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a silent connection was left open")
            .expect("reader task");
    }
    assert!(c.status(0).await.is_some(), "node 1 stopped answering");
    let mut fresh = c.coordinator(0).await;
    fresh
        .get_primary(read)
        .await
        .expect("a new client after the flood");
    assert_eq!(lease(&cl, "payments").await.token, token);
    assert!(us.is_valid() && us.token() == Some(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_are_cut_off_and_do_not_stall_writes() {
    use baton::proto::coordinator_client::CoordinatorClient;
    use baton::proto::{FreezeRequest, WatchRequest};
    let c = TestCluster::start(3, &service_toml("payments", "5s")).await;
    let cl = client(&c);
    lease(&cl, "payments").await;
    let us = agent(&c, "payments", "us-east");
    let token = held(&us).await;
    let watch = || WatchRequest {
        services: vec![],
        start_revision: 0,
        progress_interval_ms: 0,
    };
    let node = 1;
    let rss_before = c.rss_kib(node);

    // Clients with small HTTP/2 windows, so a watcher that does not read soon makes the
    // node buffer for it (hyper's default windows would absorb the whole test).
    let small = || {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[node].addr))
            .unwrap()
            .initial_stream_window_size(Some(8 * 1024))
            .initial_connection_window_size(Some(4 << 20))
            .connect_lazy();
        CoordinatorClient::new(ch)
    };
    // 300 watch streams on node 2, on three connections, that are never read.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut co = small();
        for _ in 0..100 {
            idle.push(co.watch(watch()).await.expect("watch").into_inner());
        }
    }
    // A fourth connection may open 256, not more.
    let mut co = small();
    let mut capped = Vec::new();
    for _ in 0..baton::api::watch::MAX_WATCHERS_PER_CONNECTION {
        capped.push(co.watch(watch()).await.expect("watch under the cap"));
    }
    let err = co.watch(watch()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("per connection"),
        "{}",
        err.message()
    );
    drop(capped);

    // Writes keep committing while every watcher falls behind.
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut writer = c.coordinator(leader).await;
    // Events over 256 bytes: the client's HTTP/2 library cuts a connection that buffers
    // too many tiny frames, which is not what this test is about.
    let padding = "p".repeat(300);
    for i in 0..1500 {
        writer
            .freeze(FreezeRequest {
                service: "payments".into(),
                freeze: i % 2 == 0,
                reason: format!("flip {i} {padding}"),
            })
            .await
            .expect("a write while watchers lag");
    }
    let rss_full = c.rss_kib(node);
    assert_eq!(lease(&cl, "payments").await.token, token);
    assert!(us.is_valid(), "the agent's lease lapsed");

    // A lagging watcher, read at last, gets what was buffered and then the explicit error.
    let mut slow = idle.pop().unwrap();
    let mut got = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message()).await {
            Ok(Ok(Some(_))) => got += 1,
            Ok(Ok(None)) => panic!("the stream ended without an error after {got} responses"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("no error after {got} responses"),
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message()
            .contains("resume it from your last received revision"),
        "{}",
        err.message()
    );
    drop(idle);
    // Closing the streams frees their slots (and their buffers).
    let mut again = Vec::new();
    for _ in 0..baton::api::watch::MAX_WATCHERS_PER_CONNECTION {
        let w = eventually(Duration::from_secs(10), "a watch slot to come back", || {
            let mut co = co.clone();
            async move { co.watch(watch()).await.ok() }
        })
        .await;
        again.push(w);
    }
    drop(again);
    let rss_after = c.rss_kib(node);
    eprintln!(
        "node {} RSS KiB: before {rss_before:?}, 300 lagging watchers after 1500 writes {rss_full:?}, after closing {rss_after:?}",
        node + 1
    );
    if let (Some(b), Some(f)) = (rss_before, rss_full) {
        // 300 watchers with full buffers: bounded by WATCH_BUFFER responses plus the HTTP/2
        // send buffer (hyper's default, 400 KiB) each.
        assert!(
            f.saturating_sub(b) < 300 * 1024,
            "RSS grew from {b} to {f} KiB"
        );
    }
}
