//! Operator moves of a lease (switchover, failback) and `baton plan`: everything decided about
//! them is decided here — the safety prechecks and their wording, the plan text, whether a move
//! may start, and the wait for the run the controller carries out. The API handlers only
//! translate requests and these results to and from the wire.
//!
//! [`precheck`] and [`plan_view`] are pure (a service record and the voters in, a verdict
//! out) and unit-tested below; [`Moves`] adds the read barrier, the proposal and the wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{policy, propose, wall_clock_ms, ControlError, Keeper, ReadBarrier};
use crate::raft::{voters, Changes, NodeId, Raft, SharedState};
use crate::state::{
    self, plan_for, Command, FailbackMode, Lease, LeaseState, Rejection, Response, Run, RunKind,
    RunState, ServiceRecord, StepKind, StepSpec, Trigger,
};

/// An operator's move of a service's lease.
#[derive(Debug, Clone, Copy)]
pub struct MoveRequest<'a> {
    /// The service.
    pub service: &'a str,
    /// The target region; `None` moves to the first allowed (preferred) region.
    pub to: Option<&'a str>,
    /// Why, for the audit trail.
    pub reason: &'a str,
    /// The token the operator saw (0 = not checked).
    pub expected_token: u64,
    /// Only check and plan.
    pub dry_run: bool,
    /// Switchover or failback.
    pub kind: RunKind,
}

/// One named safety check of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`target-allowed`, `expected-token`, ...).
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What it found.
    pub detail: String,
}

/// What the prechecks of a move found, before anything was proposed.
#[derive(Debug, Clone)]
pub struct Precheck {
    /// The target region.
    pub to: String,
    /// The lease as it was.
    pub before: Lease,
    /// Every check, passed or not (a dry run reports them all).
    pub checks: Vec<Check>,
    /// Every candidate region with its eligibility.
    pub candidates: Vec<policy::Candidate>,
    /// The steps the run will take.
    pub plan: Vec<StepSpec>,
    /// Why the move must not start, if it must not.
    pub refusal: Option<MoveError>,
}

/// Why a move was refused or did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MoveError {
    /// No leader, no quorum, the write timed out, ...
    #[error(transparent)]
    Control(#[from] ControlError),
    /// No such service.
    #[error("service {0:?} does not exist; `baton services` lists them")]
    NoSuchService(String),
    /// The service's failback policy is `never`.
    #[error("failback is `never` for {0:?}: use `baton failover` to move it explicitly")]
    FailbackNever(String),
    /// No region of the service is allowed.
    #[error("the service has no allowed region")]
    NoAllowedRegion,
    /// The state machine's own rule (unknown or disallowed region, token mismatch, ...).
    #[error("{0}")]
    Rejected(Rejection),
    /// The target already holds the lease.
    #[error("{to} is already primary for {service} (token {token}); nothing to do")]
    AlreadyPrimary {
        /// The service.
        service: String,
        /// The target region.
        to: String,
        /// Its token.
        token: u64,
    },
    /// The run outlived the call's wait; it goes on.
    #[error("run {0} has not finished yet; follow it with `baton workflow {0}`")]
    Unfinished(u64),
    /// This node lost leadership while waiting; the new leader resumes the run.
    #[error(
        "leadership changed during run {0}; the new leader resumes it — follow it with `baton workflow {0}`"
    )]
    LeadershipChanged(u64),
    /// The run ended without moving the lease.
    #[error("run {run} {state} at step {step}: {error}")]
    RunFailed {
        /// The run.
        run: u64,
        /// How it ended.
        state: &'static str,
        /// The step it ended at.
        step: &'static str,
        /// The run's error, or "no detail".
        error: String,
    },
}

/// A move that was carried out (or, for a dry run, only checked).
#[derive(Debug, Clone)]
pub struct MoveOutcome {
    /// The prechecks (checks, candidates, the lease before).
    pub precheck: Precheck,
    /// The lease afterwards (`None` for a dry run).
    pub after: Option<Lease>,
    /// The run (0 for a dry run).
    pub run_id: u64,
    /// How the old holder was fenced ("none" when nothing was).
    pub fenced_by: String,
    /// How long fencing took.
    pub fence_ms: u64,
}

/// Checks a move of `rec` as `req` asks, with the current `voters`, on leader `leader`.
/// Errors are refusals that come before any check (a dry run gets them too); refusals a dry
/// run only reports are in [`Precheck::refusal`].
pub fn precheck(
    rec: &ServiceRecord,
    req: &MoveRequest<'_>,
    voters: &BTreeMap<NodeId, String>,
    leader: NodeId,
) -> Result<Precheck, MoveError> {
    let (spec, before) = (&rec.spec, rec.lease.clone());
    if req.kind == RunKind::Failback && spec.failback == FailbackMode::Never {
        return Err(MoveError::FailbackNever(req.service.to_string()));
    }
    let to = match req.to {
        Some(t) => t.to_string(),
        None => spec
            .regions
            .iter()
            .find(|r| spec.is_allowed(r))
            .cloned()
            .ok_or(MoveError::NoAllowedRegion)?,
    };
    let mut checks = Vec::new();
    let mut check = |name: &'static str, passed: bool, detail: String| {
        checks.push(Check {
            name,
            passed,
            detail,
        });
    };
    match state::check_region(spec, &to) {
        Ok(()) => check(
            "target-allowed",
            true,
            format!("{to} is an allowed candidate"),
        ),
        Err(e) if req.dry_run => check("target-allowed", false, e.to_string()),
        Err(e) => return Err(MoveError::Rejected(e)),
    }
    let health = policy::region_health(rec, &to, voters);
    check(
        "target-healthy",
        health.health != policy::Health::Down,
        format!("{to}: {}", health.explanation),
    );
    let already = before.primary() == Some(to.as_str());
    check(
        "target-not-primary",
        !already,
        if already {
            format!("{to} already holds the lease (token {})", before.token)
        } else {
            format!(
                "current holder: {}",
                before.holder.as_deref().unwrap_or("none")
            )
        },
    );
    let expected = req.expected_token;
    let token_ok = expected == 0 || expected == before.token;
    check(
        "expected-token",
        token_ok,
        if expected == 0 {
            "not checked (no expected token given)".to_string()
        } else if token_ok {
            format!("current token is {}", before.token)
        } else {
            format!("current token is {}, not {expected}", before.token)
        },
    );
    check(
        "no-run-in-progress",
        rec.active_run.is_none(),
        match rec.active_run {
            Some(r) => format!("run {r} is in progress"),
            None => "no run in progress".into(),
        },
    );
    check(
        "quorum",
        true,
        format!("leader {leader} confirmed with a quorum"),
    );
    let fence_plan = match before.state {
        LeaseState::Held => format!(
            "revoke token {} from {}; wait for its agents' demotion acks or its TTL ({} ms + drift + margin)",
            before.token,
            before.holder.as_deref().unwrap_or(""),
            before.ttl_ms
        ),
        LeaseState::Revoking => format!(
            "token {} is already being revoked; wait for acks or the TTL",
            before.token
        ),
        LeaseState::Vacant => "lease is vacant: nothing to fence".to_string(),
    };
    let plan = plan_for(spec, req.kind);
    let steps: Vec<&str> = plan.iter().map(|s| s.kind.name()).collect();
    check(
        "plan",
        true,
        format!(
            "{} run: {}; {fence_plan}; then grant {to} a new token",
            req.kind.as_str(),
            steps.join(" -> ")
        ),
    );
    // A run already in progress is refused by the state machine itself (atomically).
    let refusal = if already {
        Some(MoveError::AlreadyPrimary {
            service: req.service.to_string(),
            to: to.clone(),
            token: before.token,
        })
    } else if !token_ok {
        Some(MoveError::Rejected(Rejection::TokenMismatch {
            service: req.service.to_string(),
            expected,
            actual: before.token,
        }))
    } else {
        None
    };
    Ok(Precheck {
        candidates: policy::candidates(rec, voters),
        to,
        before,
        checks,
        plan,
        refusal,
    })
}

/// What `baton plan` shows for a service.
#[derive(Debug, Clone)]
pub struct PlanView {
    /// Every candidate region with its eligibility.
    pub candidates: Vec<policy::Candidate>,
    /// What keeps automation from acting now.
    pub blockers: Vec<String>,
    /// The steps of a failover run.
    pub failover_steps: Vec<&'static str>,
    /// What automation would do now, and why.
    pub next_action: String,
}

/// What automation would do for `rec` now: the policy's decision in words, with the
/// candidates and blockers behind it.
pub fn plan_view(
    rec: &ServiceRecord,
    voters: &BTreeMap<NodeId, String>,
    live: &BTreeSet<String>,
    now_ms: i64,
) -> PlanView {
    let next_action = match policy::decide(rec, voters, live, now_ms) {
        policy::Decision::Wait(why) => format!("nothing: {why}"),
        policy::Decision::Start {
            kind, to, reason, ..
        } => format!("start a {} run to {to}: {reason}", kind.as_str()),
    };
    PlanView {
        candidates: policy::candidates(rec, voters),
        blockers: policy::blockers(rec, now_ms),
        failover_steps: plan_for(&rec.spec, RunKind::Failover)
            .iter()
            .map(|s| s.kind.name())
            .collect(),
        next_action,
    }
}

/// How a finished run went, for the caller: its fencing, or why it failed.
fn outcome_of(run: &Run) -> Result<(String, u64), MoveError> {
    if run.state != RunState::Succeeded {
        return Err(MoveError::RunFailed {
            run: run.id,
            state: run.state.as_str(),
            step: run
                .steps
                .get(run.current)
                .map_or("?", |s| s.spec.kind.name()),
            error: run.error.clone().unwrap_or_else(|| "no detail".into()),
        });
    }
    let fence = run.steps.iter().find(|s| s.spec.kind == StepKind::Fence);
    let fenced_by = fence.map_or("none".to_string(), |s| s.detail.clone());
    let fence_ms = fence
        .and_then(|s| Some((s.finished_ms? - s.started_ms?).max(0) as u64))
        .unwrap_or(0);
    Ok((fenced_by, fence_ms))
}

/// The parts of a node that moves need.
#[derive(Clone)]
pub struct Moves {
    /// This node.
    pub id: NodeId,
    /// Raft, to propose and to read the membership.
    pub raft: Raft,
    /// The applied state.
    pub shared: SharedState,
    /// Whether this node leads, and the live regions.
    pub keeper: Keeper,
    /// Linearizable reads.
    pub reads: ReadBarrier,
    /// Applied changes: a waiting move wakes on them.
    pub changes: Changes,
}

impl Moves {
    fn record(&self, service: &str) -> Result<ServiceRecord, MoveError> {
        let view = self.shared.read().unwrap_or_else(|e| e.into_inner());
        view.state
            .service(service)
            .cloned()
            .ok_or_else(|| MoveError::NoSuchService(service.to_string()))
    }

    /// Checks, starts and waits for a move; `stamp` adds the caller's notes to the command
    /// (`actor` names the caller in the audit trail). A dry run only checks.
    pub async fn run(
        &self,
        req: &MoveRequest<'_>,
        actor: &str,
        stamp: impl FnOnce(Command) -> Command,
    ) -> Result<MoveOutcome, MoveError> {
        self.reads.linearize().await?;
        let rec = self.record(req.service)?;
        let pre = precheck(&rec, req, &voters(&self.raft), self.id)?;
        let dry = |precheck| MoveOutcome {
            precheck,
            after: None,
            run_id: 0,
            fenced_by: "none".into(),
            fence_ms: 0,
        };
        if req.dry_run {
            return Ok(dry(pre));
        }
        if let Some(refusal) = pre.refusal.clone() {
            return Err(refusal);
        }
        let mut changes = self.changes.subscribe();
        let (run_id, resp) = propose(
            &self.raft,
            actor,
            stamp(Command::StartRun {
                service: req.service.to_string(),
                kind: req.kind,
                trigger: Trigger::Operator,
                to: pre.to.clone(),
                plan: pre.plan.clone(),
                reason: req.reason.to_string(),
                detected_ms: wall_clock_ms(),
                // The checks above read the state before this entry: repeat it atomically.
                expected_token: (req.expected_token != 0).then_some(req.expected_token),
            }),
        )
        .await?;
        if let Response::Rejected(r) = resp {
            return Err(MoveError::Rejected(r));
        }
        // Wait for the controller to carry the run out (it survives a leader change; this
        // call does not, and then says so).
        let deadline = Instant::now()
            + Duration::from_millis(pre.before.ttl_ms.saturating_mul(3))
            + Duration::from_secs(60);
        let run = loop {
            let run = {
                let view = self.shared.read().unwrap_or_else(|e| e.into_inner());
                view.state.run(run_id).cloned()
            };
            if let Some(run) = run.filter(|r| r.state.is_final()) {
                break run;
            }
            if Instant::now() > deadline {
                return Err(MoveError::Unfinished(run_id));
            }
            if !self.keeper.is_leading() {
                return Err(MoveError::LeadershipChanged(run_id));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        };
        let (fenced_by, fence_ms) = outcome_of(&run)?;
        let after = self.record(req.service).ok().map(|r| r.lease);
        tracing::info!(service = %req.service, to = %pre.to, run = run_id, fenced_by = %fenced_by, fence_ms, "{} complete", req.kind.as_str());
        Ok(MoveOutcome {
            precheck: pre,
            after,
            run_id,
            fenced_by,
            fence_ms,
        })
    }

    /// What automation would do for `service` now (this node's applied state).
    pub fn plan(&self, service: &str) -> Result<(ServiceRecord, PlanView), MoveError> {
        let rec = self.record(service)?;
        let live = self
            .keeper
            .live_regions(service, Duration::from_millis(rec.lease.ttl_ms));
        let view = plan_view(&rec, &voters(&self.raft), &live, wall_clock_ms());
        Ok((rec, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Request, ServiceSpec, State};

    /// `payments` held by us-east with token 7 (the index of the entry that created it).
    fn record() -> ServiceRecord {
        let spec = ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"]);
        let mut s = State::default();
        s.apply(
            7,
            &Request {
                at_ms: 1_000,
                actor: "op".into(),
                command: Command::PutService {
                    spec,
                    reason: "r".into(),
                },
            },
        );
        s.service("payments").cloned().unwrap()
    }

    fn voters() -> BTreeMap<NodeId, String> {
        BTreeMap::from([
            (1, "us-east".to_string()),
            (2, "eu-west".to_string()),
            (3, "ap-south".to_string()),
        ])
    }

    fn req(to: Option<&str>, expected: u64, dry_run: bool) -> MoveRequest<'_> {
        MoveRequest {
            service: "payments",
            to,
            reason: "test",
            expected_token: expected,
            dry_run,
            kind: RunKind::Switchover,
        }
    }

    fn passed(p: &Precheck, name: &str) -> bool {
        p.checks.iter().find(|c| c.name == name).unwrap().passed
    }

    #[test]
    fn a_clean_switchover_passes_every_check_and_plans_fence_then_grant() {
        let p = precheck(&record(), &req(Some("eu-west"), 7, false), &voters(), 1).unwrap();
        assert!(p.refusal.is_none());
        assert!(p.checks.iter().all(|c| c.passed), "{:?}", p.checks);
        let plan = &p.checks.last().unwrap().detail;
        assert!(plan.contains("revoke token 7 from us-east"), "{plan}");
        assert!(plan.ends_with("then grant eu-west a new token"), "{plan}");
        assert_eq!(p.candidates.len(), 3);
    }

    #[test]
    fn a_stale_token_or_the_current_holder_is_refused_but_a_dry_run_shows_why() {
        let p = precheck(&record(), &req(Some("eu-west"), 6, true), &voters(), 1).unwrap();
        assert!(!passed(&p, "expected-token"));
        assert!(matches!(
            p.refusal,
            Some(MoveError::Rejected(Rejection::TokenMismatch {
                expected: 6,
                actual: 7,
                ..
            }))
        ));
        let p = precheck(&record(), &req(Some("us-east"), 0, false), &voters(), 1).unwrap();
        assert!(!passed(&p, "target-not-primary"));
        assert!(matches!(
            p.refusal,
            Some(MoveError::AlreadyPrimary { token: 7, .. })
        ));
    }

    #[test]
    fn an_unknown_region_is_refused_at_once_unless_it_is_a_dry_run() {
        let err = precheck(&record(), &req(Some("mars"), 0, false), &voters(), 1).unwrap_err();
        assert!(matches!(err, MoveError::Rejected(_)), "{err}");
        let p = precheck(&record(), &req(Some("mars"), 0, true), &voters(), 1).unwrap();
        assert!(!passed(&p, "target-allowed"));
    }

    #[test]
    fn failback_goes_to_the_preferred_region_unless_the_policy_says_never() {
        let mut r = req(None, 0, false);
        r.kind = RunKind::Failback;
        let mut rec = record();
        rec.lease.holder = Some("eu-west".into());
        assert_eq!(precheck(&rec, &r, &voters(), 1).unwrap().to, "us-east");
        rec.spec.failback = FailbackMode::Never;
        assert!(matches!(
            precheck(&rec, &r, &voters(), 1),
            Err(MoveError::FailbackNever(_))
        ));
    }

    #[test]
    fn a_plan_says_what_automation_would_do() {
        let view = plan_view(&record(), &voters(), &BTreeSet::new(), 1_000);
        assert_eq!(view.candidates.len(), 3);
        assert!(view.failover_steps.contains(&"grant"), "{view:?}");
        assert!(!view.next_action.is_empty());
    }
}
