//! `baton dev`: a local three-region cluster for trying baton out — three nodes in one
//! process on 127.0.0.1, data in a temporary directory, and the sample service `payments`.
//! Plain, it is insecure (no TLS, no authentication) by design, and says so; with `--tls`
//! it makes a dev CA with node and client certificates in its data directory and runs both
//! listeners with mutual TLS.

use std::path::PathBuf;
use std::time::Duration;

pub mod regions;

use crate::client::ClientTls;
use crate::config::{
    ClientAuth, ClientTlsConfig, HealthConfig, NodeConfig, PeerConfig, PeerTlsConfig,
    ServiceConfig, StorageConfig, TimingConfig,
};
use crate::node::{Node, NodeError};

/// Options of `baton dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where to keep data (default: a temporary directory removed at exit).
    pub data_dir: Option<PathBuf>,
    /// First port; nodes use base, base+1, base+2.
    pub base_port: u16,
    /// Mutual TLS on both listeners, with certificates made under the data directory.
    pub tls: bool,
}

/// The certificates of `baton dev --tls`, under `<data>/tls`.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The directory.
    pub dir: PathBuf,
}

impl DevCerts {
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate and key by stem (`node-1`, `client-admin`).
    pub fn pair(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// Makes a CA, certificates for nodes 1-3 and the clients `admin` and `agent` in `dir`
    /// (kept as they are when a previous run made them).
    pub fn make(dir: PathBuf) -> Result<Self, NodeError> {
        let certs = Self { dir };
        if certs.ca().exists() {
            return Ok(certs);
        }
        let err = |e: &dyn std::fmt::Display| NodeError::Other(format!("dev certificates: {e}"));
        std::fs::create_dir_all(&certs.dir).map_err(|e| err(&e))?;
        use crate::pki as cert;
        let (ca, ca_key) = cert::make_ca("baton dev CA").map_err(|e| err(&e))?;
        let mut files = vec![(certs.ca(), ca.pem(), false)];
        for id in 1..=DEV_REGIONS.len() as u64 {
            let (c, k) = cert::make_node(id, &[], &ca, &ca_key).map_err(|e| err(&e))?;
            let (cp, kp) = certs.pair(&format!("node-{id}"));
            files.push((cp, c.pem(), false));
            files.push((kp, k.serialize_pem(), true));
        }
        for name in ["admin", "agent"] {
            let (c, k) = cert::make_client(name, &ca, &ca_key).map_err(|e| err(&e))?;
            let (cp, kp) = certs.pair(&format!("client-{name}"));
            files.push((cp, c.pem(), false));
            files.push((kp, k.serialize_pem(), true));
        }
        // The CA key is not needed by the cluster: `baton cert client NAME --out DIR` can
        // issue more with it.
        files.push((certs.dir.join("ca.key"), ca_key.serialize_pem(), true));
        // The CA certificate last: its presence says the set is complete.
        files.rotate_left(1);
        for (path, text, secret) in files {
            write_file(&path, &text, secret)
                .map_err(|e| err(&format!("{}: {e}", path.display())))?;
        }
        Ok(certs)
    }

    /// Turns on `[peer_tls]` and `[client_tls]` (client certificates required) in `cfg`.
    pub fn apply(&self, cfg: &mut NodeConfig) {
        let (cert, key) = self.pair(&format!("node-{}", cfg.id));
        cfg.peer_tls = Some(PeerTlsConfig {
            ca: self.ca(),
            cert: cert.clone(),
            key: key.clone(),
        });
        cfg.client_tls = Some(ClientTlsConfig {
            cert,
            key,
            ca: Some(self.ca()),
            client_auth: Some(ClientAuth::Required),
        });
    }

    /// The client TLS settings of `client-<name>`.
    pub fn client(&self, name: &str) -> Result<ClientTls, NodeError> {
        let (cert, key) = self.pair(&format!("client-{name}"));
        ClientTls::from_files(Some(&self.ca()), Some(&cert), Some(&key))
            .map_err(|e| NodeError::Other(e.to_string()))?
            .ok_or_else(|| NodeError::Other("dev certificates: no CA".into()))
    }
}

fn write_file(path: &std::path::Path, text: &str, secret: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::io::Write::write_all(&mut opts.open(path)?, text.as_bytes())
}

/// The dev cluster's regions, in the sample service's preference order.
pub const DEV_REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// The sample service of the dev cluster; with `base_port`, each region gets an HTTP health
/// check against its simulated endpoint (sub-second probes, so an outage shows quickly).
pub fn sample_service(base_port: Option<u16>) -> ServiceConfig {
    let health = match base_port {
        Some(base) => DEV_REGIONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.to_string(),
                    HealthConfig {
                        kind: "http".into(),
                        target: format!(
                            "http://127.0.0.1:{}/health",
                            base + regions::HEALTH_OFFSET + i as u16
                        ),
                        interval: Duration::from_millis(200),
                        timeout: Duration::from_millis(150),
                        threshold: 2,
                    },
                )
            })
            .collect(),
        None => Default::default(),
    };
    ServiceConfig {
        name: "payments".into(),
        regions: DEV_REGIONS.iter().map(|r| r.to_string()).collect(),
        allowed_regions: vec![],
        lease_ttl: Duration::from_secs(2),
        initial_primary: Some("us-east".into()),
        auto_failover: true,
        failback: "auto".into(),
        failback_stable: Duration::from_secs(10),
        cooldown: Duration::from_secs(10),
        flap_limit: 5,
        flap_window: Duration::from_secs(300),
        health,
        plans: Default::default(),
    }
}

/// Port offset of the nodes' peer (Raft) listeners: node `i` (1-based) listens for peers on
/// `base + PEER_OFFSET + i - 1`.
pub const PEER_OFFSET: u16 = 20;
/// Node `i`'s admin HTTP listener (metrics, readiness) is at `base + ADMIN_OFFSET + i - 1`.
pub const ADMIN_OFFSET: u16 = 30;

fn peer_addr(base_port: u16, id: u64) -> String {
    format!("127.0.0.1:{}", base_port + PEER_OFFSET + id as u16 - 1)
}

/// Node configs of a local three-region cluster on `127.0.0.1:base..base+2` under `dir`;
/// `with_health` adds the simulated regions' health checks to the sample service.
pub fn cluster_configs(
    dir: &std::path::Path,
    base_port: u16,
    cluster: &str,
    with_health: bool,
) -> Vec<NodeConfig> {
    let peers: Vec<PeerConfig> = DEV_REGIONS
        .iter()
        .enumerate()
        .map(|(i, region)| PeerConfig {
            id: i as u64 + 1,
            addr: format!("127.0.0.1:{}", base_port + i as u16),
            region: region.to_string(),
        })
        .collect();
    peers
        .iter()
        .map(|p| NodeConfig {
            cluster: cluster.to_string(),
            id: p.id,
            region: p.region.clone(),
            listen: p.addr.clone(),
            advertise: None,
            peer_listen: Some(peer_addr(base_port, p.id)),
            peer_tls: None,
            admin_listen: Some(format!(
                "127.0.0.1:{}",
                base_port + ADMIN_OFFSET + p.id as u16 - 1
            )),
            client_tls: None,
            auth: Default::default(),
            data_dir: dir.join(format!("node{}", p.id)),
            peers: peers.clone(),
            dial: peers
                .iter()
                .filter(|q| q.id != p.id)
                .map(|q| (q.id.to_string(), peer_addr(base_port, q.id)))
                .collect(),
            timing: TimingConfig {
                heartbeat: Duration::from_millis(50),
                election_timeout_min: Duration::from_millis(300),
                election_timeout_max: Duration::from_millis(600),
                ..TimingConfig::default()
            },
            storage: StorageConfig::default(),
            limits: Default::default(),
            services: vec![sample_service(with_health.then_some(base_port))],
        })
        .collect()
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(opts: DevOptions) -> Result<(), NodeError> {
    let (dir, _temp) = match &opts.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("baton-dev-")
                .tempdir()
                .map_err(|e| {
                    NodeError::Other(format!("cannot create a temporary directory: {e}"))
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut configs = cluster_configs(&dir, opts.base_port, "baton-dev", true);
    let certs = if opts.tls {
        let certs = DevCerts::make(dir.join("tls"))?;
        for c in &mut configs {
            certs.apply(c);
        }
        Some(certs)
    } else {
        tracing::warn!(
            "INSECURE: `baton dev` runs without TLS and without authentication: anyone who \
             reaches 127.0.0.1 can read and change everything; use `baton dev --tls` to try \
             mutual TLS"
        );
        None
    };
    let (admin_tls, agent_tls) = match &certs {
        Some(c) => (Some(c.client("admin")?), Some(c.client("agent")?)),
        None => (None, None),
    };
    for c in &configs {
        c.validate().map_err(|e| NodeError::Other(e.to_string()))?;
    }
    // The simulated health endpoints answer before any node probes them: a node that found
    // them refusing at start saw every region unhealthy, and on a busy machine one region
    // could turn healthy before another, which automation took for an outage of the
    // primary's region (a failover on the first start).
    let regions = regions::start(&configs, opts.base_port, agent_tls)
        .await
        .map_err(NodeError::Other)?;
    let mut nodes = Vec::new();
    for c in configs.iter().cloned() {
        match Node::start(c).await {
            Ok(n) => nodes.push(n),
            Err(e) => {
                for n in nodes {
                    let _ = n.stop().await;
                }
                return Err(e);
            }
        }
    }
    // Agents start only once the sample service is committed: an agent that asked first
    // would be told the service does not exist (it retries, but the lease could lapse once
    // before it gets in, and that shows as a needless failover on the first start).
    if let Err(e) = wait_for_service(&configs, admin_tls, "payments").await {
        for n in nodes {
            let _ = n.stop().await;
        }
        return Err(e);
    }
    regions.start_agents();
    let endpoints: Vec<String> = configs.iter().map(|c| c.listen.clone()).collect();
    println!("baton dev — a local three-region cluster");
    let flags = match &certs {
        Some(c) => {
            let (cert, key) = c.pair("client-admin");
            println!(
                "  TLS on both listeners, client certificates required (CA and certificates in {})",
                c.dir.display()
            );
            format!(
                " --cacert {} --cert {} --key {}",
                c.ca().display(),
                cert.display(),
                key.display()
            )
        }
        None => {
            println!(
                "  INSECURE: no TLS and no authentication; for trying baton on this machine \
                 only (`baton dev --tls` for mutual TLS)."
            );
            String::new()
        }
    };
    for c in &configs {
        println!(
            "  node {}  {:<9} {}  (Raft peers: {})",
            c.id,
            c.region,
            c.listen,
            c.peer_listen.as_deref().unwrap_or("-")
        );
    }
    match &opts.data_dir {
        Some(d) => println!("  data: {} (kept)", d.display()),
        None => println!("  data: {} (removed on exit)", dir.display()),
    }
    println!("  service payments: us-east > eu-west > ap-south, primary us-east, lease TTL 2s,");
    println!(
        "  automatic failover, automatic failback after 10s healthy; each region has an agent"
    );
    println!(
        "  and a health endpoint on 127.0.0.1:{}..{}.",
        opts.base_port + 10,
        opts.base_port + 12
    );
    println!(
        "  metrics and readiness: http://127.0.0.1:{}/metrics .. :{} (/healthz, /readyz)",
        opts.base_port + ADMIN_OFFSET,
        opts.base_port + ADMIN_OFFSET + 2
    );
    println!(
        "  live status page: http://127.0.0.1:{}/ (any node: .. :{})",
        opts.base_port + ADMIN_OFFSET,
        opts.base_port + ADMIN_OFFSET + 2
    );
    println!();
    println!(
        "Try, in another terminal (the CLI talks to {} by default):",
        endpoints.join(",")
    );
    if let Some(c) = &certs {
        let (cert, key) = c.pair("client-admin");
        println!("  # every command needs the TLS flags:{flags}");
        println!("  # or once per shell:");
        println!(
            "  export BATON_CACERT={} BATON_CERT={} BATON_KEY={}",
            c.ca().display(),
            cert.display(),
            key.display()
        );
    }
    println!("  baton{flags} status");
    println!("  baton primary payments");
    println!("  baton watch payments");
    println!("  baton failover payments --to eu-west --reason \"drill\"");
    println!("  baton validate payments <old token>");
    println!("  baton audit");
    println!("  baton dev outage us-east     # us-east's agent and endpoint go down: watch payments fail over");
    println!("  baton dev heal us-east       # 10s after it is healthy again, payments fails back");
    println!("  baton workflows payments     # the runs, with time to detect and time to recover");
    println!("Ctrl-C stops the cluster.");
    crate::node::stop_signal().await;
    println!("stopping…");
    for n in nodes {
        n.stop().await?;
    }
    drop(regions);
    Ok(())
}

/// Waits until `service` can be read linearizably from the cluster of `configs`.
async fn wait_for_service(
    configs: &[NodeConfig],
    tls: Option<ClientTls>,
    service: &str,
) -> Result<(), NodeError> {
    let endpoints = configs.iter().map(|c| c.listen.clone()).collect();
    let options = crate::client::ClientOptions {
        tls,
        ..Default::default()
    };
    let client = crate::client::Client::with_options(endpoints, options)
        .map_err(|e| NodeError::Other(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match client
            .primary(service, crate::proto::Consistency::Linearizable)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(NodeError::Other(format!(
                    "the dev cluster did not create {service:?} within 60 s: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}
