//! Test harness: real `baton server` processes on 127.0.0.1, each with its own data
//! directory, killed and restarted at will. Waits are on conditions (polling with a
//! deadline), never fixed sleeps.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::proto::admin_client::AdminClient;
use baton::proto::coordinator_client::CoordinatorClient;
use baton::proto::{self, ClusterStatusRequest};
use tonic::transport::Channel;

/// Free TCP ports on 127.0.0.1 (bound then released; the OS does not hand them out again
/// immediately).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One node of a test cluster.
pub struct TestNode {
    pub id: u64,
    pub region: String,
    pub addr: String,
    /// Where the node serves the internal Raft service.
    pub peer_addr: String,
    /// Where the node serves metrics and readiness over HTTP.
    pub admin_addr: String,
    pub config: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of real processes.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    pub cluster: String,
}

pub const REGIONS: [&str; 5] = ["us-east", "eu-west", "ap-south", "sa-east", "af-south"];

pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// The `[[services]]` TOML of a test service with three regions.
pub fn service_toml(name: &str, ttl: &str) -> String {
    format!(
        "[[services]]\nname = \"{name}\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"{ttl}\"\n"
    )
}

impl TestCluster {
    /// Writes configs for `n` voters (regions in order) plus `services_toml`, starts them.
    pub async fn start(n: usize, services_toml: &str) -> TestCluster {
        Self::start_with(n, services_toml, "").await
    }

    /// Like `start`, with extra top-level TOML in every node config (e.g. `[storage]`).
    pub async fn start_with(n: usize, services_toml: &str, extra: &str) -> TestCluster {
        let mut c = Self::prepare(n, services_toml, extra);
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Writes the configs of `n` voters without starting them. Each node serves Raft on its
    /// own peer port (`peer_listen`), which the others dial.
    pub fn prepare(n: usize, services_toml: &str, extra: &str) -> TestCluster {
        Self::prepare_timed(n, services_toml, extra, TIMING)
    }

    /// Like `start_with`, with `timing` (a `[timing]` table) instead of [`TIMING`].
    pub async fn start_timed(n: usize, services_toml: &str, timing: &str) -> TestCluster {
        let mut c = Self::prepare_timed(n, services_toml, "", timing);
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Like `prepare`, with `timing` instead of [`TIMING`].
    pub fn prepare_timed(n: usize, services_toml: &str, extra: &str, timing: &str) -> TestCluster {
        let root = tempfile::tempdir().unwrap();
        let all = free_ports(3 * n);
        let (ports, rest) = all.split_at(n);
        let (peer_ports, admin_ports) = rest.split_at(n);
        let cluster = "test".to_string();
        let mut peers = String::new();
        for (i, port) in ports.iter().enumerate() {
            peers.push_str(&format!(
                "[[peers]]\nid = {}\naddr = \"127.0.0.1:{port}\"\nregion = \"{}\"\n",
                i + 1,
                REGIONS[i]
            ));
        }
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let dir = root.path().join(format!("node{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("node.toml");
            let mut dial = String::from("[dial]\n");
            for (j, pp) in peer_ports.iter().enumerate() {
                if j != i {
                    dial.push_str(&format!("\"{}\" = \"127.0.0.1:{pp}\"\n", j + 1));
                }
            }
            let text = format!(
                "cluster = \"{cluster}\"\nid = {id}\nregion = \"{}\"\nlisten = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n{timing}\n{dial}\n{extra}\n{peers}\n{services_toml}",
                REGIONS[i],
                peer_ports[i],
                admin_ports[i],
                dir.join("data").display()
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(TestNode {
                id,
                region: REGIONS[i].to_string(),
                addr: format!("127.0.0.1:{port}"),
                peer_addr: format!("127.0.0.1:{}", peer_ports[i]),
                admin_addr: format!("127.0.0.1:{}", admin_ports[i]),
                config,
                dir,
                child: None,
            });
        }
        TestCluster {
            root,
            nodes,
            cluster,
        }
    }

    /// Makes a CA and node certificates with `baton cert` in `<root>/<name>`; returns the dir.
    pub fn make_certs(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        let out = Command::new(baton_bin())
            .args(["cert", "--nodes", &self.nodes.len().to_string(), "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "baton cert: {out:?}");
        dir
    }

    /// Turns on mutual TLS between the nodes with the certificates in `certs` (before start).
    pub fn enable_peer_tls(&self, certs: &std::path::Path) {
        for n in &self.nodes {
            let mut text = std::fs::read_to_string(&n.config).unwrap();
            text.push_str(&format!(
                "\n[peer_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                certs.join("ca.pem").display(),
                certs.join(format!("node-{}.pem", n.id)).display(),
                certs.join(format!("node-{}.key", n.id)).display()
            ));
            std::fs::write(&n.config, text).unwrap();
        }
    }

    /// Waits for node `i`'s process to exit; returns its exit code.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.nodes[i].child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Writes the config of a new node that joins later (no initial peers). It dials the
    /// others at their peer ports; they have no `[dial]` entry for it, so it serves Raft on
    /// its client address (no `peer_listen`).
    pub fn prepare_joiner(&mut self, region: &str, extra: &str) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let port = free_ports(1)[0];
        let dir = self.root.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        let mut dial = String::from("[dial]\n");
        for n in &self.nodes {
            dial.push_str(&format!("\"{}\" = \"{}\"\n", n.id, n.peer_addr));
        }
        let text = format!(
            "cluster = \"{}\"\nid = {id}\nregion = \"{region}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{TIMING}\n{dial}\n{extra}\n",
            self.cluster,
            dir.join("data").display()
        );
        std::fs::write(&config, text).unwrap();
        self.nodes.push(TestNode {
            id,
            region: region.to_string(),
            addr: format!("127.0.0.1:{port}"),
            peer_addr: format!("127.0.0.1:{port}"),
            admin_addr: String::new(),
            config,
            dir,
            child: None,
        });
        self.nodes.len() - 1
    }

    /// Starts node `i` (index, not id).
    pub fn spawn(&mut self, i: usize) {
        self.spawn_inner(i, None);
    }

    /// Starts node `i` with a descriptor limit (`ulimit -n`, soft and hard) of `nofile`.
    pub fn spawn_with_nofile(&mut self, i: usize, nofile: u64) {
        self.spawn_inner(i, Some(nofile));
    }

    /// Process id of node `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    fn spawn_inner(&mut self, i: usize, nofile: Option<u64>) {
        use std::os::unix::process::CommandExt;
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} already running", node.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("node.log"))
            .unwrap();
        let mut cmd = Command::new(baton_bin());
        cmd.arg("server")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        node.child = Some(child);
    }

    /// Resident memory of node `i`'s process in KiB (Linux `/proc`), if it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.nodes[i].child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// kill -9 node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `i` and wait for it to exit; returns its exit status success.
    pub fn terminate(&mut self, i: usize) -> bool {
        match self.nodes[i].child.take() {
            Some(mut c) => {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                c.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => true,
        }
    }

    /// Sends `sig` to node `i`'s process (SIGSTOP/SIGCONT to freeze and thaw it).
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("node.log")).unwrap_or_default()
    }

    pub async fn coordinator(&self, i: usize) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(channel(&self.nodes[i].addr))
    }

    pub async fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(channel(&self.nodes[i].addr))
    }

    /// Status of running node `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<proto::ClusterStatusResponse> {
        if !self.nodes[i].is_running() {
            return None;
        }
        let mut a = self.admin(i).await;
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            a.cluster_status(ClusterStatusRequest {}),
        )
        .await;
        r.ok()?.ok().map(|r| r.into_inner())
    }

    /// Waits until every running node agrees on one leader that is running; returns its index.
    pub async fn leader(&self, timeout: Duration) -> usize {
        eventually(timeout, "a leader all running nodes agree on", || async {
            let mut leader = None;
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                let s = self.status(i).await?;
                if s.leader_id == 0 {
                    return None;
                }
                match leader {
                    None => leader = Some(s.leader_id),
                    Some(l) if l != s.leader_id => return None,
                    _ => {}
                }
            }
            let id = leader?;
            let idx = self.nodes.iter().position(|n| n.id == id)?;
            self.nodes[idx].is_running().then_some(idx)
        })
        .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!("---- log of node {} ----\n{}", n.id, tail(&self.log(i), 60));
            }
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Short timings so tests run quickly.
pub const TIMING: &str =
    "[timing]\nheartbeat = \"50ms\"\nelection_timeout_min = \"300ms\"\nelection_timeout_max = \"600ms\"\n";

/// GET `path` from an HTTP/1.1 server at `addr`: (status, body). Test-only and minimal: one
/// request per connection, the server closes it.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A client of the whole cluster, endpoints in node order.
pub fn client(c: &TestCluster) -> baton::client::Client {
    baton::client::Client::new(c.endpoints()).unwrap()
}

/// A client whose endpoint list starts with node `first`.
pub fn client_first(c: &TestCluster, first: usize) -> baton::client::Client {
    let mut e = c.endpoints();
    let f = e.remove(first);
    e.insert(0, f);
    baton::client::Client::new(e).unwrap()
}

/// An agent for `region` that acknowledges demotion at once.
pub fn agent(c: &TestCluster, service: &str, region: &str) -> baton::client::LeaseHandle {
    client(c).keep_alive(
        service,
        region,
        &format!("test-agent-{region}"),
        baton::client::LeaseOptions {
            auto_ack_demotion: true,
            ..Default::default()
        },
    )
}

/// Linearizable lease of `service`, retried until it answers.
pub async fn lease(cl: &baton::client::Client, service: &str) -> proto::Lease {
    eventually(Duration::from_secs(20), "a linearizable read", || async {
        cl.primary(service, proto::Consistency::Linearizable)
            .await
            .ok()
            .and_then(|r| r.lease)
    })
    .await
}

/// Waits until an agent holds its lease; returns the token.
pub async fn held(a: &baton::client::LeaseHandle) -> u64 {
    tokio::time::timeout(Duration::from_secs(20), a.held())
        .await
        .expect("the agent did not get the lease in time")
        .expect("the lease session ended")
}

/// A switchover request.
pub fn switchover(service: &str, to: &str, expected: u64) -> proto::FailoverRequest {
    proto::FailoverRequest {
        service: service.into(),
        to_region: to.into(),
        reason: format!("test: move {service} to {to}"),
        expected_token: expected,
        dry_run: false,
    }
}

/// A health endpoint for one region: answers 200 or 503, optionally 503 only to one vantage
/// (the `X-Baton-Vantage` header coordinator probes send, e.g. `node-2@eu-west`).
pub struct HealthServer {
    pub url: String,
    state: std::sync::Arc<std::sync::Mutex<(bool, Option<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    pub async fn start() -> HealthServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let state = std::sync::Arc::new(std::sync::Mutex::new((true, None::<String>)));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let vantage = head
                        .lines()
                        .find_map(|l| l.strip_prefix("X-Baton-Vantage: "))
                        .map(str::to_string);
                    let (healthy, failing_for) = st.lock().unwrap().clone();
                    let ok = match failing_for {
                        Some(v) => vantage.as_deref() != Some(v.as_str()),
                        None => healthy,
                    };
                    let status = if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let _ = conn
                        .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        HealthServer { url, state, task }
    }

    pub fn set_healthy(&self, healthy: bool) {
        *self.state.lock().unwrap() = (healthy, None);
    }

    /// Fails only for probes from `vantage`.
    pub fn fail_only_for(&self, vantage: &str) {
        *self.state.lock().unwrap() = (true, Some(vantage.to_string()));
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[[services]]` TOML of `payments` with an HTTP health check per region (fast probes).
pub fn service_with_health(health: &[(&str, &HealthServer)], extra: &str) -> String {
    let mut s = String::from(
        "[[services]]\nname = \"payments\"\nregions = [\"us-east\", \"eu-west\", \"ap-south\"]\nlease_ttl = \"1s\"\ncooldown = \"0s\"\n",
    );
    s.push_str(extra);
    for (region, server) in health {
        s.push_str(&format!(
            "[services.health.{region}]\nkind = \"http\"\ntarget = \"{}\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nthreshold = 2\n",
            server.url
        ));
    }
    s
}

/// Runs of a service, newest first.
pub async fn workflows(c: &TestCluster, service: &str) -> Vec<proto::Workflow> {
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut co = c.coordinator(leader).await;
    co.list_workflows(proto::ListWorkflowsRequest {
        service: service.into(),
        limit: 100,
    })
    .await
    .map(|r| r.into_inner().workflows)
    .unwrap_or_default()
}
