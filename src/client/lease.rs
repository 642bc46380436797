//! A lease session for a region's agent: renews the primary lease with the leader and
//! judges, from its own acknowledged renewals only, how long the lease is certainly valid.
//!
//! The rule (docs/LEASES.md, rule 1): after the leader acknowledges the
//! renewal sent at `t`, the lease is valid until `t + ttl * (1 - drift) - margin`. Measured
//! from the *send* time on this process's monotonic clock, so neither network delay nor a
//! slow answer can stretch it, and the leader (which counts from when it *received* the
//! renewal) never grants the lease elsewhere before that instant. A timer fires at that
//! instant, so the holder fences itself even when it cannot reach the cluster.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::endpoint::{Backoff, Route};
use super::error::{classify, detail, Failure};
use super::{coordinator, Client, ClientError};
use crate::proto::{KeepAliveRequest, KeepAliveResponse, KeepAliveStatus};

/// How a lease session renews and how conservative it is.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Time between renewals; `None` = a third of the lease TTL (learned from the first
    /// answer; one second until then).
    pub renew_interval: Option<Duration>,
    /// Worst relative clock-rate difference assumed between this process and the leader
    /// (0.05 = 5%). Must match or exceed the cluster's `timing.drift`.
    pub drift: f64,
    /// Subtracted from every validity deadline, for scheduling delays in acting on it.
    pub margin: Duration,
    /// On a revocation, report the lease lost and acknowledge the demotion at once,
    /// instead of waiting for [`LeaseHandle::ack_demotion`]. Only safe when the holder
    /// checks [`LeaseHandle::is_valid`] before each action it takes as primary.
    pub auto_ack_demotion: bool,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            renew_interval: None,
            drift: 0.05,
            margin: Duration::from_millis(50),
            auto_ack_demotion: false,
        }
    }
}

/// What the session knows about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// No answer from the leader yet.
    Pending,
    /// This region holds the lease; the holder may act as primary until `valid_until`.
    Holding {
        /// Fencing token of the lease: pass it with every fenced write.
        token: u64,
        /// Until when the lease is certainly valid (monotonic clock).
        valid_until: Instant,
    },
    /// The lease is being revoked: stop acting as primary, then call
    /// [`LeaseHandle::ack_demotion`]. It is no longer "valid" for new actions.
    Revoking {
        /// The token being revoked.
        token: u64,
        /// The lease ends by this instant at the latest even without an ack.
        valid_until: Instant,
    },
    /// The cluster says this region does not hold the lease.
    NotHolder,
    /// The lease is gone as far as this holder is concerned: demotion acknowledged,
    /// validity ran out without a renewal, or the session was closed.
    Lost,
}

impl LeaseStatus {
    /// The token while holding or revoking.
    pub fn token(&self) -> Option<u64> {
        match self {
            LeaseStatus::Holding { token, .. } | LeaseStatus::Revoking { token, .. } => {
                Some(*token)
            }
            _ => None,
        }
    }

    /// Whether the lease no longer allows acting as primary, for good (until a new grant).
    fn is_lost(&self) -> bool {
        matches!(self, LeaseStatus::NotHolder | LeaseStatus::Lost)
    }
}

impl std::fmt::Display for LeaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = Instant::now();
        match self {
            LeaseStatus::Pending => f.write_str("pending"),
            LeaseStatus::Holding { token, valid_until } => write!(
                f,
                "holding token {token}, valid for {:?}",
                valid_until.saturating_duration_since(now)
            ),
            LeaseStatus::Revoking { token, .. } => write!(f, "revoking token {token}"),
            LeaseStatus::NotHolder => f.write_str("not holder"),
            LeaseStatus::Lost => f.write_str("lost"),
        }
    }
}

/// The instant until which a renewal sent at `sent` and acknowledged keeps the lease valid:
/// `sent + ttl * (1 - drift) - margin`. An unreasonable drift counts as 100% (no validity);
/// a span that does not fit the clock counts as none.
pub(crate) fn validity_deadline(
    sent: Instant,
    ttl: Duration,
    drift: f64,
    margin: Duration,
) -> Instant {
    let drift = if drift.is_finite() {
        drift.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let span = ttl.mul_f64(1.0 - drift).saturating_sub(margin);
    sent.checked_add(span).unwrap_or(sent)
}

/// What the session must do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// No change: keep renewing on schedule.
    None,
    /// Send a message with `demoted = true` now.
    SendDemoted,
    /// Renew now: the leader said this region was just granted the lease.
    RenewNow,
}

/// The lease arithmetic and state, without I/O: the background task feeds it sends,
/// answers and timer ticks.
#[derive(Debug)]
pub(crate) struct LeaseCore {
    drift: f64,
    margin: Duration,
    auto_ack: bool,
    /// Send time of each renewal not answered yet, in seq order.
    sent: VecDeque<(u64, Instant)>,
    /// TTL learned from the last answer.
    ttl: Option<Duration>,
    /// Token this agent believes its region holds (0 = none).
    token: u64,
    /// Validity of `token`, from acknowledged renewals only; never moves backwards for one
    /// token.
    valid_until: Option<Instant>,
    status: LeaseStatus,
    /// This agent acknowledged the demotion of `token`.
    demoted: bool,
}

impl LeaseCore {
    pub(crate) fn new(opts: &LeaseOptions) -> Self {
        Self {
            drift: opts.drift,
            margin: opts.margin,
            auto_ack: opts.auto_ack_demotion,
            sent: VecDeque::new(),
            ttl: None,
            token: 0,
            valid_until: None,
            status: LeaseStatus::Pending,
            demoted: false,
        }
    }

    pub(crate) fn status(&self) -> LeaseStatus {
        self.status
    }

    /// The TTL learned from the last answer.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Token to put in renewals.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// Whether renewals must say `demoted = true`.
    pub(crate) fn demoted(&self) -> bool {
        self.demoted
    }

    /// A renewal with `seq` was handed to the transport at `at`.
    pub(crate) fn on_send(&mut self, seq: u64, at: Instant) {
        self.sent.push_back((seq, at));
    }

    /// A new session starts: answers to renewals sent on the old one can no longer come.
    pub(crate) fn forget_unanswered(&mut self) {
        self.sent.clear();
    }

    /// Send time of the oldest renewal still waiting for an answer.
    pub(crate) fn oldest_unanswered(&self) -> Option<Instant> {
        self.sent.front().map(|(_, t)| *t)
    }

    /// Send time of `seq`, dropping it and every older entry (answers come in order, and an
    /// answer to a later seq supersedes earlier ones).
    fn take_sent(&mut self, seq: u64) -> Option<Instant> {
        while let Some(&(s, t)) = self.sent.front() {
            if s > seq {
                return None;
            }
            self.sent.pop_front();
            if s == seq {
                return Some(t);
            }
        }
        None
    }

    /// When the validity timer must fire.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.status {
            LeaseStatus::Holding { valid_until, .. }
            | LeaseStatus::Revoking { valid_until, .. } => Some(valid_until),
            _ => None,
        }
    }

    /// The renewal interval: configured, else a third of the TTL, else one second; between
    /// 10 ms (never a busy loop) and an hour (so instant arithmetic cannot overflow).
    pub(crate) fn renew_interval(&self, configured: Option<Duration>) -> Duration {
        configured
            .or(self.ttl.map(|t| t / 3))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(10), Duration::from_secs(3600))
    }

    /// Handles an answer from the leader received at `now`.
    pub(crate) fn on_response(&mut self, resp: &KeepAliveResponse, now: Instant) -> Reaction {
        let sent_at = self.take_sent(resp.seq);
        let Some(lease) = resp.lease.as_ref() else {
            return Reaction::None;
        };
        if lease.ttl_ms > 0 {
            self.ttl = Some(Duration::from_millis(lease.ttl_ms));
        }
        match resp.status() {
            KeepAliveStatus::Renewed => {
                // Unknown seq: an answer to a renewal of an older session, or a repeat.
                let Some(sent_at) = sent_at else {
                    return Reaction::None;
                };
                if lease.token != self.token {
                    // A new grant to this region: a fresh lease with its own validity.
                    self.token = lease.token;
                    self.demoted = false;
                    self.valid_until = None;
                }
                if self.demoted {
                    // Demoted for this token: a renewal does not make it valid again.
                    return Reaction::None;
                }
                let ttl = Duration::from_millis(lease.ttl_ms);
                let candidate = validity_deadline(sent_at, ttl, self.drift, self.margin);
                let valid_until = self.valid_until.map_or(candidate, |v| v.max(candidate));
                self.valid_until = Some(valid_until);
                if valid_until > now {
                    self.status = LeaseStatus::Holding {
                        token: self.token,
                        valid_until,
                    };
                } else if self.deadline().is_some() {
                    self.status = LeaseStatus::Lost;
                }
                Reaction::None
            }
            KeepAliveStatus::Revoke => {
                if lease.token < self.token {
                    // A revocation of an older grant (a pushed one can arrive after the
                    // answer that told of a newer grant): tokens only grow, so it is stale.
                    return Reaction::None;
                }
                let holding_this = lease.token == self.token
                    && self.valid_until.is_some_and(|v| v > now)
                    && !self.demoted;
                let lapsed = lease.token == self.token
                    && self.valid_until.is_some_and(|v| v <= now)
                    && !self.demoted;
                if lapsed && !self.auto_ack {
                    // Held by this session, then its validity ran out: the holder was told to
                    // stop, but whether it did is the holder's to say (its demote may have
                    // failed). Say nothing: the coordinator waits out the TTL, which ends a
                    // drift margin after this validity did.
                    self.status = LeaseStatus::Lost;
                    return Reaction::None;
                }
                if !holding_this {
                    // Never validly held (or already demoted): this agent is certainly not
                    // acting as primary, so it can say so at once.
                    let first = !self.demoted || lease.token != self.token;
                    self.token = lease.token;
                    self.demoted = true;
                    self.status = LeaseStatus::Lost;
                    return if first {
                        Reaction::SendDemoted
                    } else {
                        Reaction::None
                    };
                }
                let valid_until = self.valid_until.unwrap_or(now);
                self.status = LeaseStatus::Revoking {
                    token: self.token,
                    valid_until,
                };
                if self.auto_ack {
                    self.ack_demotion();
                    Reaction::SendDemoted
                } else {
                    Reaction::None
                }
            }
            KeepAliveStatus::NotHolder => {
                self.token = 0;
                self.demoted = false;
                self.valid_until = None;
                self.status = LeaseStatus::NotHolder;
                Reaction::None
            }
            // Pushed (seq 0) when this region is granted a lease: validity only ever comes
            // from a renewal's own send time, so the answer is to renew at once.
            KeepAliveStatus::Unspecified if resp.seq == 0 && lease.token > self.token => {
                Reaction::RenewNow
            }
            KeepAliveStatus::Unspecified => Reaction::None,
        }
    }

    /// The validity timer fired (or may have): past `valid_until` the lease is lost.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| d <= now) {
            self.status = LeaseStatus::Lost;
        }
    }

    /// The holder stopped acting as primary.
    pub(crate) fn ack_demotion(&mut self) {
        self.demoted = true;
        if self.deadline().is_some() || self.status == LeaseStatus::Pending {
            self.status = LeaseStatus::Lost;
        }
    }

    /// The session was closed by its owner.
    pub(crate) fn close(&mut self) {
        self.status = LeaseStatus::Lost;
    }
}

/// A live KeepAlive stream.
pub(crate) struct Session {
    /// Pool index of the node serving it.
    idx: usize,
    /// Address of that node (for logs and errors).
    addr: String,
    tx: mpsc::Sender<KeepAliveRequest>,
    stream: BoxStream<'static, Result<KeepAliveResponse, Status>>,
    /// Seq of the first message and when it was handed to the transport.
    first_seq: u64,
    sent_at: Instant,
}

/// Why a session could not be opened or broke.
pub(crate) enum Broken {
    /// Try again; at once when another node was named, else after a backoff.
    Retry {
        /// The next attempt goes to a different node.
        now: bool,
    },
    /// An answer that retrying cannot change (unknown service, bad region, ...).
    Fatal(ClientError),
}

/// Opens KeepAlive streams; the real one talks gRPC, tests use in-memory channels.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Opens a stream whose first message is `first`.
    fn open(&self, first: KeepAliveRequest) -> BoxFuture<'static, Result<Session, Broken>>;
    /// Session `idx` ended with `status` (`None`: closed by the node or stalled).
    fn broken(&self, idx: usize, addr: &str, status: Option<Status>) -> Broken;
}

/// KeepAlive over the client's pool: to the leader, following hints.
struct GrpcTransport {
    client: Client,
}

/// Whether an answer with `code` ends a lease session for good. NOT_FOUND does not: a
/// service created just before its agents start may not have reached the node yet (or the
/// operator is about to create it), so the session retries with backoff and says so.
pub(crate) fn ends_session(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// How a failed KeepAlive call or stream is to be handled.
fn judge(client: &Client, idx: usize, addr: &str, status: Status) -> Broken {
    let pool = &client.pool;
    match classify(&status) {
        Failure::NotLeader { hint } => Broken::Retry {
            now: pool.not_leader(idx, hint.as_deref()),
        },
        Failure::Answered if status.code() == Code::NotFound => {
            warn!(
                node = addr,
                error = %detail(&status),
                "the service is not known (yet): retrying with backoff; create it with \
                 `baton service put` if it does not exist"
            );
            Broken::Retry { now: false }
        }
        Failure::Answered if ends_session(status.code()) => Broken::Fatal(ClientError::Rpc {
            endpoint: addr.to_string(),
            status,
        }),
        _ => {
            debug!(node = addr, error = %detail(&status), "keepalive stream failed");
            pool.failed(idx);
            Broken::Retry { now: false }
        }
    }
}

impl Transport for GrpcTransport {
    fn open(&self, first: KeepAliveRequest) -> BoxFuture<'static, Result<Session, Broken>> {
        let client = self.client.clone();
        async move {
            let pool = &client.pool;
            let (idx, node) = pool.pick(Route::Leader);
            let (tx, rx) = mpsc::channel(16);
            let first_seq = first.seq;
            let sent_at = Instant::now();
            // The first message is queued before the call: the server may wait for it
            // before it answers with headers.
            if tx.try_send(first).is_err() {
                return Err(Broken::Retry { now: false });
            }
            let open_limit = pool
                .opts
                .connect_timeout
                .saturating_add(pool.opts.attempt_timeout);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            pool.decorate(&mut request, &pool.request_id());
            let mut stub = coordinator(node.channel(), pool.opts.max_message_size);
            match tokio::time::timeout(open_limit, stub.keep_alive(request)).await {
                Ok(Ok(resp)) => Ok(Session {
                    idx,
                    addr: node.addr.clone(),
                    tx,
                    stream: resp.into_inner().boxed(),
                    first_seq,
                    sent_at,
                }),
                Ok(Err(status)) => Err(judge(&client, idx, &node.addr, status)),
                Err(_) => {
                    pool.failed(idx);
                    Err(Broken::Retry { now: false })
                }
            }
        }
        .boxed()
    }

    fn broken(&self, idx: usize, addr: &str, status: Option<Status>) -> Broken {
        match status {
            Some(s) => judge(&self.client, idx, addr, s),
            None => {
                self.client.pool.failed(idx);
                Broken::Retry { now: false }
            }
        }
    }
}

#[derive(Debug)]
enum Cmd {
    AckDemotion,
    Close,
}

/// Who renews.
#[derive(Debug, Clone)]
struct Ident {
    service: String,
    region: String,
    agent_id: String,
}

/// A lease session of one agent. Dropping it stops renewing: the task sees its command
/// channel close, reports the lease lost to any remaining status receiver and ends (the
/// cluster lets the lease run out). The task may still answer what it had already received
/// before it noticed; [`LeaseHandle::close`] does the same and waits until it has ended.
#[derive(Debug)]
pub struct LeaseHandle {
    status: watch::Receiver<LeaseStatus>,
    /// TTL (ms) carried by the last answer; 0 before the first.
    ttl_ms: Arc<std::sync::atomic::AtomicU64>,
    cmds: mpsc::UnboundedSender<Cmd>,
    fatal: Arc<Mutex<Option<(String, Code, String)>>>,
    task: Option<JoinHandle<()>>,
}

impl LeaseHandle {
    pub(crate) fn start(
        client: Client,
        service: &str,
        region: &str,
        agent_id: &str,
        options: LeaseOptions,
    ) -> Self {
        let ident = Ident {
            service: service.to_string(),
            region: region.to_string(),
            agent_id: agent_id.to_string(),
        };
        Self::with_transport(Arc::new(GrpcTransport { client }), ident, options)
    }

    fn with_transport(transport: Arc<dyn Transport>, ident: Ident, options: LeaseOptions) -> Self {
        let (status_tx, status) = watch::channel(LeaseStatus::Pending);
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let fatal = Arc::new(Mutex::new(None));
        let ttl_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(run(
            transport,
            ident,
            options,
            status_tx,
            cmd_rx,
            fatal.clone(),
            ttl_ms.clone(),
        ));
        Self {
            status,
            ttl_ms,
            cmds,
            fatal,
            task: Some(task),
        }
    }

    /// A receiver of every status change (`changed().await`, `borrow()`).
    pub fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Until when the lease is certainly valid; `None` unless holding or revoking.
    pub fn valid_until(&self) -> Option<Instant> {
        match *self.status.borrow() {
            LeaseStatus::Holding { valid_until, .. }
            | LeaseStatus::Revoking { valid_until, .. } => Some(valid_until),
            _ => None,
        }
    }

    /// Whether the holder may act as primary right now: holding, not revoking, and before
    /// `valid_until` (checked against the clock, not only the timer).
    pub fn is_valid(&self) -> bool {
        match *self.status.borrow() {
            LeaseStatus::Holding { valid_until, .. } => Instant::now() < valid_until,
            _ => false,
        }
    }

    /// The fencing token while holding or revoking.
    pub fn token(&self) -> Option<u64> {
        self.status.borrow().token()
    }

    /// The lease TTL the last answer carried: the one this session's validity is computed
    /// with (`None` before the first answer).
    pub fn ttl(&self) -> Option<Duration> {
        match self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Waits until the lease is held and returns its token; fails if the session ends
    /// first (closed, or refused by the cluster: unknown service or region).
    pub async fn held(&self) -> Result<u64, ClientError> {
        let mut rx = self.status.clone();
        let waited = rx
            .wait_for(|s| matches!(s, LeaseStatus::Holding { .. }))
            .await
            .map(|s| s.token());
        match waited {
            Ok(Some(token)) => Ok(token),
            _ => Err(self.fatal_error()),
        }
    }

    /// Resolves when the lease is not held: the region does not hold it, the demotion was
    /// acknowledged, validity ran out without a renewal, or the session ended. Resolves at
    /// once if that is already so.
    pub async fn lost(&self) {
        let mut rx = self.status.clone();
        // An error means the task ended, which also means the lease is no longer renewed.
        let _ = rx.wait_for(LeaseStatus::is_lost).await;
    }

    /// Tells the cluster this holder stopped acting as primary (after a revocation), so a
    /// switchover need not wait out the TTL. The lease is lost from then on.
    pub fn ack_demotion(&self) {
        let _ = self.cmds.send(Cmd::AckDemotion);
    }

    /// Stops renewing and waits for the background task to end. The lease is reported
    /// lost; the cluster lets it expire after its TTL.
    pub async fn close(mut self) {
        let _ = self.cmds.send(Cmd::Close);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn fatal_error(&self) -> ClientError {
        let fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        match fatal.as_ref() {
            Some((endpoint, code, message)) => ClientError::Rpc {
                endpoint: endpoint.clone(),
                status: Status::new(*code, message.clone()),
            },
            None => ClientError::Closed,
        }
    }
}

/// Where the session is.
enum Phase {
    /// Waiting before the next attempt.
    Idle { retry_at: Instant },
    /// Opening a stream.
    Opening(BoxFuture<'static, Result<Session, Broken>>),
    /// Streaming renewals.
    Open(Session),
}

enum Event {
    Retry,
    Opened(Result<Session, Broken>),
    RenewDue,
    Stalled,
    Answer(Option<Result<KeepAliveResponse, Status>>),
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next thing that happens in the current phase.
async fn next_event(phase: &mut Phase, renew_at: Instant, stall_at: Option<Instant>) -> Event {
    match phase {
        Phase::Idle { retry_at } => {
            sleep_until(*retry_at).await;
            Event::Retry
        }
        Phase::Opening(fut) => Event::Opened(fut.await),
        Phase::Open(session) => tokio::select! {
            m = session.stream.next() => Event::Answer(m),
            _ = sleep_until(renew_at) => Event::RenewDue,
            _ = sleep_until_opt(stall_at) => Event::Stalled,
        },
    }
}

fn publish(tx: &watch::Sender<LeaseStatus>, core: &LeaseCore) {
    let new = core.status();
    tx.send_if_modified(|s| {
        if *s == new {
            false
        } else {
            *s = new;
            true
        }
    });
}

/// The background task of a lease session.
async fn run(
    transport: Arc<dyn Transport>,
    ident: Ident,
    options: LeaseOptions,
    status_tx: watch::Sender<LeaseStatus>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    fatal: Arc<Mutex<Option<(String, Code, String)>>>,
    ttl_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut core = LeaseCore::new(&options);
    let mut seq = 0u64;
    let mut backoff = Backoff::new();
    let mut phase = Phase::Idle {
        retry_at: Instant::now(),
    };
    let mut renew_at = Instant::now();
    // When the last renewal was handed to the transport.
    let mut last_sent = Instant::now();
    let request = |seq: u64, core: &LeaseCore| KeepAliveRequest {
        service: ident.service.clone(),
        region: ident.region.clone(),
        agent_id: ident.agent_id.clone(),
        seq,
        demoted: core.demoted(),
        token: core.token(),
    };
    loop {
        let interval = core.renew_interval(options.renew_interval);
        // A stream whose renewals go unanswered for two intervals is abandoned for
        // another node: its leader may be stuck or cut off. (The interval is at most an
        // hour, so this cannot overflow.)
        let stall_at = core
            .oldest_unanswered()
            .map(|t| t + (interval * 2).max(Duration::from_millis(100)));
        let event = tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::AckDemotion) => {
                    core.ack_demotion();
                    publish(&status_tx, &core);
                    if let Phase::Open(session) = &phase {
                        seq += 1;
                        let now = Instant::now();
                        if session.tx.try_send(request(seq, &core)).is_ok() {
                            core.on_send(seq, now);
                        }
                    }
                    continue;
                }
                Some(Cmd::Close) | None => {
                    core.close();
                    publish(&status_tx, &core);
                    return;
                }
            },
            _ = sleep_until_opt(core.deadline()) => {
                core.on_timer(Instant::now());
                if core.status() == LeaseStatus::Lost {
                    warn!(service = %ident.service, "lease validity ran out without a renewal; self-fenced");
                }
                publish(&status_tx, &core);
                continue;
            }
            ev = next_event(&mut phase, renew_at, stall_at) => ev,
        };
        let failure = match event {
            Event::Retry => {
                seq += 1;
                phase = Phase::Opening(transport.open(request(seq, &core)));
                continue;
            }
            Event::Opened(Ok(session)) => {
                debug!(node = %session.addr, service = %ident.service, "keepalive session open");
                core.forget_unanswered();
                core.on_send(session.first_seq, session.sent_at);
                last_sent = session.sent_at;
                renew_at = session.sent_at + interval;
                if core.demoted() {
                    // The demotion may have been acknowledged while the stream opened,
                    // after the first message was built.
                    seq += 1;
                    let now = Instant::now();
                    if session.tx.try_send(request(seq, &core)).is_ok() {
                        core.on_send(seq, now);
                    }
                }
                phase = Phase::Open(session);
                continue;
            }
            Event::Opened(Err(b)) => b,
            Event::RenewDue => {
                let Phase::Open(session) = &phase else {
                    continue;
                };
                seq += 1;
                let now = Instant::now();
                renew_at = now + interval;
                match session.tx.try_send(request(seq, &core)) {
                    Ok(()) => {
                        core.on_send(seq, now);
                        last_sent = now;
                        continue;
                    }
                    // Full: the node stopped reading; closed: the call ended.
                    Err(_) => transport.broken(session.idx, &session.addr, None),
                }
            }
            Event::Stalled => {
                let Phase::Open(session) = &phase else {
                    continue;
                };
                info!(node = %session.addr, "keepalive answers stalled; trying another node");
                transport.broken(session.idx, &session.addr, None)
            }
            Event::Answer(Some(Ok(resp))) => {
                backoff.reset();
                let before = std::mem::discriminant(&core.status());
                let reaction = core.on_response(&resp, Instant::now());
                if let Some(ttl) = core.ttl() {
                    ttl_ms.store(ttl.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                // The first answer teaches the TTL: a short one must not wait out the
                // default first interval (the lease would lapse before the next renewal).
                renew_at = renew_at.min(last_sent + core.renew_interval(options.renew_interval));
                if std::mem::discriminant(&core.status()) != before {
                    info!(service = %ident.service, region = %ident.region, status = %core.status(), "lease status changed");
                }
                publish(&status_tx, &core);
                if let (Reaction::SendDemoted | Reaction::RenewNow, Phase::Open(session)) =
                    (reaction, &phase)
                {
                    seq += 1;
                    let now = Instant::now();
                    if session.tx.try_send(request(seq, &core)).is_ok() {
                        core.on_send(seq, now);
                        last_sent = now;
                    }
                }
                continue;
            }
            Event::Answer(other) => {
                let Phase::Open(session) = &phase else {
                    continue;
                };
                let status = match other {
                    Some(Err(s)) => Some(s),
                    _ => None,
                };
                transport.broken(session.idx, &session.addr, status)
            }
        };
        match failure {
            Broken::Retry { now } => {
                let wait = if now { Duration::ZERO } else { backoff.step() };
                phase = Phase::Idle {
                    retry_at: Instant::now() + wait,
                };
            }
            Broken::Fatal(e) => {
                warn!(service = %ident.service, error = %e, "lease session refused by the cluster");
                if let ClientError::Rpc { endpoint, status } = &e {
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                        endpoint.clone(),
                        status.code(),
                        status.message().to_string(),
                    ));
                }
                core.close();
                publish(&status_tx, &core);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
