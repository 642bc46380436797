//! A node whose disk fills up stops with a clear error (exit code 1) instead of lingering
//! half-alive; the rest of the cluster goes on.

use std::process::Command;
use std::time::Duration;

use crate::support::{client, lease, service_toml, TestCluster};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_with_an_error_that_says_what_to_fix() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let mut c = TestCluster::prepare(3, &service_toml("payments", "1h"), "");
    let data = c.nodes[2].dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _guard = Tmpfs(data.clone());
    for i in 0..3 {
        c.spawn(i);
    }
    c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    lease(&cl, "payments").await;
    // Fill node 3's disk, then keep writing until it must persist something.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if=/dev/zero of={}/filler bs=1M count=64 2>/dev/null",
            data.display()
        ))
        .status();
    let spec = cl
        .get_service("payments")
        .await
        .unwrap()
        .service
        .unwrap()
        .spec
        .unwrap();
    let mut code = None;
    for i in 0..200 {
        let mut s = spec.clone();
        s.cooldown_ms = 1000 + i;
        let _ = cl.put_service(s, "fill the log").await;
        code = c.wait_exit(2, Duration::from_millis(50));
        if code.is_some() {
            break;
        }
    }
    assert_eq!(
        code,
        Some(1),
        "node 3 must exit with an error once its disk is full"
    );
    let log = c.log(2);
    assert!(log.contains("fix the data directory"), "{log}");
    // The majority goes on.
    lease(&cl, "payments").await;
}
