//! Tests of the driver, the hook runner and the publishers (the state machine's own tests
//! are in `machine/tests.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::driver::{drive, HookCommands, LeaseSession};
use super::*;
use crate::client::{ClientError, LeaseStatus};

fn hook(kind: HookKind, token: u64, extra: &[(&str, &str)]) -> Hook {
    let mut env = vec![
        ("BATON_SERVICE".to_string(), "payments".to_string()),
        ("BATON_TOKEN".to_string(), token.to_string()),
        ("BATON_EVENT".to_string(), kind.as_str().to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Hook {
        kind,
        token,
        reason: None,
        env,
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `path` has `n` lines (or fails after 10 s).
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {n} lines, have {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hook_runner_passes_env_and_runs_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out");
    let cmd = format!(
        "echo $BATON_TOKEN $BATON_EVENT $BATON_SERVICE ${{BATON_REASON:-none}} >> '{}'",
        file.display()
    );
    let t = Duration::from_secs(5);
    let first = run_hook(&cmd, &hook(HookKind::Promote, 5, &[]), t).await;
    let second = run_hook(
        &cmd,
        &hook(HookKind::Demote, 5, &[("BATON_REASON", "revoked")]),
        t,
    )
    .await;
    assert_eq!(first, HookOutcome::Succeeded);
    assert_eq!(second, HookOutcome::Succeeded);
    assert_eq!(
        lines(&file),
        vec!["5 promote payments none", "5 demote payments revoked"]
    );
}

#[tokio::test]
async fn hook_runner_reports_exit_code_and_stderr_tail() {
    let out = run_hook(
        "echo starting; echo 'it broke' >&2; exit 3",
        &hook(HookKind::Promote, 1, &[]),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        out,
        HookOutcome::Failed {
            code: Some(3),
            stderr_tail: "it broke".into()
        }
    );
}

#[tokio::test]
async fn hook_runner_kills_a_hook_that_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("late");
    // A child in the background too: the whole process group must die.
    let cmd = format!("(sleep 1; echo late > '{}') & sleep 30", file.display());
    let started = Instant::now();
    let out = run_hook(
        &cmd,
        &hook(HookKind::Demote, 1, &[]),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(out, HookOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        !file.exists(),
        "the hook's background child survived the timeout"
    );
}

/// A lease session the test drives through a watch channel; acks and close are recorded
/// in a shared log together with what the hook file held at that moment.
struct FakeSession {
    status: watch::Receiver<LeaseStatus>,
    file: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeSession {
    fn record(&self, what: &str) {
        let seen = lines(&self.file).len();
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{what} after {seen} hook lines"));
    }
}

impl LeaseSession for FakeSession {
    fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    fn ack_demotion(&self) {
        self.record("ack");
    }

    async fn end_error(&self) -> ClientError {
        ClientError::Closed
    }

    async fn close(self) {
        self.record("close");
    }
}

struct Harness {
    tx: watch::Sender<LeaseStatus>,
    file: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    published: watch::Receiver<AgentState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Hooks append `EVENT TOKEN REASON` to a file; the demote hook is slow, so an ack
    /// that did not wait for it would be seen.
    fn start() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hooks");
        let line = format!(
            "echo $BATON_EVENT $BATON_TOKEN ${{BATON_REASON:-}} | sed 's/ *$//' >> '{}'",
            file.display()
        );
        let hooks = HookCommands {
            on_promote: Some(line.clone()),
            on_demote: Some(format!("sleep 0.3; {line}")),
            promote_timeout: Duration::from_secs(5),
            demote_timeout: Duration::from_secs(5),
        };
        let (tx, rx) = watch::channel(LeaseStatus::Pending);
        let log = Arc::new(Mutex::new(Vec::new()));
        let session = FakeSession {
            status: rx,
            file: file.clone(),
            log: log.clone(),
        };
        let (publish, published) =
            watch::channel(AgentState::replica("payments", "us-east", "agent-1"));
        let (stop, stopped) = oneshot::channel::<()>();
        let core = AgentCore::new("payments", "us-east", "agent-1", true, true);
        let task = tokio::spawn(async move {
            drive(session, core, &hooks, &publish, async {
                let _ = stopped.await;
            })
            .await
        });
        Harness {
            tx,
            file,
            log,
            published,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_log(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.log();
            if l.len() >= n {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} log entries, have {l:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_role(&mut self, role: Role) {
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            self.published.wait_for(|s| s.role == role),
        )
        .await;
        assert!(matches!(waited, Ok(Ok(_))), "role never became {role:?}");
    }
}

fn holding(token: u64, for_: Duration) -> LeaseStatus {
    LeaseStatus::Holding {
        token,
        valid_until: Instant::now() + for_,
    }
}

#[tokio::test]
async fn driver_runs_hooks_in_order_and_acks_after_the_demote_hook() {
    let mut h = Harness::start();
    let ten = Duration::from_secs(10);
    h.tx.send_replace(holding(5, ten));
    assert_eq!(wait_lines(&h.file, 1).await, vec!["promote 5"]);
    h.wait_role(Role::Primary).await;
    // Renewals do not promote again.
    h.tx.send_replace(holding(5, ten * 2));
    h.tx.send_replace(LeaseStatus::Revoking {
        token: 5,
        valid_until: Instant::now() + ten,
    });
    h.wait_role(Role::Replica).await;
    // The ack comes after the (slow) demote hook wrote its line.
    assert_eq!(h.wait_log(1).await, vec!["ack after 2 hook lines"]);
    // As the real session does once acknowledged.
    h.tx.send_replace(LeaseStatus::Lost);
    h.tx.send_replace(LeaseStatus::NotHolder);
    h.tx.send_replace(holding(8, ten));
    wait_lines(&h.file, 3).await;
    h.wait_role(Role::Primary).await;
    if let Some(stop) = h.stop.take() {
        let _ = stop.send(());
    }
    let result = tokio::time::timeout(Duration::from_secs(10), &mut h.task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert_eq!(
        lines(&h.file),
        vec![
            "promote 5",
            "demote 5 revoked",
            "promote 8",
            "demote 8 shutdown"
        ]
    );
    assert_eq!(
        h.log(),
        vec!["ack after 2 hook lines", "close after 4 hook lines"]
    );
    assert_eq!(h.published.borrow().role, Role::Replica);
}

#[tokio::test]
async fn driver_self_fences_on_its_own_clock_without_the_session() {
    let mut h = Harness::start();
    // The cluster becomes unreachable right after the grant: no status change ever
    // comes again, the driver's own deadline must demote.
    h.tx.send_replace(holding(5, Duration::from_millis(400)));
    h.wait_role(Role::Primary).await;
    h.wait_role(Role::Replica).await;
    assert_eq!(
        wait_lines(&h.file, 2).await,
        vec!["promote 5", "demote 5 expired"]
    );
    assert!(h.log().is_empty(), "no ack without a revocation");
    h.task.abort();
}

#[tokio::test]
async fn driver_demotes_and_fails_when_the_session_ends() {
    let h = Harness::start();
    h.tx.send_replace(holding(5, Duration::from_secs(10)));
    wait_lines(&h.file, 1).await;
    // The session refuses for good: its last status is Lost, then it ends.
    h.tx.send_replace(LeaseStatus::Lost);
    let Harness { tx, task, file, .. } = h;
    drop(tx);
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        matches!(result, Ok(Ok(Err(AgentError::Session(_))))),
        "{result:?}"
    );
    assert_eq!(lines(&file), vec!["promote 5", "demote 5 expired"]);
}

/// Sends `request` to `addr` and returns the status code and body.
async fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn http_endpoint_serves_the_state_200_when_primary_503_otherwise() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(AgentState::replica("payments", "us-east", "agent-1"));
    let server = tokio::spawn(serve_http(listener, rx));

    let (code, body) = http(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, 503);
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["role"], "replica");
    assert_eq!(j["service"], "payments");
    assert_eq!(j["region"], "us-east");
    assert_eq!(j["agent_id"], "agent-1");
    assert!(j["token"].is_null());
    assert_eq!(j["valid_for_ms"], 0);

    tx.send_replace(AgentState {
        role: Role::Primary,
        token: Some(42),
        valid_until: Some(Instant::now() + Duration::from_secs(30)),
        ..AgentState::replica("payments", "us-east", "agent-1")
    });
    let (code, body) = http(addr, "GET /?probe=1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 200);
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["role"], "primary");
    assert_eq!(j["token"], 42);
    let left = j["valid_for_ms"].as_u64().unwrap_or(0);
    assert!(left > 20_000 && left <= 30_000, "{left}");

    let (code, body) = http(addr, "HEAD / HTTP/1.1\r\n\r\n").await;
    assert_eq!((code, body.as_str()), (200, ""));
    // HEAD gets GET's headers: the length of the body it leaves out, no caching.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"HEAD / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut head = String::new();
    s.read_to_string(&mut head).await.expect("read");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store\r\n"), "{head}");
    assert!(!head.contains("content-length: 0\r\n"), "{head}");
    assert!(head.contains("content-length: "), "{head}");
    assert_eq!(http(addr, "POST / HTTP/1.1\r\n\r\n").await.0, 405);
    assert_eq!(http(addr, "GET /other HTTP/1.1\r\n\r\n").await.0, 404);
    // A request head over 8 KiB is refused, not buffered.
    let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(9 * 1024));
    assert_eq!(http(addr, &big).await.0, 431);
    assert_eq!(http(addr, "NONSENSE\r\n\r\n").await.0, 400);
    // HTTP/1.0 clients (jepsen's reader is one) get the same answer.
    let (code, body) = http(addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"primary\""), "{body}");

    // A primary whose validity passed reads as replica even if nobody republished.
    tx.send_replace(AgentState {
        role: Role::Primary,
        token: Some(42),
        valid_until: Some(Instant::now()),
        ..AgentState::replica("payments", "us-east", "agent-1")
    });
    assert_eq!(http(addr, "GET / HTTP/1.1\r\n\r\n").await.0, 503);
    server.abort();
}

#[test]
fn state_file_is_replaced_atomically_and_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let t = Instant::now();
    let primary = AgentState {
        role: Role::Primary,
        token: Some(9),
        valid_until: Some(t + Duration::from_secs(3)),
        ..AgentState::replica("payments", "us-east", "agent-1")
    };
    write_state_file(&path, &AgentState::replica("payments", "us-east", "a"), t)
        .expect("first write");
    write_state_file(&path, &primary, t).expect("second write");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert_eq!(j["role"], "primary");
    assert_eq!(j["token"], 9);
    assert_eq!(j["valid_for_ms"], 3000);
    // Only the file itself is left: no temporary files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn options_are_validated() {
    let ok = AgentOptions::new(vec!["127.0.0.1:7101".into()], "payments", "us-east");
    assert!(ok.validate().is_ok());
    assert!(!ok.agent_id.is_empty() && ok.agent_id.len() <= 128);
    assert!(ok.agent_id.ends_with(&format!("-{}", std::process::id())));
    let bad = [
        AgentOptions {
            service: "Payments".into(),
            ..ok.clone()
        },
        AgentOptions {
            endpoints: vec![],
            ..ok.clone()
        },
        AgentOptions {
            on_demote: Some("  ".into()),
            ..ok.clone()
        },
        AgentOptions {
            hook_timeout: Duration::ZERO,
            ..ok.clone()
        },
        AgentOptions {
            lease: crate::client::LeaseOptions {
                auto_ack_demotion: true,
                ..Default::default()
            },
            ..ok.clone()
        },
    ];
    for b in bad {
        assert!(matches!(b.validate(), Err(AgentError::Invalid(_))), "{b:?}");
    }
}

#[tokio::test]
async fn run_refuses_a_busy_http_port_before_starting() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut opts = AgentOptions::new(vec!["127.0.0.1:1".into()], "payments", "us-east");
    opts.http_listen = Some(taken.local_addr().expect("addr"));
    let result = run(opts, async {}).await;
    assert!(matches!(result, Err(AgentError::Io { .. })), "{result:?}");
}

#[test]
fn run_is_a_send_future() {
    // The caller may spawn it on a multi-threaded runtime.
    fn assert_send<T: Send>(_: &T) {}
    let opts = AgentOptions::new(vec!["127.0.0.1:1".into()], "payments", "us-east");
    let fut = run(opts, async {});
    assert_send(&fut);
}
