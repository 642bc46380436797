//! What every actor records with: the shared context, process names that change after
//! an unknown outcome, leases and watch events in their recorded form, and which client
//! errors are a definite `fail`.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use baton::client::{code_name, ClientError};
use baton::proto;
use tonic::Code;

use super::WorkloadConfig;
use crate::history::{Event, HistoryWriter, LeaseObs, LeaseStateRec, OpResult, WatchKind};

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

pub(super) fn describe(e: &ClientError) -> String {
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
pub(super) struct Ctx {
    pub(super) history: HistoryWriter,
    pub(super) cfg: WorkloadConfig,
    /// Every token seen in an answer (for `ValidateToken`).
    pub(super) tokens: Mutex<BTreeSet<u64>>,
    /// The lease TTL the harness last set (ms; the TTL nemesis changes it).
    pub(super) ttl_ms: Arc<AtomicU64>,
    /// Set by the nemesis while no switchover may start.
    pub(super) hold_switchovers: Arc<std::sync::atomic::AtomicBool>,
}

impl Ctx {
    pub(super) fn saw(&self, l: &LeaseObs) {
        if l.token > 0 {
            if let Ok(mut t) = self.tokens.lock() {
                t.insert(l.token);
            }
        }
    }

    pub(super) fn complete(&self, id: u64, r: Result<OpResult, Failure>) -> bool {
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
pub(super) struct Process {
    base: String,
    generation: u32,
}

impl Process {
    pub(super) fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            generation: 0,
        }
    }

    pub(super) fn name(&self) -> String {
        if self.generation == 0 {
            self.base.clone()
        } else {
            format!("{}.{}", self.base, self.generation)
        }
    }

    pub(super) fn after(&mut self, info: bool) {
        if info {
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn process_names_change_after_unknown_outcomes() {
        let mut p = Process::new("r1");
        assert_eq!(p.name(), "r1");
        p.after(false);
        assert_eq!(p.name(), "r1");
        p.after(true);
        assert_eq!(p.name(), "r1.1");
    }
}
