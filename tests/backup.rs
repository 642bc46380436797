//! Backup and restore: `baton snapshot save` on a live cluster, `baton snapshot restore`
//! into fresh data directories, and a new cluster that carries on with the same services,
//! tokens and audit chain.

use std::process::{Command, Output};
use std::time::Duration;

use baton::proto::{self, TokenValidity};

use crate::support::{
    agent, baton_bin, client, held, lease, service_toml, switchover, TestCluster,
};

fn baton(c: &TestCluster, args: &[&str]) -> Output {
    Command::new(baton_bin())
        .args(args)
        .args(["--endpoints", &c.endpoints().join(",")])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `baton -w json snapshot save FILE`: the printed record.
fn save(c: &TestCluster, file: &std::path::Path) -> serde_json::Value {
    let out = baton(
        c,
        &["-w", "json", "snapshot", "save", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "save: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Validity of `token` for `service`, as the cluster answers it.
async fn validity(cl: &baton::client::Client, service: &str, token: u64) -> i32 {
    crate::support::eventually(Duration::from_secs(20), "ValidateToken", || async {
        cl.validate_token(service, token)
            .await
            .ok()
            .map(|v| v.validity)
    })
    .await
}

fn services_view(r: &proto::ListServicesResponse) -> Vec<(String, String, u64, i32)> {
    r.services
        .iter()
        .map(|s| {
            let l = s.lease.clone().unwrap_or_default();
            (
                s.spec.clone().unwrap_or_default().name,
                l.holder_region,
                l.token,
                l.state,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_snapshot_keeps_services_tokens_and_the_audit_chain() {
    // Long TTLs: nothing expires while the new cluster comes up, so every lease must come
    // back exactly as saved.
    let services = format!(
        "{}{}",
        service_toml("payments", "1s"),
        service_toml("orders", "1h")
    );
    let mut c = TestCluster::start(3, &services).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);

    let pay_us = agent(&c, "payments", "us-east");
    let pay_eu = agent(&c, "payments", "eu-west");
    let orders_us = agent(&c, "orders", "us-east");
    let first = held(&pay_us).await;
    let orders_token = held(&orders_us).await;
    // A switchover, so the service has a superseded token and a current one above it.
    let moved = cl
        .failover(switchover("payments", "eu-west", first))
        .await
        .unwrap()
        .after
        .unwrap();
    assert!(moved.token > first);
    assert_eq!(held(&pay_eu).await, moved.token);
    let mut spec = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .spec
        .unwrap();
    spec.lease_ttl_ms = 3_600_000;
    cl.put_service(spec, "no expiry during the test")
        .await
        .unwrap();
    for a in [pay_us, pay_eu, orders_us] {
        a.close().await;
    }
    let before = cl
        .list_services(proto::Consistency::Linearizable)
        .await
        .unwrap();
    let audit_before = cl.audit(0, 10_000, None).await.unwrap();
    assert!(audit_before.chain_ok);

    let file = c.root.path().join("backup.snap");
    let saved = save(&c, &file);
    let revision = saved["revision"].as_u64().unwrap();
    let inspect = baton(&c, &["snapshot", "inspect", file.to_str().unwrap()]);
    assert!(inspect.status.success(), "inspect: {}", text(&inspect));
    assert!(saved["sha256"].as_str().unwrap().len() == 64, "{saved}");
    assert_eq!(
        saved["size"].as_u64().unwrap(),
        std::fs::metadata(&file).unwrap().len()
    );
    assert!(revision >= moved.token && revision >= orders_token);
    // Taking a backup is audited (it carries everything, health targets included).
    crate::support::eventually(
        Duration::from_secs(20),
        "the backup in the audit",
        || async {
            let page = cl.audit(0, 10_000, None).await.ok()?;
            page.entries
                .iter()
                .any(|e| e.action == "backup")
                .then_some(())
        },
    )
    .await;
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(c.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");

    // A follower forwards the stream from the leader: the same content, in bounded chunks.
    let leader = c.leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let mut stream = c
        .admin(follower)
        .await
        .save_snapshot(proto::SaveSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut info) = (Vec::new(), None);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= baton::backup::MAX_CHUNK_BYTES);
        info = info.or(chunk.info);
        bytes.extend_from_slice(&chunk.data);
    }
    let info = info.expect("the first chunk describes the backup");
    assert_eq!(info.size, bytes.len() as u64);
    let copy = baton::backup::decode(&bytes).unwrap();
    assert_eq!(copy.sha256, info.sha256);
    assert!(copy.header.revision >= revision);
    assert_eq!(copy.header.source_node, c.nodes[leader].id);

    // The old cluster is gone: every node stopped, every data directory wiped.
    for i in 0..3 {
        assert!(c.terminate(i));
        std::fs::remove_dir_all(c.nodes[i].dir.join("data")).unwrap();
    }
    // Nodes 1 and 2 from their node.toml; node 3 from explicit flags.
    for i in 0..2 {
        let out = baton(
            &c,
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--config",
                c.nodes[i].config.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "restore node {}: {}",
            i + 1,
            text(&out)
        );
    }
    let members = c
        .nodes
        .iter()
        .map(|n| format!("{}={}@{}", n.id, n.addr, n.region))
        .collect::<Vec<_>>()
        .join(",");
    let out = baton(
        &c,
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            c.nodes[2].dir.join("data").to_str().unwrap(),
            "--node-id",
            "3",
            "--members",
            &members,
        ],
    );
    assert!(out.status.success(), "restore node 3: {}", text(&out));
    for i in 0..3 {
        c.spawn(i);
    }
    c.leader(Duration::from_secs(30)).await;
    let cl = client(&c);

    // The same services, holders and tokens.
    let after = crate::support::eventually(Duration::from_secs(20), "services", || async {
        cl.list_services(proto::Consistency::Linearizable)
            .await
            .ok()
    })
    .await;
    assert_eq!(services_view(&after), services_view(&before));
    // Every token answers as it did.
    let current = TokenValidity::Current as i32;
    let superseded = TokenValidity::Superseded as i32;
    assert_eq!(validity(&cl, "payments", moved.token).await, current);
    assert_eq!(validity(&cl, "payments", first).await, superseded);
    assert_eq!(validity(&cl, "orders", orders_token).await, current);

    // The audit trail is the old one, unchanged, and its chain verifies.
    let audit_after = cl.audit(0, 10_000, None).await.unwrap();
    assert!(audit_after.chain_ok);
    assert!(audit_after.entries.len() >= audit_before.entries.len());
    for (a, b) in audit_before.entries.iter().zip(&audit_after.entries) {
        assert_eq!(a.hash, b.hash, "audit entry {} changed", a.seq);
    }
    let out = baton(&c, &["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", text(&out));

    // Tokens never go backwards: the next grant is above everything in the backup.
    let fresh = proto::ServiceSpec {
        name: "fresh".into(),
        regions: vec!["us-east".into(), "eu-west".into()],
        lease_ttl_ms: 1_000,
        ..Default::default()
    };
    cl.put_service(fresh, "after the restore").await.unwrap();
    let fresh_us = agent(&c, "fresh", "us-east");
    let next = held(&fresh_us).await;
    assert!(
        next > revision,
        "new token {next} is not above the backup's revision {revision}"
    );
    assert_eq!(validity(&cl, "fresh", next).await, current);
    // The restored leases are untouched by it.
    assert_eq!(lease(&cl, "payments").await.token, moved.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_truncated_snapshot_is_refused_and_nothing_is_written() {
    let c = TestCluster::start(1, &service_toml("payments", "1h")).await;
    c.leader(Duration::from_secs(20)).await;
    lease(&client(&c), "payments").await;
    let good = c.root.path().join("good.snap");
    save(&c, &good);
    let bytes = std::fs::read(&good).unwrap();

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let corrupt = c.root.path().join("corrupt.snap");
    std::fs::write(&corrupt, &flipped).unwrap();
    let truncated = c.root.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();

    let empty = c.root.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    let absent = c.root.path().join("absent-dir");
    let members = format!("1={}@us-east", c.nodes[0].addr);
    let restore = |file: &std::path::Path, dir: &std::path::Path| {
        baton(
            &c,
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--node-id",
                "1",
                "--members",
                &members,
            ],
        )
    };
    for (file, what) in [(&corrupt, "corrupted"), (&truncated, "truncated")] {
        for dir in [&empty, &absent] {
            let out = restore(file, dir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(5), "{}", text(&out));
            assert!(stderr.contains(what), "{what}: {}", text(&out));
            assert!(stderr.contains("nothing was written"), "{}", text(&out));
        }
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
        assert!(!absent.exists());
        // `inspect` says the same.
        let out = baton(&c, &["snapshot", "inspect", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    }
    // No directory of ours is left behind either.
    let names: Vec<_> = std::fs::read_dir(c.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains("restoring")), "{names:?}");

    // A data directory in use is never overwritten.
    let used = c.root.path().join("used-dir");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep"), b"mine").unwrap();
    let out = restore(&good, &used);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(used.join("keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);

    // The intact file restores.
    let out = restore(&good, &empty);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_dir(&empty).unwrap().count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_audit_trail_names_its_oldest_seq_verifies_and_backs_up() {
    let c = TestCluster::start_with(
        3,
        &service_toml("payments", "1h"),
        "[storage]\naudit_retention = 5\n",
    )
    .await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    for i in 0..12 {
        cl.freeze("payments", i % 2 == 0, "fill the trail")
            .await
            .unwrap();
    }
    // The leader snapshots and keeps the last 5 entries.
    cl.trigger_snapshot().await.unwrap();

    let err = cl.audit(0, 10, None).await.unwrap_err();
    let status = err.status().expect("an answer from the node");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{err}");
    let oldest = baton::wire::oldest_audit_seq(status).expect("the oldest seq kept");
    assert!(oldest >= 8, "{oldest}");
    let msg = status.message();
    assert!(
        msg.contains(&format!("the oldest entry kept is {oldest}"))
            && msg.contains(&format!("baton audit --from {oldest}")),
        "{msg}"
    );
    // From there on, the first entry links to the checkpoint.
    let page = cl.audit(oldest, 100, None).await.unwrap();
    assert!(page.chain_ok);
    assert_eq!(page.entries[0].seq, oldest);

    // `baton audit verify` checks the kept chain from the checkpoint to the head.
    let out = baton(&c, &["-w", "json", "audit", "verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_seq"].as_u64(), Some(oldest), "{v}");
    assert_eq!(v["checkpoint_hash"], page.entries[0].prev_hash.as_str());
    // `baton audit` without --from starts at the oldest entry kept.
    let out = baton(&c, &["-w", "json", "audit"]);
    assert!(out.status.success(), "audit: {}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["seq"].as_u64(), Some(oldest), "{rows}");
    // An explicit compacted --from is an error that says what to do.
    let out = baton(&c, &["audit", "--from", "1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("compacted"), "{}", text(&out));

    // A backup carries the kept trail and checks.
    let file = c.root.path().join("compacted.snap");
    save(&c, &file);
    let b = baton::backup::decode(&std::fs::read(&file).unwrap()).unwrap();
    assert!(b.header.audit_first_seq >= oldest);
    assert_eq!(b.body.audit[0].seq, b.header.audit_first_seq);
    let inspect = baton(&c, &["snapshot", "inspect", file.to_str().unwrap()]);
    assert!(inspect.status.success(), "inspect: {}", text(&inspect));
}
