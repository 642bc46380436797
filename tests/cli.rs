//! The `baton` CLI end to end against a real cluster: no terminal means no prompt, JSON
//! output parses, exit codes follow the outcome, a drill moves the lease and back.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{agent, baton_bin, client, held, lease, TestCluster};

fn baton(c: &TestCluster, args: &[&str]) -> Output {
    Command::new(baton_bin())
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args(args)
        .env("BATON_ACTOR", "ci-operator")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_moves_and_drills_without_asking_when_there_is_no_terminal() {
    let svc = "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n";
    let c = TestCluster::start(3, svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let _eu = agent(&c, "payments", "eu-west");
    let token = held(&us).await;

    let out = baton(&c, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    // One screen: the nodes, every service with its primary, each region's health.
    for part in ["leader", "services:", "payments", "us-east", "regions:"] {
        assert!(t.contains(part), "no {part:?} in:\n{t}");
    }

    let out = baton(&c, &["-w", "json", "primary", "payments"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert!(v.to_string().contains("us-east"), "{v}");

    // No terminal: the failover runs without a confirmation prompt.
    let out = tokio::task::spawn_blocking({
        let e = c.endpoints().join(",");
        move || {
            Command::new(baton_bin())
                .args([
                    "--endpoints",
                    &e,
                    "failover",
                    "payments",
                    "--to",
                    "eu-west",
                    "--reason",
                    "cli test",
                ])
                .env("BATON_ACTOR", "ci-operator")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let l = lease(&cl, "payments").await;
    assert_eq!(l.holder_region, "eu-west");
    assert!(l.token > token);

    // The old token is superseded: exit code 5.
    let out = baton(&c, &["validate", "payments", &token.to_string()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    // A refused request: exit code 4, and the message says why.
    let out = baton(
        &c,
        &["failover", "payments", "--to", "mars", "--reason", "x"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // The declared actor is noted in the audit trail (on behalf of); the chain verifies.
    let out = baton(&c, &["-w", "json", "audit", "--limit", "1000"]);
    assert!(text(&out).contains("ci-operator"), "{}", text(&out));
    let out = baton(&c, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));

    // A drill: switchover to ap-south, then the failback to the preferred us-east.
    let _ap = agent(&c, "payments", "ap-south");
    let out = tokio::task::spawn_blocking({
        let e = c.endpoints().join(",");
        move || {
            Command::new(baton_bin())
                .args([
                    "--endpoints",
                    &e,
                    "drill",
                    "payments",
                    "--to",
                    "ap-south",
                    "--reason",
                    "quarterly drill",
                    "-y",
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lease(&cl, "payments").await.holder_region, "us-east");
    let out = baton(&c, &["workflows", "payments"]);
    assert!(text(&out).contains("failback"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_step_posts_the_run_and_its_failure_aborts_the_run() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let st = status.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
            let code = st.load(std::sync::atomic::Ordering::SeqCst);
            let _ = conn
                .write_all(
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    let svc = format!(
        "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\n\
         [services.plans]\nswitchover = [\n  {{ step = \"precheck\" }},\n  {{ step = \"webhook\", url = \"{hook}\", timeout = \"2s\" }},\n  {{ step = \"fence\" }},\n  {{ step = \"grant\" }},\n]\n"
    );
    let c = TestCluster::start(3, &svc).await;
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let token = held(&us).await;
    let r = cl
        .failover(crate::support::switchover("payments", "eu-west", token))
        .await
        .unwrap();
    let posted = rx.recv().await.unwrap();
    assert!(posted.starts_with("POST /hook"), "{posted}");
    assert!(
        posted.contains("\"service\":\"payments\"") && posted.contains("\"to\":\"eu-west\""),
        "{posted}"
    );
    let new_token = r.after.unwrap().token;

    // A webhook answering 500 aborts the run before anything is fenced.
    status.store(500, std::sync::atomic::Ordering::SeqCst);
    let err = cl
        .failover(crate::support::switchover("payments", "us-east", new_token))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("webhook"), "{err}");
    let l = lease(&cl, "payments").await;
    assert_eq!((l.holder_region.as_str(), l.token), ("eu-west", new_token));
}
