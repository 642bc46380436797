//! Issue 9: the internal Raft service refuses messages from outside the membership and
//! absurd terms, so a crafted vote cannot wedge the cluster.

use std::time::{Duration, Instant};

use baton::proto::raft_client::RaftClient;
use baton::proto::{RaftReply, RaftRequest};
use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, LogId, Vote};

use crate::support::{channel, eventually, service_toml, TestCluster};

/// Sends one raw Raft RPC to node `i`'s Raft service (as a foreign client would).
async fn raw(
    c: &TestCluster,
    i: usize,
    from: u64,
    vote: bool,
    payload: Vec<u8>,
) -> Result<RaftReply, tonic::Status> {
    let mut client = RaftClient::new(channel(&c.nodes[i].peer_addr));
    let req = RaftRequest {
        to: None,
        leader_confirmed_age_ms: None,
        cluster: c.cluster.clone(),
        from,
        payload,
    };
    let res = if vote {
        client.vote(req).await
    } else {
        client.append_entries(req).await
    };
    res.map(|r| r.into_inner())
}

/// A vote request from `node` at `term` claiming a log far ahead of everyone's.
fn crafted_vote(term: u64, node: u64) -> Vec<u8> {
    let last = LogId::new(CommittedLeaderId::new(term, node), u64::MAX - 2);
    bincode::serialize(&VoteRequest::new(Vote::new(term, node), Some(last))).unwrap()
}

/// Asserts the crafted message was refused with `code` (never handed to openraft).
fn refused(r: Result<RaftReply, tonic::Status>, code: tonic::Code) {
    match r {
        Err(e) => assert_eq!(e.code(), code, "{e:?}"),
        Ok(reply) => {
            let granted = bincode::deserialize::<VoteResponse<u64>>(&reply.payload)
                .map(|v| v.vote_granted)
                .unwrap_or(false);
            panic!("the crafted message reached openraft (vote granted: {granted})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_vote_is_refused_and_the_cluster_keeps_electing() {
    let mut c = TestCluster::start(3, &service_toml("payments", "1h")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let leader_id = c.nodes[leader].id;
    let follower = (leader + 1) % 3;

    // A fake node 42 with a term near u64::MAX, sent to every node.
    for i in 0..3 {
        refused(
            raw(&c, i, 42, true, crafted_vote(u64::MAX - 2, 42)).await,
            tonic::Code::PermissionDenied,
        );
    }
    // A member's id with an absurd term (a forged or corrupted sender).
    refused(
        raw(
            &c,
            follower,
            leader_id,
            true,
            crafted_vote(u64::MAX - 2, leader_id),
        )
        .await,
        tonic::Code::InvalidArgument,
    );
    // An append from a fake leader.
    let append: AppendEntriesRequest<baton::raft::TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(u64::MAX - 2, 42),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    refused(
        raw(
            &c,
            follower,
            42,
            false,
            bincode::serialize(&append).unwrap(),
        )
        .await,
        tonic::Code::PermissionDenied,
    );
    // The cluster keeps its leader.
    assert_eq!(c.leader(Duration::from_secs(20)).await, leader);

    // Kill the leader and keep sending the crafted vote while the others elect: no leader
    // lease protects them then, so openraft would grant it.
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for &i in &others {
            refused(
                raw(&c, i, 42, true, crafted_vote(u64::MAX - 2, 42)).await,
                tonic::Code::PermissionDenied,
            );
        }
    }
    let next = c.leader(Duration::from_secs(30)).await;
    assert_ne!(next, leader);

    // The old leader comes back as a follower, later leader changes still work, and no
    // node crashed.
    c.spawn(leader);
    let next_id = c.nodes[next].id;
    eventually(
        Duration::from_secs(30),
        "the old leader to rejoin",
        || async {
            let s = c.status(leader).await?;
            (s.leader_id == next_id).then_some(())
        },
    )
    .await;
    c.kill(next);
    let third = c.leader(Duration::from_secs(30)).await;
    assert_ne!(third, next);
    c.spawn(next);
    c.leader(Duration::from_secs(30)).await;
    for i in 0..3 {
        assert!(
            c.status(i).await.is_some(),
            "node {} stopped",
            c.nodes[i].id
        );
        assert!(
            !c.log(i).contains("panicked"),
            "node {} panicked",
            c.nodes[i].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_is_served_on_the_peer_listener_only() {
    let c = TestCluster::start(3, &service_toml("payments", "1h")).await;
    c.leader(Duration::from_secs(20)).await;
    // The client address does not serve Raft: a vote sent there is not even routed.
    let mut client = RaftClient::new(channel(&c.nodes[0].addr));
    let e = client
        .vote(RaftRequest {
            to: None,
            leader_confirmed_age_ms: None,
            cluster: c.cluster.clone(),
            from: 2,
            payload: crafted_vote(1, 2),
        })
        .await
        .expect_err("the client listener must not serve Raft");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    // Clients read through the client address as before.
    let cl = crate::support::client(&c);
    crate::support::lease(&cl, "payments").await;
}

/// A Raft client of `addr` over TLS trusting `certs/ca.pem`, presenting `identity`
/// (`node-2` → `certs/node-2.pem` and `.key`) if given.
fn tls_client(
    addr: &str,
    certs: &std::path::Path,
    identity: Option<(&std::path::Path, &str)>,
) -> RaftClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((dir, name)) = identity {
        let cert = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
        let key = std::fs::read(dir.join(format!("{name}.key"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    RaftClient::new(ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_refuses_peers_without_a_certificate_of_its_ca() {
    let mut c = TestCluster::prepare(3, &service_toml("payments", "1h"), "");
    let certs = c.make_certs("certs");
    let foreign = c.make_certs("foreign-ca");
    c.enable_peer_tls(&certs);
    for i in 0..3 {
        c.spawn(i);
    }
    c.leader(Duration::from_secs(30)).await;
    let cl = crate::support::client(&c);
    crate::support::lease(&cl, "payments").await;

    let peer = c.nodes[0].peer_addr.clone();
    // A vote at term 1 from member 2: harmless (the cluster is past term 1), answered by
    // openraft only if the connection is accepted.
    let vote = || RaftRequest {
        to: None,
        leader_confirmed_age_ms: None,
        cluster: c.cluster.clone(),
        from: 2,
        payload: crafted_vote(1, 2),
    };
    // Plaintext, TLS without a client certificate, and a certificate of another CA: refused.
    let plain = RaftClient::new(channel(&peer)).vote(vote()).await;
    assert!(
        plain.is_err(),
        "plaintext reached the TLS peer listener: {plain:?}"
    );
    let anonymous = tls_client(&peer, &certs, None).vote(vote()).await;
    assert!(
        anonymous.is_err(),
        "a peer without a certificate was served: {anonymous:?}"
    );
    let other_ca = tls_client(&peer, &certs, Some((&foreign, "node-2")))
        .vote(vote())
        .await;
    assert!(
        other_ca.is_err(),
        "a certificate of another CA was accepted: {other_ca:?}"
    );
    // A member's certificate speaking for another member: refused.
    let spoof = RaftRequest {
        to: None,
        leader_confirmed_age_ms: None,
        from: 3,
        payload: crafted_vote(1, 3),
        ..vote()
    };
    let e = tls_client(&peer, &certs, Some((&certs, "node-2")))
        .vote(spoof)
        .await
        .expect_err("node 2's certificate must not speak for node 3");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The same request with a certificate of the cluster's CA gets through (control).
    let member = tls_client(&peer, &certs, Some((&certs, "node-2")))
        .vote(vote())
        .await;
    assert!(
        member.is_ok(),
        "a member's certificate was refused: {member:?}"
    );

    // The cluster still leads and serves, and survives a leader kill over TLS.
    let leader = c.leader(Duration::from_secs(20)).await;
    c.kill(leader);
    let next = c.leader(Duration::from_secs(30)).await;
    assert_ne!(next, leader);
    crate::support::lease(&cl, "payments").await;
}

#[test]
fn baton_cert_never_overwrites_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(crate::support::baton_bin())
            .args(["cert", "--nodes", "1", "--client", "ops", "--out"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    for f in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "client-ops.pem",
        "client-ops.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let again = run();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not overwriting"), "{err}");
}

/// A Raft message names the node it is meant for; another node refuses it. Found on the
/// network-namespace cluster (`tests/runbook.rs`): a replacement started empty on the
/// address of a member not yet removed answered that member's vote requests and granted a
/// stale node leadership, which lost committed entries and made openraft panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_meant_for_another_node_is_refused() {
    let c = TestCluster::start(3, &service_toml("payments", "1h")).await;
    c.leader(Duration::from_secs(20)).await;
    let vote = |to: Option<u64>| RaftRequest {
        to,
        leader_confirmed_age_ms: None,
        cluster: c.cluster.clone(),
        from: 2,
        payload: bincode::serialize(&VoteRequest::<u64>::new(Vote::new(1, 2), None)).unwrap(),
    };
    let mut client = RaftClient::new(channel(&c.nodes[0].peer_addr));
    let e = client
        .vote(vote(Some(3)))
        .await
        .expect_err("node 1 must not answer for node 3");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("this is node 1"), "{e:?}");
    // Meant for node 1 (or not saying, as older senders do): answered (a stale vote is
    // simply not granted).
    for to in [Some(1), None] {
        let reply = client.vote(vote(to)).await.unwrap().into_inner();
        let r: VoteResponse<u64> = bincode::deserialize(&reply.payload).unwrap();
        assert!(!r.vote_granted, "{r:?}");
    }
    // And the cluster keeps working.
    let cl = crate::support::client(&c);
    crate::support::lease(&cl, "payments").await;
}

/// Rotating the peer certificates to a new CA reaches the connections a node *opens* too:
/// every node reloads on SIGHUP, then a follower restarts trusting only the new CA; the
/// leader must reconnect to it with its new certificate (and trust its new one), or the
/// follower never hears from the leader again. (Before outbound reload, the leader kept
/// dialling with the certificate it started with.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_peer_certificates_are_used_for_outbound_connections_too() {
    let mut c = TestCluster::prepare(3, &service_toml("payments", "1h"), "");
    let old = c.make_certs("certs-old");
    let new = c.make_certs("certs-new");
    let live = c.root.path().join("certs");
    let install = |from: &std::path::Path| {
        std::fs::create_dir_all(&live).unwrap();
        // Keys first: a reload between the two writes fails loudly and is retried.
        for id in 1..=3 {
            for ext in ["key", "pem"] {
                let f = format!("node-{id}.{ext}");
                std::fs::copy(from.join(&f), live.join(&f)).unwrap();
            }
        }
        std::fs::copy(from.join("ca.pem"), live.join("ca.pem")).unwrap();
    };
    install(&old);
    c.enable_peer_tls(&live);
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.leader(Duration::from_secs(30)).await;
    let cl = crate::support::client(&c);
    crate::support::lease(&cl, "payments").await;

    install(&new);
    let reloads = |c: &TestCluster, i: usize| {
        c.log(i)
            .matches("peer_tls: certificates reloaded on SIGHUP")
            .count()
    };
    for i in 0..3 {
        let before = reloads(&c, i);
        c.signal(i, libc::SIGHUP);
        eventually(Duration::from_secs(30), "a reload on SIGHUP", || async {
            (reloads(&c, i) > before).then_some(())
        })
        .await;
    }
    let follower = (leader + 1) % 3;
    c.kill(follower);
    c.spawn(follower);
    cl.freeze("payments", true, "test: a write after the rotation")
        .await
        .unwrap();
    let rev = cl
        .primary("payments", baton::proto::Consistency::Linearizable)
        .await
        .unwrap()
        .revision;
    eventually(
        Duration::from_secs(30),
        "the restarted follower to apply the write",
        || async {
            let mut node = c.coordinator(follower).await;
            let r = node
                .get_primary(baton::proto::GetPrimaryRequest {
                    service: "payments".into(),
                    consistency: baton::proto::Consistency::Local as i32,
                })
                .await
                .ok()?
                .into_inner();
            (r.revision >= rev).then_some(())
        },
    )
    .await;
}
