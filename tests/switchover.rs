//! (d) A switchover fences the old holder, raises the token, and `ValidateToken` calls the old
//! token superseded.

use std::time::Duration;

use baton::proto::{self, Consistency, TokenValidity};

use crate::support::{agent, client, held, lease, service_toml, switchover, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_raises_the_token_and_supersedes_the_old_one() {
    let c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let eu = agent(&c, "payments", "eu-west");
    let old = held(&us).await;
    assert_eq!(lease(&cl, "payments").await.holder_region, "us-east");

    // Dry run: explains, changes nothing.
    let mut dry = switchover("payments", "eu-west", old);
    dry.dry_run = true;
    let plan = cl.failover(dry).await.unwrap();
    assert!(plan.dry_run);
    assert!(plan.checks.iter().all(|c| c.passed), "{:?}", plan.checks);
    assert_eq!(lease(&cl, "payments").await.token, old);

    let r = cl
        .failover(switchover("payments", "eu-west", old))
        .await
        .unwrap();
    let after = r.after.unwrap();
    assert_eq!(after.holder_region, "eu-west");
    assert!(
        after.token > old,
        "token must rise: {old} -> {}",
        after.token
    );
    assert_eq!(after.state, proto::LeaseState::Held as i32);
    assert!(
        ["demotion-ack", "ttl-expired"].contains(&r.fenced_by.as_str()),
        "fenced by {}",
        r.fenced_by
    );
    // The old holder stopped acting before the new one was granted.
    assert!(!us.is_valid(), "us-east still believes it holds the lease");

    let v = cl.validate_token("payments", old).await.unwrap();
    assert_eq!(v.validity, TokenValidity::Superseded as i32);
    let v = cl.validate_token("payments", after.token).await.unwrap();
    assert_eq!(v.validity, TokenValidity::Current as i32);
    let v = cl
        .validate_token("payments", after.token + 100)
        .await
        .unwrap();
    assert_eq!(v.validity, TokenValidity::Unknown as i32);

    // The new holder's agent picks the lease up with the new token.
    let new = held(&eu).await;
    assert_eq!(new, after.token);

    // A stale compare-and-set is refused and changes nothing.
    let err = cl
        .failover(switchover("payments", "ap-south", old))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(lease(&cl, "payments").await.token, after.token);

    // The audit trail records who moved it and why, and its chain verifies.
    let audit = cl.audit(0, 1000, None).await.unwrap();
    assert!(audit.chain_ok);
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"run.start") && actions.contains(&"run.step-done"),
        "{actions:?}"
    );
    assert!(audit
        .entries
        .iter()
        .any(|e| e.reason == "test: move payments to eu-west"));

    // Local reads on every node converge on the new holder.
    for i in 0..3 {
        let mut co = c.coordinator(i).await;
        crate::support::eventually(Duration::from_secs(10), "local read to converge", || {
            let mut co = co.clone();
            async move {
                let r = co
                    .get_primary(proto::GetPrimaryRequest {
                        service: "payments".into(),
                        consistency: Consistency::Local as i32,
                    })
                    .await
                    .ok()?
                    .into_inner();
                (r.lease?.token == new).then_some(())
            }
        })
        .await;
        let _ = &mut co;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_fenced_by_its_ttl_before_the_new_grant() {
    let c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let old = held(&us).await;
    // The holder's agent dies without acknowledging anything (closed and waited for: a
    // merely dropped session could still answer the coming revocation before it noticed).
    us.close().await;
    let r = cl
        .failover(switchover("payments", "eu-west", 0))
        .await
        .unwrap();
    let after = r.after.unwrap();
    assert!(after.token > old);
    assert!(
        r.fenced_by == "ttl-expired" || r.fenced_by == "vacant",
        "nobody acknowledged, so only the TTL (or an expiry) can fence: {}",
        r.fenced_by
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_pushed_to_the_holder_without_waiting_for_its_next_renewal() {
    // A holder that renews only once an hour: without the push it would hear of the
    // revocation at its next renewal, long after its validity (from the one renewal it made)
    // ran out, so it would never be told to demote while it still holds the lease.
    let c = TestCluster::start(3, &service_toml("payments", "60s")).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = client(&c).keep_alive(
        "payments",
        "us-east",
        "test-agent-us-east",
        baton::client::LeaseOptions {
            renew_interval: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    );
    let _eu = agent(&c, "payments", "eu-west");
    let old = held(&us).await;
    // The switchover waits for the demotion (or the TTL): run it aside.
    let mover = tokio::spawn(async move {
        cl.with_timeout(Duration::from_secs(120))
            .failover(switchover("payments", "eu-west", old))
            .await
    });
    let mut status = us.status();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, baton::client::LeaseStatus::Revoking { .. })),
    )
    .await
    .expect("the holder was not told of the revocation")
    .expect("the lease session ended");
    // (Revoking, not Lost: it was told while its lease was still valid, in time to demote.)
    mover.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_pushed_to_the_new_holder_without_waiting_for_its_next_renewal() {
    // The new holder renews only once an hour: without the push it would learn of its grant
    // an hour later.
    let c = TestCluster::start(3, &service_toml("payments", "10s")).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let eu = client(&c).keep_alive(
        "payments",
        "eu-west",
        "test-agent-eu-west",
        baton::client::LeaseOptions {
            auto_ack_demotion: true,
            renew_interval: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    );
    let old = held(&us).await;
    let r = cl
        .with_timeout(Duration::from_secs(60))
        .failover(switchover("payments", "eu-west", old))
        .await
        .unwrap();
    assert_eq!(held(&eu).await, r.after.unwrap().token);
}
