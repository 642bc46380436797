//! PostgreSQL behind baton, end to end: cluster/postgres/pg.sh in loopback mode (three
//! PostgreSQL 15 servers with synchronous replication, three nodes, three agents whose hooks
//! promote and stop the servers), then one failover (the primary's region killed) and one
//! switchover with the fenced writer; then the fence table and the writer's log.
//! Skipped with a message where PostgreSQL 15 is not installed — except under CI=true,
//! where that fails (.ci/run installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use baton::client::Client;
use baton::postgres::{self, BenchOptions};

use crate::support::{baton_bin, free_ports};

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether PostgreSQL 15 is here; a loud SKIP line otherwise, a failure under CI=true.
fn postgres_or_skip(test: &str) -> bool {
    if Path::new(PGBIN).join("postgres").exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: no PostgreSQL 15 at {PGBIN} and CI=true: install it (apt-get install -y postgresql-15)");
    }
    eprintln!(
        "\n********** SKIP {test}: no PostgreSQL 15 at {PGBIN} (apt-get install -y postgresql-15) **********\n"
    );
    false
}

/// The launcher, run through a wrapper that fixes its environment (directory, loopback
/// mode, free ports, this build's binary), so the bench can call it as its control.
struct Launcher {
    wrapper: PathBuf,
    _scripts: tempfile::TempDir,
}

impl Launcher {
    fn new(dir: &Path, ports: &[u16]) -> Launcher {
        let scripts = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/postgres/pg.sh");
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let wrapper = scripts.path().join("pg");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nBATON_PG_DIR='{}' BATON_PG_MODE=loopback BATON_PG_PORTS='{}' BATON_BIN='{}' exec '{}' \"$@\"\n",
                dir.display(),
                ports.join(","),
                baton_bin(),
                script.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Launcher {
            wrapper,
            _scripts: scripts,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.wrapper).args(args).output().unwrap()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!("pg.sh down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_and_switchover_lose_no_acknowledged_write() {
    if !postgres_or_skip("postgres_failover_and_switchover_lose_no_acknowledged_write") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(15);
    let launcher = Launcher::new(dir.path(), &ports);
    let up = launcher.run(&["up"]);
    assert!(
        up.status.success(),
        "pg.sh up failed:\n{}\n{}\nhooks: {}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr),
        std::fs::read_to_string(dir.path().join("hooks.log")).unwrap_or_default()
    );
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("up (loopback)"),
        "the launcher says which mode it runs in"
    );

    let endpoints: Vec<String> = ports[..3]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let client = Client::new(endpoints).unwrap();
    let targets = postgres::parse_targets(&format!(
        "us-east=127.0.0.1:{},eu-west=127.0.0.1:{},ap-south=127.0.0.1:{}",
        ports[12], ports[13], ports[14]
    ))
    .unwrap();
    let log = dir.path().join("writer.jsonl");
    let opts = BenchOptions {
        service: "payments".into(),
        targets: targets.clone(),
        control: launcher.wrapper.clone(),
        failovers: 1,
        switchovers: 1,
        interval: Duration::from_millis(10),
        writer_log: Some(log.clone()),
        settle: Duration::from_secs(120),
    };
    let report = match postgres::bench(&client, &opts).await {
        Ok(r) => r,
        Err(e) => panic!(
            "bench failed: {e}\nhooks:\n{}",
            std::fs::read_to_string(dir.path().join("hooks.log")).unwrap_or_default()
        ),
    };

    // The failover moved the primary away from the killed region, the switchover too.
    let f = &report.failovers[0];
    assert_eq!(f.killed, "us-east", "us-east starts as primary");
    assert_ne!(f.new, f.killed);
    let s = &report.switchovers[0];
    assert_ne!(s.from, s.to);

    // Nothing acknowledged was lost; no two primaries took writes at once.
    let c = &report.checks;
    assert!(c.acked > 0);
    assert!(c.lost.is_empty(), "acknowledged writes lost: {:?}", c.lost);
    assert!(
        c.overlaps.is_empty(),
        "overlapping primaries: {:?}",
        c.overlaps
    );
    assert!(!c.synchronous.is_empty(), "commits wait for a replica");

    // The fence table: one row per promotion, tokens rising, in the order the primary moved.
    let regions: Vec<&str> = c.fence.iter().map(|f| f.region.as_str()).collect();
    assert_eq!(
        regions,
        vec!["us-east", f.new.as_str(), s.to.as_str()],
        "fence rows: {:?}",
        c.fence
    );
    assert!(c.fence.windows(2).all(|w| w[0].token < w[1].token));
    assert!(c
        .fence
        .windows(2)
        .all(|w| w[0].promoted_us < w[1].promoted_us));

    // The writer's log: every acknowledged write, tokens never going back, each token from
    // the region promoted with it.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), c.acked);
    let mut last = 0;
    for l in &lines {
        let token = l["token"].as_u64().unwrap();
        assert!(token >= last, "token went back in the writer's log: {l}");
        last = token;
        let fence = c.fence.iter().find(|f| f.token == token).unwrap();
        assert_eq!(l["region"].as_str(), Some(fence.region.as_str()));
    }
    assert_eq!(
        last, c.fence[2].token,
        "the last writes carry the last token"
    );

    // The trigger itself: on the final primary a stale token and a token it was not
    // promoted with are both refused.
    let pg = postgres::connect(&targets[s.to.as_str()]).await.unwrap();
    for (token, why) in [
        (c.fence[0].token, "stale"),
        (c.fence[2].token + 1, "not promoted"),
    ] {
        let err = pg
            .execute(
                "INSERT INTO baton_writes(writer, seq, token) VALUES ('test', 1, $1)",
                &[&(token as i64)],
            )
            .await
            .unwrap_err();
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains(why), "token {token}: {msg}");
    }
    drop(launcher);
}
