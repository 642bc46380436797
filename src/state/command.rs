//! The commands the Raft log carries, and what applying one answers.

use serde::{Deserialize, Serialize};

use super::lease::{Lease, LeaseMode};
use super::service::ServiceSpec;
use super::workflow::{Effect, PhaseMark, RunKind, StepOutcome, StepSpec, Trigger};

/// A command with what the leader stamped on it. Time enters the state only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Leader's wall clock when it proposed the command, ms since the Unix epoch.
    pub at_ms: i64,
    /// Principal that asked, or `automation`.
    pub actor: String,
    /// The change.
    pub command: Command,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a service definition. A new service is granted to its first primary.
    PutService {
        /// The definition.
        spec: ServiceSpec,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// Delete a service and its lease.
    DeleteService {
        /// Service name.
        name: String,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// Start revoking the held lease whose token is `token` (Held -> Revoking).
    Revoke {
        /// Service name.
        service: String,
        /// Token being revoked: the command is refused if the lease moved on.
        token: u64,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// Grant the lease to `region` with a new token (the entry's log index). Allowed only
    /// from Vacant, or from Revoking once the leader has fenced the old holder.
    Grant {
        /// Service name.
        service: String,
        /// New holder.
        region: String,
        /// The lease's token when the leader decided: refused if it changed since.
        expected_token: u64,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// End the lease whose token is `token` (Held or Revoking -> Vacant): its holder
    /// stopped renewing, or acknowledged demotion with no successor.
    Expire {
        /// Service name.
        service: String,
        /// Token that expired.
        token: u64,
        /// Why (e.g. "no renewal for 5s").
        reason: String,
    },
    /// Switch the lease between read-write and read-only.
    SetMode {
        /// Service name.
        service: String,
        /// New mode.
        mode: LeaseMode,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// Pause (or resume) automation for a service.
    SetFrozen {
        /// Service name.
        service: String,
        /// Frozen or not.
        frozen: bool,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// A vantage node's health verdict about a region changed.
    Observe {
        /// Service name.
        service: String,
        /// Region observed.
        region: String,
        /// Observing node.
        vantage_node: u64,
        /// Its region.
        vantage_region: String,
        /// Healthy from there?
        healthy: bool,
        /// What the probe said (the reason of the audit entry).
        reason: String,
    },
    /// Start a workflow run (at most one per service).
    StartRun {
        /// Service name.
        service: String,
        /// Kind of run.
        kind: RunKind,
        /// What started it.
        trigger: Trigger,
        /// Target region.
        to: String,
        /// The steps the run takes, fixed when it starts.
        plan: Vec<StepSpec>,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
        /// When the trigger was observed (leader wall clock).
        detected_ms: i64,
        /// Compare-and-set: refuse unless the lease's token is this one.
        expected_token: Option<u64>,
    },
    /// Record a step's outcome, applying its effect in the same entry.
    AdvanceRun {
        /// Service name.
        service: String,
        /// Run id.
        run: u64,
        /// Index of the step (refused unless it is the current one: no step applies twice).
        step: usize,
        /// What happened.
        outcome: StepOutcome,
        /// Lease change to apply atomically with the outcome.
        effect: Option<Effect>,
        /// Phase this completion marks.
        phase: Option<PhaseMark>,
        /// What happened, for people (the reason of the audit entry).
        reason: String,
    },
    /// An operator approves or rejects a run waiting at an approval step.
    DecideRun {
        /// Service name.
        service: String,
        /// Run id.
        run: u64,
        /// Approve (true) or reject.
        approve: bool,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    /// An operator acknowledges a flap pause: automation resumes.
    AckFlap {
        /// Service name.
        service: String,
        /// Why, in the caller's words (kept in the audit trail).
        reason: String,
    },
    // New variants go last: entries are bincode, which numbers variants in order, so the
    // log and snapshots written by older versions stay decodable.
    /// A call refused by authorization, recorded in the audit trail only (the request's
    /// actor is the principal, or `anonymous@addr` when none was proved).
    Refused {
        /// gRPC method path.
        method: String,
        /// Why it was refused.
        reason: String,
        /// Refusals not recorded since the previous one (rate limit).
        dropped: u64,
    },
    /// A cluster operation outside the replicated state (membership, leadership, snapshot),
    /// recorded in the audit trail only.
    Cluster {
        /// What was done.
        action: ClusterAction,
        /// Details (node id, address, target), for people.
        reason: String,
        /// `ok`, `started` or `failed: ...`.
        outcome: String,
    },
}

/// A cluster operation recorded by [`Command::Cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterAction {
    /// A node was added (learner or voter).
    AddNode,
    /// A node was removed.
    RemoveNode,
    /// Leadership transfer to another node.
    TransferLeadership,
    /// A snapshot was built on a node.
    TriggerSnapshot,
    /// A backup (`baton snapshot save`) was served: it carries the whole state and audit.
    SaveSnapshot,
}

impl ClusterAction {
    /// Action name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterAction::AddNode => "node.add",
            ClusterAction::RemoveNode => "node.remove",
            ClusterAction::TransferLeadership => "leader.transfer",
            ClusterAction::TriggerSnapshot => "snapshot",
            ClusterAction::SaveSnapshot => "backup",
        }
    }
}

impl Command {
    /// Short action name for the audit trail.
    pub fn action(&self) -> &'static str {
        match self {
            Command::PutService { .. } => "put-service",
            Command::DeleteService { .. } => "delete-service",
            Command::Revoke { .. } => "revoke",
            Command::Grant { .. } => "grant",
            Command::Expire { .. } => "expire",
            Command::SetMode { .. } => "set-mode",
            Command::SetFrozen { .. } => "set-frozen",
            Command::Observe { .. } => "observe",
            Command::StartRun { .. } => "run.start",
            Command::AdvanceRun { outcome, .. } => match outcome {
                StepOutcome::Started => "run.step-started",
                StepOutcome::Done => "run.step-done",
                StepOutcome::Failed => "run.step-failed",
            },
            Command::DecideRun { approve: true, .. } => "run.approve",
            Command::DecideRun { approve: false, .. } => "run.reject",
            Command::AckFlap { .. } => "ack",
            Command::Refused { .. } => "refused",
            Command::Cluster { action, .. } => action.as_str(),
        }
    }

    /// The service the command concerns.
    pub fn service(&self) -> &str {
        match self {
            Command::PutService { spec, .. } => &spec.name,
            Command::DeleteService { name, .. } => name,
            Command::Revoke { service, .. }
            | Command::Grant { service, .. }
            | Command::Expire { service, .. }
            | Command::SetMode { service, .. }
            | Command::SetFrozen { service, .. }
            | Command::Observe { service, .. }
            | Command::StartRun { service, .. }
            | Command::AdvanceRun { service, .. }
            | Command::DecideRun { service, .. }
            | Command::AckFlap { service, .. } => service,
            Command::Refused { .. } | Command::Cluster { .. } => "",
        }
    }

    /// The operator's or automation's reason.
    pub fn reason(&self) -> &str {
        match self {
            Command::PutService { reason, .. }
            | Command::DeleteService { reason, .. }
            | Command::Revoke { reason, .. }
            | Command::Grant { reason, .. }
            | Command::Expire { reason, .. }
            | Command::SetMode { reason, .. }
            | Command::SetFrozen { reason, .. }
            | Command::Observe { reason, .. }
            | Command::StartRun { reason, .. }
            | Command::AdvanceRun { reason, .. }
            | Command::DecideRun { reason, .. }
            | Command::AckFlap { reason, .. }
            | Command::Refused { reason, .. }
            | Command::Cluster { reason, .. } => reason,
        }
    }

    /// The reason, to add an "on behalf of" note to.
    pub fn reason_mut(&mut self) -> &mut String {
        match self {
            Command::PutService { reason, .. }
            | Command::DeleteService { reason, .. }
            | Command::Revoke { reason, .. }
            | Command::Grant { reason, .. }
            | Command::Expire { reason, .. }
            | Command::SetMode { reason, .. }
            | Command::SetFrozen { reason, .. }
            | Command::Observe { reason, .. }
            | Command::StartRun { reason, .. }
            | Command::AdvanceRun { reason, .. }
            | Command::DecideRun { reason, .. }
            | Command::AckFlap { reason, .. }
            | Command::Refused { reason, .. }
            | Command::Cluster { reason, .. } => reason,
        }
    }
}

/// Why the state machine refused a command. Refusals change nothing but the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// No such service.
    #[error("service {0:?} does not exist; `baton status` lists the services")]
    UnknownService(String),
    /// The region is not a candidate of the service.
    #[error("region {region:?} is not a candidate region of service {service:?} (candidates: {candidates})")]
    UnknownRegion {
        /// The service named.
        service: String,
        /// Region asked for.
        region: String,
        /// Comma-separated candidates.
        candidates: String,
    },
    /// The region is a candidate but not allowed to hold the lease.
    #[error("region {region:?} is not allowed to hold service {service:?} (allowed: {allowed})")]
    NotAllowed {
        /// The service named.
        service: String,
        /// Region asked for.
        region: String,
        /// Comma-separated allowed regions.
        allowed: String,
    },
    /// Compare-and-set failed: the lease moved on.
    #[error("service {service:?} has token {actual}, not the expected {expected}: the lease changed; read it again")]
    TokenMismatch {
        /// The service named.
        service: String,
        /// Token the caller expected.
        expected: u64,
        /// Token it has.
        actual: u64,
    },
    /// The lease is not in a state that allows the command.
    #[error("{0}")]
    WrongState(String),
    /// The definition is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The principal may not do this (e.g. approve a run it requested where the plan
    /// requires another approver). Last: see the note on [`Command`]'s new variants.
    #[error("{0}")]
    Forbidden(String),
}

/// What applying a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command was applied (or was a no-op) at `revision`.
    Applied {
        /// Log index of the entry.
        revision: u64,
        /// The service's lease afterwards (None after a delete).
        lease: Option<Lease>,
    },
    /// The command was refused.
    Rejected(Rejection),
    /// A Raft-internal entry (blank, membership) with no application meaning.
    Internal,
}
