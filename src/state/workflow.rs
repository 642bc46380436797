//! Workflow runs: failover, switchover, failback — a list of steps, each with a timeout and
//! an on-failure policy. Runs live in the replicated state, so a new leader resumes a run
//! at the step the old one reached; every step's effect (revoke, grant) is applied in the
//! same entry that records the step's outcome, so no effect is applied twice.

use serde::{Deserialize, Serialize};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunKind {
    /// Unplanned: the holder failed (lease expired or region down).
    Failover,
    /// Planned: an operator moves the primary.
    Switchover,
    /// Back to the preferred region.
    Failback,
}

impl RunKind {
    /// Name used in the API and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Failover => "failover",
            RunKind::Switchover => "switchover",
            RunKind::Failback => "failback",
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// The holder stopped renewing and its lease expired.
    LeaseExpired,
    /// A majority of vantage regions see the holder region failing.
    HealthDown(String),
    /// The preferred region has been healthy for the stable window.
    Failback,
    /// An operator asked.
    Operator,
}

impl Trigger {
    /// Whether the coordinator started the run by itself.
    pub fn is_automatic(&self) -> bool {
        !matches!(self, Trigger::Operator)
    }

    /// Short description.
    pub fn describe(&self) -> String {
        match self {
            Trigger::LeaseExpired => "lease expired".into(),
            Trigger::HealthDown(why) => format!("health: {why}"),
            Trigger::Failback => "preferred region healthy for the stable window".into(),
            Trigger::Operator => "operator".into(),
        }
    }
}

/// One kind of step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// Target healthy and allowed; policy allows the move.
    Precheck,
    /// Revoke the old lease; wait for demotion acks or TTL + drift + margin.
    Fence,
    /// Grant the target a new token.
    Grant,
    /// POST the run as JSON to a URL; expect 2xx.
    Webhook(String),
    /// Wait until the target region is healthy from a majority of vantage regions.
    WaitHealthy,
    /// Wait for `baton approve RUN` (or `baton reject RUN`).
    Approval,
    /// The target holds the lease and one of its agents renewed it.
    Verify,
    /// Like [`StepKind::Approval`], but the approver must be another principal than the
    /// one that started the run (separation of duties). Last, for bincode: see `Command`.
    ApprovalByAnother,
}

impl StepKind {
    /// Name used in the API and configs.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Precheck => "precheck",
            StepKind::Fence => "fence",
            StepKind::Grant => "grant",
            StepKind::Webhook(_) => "webhook",
            StepKind::WaitHealthy => "wait-healthy",
            StepKind::Approval => "approval",
            StepKind::Verify => "verify",
            StepKind::ApprovalByAnother => "approval-by-another",
        }
    }

    /// Whether the step waits for `baton approve`.
    pub fn is_approval(&self) -> bool {
        matches!(self, StepKind::Approval | StepKind::ApprovalByAnother)
    }
}

/// What to do when a step fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// Try again, at most this many more times, then abort.
    Retry(u32),
    /// Stop the run.
    Abort,
    /// Stop the run and give the lease back to the previous holder where that is safe.
    Rollback,
}

impl OnFailure {
    /// Name used in the API and configs.
    pub fn describe(self) -> String {
        match self {
            OnFailure::Retry(n) => format!("retry({n})"),
            OnFailure::Abort => "abort".into(),
            OnFailure::Rollback => "rollback".into(),
        }
    }
}

/// A step as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// What the step does.
    pub kind: StepKind,
    /// How long it may take (0 = no limit).
    pub timeout_ms: u64,
    /// What happens when it fails.
    pub on_failure: OnFailure,
}

/// How long an approval step waits when its plan gives no timeout: nobody answering must
/// not leave a run (and its service's automation) waiting forever.
pub const DEFAULT_APPROVAL_TIMEOUT_MS: u64 = 15 * 60 * 1000;

impl StepSpec {
    fn new(kind: StepKind, timeout_ms: u64, on_failure: OnFailure) -> Self {
        Self {
            kind,
            timeout_ms,
            on_failure,
        }
    }

    /// The step's time limit in ms (0 = none): its own, or for an approval without one
    /// [`DEFAULT_APPROVAL_TIMEOUT_MS`].
    pub fn effective_timeout_ms(&self) -> u64 {
        match (self.timeout_ms, &self.kind) {
            (0, StepKind::Approval | StepKind::ApprovalByAnother) => DEFAULT_APPROVAL_TIMEOUT_MS,
            (t, _) => t,
        }
    }
}

/// The plan a service uses for a run kind: its own when it has one, else the default.
pub fn plan_for(spec: &super::ServiceSpec, kind: RunKind) -> Vec<StepSpec> {
    spec.plans
        .get(kind.as_str())
        .cloned()
        .unwrap_or_else(|| default_plan(kind))
}

impl StepKind {
    /// Parses a step name (`webhook` needs its URL).
    pub fn parse(name: &str, url: Option<&str>) -> Result<Self, String> {
        Ok(match name {
            "precheck" => StepKind::Precheck,
            "fence" => StepKind::Fence,
            "grant" => StepKind::Grant,
            "wait-healthy" => StepKind::WaitHealthy,
            "approval" => StepKind::Approval,
            "approval-by-another" => StepKind::ApprovalByAnother,
            "verify" => StepKind::Verify,
            "webhook" => StepKind::Webhook(
                url.filter(|u| !u.is_empty())
                    .ok_or("a webhook step needs a url")?
                    .to_string(),
            ),
            other => {
                return Err(format!(
                    "step {other:?} is not one of precheck, fence, grant, webhook, wait-healthy, approval, approval-by-another, verify"
                ))
            }
        })
    }
}

impl OnFailure {
    /// Parses `abort`, `rollback` or `retry(N)`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "abort" => Ok(OnFailure::Abort),
            "rollback" => Ok(OnFailure::Rollback),
            _ => s
                .strip_prefix("retry(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse().ok())
                .map(OnFailure::Retry)
                .ok_or_else(|| format!("on_failure {s:?} is not abort, rollback or retry(N)")),
        }
    }
}

/// The default plan of a run kind. Fencing has no timeout of its own: it always ends, by
/// acknowledgement or by the TTL running out.
pub fn default_plan(kind: RunKind) -> Vec<StepSpec> {
    use OnFailure::*;
    use StepKind::*;
    match kind {
        // A planned switchover is done once granted: the operator's command returns then.
        // Add `verify` to a service's switchover plan to wait for the new holder's agent.
        RunKind::Switchover => vec![
            StepSpec::new(Precheck, 5_000, Abort),
            StepSpec::new(Fence, 0, Abort),
            StepSpec::new(Grant, 5_000, Retry(3)),
        ],
        RunKind::Failover => vec![
            StepSpec::new(Precheck, 5_000, Abort),
            StepSpec::new(Fence, 0, Abort),
            StepSpec::new(Grant, 5_000, Retry(3)),
            StepSpec::new(Verify, 30_000, Abort),
        ],
        RunKind::Failback => vec![
            StepSpec::new(Precheck, 5_000, Abort),
            StepSpec::new(WaitHealthy, 60_000, Abort),
            StepSpec::new(Fence, 0, Abort),
            StepSpec::new(Grant, 5_000, Retry(3)),
            // Abort, not rollback: after the grant the lease could only go back once the
            // new holder is fenced. A holder that never renews loses the lease by its TTL
            // and automation moves it on.
            StepSpec::new(Verify, 30_000, Abort),
        ],
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started (its effect, if any, is applied).
    Running,
    /// Finished successfully.
    Done,
    /// Failed for good.
    Failed,
    /// Not run (the run ended first).
    Skipped,
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The plan.
    pub spec: StepSpec,
    /// Where it is.
    pub state: StepState,
    /// Attempts started.
    pub attempts: u32,
    /// Leader time the current attempt started.
    pub started_ms: Option<i64>,
    /// Leader time it finished.
    pub finished_ms: Option<i64>,
    /// What happened.
    pub detail: String,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Steps are being executed.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed and the run stopped.
    Failed,
    /// An operator rejected it at an approval step.
    Rejected,
    /// It failed and the lease went back to the previous holder.
    RolledBack,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        self != RunState::Running
    }

    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Rejected => "rejected",
            RunState::RolledBack => "rolled-back",
        }
    }
}

/// When each phase of a run happened (leader wall clock, ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    /// The trigger was observed.
    pub detected_ms: Option<i64>,
    /// The run was started.
    pub decided_ms: Option<i64>,
    /// The old holder was fenced.
    pub fenced_ms: Option<i64>,
    /// The target was granted the lease.
    pub granted_ms: Option<i64>,
    /// The target's holding was verified.
    pub verified_ms: Option<i64>,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Log index of the entry that started it.
    pub id: u64,
    /// The service whose lease the run moves.
    pub service: String,
    /// Failover, switchover or failback.
    pub kind: RunKind,
    /// What started it.
    pub trigger: Trigger,
    /// Holder when it started (None if vacant).
    pub from: Option<String>,
    /// Target region.
    pub to: String,
    /// Who started it.
    pub actor: String,
    /// Why the run was started (the trigger's or operator's words).
    pub reason: String,
    /// The steps.
    pub steps: Vec<Step>,
    /// Index of the current step (== steps.len() when done).
    pub current: usize,
    /// Where it is.
    pub state: RunState,
    /// Phase timestamps.
    pub phases: Phases,
    /// Lease token when the run started.
    pub token_before: u64,
    /// Token granted by the run.
    pub token_after: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Leader time it finished.
    pub finished_ms: Option<i64>,
}

impl Run {
    /// The current step, while running.
    pub fn current_step(&self) -> Option<&Step> {
        if self.state.is_final() {
            return None;
        }
        self.steps.get(self.current)
    }
}

/// An effect applied atomically with a step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Revoke the lease with this token (Held -> Revoking).
    Revoke {
        /// The token being revoked: the effect applies only while it is still current.
        token: u64,
    },
    /// Grant the run's target a new token (from Vacant or Revoking with this token).
    Grant {
        /// Expected current token.
        expected_token: u64,
    },
    /// Give the lease back to the run's previous holder (rollback).
    GrantBack {
        /// Expected current token.
        expected_token: u64,
    },
}

/// How a step attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// The step started (its effect, if any, is applied now).
    Started,
    /// The step succeeded.
    Done,
    /// The step failed (its on-failure policy decides what follows).
    Failed,
}

/// Which phase a step completion marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhaseMark {
    /// The old holder is fenced (acks or TTL): `fenced_ms`.
    Fenced,
    /// The new holder has its token: `granted_ms`.
    Granted,
    /// The new holder was seen healthy: `verified_ms`.
    Verified,
}
