//! (e) Bad input gets the right gRPC code and a message a person can act on, and changes
//! nothing.

use std::time::Duration;

use baton::proto::{
    Consistency, DeleteServiceRequest, FailoverRequest, GetPrimaryRequest, ListAuditRequest,
    PutServiceRequest, ServiceSpec, ValidateTokenRequest, WatchRequest,
};
use tonic::Code;

use crate::support::{eventually, service_toml, TestCluster};

async fn snapshot(c: &TestCluster, leader: usize) -> (u64, u64, usize) {
    let mut co = c.coordinator(leader).await;
    let p = co
        .get_primary(GetPrimaryRequest {
            service: "payments".into(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let audit = co
        .list_audit(ListAuditRequest {
            from_seq: 0,
            limit: 1000,
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (p.revision, p.lease.unwrap().token, audit.entries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_right_code_and_changes_nothing() {
    let c = TestCluster::start(3, &service_toml("payments", "1h")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut co = c.coordinator(leader).await;
    eventually(Duration::from_secs(10), "payments to exist", || {
        let mut co = co.clone();
        async move {
            co.get_primary(GetPrimaryRequest {
                service: "payments".into(),
                consistency: 0,
            })
            .await
            .ok()
        }
    })
    .await;
    let before = snapshot(&c, leader).await;

    let failover = |service: &str, to: &str, reason: &str, expected: u64| FailoverRequest {
        service: service.into(),
        to_region: to.into(),
        reason: reason.into(),
        expected_token: expected,
        dry_run: false,
    };
    let cases: Vec<(FailoverRequest, Code, &str)> = vec![
        (
            failover("nope", "eu-west", "r", 0),
            Code::NotFound,
            "does not exist",
        ),
        (
            failover("payments", "mars-1", "r", 0),
            Code::InvalidArgument,
            "not a candidate region",
        ),
        (
            failover("payments", "eu-west", "", 0),
            Code::InvalidArgument,
            "reason is required",
        ),
        (
            failover("payments", "eu-west", "  ", 0),
            Code::InvalidArgument,
            "reason is required",
        ),
        (
            failover(&"p".repeat(300), "eu-west", "r", 0),
            Code::InvalidArgument,
            "limit is 63",
        ),
        (
            failover("payments", &"r".repeat(64), "r", 0),
            Code::InvalidArgument,
            "limit is 63",
        ),
        (
            failover("Pay$", "eu-west", "r", 0),
            Code::InvalidArgument,
            "contains",
        ),
        (
            failover("payments", "eu-west", "r", before.1 + 1000),
            Code::FailedPrecondition,
            "not the expected",
        ),
        (
            failover("payments", "us-east", "r", 0),
            Code::FailedPrecondition,
            "already primary",
        ),
        (
            failover("payments", "eu-west", &"x".repeat(2000), 0),
            Code::InvalidArgument,
            "limit is 1024",
        ),
    ];
    for (node, (req, code, needle)) in [leader, (leader + 1) % 3].into_iter().cycle().zip(cases) {
        let mut co = c.coordinator(node).await;
        let err = co
            .failover(req.clone())
            .await
            .expect_err(&format!("{req:?} must fail"));
        assert_eq!(err.code(), code, "{req:?}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{req:?}: message {:?} lacks {needle:?}",
            err.message()
        );
    }
    // A failed compare-and-set names the current token in its structured details (google.rpc
    // ErrorInfo), also through a follower that forwarded it.
    for node in [leader, (leader + 1) % 3] {
        let err = c
            .coordinator(node)
            .await
            .failover(failover("payments", "eu-west", "r", before.1 + 1000))
            .await
            .unwrap_err();
        assert_eq!(baton::wire::current_token(&err), Some(before.1), "{err:?}");
    }

    let err = co
        .get_primary(GetPrimaryRequest {
            service: "nope".into(),
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = co
        .validate_token(ValidateTokenRequest {
            service: "UPPER".into(),
            token: 1,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut admin = c.admin(leader).await;
    let bad_spec = ServiceSpec {
        name: "orders".into(),
        regions: vec!["us-east".into(), "us-east".into()],
        lease_ttl_ms: 5000,
        ..Default::default()
    };
    let err = admin
        .put_service(PutServiceRequest {
            spec: Some(bad_spec),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("twice"), "{}", err.message());
    let short_ttl = ServiceSpec {
        name: "orders".into(),
        regions: vec!["us-east".into()],
        lease_ttl_ms: 100,
        ..Default::default()
    };
    let err = admin
        .put_service(PutServiceRequest {
            spec: Some(short_ttl),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("three heartbeats"),
        "{}",
        err.message()
    );
    let err = admin
        .delete_service(DeleteServiceRequest {
            name: "payments".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A watch from a revision that never existed yet is fine; a malformed name is not.
    let err = co
        .watch(WatchRequest {
            services: vec!["a b".into()],
            start_revision: 0,
            progress_interval_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Oversized request bodies are refused by the transport limit, not half-applied.
    let after = snapshot(&c, leader).await;
    assert_eq!(
        before, after,
        "bad input changed the state or the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_error_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "id = 1\nregion = \"us-east\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n[timing]\nheartbeat = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::baton_bin())
        .args(["server", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("heartbeat"), "stderr: {err}");
}
