//! The on-call runbook (`cluster/RUNBOOK.md`), step by step, on a cluster of real hosts:
//! `cluster/netns.sh` puts each region's node and agent in its own network namespace with
//! its own address, TLS and `[auth]` on. Needs root (namespaces, veth, a bridge); without
//! it the test says SKIP and returns. Names and the subnet are unique per test process, and
//! the cluster is torn down on every exit, panics included.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::baton_bin;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// A cluster made by `cluster/netns.sh up`; `down` when dropped.
struct Netns {
    env: Vec<(&'static str, String)>,
    dir: PathBuf,
    subnet: String,
    _root: tempfile::TempDir,
}

impl Netns {
    fn up() -> Netns {
        let root = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        // Each test process gets its own namespaces and /24 (the bridge lives in a namespace
        // of its own, so even equal subnets would not meet; distinct ones make logs clearer).
        let prefix = format!("rb{pid}-");
        let subnet = format!("10.77.{}", 20 + pid % 200);
        let dir = root.path().join("netns");
        let env = vec![
            ("BATON_BIN", baton_bin().to_string()),
            ("BATON_NETNS_PREFIX", prefix),
            ("BATON_NETNS_SUBNET", subnet.clone()),
            ("BATON_NETNS_DIR", dir.display().to_string()),
        ];
        let n = Netns {
            env,
            dir,
            subnet,
            _root: root,
        };
        // Leftovers of an earlier process with the same pid are removed first.
        n.run(&["down"]);
        n.ok(&["up"]);
        n
    }

    /// `cluster/netns.sh ARGS` with this cluster's settings, as `who` for `exec`.
    fn script(&self, who: &str, args: &[&str]) -> Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/netns.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script).args(args).env("BATON_NETNS_AS", who);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // The caller's own baton settings must not leak into the cluster's commands.
        for k in [
            "BATON_ENDPOINTS",
            "BATON_CACERT",
            "BATON_CERT",
            "BATON_KEY",
            "BATON_TOKEN",
        ] {
            cmd.env_remove(k);
        }
        cmd.output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.script("oncall", args)
    }

    /// Runs the script; panics with its output unless it succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "netns.sh {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `baton ARGS` on the operator's host (`ops`) as `who`.
    fn baton_as(&self, who: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "ops", "baton"];
        all.extend_from_slice(args);
        self.script(who, &all)
    }

    /// `baton ARGS` as the on-call operator; panics unless it succeeds; returns stdout.
    fn baton(&self, args: &[&str]) -> String {
        let out = self.baton_as("oncall", args);
        assert!(out.status.success(), "baton {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `baton -w json ARGS`, parsed; None when it fails (e.g. no leader yet).
    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["-w", "json"];
        all.extend_from_slice(args);
        let out = self.baton_as("oncall", &all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// (holder, state) of `payments`, linearizable.
    fn primary(&self) -> Option<(String, String)> {
        let v = self.json(&["primary", "payments"])?;
        Some((
            v["primary"].as_str().unwrap_or("").to_string(),
            v["state"].as_str()?.to_string(),
        ))
    }

    /// What the region's hooks last wrote: `primary TOKEN` or `standby TOKEN REASON`.
    fn role(&self, region: &str) -> String {
        std::fs::read_to_string(self.dir.join(region).join("role")).unwrap_or_default()
    }

    fn addr(&self, region: usize) -> String {
        format!("{}.{}:7100", self.subnet, 11 + region)
    }

    /// `baton status` rows, once every endpoint in `expect_up` answers and all agree on
    /// one leader.
    fn agreed_status(&self, expect_up: &[&str]) -> Option<Vec<Value>> {
        // `-w json status` is {"nodes": [...], "services": [...], "regions": [...]}.
        let rows = self.json(&["status"])?.get("nodes")?.as_array()?.clone();
        let mut leader = None;
        for r in &rows {
            let region = r["region"].as_str().unwrap_or("");
            if !expect_up.contains(&region) {
                continue;
            }
            let l = r["leader"].as_str()?.to_string();
            if leader.get_or_insert(l.clone()) != &l {
                return None;
            }
        }
        // The leader they name must be one of them: right after a leader dies the others
        // still name it until they elect another.
        let leader_id: u64 = leader?.split_whitespace().next()?.parse().ok()?;
        let leader_up = rows.iter().any(|r| {
            r["id"] == leader_id
                && r["error"].is_null()
                && expect_up.contains(&r["region"].as_str().unwrap_or(""))
        });
        let answering = rows.iter().filter(|r| r["error"].is_null()).count();
        (leader_up && answering >= expect_up.len()).then_some(rows)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in REGIONS {
                for f in ["node.log", "agent.log"] {
                    let text =
                        std::fs::read_to_string(self.dir.join(r).join(f)).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "---- {r}/{f} ----\n{}",
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    );
                }
            }
            eprintln!(
                "---- hooks.log ----\n{}",
                std::fs::read_to_string(self.dir.join("hooks.log")).unwrap_or_default()
            );
        }
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!("netns.sh down failed: {}", show(&out));
        }
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` (every 100 ms) until it returns Some; panics naming `what` after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn the_runbook_works_on_a_cluster_of_real_hosts() {
    if !is_root() {
        eprintln!(
            "\n********************************************************************\n\
             SKIP runbook::the_runbook_works_on_a_cluster_of_real_hosts: needs root\n\
             (network namespaces, veth, a bridge); run the tests as root to run it\n\
             ********************************************************************\n"
        );
        return;
    }
    let c = Netns::up();

    // --- Triage: status, services, primary, readiness and metrics, the hooks' view.
    let rows = wait_for(WAIT, "all three nodes agreeing on a leader", || {
        c.agreed_status(&REGIONS)
    });
    assert!(
        rows.iter().any(|r| r["role"] == "leader"),
        "a leader in {rows:?}"
    );
    let table = c.baton(&["status"]);
    // One screen: the nodes, the service with its primary, each region's health.
    assert!(
        table.contains("leader")
            && table.contains("3 voters")
            && table.contains("payments")
            && table.contains("regions:"),
        "{table}"
    );
    let services = c.json(&["services"]).unwrap();
    assert_eq!(services[0]["service"], "payments", "{services}");
    assert_eq!(services[0]["primary"], "us-east", "{services}");
    assert_eq!(services[0]["frozen"], false, "{services}");
    let first_token = services[0]["token"].as_u64().unwrap();
    let ready = c.ok(&["http", "us-east", "/readyz"]);
    assert!(
        ready.contains("200 OK") && ready.contains("ready"),
        "{ready}"
    );
    let metrics = c.ok(&["http", "eu-west", "/metrics"]);
    assert!(metrics.contains("baton_raft_is_leader"), "{metrics}");
    wait_for(WAIT, "us-east's promote hook", || {
        c.role("us-east").starts_with("primary").then_some(())
    });
    let status = c.ok(&["status"]);
    assert!(
        status.contains("us-east") && status.contains("connected"),
        "{status}"
    );

    // --- A region is cut off: automation fails the primary over (lease expiry), and the
    // cut region's agent demotes itself although it cannot reach the cluster.
    c.ok(&["cut", "us-east"]);
    let (holder, _) = wait_for(WAIT, "a new primary outside us-east", || {
        c.primary()
            .filter(|(h, s)| s == "held" && h != "us-east" && !h.is_empty())
    });
    wait_for(WAIT, "the new holder's promote hook", || {
        c.role(&holder).starts_with("primary").then_some(())
    });
    wait_for(WAIT, "us-east's agent to demote itself", || {
        c.role("us-east").starts_with("standby").then_some(())
    });
    assert!(c.ok(&["status"]).contains("CUT"));

    // --- Heal, then fail back by hand (failback = "manual").
    c.ok(&["heal", "us-east"]);
    wait_for(WAIT, "us-east back in the cluster", || {
        c.agreed_status(&REGIONS)
    });
    let out = c.baton(&[
        "failback",
        "payments",
        "-y",
        "--reason",
        "runbook: us-east is back",
    ]);
    assert!(out.contains("baton workflow"), "{out}");
    assert_eq!(c.primary().unwrap(), ("us-east".into(), "held".into()));
    wait_for(WAIT, "us-east's promote hook after failback", || {
        c.role("us-east").starts_with("primary").then_some(())
    });
    wait_for(WAIT, "the old holder's demote hook", || {
        c.role(&holder).starts_with("standby").then_some(())
    });

    // --- Freeze for maintenance: automation stops (a cut holder's expired lease stays
    // vacant), manual moves still work, unfreeze resumes automation.
    c.baton(&["freeze", "payments", "--reason", "runbook: maintenance"]);
    let s = c.json(&["services"]).unwrap();
    assert_eq!(s[0]["frozen"], true, "{s}");
    c.ok(&["cut", "us-east"]);
    wait_for(WAIT, "the frozen lease to expire and stay vacant", || {
        let (_, state) = c.primary()?;
        let plan = c.json(&["plan", "payments"])?;
        let next = plan["plan"]["next_action"].as_str()?.to_string();
        (state == "vacant" && next.contains("frozen")).then_some(())
    });
    let out = c.baton(&[
        "failover",
        "payments",
        "--to",
        "eu-west",
        "-y",
        "--reason",
        "runbook: us-east lost during maintenance",
    ]);
    assert!(out.contains("baton workflow"), "{out}");
    assert_eq!(c.primary().unwrap(), ("eu-west".into(), "held".into()));
    wait_for(WAIT, "eu-west's promote hook", || {
        c.role("eu-west").starts_with("primary").then_some(())
    });
    c.ok(&["heal", "us-east"]);
    c.baton(&[
        "unfreeze",
        "payments",
        "--reason",
        "runbook: maintenance over",
    ]);
    // (A node just healed may answer first and still be catching up: wait, do not guess.)
    wait_for(WAIT, "plan to no longer say frozen", || {
        let plan = c.json(&["plan", "payments"])?;
        let next = plan["plan"]["next_action"].as_str()?.to_string();
        (!next.contains("frozen")).then_some(())
    });
    wait_for(WAIT, "us-east back after maintenance", || {
        c.agreed_status(&REGIONS)
    });

    // --- Replace a failed node: ap-south's host dies with its disk. Wait for a leader
    // among the survivors, remove node 3, and only then start the replacement (node 6) on
    // the same address: an empty node on a member's address would answer for it.
    c.ok(&["crash", "ap-south"]);
    wait_for(WAIT, "a leader among us-east and eu-west", || {
        c.agreed_status(&["us-east", "eu-west"])
    });
    let out = c.baton_as("oncall", &["admin", "remove-node", "3"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("admin"),
        "membership needs the admin role: {}",
        show(&out)
    );
    let out = c.baton_as(
        "platform-admin",
        &["-w", "json", "admin", "remove-node", "3"],
    );
    assert!(out.status.success(), "remove-node: {}", show(&out));
    let members: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2], "{members}");
    let refused = c.run(&["rebuild", "ap-south", "4"]);
    assert!(
        !refused.status.success(),
        "id 4 belongs to us-east's host: {}",
        show(&refused)
    );
    c.ok(&["rebuild", "ap-south", "6"]);
    let addr = c.addr(2);
    let out = c.baton_as(
        "platform-admin",
        &[
            "-w", "json", "admin", "add-node", "--id", "6", "--addr", &addr, "--region", "ap-south",
        ],
    );
    assert!(out.status.success(), "add-node: {}", show(&out));
    let members: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 6 && m["role"] == "voter"),
        "{members}"
    );
    let rows = wait_for(WAIT, "node 6 to catch up as a voter", || {
        let rows = c.agreed_status(&REGIONS)?;
        let six = rows.iter().find(|r| r["id"] == 6)?;
        let applied = six["applied"].as_u64()?;
        let max = rows.iter().filter_map(|r| r["applied"].as_u64()).max()?;
        (applied + 5 >= max && six["members"] == "3 voters").then_some(rows)
    });
    assert!(rows.iter().all(|r| r["error"].is_null()), "{rows:?}");
    // On a loaded machine the holder's renewals can stall past its TTL while the node is
    // replaced, and automation then moves the lease in a run of its own; a manual move is
    // refused until that run ends (no-run-in-progress), so wait for it as an operator would.
    wait_for(WAIT, "no workflow run in progress", || {
        let runs = c.json(&["workflows", "payments"])?;
        let running = runs.as_array()?.iter().any(|r| r["state"] == "running");
        (!running).then_some(())
    });
    // The new node serves the region: the primary can move there and back.
    c.baton(&[
        "failover",
        "payments",
        "--to",
        "ap-south",
        "-y",
        "--reason",
        "runbook: try node 6",
    ]);
    wait_for(WAIT, "ap-south's promote hook", || {
        c.role("ap-south").starts_with("primary").then_some(())
    });
    c.baton(&[
        "failback",
        "payments",
        "-y",
        "--reason",
        "runbook: back to us-east",
    ]);

    // --- Loss of quorum: two of three hosts go down. Writes answer "unavailable" (exit 3),
    // the primary's agent fences itself; restarting the hosts (data intact) recovers.
    c.ok(&["crash", "eu-west"]);
    c.ok(&["crash", "ap-south"]);
    let out = c.baton_as(
        "oncall",
        &[
            "--timeout",
            "3s",
            "freeze",
            "payments",
            "--reason",
            "runbook: no quorum",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "no quorum: {}", show(&out));
    wait_for(
        WAIT,
        "us-east's agent to fence itself without quorum",
        || c.role("us-east").starts_with("standby").then_some(()),
    );
    c.ok(&["start", "eu-west"]);
    c.ok(&["start", "ap-south"]);
    wait_for(WAIT, "quorum back with all three nodes", || {
        c.agreed_status(&REGIONS)
    });
    // The freeze answered "outcome unknown": if us-east led, it sat in its log and commits
    // now. The runbook says to look before going on; undo it if it applied.
    let frozen = wait_for(WAIT, "services to answer", || {
        c.json(&["services"]).map(|s| s[0]["frozen"] == true)
    });
    if frozen {
        c.baton(&[
            "unfreeze",
            "payments",
            "--reason",
            "runbook: undo the late freeze",
        ]);
    }
    let (holder, _) = wait_for(WAIT, "a primary again", || {
        c.primary().filter(|(_, s)| s == "held")
    });
    wait_for(WAIT, "the holder's promote hook", || {
        c.role(&holder).starts_with("primary").then_some(())
    });
    let token = c.json(&["primary", "payments"]).unwrap()["token"]
        .as_u64()
        .unwrap();
    assert!(
        token > first_token,
        "tokens only grow: {token} > {first_token}"
    );
    assert_eq!(
        c.baton_as("oncall", &["audit", "verify"]).status.code(),
        Some(0),
        "the audit chain survives it all"
    );

    // --- Backup and restore: save from the running cluster as its admin, check the file,
    // and seed three fresh data directories for a new cluster on the same addresses (the
    // full round trip into running nodes is tests/backup.rs).
    let file = c.dir.join("backup.snap").display().to_string();
    let out = c.baton_as("platform-admin", &["snapshot", "save", &file]);
    assert!(out.status.success(), "snapshot save: {}", show(&out));
    let out = Command::new(baton_bin())
        .args(["snapshot", "inspect", &file])
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot inspect: {}", show(&out));
    assert!(show(&out).contains("payments"), "{}", show(&out));
    let members = ["us-east", "eu-west", "ap-south"]
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}={}@{r}", i + 1, c.addr(i)))
        .collect::<Vec<_>>()
        .join(",");
    for id in 1..=3 {
        let restored = c.dir.join(format!("restored-{id}"));
        let out = Command::new(baton_bin())
            .args(["snapshot", "restore", &file, "--data-dir"])
            .arg(&restored)
            .args(["--node-id", &id.to_string(), "--members", &members])
            .output()
            .unwrap();
        assert!(out.status.success(), "snapshot restore: {}", show(&out));
    }

    // --- down removes everything, and twice is fine.
    let prefix = c.env[1].1.clone();
    c.ok(&["down"]);
    c.ok(&["down"]);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&prefix), "namespaces left: {list}");
    assert!(!c.dir.exists(), "{} left", c.dir.display());
}
