//! Publishing the agent's state for the service beside it: a JSON file replaced atomically,
//! and a tiny HTTP/1.1 endpoint a load balancer health check can use (200 when primary,
//! 503 otherwise).
//!
//! Both read the latest [`AgentState`] from a watch channel, so a slow disk or a slow
//! client never delays the agent's decisions (above all: self-fencing).

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are closed at once (a health checker retries).
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra header lines (without CRLF).
    pub headers: Vec<String>,
    /// JSON body.
    pub body: String,
    /// Whether to send the body (not for HEAD).
    pub send_body: bool,
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn error_reply(status: u16, message: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: serde_json::json!({ "error": message }).to_string(),
        send_body: true,
    }
}

/// The answer to a request line: `GET /` (or `HEAD /`, with any query) gives the state,
/// 200 when primary at `now`, 503 otherwise.
pub fn respond(request_line: &str, state: &AgentState, now: Instant) -> Reply {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return error_reply(400, "malformed request line");
    };
    let path = target.split('?').next().unwrap_or(target);
    if path != "/" {
        return error_reply(404, "not found; the state is at /");
    }
    let send_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut r = error_reply(405, "only GET and HEAD");
            r.headers.push("Allow: GET, HEAD".to_string());
            return r;
        }
    };
    let status = match state.role_at(now) {
        Role::Primary => 200,
        Role::Replica => 503,
    };
    Reply {
        status,
        headers: Vec::new(),
        body: state.to_json(now).to_string(),
        send_body,
    }
}

/// Reads up to the end of the request head; `None` if the client closed first.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Result<String, Reply>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
        if end.is_some() {
            return Ok(Some(Ok(String::from_utf8_lossy(&buf).into_owned())));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(Err(error_reply(431, "request head too large"))));
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    state: watch::Receiver<AgentState>,
) -> io::Result<()> {
    let reply = match read_head(&mut stream).await? {
        None => return Ok(()),
        Some(Err(reply)) => reply,
        Some(Ok(head)) => {
            let line = head.lines().next().unwrap_or("");
            let current = state.borrow().clone();
            respond(line, &current, Instant::now())
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.body.len()
    );
    for h in &reply.headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if reply.send_body {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
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
            let served =
                tokio::time::timeout(CONNECTION_TIMEOUT, serve_connection(stream, state)).await;
            if let Ok(Err(e)) = served {
                debug!(%peer, "state endpoint connection: {e}");
            }
        });
    }
}
