//! (c) A watcher connected to a node that dies resumes on another node with no gap and no
//! duplicate; a compacted resume point is an explicit error.

use std::time::Duration;

use baton::proto::{self, WatchRequest};

use crate::support::{agent, client, client_first, held, service_toml, switchover, TestCluster};

async fn revisions_until(w: &mut baton::client::Watcher, until_token: u64) -> Vec<(u64, i32, u64)> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            for e in r.events {
                let token = e.lease.as_ref().map_or(0, |l| l.token);
                seen.push((e.revision, e.kind, token));
                if e.kind == proto::EventKind::Granted as i32 && token == until_token {
                    return;
                }
            }
        }
    })
    .await
    .expect("watch did not deliver the last grant");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_node_without_gap_or_duplicate() {
    let mut c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let victim = (leader + 1) % 3;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let _eu = agent(&c, "payments", "eu-west");
    let mut token = held(&us).await;

    let watch_client = client_first(&c, victim);
    let mut w = watch_client.watch(vec!["payments".into()], 1);
    // Moves before the kill...
    for to in ["eu-west", "us-east"] {
        token = cl
            .failover(switchover("payments", to, token))
            .await
            .unwrap()
            .after
            .unwrap()
            .token;
    }
    let mut seen = revisions_until(&mut w, token).await;
    c.kill(victim);
    // ...and after it.
    for to in ["eu-west", "us-east"] {
        token = cl
            .failover(switchover("payments", to, token))
            .await
            .unwrap()
            .after
            .unwrap()
            .token;
    }
    seen.extend(revisions_until(&mut w, token).await);

    // Ordered and unique.
    for pair in seen.windows(2) {
        assert!(
            pair[0].0 < pair[1].0 || (pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1),
            "out of order or duplicate: {pair:?}"
        );
    }
    // Gapless: identical to a fresh replay of the history from revision 1.
    let mut replay = cl.watch(vec!["payments".into()], 1);
    let all = revisions_until(&mut replay, token).await;
    assert_eq!(seen, all, "the resumed watch differs from the history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_an_explicit_error() {
    let extra = "[storage]\nwatch_history = 2\n";
    let c = TestCluster::start_with(3, &service_toml("payments", "1s"), extra).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let _eu = agent(&c, "payments", "eu-west");
    let mut token = held(&us).await;
    for to in ["eu-west", "us-east", "eu-west"] {
        token = cl
            .failover(switchover("payments", to, token))
            .await
            .unwrap()
            .after
            .unwrap()
            .token;
    }
    let mut co = c.coordinator(0).await;
    let err = match co
        .watch(WatchRequest {
            services: vec![],
            start_revision: 1,
            progress_interval_ms: 0,
        })
        .await
    {
        Err(e) => e,
        Ok(mut s) => s
            .get_mut()
            .message()
            .await
            .expect_err("a compacted revision must fail"),
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("oldest revision available"),
        "{}",
        err.message()
    );
    // The client surfaces it as a distinct error, never as a silent gap.
    let mut w = cl.watch(vec![], 1);
    match w.next().await {
        Some(Err(baton::client::ClientError::Compacted { .. })) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
}
