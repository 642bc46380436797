//! `baton dev`: a local three-region cluster for trying baton out — three nodes in one
//! process on 127.0.0.1, data in a temporary directory, and the sample service `payments`.
//! Insecure (no TLS, no authentication) by design, and it says so.

use std::path::PathBuf;
use std::time::Duration;

use super::{Node, NodeError};
use crate::config::{
    HealthConfig, NodeConfig, PeerConfig, ServiceConfig, StorageConfig, TimingConfig,
};

/// Options of `baton dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where to keep data (default: a temporary directory removed at exit).
    pub data_dir: Option<PathBuf>,
    /// First port; nodes use base, base+1, base+2.
    pub base_port: u16,
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
                            base + super::agents::HEALTH_OFFSET + i as u16
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
    let configs = cluster_configs(&dir, opts.base_port, "baton-dev", true);
    for c in &configs {
        c.validate().map_err(|e| NodeError::Other(e.to_string()))?;
    }
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
    if let Err(e) = wait_for_service(&configs, "payments").await {
        for n in nodes {
            let _ = n.stop().await;
        }
        return Err(e);
    }
    let regions = match super::agents::start(&configs, opts.base_port).await {
        Ok(r) => r,
        Err(e) => {
            for n in nodes {
                let _ = n.stop().await;
            }
            return Err(NodeError::Other(e));
        }
    };
    let endpoints: Vec<String> = configs.iter().map(|c| c.listen.clone()).collect();
    println!("baton dev — a local three-region cluster");
    println!("  INSECURE: no TLS and no authentication; for trying baton on this machine only.");
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
    println!();
    println!(
        "Try, in another terminal (the CLI talks to {} by default):",
        endpoints.join(",")
    );
    println!("  baton status");
    println!("  baton primary payments");
    println!("  baton watch payments");
    println!("  baton failover payments --to eu-west --reason \"drill\"");
    println!("  baton validate payments <old token>");
    println!("  baton audit");
    println!("  baton dev outage us-east     # us-east's agent and endpoint go down: watch payments fail over");
    println!("  baton dev heal us-east       # 10s after it is healthy again, payments fails back");
    println!("  baton workflows payments     # the runs, with time to detect and time to recover");
    println!("Ctrl-C stops the cluster.");
    super::stop_signal().await;
    println!("stopping…");
    for n in nodes {
        n.stop().await?;
    }
    drop(regions);
    Ok(())
}

/// Waits until `service` can be read linearizably from the cluster of `configs`.
async fn wait_for_service(configs: &[NodeConfig], service: &str) -> Result<(), NodeError> {
    let endpoints = configs.iter().map(|c| c.listen.clone()).collect();
    let client =
        crate::client::Client::new(endpoints).map_err(|e| NodeError::Other(e.to_string()))?;
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
