//! The workload: everything that talks to the cluster under test and records what it saw.
//!
//! - **readers**, one per node (their first endpoint is that node): linearizable and local
//!   `GetPrimary`, and linearizable `ValidateToken` of tokens seen so far;
//! - **a switchover client**: a linearizable read, then a `Failover` with the read's token
//!   as `expected_token` to another region, every 1–2 s;
//! - **agents**, one or two per region, holding the lease with `KeepAlive`; they record
//!   every acknowledged renewal (send time and validity on the history clock), promotion,
//!   revocation, demotion and self-fencing, and write to the fenced resource every ~50 ms
//!   while their lease is valid;
//! - **the fenced resource**, a register owned by the harness that accepts a write only
//!   with a token not lower than the highest it accepted;
//! - **watchers**, one per node, recording every event, progress notification, error and
//!   resume;
//! - the **final phase**: final linearizable reads and every node's local final state.
//!
//! Recording follows the rules of the README ("What the workload must record"): clock read
//! just before sending and just after the answer, `fail` only when the operation certainly
//! had no effect, a new process name after every unknown outcome.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::client::{
    code_name, Client, ClientError, ClientOptions, Consistency, LeaseHandle, LeaseOptions,
    LeaseStatus, WatchOptions,
};
use baton::proto;
use futures::StreamExt as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::cluster::{region_index, Cluster, REGIONS};
use crate::history::{
    Call, Consistency as RecConsistency, Event, FenceWrite, FinalService, HistoryWriter, LeaseObs,
    LeaseStateRec, OpResult, Validity, WatchKind,
};
use crate::nemesis::NodeId;

/// Workload parameters.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The service every client works on.
    pub service: String,
    /// Seed of every random choice of the workload.
    pub seed: u64,
    /// Lease TTL of the service (agents' renewals are judged with it).
    pub lease_ttl: Duration,
    /// Drift fraction the agents assume.
    pub drift: f64,
    /// Safety margin the agents subtract from their validity.
    pub margin: Duration,
    /// Pause between two operations of a reader.
    pub read_pause: (Duration, Duration),
    /// Pause between two switchovers.
    pub switchover_pause: (Duration, Duration),
    /// Period of an agent's writes to the fenced resource.
    pub fence_period: Duration,
    /// Agents acknowledge revocations through the client library at once
    /// (`auto_ack_demotion`), instead of recording `demoted` first and then acknowledging.
    pub auto_ack: bool,
    /// Deadline of a failover call (it may wait out the old holder's TTL).
    pub failover_timeout: Duration,
    /// Deadline of a read.
    pub read_timeout: Duration,
}

impl WorkloadConfig {
    /// Defaults for `service` with the given lease timing.
    pub fn new(
        service: &str,
        seed: u64,
        lease_ttl: Duration,
        drift: f64,
        margin: Duration,
    ) -> Self {
        Self {
            service: service.to_string(),
            seed,
            lease_ttl,
            drift,
            margin,
            read_pause: (Duration::from_millis(20), Duration::from_millis(150)),
            switchover_pause: (Duration::from_millis(1000), Duration::from_millis(2000)),
            fence_period: Duration::from_millis(50),
            auto_ack: false,
            failover_timeout: lease_ttl * 3 + Duration::from_secs(4),
            read_timeout: Duration::from_secs(3),
        }
    }
}

/// A lease as recorded, from its wire form.
pub fn lease_obs(l: &proto::Lease) -> LeaseObs {
    let state = match proto::LeaseState::try_from(l.state) {
        Ok(proto::LeaseState::Held) => LeaseStateRec::Held,
        Ok(proto::LeaseState::Revoking) => LeaseStateRec::Revoking,
        _ => LeaseStateRec::Vacant,
    };
    let mode = match proto::LeaseMode::try_from(l.mode) {
        Ok(proto::LeaseMode::ReadWrite) => Some("read_write".to_string()),
        Ok(proto::LeaseMode::ReadOnly) => Some("read_only".to_string()),
        _ => None,
    };
    LeaseObs {
        region: (state != LeaseStateRec::Vacant && !l.holder_region.is_empty())
            .then(|| l.holder_region.clone()),
        token: l.token,
        revision: l.revision,
        state,
        mode,
    }
}

/// A watch event kind as recorded (`None` for kinds the history has no name for).
pub fn watch_kind(kind: i32) -> Option<WatchKind> {
    Some(match proto::EventKind::try_from(kind).ok()? {
        proto::EventKind::Snapshot => WatchKind::Snapshot,
        proto::EventKind::Granted => WatchKind::Granted,
        proto::EventKind::Revoking => WatchKind::Revoking,
        proto::EventKind::Vacated => WatchKind::Vacated,
        proto::EventKind::ModeChanged => WatchKind::ModeChanged,
        proto::EventKind::ServicePut => WatchKind::ServicePut,
        proto::EventKind::ServiceDeleted => WatchKind::ServiceDeleted,
        // Freezing does not change the lease; the workload never freezes.
        proto::EventKind::FreezeChanged => WatchKind::ModeChanged,
        proto::EventKind::Unspecified => return None,
    })
}

/// How a failed call is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It certainly had no effect.
    Fail(String),
    /// Its effect is unknown.
    Info(String),
}

fn describe(e: &ClientError) -> String {
    format!("{}: {e}", code_name(e.code()))
}

/// A read failed: reads have no effect, so answered errors and "nobody could serve it"
/// are `fail`; anything else (no answer) is `info`.
pub fn read_failure(e: &ClientError) -> Failure {
    match e {
        ClientError::Rpc { .. } | ClientError::Unavailable { .. } => Failure::Fail(describe(e)),
        _ => Failure::Info(describe(e)),
    }
}

/// A failover failed. `fail` only when it certainly did nothing: the cluster refused it
/// (`FAILED_PRECONDITION`: token mismatch, already primary, wrong state; bad arguments),
/// or the client says no node ever executed it (`ClientError::Unavailable`: every attempt
/// was refused as "not the leader" or never sent). `UNAVAILABLE` answers (no quorum,
/// leadership lost while fencing), deadlines and lost connections are `info`.
pub fn failover_failure(e: &ClientError) -> Failure {
    match e {
        ClientError::Rpc { status, .. } => match status.code() {
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange => Failure::Fail(describe(e)),
            _ => Failure::Info(describe(e)),
        },
        ClientError::Unavailable { .. }
        | ClientError::InvalidEndpoint { .. }
        | ClientError::InvalidActor { .. } => Failure::Fail(describe(e)),
        _ => Failure::Info(describe(e)),
    }
}

/// Shared state of the workload's tasks.
struct Ctx {
    history: HistoryWriter,
    cfg: WorkloadConfig,
    /// Every token seen in an answer (for `ValidateToken`).
    tokens: Mutex<BTreeSet<u64>>,
    /// The lease TTL the harness last set (ms; the TTL nemesis changes it).
    ttl_ms: Arc<AtomicU64>,
    /// Set by the nemesis while no switchover may start.
    hold_switchovers: Arc<std::sync::atomic::AtomicBool>,
}

impl Ctx {
    fn saw(&self, l: &LeaseObs) {
        if l.token > 0 {
            if let Ok(mut t) = self.tokens.lock() {
                t.insert(l.token);
            }
        }
    }

    fn complete(&self, id: u64, r: Result<OpResult, Failure>) -> bool {
        match r {
            Ok(result) => {
                self.saw(result.lease());
                self.history.record(Event::Ok { id, result });
                false
            }
            Err(Failure::Fail(error)) => {
                self.history.record(Event::Fail { id, error });
                false
            }
            Err(Failure::Info(error)) => {
                self.history.record(Event::Info { id, error });
                true
            }
        }
    }
}

/// A logical client's name: a new one after every unknown outcome.
struct Process {
    base: String,
    generation: u32,
}

impl Process {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            generation: 0,
        }
    }

    fn name(&self) -> String {
        if self.generation == 0 {
            self.base.clone()
        } else {
            format!("{}.{}", self.base, self.generation)
        }
    }

    fn after(&mut self, info: bool) {
        if info {
            self.generation += 1;
        }
    }
}

/// `GetPrimary`, recorded; returns the lease when it succeeded.
async fn get_primary(
    ctx: &Ctx,
    client: &Client,
    p: &mut Process,
    node: NodeId,
    consistency: Consistency,
    final_read: bool,
) -> Option<LeaseObs> {
    let rec = match consistency {
        Consistency::Local => RecConsistency::Local,
        _ => RecConsistency::Linearizable,
    };
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::GetPrimary {
            service: ctx.cfg.service.clone(),
            consistency: rec,
            final_read,
        },
    );
    let answer = client.primary(&ctx.cfg.service, consistency).await;
    let result = match answer {
        Ok(r) => match &r.lease {
            Some(l) => Ok(OpResult::GetPrimary {
                lease: lease_obs(l),
                node_revision: r.revision,
                served_by: Some(r.served_by),
                linearizable: r.linearizable,
            }),
            None => Err(Failure::Info("answer without a lease".into())),
        },
        Err(e) => Err(read_failure(&e)),
    };
    let lease = result.as_ref().ok().map(|r| r.lease().clone());
    let info = ctx.complete(id, result);
    p.after(info);
    lease
}

async fn validate(ctx: &Ctx, client: &Client, p: &mut Process, node: NodeId, token: u64) {
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::ValidateToken {
            service: ctx.cfg.service.clone(),
            token,
            consistency: RecConsistency::Linearizable,
        },
    );
    let answer = client.validate_token(&ctx.cfg.service, token).await;
    let result = match answer {
        Ok(r) => {
            let validity = match proto::TokenValidity::try_from(r.validity) {
                Ok(proto::TokenValidity::Current) => Some(Validity::Current),
                Ok(proto::TokenValidity::Superseded) => Some(Validity::Superseded),
                Ok(proto::TokenValidity::Unknown) => Some(Validity::Unknown),
                _ => None,
            };
            match (validity, &r.lease) {
                (Some(validity), Some(l)) => Ok(OpResult::ValidateToken {
                    validity,
                    lease: lease_obs(l),
                }),
                _ => Err(Failure::Info(format!(
                    "malformed answer: validity {} lease {:?}",
                    r.validity, r.lease
                ))),
            }
        }
        Err(e) => Err(read_failure(&e)),
    };
    let info = ctx.complete(id, result);
    p.after(info);
}

async fn failover(
    ctx: &Ctx,
    client: &Client,
    p: &mut Process,
    node: NodeId,
    to: &str,
    expected: u64,
) {
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::Failover {
            service: ctx.cfg.service.clone(),
            to_region: to.to_string(),
            expected_token: expected,
        },
    );
    let answer = client
        .failover(proto::FailoverRequest {
            service: ctx.cfg.service.clone(),
            to_region: to.to_string(),
            reason: "jepsen switchover".into(),
            expected_token: expected,
            dry_run: false,
        })
        .await;
    let result = match answer {
        Ok(r) => match &r.after {
            Some(l) => Ok(OpResult::Failover {
                lease: lease_obs(l),
                fenced_by: (!r.fenced_by.is_empty()).then(|| r.fenced_by.clone()),
            }),
            None => Err(Failure::Info("answer without the new lease".into())),
        },
        Err(e) => Err(failover_failure(&e)),
    };
    let info = ctx.complete(id, result);
    p.after(info);
}

/// Sleeps for a random time in `range`; false when `stop` turned true first.
async fn pause(
    rng: &mut SmallRng,
    range: (Duration, Duration),
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let lo = range.0.as_millis() as u64;
    let hi = (range.1.as_millis() as u64).max(lo);
    let d = Duration::from_millis(rng.random_range(lo..=hi));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => return false,
    }
    !*stop.borrow()
}

async fn reader(
    ctx: Arc<Ctx>,
    name: String,
    node: NodeId,
    client: Client,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Process::new(&name);
    while !*stop.borrow() {
        let roll = rng.random_range(0..100);
        if roll < 55 {
            get_primary(
                &ctx,
                &client,
                &mut p,
                node,
                Consistency::Linearizable,
                false,
            )
            .await;
        } else if roll < 80 {
            get_primary(&ctx, &client, &mut p, node, Consistency::Local, false).await;
        } else {
            let token = {
                let t = ctx.tokens.lock().map(|t| t.clone()).unwrap_or_default();
                let v: Vec<u64> = t.into_iter().collect();
                match v.len() {
                    0 => None,
                    n if rng.random_bool(0.5) => Some(v[n - 1]),
                    n => Some(v[rng.random_range(0..n)]),
                }
            };
            match token {
                Some(t) => validate(&ctx, &client, &mut p, node, t).await,
                None => {
                    get_primary(
                        &ctx,
                        &client,
                        &mut p,
                        node,
                        Consistency::Linearizable,
                        false,
                    )
                    .await;
                }
            }
        }
        if !pause(&mut rng, ctx.cfg.read_pause, &mut stop).await {
            break;
        }
    }
}

async fn switchover(
    ctx: Arc<Ctx>,
    node: NodeId,
    client: Client,
    failover_client: Client,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Process::new("switchover");
    loop {
        if !pause(&mut rng, ctx.cfg.switchover_pause, &mut stop).await {
            break;
        }
        if ctx.hold_switchovers.load(Ordering::Relaxed) {
            continue;
        }
        let Some(lease) = get_primary(
            &ctx,
            &client,
            &mut p,
            node,
            Consistency::Linearizable,
            false,
        )
        .await
        else {
            continue;
        };
        let others: Vec<&str> = REGIONS
            .iter()
            .copied()
            .filter(|r| Some(*r) != lease.region.as_deref())
            .collect();
        // Now and then ask for the region that already holds the lease: the cluster must
        // refuse (FAILED_PRECONDITION, recorded as fail) and change nothing.
        let to = match &lease.region {
            Some(holder) if rng.random_bool(0.05) => holder.clone(),
            _ => others[rng.random_range(0..others.len())].to_string(),
        };
        failover(&ctx, &failover_client, &mut p, node, &to, lease.token).await;
    }
}

/// The fenced resource: accepts a write only with a token not lower than the highest it
/// accepted. Each decision is recorded while holding its lock, so the history order is the
/// resource's order.
pub struct FencedResource {
    name: String,
    history: HistoryWriter,
    inner: Mutex<(u64, Vec<FenceWrite>)>,
}

impl FencedResource {
    /// An empty resource.
    pub fn new(name: &str, history: HistoryWriter) -> Self {
        Self {
            name: name.to_string(),
            history,
            inner: Mutex::new((0, Vec::new())),
        }
    }

    /// A write by `writer` with `token`, whose lease was last confirmed valid at
    /// `checked_ns`. Returns whether it was accepted.
    pub fn write(
        &self,
        writer: &str,
        region: &str,
        service: &str,
        token: u64,
        checked_ns: u64,
    ) -> bool {
        let write = self.history.next_id();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if token >= g.0 {
            g.0 = token;
            g.1.push(FenceWrite {
                write,
                token,
                writer: writer.to_string(),
            });
            self.history.record(Event::FenceAccept {
                resource: self.name.clone(),
                writer: writer.to_string(),
                region: Some(region.to_string()),
                service: service.to_string(),
                token,
                write,
                checked_ns: Some(checked_ns),
            });
            true
        } else {
            let highest = g.0;
            self.history.record(Event::FenceReject {
                resource: self.name.clone(),
                writer: writer.to_string(),
                region: Some(region.to_string()),
                service: service.to_string(),
                token,
                write,
                highest,
                checked_ns: Some(checked_ns),
            });
            false
        }
    }

    /// Records the final contents.
    pub fn finish(&self) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.history.record(Event::FenceFinal {
            resource: self.name.clone(),
            writes: g.1.clone(),
        });
    }
}

/// What an agent has recorded so far about its lease.
#[derive(Default)]
struct AgentView {
    /// Token the agent acts with (recorded `promoted`, not yet demoted or fenced).
    acting: Option<u64>,
    /// Last recorded renewal: (token, validity deadline).
    renewed: Option<(u64, Instant)>,
    /// Last token whose revocation was recorded.
    revoke_seen: Option<u64>,
    /// Last token whose demotion was acknowledged.
    acked: Option<u64>,
}

struct Agent {
    ctx: Arc<Ctx>,
    id: String,
    region: String,
    fence: Arc<FencedResource>,
    view: AgentView,
}

impl Agent {
    fn record(&self, make: impl FnOnce(String, String, String) -> Event) {
        self.ctx.history.record(make(
            self.id.clone(),
            self.region.clone(),
            self.ctx.cfg.service.clone(),
        ));
    }

    /// Records what changed in `status`, and acknowledges a revocation (after recording
    /// that the agent stopped acting).
    fn observe(&mut self, status: LeaseStatus, handle: &LeaseHandle) {
        let clock = self.ctx.history.clock();
        match status {
            LeaseStatus::Holding { token, valid_until } => {
                if self.view.acting != Some(token) {
                    if let Some(old) = self.view.acting.take() {
                        self.record(|agent, region, service| Event::SelfFenced {
                            agent,
                            region,
                            service,
                            token: old,
                        });
                    }
                    self.record(|agent, region, service| Event::Promoted {
                        agent,
                        region,
                        service,
                        token,
                    });
                    self.view.acting = Some(token);
                }
                let valid_until = valid_until.into_std();
                if self.view.renewed != Some((token, valid_until)) {
                    self.view.renewed = Some((token, valid_until));
                    // The library's rule: valid until send + ttl·(1−drift) − margin; the
                    // same arithmetic gives back the send time of the acknowledged renewal,
                    // with the TTL the answer carried (the one the validity was computed
                    // with; the configured one only before the first answer).
                    let cfg = &self.ctx.cfg;
                    let ttl_ms = handle.ttl().map_or_else(
                        || self.ctx.ttl_ms.load(Ordering::Relaxed),
                        |t| t.as_millis() as u64,
                    );
                    let span = Duration::from_millis(ttl_ms)
                        .mul_f64(1.0 - cfg.drift)
                        .saturating_sub(cfg.margin);
                    let sent = valid_until.checked_sub(span).unwrap_or(valid_until);
                    self.record(|agent, region, service| Event::Renewed {
                        agent,
                        region,
                        service,
                        token,
                        sent_ns: clock.ns_at(sent),
                        valid_until_ns: clock.ns_at(valid_until),
                        ttl_ms,
                    });
                }
            }
            LeaseStatus::Revoking { token, .. } => {
                if self.view.revoke_seen != Some(token) {
                    self.view.revoke_seen = Some(token);
                    self.record(|agent, region, service| Event::RevokeSeen {
                        agent,
                        region,
                        service,
                        token,
                    });
                }
                if self.view.acting == Some(token) {
                    self.view.acting = None;
                    self.record(|agent, region, service| Event::Demoted {
                        agent,
                        region,
                        service,
                        token,
                    });
                }
                if self.view.acked != Some(token) {
                    self.view.acked = Some(token);
                    handle.ack_demotion();
                }
            }
            LeaseStatus::Lost | LeaseStatus::NotHolder => {
                if let Some(token) = self.view.acting.take() {
                    let before_deadline = self
                        .view
                        .renewed
                        .is_some_and(|(t, v)| t == token && Instant::now() < v);
                    if self.ctx.cfg.auto_ack && before_deadline {
                        // The library acknowledged a revocation by itself.
                        self.record(|agent, region, service| Event::Demoted {
                            agent,
                            region,
                            service,
                            token,
                        });
                    } else {
                        self.record(|agent, region, service| Event::SelfFenced {
                            agent,
                            region,
                            service,
                            token,
                        });
                    }
                }
            }
            LeaseStatus::Pending => {}
        }
    }

    /// Writes to the fenced resource if the lease is valid right now.
    fn maybe_write(&mut self, rx: &watch::Receiver<LeaseStatus>, handle: &LeaseHandle) {
        // Read before the validity check: the write's `checked_ns` is never later than
        // the moment the lease was seen valid.
        let checked_ns = self.ctx.history.now_ns();
        let status = *rx.borrow();
        self.observe(status, handle);
        if let LeaseStatus::Holding { token, valid_until } = status {
            if self.view.acting == Some(token) && tokio::time::Instant::now() < valid_until {
                self.fence.write(
                    &self.id,
                    &self.region,
                    &self.ctx.cfg.service,
                    token,
                    checked_ns,
                );
            }
        }
    }

    async fn run(mut self, client: Client, mut stop: watch::Receiver<bool>) {
        let opts = LeaseOptions {
            renew_interval: None,
            drift: self.ctx.cfg.drift,
            margin: self.ctx.cfg.margin,
            auto_ack_demotion: self.ctx.cfg.auto_ack,
        };
        'sessions: while !*stop.borrow() {
            let handle =
                client.keep_alive(&self.ctx.cfg.service, &self.region, &self.id, opts.clone());
            let mut rx = handle.status();
            let mut tick = tokio::time::interval(self.ctx.cfg.fence_period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let write = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break 'sessions,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        false
                    }
                    _ = tick.tick() => true,
                };
                let status = *rx.borrow_and_update();
                self.observe(status, &handle);
                if write {
                    self.maybe_write(&rx, &handle);
                }
            }
            // The session ended (refused by the cluster): whatever it held is not renewed.
            self.observe(LeaseStatus::Lost, &handle);
            drop(handle);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break 'sessions,
            }
        }
    }
}

/// Highest revision a watcher was sent or told about (events or progress).
type Position = Arc<AtomicU64>;

async fn watcher(
    ctx: Arc<Ctx>,
    name: String,
    node: NodeId,
    client: Client,
    position: Position,
    mut stop: watch::Receiver<bool>,
) {
    let services = vec![ctx.cfg.service.clone()];
    let opts = WatchOptions {
        progress_interval: Some(Duration::from_secs(1)),
        idle_timeout: Some(Duration::from_secs(5)),
        give_up_after: None,
    };
    let h = &ctx.history;
    h.record(Event::WatchStarted {
        watcher: name.clone(),
        node,
        services: services.clone(),
        start_revision: 0,
    });
    let mut w = client.watch_with(services.clone(), 0, opts.clone());
    // The client resumes by itself on another node without telling; a response from
    // another node than the previous one shows that it did, and from where.
    let mut last_served: Option<u64> = None;
    loop {
        let before = w.last_revision();
        let item = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            item = w.next() => item,
        };
        match item {
            Some(Ok(resp)) => {
                let served = resp.served_by;
                if last_served.is_some_and(|n| n != served) && before > 0 {
                    h.record(Event::WatchResumed {
                        watcher: name.clone(),
                        node: served,
                        from_revision: before + 1,
                    });
                }
                last_served = Some(served);
                if resp.progress {
                    h.record(Event::WatchProgress {
                        watcher: name.clone(),
                        node: served,
                        revision: resp.revision,
                    });
                    position.fetch_max(resp.revision, Ordering::Relaxed);
                    continue;
                }
                let mut snapshot = false;
                for ev in &resp.events {
                    let Some(kind) = watch_kind(ev.kind) else {
                        continue;
                    };
                    let Some(lease) = ev.lease.as_ref() else {
                        continue;
                    };
                    snapshot |= kind == WatchKind::Snapshot;
                    h.record(Event::WatchEvent {
                        watcher: name.clone(),
                        node: served,
                        service: ev.service.clone(),
                        revision: ev.revision,
                        kind,
                        lease: lease_obs(lease),
                    });
                    position.fetch_max(ev.revision, Ordering::Relaxed);
                }
                if snapshot {
                    // Where the stream starts: every change up to here is in the snapshot.
                    h.record(Event::WatchProgress {
                        watcher: name.clone(),
                        node: served,
                        revision: resp.revision,
                    });
                    position.fetch_max(resp.revision, Ordering::Relaxed);
                }
            }
            other => {
                let (error, compacted) = match &other {
                    Some(Err(e)) => (describe(e), matches!(e, ClientError::Compacted { .. })),
                    _ => ("watch ended".to_string(), false),
                };
                h.record(Event::WatchError {
                    watcher: name.clone(),
                    node,
                    error,
                    compacted,
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let last = w.last_revision();
                last_served = None;
                if compacted || last == 0 {
                    h.record(Event::WatchStarted {
                        watcher: name.clone(),
                        node,
                        services: services.clone(),
                        start_revision: 0,
                    });
                    w = client.watch_with(services.clone(), 0, opts.clone());
                } else {
                    h.record(Event::WatchResumed {
                        watcher: name.clone(),
                        node,
                        from_revision: last + 1,
                    });
                    w = client.watch_with(services.clone(), last + 1, opts.clone());
                }
            }
        }
    }
}

/// The running workload.
pub struct Workload {
    ctx: Arc<Ctx>,
    fence: Arc<FencedResource>,
    stop_clients: watch::Sender<bool>,
    stop_rest: watch::Sender<bool>,
    clients: Vec<JoinHandle<()>>,
    rest: Vec<JoinHandle<()>>,
    watchers: Vec<(String, Position)>,
}

fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            timeout,
            actor: Some("jepsen".into()),
            ..ClientOptions::default()
        },
    )
    .expect("proxy addresses are valid endpoints")
}

impl Workload {
    /// Starts agents, watchers, readers and the switchover client against `cluster`.
    pub fn start(cluster: &Cluster, history: &HistoryWriter, cfg: WorkloadConfig) -> Workload {
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x776f_726b_6c6f_6164);
        let ctx = Arc::new(Ctx {
            history: history.clone(),
            cfg: cfg.clone(),
            tokens: Mutex::new(BTreeSet::new()),
            ttl_ms: cluster.ttl_handle(),
            hold_switchovers: cluster.switchover_hold(),
        });
        let fence = Arc::new(FencedResource::new("r", history.clone()));
        let (stop_clients, stop_c) = watch::channel(false);
        let (stop_rest, stop_r) = watch::channel(false);
        let mut clients = Vec::new();
        let mut rest = Vec::new();
        let mut watchers = Vec::new();

        // Agents: one or two per region, reaching the cluster through their region's links.
        for (ri, region) in REGIONS.iter().enumerate() {
            let first = cluster
                .ids()
                .into_iter()
                .find(|&i| region_index(i) == ri)
                .unwrap_or(1);
            let count = if rng.random_bool(0.5) { 2 } else { 1 };
            for k in 0..count {
                let id = format!("{region}-{}", (b'a' + k as u8) as char);
                let agent = Agent {
                    ctx: ctx.clone(),
                    id,
                    region: region.to_string(),
                    fence: fence.clone(),
                    view: AgentView::default(),
                };
                let c = client(cluster.client_endpoints(ri, first), cfg.read_timeout);
                rest.push(tokio::spawn(agent.run(c, stop_r.clone())));
            }
        }
        // Watchers and readers: one each per node, first endpoint that node.
        for n in cluster.nodes() {
            let ri = region_index(n.id);
            let name = format!("w{}", n.id);
            let pos: Position = Arc::new(AtomicU64::new(0));
            watchers.push((name.clone(), pos.clone()));
            let c = client(cluster.client_endpoints(ri, n.id), cfg.read_timeout);
            rest.push(tokio::spawn(watcher(
                ctx.clone(),
                name,
                n.id,
                c,
                pos,
                stop_r.clone(),
            )));
            let c = client(cluster.client_endpoints(ri, n.id), cfg.read_timeout);
            clients.push(tokio::spawn(reader(
                ctx.clone(),
                format!("r{}", n.id),
                n.id,
                c,
                rng.random(),
                stop_c.clone(),
            )));
        }
        // The switchover client, in the first region.
        let c = client(cluster.client_endpoints(0, 1), cfg.read_timeout);
        let fc = c.with_timeout(cfg.failover_timeout);
        clients.push(tokio::spawn(switchover(
            ctx.clone(),
            1,
            c,
            fc,
            rng.random(),
            stop_c.clone(),
        )));
        Workload {
            ctx,
            fence,
            stop_clients,
            stop_rest,
            clients,
            rest,
            watchers,
        }
    }

    /// Stops the readers and the switchover client (waits for their last operation).
    pub async fn stop_clients(&mut self) {
        let _ = self.stop_clients.send(true);
        for h in self.clients.drain(..) {
            let _ = h.await;
        }
    }

    /// The final linearizable read (`final_read: true`), retried until it succeeds or
    /// `timeout` passes; true when one succeeded.
    pub async fn final_read(&self, cluster: &Cluster, timeout: Duration) -> bool {
        let c = client(cluster.client_endpoints(0, 1), self.ctx.cfg.read_timeout);
        let mut p = Process::new("final");
        let deadline = Instant::now() + timeout;
        loop {
            if get_primary(&self.ctx, &c, &mut p, 1, Consistency::Linearizable, true)
                .await
                .is_some()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Separate attempts are separate operations of separate processes.
            p.after(true);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every watcher reached `revision`; returns the watchers that did not.
    pub async fn wait_watchers(&self, revision: u64, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<String> = self
                .watchers
                .iter()
                .filter(|(_, p)| p.load(Ordering::Relaxed) < revision)
                .map(|(n, _)| n.clone())
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops agents and watchers, then records the fenced resource's final contents.
    pub async fn stop(mut self) {
        let _ = self.stop_clients.send(true);
        let _ = self.stop_rest.send(true);
        for h in self.clients.drain(..).chain(self.rest.drain(..)) {
            let _ = h.await;
        }
        self.fence.finish();
    }
}

/// Most revisions scanned with `ValidateToken` per node for the final token list.
const MAX_TOKEN_SCAN: u64 = 200_000;

/// Every token ever granted for `service` on one node: the API has no token list, but
/// tokens are log indices and `ValidateToken` with LOCAL consistency answers from the
/// node's own state whether a token was issued (CURRENT or SUPERSEDED) or not (UNKNOWN),
/// so every index up to the node's revision is asked.
async fn token_list(addr: &str, service: &str, revision: u64) -> Result<Vec<u64>, String> {
    if revision > MAX_TOKEN_SCAN {
        return Err(format!("revision {revision} is too high to scan"));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let cc = proto::coordinator_client::CoordinatorClient::new(ch);
    let answers: Vec<Result<(u64, i32), String>> = futures::stream::iter(1..=revision)
        .map(|token| {
            let mut cc = cc.clone();
            let service = service.to_string();
            async move {
                cc.validate_token(proto::ValidateTokenRequest {
                    service,
                    token,
                    consistency: proto::Consistency::Local as i32,
                })
                .await
                .map(|r| (token, r.into_inner().validity))
                .map_err(|s| format!("token {token}: {}", s.message()))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut tokens = Vec::new();
    for a in answers {
        let (token, validity) = a?;
        match proto::TokenValidity::try_from(validity) {
            Ok(proto::TokenValidity::Current | proto::TokenValidity::Superseded) => {
                tokens.push(token)
            }
            Ok(proto::TokenValidity::Unknown) => {}
            _ => return Err(format!("token {token}: unspecified validity")),
        }
    }
    tokens.sort_unstable();
    Ok(tokens)
}

/// Records `node_final` for every node: its services and leases read locally (LOCAL
/// consistency, straight to the node), with each service's token list. Returns the
/// highest lease revision seen.
pub async fn record_node_finals(cluster: &Cluster, history: &HistoryWriter) -> u64 {
    let mut max_rev = 0;
    for n in cluster.nodes() {
        let c = cluster.direct_to(n.id);
        let event = match c.list_services(Consistency::Local).await {
            Ok(resp) => {
                let mut services = Vec::new();
                let mut error = None;
                for s in &resp.services {
                    let (Some(spec), Some(l)) = (&s.spec, &s.lease) else {
                        continue;
                    };
                    let lease = lease_obs(l);
                    max_rev = max_rev.max(lease.revision);
                    let tokens =
                        match token_list(&n.listen.to_string(), &spec.name, resp.revision).await {
                            Ok(t) => t,
                            Err(e) => {
                                error = Some(format!("token list of {}: {e}", spec.name));
                                Vec::new()
                            }
                        };
                    services.push(FinalService {
                        service: spec.name.clone(),
                        lease,
                        tokens,
                    });
                }
                Event::NodeFinal {
                    node: n.id,
                    region: n.region.clone(),
                    revision: resp.revision,
                    services,
                    error,
                }
            }
            Err(e) => Event::NodeFinal {
                node: n.id,
                region: n.region.clone(),
                revision: 0,
                services: Vec::new(),
                error: Some(describe(&e)),
            },
        };
        history.record(event);
    }
    max_rev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Clock, History};
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn leases_are_recorded_without_a_holder_when_vacant() {
        let l = proto::Lease {
            service: "s".into(),
            holder_region: "us-east".into(),
            token: 7,
            revision: 9,
            state: proto::LeaseState::Revoking as i32,
            mode: proto::LeaseMode::ReadWrite as i32,
            ..Default::default()
        };
        let o = lease_obs(&l);
        assert_eq!(o.region.as_deref(), Some("us-east"));
        assert_eq!(
            (o.token, o.revision, o.state),
            (7, 9, LeaseStateRec::Revoking)
        );
        let v = lease_obs(&proto::Lease {
            holder_region: String::new(),
            state: proto::LeaseState::Vacant as i32,
            ..l
        });
        assert_eq!(v.region, None);
        assert_eq!(v.state, LeaseStateRec::Vacant);
        assert_eq!(
            watch_kind(proto::EventKind::Granted as i32),
            Some(WatchKind::Granted)
        );
        assert_eq!(watch_kind(0), None);
    }

    #[test]
    fn failover_errors_are_fail_only_when_nothing_happened() {
        let rpc = |code| ClientError::Rpc {
            endpoint: "x".into(),
            status: tonic::Status::new(code, "m"),
        };
        assert!(matches!(
            failover_failure(&rpc(Code::FailedPrecondition)),
            Failure::Fail(_)
        ));
        assert!(matches!(
            failover_failure(&rpc(Code::Unavailable)),
            Failure::Info(_)
        ));
        assert!(matches!(
            failover_failure(&rpc(Code::DeadlineExceeded)),
            Failure::Info(_)
        ));
        assert!(matches!(
            failover_failure(&rpc(Code::Internal)),
            Failure::Info(_)
        ));
        let unknown = ClientError::OutcomeUnknown {
            op: "Failover",
            endpoint: "x".into(),
            detail: "reset".into(),
        };
        assert!(matches!(failover_failure(&unknown), Failure::Info(_)));
        let unavailable = ClientError::Unavailable {
            op: "Failover",
            waited: Duration::from_secs(1),
            last: "no leader".into(),
        };
        assert!(matches!(failover_failure(&unavailable), Failure::Fail(_)));
        assert!(matches!(read_failure(&unknown), Failure::Info(_)));
        assert!(matches!(
            read_failure(&rpc(Code::Unavailable)),
            Failure::Fail(_)
        ));
    }

    #[test]
    fn fenced_resource_keeps_its_rule_and_records_in_its_order() {
        let buf = Buf::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        let r = FencedResource::new("r", w.clone());
        assert!(r.write("a", "us", "s", 5, 1));
        assert!(r.write("b", "eu", "s", 9, 2));
        assert!(!r.write("a", "us", "s", 5, 3));
        assert!(r.write("b", "eu", "s", 9, 4));
        r.finish();
        drop(r);
        w.close().unwrap();
        let h = History::parse(&buf.0.lock().unwrap()[..]).unwrap();
        let v = crate::checkers::fence::check(&h, &crate::checkers::CheckConfig::default());
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 4);
    }

    #[test]
    fn process_names_change_after_unknown_outcomes() {
        let mut p = Process::new("r1");
        assert_eq!(p.name(), "r1");
        p.after(false);
        assert_eq!(p.name(), "r1");
        p.after(true);
        assert_eq!(p.name(), "r1.1");
    }
}
