//! `baton agent` end to end: hooks run in order, the agent's death ends its lease and the
//! lease moves on.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{baton_bin, client, eventually, lease, TestCluster};

fn spawn_agent(c: &TestCluster, region: &str, log: &std::path::Path) -> Child {
    let hook = |event: &str| {
        format!(
            "echo \"{event} $BATON_REGION $BATON_TOKEN $BATON_REASON\" >> {}",
            log.display()
        )
    };
    Command::new(baton_bin())
        .args([
            "--endpoints",
            &c.endpoints().join(","),
            "agent",
            "--service",
            "payments",
            "--region",
            region,
        ])
        .args(["--agent-id", &format!("agent-{region}")])
        .args([
            "--on-promote",
            &hook("promote"),
            "--on-demote",
            &hook("demote"),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_demotes_its_lease_expires_and_the_next_region_is_promoted() {
    let svc = "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n";
    let c = TestCluster::start(3, svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let log = c.root.path().join("hooks.log");
    let mut us = spawn_agent(&c, "us-east", &log);
    let mut eu = spawn_agent(&c, "eu-west", &log);
    let first = lease(&cl, "payments").await.token;
    eventually(
        Duration::from_secs(20),
        "us-east's promote hook",
        || async {
            lines(&log)
                .iter()
                .any(|l| l.starts_with("promote us-east"))
                .then_some(())
        },
    )
    .await;

    // The holder's agent is stopped: it demotes itself, stops renewing, the lease expires
    // and automation grants it to the next region, whose agent promotes.
    unsafe {
        libc::kill(us.id() as i32, libc::SIGTERM);
    }
    assert!(us.wait().unwrap().success());
    let all = eventually(
        Duration::from_secs(30),
        "eu-west's promote hook",
        || async {
            let l = lines(&log);
            l.iter()
                .any(|l| l.starts_with("promote eu-west"))
                .then_some(l)
        },
    )
    .await;
    let pos = |prefix: &str| all.iter().position(|l| l.starts_with(prefix)).unwrap();
    assert!(pos("promote us-east") < pos("demote us-east"), "{all:?}");
    assert!(pos("demote us-east") < pos("promote eu-west"), "{all:?}");
    assert!(all[pos("demote us-east")].ends_with("shutdown"), "{all:?}");
    let token: u64 = all[pos("promote eu-west")]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(token > first);
    let l = lease(&cl, "payments").await;
    assert_eq!((l.holder_region.as_str(), l.token), ("eu-west", token));
    let _ = eu.kill();
    let _ = eu.wait();
}
