//! The agent's decisions, without I/O.
//!
//! [`AgentCore`] is fed what happens — lease status changes, timer ticks, hook completions,
//! shutdown — and answers with what to do: run a hook, acknowledge a demotion, publish the
//! state. The async driver only carries these out, so every rule below is unit-tested with
//! no cluster, no processes and no clock.
//!
//! The rules:
//!
//! - The service beside the agent is told to be primary (`on_promote`) when the lease is
//!   held with a validity still in the future, and told to stop (`on_demote`) as soon as the
//!   agent can no longer prove that: revoked, validity ran out without a renewal (also when
//!   the cluster is unreachable: the deadline is judged on this process's clock), the
//!   cluster says the region does not hold it, or the agent stops.
//! - Hooks never overlap and strictly alternate: promote(T), demote(T), promote(T'), ...
//!   Whatever happens while a hook runs is remembered and acted on when it ends.
//! - Once validity was seen lost while the service was (being made) primary, a demote is
//!   owed, even if the lease comes back before it can run: the service must learn that it
//!   could not count on the lease for a while.
//! - The demote hook must have *finished* before the lease's validity ends, so the agent
//!   starts it `demote_timeout` before `valid_until` (the hook is killed at its timeout, so it
//!   cannot run past validity), and never promotes when less than that is left.
//! - A promote hook still running when demotion is due is cancelled (killed with everything
//!   it started), then the demote hook runs: hooks still never overlap.
//! - A revocation is acknowledged only after the demote hook *succeeded*. After a failed or
//!   timed-out demote the agent cannot prove the service stopped, so it does not acknowledge:
//!   the coordinator then fences by the TTL, which the agent's own validity never outlives.
//! - The published role is `primary` only while the promote hook has finished and the lease
//!   is valid; it turns `replica` at once when validity is lost, before the demote hook runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::client::LeaseStatus;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `on_promote`: the service may act as primary with the token in the environment.
    Promote,
    /// `on_demote`: the service must stop acting as primary.
    Demote,
}

impl HookKind {
    /// The value of `BATON_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Promote => "promote",
            HookKind::Demote => "demote",
        }
    }
}

/// Why the agent demotes its service (`BATON_REASON`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteReason {
    /// The coordinator revoked the lease (switchover, failover, operator); the agent
    /// acknowledges after the hook.
    Revoked,
    /// Validity ran out without an acknowledged renewal (self-fencing, typically because
    /// the cluster was unreachable).
    Expired,
    /// The cluster says this region does not hold the lease.
    NotHolder,
    /// The agent is stopping and will no longer renew.
    Shutdown,
}

impl DemoteReason {
    /// The value of `BATON_REASON`.
    pub fn as_str(self) -> &'static str {
        match self {
            DemoteReason::Revoked => "revoked",
            DemoteReason::Expired => "expired",
            DemoteReason::NotHolder => "not-holder",
            DemoteReason::Shutdown => "shutdown",
        }
    }
}

/// A hook to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Promote or demote.
    pub kind: HookKind,
    /// The token the service is promoted with or demoted from.
    pub token: u64,
    /// Why, for a demote.
    pub reason: Option<DemoteReason>,
    /// The environment to add to the hook's (`BATON_*`).
    pub env: Vec<(String, String)>,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Exited with status 0.
    Succeeded,
    /// Exited with another status, or was killed by a signal (`code` is then `None`).
    Failed {
        /// The exit code.
        code: Option<i32>,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// Still running after the hook timeout; it was killed.
    TimedOut,
    /// Killed on purpose: a promote hook still running when demotion became due.
    Cancelled,
    /// Could not be started.
    SpawnFailed(String),
}

/// The role the agent publishes for the service beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The region holds a valid lease and the promote hook has run.
    Primary,
    /// Anything else.
    Replica,
}

impl Role {
    /// `"primary"` or `"replica"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What the agent publishes: a state file, the HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    /// The service.
    pub service: String,
    /// The agent's region.
    pub region: String,
    /// The agent's id.
    pub agent_id: String,
    /// Primary or replica, as decided when published; see [`AgentState::role_at`].
    pub role: Role,
    /// The fencing token while primary.
    pub token: Option<u64>,
    /// Until when the lease is certainly valid, while primary (monotonic clock).
    pub valid_until: Option<Instant>,
}

impl AgentState {
    /// A replica state.
    pub fn replica(service: &str, region: &str, agent_id: &str) -> Self {
        Self {
            service: service.to_string(),
            region: region.to_string(),
            agent_id: agent_id.to_string(),
            role: Role::Replica,
            token: None,
            valid_until: None,
        }
    }

    /// The role at `now`: a published `primary` whose validity has passed reads as
    /// `replica`, so a reader never sees a stale primary even if the agent is stuck.
    pub fn role_at(&self, now: Instant) -> Role {
        match (self.role, self.valid_until) {
            (Role::Primary, Some(v)) if now < v => Role::Primary,
            _ => Role::Replica,
        }
    }

    /// How long the lease stays certainly valid from `now` (zero unless primary).
    pub fn valid_for(&self, now: Instant) -> Duration {
        match (self.role_at(now), self.valid_until) {
            (Role::Primary, Some(v)) => v.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// The JSON document published, as of `now`:
    /// `{"service","region","role","token","valid_for_ms","agent_id"}`, plus
    /// `valid_until_unix_ms` and `updated_unix_ms` (wall clock, approximate) so a reader of
    /// a file can tell a stale document from a fresh one.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let role = self.role_at(now);
        let valid_for = self.valid_for(now);
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis);
        let primary = role == Role::Primary;
        json!({
            "service": self.service,
            "region": self.region,
            "role": role.as_str(),
            "token": if primary { self.token } else { None },
            "valid_for_ms": millis(valid_for),
            "valid_until_unix_ms": if primary { Some(wall_ms.saturating_add(millis(valid_for))) } else { None },
            "updated_unix_ms": wall_ms,
            "agent_id": self.agent_id,
        })
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this hook; report its end with [`AgentCore::on_hook_done`].
    RunHook(Hook),
    /// Kill the running hook (a promote overtaken by a demotion); report its end with
    /// [`AgentCore::on_hook_done`] as usual ([`HookOutcome::Cancelled`]).
    CancelHook,
    /// Acknowledge the demotion of `token` ([`crate::client::LeaseHandle::ack_demotion`]).
    Ack {
        /// The token whose revocation is acknowledged.
        token: u64,
    },
    /// Publish this state.
    Publish(AgentState),
}

/// The hook in flight.
#[derive(Debug, Clone, Copy)]
struct Running {
    kind: HookKind,
    token: u64,
}

/// The agent's state machine. See the module documentation for the rules.
#[derive(Debug)]
pub struct AgentCore {
    service: String,
    region: String,
    agent_id: String,
    has_promote: bool,
    has_demote: bool,
    /// The latest lease status as reported; its validity is judged against `now` each time.
    lease: LeaseStatus,
    /// The token the service was told (or is being told) to act as primary with; `None`
    /// once told to stop (or never told).
    promoted: Option<u64>,
    /// Set when the lease was seen not valid while `promoted` is set: a demote is owed.
    lapse: Option<DemoteReason>,
    running: Option<Running>,
    /// A revocation of this token seen and not acknowledged yet.
    revoke: Option<u64>,
    /// The last token acknowledged, so a revocation is acknowledged once.
    acked: Option<u64>,
    stopping: bool,
    /// How long before `valid_until` demotion starts: the demote hook's timeout.
    demote_lead: Duration,
    /// A cancel of the running hook was asked for.
    cancelling: bool,
    /// The "validity too short for the demote timeout" warning was given.
    warned_short: bool,
    /// The demote hook for this token failed or timed out: its revocation is not
    /// acknowledged (the TTL fences instead).
    unproven: Option<u64>,
    published: AgentState,
    /// The latest instant the core was given: past deadlines are not handed out again.
    now: Option<Instant>,
}

/// Upper bound on hook decisions in one step; each decision changes `promoted` so two
/// suffice, the bound only guards against a rule change making it loop.
const MAX_DECISIONS_PER_STEP: usize = 4;

impl AgentCore {
    /// A core for `service` in `region`. `has_promote` / `has_demote`: whether the hooks
    /// are configured; an absent hook is treated as run and succeeded at once.
    pub fn new(
        service: &str,
        region: &str,
        agent_id: &str,
        has_promote: bool,
        has_demote: bool,
    ) -> Self {
        Self {
            service: service.to_string(),
            region: region.to_string(),
            agent_id: agent_id.to_string(),
            has_promote,
            has_demote,
            lease: LeaseStatus::Pending,
            promoted: None,
            lapse: None,
            running: None,
            revoke: None,
            acked: None,
            stopping: false,
            demote_lead: Duration::ZERO,
            cancelling: false,
            warned_short: false,
            unproven: None,
            published: AgentState::replica(service, region, agent_id),
            now: None,
        }
    }

    /// Demotion starts `lead` before the lease's validity ends (the demote hook's timeout),
    /// so the hook has finished by then; 0 by default.
    pub fn with_demote_lead(mut self, lead: Duration) -> Self {
        self.demote_lead = lead;
        self
    }

    /// The instant from which the service must be demoting, for a lease valid until
    /// `valid_until`.
    fn act_until(&self, valid_until: Instant) -> Instant {
        valid_until
            .checked_sub(self.demote_lead)
            .unwrap_or(valid_until)
    }

    /// The last state published (a replica state before anything happened).
    pub fn published(&self) -> &AgentState {
        &self.published
    }

    /// The token the service is (being) promoted with.
    pub fn promoted(&self) -> Option<u64> {
        self.promoted
    }

    /// Whether no hook is running.
    pub fn is_idle(&self) -> bool {
        self.running.is_none()
    }

    /// When to call [`AgentCore::on_tick`]: the validity deadline of a held lease, until
    /// it has passed. The lease session has its own timer; this one makes the agent fence
    /// itself on its own clock even if a status change were late.
    pub fn deadline(&self) -> Option<Instant> {
        match self.lease {
            LeaseStatus::Holding { valid_until, .. }
                if self.now.is_none_or(|n| self.act_until(valid_until) > n) =>
            {
                Some(self.act_until(valid_until))
            }
            _ => None,
        }
    }

    /// The lease session reported `status` at `now`.
    pub fn on_status(&mut self, status: LeaseStatus, now: Instant) -> Vec<Action> {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
        if let LeaseStatus::Revoking { token, .. } = status {
            if self.acked != Some(token) {
                self.revoke = Some(token);
            }
        }
        if let LeaseStatus::Holding { token, valid_until } = status {
            if now < valid_until && self.act_until(valid_until) <= now && !self.warned_short {
                self.warned_short = true;
                warn!(
                    service = %self.service,
                    token,
                    valid_ms = millis(valid_until.saturating_duration_since(now)),
                    demote_timeout_ms = millis(self.demote_lead),
                    "the lease's validity after a renewal is shorter than the demote timeout: \
                     the agent cannot promote; lower --demote-timeout (a quarter of the lease \
                     TTL at most) or raise the service's TTL"
                );
            }
        }
        // Kept as reported; validity is always judged against `now`, so a status read
        // after its validity passed never makes the agent promote.
        self.lease = status;
        self.note_lapse(now);
        self.step(now)
    }

    /// The deadline from [`AgentCore::deadline`] (may have) passed.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
        self.note_lapse(now);
        self.step(now)
    }

    /// The running hook ended.
    pub fn on_hook_done(&mut self, outcome: &HookOutcome, now: Instant) -> Vec<Action> {
        let Some(done) = self.running.take() else {
            return Vec::new();
        };
        self.cancelling = false;
        if done.kind == HookKind::Demote && outcome != &HookOutcome::Succeeded {
            // Loud: the service may still act as primary. An acknowledgement would let the
            // coordinator grant the lease elsewhere at once, so none is sent for this token:
            // the coordinator waits out the TTL instead.
            self.unproven = Some(done.token);
            let what = if outcome == &HookOutcome::TimedOut {
                "TIMED OUT"
            } else {
                "FAILED"
            };
            error!(
                service = %self.service,
                token = done.token,
                ?outcome,
                "on_demote {what}: the agent cannot prove the service stopped acting as \
                 primary; the demotion is NOT acknowledged, so the coordinator fences this \
                 region by the lease TTL"
            );
        }
        if done.kind == HookKind::Promote && outcome == &HookOutcome::Cancelled {
            warn!(
                service = %self.service,
                token = done.token,
                "on_promote was still running when demotion became due: killed it; demoting"
            );
        } else if done.kind == HookKind::Promote && outcome != &HookOutcome::Succeeded {
            // The lease is held whatever the hook did: hiding it would not free it for
            // another region, it would only leave the region primary with nobody told.
            error!(
                service = %self.service,
                token = done.token,
                ?outcome,
                "on_promote did not succeed; the region still holds the lease and the agent \
                 publishes it as primary"
            );
        }
        self.step(now)
    }

    /// The agent is stopping: demote the service if it is primary (`BATON_REASON=shutdown`)
    /// and publish `replica`. Wait until [`AgentCore::is_idle`] before closing the session.
    pub fn on_shutdown(&mut self, now: Instant) -> Vec<Action> {
        self.stopping = true;
        self.step(now)
    }

    /// Whether the lease is valid now for `token`, with time left to demote.
    fn valid_for(&self, token: u64, now: Instant) -> bool {
        matches!(self.lease, LeaseStatus::Holding { token: t, valid_until } if t == token && now < self.act_until(valid_until))
    }

    /// Remembers that a demote is owed when the promoted token is not valid any more.
    fn note_lapse(&mut self, now: Instant) {
        let Some(token) = self.promoted else {
            return;
        };
        if self.lapse.is_some() || self.valid_for(token, now) {
            return;
        }
        let reason = if self.revoke == Some(token) {
            DemoteReason::Revoked
        } else {
            match self.lease {
                LeaseStatus::Revoking { .. } => DemoteReason::Revoked,
                LeaseStatus::NotHolder => DemoteReason::NotHolder,
                // Lost (validity ran out, or the session ended), or another token: either
                // way the validity of this token could no longer be proved.
                _ => DemoteReason::Expired,
            }
        };
        if reason == DemoteReason::Expired {
            warn!(service = %self.service, token, "lease validity can no longer be proved: self-fencing");
        }
        self.lapse = Some(reason);
    }

    /// The token the service should be primary with now.
    fn desired(&self, now: Instant) -> Option<u64> {
        if self.stopping {
            return None;
        }
        match self.lease {
            LeaseStatus::Holding { token, valid_until } if now < self.act_until(valid_until) => {
                Some(token)
            }
            _ => None,
        }
    }

    /// The next hook to run, if any, given nothing runs.
    fn next_hook(&self, now: Instant) -> Option<(HookKind, u64, Option<DemoteReason>)> {
        let desired = self.desired(now);
        match self.promoted {
            None => desired.map(|t| (HookKind::Promote, t, None)),
            Some(current) if self.lapse.is_some() || desired != Some(current) => {
                let reason = self.lapse.unwrap_or(if self.stopping {
                    DemoteReason::Shutdown
                } else {
                    DemoteReason::Expired
                });
                Some((HookKind::Demote, current, Some(reason)))
            }
            Some(_) => None,
        }
    }

    /// The `BATON_*` environment of a hook.
    fn env(
        &self,
        kind: HookKind,
        token: u64,
        reason: Option<DemoteReason>,
        now: Instant,
    ) -> Vec<(String, String)> {
        // Promote: how long the service may act as primary. Demote after a revocation: by
        // when the lease ends at the latest. Otherwise the lease is already gone.
        let valid_until = match (kind, self.lease) {
            (
                HookKind::Promote,
                LeaseStatus::Holding {
                    token: t,
                    valid_until,
                },
            )
            | (
                HookKind::Demote,
                LeaseStatus::Revoking {
                    token: t,
                    valid_until,
                },
            ) if t == token => Some(valid_until),
            _ => None,
        };
        let valid_ms = valid_until.map_or(0, |v| millis(v.saturating_duration_since(now)));
        let mut env = vec![
            ("BATON_SERVICE".to_string(), self.service.clone()),
            ("BATON_REGION".to_string(), self.region.clone()),
            ("BATON_AGENT_ID".to_string(), self.agent_id.clone()),
            ("BATON_TOKEN".to_string(), token.to_string()),
            ("BATON_VALID_UNTIL_MS".to_string(), valid_ms.to_string()),
            ("BATON_EVENT".to_string(), kind.as_str().to_string()),
        ];
        if let Some(r) = reason {
            env.push(("BATON_REASON".to_string(), r.as_str().to_string()));
        }
        env
    }

    /// The state to publish now.
    fn current_state(&self, now: Instant) -> AgentState {
        let promoting = self.running.is_some_and(|r| r.kind == HookKind::Promote);
        match (self.promoted, self.lease) {
            (Some(p), LeaseStatus::Holding { token, valid_until })
                if p == token
                    && now < self.act_until(valid_until)
                    && !promoting
                    && !self.stopping
                    && self.lapse.is_none() =>
            {
                AgentState {
                    role: Role::Primary,
                    token: Some(token),
                    valid_until: Some(valid_until),
                    ..AgentState::replica(&self.service, &self.region, &self.agent_id)
                }
            }
            _ => AgentState::replica(&self.service, &self.region, &self.agent_id),
        }
    }

    /// Decides what to do after any input.
    fn step(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(r) = self.running {
            // A promote overtaken by a demotion: kill it, then demote when it has ended.
            if r.kind == HookKind::Promote
                && !self.cancelling
                && (self.lapse.is_some() || self.desired(now) != Some(r.token))
            {
                self.cancelling = true;
                actions.push(Action::CancelHook);
            }
        }
        for _ in 0..MAX_DECISIONS_PER_STEP {
            if self.running.is_some() {
                break;
            }
            let Some((kind, token, reason)) = self.next_hook(now) else {
                break;
            };
            let env = self.env(kind, token, reason, now);
            let configured = match kind {
                HookKind::Promote => {
                    self.promoted = Some(token);
                    self.unproven = None;
                    self.has_promote
                }
                HookKind::Demote => {
                    self.promoted = None;
                    self.has_demote
                }
            };
            self.lapse = None;
            if configured {
                self.running = Some(Running { kind, token });
                actions.push(Action::RunHook(Hook {
                    kind,
                    token,
                    reason,
                    env,
                }));
            }
        }
        if self.running.is_none() {
            if let Some(token) = self.revoke {
                match self.lease {
                    // Only while the session still speaks of this token: its ack is not
                    // token-specific and must never demote a newer grant.
                    LeaseStatus::Revoking { token: t, .. } if t == token => {
                        if self.unproven == Some(token) {
                            // Its demote hook failed: the TTL fences instead.
                            self.revoke = None;
                        } else if self.promoted != Some(token) {
                            actions.push(Action::Ack { token });
                            self.acked = Some(token);
                            self.revoke = None;
                        }
                    }
                    // Lost (validity ran out: the coordinator's TTL ends a drift margin
                    // later anyway, and "Lost" does not say which token the session was
                    // on), a new grant, or "not the holder": the revocation is moot.
                    _ => self.revoke = None,
                }
            }
        }
        let state = self.current_state(now);
        if state != self.published {
            self.published = state.clone();
            // First, so a demotion is visible (load balancer, service) before its hook runs.
            actions.insert(0, Action::Publish(state));
        }
        actions
    }
}

#[cfg(test)]
mod tests;
