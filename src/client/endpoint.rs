//! The endpoints a client knows, their channels, and which one is the leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::error::ClientError;
use super::ClientOptions;

/// TLS to the nodes: the CA their certificates chain to and, for nodes that ask for one,
/// a client certificate and key (PEM).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ClientTls {
    /// PEM of the CA that signed the nodes' certificates.
    pub ca: Vec<u8>,
    /// PEM certificate and key this client presents, if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `--cacert`, `--cert` and `--key`: `None` when none is given. A certificate needs
    /// its key (and the other way round) and the CA to check the nodes with.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Option<Self>, ClientError> {
        let read = |flag: &str, p: &std::path::Path, block: &str| {
            let text = std::fs::read(p).map_err(|e| {
                ClientError::Tls(format!("{flag} {}: cannot read it: {e}", p.display()))
            })?;
            if !String::from_utf8_lossy(&text).contains(block) {
                return Err(ClientError::Tls(format!(
                    "{flag} {}: holds no PEM {block} block: is it the right file?",
                    p.display()
                )));
            }
            Ok(text)
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                read("--cert", c, "CERTIFICATE")?,
                read("--key", k, "PRIVATE KEY")?,
            )),
            (Some(_), None) => {
                return Err(ClientError::Tls(
                    "--cert needs --key (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ClientError::Tls(
                    "--key needs --cert (the certificate the key belongs to)".into(),
                ))
            }
        };
        let Some(ca) = ca else {
            if identity.is_some() {
                return Err(ClientError::Tls(
                    "--cert needs --cacert: the CA that signed the nodes' certificates".into(),
                ));
            }
            return Ok(None);
        };
        let tls = Self {
            ca: read("--cacert", ca, "CERTIFICATE")?,
            identity,
        };
        // Build once so a bad file is reported here rather than at the first call.
        Endpoint::from_static("https://localhost")
            .tls_config(tls.config())
            .map_err(|e| ClientError::Tls(format!("{e}: check --cacert, --cert and --key")))?;
        Ok(Some(tls))
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// The scheme an endpoint was given with, if any (`http`, `https`).
fn scheme(raw: &str) -> Option<&str> {
    raw.trim().split_once("://").map(|(s, _)| s)
}

/// Normalises an endpoint to `host:port`: accepts `host:port`, `http://host:port`,
/// `https://host:port` (with a trailing `/`); refuses other schemes, missing or bad ports,
/// and paths. Whether TLS is used is decided by the client's options.
pub fn normalize_endpoint(raw: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: raw.to_string(),
        reason: reason.to_string(),
    };
    let s = raw.trim();
    let s = match s.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unknown scheme {scheme:?}; use host:port, http://host:port or https://host:port"
            )))
        }
        None => s,
    };
    let s = s.strip_suffix('/').unwrap_or(s);
    if s.contains('/') {
        return Err(bad("a path is not allowed; use host:port"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        // IPv6 literal: [addr]:port
        let (addr, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("expected [ipv6]:port"))?;
        if addr.is_empty() {
            return Err(bad("empty host"));
        }
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("missing port; use host:port, e.g. 127.0.0.1:7101"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address must be in brackets: [::1]:7101"));
        }
        (host.to_string(), port)
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
        Ok(p) => Ok(format!("{host}:{p}")),
    }
}

/// Splits a comma-separated endpoint list and normalises each item; empty items are skipped.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, ClientError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(normalize_endpoint)
        .collect()
}

/// One node: its address and its channel, created on first use and then reused.
#[derive(Debug)]
pub(crate) struct Node {
    /// Normalised `host:port`.
    pub(crate) addr: String,
    endpoint: Endpoint,
    // Created lazily because building a channel spawns tonic's buffer task, which needs a
    // runtime; `Client::new` may be called outside one.
    channel: OnceLock<Channel>,
}

impl Node {
    fn new(addr: String, opts: &ClientOptions) -> Result<Self, ClientError> {
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
            ClientError::InvalidEndpoint {
                endpoint: addr.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some(tls) = &opts.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let endpoint = endpoint
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            // HTTP/2 pings detect a dead or paused peer on idle and streaming connections
            // (watch, keepalive) much sooner than TCP would.
            .http2_keep_alive_interval(opts.keepalive_interval)
            .keep_alive_timeout(opts.keepalive_timeout)
            .keep_alive_while_idle(true);
        Ok(Self {
            addr,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// The node's channel (one HTTP/2 connection, multiplexed and reconnected by tonic).
    pub(crate) fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// Which node a call should go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader if known, else the preferred node (which will name the leader).
    Leader,
    /// Any node: the preferred one.
    Any,
}

#[derive(Debug)]
struct PoolState {
    nodes: Vec<Arc<Node>>,
    /// Index of the node believed to be the leader.
    leader: Option<usize>,
    /// Index of the node non-leader calls go to; sticks while it answers.
    preferred: usize,
}

/// The nodes of a cluster and what the client learned about them. Shared by every clone of
/// a client, its watchers and lease sessions.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) opts: ClientOptions,
    // A std mutex: held for a few instructions, never across an await.
    state: Mutex<PoolState>,
    /// How many of `nodes` were configured (the rest were learned from leader hints).
    configured: usize,
    /// `x-baton-actor` of every request.
    actor: Option<MetadataValue<Ascii>>,
    /// `authorization` of every request.
    authorization: Option<MetadataValue<Ascii>>,
    /// Numbers request ids.
    next_request: AtomicU64,
}

impl Pool {
    pub(crate) fn new(endpoints: &[String], opts: ClientOptions) -> Result<Self, ClientError> {
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for e in endpoints {
            match (scheme(e), opts.tls.is_some()) {
                (Some("https"), false) => {
                    return Err(ClientError::Tls(format!(
                        "{e} is an https endpoint: pass --cacert (BATON_CACERT) with the CA \
                         that signed the nodes' certificates, and --cert/--key if the nodes \
                         ask for a client certificate"
                    )))
                }
                (Some("http"), true) => {
                    return Err(ClientError::Tls(format!(
                        "{e} is a plaintext endpoint but TLS flags (--cacert, --cert, --key) \
                         are set: use https://host:port or host:port, or drop the TLS flags"
                    )))
                }
                _ => {}
            }
            let addr = normalize_endpoint(e)?;
            if nodes.iter().any(|n| n.addr == addr) {
                continue;
            }
            nodes.push(Arc::new(Node::new(addr, &opts)?));
        }
        if nodes.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given; pass at least one host:port".into(),
            });
        }
        let actor = match opts.actor.as_deref() {
            None | Some("") => None,
            Some(a) => {
                let ok = a.len() <= 128 && a.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                let value = ok.then(|| MetadataValue::try_from(a).ok()).flatten();
                Some(value.ok_or_else(|| ClientError::InvalidActor {
                    actor: a.to_string(),
                })?)
            }
        };
        let authorization = match opts.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let ok = t.len() <= 512 && t.bytes().all(|b| b.is_ascii_graphic());
                let value = ok
                    .then(|| MetadataValue::try_from(format!("Bearer {t}")).ok())
                    .flatten()
                    .map(|mut v| {
                        // Kept out of debug output and logs.
                        v.set_sensitive(true);
                        v
                    });
                Some(value.ok_or(ClientError::InvalidToken)?)
            }
        };
        Ok(Self {
            actor,
            authorization,
            next_request: AtomicU64::new(1),
            opts,
            configured: nodes.len(),
            state: Mutex::new(PoolState {
                nodes,
                leader: None,
                preferred: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock cannot leave the state inconsistent (plain
        // assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh request id (`x-request-id`).
    pub(crate) fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("c{}-{n}", std::process::id())
    }

    /// Adds the caller's identity and the request id to a request.
    pub(crate) fn decorate<T>(&self, req: &mut tonic::Request<T>, request_id: &str) {
        let md = req.metadata_mut();
        if let Some(a) = &self.actor {
            md.insert(crate::wire::ACTOR_KEY, a.clone());
        }
        if let Some(a) = &self.authorization {
            md.insert(crate::wire::AUTHORIZATION_KEY, a.clone());
        }
        if let Ok(v) = MetadataValue::try_from(request_id) {
            md.insert(crate::wire::REQUEST_ID_KEY, v);
        }
    }

    /// The node to try next for `route`.
    pub(crate) fn pick(&self, route: Route) -> (usize, Arc<Node>) {
        let st = self.lock();
        let idx = match (route, st.leader) {
            (Route::Leader, Some(l)) => l,
            _ => st.preferred,
        };
        (idx, st.nodes[idx].clone())
    }

    /// Number of known nodes.
    pub(crate) fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// The configured endpoints (not those learned from hints).
    pub(crate) fn configured(&self) -> Vec<Arc<Node>> {
        self.lock().nodes[..self.configured].to_vec()
    }

    /// Every known endpoint.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.lock().nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The believed leader's address.
    pub(crate) fn leader(&self) -> Option<String> {
        let st = self.lock();
        st.leader.map(|l| st.nodes[l].addr.clone())
    }

    /// Node `idx` answered.
    pub(crate) fn succeeded(&self, idx: usize, route: Route) {
        let mut st = self.lock();
        if route == Route::Leader {
            st.leader = Some(idx);
        } else {
            st.preferred = idx;
        }
    }

    /// Node `idx` could not be reached or its stream broke: stop preferring it.
    pub(crate) fn failed(&self, idx: usize) {
        let mut st = self.lock();
        if st.leader == Some(idx) {
            st.leader = None;
        }
        if st.preferred == idx {
            st.preferred = (idx + 1) % st.nodes.len();
        }
    }

    /// Node `idx` said it is not the leader and named `hint`. Returns true when the next
    /// attempt goes to a different node (so it can be made without waiting).
    pub(crate) fn not_leader(&self, idx: usize, hint: Option<&str>) -> bool {
        let mut st = self.lock();
        match hint {
            Some(addr) => {
                let l = match st.nodes.iter().position(|n| n.addr == addr) {
                    Some(l) => l,
                    None => match Node::new(addr.to_string(), &self.opts) {
                        Ok(n) => {
                            st.nodes.push(Arc::new(n));
                            st.nodes.len() - 1
                        }
                        Err(_) => return false,
                    },
                };
                st.leader = Some(l);
                l != idx
            }
            None => {
                if st.leader == Some(idx) {
                    st.leader = None;
                }
                if st.preferred == idx {
                    st.preferred = (idx + 1) % st.nodes.len();
                }
                false
            }
        }
    }
}

/// Exponential backoff between rounds of attempts: 25 ms doubling to 1 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(25);
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        for (raw, want) in [
            ("127.0.0.1:7101", "127.0.0.1:7101"),
            (" http://127.0.0.1:7101/ ", "127.0.0.1:7101"),
            ("localhost:80", "localhost:80"),
            ("http://[::1]:7101", "[::1]:7101"),
            ("node-1.example:07102", "node-1.example:7102"),
            ("https://127.0.0.1:7101/", "127.0.0.1:7101"),
        ] {
            assert_eq!(normalize_endpoint(raw).ok().as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        for raw in [
            "127.0.0.1",
            "ftp://127.0.0.1:7101",
            "grpc://h:1",
            "h:0",
            "h:99999",
            ":7101",
            "::1:7101",
            "h:1/path",
            "",
        ] {
            match normalize_endpoint(raw) {
                Err(ClientError::InvalidEndpoint { reason, .. }) => {
                    assert!(!reason.is_empty(), "{raw}")
                }
                other => panic!("{raw:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_lists_split_on_commas() {
        assert_eq!(
            parse_endpoints("a:1, http://b:2,,c:3").ok(),
            Some(vec!["a:1".into(), "b:2".into(), "c:3".into()])
        );
        assert!(parse_endpoints("a:1,b").is_err());
    }

    #[test]
    fn pool_follows_hints_and_rotates_past_failures() {
        let pool = Pool::new(
            &["a:1".into(), "b:2".into(), "a:1".into()],
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(pool.len(), 2, "duplicates are dropped");
        assert_eq!(pool.pick(Route::Leader).0, 0);
        // a names b: next attempt goes to b without waiting.
        assert!(pool.not_leader(0, Some("b:2")));
        assert_eq!(pool.pick(Route::Leader).1.addr, "b:2");
        assert_eq!(pool.leader().as_deref(), Some("b:2"));
        // b names an address not configured: it is learned.
        assert!(pool.not_leader(1, Some("c:3")));
        assert_eq!(pool.pick(Route::Leader).1.addr, "c:3");
        assert_eq!(pool.configured().len(), 2);
        // c dies: leader forgotten, any-node calls move on.
        pool.failed(2);
        assert_eq!(pool.leader(), None);
        pool.failed(0);
        assert_eq!(pool.pick(Route::Any).1.addr, "b:2");
    }

    #[test]
    fn an_empty_pool_is_refused() {
        assert!(Pool::new(&[], ClientOptions::default()).is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::new();
        let steps: Vec<u128> = (0..8).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, vec![25, 50, 100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.step().as_millis(), 25);
    }
}
