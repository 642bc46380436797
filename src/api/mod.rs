//! The public gRPC services: `baton.v1.Coordinator` ([`coordinator`], [`watch`],
//! [`keepalive`]) and `baton.v1.Admin` ([`admin`]).
//!
//! Reads go to `state` (through the read barrier when linearizable); writes go through
//! Raft (`control::propose`). A leader-only request that reaches a follower is forwarded
//! once to the leader; when that is impossible the answer is `UNAVAILABLE` with the leader's
//! address in the `x-baton-leader` metadata so the client can follow.

pub mod admin;
pub mod coordinator;
pub mod keepalive;
pub mod shed;
pub mod transfer;
pub mod trim;
pub mod validate;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch as tokio_watch;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::layer::{
    AUTHORIZATION_HEADER, PRINCIPAL_HEADER, PRINCIPAL_REGIONS_HEADER, PRINCIPAL_ROLES_HEADER,
    PRINCIPAL_SERVICES_HEADER,
};
use crate::auth::policy::Source;
use crate::auth::{Principal, Recorder};
use crate::control::TimingConfig;
use crate::control::{ControlError, Keeper, ReadBarrier};
use crate::raft::{Changes, LeaderContact, NodeId, NodeInfo, Raft, SharedState};
use crate::state::{AuditEntry, Command, Rejection};

/// Metadata key carrying the leader's `host:port` on a not-leader answer.
pub const LEADER_HEADER: &str = crate::wire::LEADER_KEY;
/// Metadata key a caller may use to say on whose behalf it acts: a note in the audit
/// reason, never the principal.
pub const ACTOR_HEADER: &str = crate::wire::ACTOR_KEY;
/// Metadata key marking a request a follower already forwarded (never forwarded twice).
pub const FORWARDED_HEADER: &str = crate::wire::FORWARDED_KEY;
/// Metadata key of a caller-chosen request id, echoed in logs.
pub const REQUEST_ID_HEADER: &str = crate::wire::REQUEST_ID_KEY;

/// Read access to the replicated audit trail as stored on this node.
pub trait AuditSource: Send + Sync + 'static {
    /// Up to `limit` entries with seq >= `from_seq`, optionally of one service only.
    fn list(
        &self,
        from_seq: u64,
        limit: usize,
        service: Option<&str>,
    ) -> Result<Vec<AuditEntry>, String>;
    /// Hash of the entry before `seq` (None for seq 0).
    fn hash_before(&self, seq: u64) -> Result<Option<String>, String>;
    /// The oldest seq kept: older entries were compacted away.
    fn oldest_seq(&self) -> Result<u64, String>;
}

/// Everything a request handler needs from its node.
pub struct Ctx {
    /// This node.
    pub id: NodeId,
    /// This node's region.
    pub region: String,
    /// Cluster name.
    pub cluster: String,
    /// Raft handle.
    pub raft: Raft,
    /// Applied state.
    pub shared: SharedState,
    /// Applied changes, for watches.
    pub changes: Changes,
    /// The audit trail.
    pub audit: Arc<dyn AuditSource>,
    /// Batched linearizable read barrier.
    pub reads: ReadBarrier,
    /// The lease keeper.
    pub keeper: Keeper,
    /// Last contact with a leader.
    pub contact: Arc<LeaderContact>,
    /// Timing configuration.
    pub timing: TimingConfig,
    /// Channels to other nodes for forwarding.
    pub links: crate::raft::ChannelPool,
    /// Flips to true when the node stops: streams end.
    pub shutdown: tokio_watch::Receiver<bool>,
    /// Open watch streams per connection and per caller.
    pub watchers: watch::Watchers,
    /// Writes audit-only entries (cluster operations) from this node.
    pub recorder: Recorder,
    next_request: AtomicU64,
}

impl Ctx {
    /// Bundles a node's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        region: String,
        cluster: String,
        raft: Raft,
        shared: SharedState,
        changes: Changes,
        audit: Arc<dyn AuditSource>,
        reads: ReadBarrier,
        keeper: Keeper,
        contact: Arc<LeaderContact>,
        timing: TimingConfig,
        links: crate::raft::ChannelPool,
        shutdown: tokio_watch::Receiver<bool>,
        recorder: Recorder,
    ) -> Self {
        Self {
            id,
            region,
            cluster,
            raft,
            shared,
            changes,
            audit,
            reads,
            keeper,
            contact,
            timing,
            links,
            shutdown,
            watchers: watch::Watchers::default(),
            recorder,
            next_request: AtomicU64::new(1),
        }
    }

    /// A request id: the caller's `x-request-id`, or a fresh one.
    pub fn request_id<T>(&self, req: &tonic::Request<T>) -> String {
        match req
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() && id.len() <= 64 => id.to_string(),
            _ => format!(
                "{}-{}",
                self.id,
                self.next_request.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// The known leader (id and node), from this node's Raft metrics.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// `UNAVAILABLE` naming the leader, with its address in metadata.
    pub fn not_leader(&self, leader: Option<(NodeId, NodeInfo)>) -> Status {
        match leader {
            Some((lid, node)) if lid != self.id => crate::wire::not_leader(
                format!(
                    "node {} is not the leader; the leader is node {lid} at {} (clients follow it)",
                    self.id, node.addr
                ),
                Some((lid, node.addr.as_str())),
            ),
            _ => crate::wire::not_leader(
                format!(
                    "node {} knows no leader right now (an election may be in progress); retry shortly",
                    self.id
                ),
                None,
            ),
        }
    }

    /// An upper bound on how stale this node's state may be. A leader counts from the start
    /// of its last quorum-confirmed round (openraft 0.9 leaders do not step down when cut off,
    /// so believing it leads proves nothing); a follower from its last leader contact.
    pub fn staleness_ms(&self) -> u64 {
        if self.keeper.is_leading() {
            return self
                .reads
                .confirmed_age()
                .map_or(u64::MAX, |d| d.as_millis() as u64);
        }
        self.contact.age_ms().unwrap_or(u64::MAX)
    }

    /// Whether this node knows its state is current: confirmed (or heard from its leader)
    /// within an election timeout. Watch progress is sent only then, so a watcher of a node
    /// cut off from the cluster hears nothing and its idle timeout moves it elsewhere.
    pub fn is_current(&self) -> bool {
        self.staleness_ms() <= self.timing.election_timeout_max.as_millis() as u64
    }

    /// Maps a control error to a status a person can act on.
    pub fn control_status(&self, e: ControlError) -> Status {
        match e {
            ControlError::NotLeader(l) => self.not_leader(l.or_else(|| self.leader())),
            ControlError::NoQuorum(m) => Status::unavailable(format!(
                "no quorum ({m}); nothing was changed — the cluster needs a majority of nodes up"
            )),
            ControlError::LeadershipLost(m) => Status::unavailable(format!(
                "leadership changed while {m}; check the state and retry"
            )),
            ControlError::Timeout(m) => Status::deadline_exceeded(m),
            ControlError::ShuttingDown => {
                Status::unavailable("the node is shutting down; use another node")
            }
            ControlError::Fatal(m) => Status::internal(format!("raft stopped: {m}")),
            ControlError::Invalid(m) => Status::invalid_argument(m),
        }
    }

    /// Whether this request was already forwarded by a follower.
    pub fn was_forwarded<T>(req: &tonic::Request<T>) -> bool {
        req.metadata().contains_key(FORWARDED_HEADER)
    }

    /// Marks an answer this node got by forwarding to the leader with the leader's address
    /// (`x-baton-leader`), so a client that listed a follower first goes to the leader
    /// directly next time instead of paying the forwarding hop on every call.
    pub fn leader_answered<T>(
        &self,
        answer: Result<tonic::Response<T>, Status>,
    ) -> Result<tonic::Response<T>, Status> {
        answer.map(|mut resp| {
            if let Some((lid, node)) = self.leader() {
                if lid != self.id {
                    if let Ok(v) = MetadataValue::try_from(node.addr.as_str()) {
                        resp.metadata_mut().insert(LEADER_HEADER, v);
                    }
                }
            }
            resp
        })
    }

    /// A channel to the leader for forwarding, or the not-leader status if there is none.
    pub fn leader_channel(&self) -> Result<Channel, Status> {
        match self.leader() {
            Some((lid, node)) if lid != self.id => self.links.node(lid, &node.addr).map_err(|e| {
                Status::unavailable(format!("cannot reach the leader at {}: {e}", node.addr))
            }),
            other => Err(self.not_leader(other)),
        }
    }
}

/// Who made a request: the principal the auth layer authenticated (never a header the
/// caller merely sent), and the `x-baton-actor` "on behalf of" note, if any.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated principal.
    pub principal: Principal,
    /// Whom the principal says it acts for (`x-baton-actor`): a note in the audit reason.
    pub on_behalf: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.on_behalf {
            Some(n) => write!(f, "{} (on behalf of {n})", self.principal.name),
            None => f.write_str(&self.principal.name),
        }
    }
}

impl Caller {
    /// The principal's name: the actor recorded in the audit trail.
    pub fn name(&self) -> &str {
        &self.principal.name
    }

    /// `command` with the "on behalf of" note added to its reason.
    pub fn stamp(&self, mut command: Command) -> Command {
        if let Some(n) = &self.on_behalf {
            command
                .reason_mut()
                .push_str(&format!(" [on behalf of {n}]"));
        }
        command
    }

    /// Refuses a service or region outside the principal's bindings (PERMISSION_DENIED).
    pub fn check_scope(&self, service: &str, region: Option<&str>) -> Result<(), Status> {
        self.principal.check_scope(service, region)
    }
}

/// The principal of a request. Every request through the client server carries one (the
/// auth layer puts it there); a handler called in-process without the layer sees the
/// caller as anonymous, as with `[auth]` off.
pub fn principal<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(|| Principal::anonymous(req.remote_addr()))
}

/// The caller of a request: its principal and its `x-baton-actor` note.
pub fn actor<T>(req: &tonic::Request<T>) -> Caller {
    let principal = principal(req);
    let on_behalf = req
        .metadata()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && *s != principal.name
        })
        .map(str::to_string);
    Caller {
        principal,
        on_behalf,
    }
}

/// Copies the caller's identity onto a forwarded request and marks it forwarded. A bearer
/// token travels as is (the leader checks it again); a principal proved otherwise (a client
/// certificate the leader cannot see) travels as `x-baton-principal*` headers, which the
/// leader believes only on a connection proved by a member node's certificate.
pub fn forwarded<T, U>(orig: &tonic::Request<T>, inner: U) -> tonic::Request<U> {
    let mut r = tonic::Request::new(inner);
    for key in [ACTOR_HEADER, REQUEST_ID_HEADER, AUTHORIZATION_HEADER] {
        if let Some(v) = orig.metadata().get(key) {
            r.metadata_mut().insert(key, v.clone());
        }
    }
    if let Some(p) = orig.extensions().get::<Principal>() {
        let md = r.metadata_mut();
        let join = |v: &[String]| v.join(",");
        let roles: Vec<String> = p.roles.iter().map(|r| r.as_str().to_string()).collect();
        let headers = match p.source {
            Source::Token => vec![],
            Source::Anonymous => vec![(PRINCIPAL_HEADER, p.name.clone())],
            Source::Cert | Source::Forwarded { .. } => vec![
                (PRINCIPAL_HEADER, p.name.clone()),
                (PRINCIPAL_ROLES_HEADER, join(&roles)),
                (PRINCIPAL_SERVICES_HEADER, join(&p.services)),
                (PRINCIPAL_REGIONS_HEADER, join(&p.regions)),
            ],
        };
        for (k, v) in headers {
            if let Ok(v) = MetadataValue::try_from(v.as_str()) {
                md.insert(k, v);
            }
        }
    }
    r.metadata_mut()
        .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    r
}

/// What a principal below operator sees instead of a health-check target, a webhook URL or
/// a probe's output (they name internal endpoints and can leak what those return).
pub const REDACTED: &str = "<redacted: needs the operator role>";

/// A service as a principal may see it: health targets, webhook URLs and probe details
/// only for operators and admins.
pub fn redact_service(
    mut s: crate::proto::ServiceStatus,
    internals: bool,
) -> crate::proto::ServiceStatus {
    if internals {
        return s;
    }
    if let Some(spec) = s.spec.as_mut() {
        for check in spec.health.values_mut() {
            check.target = REDACTED.to_string();
        }
        for plan in spec.plans.values_mut() {
            for step in &mut plan.steps {
                if !step.url.is_empty() {
                    step.url = REDACTED.to_string();
                }
            }
        }
    }
    for o in &mut s.observations {
        o.detail = REDACTED.to_string();
    }
    s
}

/// A workflow run as a principal may see it: what a webhook step said (it names the URL)
/// only for operators and admins.
pub fn redact_run(mut w: crate::proto::Workflow, internals: bool) -> crate::proto::Workflow {
    if internals {
        return w;
    }
    let mut webhook_failed = false;
    for step in &mut w.steps {
        if step.kind == "webhook" && !step.detail.is_empty() {
            webhook_failed |= step.state == "failed";
            step.detail = REDACTED.to_string();
        }
    }
    if webhook_failed && w.error.contains("webhook ") {
        w.error = REDACTED.to_string();
    }
    w
}

/// Maps a state-machine refusal to a gRPC status.
pub fn rejection_status(r: &Rejection) -> Status {
    let code = match r {
        Rejection::UnknownService(_) => Code::NotFound,
        Rejection::UnknownRegion { .. } | Rejection::Invalid(_) => Code::InvalidArgument,
        Rejection::NotAllowed { .. }
        | Rejection::TokenMismatch { .. }
        | Rejection::WrongState(_) => Code::FailedPrecondition,
        Rejection::Forbidden(_) => Code::PermissionDenied,
    };
    if let Rejection::TokenMismatch {
        service,
        expected,
        actual,
    } = r
    {
        return crate::wire::token_mismatch(service, *expected, *actual, r.to_string());
    }
    Status::new(code, r.to_string())
}

#[cfg(test)]
mod redaction_tests {
    use super::*;
    use crate::proto;

    #[test]
    fn targets_urls_and_probe_details_are_hidden_below_operator() {
        let mut spec = proto::ServiceSpec::default();
        spec.health.insert(
            "us-east".into(),
            proto::HealthCheck {
                target: "http://10.0.0.1/internal".into(),
                ..Default::default()
            },
        );
        spec.plans.insert(
            "switchover".into(),
            proto::Plan {
                steps: vec![proto::PlanStep {
                    kind: "webhook".into(),
                    url: "http://hook.internal/x".into(),
                    ..Default::default()
                }],
            },
        );
        let s = proto::ServiceStatus {
            spec: Some(spec),
            observations: vec![proto::HealthObservation {
                detail: "HTTP 500: secret body".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(redact_service(s.clone(), true), s);
        let text = format!("{:?}", redact_service(s, false));
        for secret in ["10.0.0.1", "hook.internal", "secret body"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let run = proto::Workflow {
            steps: vec![proto::WorkflowStep {
                kind: "webhook".into(),
                state: "failed".into(),
                detail: "webhook http://hook.internal/x: refused".into(),
                ..Default::default()
            }],
            error: "webhook http://hook.internal/x: refused".into(),
            ..Default::default()
        };
        assert_eq!(redact_run(run.clone(), true), run);
        assert!(!format!("{:?}", redact_run(run, false)).contains("hook.internal"));
    }
}
