//! Automated failover and failback (issue: multi-vantage health, lease expiry, policy,
//! resumable workflows, approvals).

use std::time::Duration;

use baton::proto::{self, EventKind};

use crate::support::{
    agent, client, eventually, held, lease, service_with_health, switchover, workflows,
    HealthServer, TestCluster,
};

/// Waits until the cluster sees `region` of payments as healthy (a majority of vantages).
async fn healthy_again(cl: &baton::client::Client, region: &str) {
    eventually(
        Duration::from_secs(20),
        "the region to be healthy again",
        || async {
            let p = cl.plan("payments").await.ok()?;
            let row = p.candidates.iter().find(|c| c.region == region)?;
            row.health.starts_with("up").then_some(())
        },
    )
    .await;
}

async fn three_health() -> (HealthServer, HealthServer, HealthServer) {
    (
        HealthServer::start().await,
        HealthServer::start().await,
        HealthServer::start().await,
    )
}

/// Waits for a GRANTED event of `service` to `region`; returns its token.
async fn granted_to(w: &mut baton::client::Watcher, region: &str) -> u64 {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            for e in r.events {
                let l = e.lease.unwrap_or_default();
                if e.kind == EventKind::Granted as i32 && l.holder_region == region {
                    return l.token;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no grant to {region} was watched"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_regions_health_failing_moves_the_lease_and_watchers_see_it() {
    let (us, eu, ap) = three_health().await;
    let svc = service_with_health(&[("us-east", &us), ("eu-west", &eu), ("ap-south", &ap)], "");
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let a_us = agent(&c, "payments", "us-east");
    let _a_eu = agent(&c, "payments", "eu-west");
    let old = held(&a_us).await;
    let mut w = cl.watch(vec!["payments".into()], 0);
    w.next().await.unwrap().unwrap();

    us.set_healthy(false);
    let token = granted_to(&mut w, "eu-west").await;
    assert!(token > old);
    assert!(!a_us.is_valid(), "the old holder must have demoted");
    let run = eventually(Duration::from_secs(30), "the run to finish", || async {
        workflows(&c, "payments")
            .await
            .into_iter()
            .find(|r| r.token_after == token && r.state != "running")
    })
    .await;
    assert_eq!(run.kind, "failover");
    assert!(run.trigger.starts_with("health"), "{}", run.trigger);
    assert_eq!(run.state, "succeeded");
    assert!(run.detected_unix_ms > 0 && run.decided_unix_ms >= run.detected_unix_ms);
    assert!(run.fenced_unix_ms >= run.decided_unix_ms && run.granted_unix_ms >= run.fenced_unix_ms);
    assert!(run.verified_unix_ms >= run.granted_unix_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vantage_seeing_the_region_fail_does_not_fail_over() {
    let (us, eu, ap) = three_health().await;
    let svc = service_with_health(&[("us-east", &us), ("eu-west", &eu), ("ap-south", &ap)], "");
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let a_us = agent(&c, "payments", "us-east");
    let token = held(&a_us).await;
    us.fail_only_for("node-2@eu-west");
    // Wait until node 2's failing verdict is committed...
    eventually(Duration::from_secs(20), "node 2's observation", || async {
        let s = cl.get_service("payments").await.ok()?.service?;
        s.observations
            .iter()
            .any(|o| o.region == "us-east" && o.vantage_node == 2 && !o.healthy)
            .then_some(())
    })
    .await;
    // ...then the decision on that state is to do nothing, and nothing was started.
    let plan = cl.plan("payments").await.unwrap();
    assert!(
        plan.next_action.starts_with("nothing"),
        "{}",
        plan.next_action
    );
    let us_row = plan
        .candidates
        .iter()
        .find(|c| c.region == "us-east")
        .unwrap();
    assert!(us_row.health.contains("1 of 3"), "{}", us_row.health);
    assert!(workflows(&c, "payments").await.is_empty());
    assert_eq!(lease(&cl, "payments").await.token, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_granted_to_the_next_region() {
    let svc = "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n";
    let c = TestCluster::start(3, svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let a_us = agent(&c, "payments", "us-east");
    let _a_eu = agent(&c, "payments", "eu-west");
    let old = held(&a_us).await;
    let mut w = cl.watch(vec!["payments".into()], 0);
    w.next().await.unwrap().unwrap();
    drop(a_us); // the holder dies: no renewal, no ack
                // us-east is still the first choice for a vacant lease, but no agent renews it there...
    let token = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            if let Some(e) = r
                .events
                .iter()
                .find(|e| e.kind == EventKind::Granted as i32)
            {
                return e.lease.clone().unwrap();
            }
        }
    })
    .await
    .expect("a grant after the expiry");
    assert!(token.token > old);
    let runs = workflows(&c, "payments").await;
    assert!(
        runs.iter().any(|r| r.trigger == "lease expired"),
        "{runs:?}"
    );
}

fn approval_plan() -> &'static str {
    "[services.plans]\nswitchover = [\n  { step = \"precheck\", timeout = \"5s\" },\n  { step = \"approval\" },\n  { step = \"fence\" },\n  { step = \"grant\", on_failure = \"retry(3)\" },\n]\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gated_run_waits_and_survives_a_leader_kill() {
    let svc = format!(
        "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n{}",
        approval_plan()
    );
    let mut c = TestCluster::start(3, &svc).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let a_us = agent(&c, "payments", "us-east");
    let a_eu = agent(&c, "payments", "eu-west");
    let old = held(&a_us).await;

    // The operator's switchover blocks at the approval step.
    let cl2 = cl.clone();
    let pending =
        tokio::spawn(async move { cl2.failover(switchover("payments", "eu-west", old)).await });
    let run = eventually(
        Duration::from_secs(20),
        "the run to wait for approval",
        || async {
            workflows(&c, "payments").await.into_iter().find(|r| {
                r.state == "running"
                    && r.steps
                        .get(r.current_step as usize)
                        .is_some_and(|s| s.kind == "approval")
            })
        },
    )
    .await;
    assert_eq!(
        lease(&cl, "payments").await.token,
        old,
        "nothing moves before approval"
    );

    // The leader dies mid-run; the new leader keeps the run where it was.
    c.kill(leader);
    c.leader(Duration::from_secs(20)).await;
    let _ = pending.await;
    let again = workflows(&c, "payments")
        .await
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert_eq!(again.current_step, run.current_step);
    assert_eq!(again.state, "running");

    cl.approve(run.id, true, "change ticket 42").await.unwrap();
    let done = eventually(Duration::from_secs(20), "the run to finish", || async {
        workflows(&c, "payments")
            .await
            .into_iter()
            .find(|r| r.id == run.id && r.state != "running")
    })
    .await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(held(&a_eu).await, done.token_after);
    // Each step ran once: one start and one done per step, one grant.
    let audit = cl.audit(0, 1000, Some("payments")).await.unwrap().entries;
    let grants = audit
        .iter()
        .filter(|e| e.action == "run.step-done" && e.reason.starts_with("granted"))
        .count();
    assert_eq!(grants, 1, "the grant was applied more than once");
    assert!(audit
        .iter()
        .any(|e| e.action == "run.approve" && e.reason == "change ticket 42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_run_moves_nothing() {
    let svc = format!(
        "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n{}",
        approval_plan()
    );
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let a_us = agent(&c, "payments", "us-east");
    let old = held(&a_us).await;
    let cl2 = cl.clone();
    let pending =
        tokio::spawn(async move { cl2.failover(switchover("payments", "eu-west", old)).await });
    let run = eventually(
        Duration::from_secs(20),
        "the run to wait for approval",
        || async {
            workflows(&c, "payments").await.into_iter().find(|r| {
                r.state == "running"
                    && r.steps
                        .get(r.current_step as usize)
                        .is_some_and(|s| s.kind == "approval")
            })
        },
    )
    .await;
    cl.approve(run.id, false, "not now").await.unwrap();
    let err = pending.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
    assert_eq!(lease(&cl, "payments").await.token, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_region_pauses_automation_at_the_limit() {
    let (us, eu, ap) = three_health().await;
    let svc = service_with_health(
        &[("us-east", &us), ("eu-west", &eu), ("ap-south", &ap)],
        "flap_limit = 2\nflap_window = \"10m\"\n",
    );
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let _agents = [
        agent(&c, "payments", "us-east"),
        agent(&c, "payments", "eu-west"),
        agent(&c, "payments", "ap-south"),
    ];
    // Every agent has reached the leader (a region's agent must be live for it to be
    // preferred), so the first move goes to eu-west, the next in preference order.
    for a in &_agents {
        eventually(
            Duration::from_secs(20),
            "every agent to reach the leader",
            || async {
                (*a.status().borrow() != baton::client::LeaseStatus::Pending).then_some(())
            },
        )
        .await;
    }
    let mut w = cl.watch(vec!["payments".into()], 0);
    w.next().await.unwrap().unwrap();
    us.set_healthy(false);
    granted_to(&mut w, "eu-west").await;
    us.set_healthy(true);
    healthy_again(&cl, "us-east").await;
    eu.set_healthy(false);
    granted_to(&mut w, "us-east").await;
    // Two automatic moves: the limit. A third outage is left alone, and `plan` says why.
    us.set_healthy(false);
    let plan = eventually(Duration::from_secs(20), "the pause to show", || async {
        let p = cl.plan("payments").await.ok()?;
        let paused = p.blockers.iter().any(|b| b.contains("flap limit"));
        let busy = p.blockers.iter().any(|b| b.contains("in progress"));
        (paused && !busy).then_some(p)
    })
    .await;
    assert!(
        plan.next_action.contains("flap limit"),
        "{}",
        plan.next_action
    );
    assert_eq!(lease(&cl, "payments").await.holder_region, "us-east");
    eu.set_healthy(true);
    cl.ack("payments", "flapping understood").await.unwrap();
    // Automation resumes: us-east is still down, so the lease leaves it.
    let moved = eventually(
        Duration::from_secs(30),
        "the lease to leave us-east after the ack",
        || async {
            let l = cl
                .primary("payments", proto::Consistency::Linearizable)
                .await
                .ok()?
                .lease?;
            (l.holder_region != "us-east" && l.state == proto::LeaseState::Held as i32).then_some(l)
        },
    )
    .await;
    assert!(["eu-west", "ap-south"].contains(&moved.holder_region.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_waits_for_the_stable_window_and_never_happens_when_manual() {
    let (us, eu, ap) = three_health().await;
    let svc = service_with_health(
        &[("us-east", &us), ("eu-west", &eu), ("ap-south", &ap)],
        "failback = \"auto\"\nfailback_stable = \"2s\"\n",
    );
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let _agents = [
        agent(&c, "payments", "us-east"),
        agent(&c, "payments", "eu-west"),
    ];
    let mut w = cl.watch(vec!["payments".into()], 0);
    w.next().await.unwrap().unwrap();
    us.set_healthy(false);
    granted_to(&mut w, "eu-west").await;
    us.set_healthy(true);
    granted_to(&mut w, "us-east").await;
    let runs = workflows(&c, "payments").await;
    let fb = runs
        .iter()
        .find(|r| r.kind == "failback")
        .expect("a failback run");
    let healthy_again = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .observations
        .iter()
        .filter(|o| o.region == "us-east")
        .map(|o| o.at_unix_ms)
        .max()
        .unwrap();
    assert!(
        fb.decided_unix_ms - healthy_again >= 2_000,
        "failback decided {} ms after us-east was healthy again; the window is 2 s",
        fb.decided_unix_ms - healthy_again
    );

    // With failback manual, nothing moves back.
    let mut spec = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .spec
        .unwrap();
    spec.failback = "manual".into();
    cl.put_service(spec, "manual failback").await.unwrap();
    us.set_healthy(false);
    granted_to(&mut w, "eu-west").await;
    us.set_healthy(true);
    let plan = eventually(
        Duration::from_secs(20),
        "us-east to be healthy again",
        || async {
            let p = cl.plan("payments").await.ok()?;
            let row = p.candidates.iter().find(|c| c.region == "us-east")?;
            row.health.starts_with("up").then_some(p)
        },
    )
    .await;
    assert!(
        plan.next_action.starts_with("nothing"),
        "{}",
        plan.next_action
    );
    assert_eq!(lease(&cl, "payments").await.holder_region, "eu-west");
}
