//! The simulated regions of `baton dev`: per region, an agent that holds `payments` while
//! its region holds the lease, and an HTTP health endpoint. `baton dev outage REGION` takes
//! both down (the agent stops renewing, the endpoint answers 503); `baton dev heal REGION`
//! brings them back. A control endpoint on `127.0.0.1:<base_port + 9>` takes those requests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::client::{Client, ClientOptions, ClientTls, LeaseHandle, LeaseOptions};
use crate::config::NodeConfig;
use crate::http_client;

/// Port offset of the dev control endpoint from the base port.
pub const CONTROL_OFFSET: u16 = 9;
/// Port offset of the first region's health endpoint.
pub const HEALTH_OFFSET: u16 = 10;
/// Time a client of the endpoints has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `baton dev outage|heal` waits for the dev process (local, so an answer is quick).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of the control endpoint's answer read (a line of text).
const MAX_ANSWER: usize = 8 * 1024;

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

/// A plain-text answer.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Serves HTTP/1.1 on `listener`, one request per connection (these endpoints are polled by
/// probes and poked by the CLI, nothing more), answering with `answer`.
async fn serve<F>(listener: TcpListener, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // E.g. out of file descriptors: pause instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
            if let Err(e) = served {
                tracing::debug!("dev endpoint connection: {e}");
            }
        });
    }
}

async fn serve_health(
    listener: TcpListener,
    region: String,
    regions: Arc<Mutex<BTreeMap<String, Region>>>,
) {
    serve(listener, move |_req| {
        let up = regions
            .lock()
            .map(|m| m.get(&region).is_some_and(|r| r.up))
            .unwrap_or(false);
        if up {
            text(StatusCode::OK, "OK\n".into())
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "outage\n".into())
        }
    })
    .await
}

async fn serve_control(listener: TcpListener, control: Arc<DevRegionsHandle>) {
    serve(listener, move |req| {
        let result = match req.uri().path().trim_start_matches('/').split_once('/') {
            Some(("outage", region)) => control.set_up(region, false),
            Some(("heal", region)) => control.set_up(region, true),
            _ => Err("use POST /outage/REGION or /heal/REGION".to_string()),
        };
        match result {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    })
    .await
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
    let verb = if up { "heal" } else { "outage" };
    let req = http_client::request(
        Method::POST,
        &addr,
        &format!("/{verb}/{region}"),
        &[],
        Bytes::new(),
    )?;
    let answer = http_client::fetch(&addr, req, REQUEST_TIMEOUT, MAX_ANSWER, |_, _| false)
        .await
        .map_err(|e| match e {
            http_client::Error::Connect(e) => format!(
                "no `baton dev` answers on {addr} ({e}): start it first, with the same --base-port"
            ),
            e => format!("`baton dev` on {addr} did not answer: {e}"),
        })?;
    let body = String::from_utf8_lossy(&answer.body).trim().to_string();
    if answer.status == StatusCode::OK {
        Ok(body)
    } else {
        Err(body)
    }
}
