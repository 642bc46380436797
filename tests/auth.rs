//! `[auth]` on a real 3-node cluster with bearer tokens: every RPC needs credentials, roles
//! are enforced, agents are bound to their region, refusals and cluster operations are
//! audited under the authenticated principal, separation of duties holds, health targets
//! are redacted for readers, and a follower forwards the caller's principal.

use std::time::Duration;

use baton::auth::policy::{token_hash, METHODS};
use baton::client::{Client, ClientOptions};
use baton::proto::{self, admin_client::AdminClient, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::support::{channel, eventually, TestCluster};

const READER: &str = "reader-token-1";
const AGENT_EU: &str = "agent-eu-token-1";
const OPS: &str = "ops-token-1";
const OPS2: &str = "ops2-token-1";
const ROOT: &str = "root-token-1";

const SECRET_TARGET: &str = "http://127.0.0.1:9/internal/secret-path";

fn auth_toml() -> String {
    let entry = |name: &str, token: &str, roles: &str, extra: &str| {
        format!(
            "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = [{roles}]\n{extra}",
            hex::encode(token_hash(token))
        )
    };
    [
        "[auth]\nenabled = true\n".to_string(),
        entry("reader", READER, "\"reader\"", ""),
        entry(
            "agent-eu",
            AGENT_EU,
            "\"agent\"",
            "services = [\"payments\"]\nregions = [\"eu-west\"]\n",
        ),
        entry("ops", OPS, "\"operator\"", ""),
        entry("ops2", OPS2, "\"operator\"", ""),
        entry("root", ROOT, "\"admin\"", ""),
    ]
    .concat()
}

/// `payments` has a health target only operators may see (automation off: the target is
/// unreachable on purpose); `orders` needs an approval by another principal to switch over.
/// TTLs of 3 s: a leadership transfer stays quiet no longer than the shortest TTL allows,
/// which must leave room for an election.
fn services_toml() -> String {
    format!(
        "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"3s\"\nauto_failover = false\n\
         [services.health.us-east]\nkind = \"http\"\ntarget = \"{SECRET_TARGET}\"\ninterval = \"1s\"\n\
         [[services]]\nname = \"orders\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"3s\"\nauto_failover = false\n\
         [services.plans]\nswitchover = [{{ step = \"approval-by-another\", timeout = \"5m\" }}, {{ step = \"fence\" }}, {{ step = \"grant\" }}]\n"
    )
}

async fn start() -> TestCluster {
    TestCluster::start_with(3, &services_toml(), &auth_toml()).await
}

fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn co(c: &TestCluster, i: usize) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(channel(&c.nodes[i].addr))
}

fn admin(c: &TestCluster, i: usize) -> AdminClient<Channel> {
    AdminClient::new(channel(&c.nodes[i].addr))
}

fn client(c: &TestCluster, token: &str) -> Client {
    Client::with_options(
        c.endpoints(),
        ClientOptions {
            token: Some(token.into()),
            timeout: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Index of the node every node names as leader, asked with the reader token.
async fn leader(c: &TestCluster) -> usize {
    eventually(Duration::from_secs(30), "an agreed leader", || async {
        let mut seen = None;
        // The three voters (a joiner, when there is one, is not asked).
        for i in 0..3 {
            let s = admin(c, i)
                .cluster_status(with(proto::ClusterStatusRequest {}, Some(READER)))
                .await
                .ok()?
                .into_inner();
            if s.leader_id == 0 || seen.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            seen = Some(s.leader_id);
        }
        c.nodes.iter().position(|n| Some(n.id) == seen)
    })
    .await
}

/// Calls `path` with an empty message and `token`: the auth layer answers before any
/// handler decodes the body, whatever the method's streaming kind.
async fn raw_call(addr: &str, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(addr));
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    match grpc.unary(with((), token), path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

/// The answer of `f`, retried while the cluster is busy electing or confirming a leader
/// (UNAVAILABLE, DEADLINE_EXCEEDED); any other error fails the test.
async fn retry<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(r) => return r.into_inner(),
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

/// The refusal `f` answers, retried while the cluster is busy (UNAVAILABLE).
async fn refusal<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> tonic::Status
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(_) => panic!("{what}: accepted"),
            Err(s) if s.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => return s,
        }
    }
}

/// All audit entries, read with the operator token.
async fn audit(c: &TestCluster) -> Vec<proto::AuditEntry> {
    let cl = client(c, OPS);
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = cl.audit(from, 500, None).await.unwrap();
        let Some(last) = page.entries.last() else {
            break;
        };
        from = last.seq + 1;
        all.extend(page.entries);
    }
    all
}

async fn audited(
    c: &TestCluster,
    what: &str,
    f: impl Fn(&proto::AuditEntry) -> bool,
) -> proto::AuditEntry {
    eventually(Duration::from_secs(60), what, || async {
        audit(c).await.into_iter().find(|e| f(e))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_needs_credentials_and_the_right_role() {
    let c = start().await;
    let l = leader(&c).await;
    let addr = c.nodes[l].addr.clone();

    // Every method of the client API, without credentials and with a bad token.
    for (path, _) in METHODS {
        let s = raw_call(&addr, path, None).await;
        assert_eq!(s.code(), Code::Unauthenticated, "{path}: {s:?}");
        assert!(s.message().contains("--token"), "{path}: {}", s.message());
        let s = raw_call(&addr, path, Some("not-a-token")).await;
        assert_eq!(
            s.code(),
            Code::Unauthenticated,
            "{path} with a bad token: {s:?}"
        );
    }
    // The streams through their real clients too.
    let s = co(&c, l)
        .watch(with(proto::WatchRequest::default(), None))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let ka = proto::KeepAliveRequest {
        service: "payments".into(),
        region: "us-east".into(),
        agent_id: "x".into(),
        ..Default::default()
    };
    let s = co(&c, l)
        .keep_alive(with(tokio_stream::iter(vec![ka.clone()]), None))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // Probes need no credentials: a Kubernetes gRPC probe cannot send a token.
    let probe = tonic_health::pb::health_client::HealthClient::new(channel(&addr))
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(probe.is_ok(), "gRPC health without credentials: {probe:?}");
    // The Raft service is not on the client port, and no unknown path is served.
    let s = raw_call(&addr, "/baton.v1.Raft/Vote", Some(ROOT)).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // A reader reads, but may not fail over; the refusal is audited under its name.
    retry("a reader's GetPrimary", || async {
        co(&c, l)
            .get_primary(with(
                proto::GetPrimaryRequest {
                    service: "payments".into(),
                    ..Default::default()
                },
                Some(READER),
            ))
            .await
    })
    .await;
    let s = co(&c, l)
        .failover(with(
            crate::support::switchover("payments", "eu-west", 0),
            Some(READER),
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("operator"), "{}", s.message());
    let e = audited(&c, "the refused failover in the audit trail", |e| {
        e.action == "refused" && e.actor == "reader"
    })
    .await;
    assert!(e.reason.contains("/baton.v1.Coordinator/Failover"), "{e:?}");

    // An agent of eu-west may renew eu-west's lease of payments, not us-east's.
    let answer = retry("eu-west's renewal", || async {
        let mut co = co(&c, l);
        let ka = ka.clone();
        async move {
            let mut stream = co
                .keep_alive(with(
                    tokio_stream::iter(vec![proto::KeepAliveRequest {
                        region: "eu-west".into(),
                        ..ka
                    }]),
                    Some(AGENT_EU),
                ))
                .await?
                .into_inner();
            stream
                .message()
                .await?
                .map(tonic::Response::new)
                .ok_or_else(|| tonic::Status::unavailable("stream ended"))
        }
        .await
    })
    .await;
    assert_eq!(answer.status, proto::KeepAliveStatus::NotHolder as i32);
    for demoted in [false, true] {
        let mut stream = co(&c, l)
            .keep_alive(with(
                tokio_stream::iter(vec![proto::KeepAliveRequest {
                    demoted,
                    token: 1,
                    ..ka.clone()
                }]),
                Some(AGENT_EU),
            ))
            .await
            .unwrap()
            .into_inner();
        let s = stream.message().await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "demoted={demoted}: {s:?}");
        assert!(s.message().contains("eu-west"), "{}", s.message());
    }
    // An agent is no operator.
    let s = co(&c, l)
        .failover(with(
            crate::support::switchover("payments", "eu-west", 0),
            Some(AGENT_EU),
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    // Health targets: redacted for a reader, shown to an admin and an operator.
    let target = |token: &str| {
        let mut a = admin(&c, l);
        let token = token.to_string();
        async move {
            let r = a
                .get_service(with(
                    proto::GetServiceRequest {
                        name: "payments".into(),
                    },
                    Some(&token),
                ))
                .await
                .unwrap()
                .into_inner();
            r.service.unwrap().spec.unwrap().health["us-east"]
                .target
                .clone()
        }
    };
    assert_eq!(target(ROOT).await, SECRET_TARGET);
    assert_eq!(target(OPS).await, SECRET_TARGET);
    let hidden = target(READER).await;
    assert!(hidden.contains("redacted"), "{hidden}");
    let listed = retry("a reader's ListServices", || async {
        co(&c, l)
            .list_services(with(proto::ListServicesRequest::default(), Some(READER)))
            .await
    })
    .await;
    assert!(!format!("{listed:?}").contains("secret-path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_names_the_authenticated_principal() {
    let mut c = start().await;
    let l = leader(&c).await;
    let follower = (l + 1) % 3;

    // `x-baton-actor: automation` is only a note; the principal is the token's name. Sent
    // to a follower, which forwards to the leader with the caller's credentials.
    retry("the freeze", || async {
        let mut req = with(
            proto::FreezeRequest {
                service: "payments".into(),
                freeze: true,
                reason: "maintenance".into(),
            },
            Some(OPS),
        );
        req.metadata_mut()
            .insert("x-baton-actor", "automation".parse().unwrap());
        co(&c, follower).freeze(req).await
    })
    .await;
    let e = audited(&c, "the freeze in the audit trail", |e| {
        e.action == "set-frozen"
    })
    .await;
    assert_eq!(e.actor, "ops");
    assert!(e.reason.contains("[on behalf of automation]"), "{e:?}");

    // Separation of duties: ops requests the switchover, ops may not approve it, ops2 may.
    let requester = Client::with_options(
        c.endpoints(),
        ClientOptions {
            token: Some(OPS.into()),
            // The run waits for the approvals below, then for the holder's TTL.
            timeout: Duration::from_secs(180),
            ..Default::default()
        },
    )
    .unwrap();
    let run = tokio::spawn(async move {
        requester
            .failover(crate::support::switchover("orders", "eu-west", 0))
            .await
    });
    let waiting = eventually(
        Duration::from_secs(20),
        "the run waiting for approval",
        || async {
            let r = co(&c, l)
                .list_workflows(with(
                    proto::ListWorkflowsRequest {
                        service: "orders".into(),
                        limit: 10,
                    },
                    Some(READER),
                ))
                .await
                .ok()?
                .into_inner();
            r.workflows.into_iter().find(|w| w.state == "running")
        },
    )
    .await;
    assert_eq!(waiting.actor, "ops");
    let approve = |token: &'static str| {
        let mut co = co(&c, follower);
        let id = waiting.id;
        async move {
            co.approve(with(
                proto::ApproveRequest {
                    run_id: id,
                    approve: true,
                    reason: "reviewed".into(),
                },
                Some(token),
            ))
            .await
        }
    };
    let s = refusal("ops approving its own run", || approve(OPS)).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("another"), "{}", s.message());
    audited(&c, "the refused approval", |e| {
        e.action == "run.approve" && e.actor == "ops" && e.outcome.starts_with("rejected")
    })
    .await;
    retry("ops2's approval", || approve(OPS2)).await;
    let moved = run.await.unwrap().unwrap();
    assert_eq!(moved.after.unwrap().holder_region, "eu-west");

    // Cluster operations: a snapshot, a learner added and removed, a leadership transfer.
    retry("the snapshot", || async {
        admin(&c, follower)
            .trigger_snapshot(with(proto::TriggerSnapshotRequest {}, Some(ROOT)))
            .await
    })
    .await;
    audited(&c, "the snapshot", |e| {
        e.action == "snapshot" && e.actor == "root"
    })
    .await;

    let j = c.prepare_joiner("eu-west", "");
    c.spawn(j);
    let add = proto::AddNodeRequest {
        id: c.nodes[j].id,
        addr: c.nodes[j].addr.clone(),
        region: "eu-west".into(),
        learner_only: true,
    };
    let s = admin(&c, l)
        .add_node(with(add.clone(), Some(OPS)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    retry("adding the learner", || async {
        admin(&c, follower)
            .add_node(with(add.clone(), Some(ROOT)))
            .await
    })
    .await;
    audited(&c, "the added node", |e| {
        e.action == "node.add" && e.actor == "root" && e.outcome == "ok"
    })
    .await;
    audited(&c, "the refused add-node", |e| {
        e.action == "refused" && e.actor == "ops" && e.reason.contains("AddNode")
    })
    .await;
    let id = c.nodes[j].id;
    retry("removing the learner", || async {
        admin(&c, l)
            .remove_node(with(proto::RemoveNodeRequest { id }, Some(ROOT)))
            .await
    })
    .await;
    audited(&c, "the removed node", |e| {
        e.action == "node.remove" && e.actor == "root"
    })
    .await;
    c.kill(j);

    let l = leader(&c).await;
    let to = c.nodes[(l + 1) % 3].id;
    retry("the leadership transfer", || async {
        admin(&c, (l + 2) % 3)
            .transfer_leadership(with(
                proto::TransferLeadershipRequest {
                    to,
                    campaign: false,
                },
                Some(ROOT),
            ))
            .await
    })
    .await;
    audited(&c, "the leadership transfer", |e| {
        e.action == "leader.transfer" && e.actor == "root" && e.outcome == "ok"
    })
    .await;

    // No entry names a principal the caller merely claimed, and the chain verifies.
    let all = audit(&c).await;
    assert!(all
        .iter()
        .all(|e| e.actor != "automation" || e.action != "set-frozen"));
    let entries: Vec<_> = all.iter().map(baton::convert::audit_from_proto).collect();
    baton::state::audit::verify(&entries, None).unwrap();
}
