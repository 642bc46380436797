//! The lease keeper: runs on every node, acts only while the node leads.
//!
//! Renewals are not Raft writes. The leader keeps, in memory and on its monotonic clock,
//! when it last accepted a renewal from each agent. It commits a change only when a lease
//! must end (expiry) — and only while it has heard from a quorum within the election
//! timeout, so a leader stuck on a slow disk or paused does not revoke leases its holders
//! still renew through a healthier path.
//!
//! On becoming leader (and after any stall of its own loop) the keeper treats every lease as
//! renewed at that moment: it never expires a lease earlier than its holder can expect,
//! and a dead holder's lease ends at most one TTL (plus drift and margin) later.
//!
//! Time rules (holder side is in `client::lease`): the holder stops acting at
//! `send_time + ttl·(1−drift) − margin`; the leader waits until
//! `last_accepted_receipt + ttl·(1+drift) + margin` on its own clock before it treats a lease
//! as gone. Receipt is after send, and the drift factors cover clocks running at different
//! rates, so the leader's deadline is never before the holder's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::{propose, ControlError};
use crate::raft::{NodeId, Raft, SharedState};
use crate::state::{audit::AUTOMATION, Command, LeaseState};

/// Timing the keeper works with.
#[derive(Debug, Clone)]
pub struct KeeperTiming {
    /// Assumed worst clock-rate difference (0.05 = 5%).
    pub drift: f64,
    /// Extra wait past a TTL.
    pub margin: Duration,
    /// Loop period.
    pub tick: Duration,
    /// Expiry needs a quorum ack more recent than this.
    pub quorum_freshness: Duration,
    /// A loop gap longer than this is a stall: every lease counts as renewed afterwards.
    pub stall: Duration,
}

/// What a renewal attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The region holds the lease with this token; the renewal was recorded.
    Renewed {
        /// Current token.
        token: u64,
    },
    /// The lease is being revoked from this region: demote.
    Revoke {
        /// Token being revoked.
        token: u64,
    },
    /// The region does not hold the lease.
    NotHolder,
    /// No such service.
    UnknownService,
}

/// How the old holder was fenced before a new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Every agent that might still consider the lease valid acknowledged demotion.
    DemotionAck,
    /// The TTL (plus drift and margin) ran out since the last renewal the leader accepted.
    TtlExpired,
    /// The lease was already vacant.
    Vacant,
}

impl FenceOutcome {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceOutcome::DemotionAck => "demotion-ack",
            FenceOutcome::TtlExpired => "ttl-expired",
            FenceOutcome::Vacant => "vacant",
        }
    }
}

#[derive(Debug, Clone)]
struct Agent {
    region: String,
    /// When its last keepalive arrived (any answer).
    seen_at: Instant,
    /// Receipt time of the last renewal answered RENEWED.
    renewed_at: Option<Instant>,
    /// Token whose revocation this agent acknowledged.
    demoted: Option<u64>,
}

#[derive(Debug)]
struct Leadership {
    /// Term in which this node leads; None when it does not.
    term: Option<u64>,
    /// When leadership began (or the last stall ended).
    since: Instant,
    /// service -> agent id -> agent.
    agents: HashMap<String, HashMap<String, Agent>>,
    /// Services with a switchover in progress (the keeper leaves their fencing to it).
    in_flight: BTreeSet<String>,
    /// service -> (token, when this leader first saw it): a fresh grant counts as renewed
    /// when it is first seen, so it is not expired against renewals of an older lease.
    first_seen: HashMap<String, (u64, Instant)>,
}

impl Leadership {
    /// When this leader first saw `token` for `service` (now, if never).
    fn baseline(&mut self, service: &str, token: u64) -> Instant {
        match self.first_seen.get(service) {
            Some((t, at)) if *t == token => *at,
            _ => {
                let now = Instant::now();
                self.first_seen.insert(service.to_string(), (token, now));
                now
            }
        }
    }
}

struct Inner {
    id: NodeId,
    raft: Raft,
    shared: SharedState,
    timing: KeeperTiming,
    lead: Mutex<Leadership>,
    /// Woken when an agent acknowledges demotion or leadership changes.
    changed: Notify,
}

/// Handle to the lease keeper.
#[derive(Clone)]
pub struct Keeper {
    inner: Arc<Inner>,
}

impl Keeper {
    /// Starts the keeper's leadership watcher and expiry loop; they stop on `shutdown`.
    pub fn start(
        id: NodeId,
        raft: Raft,
        shared: SharedState,
        timing: KeeperTiming,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let inner = Arc::new(Inner {
            id,
            raft,
            shared,
            timing,
            lead: Mutex::new(Leadership {
                term: None,
                since: Instant::now(),
                agents: HashMap::new(),
                in_flight: BTreeSet::new(),
                first_seen: HashMap::new(),
            }),
            changed: Notify::new(),
        });
        let keeper = Keeper { inner };
        tokio::spawn(keeper.clone().run(shutdown));
        keeper
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leadership> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep going.
        self.inner.lead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves at the next demotion ack or leadership change.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// Whether this node currently leads, in the keeper's view.
    pub fn is_leading(&self) -> bool {
        self.lock().term.is_some()
    }

    /// Term in which this node leads.
    pub fn leading_term(&self) -> Option<u64> {
        self.lock().term
    }

    /// Records a renewal from `agent_id` of `region`, received at `received`. Call only after
    /// a read barrier that started after `received` succeeded (so this node led then).
    /// `demoted` carries the agent's acknowledgement of a revocation.
    pub fn renew(
        &self,
        service: &str,
        region: &str,
        agent_id: &str,
        received: Instant,
        demoted: bool,
    ) -> Renewal {
        let mut lead = self.lock();
        if lead.term.is_none() {
            return Renewal::NotHolder;
        }
        // Read the lease under the keeper lock so a revocation cannot slip between this check
        // and the renewal record that fencing reads.
        let lease = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            match view.state.service(service) {
                Some(rec) => rec.lease.clone(),
                None => return Renewal::UnknownService,
            }
        };
        let agents = lead.agents.entry(service.to_string()).or_default();
        let agent = agents.entry(agent_id.to_string()).or_insert_with(|| Agent {
            region: region.to_string(),
            seen_at: received,
            renewed_at: None,
            demoted: None,
        });
        agent.region = region.to_string();
        agent.seen_at = agent.seen_at.max(received);
        if lease.holder.as_deref() != Some(region) {
            return Renewal::NotHolder;
        }
        match lease.state {
            LeaseState::Held => {
                agent.renewed_at = Some(agent.renewed_at.map_or(received, |t| t.max(received)));
                agent.demoted = None;
                Renewal::Renewed { token: lease.token }
            }
            LeaseState::Revoking => {
                if demoted {
                    agent.demoted = Some(lease.token);
                    drop(lead);
                    self.inner.changed.notify_waiters();
                }
                Renewal::Revoke { token: lease.token }
            }
            LeaseState::Vacant => Renewal::NotHolder,
        }
    }

    /// Marks a service as being switched over (the keeper will not expire it meanwhile).
    /// The mark is removed when the guard is dropped.
    pub fn begin_switchover(&self, service: &str) -> Result<SwitchoverGuard, ControlError> {
        let mut lead = self.lock();
        if !lead.in_flight.insert(service.to_string()) {
            return Err(ControlError::Timeout(format!(
                "a switchover of {service:?} is already in progress; wait for it to finish"
            )));
        }
        Ok(SwitchoverGuard {
            keeper: self.clone(),
            service: service.to_string(),
        })
    }

    /// The latest moment, on this node's clock, at which the holder of `service` (region
    /// `region`) may still consider its lease valid.
    fn holder_deadline(
        &self,
        lead: &mut Leadership,
        service: &str,
        token: u64,
        region: &str,
        ttl: Duration,
    ) -> Instant {
        let wait = ttl.mul_f64(1.0 + self.inner.timing.drift) + self.inner.timing.margin;
        let mut last = lead.since.max(lead.baseline(service, token));
        if let Some(agents) = lead.agents.get(service) {
            for a in agents.values().filter(|a| a.region == region) {
                if let Some(t) = a.renewed_at {
                    last = last.max(t);
                }
            }
        }
        last + wait
    }

    /// Whether the old holder is fenced now, and how.
    /// Whether the revoked holder of `service` (token `token`) is fenced now, and how;
    /// `None` while it may still act.
    pub fn fence_status(
        &self,
        service: &str,
        token: u64,
    ) -> Result<Option<FenceOutcome>, ControlError> {
        self.fenced(service, token)
    }

    /// Regions of `service` with an agent heard from within `within` (able to take the
    /// lease up).
    pub fn live_regions(
        &self,
        service: &str,
        within: Duration,
    ) -> std::collections::BTreeSet<String> {
        let lead = self.lock();
        let now = Instant::now();
        lead.agents
            .get(service)
            .map(|agents| {
                agents
                    .values()
                    .filter(|a| now.duration_since(a.seen_at) < within)
                    .map(|a| a.region.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an agent of `region` renewed `service`'s lease with token `token` since this
    /// leader first saw that token (the new holder took the lease up).
    pub fn holder_renewed(&self, service: &str, region: &str, token: u64) -> bool {
        let mut lead = self.lock();
        let since = lead.baseline(service, token);
        lead.agents.get(service).is_some_and(|agents| {
            agents.values().any(|a| {
                a.region == region
                    && a.demoted.is_none()
                    && a.renewed_at.is_some_and(|t| t >= since)
            })
        })
    }

    fn fenced(&self, service: &str, token: u64) -> Result<Option<FenceOutcome>, ControlError> {
        let lease = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            match view.state.service(service) {
                Some(rec) => rec.lease.clone(),
                None => return Ok(Some(FenceOutcome::Vacant)),
            }
        };
        if lease.token != token || lease.state == LeaseState::Vacant {
            return Ok(Some(FenceOutcome::Vacant));
        }
        let Some(region) = lease.holder.clone() else {
            return Ok(Some(FenceOutcome::Vacant));
        };
        let mut lead = self.lock();
        if lead.term.is_none() {
            return Err(ControlError::LeadershipLost(
                "fencing the old holder".into(),
            ));
        }
        let now = Instant::now();
        let ttl = Duration::from_millis(lease.ttl_ms);
        if now >= self.holder_deadline(&mut lead, service, token, &region, ttl) {
            return Ok(Some(FenceOutcome::TtlExpired));
        }
        if lease.state != LeaseState::Revoking {
            return Ok(None);
        }
        // Demotion acks count only once no agent unknown to this leader (one that renewed
        // with a previous leader) can still hold a valid lease.
        let wait = ttl.mul_f64(1.0 + self.inner.timing.drift) + self.inner.timing.margin;
        if now < lead.since + wait {
            return Ok(None);
        }
        let all_acked = lead.agents.get(service).is_none_or(|agents| {
            agents
                .values()
                .filter(|a| a.region == region)
                .filter(|a| a.renewed_at.is_some_and(|t| now < t + wait))
                .all(|a| a.demoted == Some(token))
        });
        Ok(all_acked.then_some(FenceOutcome::DemotionAck))
    }

    /// Waits until the revoked holder of `service` (lease token `token`) is fenced: every
    /// agent that may still act on it acknowledged demotion, or its TTL ran out.
    pub async fn wait_fenced(
        &self,
        service: &str,
        token: u64,
    ) -> Result<FenceOutcome, ControlError> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.fenced(service, token)? {
                return Ok(outcome);
            }
            let _ = tokio::time::timeout(self.inner.timing.tick, notified).await;
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.inner.raft.metrics();
        let mut tick = tokio::time::interval(self.inner.timing.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.observe_leadership();
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_tick) > self.inner.timing.stall {
                        // This loop did not run for a while (paused process, overloaded
                        // host): renewals may be queued unread. Count every lease as renewed now.
                        let mut lead = self.lock();
                        if lead.term.is_some() {
                            tracing::warn!(gap_ms = now.duration_since(last_tick).as_millis() as u64,
                                "lease keeper stalled; treating every lease as renewed now");
                            lead.since = now;
                        }
                    } else {
                        self.expire_due().await;
                    }
                    last_tick = Instant::now();
                }
            }
        }
    }

    fn observe_leadership(&self) {
        let m = self.inner.raft.metrics().borrow().clone();
        let leading =
            m.current_leader == Some(self.inner.id) && m.state == openraft::ServerState::Leader;
        let mut lead = self.lock();
        match (leading, lead.term) {
            (true, Some(t)) if t == m.current_term => {}
            (true, _) => {
                tracing::info!(
                    term = m.current_term,
                    "became leader: every held lease counts as renewed now"
                );
                lead.term = Some(m.current_term);
                lead.since = Instant::now();
                lead.agents.clear();
                lead.first_seen.clear();
            }
            (false, Some(_)) => {
                tracing::info!("no longer leader");
                lead.term = None;
                lead.agents.clear();
                lead.first_seen.clear();
                drop(lead);
                self.inner.changed.notify_waiters();
            }
            (false, None) => {}
        }
    }

    /// Whether a quorum acknowledged this leader recently enough to let it expire leases.
    fn quorum_fresh(&self) -> bool {
        let m = self.inner.raft.metrics().borrow().clone();
        m.millis_since_quorum_ack
            .is_some_and(|ms| Duration::from_millis(ms) < self.inner.timing.quorum_freshness)
    }

    async fn expire_due(&self) {
        if !self.is_leading() || !self.quorum_fresh() {
            return;
        }
        let candidates: Vec<(String, u64, String, u64, LeaseState)> = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state
                .services()
                .filter(|r| r.lease.state != LeaseState::Vacant && r.active_run.is_none())
                .filter_map(|r| {
                    r.lease.holder.clone().map(|h| {
                        (
                            r.spec.name.clone(),
                            r.lease.token,
                            h,
                            r.lease.ttl_ms,
                            r.lease.state,
                        )
                    })
                })
                .collect()
        };
        for (service, token, region, ttl_ms, state) in candidates {
            let due = {
                let mut lead = self.lock();
                if lead.in_flight.contains(&service) {
                    continue;
                }
                let ttl = Duration::from_millis(ttl_ms);
                let deadline = self.holder_deadline(&mut lead, &service, token, &region, ttl);
                Instant::now() >= deadline
            };
            let fenced_by_ack = state == LeaseState::Revoking
                && matches!(
                    self.fenced(&service, token),
                    Ok(Some(FenceOutcome::DemotionAck))
                );
            if !(due || fenced_by_ack) {
                continue;
            }
            let reason = if fenced_by_ack {
                format!("{region} acknowledged demotion; no successor was granted")
            } else {
                format!("{region} did not renew the lease within its TTL of {ttl_ms} ms")
            };
            tracing::warn!(%service, %region, token, "lease expired: {reason}");
            let cmd = Command::Expire {
                service: service.clone(),
                token,
                reason,
            };
            if let Err(e) = propose(&self.inner.raft, AUTOMATION, cmd).await {
                tracing::warn!(%service, "could not commit lease expiry: {e}");
                return;
            }
        }
    }
}

/// Marks a switchover in progress; dropping it clears the mark.
pub struct SwitchoverGuard {
    keeper: Keeper,
    service: String,
}

impl Drop for SwitchoverGuard {
    fn drop(&mut self) {
        self.keeper.lock().in_flight.remove(&self.service);
    }
}
