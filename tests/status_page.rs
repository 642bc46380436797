//! The live status page (`/`, `/status.json`, `/events` on the admin listener) in a real
//! browser: headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a
//! pipe (`--remote-debugging-pipe`: NUL-terminated JSON on the child's fds 3 and 4), so no
//! websocket client and no extra crate.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    agent, client, eventually, held, http_get, service_toml, switchover, TestCluster,
};

/// How long the page may take to show a change before the test fails: generous, so a busy
/// machine cannot flake it (the latency itself is printed, not asserted).
const PAGE_DEADLINE: Duration = Duration::from_secs(15);

/// The Chromium binary: `$BATON_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// Chromium, or None after a loud SKIP line; under CI=true a missing browser fails.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: chromium not found and CI=true: install it (apt-get install -y chromium) or set BATON_CHROMIUM");
        }
        eprintln!(
            "\n********** SKIP {test}: chromium not found (apt-get install -y chromium, or set BATON_CHROMIUM) **********\n"
        );
    }
    found
}

/// A headless Chromium and one page of it.
struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(bin: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromium.log");
        let (cmd_read, commands) = std::io::pipe().unwrap();
        let (replies_read, reply_write) = std::io::pipe().unwrap();
        let (a, b) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox", // root in a container has no user namespace sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(profile.path().join("chromium.err")).unwrap());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Put the command pipe on fd 3 and the reply pipe on fd 4, without
                // close-on-exec (dup2 onto the same number keeps the flag: clear it).
                let b = if b == 3 {
                    libc::fcntl(b, libc::F_DUPFD, 5)
                } else {
                    b
                };
                for (from, to) in [(a, 3), (b, 4)] {
                    if from == to {
                        if libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop(cmd_read);
        drop(reply_write);
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(replies_read);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        Browser {
            child,
            commands,
            replies,
            next_id: 1,
            session: None,
            log,
            _profile: profile,
        }
    }

    /// One DevTools command (on the page's session once attached): its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap_or_else(|e| {
            panic!(
                "chromium stopped reading commands ({e}); log: {}",
                self.log.display()
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} from chromium ({e})"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            // Events (no id) are not needed here.
        }
    }

    /// Opens `url` in a new page and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(r["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, c| (acc << 6) | val(*c)) << (6 * (4 - chunk.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Where the screenshot goes: `target/status-page.png` (or under `$CARGO_TARGET_DIR`).
fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("status-page.png")
}

/// Polls the page until `expression` evaluates to `want`, or fails after [`PAGE_DEADLINE`].
async fn page_shows(b: &mut Browser, what: &str, expression: &str, want: Value) -> Instant {
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        let got = tokio::task::block_in_place(|| b.eval(expression));
        if got == want {
            return Instant::now();
        }
        if Instant::now() > deadline {
            let shot = screenshot_path();
            tokio::task::block_in_place(|| b.screenshot(&shot));
            panic!("after {PAGE_DEADLINE:?} the page still shows {got} for {what}, not {want} (screenshot: {})", shot.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PRIMARY: &str = r#"(() => { const c = document.querySelector('tr[data-service="payments"] td.primary'); return c ? c.textContent : null; })()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_browser_follows_a_failover() {
    let Some(bin) = chromium_or_skip("status_page_in_a_browser_follows_a_failover") else {
        return;
    };
    let c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    let leader = c.leader(Duration::from_secs(20)).await;
    let cl = client(&c);
    let us = agent(&c, "payments", "us-east");
    let _eu = agent(&c, "payments", "eu-west");
    let old = held(&us).await;
    // A follower's page: it serves its own applied state and names the leader.
    let follower = (leader + 1) % c.nodes.len();
    let admin = c.nodes[follower].admin_addr.clone();
    eventually(
        Duration::from_secs(20),
        "the follower to apply the grant",
        || async {
            let (status, body) = http_get(&admin, "/status.json").await?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["services"][0]["primary"] == "us-east").then_some(())
        },
    )
    .await;

    let mut b = tokio::task::block_in_place(|| {
        let mut b = Browser::launch(&bin);
        b.open(&format!("http://{admin}/"));
        b
    });
    page_shows(&mut b, "payments' primary", PRIMARY, json!("us-east")).await;
    page_shows(
        &mut b,
        "the live connection",
        "document.getElementById('conn').className",
        json!("conn live"),
    )
    .await;
    let shown = |id: &str| format!("document.getElementById('{id}').textContent");
    assert_eq!(
        tokio::task::block_in_place(|| b.eval(&shown("node-id"))),
        json!(c.nodes[follower].id.to_string())
    );
    assert_eq!(
        tokio::task::block_in_place(|| b.eval(&shown("leader-id"))),
        json!(c.nodes[leader].id.to_string())
    );
    assert_eq!(
        tokio::task::block_in_place(|| b.eval(&shown("role"))),
        json!("follower")
    );

    // The reason is user text with markup: the page must show it, not run it.
    let evil = "drill <img src=x onerror=\"window.pwned=1\">";
    let mut req = switchover("payments", "eu-west", old);
    req.reason = evil.into();
    let sent = Instant::now();
    cl.failover(req).await.expect("switchover");
    let granted = Instant::now();
    let seen = page_shows(&mut b, "payments' new primary", PRIMARY, json!("eu-west")).await;
    println!(
        "status page latency (follower's page, debug build): switchover committed → page shows eu-west {:?}; request sent → page {:?}",
        seen - granted,
        seen - sent
    );
    page_shows(
        &mut b,
        "the reason in the timeline, as text",
        &format!(
            "Array.from(document.querySelectorAll('#timeline td')).some(td => td.textContent.includes({}))",
            serde_json::to_string(evil).unwrap()
        ),
        json!(true),
    )
    .await;
    assert_eq!(
        tokio::task::block_in_place(
            || b.eval("document.querySelectorAll('img').length + (window.pwned ? 100 : 0)")
        ),
        json!(0),
        "user markup became elements"
    );
    let shot = screenshot_path();
    tokio::task::block_in_place(|| b.screenshot(&shot));
    println!("screenshot: {}", shot.display());
}

/// Reads an HTTP answer's head from `s`: the status code.
async fn status_of(s: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn open_events(addr: &str) -> (tokio::net::TcpStream, Option<u16>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let code = status_of(&mut s).await;
    (s, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_streams_push_changes_and_are_capped() {
    use tokio::io::AsyncReadExt;
    let c = TestCluster::start(3, &service_toml("payments", "1s")).await;
    c.leader(Duration::from_secs(20)).await;
    let admin = c.nodes[0].admin_addr.clone();
    let (status, page) = http_get(&admin, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("id=\"initial\""), "{page}");

    // The first stream gets a snapshot at once, then the grant when an agent takes the lease.
    let (mut first, code) = open_events(&admin).await;
    assert_eq!(code, Some(200));
    let _us = agent(&c, "payments", "us-east");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("\"primary\":\"us-east\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, first.read(&mut buf))
            .await
            .expect("no status event naming us-east in time")
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: status\ndata: {"), "{seen}");

    // 64 streams at once; the 65th is refused with 503 and a reason.
    let mut open = vec![first];
    for _ in 1..64 {
        let (s, code) = open_events(&admin).await;
        assert_eq!(code, Some(200));
        open.push(s);
    }
    let (_refused, code) = open_events(&admin).await;
    assert_eq!(code, Some(503));
    let (status, body) = http_get(&admin, "/events").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("too many open status streams"), "{body}");
    // Scrapes still get in beside them.
    assert_eq!(http_get(&admin, "/metrics").await.unwrap().0, 200);
    // A closed stream frees its slot (noticed at the latest on the next heartbeat).
    drop(open.pop());
    eventually(
        Duration::from_secs(20),
        "a freed status stream slot",
        || async {
            let (_s, code) = open_events(&admin).await;
            (code == Some(200)).then_some(())
        },
    )
    .await;
}
