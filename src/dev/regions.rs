//! The simulated regions of `baton dev`: per region, an agent that holds `payments` while
//! its region holds the lease, and an HTTP health endpoint. `baton dev outage REGION` takes
//! both down (the agent stops renewing, the endpoint answers 503); `baton dev heal REGION`
//! brings them back. A control endpoint on `127.0.0.1:<base_port + 9>` takes those requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::{Client, ClientOptions, ClientTls, LeaseHandle, LeaseOptions};
use crate::config::NodeConfig;

/// Port offset of the dev control endpoint from the base port.
pub const CONTROL_OFFSET: u16 = 9;
/// Port offset of the first region's health endpoint.
pub const HEALTH_OFFSET: u16 = 10;

struct Region {
    up: bool,
    agent: Option<LeaseHandle>,
}

/// The simulated regions; dropping this stops agents and endpoints.
pub struct DevRegions {
    regions: Arc<Mutex<BTreeMap<String, Region>>>,
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DevRegions {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn agent(endpoints: &[String], tls: &Option<ClientTls>, region: &str) -> Option<LeaseHandle> {
    let options = ClientOptions {
        tls: tls.clone(),
        ..ClientOptions::default()
    };
    match Client::with_options(endpoints.to_vec(), options) {
        Ok(client) => Some(client.keep_alive(
            "payments",
            region,
            &format!("dev-agent-{region}"),
            LeaseOptions {
                auto_ack_demotion: true,
                ..LeaseOptions::default()
            },
        )),
        Err(e) => {
            tracing::warn!(%region, "dev agent not started: {e}");
            None
        }
    }
}

impl DevRegions {
    /// Starts the agent of every region that is up and has none.
    pub fn start_agents(&self) {
        let mut map = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        for (region, r) in map.iter_mut() {
            if r.up && r.agent.is_none() {
                r.agent = agent(&self.endpoints, &self.tls, region);
            }
        }
    }
}

async fn serve_health(
    listener: TcpListener,
    region: String,
    regions: Arc<Mutex<BTreeMap<String, Region>>>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let up = regions
            .lock()
            .map(|m| m.get(&region).is_some_and(|r| r.up))
            .unwrap_or(false);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let (status, body) = if up {
                ("200 OK", "OK\n")
            } else {
                ("503 Service Unavailable", "outage\n")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

async fn serve_control(listener: TcpListener, control: Arc<DevRegionsHandle>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let result = match path.trim_start_matches('/').split_once('/') {
                Some(("outage", region)) => control.set_up(region, false),
                Some(("heal", region)) => control.set_up(region, true),
                _ => Err("use POST /outage/REGION or /heal/REGION".to_string()),
            };
            let (status, body) = match result {
                Ok(()) => ("200 OK", "ok\n".to_string()),
                Err(e) => ("400 Bad Request", format!("{e}\n")),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// Shared access to the regions for the control endpoint.
struct DevRegionsHandle {
    regions: Arc<Mutex<BTreeMap<String, Region>>>,
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
}

impl DevRegionsHandle {
    fn set_up(&self, region: &str, up: bool) -> Result<(), String> {
        let mut map = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let r = map.get_mut(region).ok_or_else(|| {
            format!("no region {region:?} in the dev cluster (us-east, eu-west, ap-south)")
        })?;
        r.up = up;
        r.agent = if up {
            agent(&self.endpoints, &self.tls, region)
        } else {
            None
        };
        tracing::warn!(%region, "dev: region {}", if up { "healed" } else { "in outage" });
        Ok(())
    }
}

/// Starts the simulated regions: one agent and one health endpoint per region, and the
/// control endpoint. The agents connect with `tls` when given.
pub async fn start(
    configs: &[NodeConfig],
    base_port: u16,
    tls: Option<ClientTls>,
) -> Result<DevRegions, String> {
    let endpoints: Vec<String> = configs.iter().map(|c| c.listen.clone()).collect();
    let regions: Arc<Mutex<BTreeMap<String, Region>>> = Arc::new(Mutex::new(
        configs
            .iter()
            .map(|c| {
                (
                    c.region.clone(),
                    // Agents start later (`start_agents`), once the service exists.
                    Region {
                        up: true,
                        agent: None,
                    },
                )
            })
            .collect(),
    ));
    let mut tasks = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let port = base_port + HEALTH_OFFSET + i as u16;
        let l = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            format!(
                "cannot listen on 127.0.0.1:{port} for {}'s health endpoint: {e}",
                c.region
            )
        })?;
        tasks.push(tokio::spawn(serve_health(
            l,
            c.region.clone(),
            regions.clone(),
        )));
    }
    let port = base_port + CONTROL_OFFSET;
    let l = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        format!("cannot listen on 127.0.0.1:{port} for the dev control endpoint: {e}")
    })?;
    let handle = Arc::new(DevRegionsHandle {
        regions: regions.clone(),
        endpoints: endpoints.clone(),
        tls: tls.clone(),
    });
    tasks.push(tokio::spawn(serve_control(l, handle)));
    Ok(DevRegions {
        regions,
        endpoints,
        tls,
        tasks,
    })
}

/// Asks a running `baton dev` (on `base_port`) to take `region` down or bring it back.
pub async fn request(base_port: u16, region: &str, up: bool) -> Result<String, String> {
    let addr = format!("127.0.0.1:{}", base_port + CONTROL_OFFSET);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
        format!("no `baton dev` answers on {addr} ({e}): start it first, with the same --base-port")
    })?;
    let verb = if up { "heal" } else { "outage" };
    let req = format!("POST /{verb}/{region} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let body = out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    if out.starts_with("HTTP/1.1 200") {
        Ok(body)
    } else {
        Err(body)
    }
}
