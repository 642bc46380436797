//! The replicated model, pure and deterministic: `apply(state, index, request)`.
//!
//! No I/O, no clocks, no tokio. Time enters only as [`Request::at_ms`], stamped by the
//! leader, so every replica computes the same state from the same log.
//!
//! Invariants, checked by the tests beside this module:
//! - a lease is granted only from Vacant, or from Revoking (the leader fenced the old
//!   holder first); a Held lease is never handed to another region in one step, so there is
//!   never more than one holder;
//! - the fencing token of a grant is the log index of its entry, so tokens strictly increase
//!   per service and globally and are never reused;
//! - `revision` is the log index of the last entry that changed a service;
//! - every command leaves exactly one audit entry, chained by hash to the one before;
//! - the TTL of a held or revoking lease never decreases (a shorter TTL in a new service
//!   definition applies from the next grant), so no renewal answered under a longer TTL
//!   can outlive what the leader waits out.

mod apply;
pub mod audit;
pub mod command;
pub mod history;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod invariants;
pub mod lease;
pub mod limits;
pub mod names;
pub mod service;
pub mod workflow;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use audit::{AuditEntry, AuditHead};
pub use command::{ClusterAction, Command, Rejection, Request, Response};
pub use history::{Compacted, Event, EventKind, History};
pub use lease::{Lease, LeaseMode, LeaseState};
pub use service::{FailbackMode, HealthCheck, ServiceSpec};
pub use workflow::{
    default_plan, plan_for, Effect, OnFailure, PhaseMark, Phases, Run, RunKind, RunState, Step,
    StepKind, StepOutcome, StepSpec, StepState, Trigger,
};

/// A service with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Definition and policy.
    pub spec: ServiceSpec,
    /// The lease.
    pub lease: Lease,
    /// Every token ever granted for this service, ascending (for `ValidateToken`).
    pub tokens: Vec<u64>,
    /// Automation paused (maintenance).
    pub frozen: bool,
    /// Health as each vantage node last reported it: region -> node -> observation.
    pub observations: BTreeMap<String, BTreeMap<u64, Observation>>,
    /// Leader times of recent automatic moves (for cooldown and the flap limit).
    pub auto_moves: Vec<i64>,
    /// Why automation is paused by the flap limit, until an operator acknowledges.
    pub paused: Option<String>,
    /// The run in progress, if any (at most one per service).
    pub active_run: Option<u64>,
    /// Leader time the lease last became vacant (the detection time of an expiry).
    pub vacated_ms: Option<i64>,
    /// The region whose lease expired or was vacated last (automation avoids it).
    pub vacated_from: Option<String>,
}

/// What one vantage node last reported about one region of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The vantage node's region.
    pub vantage_region: String,
    /// Healthy from there?
    pub healthy: bool,
    /// What the probe said.
    pub detail: String,
    /// Leader time the observation was committed.
    pub at_ms: i64,
}

/// Finished runs kept for `ListWorkflows` (the audit trail keeps everything).
pub const FINISHED_RUNS_KEPT: usize = 1000;

/// How a token relates to a service's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenValidity {
    /// The current token of a held lease.
    Current,
    /// Issued, but replaced or revoked since.
    Superseded,
    /// Never issued for this service.
    Unknown,
}

/// The outcome of applying one entry: the answer, the watch events, the audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What the proposer is told.
    pub response: Response,
    /// Changes for watchers (empty when nothing changed).
    pub events: Vec<Event>,
    /// The audit entry this command left.
    pub audit: AuditEntry,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    services: BTreeMap<String, ServiceRecord>,
    revision: u64,
    history: History,
    audit: AuditHead,
    runs: BTreeMap<u64, Run>,
    /// Services deleted while held: removed once their lease is vacant. Name -> reason.
    deleting: BTreeMap<String, String>,
    /// Tokens of deleted services, ascending, so old tokens stay SUPERSEDED.
    tombstones: BTreeMap<String, Vec<u64>>,
}

impl Default for State {
    fn default() -> Self {
        Self::new(history::DEFAULT_HISTORY)
    }
}

impl State {
    /// An empty state that keeps `history_limit` revisions for watch resume.
    pub fn new(history_limit: usize) -> Self {
        Self {
            services: BTreeMap::new(),
            revision: 0,
            history: History::new(history_limit),
            audit: AuditHead::default(),
            runs: BTreeMap::new(),
            deleting: BTreeMap::new(),
            tombstones: BTreeMap::new(),
        }
    }

    /// One workflow run.
    pub fn run(&self, id: u64) -> Option<&Run> {
        self.runs.get(&id)
    }

    /// Every kept run, oldest first.
    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.values()
    }

    /// Revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.get(name)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The change history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The end of the audit chain.
    pub fn audit_head(&self) -> &AuditHead {
        &self.audit
    }

    /// How `token` relates to `service`'s lease; `None` if the service does not exist and
    /// never did (tokens of a deleted service stay SUPERSEDED).
    pub fn validate_token(&self, service: &str, token: u64) -> Option<TokenValidity> {
        let buried = self.tombstones.get(service);
        let old = if buried.is_some_and(|t| t.binary_search(&token).is_ok()) {
            TokenValidity::Superseded
        } else {
            TokenValidity::Unknown
        };
        let Some(rec) = self.services.get(service) else {
            return buried.map(|_| old);
        };
        if rec.tokens.binary_search(&token).is_err() {
            return Some(old);
        }
        if token == rec.lease.token && rec.lease.state == LeaseState::Held {
            Some(TokenValidity::Current)
        } else {
            Some(TokenValidity::Superseded)
        }
    }

    /// Applies the entry at log `index`. Deterministic: same state, index and request give
    /// the same result on every replica.
    pub fn apply(&mut self, index: u64, req: &Request) -> Applied {
        let service = req.command.service().to_string();
        let before = self.services.get(&service).cloned();
        let result = self
            .check_not_deleting(&req.command)
            .and_then(|()| self.apply_command(index, req))
            .map(|mut events| {
                events.extend(self.finish_deletion(index, req.at_ms, &service));
                events
            });
        let (response, events, outcome) = match result {
            Ok(events) => {
                let lease = self.services.get(&service).map(|r| r.lease.clone());
                let outcome = match &req.command {
                    Command::Refused { dropped: 0, .. } => "refused".to_string(),
                    Command::Refused { dropped, .. } => {
                        format!("refused ({dropped} earlier refusals not recorded: rate limit)")
                    }
                    Command::Cluster { outcome, .. } => outcome.clone(),
                    _ => "ok".to_string(),
                };
                (
                    Response::Applied {
                        revision: index,
                        lease,
                    },
                    events,
                    outcome,
                )
            }
            Err(rej) => {
                let outcome = format!("rejected: {rej}");
                (Response::Rejected(rej), Vec::new(), outcome)
            }
        };
        if !events.is_empty() {
            self.revision = index;
            self.history.push(index, events.clone());
        }
        let after = self.services.get(&service).cloned();
        let audit = self.append_audit(index, req, before.as_ref(), after.as_ref(), outcome);
        Applied {
            response,
            events,
            audit,
        }
    }

    fn append_audit(
        &mut self,
        index: u64,
        req: &Request,
        before: Option<&ServiceRecord>,
        after: Option<&ServiceRecord>,
        outcome: String,
    ) -> AuditEntry {
        let json = |r: Option<&ServiceRecord>| match r {
            Some(r) => serde_json::json!({ "lease": r.lease, "frozen": r.frozen, "spec": r.spec })
                .to_string(),
            None => "null".to_string(),
        };
        let mut entry = AuditEntry {
            seq: self.audit.next_seq,
            revision: index,
            at_ms: req.at_ms,
            actor: req.actor.clone(),
            action: req.command.action().to_string(),
            service: req.command.service().to_string(),
            reason: req.command.reason().to_string(),
            before: json(before),
            after: json(after),
            outcome,
            prev_hash: self.audit.last_hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        self.audit.next_seq += 1;
        self.audit.last_hash = entry.hash.clone();
        entry
    }

    /// Whether a service named `name` may be created or replaced: at most
    /// [`limits::MAX_SERVICES`] exist (replacing one is always allowed).
    pub fn check_room(&self, name: &str) -> Result<(), String> {
        if !self.services.contains_key(name) && self.services.len() >= limits::MAX_SERVICES {
            return Err(format!(
                "the cluster holds {} services; the limit is {} — delete unused ones first",
                self.services.len(),
                limits::MAX_SERVICES
            ));
        }
        Ok(())
    }

    /// Refuses what would hand out or redefine the lease of a service being deleted.
    fn check_not_deleting(&self, command: &Command) -> Result<(), Rejection> {
        let creates = matches!(
            command,
            Command::PutService { .. } | Command::Grant { .. } | Command::StartRun { .. }
        );
        match self.deleting.get(command.service()) {
            Some(why) if creates => Err(Rejection::WrongState(format!(
                "service {:?} is being deleted ({why}): its lease is revoking until the holder \
                 acknowledges demotion or its TTL runs out; create it again after that",
                command.service()
            ))),
            _ => Ok(()),
        }
    }

    /// Removes a service marked for deletion once its lease is vacant (its holder fenced).
    fn finish_deletion(&mut self, index: u64, at_ms: i64, name: &str) -> Vec<Event> {
        let vacant = self
            .services
            .get(name)
            .is_some_and(|r| r.lease.state == LeaseState::Vacant);
        match self.deleting.get(name) {
            Some(reason) if vacant => {
                let reason = reason.clone();
                self.remove_service(index, at_ms, name, &reason)
            }
            _ => Vec::new(),
        }
    }

    /// Removes a service whose lease is vacant, ends its run and keeps its tokens in a
    /// tombstone (so `ValidateToken` still answers SUPERSEDED for them).
    fn remove_service(&mut self, index: u64, at_ms: i64, name: &str, reason: &str) -> Vec<Event> {
        self.deleting.remove(name);
        let Some(mut rec) = self.services.remove(name) else {
            return Vec::new();
        };
        rec.lease.holder = None;
        rec.lease.state = LeaseState::Vacant;
        rec.lease.revision = index;
        if let Some(run) = rec.active_run.and_then(|id| self.runs.get_mut(&id)) {
            end_run(
                run,
                at_ms,
                RunState::Failed,
                format!("service deleted: {reason}"),
            );
        }
        let buried = self.tombstones.entry(name.to_string()).or_default();
        buried.extend(&rec.tokens);
        buried.sort_unstable();
        buried.dedup();
        if self.tombstones.len() > limits::MAX_TOMBSTONES {
            // Forget the service deleted longest ago (its newest token is the oldest).
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(_, t)| t.last().copied().unwrap_or(0))
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                self.tombstones.remove(&n);
            }
        }
        let deleted = Event {
            kind: EventKind::ServiceDeleted,
            service: rec.spec.name.clone(),
            revision: index,
            lease: rec.lease.clone(),
            reason: reason.to_string(),
            frozen: rec.frozen,
        };
        vec![deleted]
    }

    /// Why `service` is being deleted, while its lease is still being revoked.
    pub fn deleting(&self, service: &str) -> Option<&str> {
        self.deleting.get(service).map(String::as_str)
    }

    fn record(&mut self, name: &str) -> Result<&mut ServiceRecord, Rejection> {
        self.services
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownService(name.to_string()))
    }
}

/// Ends the current step with `state` and moves on (or ends the run after the last step).
fn finish_step(run: &mut Run, at_ms: i64, state: StepState, detail: &str) {
    if let Some(s) = run.steps.get_mut(run.current) {
        s.state = state;
        s.finished_ms = Some(at_ms);
        s.detail = detail.to_string();
    }
    if state == StepState::Done {
        run.current += 1;
        if run.current >= run.steps.len() {
            run.state = RunState::Succeeded;
            run.finished_ms = Some(at_ms);
        }
    }
}

/// Ends a run early: the remaining steps are skipped.
fn end_run(run: &mut Run, at_ms: i64, state: RunState, error: String) {
    for s in run.steps.iter_mut().skip(run.current + 1) {
        s.state = StepState::Skipped;
    }
    run.state = state;
    run.error = Some(error);
    run.finished_ms = Some(at_ms);
}

/// Held -> Revoking for `token`; Ok(false) when already revoking.
fn revoke_lease(rec: &mut ServiceRecord, token: u64, index: u64) -> Result<bool, Rejection> {
    check_token(&rec.spec.name, token, rec.lease.token)?;
    match rec.lease.state {
        LeaseState::Held => {
            rec.lease.state = LeaseState::Revoking;
            rec.lease.revision = index;
            Ok(true)
        }
        LeaseState::Revoking => Ok(false),
        LeaseState::Vacant => Err(Rejection::WrongState(format!(
            "service {:?} has no holder to revoke",
            rec.spec.name
        ))),
    }
}

/// Vacant or Revoking (fenced by the leader) -> Held by `region` with token `index`.
fn grant_lease(
    rec: &mut ServiceRecord,
    region: &str,
    expected_token: u64,
    index: u64,
    at_ms: i64,
) -> Result<(), Rejection> {
    check_region(&rec.spec, region)?;
    check_token(&rec.spec.name, expected_token, rec.lease.token)?;
    if rec.lease.state == LeaseState::Held {
        return Err(Rejection::WrongState(format!(
            "service {:?} is held by {:?}: revoke it before granting it elsewhere",
            rec.spec.name,
            rec.lease.holder.as_deref().unwrap_or("")
        )));
    }
    rec.lease = Lease {
        holder: Some(region.to_string()),
        token: index,
        revision: index,
        granted_at_ms: at_ms,
        ttl_ms: rec.spec.lease_ttl_ms,
        state: LeaseState::Held,
        mode: rec.lease.mode,
    };
    rec.tokens.push(index);
    Ok(())
}

fn check_token(service: &str, expected: u64, actual: u64) -> Result<(), Rejection> {
    if expected != actual {
        return Err(Rejection::TokenMismatch {
            service: service.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Whether `region` may take `spec`'s lease, with an explanation when not.
pub fn check_region(spec: &ServiceSpec, region: &str) -> Result<(), Rejection> {
    if !spec.regions.iter().any(|r| r == region) {
        return Err(Rejection::UnknownRegion {
            service: spec.name.clone(),
            region: region.to_string(),
            candidates: spec.regions.join(", "),
        });
    }
    if !spec.is_allowed(region) {
        return Err(Rejection::NotAllowed {
            service: spec.name.clone(),
            region: region.to_string(),
            allowed: spec.allowed_regions.join(", "),
        });
    }
    Ok(())
}
