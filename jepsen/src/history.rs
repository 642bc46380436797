//! The recorded history of a run: one JSON object per line (`history.jsonl`), every record
//! stamped with one monotonic clock (nanoseconds since the run started).
//!
//! The format is documented in `jepsen/README.md`; this module is its single definition.
//! Writers append from many tasks through a cheap cloneable [`HistoryWriter`]; the file is
//! written by one background thread so that recording never blocks a client task and the
//! records of one run are totally ordered by the order the writer received them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
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

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded with this answer.
    Ok(OpResult),
    /// Definitely did not happen.
    Fail(String),
    /// May or may not have happened.
    Info(String),
    /// No completion was recorded (the run ended first): treated like `Info`.
    Pending,
}

/// An invocation joined with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Operation id.
    pub id: u64,
    /// Client.
    pub process: String,
    /// Node asked.
    pub node: Option<u64>,
    /// What was asked.
    pub call: Call,
    /// Invocation time (ns).
    pub invoke_ns: u64,
    /// Completion time (ns); `None` for pending operations.
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// The answer of an `ok` operation.
    pub fn ok(&self) -> Option<&OpResult> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the outcome is unknown (`info` or never completed).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self.outcome, Outcome::Info(_) | Outcome::Pending)
    }

    /// Outcome name (`ok`, `fail`, `info`, `pending`).
    pub fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Fail(_) => "fail",
            Outcome::Info(_) => "info",
            Outcome::Pending => "pending",
        }
    }

    /// A compact JSON description for anomaly reports.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "process": self.process,
            "op": self.call,
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "outcome": self.outcome_name(),
        });
        match &self.outcome {
            Outcome::Ok(r) => v["result"] = serde_json::to_value(r).unwrap_or_default(),
            Outcome::Fail(e) | Outcome::Info(e) => v["error"] = e.clone().into(),
            Outcome::Pending => {}
        }
        if let Some(n) = self.node {
            v["node"] = n.into();
        }
        v
    }
}

/// A problem in the history file itself (not in the system under test).
#[derive(Debug)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "history line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A whole recorded history, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Every record.
    pub records: Vec<Record>,
}

impl History {
    /// A history of these records.
    pub fn new(records: Vec<Record>) -> Self {
        Self { records }
    }

    /// Reads `history.jsonl`. A torn last line (the harness died mid-write) is skipped;
    /// any other malformed line is an error, because silently dropping records would make
    /// checkers pass on histories they never saw.
    pub fn read(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::parse(BufReader::new(file))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Parses JSON lines from a reader (see [`History::read`]).
    pub fn parse<R: BufRead>(reader: R) -> Result<Self, ParseError> {
        let mut records = Vec::new();
        let mut lines = reader.lines().enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line.map_err(|e| ParseError {
                line: i + 1,
                message: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => records.push(r),
                Err(e) if lines.peek().is_none() && e.is_eof() => break,
                Err(e) => {
                    return Err(ParseError {
                        line: i + 1,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(Self { records })
    }

    /// Writes the history as JSON lines (used by tests and by `check` when it normalises).
    pub fn write_to<W: Write>(&self, mut w: W) -> io::Result<()> {
        for r in &self.records {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// The run parameters, if recorded.
    pub fn meta(&self) -> Option<&RunMeta> {
        self.records.iter().find_map(|r| match &r.event {
            Event::Meta(m) => Some(m),
            _ => None,
        })
    }

    /// Time of the last record (the end of the run).
    pub fn end_ns(&self) -> u64 {
        self.records.iter().map(|r| r.t).max().unwrap_or(0)
    }

    /// Every client operation, invocation joined with completion, ordered by invocation
    /// time. Completions without an invocation are ignored (they cannot be placed).
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for r in &self.records {
            match &r.event {
                Event::Invoke {
                    id,
                    process,
                    node,
                    op,
                } => {
                    by_id.insert(*id, ops.len());
                    ops.push(Operation {
                        id: *id,
                        process: process.clone(),
                        node: *node,
                        call: op.clone(),
                        invoke_ns: r.t,
                        complete_ns: None,
                        outcome: Outcome::Pending,
                    });
                }
                Event::Ok { id, result } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Ok(result.clone());
                    }
                }
                Event::Fail { id, error } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Fail(error.clone());
                    }
                }
                Event::Info { id, error } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Info(error.clone());
                    }
                }
                _ => {}
            }
        }
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        ops
    }

    /// Fault intervals `(family, start_ns, stop_ns)`, paired in order per family and detail;
    /// a fault never stopped lasts to the end of the run.
    pub fn nemesis_intervals(&self) -> Vec<(String, u64, u64)> {
        let mut open: Vec<(String, String, u64)> = Vec::new();
        let mut out = Vec::new();
        for r in &self.records {
            match &r.event {
                Event::NemesisStart { family, detail } => {
                    open.push((family.clone(), detail.to_string(), r.t));
                }
                Event::NemesisStop { family, detail } => {
                    let d = detail.to_string();
                    // Prefer the start with the same detail; fall back to the oldest open
                    // fault of the family (an executor may describe the heal differently).
                    let pos = open
                        .iter()
                        .position(|(f, od, _)| f == family && *od == d)
                        .or_else(|| open.iter().position(|(f, _, _)| f == family));
                    if let Some(p) = pos {
                        let (f, _, start) = open.remove(p);
                        out.push((f, start, r.t));
                    }
                }
                _ => {}
            }
        }
        let end = self.end_ns();
        out.extend(open.into_iter().map(|(f, _, s)| (f, s, end)));
        out.sort_by_key(|(_, s, _)| *s);
        out
    }

    /// When the last fault was healed (0 when the run had no faults).
    pub fn last_heal_ns(&self) -> u64 {
        self.nemesis_intervals()
            .iter()
            .map(|(_, _, e)| *e)
            .max()
            .unwrap_or(0)
    }

    /// Whether any fault of `family` was injected.
    pub fn had_fault(&self, family: &str) -> bool {
        self.records
            .iter()
            .any(|r| matches!(&r.event, Event::NemesisStart { family: f, .. } if f == family))
    }
}

/// What the writer thread is sent.
enum Msg {
    Record(Record),
    Flush(mpsc::Sender<()>),
}

struct WriterInner {
    clock: Clock,
    next_id: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Drop for WriterInner {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain what is queued, flush and exit; joining
        // it here is what makes "flushes on drop" true even if nobody called `close`.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut th) = self.thread.lock() {
            if let Some(h) = th.take() {
                let _ = h.join();
            }
        }
    }
}

/// Appends records to `history.jsonl`: cheap to clone, never blocks the caller (an
/// unbounded queue to one writer thread), flushes at least every 100 ms while idle and
/// completely when the last clone is dropped or [`HistoryWriter::close`] is called.
#[derive(Clone)]
pub struct HistoryWriter {
    inner: Arc<WriterInner>,
}

impl HistoryWriter {
    /// Creates (truncates) `path` and starts the writer thread.
    pub fn create(path: &Path, clock: Clock) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self::from_writer(Box::new(file), clock))
    }

    /// A writer into any sink (tests use a shared buffer).
    pub fn from_writer(sink: Box<dyn Write + Send>, clock: Clock) -> Self {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || write_loop(sink, rx))
            .expect("spawn history writer thread");
        Self {
            inner: Arc::new(WriterInner {
                clock,
                next_id: AtomicU64::new(1),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    /// The run's clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Now, on the run's clock.
    pub fn now_ns(&self) -> u64 {
        self.inner.clock.now_ns()
    }

    /// A fresh operation (or write) id, unique in this run.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records `event` stamped with the current time; returns the time used.
    pub fn record(&self, event: Event) -> u64 {
        let t = self.now_ns();
        self.record_at(t, event);
        t
    }

    /// Records `event` with a time the caller read earlier from the same clock.
    pub fn record_at(&self, t: u64, event: Event) {
        if let Ok(tx) = self.inner.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                // A send fails only after the writer thread died of an I/O error, which
                // `close` reports; recording must not panic a client task.
                let _ = tx.send(Msg::Record(Record { t, event }));
            }
        }
    }

    /// Records an invocation; returns `(id, invoke time)`.
    pub fn invoke(&self, process: &str, node: Option<u64>, op: Call) -> (u64, u64) {
        let id = self.next_id();
        let t = self.record(Event::Invoke {
            id,
            process: process.to_string(),
            node,
            op,
        });
        (id, t)
    }

    /// Waits until everything recorded so far is on disk (flushed to the OS).
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        let sent = match self.inner.tx.lock() {
            Ok(tx) => tx
                .as_ref()
                .map(|tx| tx.send(Msg::Flush(ack_tx)).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        if sent {
            let _ = ack_rx.recv();
        }
    }

    /// Stops accepting records, writes everything queued and reports the first I/O error.
    /// Other clones become no-ops.
    pub fn close(&self) -> io::Result<()> {
        if let Ok(mut tx) = self.inner.tx.lock() {
            tx.take();
        }
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        match handle {
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("history writer thread panicked"))?,
            None => Ok(()),
        }
    }
}

fn write_loop(sink: Box<dyn Write + Send>, rx: mpsc::Receiver<Msg>) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 16, sink);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Record(r)) => {
                serde_json::to_writer(&mut w, &r)?;
                w.write_all(b"\n")?;
            }
            Ok(Msg::Flush(ack)) => {
                w.flush()?;
                let _ = ack.send(());
            }
            // Idle: flush so a crashed harness still leaves a nearly complete history.
            Err(mpsc::RecvTimeoutError::Timeout) => w.flush()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that appends to a shared buffer so a test can read what was written.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sample_events() -> Vec<Event> {
        vec![
            Event::Invoke {
                id: 1,
                process: "c1".into(),
                node: Some(2),
                op: Call::GetPrimary {
                    service: "payments".into(),
                    consistency: Consistency::Linearizable,
                    final_read: false,
                },
            },
            Event::Ok {
                id: 1,
                result: OpResult::GetPrimary {
                    lease: LeaseObs::held("us-east", 5, 7),
                    node_revision: 9,
                    served_by: Some(2),
                    linearizable: true,
                },
            },
            Event::WatchEvent {
                watcher: "w1".into(),
                node: 1,
                service: "payments".into(),
                revision: 7,
                kind: WatchKind::Granted,
                lease: LeaseObs::held("us-east", 5, 7),
            },
            Event::NemesisStart {
                family: "partition".into(),
                detail: serde_json::json!({"cut": [[1, 2]]}),
            },
        ]
    }

    #[test]
    fn writer_flushes_on_drop_and_reader_roundtrips() {
        let buf = Shared::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        let w2 = w.clone();
        for e in sample_events() {
            w2.record(e);
        }
        drop(w2);
        drop(w);
        let bytes = buf.0.lock().unwrap().clone();
        let h = History::parse(&bytes[..]).unwrap();
        let events: Vec<Event> = h.records.iter().map(|r| r.event.clone()).collect();
        assert_eq!(events, sample_events());
        // One clock: times never go backwards in recording order.
        assert!(h.records.windows(2).all(|w| w[0].t <= w[1].t));
    }

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

    #[test]
    fn flush_and_close_write_everything() {
        let buf = Shared::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        w.record(sample_events()[0].clone());
        w.flush();
        assert!(!buf.0.lock().unwrap().is_empty());
        w.close().unwrap();
        // After close, recording is a silent no-op rather than a panic.
        w.record(sample_events()[1].clone());
        let h = History::parse(&buf.0.lock().unwrap()[..]).unwrap();
        assert_eq!(h.records.len(), 1);
    }

    #[test]
    fn torn_last_line_is_skipped_but_bad_middle_line_is_an_error() {
        let good = r#"{"t":1,"type":"fail","id":3,"error":"x"}"#;
        let torn = format!("{good}\n{{\"t\":2,\"type\":\"fa");
        assert_eq!(History::parse(torn.as_bytes()).unwrap().records.len(), 1);
        let bad = format!("{good}\n{{\"t\":2,\"type\":\"nope\"}}\n{good}\n");
        let err = History::parse(bad.as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn operations_join_invocations_and_completions() {
        let recs = vec![
            Record {
                t: 10,
                event: sample_events()[0].clone(),
            },
            Record {
                t: 20,
                event: sample_events()[1].clone(),
            },
            Record {
                t: 30,
                event: Event::Invoke {
                    id: 2,
                    process: "c2".into(),
                    node: None,
                    op: Call::Failover {
                        service: "payments".into(),
                        to_region: "eu".into(),
                        expected_token: 5,
                    },
                },
            },
        ];
        let ops = History::new(recs).operations();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].complete_ns, Some(20));
        assert!(ops[0].ok().is_some());
        assert_eq!(ops[1].outcome, Outcome::Pending);
        assert!(ops[1].is_indeterminate());
    }

    #[test]
    fn nemesis_intervals_pair_starts_and_stops() {
        let d = serde_json::json!({"node": 1});
        let recs = vec![
            Record {
                t: 5,
                event: Event::NemesisStart {
                    family: "kill".into(),
                    detail: d.clone(),
                },
            },
            Record {
                t: 9,
                event: Event::NemesisStop {
                    family: "kill".into(),
                    detail: d.clone(),
                },
            },
            Record {
                t: 12,
                event: Event::NemesisStart {
                    family: "pause".into(),
                    detail: d,
                },
            },
            Record {
                t: 20,
                event: Event::Fail {
                    id: 1,
                    error: String::new(),
                },
            },
        ];
        let h = History::new(recs);
        assert_eq!(
            h.nemesis_intervals(),
            vec![("kill".to_string(), 5, 9), ("pause".to_string(), 12, 20)]
        );
        assert_eq!(h.last_heal_ns(), 20);
        assert!(h.had_fault("pause"));
        assert!(!h.had_fault("clock"));
    }
}
