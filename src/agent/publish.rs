//! Publishing the agent's state for the service beside it: a JSON file replaced atomically,
//! and a tiny HTTP/1.1 endpoint (hyper) a load balancer health check can use (200 when
//! primary, 503 otherwise).
//!
//! Both read the latest [`AgentState`] from a watch channel, so a slow disk or a slow
//! client never delays the agent's decisions (above all: self-fencing).

use std::convert::Infallible;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::machine::{AgentState, Role};

/// Writes `state` as JSON to `path` atomically: a temporary file in the same directory,
/// synced, then renamed over `path`, so a reader sees the old document or the new one,
/// never a torn one.
pub fn write_state_file(path: &Path, state: &AgentState, now: Instant) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".baton-agent-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    serde_json::to_writer(&mut tmp, &state.to_json(now))?;
    tmp.write_all(b"\n")?;
    // Temporary files are created 0600; the service reading this may run as another user.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    // Data on disk before the rename, so a crash cannot leave an empty file in its place.
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes every new state to `path` until the sender is dropped (the last state is
/// written too). Failures are logged; the agent goes on.
pub async fn file_writer(path: PathBuf, mut rx: watch::Receiver<AgentState>) {
    while rx.changed().await.is_ok() {
        let state = rx.borrow_and_update().clone();
        let p = path.clone();
        let written =
            tokio::task::spawn_blocking(move || write_state_file(&p, &state, Instant::now())).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(path = %path.display(), "cannot write the state file: {e}"),
            Err(e) => warn!(path = %path.display(), "state file writer failed: {e}"),
        }
    }
}

/// Largest request head accepted (hyper's smallest read buffer); beyond it hyper answers
/// 431 and closes.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are closed at once (a health checker retries).
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// JSON body (hyper leaves it out when answering HEAD).
    pub body: String,
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: serde_json::json!({ "error": message }).to_string(),
    }
}

/// The answer to a request for `target` with `method`: `GET /` (or `HEAD /`, with any
/// query) gives the state, 200 when primary at `now`, 503 otherwise.
pub fn respond(method: &str, target: &str, state: &AgentState, now: Instant) -> Reply {
    let path = target.split('?').next().unwrap_or(target);
    if path != "/" {
        return error_reply(StatusCode::NOT_FOUND, "not found; the state is at /");
    }
    if method != "GET" && method != "HEAD" {
        let mut r = error_reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers
            .push((hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        return r;
    }
    let status = match state.role_at(now) {
        Role::Primary => StatusCode::OK,
        Role::Replica => StatusCode::SERVICE_UNAVAILABLE,
    };
    Reply {
        status,
        headers: Vec::new(),
        body: state.to_json(now).to_string(),
    }
}

/// The hyper response for a [`Reply`]. For HEAD, hyper sends the headers (the body's
/// Content-Length included) and leaves the body out.
fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = reply.status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.extend(reply.headers);
    r
}

/// Serves one connection: one request, one answer, then the connection closes.
async fn serve_connection(stream: TcpStream, state: watch::Receiver<AgentState>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let current = state.borrow().clone();
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let reply = respond(req.method().as_str(), target, &current, Instant::now());
        async move { Ok::<_, Infallible>(to_response(reply)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
    if let Err(e) = served {
        debug!("state endpoint connection: {e}");
    }
}

/// Serves the state on `listener` until the task is aborted.
pub async fn serve_http(listener: TcpListener, state: watch::Receiver<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: pause instead of spinning.
                warn!("state endpoint cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "state endpoint busy; closing a connection");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The whole connection, answer included, is bounded: a client that never reads
            // must not hold a slot.
            if tokio::time::timeout(CONNECTION_TIMEOUT, serve_connection(stream, state))
                .await
                .is_err()
            {
                debug!(%peer, "state endpoint connection timed out");
            }
        });
    }
}
