//! The lease keeper: runs on every node, acts only while the node leads.
//!
//! Renewals are not Raft writes. The leader keeps, in memory and on its monotonic clock,
//! when it last accepted a renewal from each agent. It commits a change only when a lease
//! must end (expiry) — and only after a quorum confirmed its leadership in a round that
//! began after the lease looked due, so a leader stuck on a slow disk, paused or cut off does
//! not revoke leases its holders still renew through a healthier path.
//!
//! On becoming leader (and after any stall of its own loop or of Raft) the keeper treats
//! every lease as renewed at that moment: it never expires a lease earlier than its holder
//! can expect, and a dead holder's lease ends at most one TTL (plus drift and margin) later.
//!
//! Expiry is decided in two steps: a lease that looks due is confirmed with a fresh
//! leadership round (so a stalled Raft core, e.g. on a slow disk, cannot make renewals queued
//! behind it look missing), then, under the keeper lock, the decision is re-checked and
//! recorded; from that moment renewals of the token are refused (answered REVOKE), so no
//! renewal can be answered RENEWED between the decision and the committed `Expire`.
//!
//! The decisions live in [`KeeperCore`] (sans-IO, tested with made-up instants in
//! `keeper/tests.rs`); this file only feeds it and commits what it decides.
//!
//! Time rules (holder side is in `client::lease`): the holder stops acting at
//! `send_time + ttl·(1−drift) − margin`; the leader waits until
//! `last_accepted_receipt + ttl·(1+drift) + margin` on its own clock before it treats a lease
//! as gone. Receipt is after send, and the drift factors cover clocks running at different
//! rates, so the leader's deadline is never before the holder's.

mod core;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

pub use self::core::{
    Due, FenceOutcome, KeeperCore, KeeperTiming, NotLeading, Renewal, RenewalMsg,
    MAX_AGENTS_PER_SERVICE,
};
use super::{propose, ControlError, ReadBarrier};
use crate::raft::{NodeId, Raft, SharedState};
use crate::state::{audit::AUTOMATION, Command, Lease};

struct Inner {
    id: NodeId,
    raft: Raft,
    shared: SharedState,
    reads: ReadBarrier,
    core: Mutex<KeeperCore>,
    /// A background confirmation round is running.
    confirming: std::sync::atomic::AtomicBool,
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
        reads: ReadBarrier,
        timing: KeeperTiming,
        shutdown: watch::Receiver<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let inner = Arc::new(Inner {
            id,
            raft,
            shared,
            reads,
            core: Mutex::new(KeeperCore::new(timing, Instant::now())),
            confirming: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
        });
        let keeper = Keeper { inner };
        tasks.spawn(keeper.clone().run(shutdown));
        keeper
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeeperCore> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep going.
        self.inner.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease of `service` as this node's state holds it.
    fn lease(&self, service: &str) -> Option<(Lease, bool)> {
        let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
        view.state
            .service(service)
            .map(|r| (r.lease.clone(), r.active_run.is_some()))
    }

    /// Resolves at the next demotion ack or leadership change.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// Whether this node currently leads, in the keeper's view.
    pub fn is_leading(&self) -> bool {
        self.lock().term().is_some()
    }

    /// Per service, time since this leader last accepted a renewal (empty unless leading).
    pub fn renewal_ages(&self) -> Vec<(String, std::time::Duration)> {
        self.lock().renewal_ages(Instant::now())
    }

    /// Term in which this node leads.
    pub fn leading_term(&self) -> Option<u64> {
        self.lock().term()
    }

    /// Records a renewal. Call only after a read barrier that started after
    /// `msg.received` succeeded (so this node led then). Returns the answer and the lease it
    /// was judged against: the reply must carry that lease (its TTL is what was promised).
    pub fn renew(&self, msg: &RenewalMsg<'_>) -> (Renewal, Option<Lease>) {
        let mut core = self.lock();
        // Read the lease under the keeper lock so an expiry decision cannot slip between
        // this check and the renewal record that fencing reads.
        let lease = self.lease(msg.service).map(|(l, _)| l);
        let acked_before = msg.demoted;
        let renewal = core.renew(msg, lease.as_ref(), Instant::now());
        drop(core);
        if acked_before && matches!(renewal, Renewal::Revoke { .. }) {
            self.inner.changed.notify_waiters();
        }
        (renewal, lease)
    }

    /// Marks a service as being switched over (the keeper will not expire it meanwhile).
    /// The mark is removed when the guard is dropped.
    pub fn begin_switchover(&self, service: &str) -> Result<SwitchoverGuard, ControlError> {
        if !self.lock().begin_switchover(service) {
            return Err(ControlError::Timeout(format!(
                "a switchover of {service:?} is already in progress; wait for it to finish"
            )));
        }
        Ok(SwitchoverGuard {
            keeper: self.clone(),
            service: service.to_string(),
        })
    }

    /// Whether the revoked holder of `service` (token `token`) is fenced now, and how;
    /// `None` while it may still act.
    pub fn fence_status(
        &self,
        service: &str,
        token: u64,
    ) -> Result<Option<FenceOutcome>, ControlError> {
        let mut core = self.lock();
        let lease = self.lease(service).map(|(l, _)| l);
        core.fence_status(service, token, lease.as_ref(), Instant::now())
            .map_err(|NotLeading| ControlError::LeadershipLost("fencing the old holder".into()))
    }

    /// Regions of `service` with an agent heard from within `within` (able to take the
    /// lease up).
    pub fn live_regions(
        &self,
        service: &str,
        within: Duration,
    ) -> std::collections::BTreeSet<String> {
        self.lock().live_regions(service, within, Instant::now())
    }

    /// Whether an agent of `region` renewed `service`'s lease with token `token` since this
    /// leader first saw that token (the new holder took the lease up).
    pub fn holder_renewed(&self, service: &str, region: &str, token: u64) -> bool {
        self.lock()
            .holder_renewed(service, region, token, Instant::now())
    }

    /// Waits until the revoked holder of `service` (lease token `token`) is fenced: every
    /// agent that may still act on it acknowledged demotion, or its TTL ran out.
    pub async fn wait_fenced(
        &self,
        service: &str,
        token: u64,
    ) -> Result<FenceOutcome, ControlError> {
        let tick = self.lock().timing().tick;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.fence_status(service, token)? {
                return Ok(outcome);
            }
            let _ = tokio::time::timeout(tick, notified).await;
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.inner.raft.metrics();
        let (tick_every, stall) = {
            let core = self.lock();
            (core.timing().tick, core.timing().stall)
        };
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        let mut last_prune = Instant::now();
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
                    if now.duration_since(last_tick) > stall {
                        // This loop did not run for a while (paused process, overloaded
                        // host): renewals may be queued unread. Count every lease as renewed now.
                        if self.is_leading() {
                            tracing::warn!(gap_ms = now.duration_since(last_tick).as_millis() as u64,
                                "lease keeper stalled; treating every lease as renewed now");
                        }
                        self.lock().on_stall(now);
                    } else {
                        self.refresh_confirmation(tick_every);
                        self.expire_due(stall).await;
                    }
                    if now.duration_since(last_prune) > Duration::from_secs(5) {
                        self.lock().prune(now);
                        last_prune = now;
                    }
                    last_tick = Instant::now();
                }
            }
        }
    }

    /// While leading, keeps a quorum confirmation at most a few ticks old, so LOCAL reads on
    /// the leader report an honest staleness (and a cut-off leader's grows) even when no
    /// linearizable read or renewal ran a round lately.
    fn refresh_confirmation(&self, tick: Duration) {
        if !self.is_leading() {
            return;
        }
        let fresh = self
            .inner
            .reads
            .confirmed_age()
            .is_some_and(|age| age < tick * 4);
        if fresh
            || self
                .inner
                .confirming
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let keeper = self.clone();
        tokio::spawn(async move {
            let _ = keeper.inner.reads.linearize().await;
            keeper
                .inner
                .confirming
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    fn observe_leadership(&self) {
        let m = self.inner.raft.metrics().borrow().clone();
        let leading = m.current_leader == Some(self.inner.id)
            && m.state == crate::raft::typ::ServerState::Leader;
        let term = leading.then_some(m.current_term);
        let changed = self.lock().on_leadership(term, Instant::now());
        if changed {
            match term {
                Some(t) => tracing::info!(
                    term = t,
                    "became leader: every held lease counts as renewed now"
                ),
                None => tracing::info!("no longer leader"),
            }
            self.inner.changed.notify_waiters();
        }
    }

    /// Services whose lease looks due now (a first look; [`Keeper::expire_due`] confirms).
    fn looks_due(&self) -> Vec<String> {
        // Lock order everywhere: the keeper lock, then the state's read lock. Copy the leases
        // out first rather than hold the state lock while taking the keeper's.
        let leases: Vec<(String, Lease, bool)> = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state
                .services()
                .filter(|r| r.lease.state != crate::state::LeaseState::Vacant)
                .map(|r| (r.spec.name.clone(), r.lease.clone(), r.active_run.is_some()))
                .collect()
        };
        let now = Instant::now();
        let mut core = self.lock();
        leases
            .into_iter()
            .filter(|(name, lease, run)| core.due(name, lease, *run, now).is_some())
            .map(|(name, _, _)| name)
            .collect()
    }

    async fn expire_due(&self, stall: Duration) {
        if !self.is_leading() {
            return;
        }
        let due = self.looks_due();
        if due.is_empty() {
            return;
        }
        // Confirm leadership with a quorum round that starts now. A round that takes longer
        // than a stall means Raft itself was stuck (a slow fsync, an overloaded host):
        // renewals were queued behind it unanswered, so count every lease as renewed instead.
        let started = Instant::now();
        if let Err(e) = self.inner.reads.linearize().await {
            tracing::debug!("not expiring leases: leadership not confirmed: {e}");
            return;
        }
        let now = Instant::now();
        if now.duration_since(started) > stall {
            tracing::warn!(
                round_ms = now.duration_since(started).as_millis() as u64,
                "leadership confirmation was slow; treating every lease as renewed now"
            );
            self.lock().on_stall(now);
            return;
        }
        for service in due {
            let decided = {
                let mut core = self.lock();
                let Some((lease, run_active)) = self.lease(&service) else {
                    continue;
                };
                core.decide_expiry(&service, &lease, run_active, Instant::now())
                    .map(|why| (why, lease))
            };
            let Some((why, lease)) = decided else {
                continue;
            };
            let region = lease.holder.clone().unwrap_or_default();
            let reason = match why {
                Due::Acknowledged => {
                    format!("{region} acknowledged demotion; no successor was granted")
                }
                Due::Expired => format!(
                    "{region} did not renew the lease within its TTL of {} ms",
                    lease.ttl_ms
                ),
            };
            tracing::warn!(%service, %region, token = lease.token, "lease expired: {reason}");
            let cmd = Command::Expire {
                service: service.clone(),
                token: lease.token,
                reason,
            };
            // On failure the decision stands (renewals of the token stay refused) and the
            // next tick proposes the expiry again.
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
        self.keeper.lock().end_switchover(&self.service);
    }
}
