//! The record format of `history.jsonl`: the run clock and every record type, whose serde
//! derives are the single definition of one line's JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The run's single monotonic clock: every record's time is read from one of these, so
/// times of different clients, agents, watchers and the nemesis are comparable.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose zero is now (the start of the run).
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years: truncation cannot happen in a run.
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant a history time corresponds to (for scheduling against recorded times).
    pub fn instant_at(&self, t_ns: u64) -> Instant {
        self.start + Duration::from_nanos(t_ns)
    }

    /// The history time of `at` (an instant of this process's monotonic clock, e.g. a lease
    /// validity deadline); instants before the run started map to 0.
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }
}

/// State of a lease, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStateRec {
    /// A region holds the lease.
    Held,
    /// Revocation committed; the holder must demote.
    Revoking,
    /// Nobody holds it.
    Vacant,
}

impl LeaseStateRec {
    /// Position in a lease's life for one token: Held, then Revoking, then Vacant; a token's
    /// lease never goes back (a new grant makes a new token).
    pub fn rank(self) -> u8 {
        match self {
            LeaseStateRec::Held => 0,
            LeaseStateRec::Revoking => 1,
            LeaseStateRec::Vacant => 2,
        }
    }
}

/// A lease as a client, watcher or final-state dump saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseObs {
    /// Holder (or, while revoking, last holder); `None` when vacant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Fencing token (0 = never granted).
    pub token: u64,
    /// Revision of the last change to the service (0 = not recorded).
    #[serde(default)]
    pub revision: u64,
    /// Life-cycle state.
    pub state: LeaseStateRec,
    /// `read_write` / `read_only`, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl LeaseObs {
    /// A held lease (handy in tests and workloads).
    pub fn held(region: &str, token: u64, revision: u64) -> Self {
        Self {
            region: Some(region.to_string()),
            token,
            revision,
            state: LeaseStateRec::Held,
            mode: None,
        }
    }

    /// The content the register checkers compare: holder, token and state (not revision or
    /// mode, which change without a grant).
    pub fn content(&self) -> (Option<&str>, u64, LeaseStateRec) {
        (self.region.as_deref(), self.token, self.state)
    }
}

/// How fresh a read was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Confirmed with a quorum (read index).
    Linearizable,
    /// The answering node's applied state.
    Local,
}

/// What a client asked (the `op` of an `invoke` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// `Coordinator.GetPrimary`.
    GetPrimary {
        /// Service.
        service: String,
        /// Requested consistency.
        consistency: Consistency,
        /// The read after healing that the durability checker compares against.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        final_read: bool,
    },
    /// `Coordinator.Failover` (a planned switchover with compare-and-set on the token).
    Failover {
        /// Service.
        service: String,
        /// Target region.
        to_region: String,
        /// The token the client believes current (0 = no check).
        expected_token: u64,
    },
    /// `Coordinator.ValidateToken`.
    ValidateToken {
        /// Service.
        service: String,
        /// Token asked about.
        token: u64,
        /// Requested consistency.
        consistency: Consistency,
    },
}

impl Call {
    /// The service the call concerns.
    pub fn service(&self) -> &str {
        match self {
            Call::GetPrimary { service, .. }
            | Call::Failover { service, .. }
            | Call::ValidateToken { service, .. } => service,
        }
    }

    /// Short name (`get_primary`, `failover`, `validate_token`).
    pub fn name(&self) -> &'static str {
        match self {
            Call::GetPrimary { .. } => "get_primary",
            Call::Failover { .. } => "failover",
            Call::ValidateToken { .. } => "validate_token",
        }
    }

    /// Whether the call asked for a linearizable answer (failovers are writes: always).
    pub fn is_linearizable(&self) -> bool {
        match self {
            Call::GetPrimary { consistency, .. } | Call::ValidateToken { consistency, .. } => {
                *consistency == Consistency::Linearizable
            }
            Call::Failover { .. } => true,
        }
    }
}

/// `ValidateToken`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// The current token of a held lease.
    Current,
    /// Issued, replaced or revoked since.
    Superseded,
    /// Never issued for this service.
    Unknown,
}

/// What an `ok` completion returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpResult {
    /// `GetPrimary`'s answer.
    GetPrimary {
        /// The lease.
        lease: LeaseObs,
        /// Applied revision of the answering node (0 = not recorded).
        #[serde(default)]
        node_revision: u64,
        /// Node that answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        served_by: Option<u64>,
        /// Whether the node confirmed the answer with a quorum.
        #[serde(default)]
        linearizable: bool,
    },
    /// `Failover`'s answer.
    Failover {
        /// The lease after the failover (new holder and token).
        lease: LeaseObs,
        /// How the old holder was fenced (`demotion-ack`, `ttl-expired`, `vacant`, `none`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fenced_by: Option<String>,
    },
    /// `ValidateToken`'s answer.
    ValidateToken {
        /// Verdict on the token.
        validity: Validity,
        /// The lease the verdict was judged against.
        lease: LeaseObs,
    },
}

impl OpResult {
    /// The lease in the answer.
    pub fn lease(&self) -> &LeaseObs {
        match self {
            OpResult::GetPrimary { lease, .. }
            | OpResult::Failover { lease, .. }
            | OpResult::ValidateToken { lease, .. } => lease,
        }
    }
}

/// Kinds of watch events (`EventKind` of the API, plus `snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// Current state sent at the start of a watch; its `revision` is the lease's revision.
    Snapshot,
    /// A region was granted the lease.
    Granted,
    /// Revocation started.
    Revoking,
    /// Lease released or expired.
    Vacated,
    /// Read-write / read-only changed.
    ModeChanged,
    /// Service definition created or changed.
    ServicePut,
    /// Service deleted.
    ServiceDeleted,
}

/// One write the fenced resource holds in its final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceWrite {
    /// Write id (unique per run).
    pub write: u64,
    /// Token the write carried.
    pub token: u64,
    /// Agent that wrote.
    pub writer: String,
}

/// One service in a node's final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalService {
    /// Service.
    pub service: String,
    /// The lease.
    pub lease: LeaseObs,
    /// Every token ever granted for the service, ascending (empty = not recorded).
    #[serde(default)]
    pub tokens: Vec<u64>,
}

/// Parameters of the run, recorded first so `check` can re-run the checkers alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Seed of the nemesis schedule and workload.
    pub seed: u64,
    /// Nemesis family name or `all`.
    pub nemesis: String,
    /// Number of coordinator nodes.
    pub nodes: u32,
    /// Length of the fault phase, seconds.
    pub time_limit_s: u64,
    /// Lease time-to-live, milliseconds.
    pub lease_ttl_ms: u64,
    /// Clock drift margin as a fraction (e.g. 0.05): leases are trusted for TTL·(1−drift).
    pub drift: f64,
    /// How long after the last fault heals the cluster must be live again, milliseconds.
    pub liveness_bound_ms: u64,
    /// Whether automatic failover was on (hidden grants are then legal).
    #[serde(default)]
    pub automation: bool,
    /// Region of every node, keyed by node id in decimal (JSON object keys are strings, and
    /// records are parsed through serde's flatten buffer, which cannot turn them into
    /// integers).
    #[serde(default)]
    pub regions: BTreeMap<String, String>,
    /// Services the workload used.
    #[serde(default)]
    pub services: Vec<String>,
    /// Safety margin agents subtract from their validity, milliseconds.
    #[serde(default = "default_margin_ms")]
    pub margin_ms: u64,
}

fn default_margin_ms() -> u64 {
    50
}

/// What happened (the `type` field of a record, and its fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Run parameters (first record).
    Meta(RunMeta),
    /// A client started an operation.
    Invoke {
        /// Operation id, unique in the run; the completion carries the same id.
        id: u64,
        /// Logical client (a process does one operation at a time).
        process: String,
        /// Node the request was sent to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<u64>,
        /// What was asked.
        op: Call,
    },
    /// The operation succeeded.
    Ok {
        /// Operation id.
        id: u64,
        /// Its answer.
        result: OpResult,
    },
    /// The operation definitely did not happen (e.g. refused before any effect).
    Fail {
        /// Operation id.
        id: u64,
        /// The error.
        error: String,
    },
    /// Unknown outcome (timeout, connection lost): it may or may not have happened.
    Info {
        /// Operation id.
        id: u64,
        /// The error.
        error: String,
    },
    /// An agent's renewal was acknowledged as RENEWED.
    Renewed {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// Token renewed.
        token: u64,
        /// When the renewal was sent (history clock); validity counts from here.
        sent_ns: u64,
        /// Until when the agent now trusts its lease (history clock).
        valid_until_ns: u64,
        /// Lease TTL in the acknowledgement, milliseconds.
        #[serde(default)]
        ttl_ms: u64,
    },
    /// An agent was told REVOKE.
    RevokeSeen {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// Token being revoked.
        token: u64,
    },
    /// An agent stopped acting as primary and acknowledged the demotion.
    Demoted {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// Token given up.
        token: u64,
    },
    /// An agent started acting as primary.
    Promoted {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// Token it acts with.
        token: u64,
    },
    /// An agent stopped acting as primary by itself (its lease ran out unrenewed).
    SelfFenced {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// Token given up.
        token: u64,
    },
    /// A watcher opened its first stream.
    WatchStarted {
        /// Watcher id.
        watcher: String,
        /// Node serving the stream.
        node: u64,
        /// Services watched (empty = all).
        #[serde(default)]
        services: Vec<String>,
        /// Requested start revision (0 = snapshot first).
        start_revision: u64,
    },
    /// A watcher received an event.
    WatchEvent {
        /// Watcher id.
        watcher: String,
        /// Node serving the stream.
        node: u64,
        /// Service.
        service: String,
        /// Revision of the change (for `snapshot`: the lease's revision).
        revision: u64,
        /// Kind of change.
        kind: WatchKind,
        /// The lease after the change.
        lease: LeaseObs,
    },
    /// A watcher received a progress notification: no change for its services up to
    /// `revision` that it has not been sent.
    WatchProgress {
        /// Watcher id.
        watcher: String,
        /// Node serving the stream.
        node: u64,
        /// Node's applied revision.
        revision: u64,
    },
    /// A watcher reopened its stream after a disconnect.
    WatchResumed {
        /// Watcher id.
        watcher: String,
        /// Node serving the new stream.
        node: u64,
        /// First revision asked for (last seen + 1).
        from_revision: u64,
    },
    /// A watch stream failed.
    WatchError {
        /// Watcher id.
        watcher: String,
        /// Node that served the stream.
        node: u64,
        /// The error.
        error: String,
        /// The resume revision had been compacted (an explicit gap: the watcher restarts
        /// from a snapshot).
        #[serde(default)]
        compacted: bool,
    },
    /// The fenced resource accepted a write.
    FenceAccept {
        /// Resource name.
        resource: String,
        /// Agent that wrote.
        writer: String,
        /// Writer's region.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Service whose token fenced the write.
        #[serde(default)]
        service: String,
        /// Token carried.
        token: u64,
        /// Write id (unique per run).
        write: u64,
        /// When the writer last confirmed its lease was valid before writing (history
        /// clock); the timing checks use it instead of `t`, which is a little later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checked_ns: Option<u64>,
    },
    /// The fenced resource refused a write (token lower than the highest accepted).
    FenceReject {
        /// Resource name.
        resource: String,
        /// Agent that wrote.
        writer: String,
        /// Writer's region.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Service whose token fenced the write.
        #[serde(default)]
        service: String,
        /// Token carried.
        token: u64,
        /// Write id.
        write: u64,
        /// Highest token accepted so far.
        highest: u64,
        /// When the writer last confirmed its lease was valid before writing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checked_ns: Option<u64>,
    },
    /// The fenced resource's final contents, in the order it applied them.
    FenceFinal {
        /// Resource name.
        resource: String,
        /// Accepted writes.
        writes: Vec<FenceWrite>,
    },
    /// A fault began.
    NemesisStart {
        /// Family (`partition`, `kill`, `pause`, `clock`, `disk`).
        family: String,
        /// What exactly (target nodes, links, offsets).
        detail: serde_json::Value,
    },
    /// A fault was healed.
    NemesisStop {
        /// Family.
        family: String,
        /// What exactly.
        detail: serde_json::Value,
    },
    /// A scheduled fault that was not applied (its family is not available here: no
    /// libfaketime for `clock`, not root for `disk`; or its symbolic target could not be
    /// resolved). Nothing was injected, so checkers treat it as absent.
    NemesisSkipped {
        /// Family.
        family: String,
        /// The scheduled fault.
        detail: serde_json::Value,
        /// Why it was not applied.
        reason: String,
    },
    /// A hook of a real `baton agent` process ran (ingested from the agent's hook file
    /// in `agents/` at the end of the run, and again by `check`). `promote` is written
    /// when the hook starts (the region may act as primary from then on), `demote` when it
    /// finishes (the role ends there). `t` is `realtime_ns` mapped onto the history clock
    /// through the run's `clock_sync` record.
    Hook {
        /// Agent id (`<region>-proc`).
        agent: String,
        /// Agent's region.
        region: String,
        /// Service.
        service: String,
        /// `promote` or `demote`.
        event: String,
        /// `BATON_TOKEN` of the hook.
        token: u64,
        /// `CLOCK_REALTIME` (ns) the hook read (`date +%s%N`).
        realtime_ns: u64,
    },
    /// A real agent process was started, paused, resumed, stopped or killed by the
    /// harness, or exited by itself.
    AgentProcess {
        /// Agent id.
        agent: String,
        /// Agent's region.
        region: String,
        /// `started`, `paused`, `resumed`, `stopped` (SIGTERM, then it exited), `killed`
        /// (SIGKILL) or `exited` (by itself).
        action: String,
        /// Process id (0 if unknown).
        #[serde(default)]
        pid: u32,
    },
    /// `CLOCK_REALTIME` read at this record's `t`: maps hook times onto the history clock
    /// (the harness and the hooks share the machine's clock; the clock nemesis fakes only
    /// node processes).
    ClockSync {
        /// `CLOCK_REALTIME`, ns since the Unix epoch.
        realtime_ns: u64,
    },
    /// The harness changed a service's lease TTL (Admin `PutService`).
    TtlChanged {
        /// Service.
        service: String,
        /// The TTL asked for, ms.
        ttl_ms: u64,
        /// The TTL the answer's lease carried, ms (0 = no lease in the answer).
        #[serde(default)]
        lease_ttl_ms: u64,
    },
    /// A node's state after the run (read after healing).
    NodeFinal {
        /// Node id.
        node: u64,
        /// Node's region.
        #[serde(default)]
        region: String,
        /// Node's applied revision.
        #[serde(default)]
        revision: u64,
        /// Every service with its lease.
        #[serde(default)]
        services: Vec<FinalService>,
        /// Why the state could not be read, if it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Nanoseconds since the run started (one monotonic clock for the whole run).
    pub t: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_format_is_flat_json_with_type_tag() {
        let r = Record {
            t: 42,
            event: Event::Fail {
                id: 3,
                error: "x".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"t":42,"type":"fail","id":3,"error":"x"}"#);
        let inv: Record = serde_json::from_str(
            r#"{"t":1,"type":"invoke","id":2,"process":"p","op":{"f":"failover","service":"s","to_region":"eu","expected_token":4}}"#,
        )
        .unwrap();
        assert!(matches!(
            inv.event,
            Event::Invoke {
                op: Call::Failover {
                    expected_token: 4,
                    ..
                },
                ..
            }
        ));
    }
}
