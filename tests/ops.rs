//! Operating a node: Prometheus metrics and readiness on the admin listener, gRPC health and
//! reflection on the client port.

use std::time::Duration;

use crate::support::{
    agent, channel, client, eventually, held, http_get, service_toml, switchover, TestCluster,
};

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_the_lease_and_move_after_a_switchover() {
    let c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let _eu = agent(&c, "payments", "eu-west");
    let old = held(&us).await;
    let admin = c.nodes[leader].admin_addr.clone();

    let (status, text) = http_get(&admin, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    for name in [
        "baton_raft_term ",
        "baton_raft_is_leader 1",
        "baton_raft_commit_index ",
        "baton_raft_applied_index ",
        "baton_raft_apply_lag ",
        "baton_lease_holder{service=\"payments\",region=\"us-east\"} 1",
        "baton_lease_state{service=\"payments\",state=\"held\"} 1",
        "baton_lease_last_renewal_seconds{service=\"payments\"} ",
        "baton_grpc_requests_total{method=\"baton.v1.Coordinator/KeepAlive\",code=\"OK\"} ",
        "baton_grpc_request_duration_seconds_bucket{",
        "baton_keepalive_streams_open ",
        "baton_watchers_open ",
        "# EOF",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    assert_eq!(
        sample(&text, "baton_lease_token{service=\"payments\"}"),
        Some(old as f64)
    );
    // Both agents' streams end on the leader; the eu-west agent may still be finding it.
    eventually(
        Duration::from_secs(20),
        "both KeepAlive streams open on the leader",
        || async {
            let (_, text) = http_get(&admin, "/metrics").await?;
            (sample(&text, "baton_keepalive_streams_open")? >= 2.0).then_some(())
        },
    )
    .await;

    let r = cl
        .failover(switchover("payments", "eu-west", old))
        .await
        .unwrap();
    let new = r.after.unwrap().token;
    // Every node's metrics follow the switchover (followers once they applied it).
    for n in &c.nodes {
        eventually(Duration::from_secs(20), "metrics to show the new holder", || async {
            let (_, text) = http_get(&n.admin_addr, "/metrics").await?;
            let moved = text.contains("baton_lease_holder{service=\"payments\",region=\"eu-west\"} 1")
                && sample(&text, "baton_lease_token{service=\"payments\"}") == Some(new as f64)
                && text.contains(
                    "baton_workflow_runs_total{kind=\"switchover\",trigger=\"operator\",outcome=\"succeeded\"} 1",
                );
            moved.then_some(())
        })
        .await;
    }

    for n in &c.nodes {
        eventually(Duration::from_secs(20), "every node ready", || async {
            (http_get(&n.admin_addr, "/readyz").await?.0 == 200).then_some(())
        })
        .await;
        assert_eq!(http_get(&n.admin_addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(http_get(&n.admin_addr, "/nope").await.unwrap().0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serves_while_ready_and_reflection_lists_the_services() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let mut c = TestCluster::start(3, &service_toml("payments", "2s")).await;
    c.leader(Duration::from_secs(20)).await;
    let addr = c.nodes[0].addr.clone();
    let mut health = HealthClient::new(channel(&addr));
    eventually(Duration::from_secs(20), "SERVING", || {
        let mut h = health.clone();
        async move {
            let s = h
                .check(HealthCheckRequest {
                    service: "baton.v1.Coordinator".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                .then_some(())
        }
    })
    .await;

    let mut refl = ServerReflectionClient::new(channel(&addr));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"baton.v1.Coordinator".to_string())
            && names.contains(&"baton.v1.Admin".to_string()),
        "{names:?}"
    );

    // A node cut off from the others stops reporting SERVING (no leader, or stale).
    c.kill(1);
    c.kill(2);
    eventually(Duration::from_secs(30), "NOT_SERVING once alone", || {
        let mut h = health.clone();
        async move {
            let s = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (s == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
                .then_some(())
        }
    })
    .await;
    let _ = &mut health;
}
