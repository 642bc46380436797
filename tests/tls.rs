//! Issue 9: TLS on the client listener with client certificates, the peer listener on the
//! same acceptor, and certificates reloaded without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton::cli::cert;
use baton::client::{Client, ClientError, ClientOptions, ClientTls};
use baton::proto::raft_client::RaftClient;
use baton::proto::{self, RaftRequest};
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use rcgen::{Certificate, KeyPair};

use crate::support::{eventually, service_toml, TestCluster};

/// Writes `<stem>.pem` and `<stem>.key` into `dir`.
fn write(dir: &Path, stem: &str, (cert, key): &(Certificate, KeyPair)) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// A CA with node certificates 1..=n and a client `alice` in `dir` (`ca.pem`,
/// `node-<id>.pem/.key`, `client-alice.pem/.key`); returns the CA to issue more.
fn make_pki(dir: &Path, n: u64) -> (Certificate, KeyPair) {
    let ca = cert::make_ca("test CA").unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.0.pem()).unwrap();
    for id in 1..=n {
        write(
            dir,
            &format!("node-{id}"),
            &cert::make_node(id, &[], &ca.0, &ca.1).unwrap(),
        );
    }
    write(
        dir,
        "client-alice",
        &cert::make_client("alice", &ca.0, &ca.1).unwrap(),
    );
    ca
}

/// Turns on `[client_tls]` (client certificates required) with the node certificates in
/// `certs`.
fn enable_client_tls(c: &TestCluster, certs: &Path) {
    for n in &c.nodes {
        let mut text = std::fs::read_to_string(&n.config).unwrap();
        text.push_str(&format!(
            "\n[client_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_auth = \"required\"\n",
            certs.join("ca.pem").display(),
            certs.join(format!("node-{}.pem", n.id)).display(),
            certs.join(format!("node-{}.key", n.id)).display()
        ));
        std::fs::write(&n.config, text).unwrap();
    }
}

/// A client of the cluster trusting `ca`, presenting `identity` (`dir`, stem) if given.
fn tls_client(c: &TestCluster, ca: &Path, identity: Option<(&Path, &str)>) -> Client {
    let files =
        identity.map(|(d, stem)| (d.join(format!("{stem}.pem")), d.join(format!("{stem}.key"))));
    let tls = ClientTls::from_files(
        Some(ca),
        files.as_ref().map(|f| f.0.as_path()),
        files.as_ref().map(|f| f.1.as_path()),
    )
    .unwrap();
    Client::with_options(
        c.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(2),
            tls,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A linearizable read with `cl`, retried until it answers.
async fn read(cl: &Client) -> proto::Lease {
    crate::support::lease(cl, "payments").await
}

/// Asserts `cl` cannot read: the connection is refused at the TLS handshake, so the client
/// sees no node that can serve (UNAVAILABLE), never an answer.
async fn cannot_read(cl: &Client, who: &str) {
    match cl
        .primary("payments", proto::Consistency::Linearizable)
        .await
    {
        Ok(r) => panic!("{who} could read: {r:?}"),
        Err(e @ ClientError::Unavailable { .. }) => {
            assert_eq!(e.code(), tonic::Code::Unavailable)
        }
        Err(e) => panic!("{who}: expected UNAVAILABLE, got {e}"),
    }
}

/// A vote at term 1 from `from` (harmless once the cluster is past term 1), as a Raft
/// message to the peer listener.
fn vote(c: &TestCluster, from: u64) -> RaftRequest {
    let last = LogId::new(CommittedLeaderId::new(1, from), 0);
    RaftRequest {
        to: None,
        leader_confirmed_age_ms: None,
        cluster: c.cluster.clone(),
        from,
        payload: bincode::serialize(&VoteRequest::new(Vote::new(1, from), Some(last))).unwrap(),
    }
}

/// A Raft client of `addr` over TLS trusting `ca`, presenting `dir/stem.pem`.
fn raft_client(
    addr: &str,
    ca: &Path,
    dir: &Path,
    stem: &str,
) -> RaftClient<tonic::transport::Channel> {
    RaftClient::new(tls_channel(addr, ca, dir, stem))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked_on_both_listeners() {
    let mut c = TestCluster::prepare(3, &service_toml("payments", "1h"), "");
    let certs = c.root.path().join("certs");
    let (ca, ca_key) = make_pki(&certs, 3);
    let foreign = c.root.path().join("foreign");
    make_pki(&foreign, 3);
    // An expired client certificate of the right CA.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mallory");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let expired = params.signed_by(&key, &ca, &ca_key).unwrap();
    write(&certs, "client-expired", &(expired, key));
    c.enable_peer_tls(&certs);
    enable_client_tls(&c, &certs);
    for i in 0..3 {
        c.spawn(i);
    }
    let ca_pem = certs.join("ca.pem");

    // A good client certificate reads.
    let alice = tls_client(&c, &ca_pem, Some((&certs, "client-alice")));
    let alice_tls = ClientTls::from_files(
        Some(&ca_pem),
        Some(&certs.join("client-alice.pem")),
        Some(&certs.join("client-alice.key")),
    )
    .unwrap();
    read(&alice).await;

    // Refused at the handshake: no certificate, another CA's, an expired one, plaintext.
    cannot_read(
        &tls_client(&c, &ca_pem, None),
        "a client without a certificate",
    )
    .await;
    cannot_read(
        &tls_client(&c, &ca_pem, Some((&foreign, "client-alice"))),
        "a certificate of another CA",
    )
    .await;
    cannot_read(
        &tls_client(&c, &ca_pem, Some((&certs, "client-expired"))),
        "an expired certificate",
    )
    .await;
    let plain = Client::with_options(
        c.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    match plain
        .primary("payments", proto::Consistency::Linearizable)
        .await
    {
        Ok(r) => panic!("a plaintext client could read: {r:?}"),
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
            assert!(e.to_string().contains("pass --cacert"), "{e}");
        }
    }

    // The peer listener: a client certificate of the cluster CA gets through the handshake
    // but names no node, so it may not speak Raft.
    let peer = c.nodes[0].peer_addr.clone();
    let e = raft_client(&peer, &ca_pem, &certs, "client-alice")
        .vote(vote(&c, 2))
        .await
        .expect_err("a client certificate spoke Raft");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A node of another cluster (another CA) cannot vote.
    let e = raft_client(&peer, &foreign.join("ca.pem"), &foreign, "node-2")
        .vote(vote(&c, 2))
        .await
        .expect_err("a node of another CA voted");
    assert_ne!(e.code(), tonic::Code::Ok);
    // Control: the cluster's own node 2 certificate is answered by Raft.
    raft_client(&peer, &ca_pem, &certs, "node-2")
        .vote(vote(&c, 2))
        .await
        .expect("a member's vote request must reach Raft");
    // The cluster serves on, and writes go through over TLS (from every node's side).
    for first in 0..3 {
        let mut e = c.endpoints();
        let f = e.remove(first);
        e.insert(0, f);
        let cl = Client::with_options(
            e,
            ClientOptions {
                timeout: Duration::from_secs(10),
                tls: alice_tls.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let frozen = cl.freeze("payments", first % 2 == 0, "tls test").await;
        assert!(frozen.is_ok(), "a write over TLS failed: {frozen:?}");
    }
}

/// The certificate node 1's client listener presents to a new connection.
async fn served_cert(addr: &str, ca: &Path, dir: &Path) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(dir.join("client-alice.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("client-alice.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_a_restart() {
    let mut c = TestCluster::prepare(1, &service_toml("payments", "1h"), "");
    let certs = c.root.path().join("certs");
    let (ca, ca_key) = make_pki(&certs, 1);
    enable_client_tls(&c, &certs);
    c.spawn(0);
    let ca_pem = certs.join("ca.pem");
    let alice = tls_client(&c, &ca_pem, Some((&certs, "client-alice")));
    read(&alice).await;
    let addr = c.nodes[0].addr.clone();
    let pem = |p: PathBuf| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(p)
            .unwrap()
            .to_vec()
    };
    let old = pem(certs.join("node-1.pem"));
    assert_eq!(served_cert(&addr, &ca_pem, &certs).await, Some(old.clone()));

    // Rotate: a new key and certificate for node 1, written in place (key first).
    let (cert, key) = cert::make_node(1, &[], &ca, &ca_key).unwrap();
    let new = cert.der().to_vec();
    std::fs::write(certs.join("node-1.key"), key.serialize_pem()).unwrap();
    std::fs::write(certs.join("node-1.pem"), cert.pem()).unwrap();
    eventually(
        Duration::from_secs(30),
        "new connections to get the new certificate",
        || async { (served_cert(&addr, &ca_pem, &certs).await? == new).then_some(()) },
    )
    .await;
    assert_ne!(new, old);
    // The client connected before the rotation still reads, and so does a new one.
    read(&alice).await;
    read(&tls_client(&c, &ca_pem, Some((&certs, "client-alice")))).await;

    // A broken rotation (a key that does not match) is refused loudly; the node keeps
    // serving the last good certificate.
    let failed = |c: &TestCluster| c.log(0).matches("RELOAD FAILED").count();
    let failed_before = failed(&c);
    let (_, other_key) = cert::make_node(1, &[], &ca, &ca_key).unwrap();
    std::fs::write(certs.join("node-1.key"), other_key.serialize_pem()).unwrap();
    eventually(
        Duration::from_secs(30),
        "the failed reload to be logged",
        || async { (failed(&c) > failed_before).then_some(()) },
    )
    .await;
    assert_eq!(served_cert(&addr, &ca_pem, &certs).await, Some(new.clone()));
    read(&tls_client(&c, &ca_pem, Some((&certs, "client-alice")))).await;

    // SIGHUP reloads (whether or not the poll saw the files first, the signal reloads).
    let (cert2, key2) = cert::make_node(1, &[], &ca, &ca_key).unwrap();
    std::fs::write(certs.join("node-1.key"), key2.serialize_pem()).unwrap();
    std::fs::write(certs.join("node-1.pem"), cert2.pem()).unwrap();
    c.signal(0, libc::SIGHUP);
    eventually(Duration::from_secs(30), "a reload on SIGHUP", || async {
        c.log(0)
            .contains("certificates reloaded on SIGHUP")
            .then_some(())
    })
    .await;
    assert_eq!(
        served_cert(&addr, &ca_pem, &certs).await,
        Some(cert2.der().to_vec())
    );
    assert!(c.nodes[0].is_running());
    read(&alice).await;
}

/// A client of `endpoint` alone (so its calls reach that node first) presenting
/// `dir/stem.pem`.
fn tls_client_at(endpoint: String, ca: &Path, dir: &Path, stem: &str) -> Client {
    let tls = ClientTls::from_files(
        Some(ca),
        Some(&dir.join(format!("{stem}.pem"))),
        Some(&dir.join(format!("{stem}.key"))),
    )
    .unwrap();
    Client::with_options(
        vec![endpoint],
        ClientOptions {
            timeout: Duration::from_secs(5),
            tls,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The answer of `f`, retried while the cluster is busy (UNAVAILABLE, DEADLINE_EXCEEDED,
/// outcome unknown) for up to a minute; any other answer is returned.
async fn settled<T, Fut>(mut f: impl FnMut() -> Fut) -> Result<T, ClientError>
where
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_principals_get_their_roles_through_a_follower_and_name_the_audit() {
    let auth = "[auth]\nenabled = true\n\
                [[auth.certs]]\nname = \"ops\"\nroles = [\"operator\"]\n\
                [[auth.certs]]\nname = \"viewer\"\nroles = [\"reader\"]\n";
    let mut c = TestCluster::prepare(3, &service_toml("payments", "1h"), auth);
    let certs = c.root.path().join("certs");
    let (ca, ca_key) = make_pki(&certs, 3);
    for name in ["ops", "viewer"] {
        write(
            &certs,
            &format!("client-{name}"),
            &cert::make_client(name, &ca, &ca_key).unwrap(),
        );
    }
    c.enable_peer_tls(&certs);
    enable_client_tls(&c, &certs);
    for i in 0..3 {
        c.spawn(i);
    }
    let ca_pem = certs.join("ca.pem");
    let viewer = tls_client(&c, &ca_pem, Some((&certs, "client-viewer")));
    read(&viewer).await;
    let leader_id = eventually(Duration::from_secs(30), "a leader", || async {
        viewer
            .status()
            .await
            .ok()
            .map(|s| s.leader_id)
            .filter(|l| *l != 0)
    })
    .await;
    let follower = c.nodes.iter().position(|n| n.id != leader_id).unwrap();
    let at_follower = |stem: &str| {
        tls_client_at(
            c.nodes[follower].addr.clone(),
            &ca_pem,
            &certs,
            &format!("client-{stem}"),
        )
    };

    // The operator's certificate may freeze, sent to a follower: the follower forwards the
    // call with its own node certificate, and the leader believes the forwarded principal.
    let ops = at_follower("ops");
    settled(|| ops.freeze("payments", true, "maintenance"))
        .await
        .expect("an operator certificate may freeze");

    // A reader's certificate may read but not freeze; a certificate of the cluster CA that
    // [auth] does not list has no role at all.
    let v = at_follower("viewer");
    read(&v).await;
    let e = settled(|| v.freeze("payments", false, "not mine"))
        .await
        .expect_err("a reader froze a service");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let alice = at_follower("alice");
    let e = settled(|| alice.primary("payments", proto::Consistency::Linearizable))
        .await
        .expect_err("an unlisted certificate read");
    assert!(
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{e}"
    );

    // The audit names the certificates' principals: the freeze by `ops`, the refusal of
    // `viewer`.
    let entries = eventually(Duration::from_secs(30), "the audit entries", || async {
        let page = ops.audit(0, 1000, None).await.ok()?;
        let froze = page
            .entries
            .iter()
            .any(|e| e.action == "set-frozen" && e.actor == "ops");
        let refused = page
            .entries
            .iter()
            .any(|e| e.action == "refused" && e.actor == "viewer");
        (froze && refused).then_some(page.entries)
    })
    .await;
    assert!(
        entries.iter().all(|e| !e.actor.starts_with("anonymous")),
        "{entries:?}"
    );
}

/// The SHA-256 the shipped example lists for `ci-deploy` (a placeholder nobody knows a token
/// for); the test maps it to [`CI_TOKEN`]'s.
const EXAMPLE_CI_HASH: &str = "b3024e0a661b88ad81cb607180bca9604f5ffb4a1307ff8a5f39f1b31efb58e5";
const CI_TOKEN: &str = "baton_test_ci_deploy_token";

/// Writes `cluster/three-region/node<id>.toml` as shipped over each node's config, with only
/// its host names, ports, paths and the token placeholder pointed at this test's loopback
/// ports, files and token.
fn localize_three_region_example(c: &TestCluster, certs: &Path) {
    for n in &c.nodes {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("cluster/three-region/node{}.toml", n.id));
        let mut t = std::fs::read_to_string(shipped).unwrap();
        for m in &c.nodes {
            let host = format!("baton-{}.{}.example.internal", m.id, m.region);
            t = t
                .replace(&format!("{host}:7100"), &m.addr)
                .replace(&format!("{host}:7200"), &m.peer_addr);
        }
        t = t
            .replace("0.0.0.0:7100", &n.addr)
            .replace("0.0.0.0:7200", &n.peer_addr)
            .replace("127.0.0.1:7300", &n.admin_addr)
            .replace("/var/lib/baton", &n.dir.join("data").display().to_string())
            .replace("/etc/baton/tls", &certs.display().to_string())
            .replace(
                EXAMPLE_CI_HASH,
                &hex::encode(baton::auth::policy::token_hash(CI_TOKEN)),
            );
        assert!(
            !t.contains("example.internal") && !t.contains("0.0.0.0") && !t.contains("/etc/"),
            "the example has an address or path this test does not map:\n{t}"
        );
        std::fs::write(&n.config, t).unwrap();
    }
}

/// A tonic channel to `addr` over TLS trusting `ca`, presenting `dir/stem.pem`.
fn tls_channel(addr: &str, ca: &Path, dir: &Path, stem: &str) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(dir.join(format!("{stem}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("{stem}.key"))).unwrap(),
        ));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// The secure example of the README (`cluster/three-region/`: peer mTLS, client mTLS,
/// certificate principals with roles, agents bound to their region) runs as shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_three_region_example_is_secure_and_runs() {
    let mut c = TestCluster::prepare(3, "", "");
    let certs = c.root.path().join("certs");
    let (ca, ca_key) = make_pki(&certs, 3);
    for name in ["oncall", "dashboard", "agent-us-east"] {
        write(
            &certs,
            &format!("client-{name}"),
            &cert::make_client(name, &ca, &ca_key).unwrap(),
        );
    }
    localize_three_region_example(&c, &certs);
    for i in 0..3 {
        c.spawn(i);
    }
    let ca_pem = certs.join("ca.pem");
    let as_ = |stem: &str| tls_client(&c, &ca_pem, Some((&certs, &format!("client-{stem}"))));

    // A dashboard reads; a plaintext client and one without a certificate get nothing.
    let dashboard = as_("dashboard");
    read(&dashboard).await;
    cannot_read(
        &tls_client(&c, &ca_pem, None),
        "a client without a certificate",
    )
    .await;
    let plain = Client::with_options(
        c.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    cannot_read(&plain, "a plaintext client").await;

    // The us-east agent holds its region's lease, and cannot renew eu-west's.
    let agent = as_("agent-us-east");
    let lease = agent.keep_alive(
        "payments",
        "us-east",
        "host-a",
        baton::client::LeaseOptions {
            auto_ack_demotion: true,
            ..Default::default()
        },
    );
    let token = crate::support::held(&lease).await;
    assert!(token > 0);
    let co = proto::coordinator_client::CoordinatorClient::new(tls_channel(
        &c.nodes[0].addr,
        &ca_pem,
        &certs,
        "client-agent-us-east",
    ));
    let renew_eu = proto::KeepAliveRequest {
        service: "payments".into(),
        region: "eu-west".into(),
        agent_id: "host-a".into(),
        ..Default::default()
    };
    let refused = eventually(Duration::from_secs(30), "a refused renewal", || {
        let mut co = co.clone();
        let r = renew_eu.clone();
        async move {
            let status = match co.keep_alive(tokio_stream::iter(vec![r])).await {
                Err(s) => s,
                Ok(resp) => resp.into_inner().message().await.err()?,
            };
            (status.code() != tonic::Code::Unavailable).then_some(status)
        }
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The on-call operator freezes; the dashboard may not; the audit names both.
    let oncall = as_("oncall");
    settled(|| oncall.freeze("payments", true, "incident 42"))
        .await
        .expect("the operator's freeze");
    let e = settled(|| dashboard.freeze("payments", false, "oops"))
        .await
        .expect_err("a reader froze");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // A node's certificate is no client identity: it names no principal.
    let node_as_client = as_node_client(&c, &ca_pem, &certs, "node-2");
    let e = settled(|| node_as_client.freeze("payments", false, "a node's key"))
        .await
        .expect_err("a node certificate acted as a client");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // The CI token (sent with the dashboard's certificate for the handshake) names its own
    // principal, an operator.
    let ci = Client::with_options(
        c.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(5),
            token: Some(CI_TOKEN.into()),
            tls: ClientTls::from_files(
                Some(&ca_pem),
                Some(&certs.join("client-dashboard.pem")),
                Some(&certs.join("client-dashboard.key")),
            )
            .unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    settled(|| ci.freeze("payments", false, "deploy done"))
        .await
        .expect("the CI token's unfreeze");
    eventually(Duration::from_secs(30), "the audit entries", || async {
        let page = oncall.audit(0, 1000, None).await.ok()?;
        let by = |action: &str, actor: &str| {
            page.entries
                .iter()
                .any(|e| e.action == action && e.actor == actor)
        };
        (by("set-frozen", "oncall") && by("refused", "dashboard") && by("set-frozen", "ci-deploy"))
            .then_some(())
    })
    .await;
}

/// A client presenting node certificate `dir/stem.pem` as if it were a client's.
fn as_node_client(c: &TestCluster, ca: &Path, dir: &Path, stem: &str) -> Client {
    tls_client(c, ca, Some((dir, stem)))
}
