//! Load shedding: per-caller rate and concurrency limits on client API calls.
//!
//! Every call on the client listener (a unary RPC, or the opening of a Watch or KeepAlive
//! stream) is admitted by [`ShedCore`] or answered `RESOURCE_EXHAUSTED` at once, before it
//! is decoded, with a message naming the limit and asking the caller to back off. A caller
//! is its [`Caller`] key (today the remote IP address; the authenticated principal once
//! there is one). Each has a token bucket (`requests_per_second_per_caller`, bursts of
//! `request_burst_per_caller`) and a cap on calls in flight
//! (`max_requests_in_flight_per_caller`); the whole node caps calls in flight
//! (`max_requests_in_flight`) so many callers together cannot swamp it either. Messages on
//! an open stream (renewals, watch events) are not counted: a stream is admitted once.
//!
//! Raft traffic is never shed (it has its own listener, and the Raft service is exempt when
//! it shares the client one). The state is bounded: at most `max_tracked_callers` callers
//! are remembered; idle ones (nothing in flight, bucket full) are forgotten first, which
//! loses nothing since a new entry starts the same.
//!
//! [`ShedCore`] decides from the `Instant`s it is given (sans IO); [`ShedLayer`] applies it
//! to the tonic server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

use super::trim::{TrimCore, Trimmer};

/// Who a call is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The remote IP address (every port of it together).
    Addr(IpAddr),
    /// An authenticated principal.
    Principal(Arc<str>),
    /// A call whose transport names no peer (counted together).
    Unknown,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Addr(ip) => write!(f, "{ip}"),
            Caller::Principal(p) => write!(f, "principal {p}"),
            Caller::Unknown => write!(f, "this caller"),
        }
    }
}

/// The limits [`ShedCore`] enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedLimits {
    /// Calls per second a caller may make on average.
    pub rate: f64,
    /// Calls a caller may make at once after being idle.
    pub burst: f64,
    /// Calls of one caller in flight at once.
    pub per_caller: u32,
    /// Calls of all callers in flight at once.
    pub total: u32,
    /// Callers remembered at once.
    pub max_callers: usize,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The caller's bucket is empty; a call fits again after `retry_after`.
    Rate {
        /// The configured rate.
        rate: f64,
        /// The configured burst.
        burst: f64,
        /// When the next call would be admitted.
        retry_after: Duration,
    },
    /// The caller has `limit` calls in flight.
    CallerInFlight {
        /// The configured limit.
        limit: u32,
    },
    /// The node has `limit` calls in flight.
    NodeInFlight {
        /// The configured limit.
        limit: u32,
    },
    /// `limit` callers are tracked and each has a call in flight.
    TooManyCallers {
        /// The configured limit.
        limit: usize,
    },
}

impl Refusal {
    /// The `RESOURCE_EXHAUSTED` answer for `caller`, naming the limit and what to do.
    pub fn status(&self, caller: &Caller) -> Status {
        let msg = match self {
            Refusal::Rate {
                rate,
                burst,
                retry_after,
            } => format!(
                "{caller} is over this node's request rate limit ({rate} calls/s per caller, \
                 bursts of {burst}); back off and retry in {} ms or later",
                retry_after.as_millis().max(1)
            ),
            Refusal::CallerInFlight { limit } => format!(
                "{caller} already has {limit} calls in flight on this node, the limit per caller; \
                 back off and retry when some complete (or spread calls over other nodes)"
            ),
            Refusal::NodeInFlight { limit } => format!(
                "this node has {limit} calls in flight, its limit; back off and retry shortly, \
                 or use another node"
            ),
            Refusal::TooManyCallers { limit } => format!(
                "this node is serving {limit} distinct callers at once, its limit; back off and \
                 retry shortly, or use another node"
            ),
        };
        Status::resource_exhausted(msg)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

impl Bucket {
    fn refill(&mut self, now: Instant, l: &ShedLimits) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * l.rate).min(l.burst);
        // Never backwards: an earlier `now` must not make the next refill count twice.
        self.refilled = self.refilled.max(now);
    }

    /// Holds nothing a fresh entry would not: forgetting it changes no decision.
    fn idle(&mut self, now: Instant, l: &ShedLimits) -> bool {
        self.refill(now, l);
        self.in_flight == 0 && self.tokens >= l.burst
    }
}

/// The decisions of load shedding, from the times it is given.
#[derive(Debug)]
pub struct ShedCore {
    limits: ShedLimits,
    callers: HashMap<Caller, Bucket>,
    total: u32,
    /// Refusals since start, for logs and tests.
    shed: u64,
}

impl ShedCore {
    /// A core with `limits` and no callers.
    pub fn new(limits: ShedLimits) -> Self {
        Self {
            limits,
            callers: HashMap::new(),
            total: 0,
            shed: 0,
        }
    }

    /// Admits one call of `caller` at `now` (then [`ShedCore::release`] it when it ends),
    /// or says which limit it hit.
    pub fn admit(&mut self, caller: &Caller, now: Instant) -> Result<(), Refusal> {
        let r = self.try_admit(caller, now);
        if r.is_err() {
            self.shed += 1;
        }
        r
    }

    fn try_admit(&mut self, caller: &Caller, now: Instant) -> Result<(), Refusal> {
        let l = self.limits;
        if self.total >= l.total {
            return Err(Refusal::NodeInFlight { limit: l.total });
        }
        if !self.callers.contains_key(caller) && self.callers.len() >= l.max_callers {
            self.evict(now);
            if self.callers.len() >= l.max_callers {
                return Err(Refusal::TooManyCallers {
                    limit: l.max_callers,
                });
            }
        }
        let b = self.callers.entry(caller.clone()).or_insert(Bucket {
            tokens: l.burst,
            refilled: now,
            in_flight: 0,
        });
        b.refill(now, &l);
        if b.in_flight >= l.per_caller {
            return Err(Refusal::CallerInFlight {
                limit: l.per_caller,
            });
        }
        if b.tokens < 1.0 {
            let missing = 1.0 - b.tokens;
            return Err(Refusal::Rate {
                rate: l.rate,
                burst: l.burst,
                retry_after: Duration::from_secs_f64((missing / l.rate).min(3600.0)),
            });
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        self.total += 1;
        Ok(())
    }

    /// Ends one admitted call of `caller`.
    pub fn release(&mut self, caller: &Caller) {
        self.total = self.total.saturating_sub(1);
        if let Some(b) = self.callers.get_mut(caller) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }

    /// Forgets idle callers; if none is idle, the least recently refilled caller with
    /// nothing in flight (it only loses the part of its bucket it had spent).
    fn evict(&mut self, now: Instant) {
        let l = self.limits;
        self.callers.retain(|_, b| !b.idle(now, &l));
        if self.callers.len() < l.max_callers {
            return;
        }
        let oldest = self
            .callers
            .iter()
            .filter(|(_, b)| b.in_flight == 0)
            .min_by_key(|(_, b)| b.refilled)
            .map(|(c, _)| c.clone());
        if let Some(c) = oldest {
            self.callers.remove(&c);
        }
    }

    /// Forgets every idle caller (run now and then so memory follows the callers).
    pub fn sweep(&mut self, now: Instant) {
        let l = self.limits;
        self.callers.retain(|_, b| !b.idle(now, &l));
    }

    /// Callers remembered.
    pub fn tracked(&self) -> usize {
        self.callers.len()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> u32 {
        self.total
    }

    /// Calls refused since start.
    pub fn shed_count(&self) -> u64 {
        self.shed
    }
}

/// A node's load shedder, shared by its connections.
#[derive(Debug, Clone)]
pub struct Shed {
    core: Arc<Mutex<(ShedCore, Instant, TrimCore)>>,
    trimmer: Trimmer,
}

/// An admitted call; ends it when dropped.
pub struct Admitted {
    shed: Shed,
    caller: Caller,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.shed.lock();
        g.0.release(&self.caller);
        // After a burst of calls, glibc keeps the freed buffers (measured: RSS 45 -> 63 MB
        // under 256-1,024 concurrent reads, still 64-68 MB 16 s later): give them back
        // once the calls in flight have fallen to a quarter of the peak.
        let open = g.0.in_flight() as usize;
        let trim = g.2.closed(open);
        drop(g);
        if trim {
            self.shed.trimmer.poke();
        }
    }
}

/// How often idle callers are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Shed {
    /// A shedder enforcing `limits`.
    pub fn new(limits: ShedLimits) -> Self {
        Self {
            core: Arc::new(Mutex::new((
                ShedCore::new(limits),
                Instant::now(),
                TrimCore::default(),
            ))),
            trimmer: Trimmer::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (ShedCore, Instant, TrimCore)> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call of `caller` now, or answers the status to send back.
    pub fn admit(&self, caller: Caller) -> Result<Admitted, Status> {
        let now = Instant::now();
        let mut g = self.lock();
        let (core, swept, trim) = &mut *g;
        if now.saturating_duration_since(*swept) >= SWEEP_EVERY {
            core.sweep(now);
            *swept = now;
        }
        match core.admit(&caller, now) {
            Ok(()) => {
                trim.opened(core.in_flight() as usize);
                Ok(Admitted {
                    shed: self.clone(),
                    caller,
                })
            }
            Err(r) => {
                let n = core.shed_count();
                drop(g);
                // One line per thousand refusals: a flood must not become a log flood.
                if n % 1000 == 1 {
                    tracing::warn!(%caller, refused = n, "shedding load: {r:?}");
                }
                Err(r.status(&caller))
            }
        }
    }

    /// Calls refused since start.
    pub fn shed_count(&self) -> u64 {
        self.lock().0.shed_count()
    }
}

/// Calls of this path prefix are never shed: Raft between nodes.
const EXEMPT: &str = "/baton.v1.Raft/";

/// The caller of an HTTP request: the principal of its verified client certificate (other
/// than a node's, which forwards many callers' calls), else its address as the listener or
/// the tonic transport recorded it.
fn caller_of<B>(req: &http::Request<B>) -> Caller {
    let ext = req.extensions();
    let conn = ext.get::<crate::connection::ConnInfo>();
    if let Some(name) = conn
        .and_then(|c| c.identity())
        .and_then(|i| i.names.first())
        .filter(|n| !n.starts_with("node-"))
    {
        return Caller::Principal(Arc::from(name.as_str()));
    }
    let addr = conn
        .and_then(|c| c.remote)
        .or_else(|| {
            ext.get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
        })
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        });
    addr.map_or(Caller::Unknown, |a| Caller::Addr(a.ip()))
}

/// A tower layer applying a [`Shed`] to every call of a tonic server.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shed: Shed,
}

impl ShedLayer {
    /// The layer of `shed`.
    pub fn new(shed: Shed) -> Self {
        Self { shed }
    }
}

impl<S> tower_layer::Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            shed: self.shed.clone(),
        }
    }
}

/// The service [`ShedLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    shed: Shed,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for ShedService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with(EXEMPT) {
            return Box::pin(self.inner.call(req));
        }
        match self.shed.admit(caller_of(&req)) {
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(admitted) => {
                let fut = self.inner.call(req);
                // Held until the answer (or a stream's first headers) is ready.
                Box::pin(async move {
                    let r = fut.await;
                    drop(admitted);
                    r
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_behind_the_tls_acceptor_are_told_apart_by_address() {
        // baton's listeners record the connection as `ConnInfo`, not tonic's connect info:
        // reading only the latter counted every caller as one "Unknown".
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(crate::connection::ConnInfo::plain(
                "127.0.0.9:4000".parse().unwrap(),
            ));
        assert_eq!(caller_of(&req), Caller::Addr("127.0.0.9".parse().unwrap()));
        assert_eq!(caller_of(&http::Request::new(())), Caller::Unknown);
    }

    #[test]
    fn the_end_of_a_burst_of_calls_asks_for_memory_back() {
        let shed = Shed::new(ShedLimits {
            rate: 1e6,
            burst: 1e6,
            per_caller: 1_000,
            total: 1_000,
            max_callers: 10,
        });
        let calls: Vec<_> = (0..100)
            .map(|_| shed.admit(Caller::Unknown).unwrap())
            .collect();
        drop(calls);
        // Armed: the burst's tail asks for a trim (a few calls never do, see trim.rs).
        assert!(shed.lock().2.closed(0));
    }

    fn limits() -> ShedLimits {
        ShedLimits {
            rate: 10.0,
            burst: 20.0,
            per_caller: 3,
            total: 5,
            max_callers: 4,
        }
    }

    fn ip(n: u8) -> Caller {
        Caller::Addr(IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut c = ShedCore::new(limits());
        let t0 = Instant::now();
        for _ in 0..20 {
            c.admit(&ip(1), t0).unwrap();
            c.release(&ip(1));
        }
        let Err(Refusal::Rate { retry_after, .. }) = c.admit(&ip(1), t0) else {
            panic!("the 21st call of a burst of 20 was admitted");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // Another caller is unaffected.
        c.admit(&ip(2), t0).unwrap();
        c.release(&ip(2));
        // 10 per second: one more after 100 ms, ten more after a second, never more.
        assert!(c.admit(&ip(1), t0 + Duration::from_millis(99)).is_err());
        c.admit(&ip(1), t0 + Duration::from_millis(100)).unwrap();
        c.release(&ip(1));
        let t1 = t0 + Duration::from_millis(1100);
        for _ in 0..10 {
            c.admit(&ip(1), t1).unwrap();
            c.release(&ip(1));
        }
        assert!(matches!(c.admit(&ip(1), t1), Err(Refusal::Rate { .. })));
        assert_eq!(c.shed_count(), 3);
        let msg = Refusal::Rate {
            rate: 10.0,
            burst: 20.0,
            retry_after: Duration::from_millis(100),
        }
        .status(&ip(1));
        assert_eq!(msg.code(), tonic::Code::ResourceExhausted);
        assert!(
            msg.message().contains("127.0.0.1") && msg.message().contains("retry in 100 ms"),
            "{}",
            msg.message()
        );
    }

    #[test]
    fn calls_in_flight_per_caller_and_per_node() {
        let mut c = ShedCore::new(limits());
        let t = Instant::now();
        for _ in 0..3 {
            c.admit(&ip(1), t).unwrap();
        }
        assert_eq!(
            c.admit(&ip(1), t),
            Err(Refusal::CallerInFlight { limit: 3 })
        );
        c.admit(&ip(2), t).unwrap();
        c.admit(&ip(2), t).unwrap();
        // Five in flight: the node's cap, whoever asks.
        assert_eq!(c.admit(&ip(3), t), Err(Refusal::NodeInFlight { limit: 5 }));
        c.release(&ip(1));
        assert_eq!(c.in_flight(), 4);
        c.admit(&ip(1), t).unwrap();
        // A refused call took no token: after releases the caller goes on at once.
        for _ in 0..3 {
            c.release(&ip(1));
        }
        c.admit(&ip(1), t).unwrap();
    }

    #[test]
    fn memory_is_bounded_and_idle_callers_are_forgotten_first() {
        let mut c = ShedCore::new(limits());
        let t = Instant::now();
        // Four callers, each with a call in flight: a fifth cannot be tracked.
        for n in 1..=4 {
            c.admit(&ip(n), t).unwrap();
        }
        assert_eq!(
            c.admit(&ip(5), t),
            Err(Refusal::TooManyCallers { limit: 4 })
        );
        // One finishes but spent a token: it is the one evicted (its spent token is lost).
        c.release(&ip(1));
        c.admit(&ip(5), t).unwrap();
        assert_eq!(c.tracked(), 4);
        // After two seconds every bucket is full again; those with nothing in flight are
        // idle and swept.
        c.release(&ip(5));
        c.sweep(t + Duration::from_secs(2));
        assert_eq!(c.tracked(), 3);
        for n in 2..=4 {
            c.release(&ip(n));
        }
        c.sweep(t + Duration::from_secs(2));
        assert_eq!(c.tracked(), 0);
        // A flood of distinct callers never tracks more than the cap.
        let mut c = ShedCore::new(limits());
        for n in 0..=255 {
            if c.admit(&ip(n), t).is_ok() {
                c.release(&ip(n));
            }
            assert!(c.tracked() <= 4);
        }
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_mints_tokens() {
        let mut c = ShedCore::new(limits());
        let t = Instant::now() + Duration::from_secs(10);
        for _ in 0..20 {
            c.admit(&ip(1), t).unwrap();
            c.release(&ip(1));
        }
        assert!(c.admit(&ip(1), t - Duration::from_secs(5)).is_err());
    }
}
