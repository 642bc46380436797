//! (f) A fourth node joins as a learner, catches up by snapshot, and becomes a voter.

use std::time::Duration;

use baton::proto;

use crate::support::{client, eventually, service_toml, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_by_snapshot_and_becomes_a_voter() {
    let extra = "[storage]\nsnapshot_every = 20\nkeep_behind_snapshot = 2\n";
    let mut c = TestCluster::start_with(3, &service_toml("payments", "1h"), extra).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    crate::support::lease(&cl, "payments").await;
    for i in 0..40 {
        let spec = proto::ServiceSpec {
            name: format!("svc-{i}"),
            regions: vec!["us-east".into(), "eu-west".into()],
            lease_ttl_ms: 3_600_000,
            ..Default::default()
        };
        cl.put_service(spec, "fill the log").await.unwrap();
    }
    let snap = cl.trigger_snapshot().await.unwrap();
    assert!(snap.snapshot_index > 0);

    let joiner = c.prepare_joiner("eu-west", extra);
    c.spawn(joiner);
    let node = &c.nodes[joiner];
    let added = cl
        .add_node(node.id, &node.addr, &node.region, false)
        .await
        .unwrap();
    let me = added
        .members
        .iter()
        .find(|m| m.id == node.id)
        .expect("node 4 is a member");
    assert!(me.voter, "node 4 must be a voter: {:?}", added.members);

    let status = eventually(Duration::from_secs(20), "node 4 to catch up", || async {
        let s = c.status(joiner).await?;
        (s.snapshot_index > 0 && s.applied_index >= snap.snapshot_index).then_some(s)
    })
    .await;
    assert!(status.members.iter().filter(|m| m.voter).count() == 4);
    // It serves local reads of everything, including services it only got by snapshot.
    let mut co = c.coordinator(joiner).await;
    let r = co
        .list_services(proto::ListServicesRequest {
            consistency: proto::Consistency::Local as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.services.len(), 41);
    // And its audit trail is the cluster's.
    let a = co
        .list_audit(proto::ListAuditRequest {
            from_seq: 0,
            limit: 1000,
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.chain_ok && a.entries.len() >= 41);
}
