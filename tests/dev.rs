//! `baton dev` as a user starts it: the three simulated regions come up healthy and the
//! primary stays put (a fresh start once showed every region unhealthy, and on a busy
//! machine could fail over on its own).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::client::{Client, Consistency};

use crate::support::{baton_bin, eventually, http_get};

/// Kills the dev cluster when the test ends, however it ends.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_dev_starts_with_every_region_healthy_and_no_failover() {
    let dir = tempfile::tempdir().unwrap();
    // `baton dev` takes base..base+32; below the ephemeral range the other tests draw from.
    let base = 20_000 + (std::process::id() % 300) as u16 * 40;
    let log_path = dir.path().join("dev.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _dev = Dev(Command::new(baton_bin())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let cl = Client::new(endpoints).unwrap();

    // Every region healthy from every vantage, and us-east primary.
    let first = eventually(Duration::from_secs(60), "a healthy dev cluster", || async {
        let r = cl.list_services(Consistency::Linearizable).await.ok()?;
        let s = r
            .services
            .iter()
            .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == "payments"))?;
        let lease = s.lease.clone()?;
        let healthy = s.observations.iter().filter(|o| o.healthy).count();
        (lease.holder_region == "us-east" && healthy == 9 && s.observations.len() == 9)
            .then_some(lease.token)
    })
    .await;

    let log = plain(&std::fs::read_to_string(&log_path).unwrap());
    assert!(
        !log.contains("healthy=false"),
        "a region was seen unhealthy while baton dev started:\n{log}"
    );
    let runs = cl.workflows(Some("payments"), 10).await.unwrap();
    assert!(
        runs.workflows.is_empty(),
        "runs at start: {:?}",
        runs.workflows
    );
    let now = cl
        .primary("payments", Consistency::Linearizable)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!((now.holder_region.as_str(), now.token), ("us-east", first));

    // `baton dev outage|heal` reach the control endpoint, and the region's health endpoint
    // (the third region's: base + 10 + 2) follows.
    let dev_cli = |args: &[&str]| {
        let base = base.to_string();
        let out = Command::new(baton_bin())
            .args(["dev", "--base-port", &base])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let health = format!("127.0.0.1:{}", base + 12);
    assert_eq!(
        http_get(&health, "/").await,
        Some((200, "OK\n".to_string()))
    );
    let (ok, text) = dev_cli(&["outage", "ap-south"]);
    assert!(ok && text.contains("ap-south: outage started"), "{text}");
    assert_eq!(
        http_get(&health, "/").await,
        Some((503, "outage\n".to_string()))
    );
    let (ok, text) = dev_cli(&["heal", "ap-south"]);
    assert!(ok && text.contains("ap-south: healed"), "{text}");
    assert_eq!(
        http_get(&health, "/").await,
        Some((200, "OK\n".to_string()))
    );
    let (ok, text) = dev_cli(&["outage", "mars"]);
    assert!(!ok && text.contains("no region \"mars\""), "{text}");
}

/// `text` without ANSI colour sequences (the log colours field names and values apart).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
