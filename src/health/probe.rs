//! One probe of one health check: TCP connect, HTTP/1.1 GET or gRPC health, each bounded by
//! the check's timeout.
//!
//! Targets by kind:
//!
//! - `tcp`: `host:port` (IPv6 literals in brackets: `[::1]:5432`). Healthy when a TCP
//!   connection is established.
//! - `http`: `http://host[:port][/path][?query]`, optionally followed by `#contains=TEXT`.
//!   Healthy when the status is 2xx and, with `#contains=TEXT`, the body (its first 64 KiB,
//!   chunked encoding decoded) contains `TEXT` byte for byte (no percent-decoding: write the
//!   text as it appears in the body). **`https://` is not supported yet**: such a target is
//!   rejected with an error that says so; probe the TLS port with a `tcp` check meanwhile.
//!   The request is a plain `GET` with `Connection: close`; redirects are not followed (a 3xx
//!   counts as a failure, as it usually means the health URL is wrong).
//! - `grpc`: `host:port` or `host:port/SERVICE`, over plaintext HTTP/2. Calls
//!   `grpc.health.v1.Health/Check` with `service = SERVICE` (empty = the server's overall
//!   health) and is healthy only on `SERVING`.
//!
//! HTTP goes through [`crate::http_client`] (hyper, a fresh connection per probe, the body
//! read only while a `#contains` match needs it and never past 64 KiB); gRPC through
//! tonic-health's client.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::http_client::{self, BodyEnd};
use crate::state::HealthCheck;

/// Most bytes of an HTTP response body the prober reads (and the most its headers may take).
pub const MAX_HTTP_RESPONSE: usize = 64 * 1024;

/// The fragment that asks the HTTP prober to match the body: `http://h/p#contains=TEXT`.
pub const BODY_CONTAINS_FRAGMENT: &str = "contains=";

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Whether the endpoint answered healthy.
    pub ok: bool,
    /// How long the probe took (up to the timeout).
    pub latency: Duration,
    /// What was seen, for people: `HTTP 200`, `connect refused`, `HTTP 503`,
    /// `timeout after 500ms`, `body lacks "OK"`, `gRPC NOT_SERVING`, ...
    pub detail: String,
}

impl ProbeOutcome {
    /// A healthy result.
    pub fn success(latency: Duration, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            latency,
            detail: detail.into(),
        }
    }

    /// A failed result.
    pub fn failure(latency: Duration, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            latency,
            detail: detail.into(),
        }
    }
}

/// A parsed, validated probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// Connect to `addr` (`host:port`).
    Tcp {
        /// `host:port` to connect to.
        addr: String,
    },
    /// `GET path` from `addr`.
    Http {
        /// `host:port` to connect to (port 80 when the URL gives none).
        addr: String,
        /// The `Host` header: the URL's authority as written.
        host: String,
        /// Path and query, starting with `/`.
        path: String,
        /// Text the body must contain (from `#contains=TEXT`).
        body_contains: Option<String>,
    },
    /// `grpc.health.v1.Health/Check` on `addr` for `service`.
    Grpc {
        /// `host:port` to connect to.
        addr: String,
        /// The service name to ask about; empty = the server as a whole.
        service: String,
    },
}

impl ProbeTarget {
    /// Parses a target of the given kind (`tcp`, `http`, `grpc`); the error says what is wrong.
    pub fn parse(kind: &str, target: &str) -> Result<Self, String> {
        match kind {
            "tcp" => {
                check_no_scheme("tcp", target)?;
                check_host_port("tcp", target)?;
                Ok(Self::Tcp {
                    addr: target.to_string(),
                })
            }
            "http" => parse_http(target),
            "grpc" => {
                check_no_scheme("grpc", target)?;
                let (addr, service) = target.split_once('/').unwrap_or((target, ""));
                check_host_port("grpc", addr)?;
                Ok(Self::Grpc {
                    addr: addr.to_string(),
                    service: service.to_string(),
                })
            }
            other => Err(format!(
                "health check kind {other:?} is not one of http, tcp, grpc"
            )),
        }
    }

    /// Parses the target of a check.
    pub fn from_check(check: &HealthCheck) -> Result<Self, String> {
        Self::parse(&check.kind, &check.target)
    }
}

/// Checks that a health check's target can be probed; the API should call this before it
/// commits a service definition so a bad target is refused with this message.
pub fn validate_check(check: &HealthCheck) -> Result<(), String> {
    ProbeTarget::from_check(check).map(|_| ())
}

/// Probes a check once, bounded by its timeout. A target that does not parse is a failure
/// whose detail is the parse error.
pub async fn probe_check(check: &HealthCheck) -> ProbeOutcome {
    probe_check_from(check, None).await
}

/// [`probe_check`] naming the probing vantage (HTTP probes send it as `X-Baton-Vantage`, so
/// an endpoint's logs show which coordinator node sees it failing).
pub async fn probe_check_from(check: &HealthCheck, vantage: Option<&str>) -> ProbeOutcome {
    match ProbeTarget::from_check(check) {
        Ok(target) => probe_target_from(&target, check_timeout(check), vantage).await,
        Err(e) => ProbeOutcome::failure(Duration::ZERO, e),
    }
}

/// Probes a parsed target once; the whole probe (name resolution, connect, request, reading
/// the answer) is bounded by `timeout`.
pub async fn probe_target(target: &ProbeTarget, timeout: Duration) -> ProbeOutcome {
    probe_target_from(target, timeout, None).await
}

/// [`probe_target`] naming the probing vantage.
pub async fn probe_target_from(
    target: &ProbeTarget,
    timeout: Duration,
    vantage: Option<&str>,
) -> ProbeOutcome {
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, run_probe(target, timeout, vantage)).await;
    let latency = start.elapsed();
    match result {
        Ok(Ok(detail)) => ProbeOutcome::success(latency, detail),
        Ok(Err(detail)) => ProbeOutcome::failure(latency, detail),
        Err(_) => ProbeOutcome::failure(latency, timeout_detail(timeout)),
    }
}

/// The timeout of a check (at least 1 ms, so a zero never means "fail instantly").
pub fn check_timeout(check: &HealthCheck) -> Duration {
    Duration::from_millis(check.timeout_ms.max(1))
}

/// `timeout after 500ms`.
pub fn timeout_detail(timeout: Duration) -> String {
    format!("timeout after {}ms", timeout.as_millis())
}

/// Something that probes a check. The runner is generic over it so its tests can script
/// results without sockets (and with paused time).
pub trait Prober: Send + Sync + 'static {
    /// Probes `check` once. Should finish within the check's timeout; the runner enforces the
    /// timeout as well.
    fn probe(&self, check: &HealthCheck) -> BoxFuture<'static, ProbeOutcome>;
}

/// The real prober: TCP, HTTP and gRPC over the network.
#[derive(Debug, Clone, Default)]
pub struct NetProber {
    /// Who probes, e.g. `node-2@eu-west` (sent by HTTP probes).
    pub vantage: Option<String>,
}

impl Prober for NetProber {
    fn probe(&self, check: &HealthCheck) -> BoxFuture<'static, ProbeOutcome> {
        let check = check.clone();
        let vantage = self.vantage.clone();
        Box::pin(async move { probe_check_from(&check, vantage.as_deref()).await })
    }
}

async fn run_probe(
    target: &ProbeTarget,
    timeout: Duration,
    vantage: Option<&str>,
) -> Result<String, String> {
    match target {
        ProbeTarget::Tcp { addr } => {
            connect(addr).await?;
            Ok("connected".to_string())
        }
        ProbeTarget::Http {
            addr,
            host,
            path,
            body_contains,
        } => http_get(addr, host, path, body_contains.as_deref(), vantage, timeout).await,
        ProbeTarget::Grpc { addr, service } => grpc_check(addr, service, timeout).await,
    }
}

// ---- target parsing ----------------------------------------------------------------------

fn check_no_scheme(kind: &str, target: &str) -> Result<(), String> {
    if target.contains("://") {
        return Err(format!(
            "{kind} target {target:?} must not have a scheme: write host:port{}",
            if kind == "grpc" {
                " or host:port/service"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// Checks `host:port` (the host may be a bracketed IPv6 literal).
fn check_host_port(kind: &str, addr: &str) -> Result<(), String> {
    let bad = |why: &str| format!("{kind} target {addr:?} is not host:port: {why}");
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("the port is missing"));
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/' || b == b'@')
    {
        return Err(bad("the host has a space, '/', '@' or a control character"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.contains(':') && !bracketed {
        return Err(bad("write IPv6 addresses in brackets, like [::1]:8080"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

fn parse_http(target: &str) -> Result<ProbeTarget, String> {
    let (url, fragment) = match target.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (target, None),
    };
    let body_contains = match fragment {
        None => None,
        Some(f) => match f.strip_prefix(BODY_CONTAINS_FRAGMENT) {
            Some(text) if !text.is_empty() => Some(text.to_string()),
            _ => {
                return Err(format!(
                    "URL fragment #{f} in {target:?} is not understood: the only one is \
                     #contains=TEXT, with a non-empty TEXT the body must contain"
                ))
            }
        },
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "http target {target:?} is not a URL: write http://host[:port]/path"
        ));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "https is not supported yet by the http probe ({target:?}): use an http:// URL, \
             or a tcp check of the TLS port"
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "http target {target:?} has scheme {scheme:?}: only http:// is supported"
        ));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(format!("http target {target:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "http target {target:?} has user info: credentials in health URLs are not supported"
        ));
    }
    // A port is present when there is a ':' after any IPv6 closing bracket.
    let has_port = authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'));
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    check_host_port("http", &addr)?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    // The path goes verbatim into the request line: a space or CR/LF would break (or inject
    // into) the request.
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "http target {target:?} has a space or control character in its path: \
             percent-encode it"
        ));
    }
    // Other characters a request line cannot carry as they are (`<`, `>`, a backtick, ...).
    if path.parse::<hyper::http::uri::PathAndQuery>().is_err() {
        return Err(format!(
            "http target {target:?} has a character its path cannot carry as is: \
             percent-encode it"
        ));
    }
    Ok(ProbeTarget::Http {
        addr,
        host: authority.to_string(),
        path,
        body_contains,
    })
}

// ---- errors ------------------------------------------------------------------------------

async fn connect(addr: &str) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| io_detail("connect", &e))
}

fn io_detail(context: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
        io::ErrorKind::ConnectionReset => format!("connection reset ({context})"),
        _ => format!("{context} failed: {e}"),
    }
}

/// Describes an error with its causes (tonic's transport errors say only "transport error"
/// at the top), and reduces a refused connection to `connect refused`.
fn error_chain_detail(context: &str, e: &(dyn StdError + 'static)) -> String {
    match chain_messages(e) {
        Err(refused) => refused,
        Ok(messages) => format!("{context} failed: {}", messages.join(": ")),
    }
}

/// The distinct messages of an error and its sources; `Err("connect refused")` when a
/// refused connection is among the causes.
fn chain_messages(e: &(dyn StdError + 'static)) -> Result<Vec<String>, String> {
    match io_cause(e) {
        Some(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            Err("connect refused".to_string())
        }
        _ => Ok(http_client::chain(e)),
    }
}

/// The I/O error beneath an error, if any: it names what happened on the socket.
fn io_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

// ---- HTTP --------------------------------------------------------------------------------

async fn http_get(
    addr: &str,
    host: &str,
    path: &str,
    body_contains: Option<&str>,
    vantage: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let user_agent = concat!("baton-health/", env!("CARGO_PKG_VERSION"));
    let mut headers = vec![("User-Agent", user_agent), ("Accept", "*/*")];
    // A vantage that is not a plain token is left out rather than failing the probe.
    if let Some(v) = vantage.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic())) {
        headers.push(("X-Baton-Vantage", v));
    }
    let request = http_client::request(Method::GET, host, path, &headers, Bytes::new())?;
    // Without a body match the status is all we need: the body is not read. With one, reading
    // stops as soon as the text is seen.
    let enough = |status: StatusCode, body: &[u8]| {
        !status.is_success() || body_contains.is_none_or(|n| find(body, n.as_bytes()).is_some())
    };
    let answer = http_client::fetch(addr, request, timeout, MAX_HTTP_RESPONSE, enough)
        .await
        .map_err(|e| http_error_detail(e, timeout))?;
    let status = answer.status.as_u16();
    if !answer.status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let Some(needle) = body_contains else {
        return Ok(format!("HTTP {status}"));
    };
    if find(&answer.body, needle.as_bytes()).is_some() {
        return Ok(format!("HTTP {status}, body has {needle:?}"));
    }
    Err(match answer.end {
        BodyEnd::Capped => format!("body lacks {needle:?} (in its first 64 KiB)"),
        BodyEnd::Failed(e) => format!(
            "body lacks {needle:?} (the body was cut short: {})",
            http_client::chain(&e).join(": ")
        ),
        BodyEnd::Complete | BodyEnd::Enough => format!("body lacks {needle:?}"),
    })
}

/// What went wrong before a response status arrived, for people: a refused connection, a
/// server that is not speaking HTTP (with what it said), one that closed without answering.
fn http_error_detail(e: http_client::Error, timeout: Duration) -> String {
    let (error, received) = match e {
        http_client::Error::Connect(e) => return io_detail("connect", &e),
        http_client::Error::Timeout => return timeout_detail(timeout),
        http_client::Error::Exchange { error, received } => (error, received),
    };
    if error.is_parse_too_large() {
        return "HTTP response headers exceed 64 KiB".to_string();
    }
    if error.is_parse() || error.is_parse_status() {
        return if received.starts_with(b"HTTP/1.") {
            format!(
                "malformed HTTP response head ({error}): {}",
                printable(&received, 60)
            )
        } else {
            format!("not an HTTP/1.x response: {}", printable(&received, 60))
        };
    }
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return if received.is_empty() {
            "connection closed without an HTTP response".to_string()
        } else {
            format!(
                "incomplete HTTP response (connection closed in the headers): {}",
                printable(&received, 60)
            )
        };
    }
    // An I/O error underneath (a reset) says more than hyper's summary.
    if let Some(io) = io_cause(&error) {
        return io_detail("reading the response", io);
    }
    format!(
        "HTTP exchange failed: {}",
        http_client::chain(&error).join(": ")
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A short, printable excerpt of bytes from the wire, for error details.
fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    format!("{:?}", text)
}

// ---- gRPC --------------------------------------------------------------------------------

async fn grpc_check(addr: &str, service: &str, timeout: Duration) -> Result<String, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("gRPC target {addr:?} is not usable: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    // A fresh connection per probe: the probe should see what a new client would see, and a
    // dead endpoint must not hide behind a cached channel's reconnect backoff.
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| error_chain_detail("connect", &e))?;
    // Wait for the connection here: HealthClient would fold a failure into a bare
    // "Service was not ready" and lose the cause (e.g. "connection closed").
    tonic::client::Grpc::new(channel.clone())
        .ready()
        .await
        .map_err(|e| error_chain_detail("connect", &e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| grpc_status_detail(&status, service, timeout))?;
    let status = response.into_inner().status;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok("gRPC SERVING".to_string()),
        Ok(other) => Err(format!("gRPC {}", other.as_str_name())),
        Err(_) => Err(format!("gRPC health answered unknown status {status}")),
    }
}

fn grpc_status_detail(status: &tonic::Status, service: &str, timeout: Duration) -> String {
    use tonic::Code;
    let message = status.message();
    match status.code() {
        Code::Unimplemented => {
            "gRPC health service not implemented (grpc.health.v1.Health/Check: Unimplemented)"
                .to_string()
        }
        Code::NotFound => format!("gRPC health does not know service {service:?} (NotFound)"),
        Code::DeadlineExceeded => timeout_detail(timeout),
        // tonic's own request timeout (set to the probe's timeout) reports "Timeout expired".
        Code::Cancelled if message.contains("Timeout") => timeout_detail(timeout),
        code => {
            // The status message alone is often vague ("operation was canceled"); the
            // transport cause ("connection closed") is what an operator needs.
            let causes = match status.source().map(chain_messages) {
                Some(Err(refused)) => return refused,
                Some(Ok(messages)) => messages
                    .into_iter()
                    .filter(|m| m != message && m != "transport error")
                    .collect(),
                None => Vec::new(),
            };
            let mut detail = format!("gRPC {code:?}");
            if !message.is_empty() {
                detail.push_str(": ");
                detail.push_str(message);
            }
            if !causes.is_empty() {
                detail.push_str(&format!(" ({})", causes.join(": ")));
            }
            detail
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    fn check(kind: &str, target: &str, timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            kind: kind.into(),
            target: target.into(),
            interval_ms: 1_000,
            timeout_ms,
            threshold: 3,
        }
    }

    /// A port nothing listens on: bind, note the port, close.
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    // ---- parsing ----

    #[test]
    fn parses_targets_and_explains_bad_ones() {
        assert_eq!(
            ProbeTarget::parse("tcp", "db.internal:5432"),
            Ok(ProbeTarget::Tcp {
                addr: "db.internal:5432".into()
            })
        );
        assert!(ProbeTarget::parse("tcp", "[::1]:5432").is_ok());
        assert!(ProbeTarget::parse("tcp", "db.internal")
            .unwrap_err()
            .contains("port is missing"));
        assert!(ProbeTarget::parse("tcp", "::1:80")
            .unwrap_err()
            .contains("brackets"));
        assert!(ProbeTarget::parse("tcp", "h:0")
            .unwrap_err()
            .contains("port"));
        assert!(ProbeTarget::parse("tcp", "tcp://h:1")
            .unwrap_err()
            .contains("scheme"));
        assert!(ProbeTarget::parse("udp", "h:1")
            .unwrap_err()
            .contains("not one of"));

        assert_eq!(
            ProbeTarget::parse(
                "http",
                "http://api.example/healthz?deep=1#contains=OK ready"
            ),
            Ok(ProbeTarget::Http {
                addr: "api.example:80".into(),
                host: "api.example".into(),
                path: "/healthz?deep=1".into(),
                body_contains: Some("OK ready".into()),
            })
        );
        assert_eq!(
            ProbeTarget::parse("http", "HTTP://[::1]:8080"),
            Ok(ProbeTarget::Http {
                addr: "[::1]:8080".into(),
                host: "[::1]:8080".into(),
                path: "/".into(),
                body_contains: None,
            })
        );
        assert_eq!(
            ProbeTarget::parse("http", "http://h:81?x"),
            Ok(ProbeTarget::Http {
                addr: "h:81".into(),
                host: "h:81".into(),
                path: "/?x".into(),
                body_contains: None,
            })
        );
        let https = ProbeTarget::parse("http", "https://us-east.example/healthz").unwrap_err();
        assert!(https.contains("https is not supported yet"), "{https}");
        assert!(ProbeTarget::parse("http", "http://h/#anchor")
            .unwrap_err()
            .contains("#contains=TEXT"));
        assert!(ProbeTarget::parse("http", "http://h/#contains=")
            .unwrap_err()
            .contains("non-empty"));
        assert!(ProbeTarget::parse("http", "http://h/a b")
            .unwrap_err()
            .contains("percent-encode"));
        assert!(ProbeTarget::parse("http", "http://h/a<b>")
            .unwrap_err()
            .contains("percent-encode"));
        assert!(ProbeTarget::parse("http", "http://u:p@h/")
            .unwrap_err()
            .contains("user info"));
        assert!(ProbeTarget::parse("http", "h:80/x")
            .unwrap_err()
            .contains("not a URL"));
        assert!(ProbeTarget::parse("http", "ftp://h/")
            .unwrap_err()
            .contains("only http://"));

        assert_eq!(
            ProbeTarget::parse("grpc", "10.0.0.1:50051/payments.v1.Payments"),
            Ok(ProbeTarget::Grpc {
                addr: "10.0.0.1:50051".into(),
                service: "payments.v1.Payments".into(),
            })
        );
        assert_eq!(
            ProbeTarget::parse("grpc", "h:1"),
            Ok(ProbeTarget::Grpc {
                addr: "h:1".into(),
                service: String::new(),
            })
        );
        assert!(ProbeTarget::parse("grpc", "http://h:1")
            .unwrap_err()
            .contains("scheme"));
        assert!(validate_check(&check("grpc", "h", 100)).is_err());
    }

    #[tokio::test]
    async fn unparseable_target_fails_with_the_parse_error() {
        let out = probe_check(&check("http", "https://h/", 100)).await;
        assert!(!out.ok);
        assert!(out.detail.contains("https is not supported yet"));
    }

    // ---- TCP ----

    #[tokio::test]
    async fn tcp_probe_connects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let out = probe_check(&check("tcp", &addr.to_string(), 1_000)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "connected");
    }

    #[tokio::test]
    async fn tcp_probe_reports_refused() {
        let port = closed_port().await;
        let out = probe_check(&check("tcp", &format!("127.0.0.1:{port}"), 1_000)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "connect refused");
    }

    // ---- HTTP ----

    /// What the tiny HTTP responder answers.
    #[derive(Clone)]
    enum Reply {
        /// Write these bytes, then close.
        Close(Vec<u8>),
        /// Write these bytes and keep the connection open (a server ignoring
        /// `Connection: close`): the prober must stop by itself.
        KeepOpen(Vec<u8>),
        /// Never answer.
        Hang,
    }

    /// Serves `reply` to every connection; sends each request's first line on the channel.
    async fn http_server(reply: Reply) -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let reply = reply.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut first = String::new();
                    let _ = stream.read_line(&mut first).await;
                    loop {
                        let mut line = String::new();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = tx.send(first.trim_end().to_string());
                    match reply {
                        Reply::Close(bytes) => {
                            let _ = stream.get_mut().write_all(&bytes).await;
                        }
                        Reply::KeepOpen(bytes) => {
                            let _ = stream.get_mut().write_all(&bytes).await;
                            std::future::pending::<()>().await;
                        }
                        Reply::Hang => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (addr, rx)
    }

    fn response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn http_probe_accepts_200_and_sends_a_proper_request() {
        let (addr, mut requests) = http_server(Reply::Close(response("200 OK", "OK"))).await;
        let out = probe_check(&check("http", &format!("http://{addr}/healthz?x=1"), 1_000)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "HTTP 200");
        assert_eq!(requests.recv().await.unwrap(), "GET /healthz?x=1 HTTP/1.1");
    }

    #[tokio::test]
    async fn http_probe_names_its_vantage_and_the_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
                .await
                .unwrap();
            let _ = conn.write_all(&response("200 OK", "")).await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let target = ProbeTarget::parse("http", &format!("http://{addr}/h")).unwrap();
        let out = probe_target_from(&target, Duration::from_secs(1), Some("node-2@eu-west")).await;
        assert!(out.ok, "{out:?}");
        let head = server.await.unwrap();
        assert!(
            head.contains("\r\nX-Baton-Vantage: node-2@eu-west\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nHost: {addr}\r\n")), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_probe_rejects_503() {
        let (addr, _r) = http_server(Reply::Close(response("503 Service Unavailable", ""))).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 1_000)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "HTTP 503");
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_slow_server() {
        let (addr, _r) = http_server(Reply::Hang).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 150)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "timeout after 150ms");
        assert!(out.latency >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn http_probe_matches_the_body() {
        let (addr, _r) = http_server(Reply::Close(response("200 OK", "status: OK\n"))).await;
        let ok = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=OK"),
            1_000,
        ))
        .await;
        assert!(ok.ok, "{ok:?}");
        let bad = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=READY"),
            1_000,
        ))
        .await;
        assert!(!bad.ok);
        assert_eq!(bad.detail, "body lacks \"READY\"");

        let (addr, _r) = http_server(Reply::Close(response("200 OK", "degraded"))).await;
        let out = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=OK"),
            1_000,
        ))
        .await;
        assert_eq!(out.detail, "body lacks \"OK\"");
    }

    #[tokio::test]
    async fn http_probe_stops_at_content_length_without_waiting_for_close() {
        let (addr, _r) = http_server(Reply::KeepOpen(response("200 OK", "OK"))).await;
        let out = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=OK"),
            2_000,
        ))
        .await;
        assert!(out.ok, "{out:?}");
        let (addr, _r) = http_server(Reply::KeepOpen(response("200 OK", "no"))).await;
        let out = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=OK"),
            2_000,
        ))
        .await;
        assert_eq!(out.detail, "body lacks \"OK\"");
    }

    #[tokio::test]
    async fn http_probe_decodes_chunked_bodies() {
        // "READY" is split across two chunks: a raw search would miss it.
        let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     3\r\nREA\r\n2;ext=1\r\nDY\r\n0\r\n\r\n"
            .to_vec();
        let (addr, _r) = http_server(Reply::KeepOpen(body)).await;
        let out = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=READY"),
            2_000,
        ))
        .await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn http_probe_reads_at_most_64_kib() {
        let mut big = "x".repeat(MAX_HTTP_RESPONSE);
        big.push_str("OK");
        let bytes = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{big}").into_bytes();
        let (addr, _r) = http_server(Reply::KeepOpen(bytes)).await;
        let out = probe_check(&check(
            "http",
            &format!("http://{addr}/#contains=OK"),
            2_000,
        ))
        .await;
        assert!(!out.ok);
        assert_eq!(out.detail, "body lacks \"OK\" (in its first 64 KiB)");
    }

    #[tokio::test]
    async fn http_probe_explains_garbage_and_silence() {
        let (addr, _r) = http_server(Reply::Close(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 1_000)).await;
        assert_eq!(
            out.detail, "not an HTTP/1.x response: \"SSH-2.0-OpenSSH\\r\\n\\r\\n\"",
            "{out:?}"
        );

        let (addr, _r) = http_server(Reply::Close(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec())).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 1_000)).await;
        assert!(
            out.detail.starts_with("malformed HTTP response head"),
            "{out:?}"
        );

        let (addr, _r) = http_server(Reply::Close(b"HTTP/1.1 200 OK\r\nContent-".to_vec())).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 1_000)).await;
        assert_eq!(
            out.detail,
            "incomplete HTTP response (connection closed in the headers): \
             \"HTTP/1.1 200 OK\\r\\nContent-\"",
            "{out:?}"
        );

        // Headers that never end: stopped at the cap, not buffered without bound.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend_from_slice(
            format!("X-Pad: {}\r\n", "p".repeat(2 * MAX_HTTP_RESPONSE)).as_bytes(),
        );
        let (addr, _r) = http_server(Reply::KeepOpen(endless)).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 2_000)).await;
        assert_eq!(out.detail, "HTTP response headers exceed 64 KiB", "{out:?}");

        let (addr, _r) = http_server(Reply::Close(Vec::new())).await;
        let out = probe_check(&check("http", &format!("http://{addr}/"), 1_000)).await;
        assert_eq!(out.detail, "connection closed without an HTTP response");

        let port = closed_port().await;
        let out = probe_check(&check("http", &format!("http://127.0.0.1:{port}/"), 1_000)).await;
        assert_eq!(out.detail, "connect refused");
    }

    // ---- gRPC ----

    /// A tonic-health server: `status` for the whole server and for `payments`; any other
    /// service is unknown to it (NotFound).
    async fn grpc_server(status: tonic_health::ServingStatus) -> String {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", status).await;
        reporter.set_service_status("payments", status).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        addr
    }

    #[tokio::test]
    async fn grpc_probe_against_a_health_server() {
        let addr = grpc_server(tonic_health::ServingStatus::Serving).await;
        let out = probe_check(&check("grpc", &addr, 2_000)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "gRPC SERVING");
        let out = probe_check(&check("grpc", &format!("{addr}/payments"), 2_000)).await;
        assert!(out.ok, "{out:?}");
        let out = probe_check(&check("grpc", &format!("{addr}/missing"), 2_000)).await;
        assert!(!out.ok);
        assert_eq!(
            out.detail,
            "gRPC health does not know service \"missing\" (NotFound)"
        );

        let addr = grpc_server(tonic_health::ServingStatus::NotServing).await;
        let out = probe_check(&check("grpc", &addr, 2_000)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "gRPC NOT_SERVING");
    }

    #[tokio::test]
    async fn grpc_probe_fails_clearly_when_the_peer_closes_or_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let out = probe_check(&check("grpc", &addr, 2_000)).await;
        assert!(!out.ok);
        // The transport cause is named, not just tonic's "operation was canceled".
        assert!(out.detail.contains("connection closed"), "{out:?}");

        let port = closed_port().await;
        let out = probe_check(&check("grpc", &format!("127.0.0.1:{port}"), 2_000)).await;
        assert_eq!(out.detail, "connect refused");
    }

    #[tokio::test]
    async fn grpc_probe_times_out_on_a_silent_peer() {
        // Accepts and never speaks HTTP/2: the probe must end at its timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                keep.lock().await.push(stream);
            }
        });
        let out = probe_check(&check("grpc", &addr, 200)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "timeout after 200ms");
    }
}
