//! Workflow runs: `StartRun`, `AdvanceRun` (a step's outcome with its lease effect) and
//! `DecideRun` (an approval or rejection).

use super::Ctx;
use crate::state::{
    check_region, check_token, end_run, finish_step, grant_lease, revoke_lease, Effect, Event,
    EventKind, OnFailure, PhaseMark, Phases, Rejection, Run, RunKind, RunState, State, Step,
    StepKind, StepOutcome, StepSpec, StepState, Trigger, FINISHED_RUNS_KEPT,
};

/// A `StartRun` command's fields, borrowed.
pub(super) struct RunStart<'a> {
    pub service: &'a str,
    pub kind: RunKind,
    pub trigger: &'a Trigger,
    pub to: &'a str,
    pub plan: &'a [StepSpec],
    pub reason: &'a str,
    pub detected_ms: i64,
    pub expected_token: Option<u64>,
}

/// An `AdvanceRun` command's fields, borrowed: what happened at one step of one run.
pub(super) struct StepReport<'a> {
    pub service: &'a str,
    pub run: u64,
    pub step: usize,
    pub outcome: &'a StepOutcome,
    pub effect: Option<&'a Effect>,
    pub phase: Option<PhaseMark>,
    pub reason: &'a str,
}

impl State {
    /// Starts a run (at most one per service); an automatic one counts toward the flap
    /// limit.
    pub(super) fn start_run(
        &mut self,
        cx: &Ctx,
        start: &RunStart,
    ) -> Result<Vec<Event>, Rejection> {
        let (index, at_ms) = (cx.index, cx.at_ms);
        let RunStart {
            service,
            kind,
            trigger,
            to,
            plan,
            reason,
            detected_ms,
            expected_token,
        } = *start;
        let rec = self.record(service)?;
        if let Some(expected) = expected_token {
            check_token(service, expected, rec.lease.token)?;
        }
        if let Some(active) = rec.active_run {
            return Err(Rejection::WrongState(format!(
                "run {active} is in progress for {service:?}: at most one run per service"
            )));
        }
        check_region(&rec.spec, to)?;
        if plan.is_empty() {
            return Err(Rejection::Invalid("a run needs at least one step".into()));
        }
        if rec.lease.primary() == Some(to) {
            return Err(Rejection::WrongState(format!(
                "{to} already holds {service:?} (token {})",
                rec.lease.token
            )));
        }
        if trigger.is_automatic() {
            if rec.frozen {
                return Err(Rejection::WrongState(format!(
                    "{service:?} is frozen: automation is off until `baton unfreeze {service}`"
                )));
            }
            if let Some(why) = &rec.paused {
                return Err(Rejection::WrongState(why.clone()));
            }
            if !rec.spec.auto_failover {
                return Err(Rejection::WrongState(format!(
                    "automatic failover is off for {service:?}"
                )));
            }
            // Saturating: leader clocks are inputs, and apply must never panic.
            let window = i64::try_from(rec.spec.flap_window_ms).unwrap_or(i64::MAX);
            rec.auto_moves.retain(|t| at_ms.saturating_sub(*t) < window);
            rec.auto_moves.push(at_ms);
            let limit = rec.spec.flap_limit as usize;
            if limit > 0 && rec.auto_moves.len() >= limit {
                rec.paused = Some(format!(
                    "{} automatic moves of {service:?} within {} ms reached the flap limit: automation is \
                     paused until an operator runs `baton ack {service}`",
                    rec.auto_moves.len(),
                    rec.spec.flap_window_ms
                ));
            }
        }
        rec.active_run = Some(index);
        let run = Run {
            id: index,
            service: service.to_string(),
            kind,
            trigger: trigger.clone(),
            from: rec.lease.holder.clone(),
            to: to.to_string(),
            actor: cx.actor.to_string(),
            reason: reason.to_string(),
            steps: plan
                .iter()
                .map(|spec| Step {
                    spec: spec.clone(),
                    state: StepState::Pending,
                    attempts: 0,
                    started_ms: None,
                    finished_ms: None,
                    detail: String::new(),
                })
                .collect(),
            current: 0,
            state: RunState::Running,
            phases: Phases {
                detected_ms: Some(detected_ms),
                decided_ms: Some(at_ms),
                ..Phases::default()
            },
            token_before: rec.lease.token,
            token_after: None,
            error: None,
            finished_ms: None,
        };
        self.runs.insert(index, run);
        self.prune_runs();
        Ok(Vec::new())
    }

    /// An operator approves or rejects the run waiting at an approval step.
    pub(super) fn decide_run(
        &mut self,
        cx: &Ctx,
        service: &str,
        run: u64,
        approve: bool,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let at_ms = cx.at_ms;
        let mut r = self
            .runs
            .get(&run)
            .filter(|r| r.service == service)
            .cloned()
            .ok_or_else(|| Rejection::Invalid(format!("there is no run {run} of {service:?}")))?;
        let step = r.current_step().map(|s| s.spec.kind.clone());
        if !step.as_ref().is_some_and(StepKind::is_approval) {
            return Err(Rejection::WrongState(format!(
                "run {run} is not waiting for approval (state {}, step {})",
                r.state.as_str(),
                r.current_step().map_or("none", |s| s.spec.kind.name())
            )));
        }
        // Separation of duties: decided here, from the replicated run, so every
        // replica refuses the same approvals and the refusal is in the audit trail.
        if approve && step == Some(StepKind::ApprovalByAnother) && r.actor == cx.actor {
            return Err(Rejection::Forbidden(format!(
                "run {run} was requested by {}; its plan requires approval by another \
                 principal: ask a different operator to approve it",
                r.actor
            )));
        }
        if approve {
            finish_step(&mut r, at_ms, StepState::Done, reason);
        } else {
            finish_step(&mut r, at_ms, StepState::Failed, reason);
            end_run(
                &mut r,
                at_ms,
                RunState::Rejected,
                format!("rejected: {reason}"),
            );
        }
        self.store_run(r);
        Ok(Vec::new())
    }

    /// Records a step's outcome, applying its lease effect in the same entry.
    pub(super) fn advance_run(
        &mut self,
        cx: &Ctx,
        report: &StepReport,
    ) -> Result<Vec<Event>, Rejection> {
        let (index, at_ms) = (cx.index, cx.at_ms);
        let StepReport {
            service,
            run: run_id,
            step,
            outcome,
            effect,
            phase,
            reason,
        } = *report;
        let mut run = self
            .runs
            .get(&run_id)
            .filter(|r| r.service == service)
            .cloned()
            .ok_or_else(|| {
                Rejection::Invalid(format!("there is no run {run_id} of {service:?}"))
            })?;
        if run.state.is_final() || run.current != step {
            return Err(Rejection::WrongState(format!(
                "run {run_id} is at step {} ({}), not step {step}: this outcome was already recorded",
                run.current,
                run.state.as_str()
            )));
        }
        let mut events = Vec::new();
        if let Some(effect) = effect {
            let rec = self.record(service)?;
            let kind = match effect {
                Effect::Revoke { token } => {
                    revoke_lease(rec, *token, index)?.then_some(EventKind::Revoking)
                }
                Effect::Grant { expected_token } => {
                    grant_lease(rec, &run.to, *expected_token, index, at_ms)?;
                    run.token_after = Some(index);
                    Some(EventKind::Granted)
                }
                Effect::GrantBack { expected_token } => {
                    let back = run.from.clone().ok_or_else(|| {
                        Rejection::WrongState(
                            "the run had no previous holder to roll back to".into(),
                        )
                    })?;
                    grant_lease(rec, &back, *expected_token, index, at_ms)?;
                    Some(EventKind::Granted)
                }
            };
            if let Some(kind) = kind {
                events.push(Event {
                    kind,
                    service: service.to_string(),
                    revision: index,
                    lease: rec.lease.clone(),
                    reason: reason.to_string(),
                    frozen: rec.frozen,
                });
            }
        }
        match outcome {
            StepOutcome::Started => {
                let s = &mut run.steps[step];
                s.state = StepState::Running;
                s.attempts += 1;
                s.started_ms = Some(at_ms);
                s.detail = reason.to_string();
            }
            StepOutcome::Done => {
                if let Some(p) = phase {
                    let slot = match p {
                        PhaseMark::Fenced => &mut run.phases.fenced_ms,
                        PhaseMark::Granted => &mut run.phases.granted_ms,
                        PhaseMark::Verified => &mut run.phases.verified_ms,
                    };
                    *slot = Some(at_ms);
                }
                finish_step(&mut run, at_ms, StepState::Done, reason);
            }
            StepOutcome::Failed => {
                let policy = run.steps[step].spec.on_failure;
                let attempts = run.steps[step].attempts;
                match policy {
                    OnFailure::Retry(n) if attempts <= n => {
                        let s = &mut run.steps[step];
                        s.state = StepState::Pending;
                        s.detail = format!("attempt {attempts} failed: {reason}; retrying");
                    }
                    OnFailure::Rollback if matches!(effect, Some(Effect::GrantBack { .. })) => {
                        finish_step(&mut run, at_ms, StepState::Failed, reason);
                        end_run(&mut run, at_ms, RunState::RolledBack, reason.to_string());
                    }
                    _ => {
                        finish_step(&mut run, at_ms, StepState::Failed, reason);
                        end_run(&mut run, at_ms, RunState::Failed, reason.to_string());
                    }
                }
            }
        }
        self.store_run(run);
        Ok(events)
    }

    /// Stores a changed run and keeps the service's `active_run` in step with it.
    fn store_run(&mut self, run: Run) {
        if run.state.is_final() {
            if let Some(rec) = self.services.get_mut(&run.service) {
                if rec.active_run == Some(run.id) {
                    rec.active_run = None;
                }
            }
        }
        self.runs.insert(run.id, run);
        self.prune_runs();
    }

    /// Forgets the oldest finished runs beyond [`FINISHED_RUNS_KEPT`].
    fn prune_runs(&mut self) {
        let finished: Vec<u64> = self
            .runs
            .values()
            .filter(|r| r.state.is_final())
            .map(|r| r.id)
            .collect();
        if finished.len() > FINISHED_RUNS_KEPT {
            for id in &finished[..finished.len() - FINISHED_RUNS_KEPT] {
                self.runs.remove(id);
            }
        }
    }
}
