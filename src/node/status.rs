//! The live status page of the admin listener: `GET /` (one self-contained page: HTML, CSS
//! and vanilla JS compiled into the binary, no external URL), `GET /status.json` (a
//! [`Snapshot`]) and `GET /events` (server-sent events: a fresh snapshot whenever this node
//! applies an entry — lease changes, run steps, health observations — or its Raft view
//! changes — leader, term, membership, replication — plus a heartbeat).
//!
//! Every node serves it from its own applied state, so a follower's page shows what that
//! follower knows, says which node it is and names the leader. The page builds its DOM
//! with `textContent` only: names and reasons come from users and are never parsed as HTML.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::typ::ServerState;
use futures::Stream;
use hyper::body::{Bytes, Frame};
use serde::Serialize;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::api::Ctx;
use crate::control::policy::{region_health, Health};
use crate::raft::voters;
use crate::raft::Metrics as RaftMetrics;
use crate::state::{Event, EventKind, LeaseMode, LeaseState, Run, RunKind, State, Trigger};

/// Most `/events` streams open at once on one node; beyond, 503 (each holds a connection
/// and renders a snapshot per change).
pub const MAX_SSE_CLIENTS: usize = 64;
/// Interval of the heartbeat event (the page reconnects when it hears nothing for 15 s).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Lease changes and runs kept on the timeline (newest first).
pub const TIMELINE_LEN: usize = 50;

const PAGE: &str = include_str!("status/page.html");
const STYLE: &str = include_str!("status/page.css");
const SCRIPT: &str = include_str!("status/page.js");

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// Its client address.
    pub addr: String,
    /// Voter (else learner).
    pub voter: bool,
    /// The leader as this node knows it.
    pub leader: bool,
    /// The node serving this snapshot.
    pub this: bool,
    /// Highest log index known replicated to it (the leader knows it for every member).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's log (known on the leader only).
    pub lag: Option<u64>,
}

/// The Raft view of the node serving the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    /// The leader this node knows, if any.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub applied: u64,
    /// Last log index.
    pub last_log: u64,
    /// Whether this node knows its state is current (see `Ctx::is_current`).
    pub current: bool,
    /// Every member, by id.
    pub members: Vec<Member>,
}

/// What one vantage node last reported about one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VantageReport {
    /// Reporting node.
    pub node: u64,
    /// Its region.
    pub vantage_region: String,
    /// Healthy from there?
    pub healthy: bool,
    /// What the probe said.
    pub detail: String,
    /// Leader time the observation was committed (ms since the epoch).
    pub at_ms: i64,
}

/// A region's health for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionHealthView {
    /// The region probed.
    pub region: String,
    /// `healthy`, `down` or `unknown` (no check, no report, split view).
    pub verdict: &'static str,
    /// Why, in words.
    pub explanation: String,
    /// Each vantage node's latest report.
    pub vantages: Vec<VantageReport>,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunView {
    /// Run id (log index of the entry that started it).
    pub id: u64,
    /// The service the entry is about.
    pub service: String,
    /// `failover`, `switchover` or `failback`.
    pub kind: &'static str,
    /// What started it.
    pub trigger: String,
    /// Holder when it started.
    pub from: Option<String>,
    /// Target region.
    pub to: String,
    /// Who started it.
    pub actor: String,
    /// The reason given (operator, automation or the audit entry).
    pub reason: String,
    /// `running`, `succeeded`, `failed`, `rejected`, `rolled-back`.
    pub state: &'static str,
    /// The step in progress, while running.
    pub step: Option<String>,
    /// Its position (1-based) and the number of steps.
    pub step_number: usize,
    /// Number of steps.
    pub steps: usize,
    /// Phase times (leader clock, ms since the epoch).
    pub detected_ms: Option<i64>,
    /// Run started.
    pub decided_ms: Option<i64>,
    /// Old holder fenced.
    pub fenced_ms: Option<i64>,
    /// Target granted.
    pub granted_ms: Option<i64>,
    /// Target's holding verified.
    pub verified_ms: Option<i64>,
    /// Run ended.
    pub finished_ms: Option<i64>,
    /// Time to detect: trigger observed → run decided.
    pub time_to_detect_ms: Option<i64>,
    /// Time to recover: detected (or decided) → verified (or granted).
    pub time_to_recover_ms: Option<i64>,
    /// Token granted by the run.
    pub token_after: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A service with its lease, health and run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// Regions in preference order.
    pub regions: Vec<String>,
    /// `held`, `revoking` or `vacant`.
    pub state: &'static str,
    /// Region holding (or, while revoking, last holding) the lease.
    pub holder: Option<String>,
    /// The region that may act as primary now.
    pub primary: Option<String>,
    /// Fencing token.
    pub token: u64,
    /// Revision of its last change.
    pub revision: u64,
    /// `read-write` or `read-only`.
    pub mode: &'static str,
    /// Automation frozen by an operator.
    pub frozen: bool,
    /// Why automation is paused by the flap limit.
    pub paused: Option<String>,
    /// Lease TTL.
    pub ttl_ms: u64,
    /// Leader time of the current grant.
    pub granted_ms: Option<i64>,
    /// The run in progress.
    pub run: Option<RunView>,
    /// Each region's health.
    pub health: Vec<RegionHealthView>,
}

/// One lease change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseChange {
    /// Revision (log index).
    pub revision: u64,
    /// The service the entry is about.
    pub service: String,
    /// `granted`, `revoking`, `vacated`, `mode-changed`, `service-put`, `service-deleted`,
    /// `freeze-changed`.
    pub kind: &'static str,
    /// Holder after the change.
    pub holder: Option<String>,
    /// Token after the change.
    pub token: u64,
    /// The reason given (operator, automation or the audit entry).
    pub reason: String,
    /// Leader time, where the state records it (grants).
    pub at_ms: Option<i64>,
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The serving node's Raft view.
    pub node: NodeFacts,
    /// Every region: the voters' and the services'.
    pub regions: Vec<String>,
    /// Revision of the last change.
    pub revision: u64,
    /// Every service, by name.
    pub services: Vec<ServiceView>,
    /// Recent lease changes, newest first.
    pub changes: Vec<LeaseChange>,
    /// Recent runs, newest first.
    pub runs: Vec<RunView>,
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// This node's Raft view from its metrics.
pub fn node_facts(
    cluster: &str,
    id: u64,
    region: &str,
    current: bool,
    m: &RaftMetrics,
) -> NodeFacts {
    let membership = m.membership_config.membership();
    let last_log = m.last_log_index.unwrap_or(0);
    let voter_ids: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(nid, info)| {
            // Only the leader tracks what each member has: a follower knows nothing of
            // its peers' logs.
            let matched = match m.replication.as_ref() {
                Some(_) if *nid == id => Some(last_log),
                Some(r) => r.get(nid).map(|l| l.map_or(0, |l| l.index)),
                None => None,
            };
            Member {
                id: *nid,
                region: info.region.clone(),
                addr: info.addr.clone(),
                voter: voter_ids.contains(nid),
                leader: m.current_leader == Some(*nid),
                this: *nid == id,
                matched,
                lag: matched.map(|x| last_log.saturating_sub(x)),
            }
        })
        .collect();
    NodeFacts {
        cluster: cluster.to_string(),
        id,
        region: region.to_string(),
        role: role(m.state),
        leader: m.current_leader,
        term: m.current_term,
        applied: m.last_applied.map_or(0, |l| l.index),
        last_log,
        current,
        members,
    }
}

fn between(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    Some((b? - a?).max(0))
}

fn run_view(r: &Run) -> RunView {
    let p = &r.phases;
    let step = r.current_step();
    RunView {
        id: r.id,
        service: r.service.clone(),
        kind: match r.kind {
            RunKind::Failover => "failover",
            RunKind::Switchover => "switchover",
            RunKind::Failback => "failback",
        },
        trigger: match &r.trigger {
            Trigger::Operator => "operator".into(),
            t => t.describe(),
        },
        from: r.from.clone(),
        to: r.to.clone(),
        actor: r.actor.clone(),
        reason: r.reason.clone(),
        state: r.state.as_str(),
        step: step.map(|s| s.spec.kind.name().to_string()),
        step_number: (r.current + 1).min(r.steps.len()),
        steps: r.steps.len(),
        detected_ms: p.detected_ms,
        decided_ms: p.decided_ms,
        fenced_ms: p.fenced_ms,
        granted_ms: p.granted_ms,
        verified_ms: p.verified_ms,
        finished_ms: r.finished_ms,
        // As `baton workflow` and the metrics count them.
        time_to_detect_ms: between(p.detected_ms, p.decided_ms),
        time_to_recover_ms: between(
            p.detected_ms.or(p.decided_ms),
            p.verified_ms.or(p.granted_ms),
        ),
        token_after: r.token_after,
        error: r.error.clone(),
    }
}

fn event_kind(k: EventKind) -> &'static str {
    match k {
        EventKind::Granted => "granted",
        EventKind::Revoking => "revoking",
        EventKind::Vacated => "vacated",
        EventKind::ModeChanged => "mode-changed",
        EventKind::ServicePut => "service-put",
        EventKind::ServiceDeleted => "service-deleted",
        EventKind::FreezeChanged => "freeze-changed",
    }
}

fn lease_change(revision: u64, e: &Event) -> LeaseChange {
    LeaseChange {
        revision,
        service: e.service.clone(),
        kind: event_kind(e.kind),
        holder: e.lease.holder.clone(),
        token: e.lease.token,
        reason: e.reason.clone(),
        at_ms: (e.kind == EventKind::Granted && e.lease.granted_at_ms > 0)
            .then_some(e.lease.granted_at_ms),
    }
}

/// The snapshot of `state` as seen by a node with `node` facts; `voters` (id -> region)
/// are the vantage points of health verdicts.
pub fn build(node: NodeFacts, state: &State, voters: &BTreeMap<u64, String>) -> Snapshot {
    let mut regions: Vec<String> = node.members.iter().map(|m| m.region.clone()).collect();
    let services: Vec<ServiceView> = state
        .services()
        .map(|rec| {
            regions.extend(rec.spec.regions.iter().cloned());
            let lease = &rec.lease;
            let health = rec
                .spec
                .regions
                .iter()
                .map(|region| {
                    let h = region_health(rec, region, voters);
                    RegionHealthView {
                        region: region.clone(),
                        verdict: match h.health {
                            Health::Healthy => "healthy",
                            Health::Down => "down",
                            Health::Unknown => "unknown",
                        },
                        explanation: h.explanation,
                        vantages: rec
                            .observations
                            .get(region)
                            .map(|by_node| {
                                by_node
                                    .iter()
                                    .map(|(n, o)| VantageReport {
                                        node: *n,
                                        vantage_region: o.vantage_region.clone(),
                                        healthy: o.healthy,
                                        detail: o.detail.clone(),
                                        at_ms: o.at_ms,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect();
            ServiceView {
                name: rec.spec.name.clone(),
                regions: rec.spec.regions.clone(),
                state: match lease.state {
                    LeaseState::Held => "held",
                    LeaseState::Revoking => "revoking",
                    LeaseState::Vacant => "vacant",
                },
                holder: lease.holder.clone(),
                primary: lease.primary().map(str::to_string),
                token: lease.token,
                revision: lease.revision,
                mode: match lease.mode {
                    LeaseMode::ReadWrite => "read-write",
                    LeaseMode::ReadOnly => "read-only",
                },
                frozen: rec.frozen,
                paused: rec.paused.clone(),
                ttl_ms: lease.ttl_ms,
                granted_ms: (lease.granted_at_ms > 0).then_some(lease.granted_at_ms),
                run: rec.active_run.and_then(|id| state.run(id)).map(run_view),
                health,
            }
        })
        .collect();
    regions.sort();
    regions.dedup();
    let changes = state
        .history()
        .recent(TIMELINE_LEN)
        .iter()
        .rev()
        .flat_map(|(rev, events)| events.iter().rev().map(|e| lease_change(*rev, e)))
        .take(TIMELINE_LEN)
        .collect();
    let runs = state
        .runs()
        .rev()
        .take(TIMELINE_LEN)
        .map(run_view)
        .collect();
    Snapshot {
        node,
        regions,
        revision: state.revision(),
        services,
        changes,
        runs,
    }
}

fn facts(ctx: &Ctx) -> NodeFacts {
    let m = ctx.raft.metrics().borrow().clone();
    node_facts(&ctx.cluster, ctx.id, &ctx.region, ctx.is_current(), &m)
}

/// The node's snapshot now.
pub fn snapshot(ctx: &Ctx) -> Snapshot {
    snapshot_with(ctx, facts(ctx))
}

fn snapshot_with(ctx: &Ctx, node: NodeFacts) -> Snapshot {
    let voters = voters(&ctx.raft);
    let shared = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
    build(node, &shared.state, &voters)
}

/// The snapshot as JSON.
pub fn to_json(s: &Snapshot) -> String {
    // Plain data with string keys: serialization cannot fail, but never panic on a request.
    serde_json::to_string(s).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot render the status: {e}") }).to_string()
    })
}

/// Escapes text for an HTML text node or a quoted attribute value.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Makes JSON safe inside `<script type="application/json">`: no `</script>`, no `<!--`, and
/// the two line separators JavaScript once treated as newlines. Still the same JSON value.
pub fn json_for_script(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The page with `snapshot` inlined, so it shows the state before `/events` connects.
pub fn page(snapshot: &Snapshot) -> String {
    let title = format!(
        "baton · node {} ({}) · {}",
        snapshot.node.id, snapshot.node.region, snapshot.node.cluster
    );
    // `{{initial}}` last: the snapshot may contain the other markers as text.
    PAGE.replace("{{title}}", &escape_html(&title))
        .replace("{{style}}", STYLE)
        .replace("{{script}}", SCRIPT)
        .replace("{{initial}}", &json_for_script(&to_json(snapshot)))
}

/// One server-sent event. The data is one line: JSON escapes every newline in strings.
pub fn sse_event(name: &str, data: &str) -> String {
    let mut out = format!("event: {name}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Admission of `/events` streams.
#[derive(Clone)]
pub struct SseSlots(Arc<Semaphore>);

impl SseSlots {
    /// At most `n` streams at once.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }

    /// A slot, or None when every slot is taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

impl Default for SseSlots {
    fn default() -> Self {
        Self::new(MAX_SSE_CLIENTS)
    }
}

/// What the stream waits on between events.
struct Feed {
    ctx: Arc<Ctx>,
    changes: broadcast::Receiver<crate::raft::Change>,
    metrics: tokio::sync::watch::Receiver<RaftMetrics>,
    heartbeat: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The facts and JSON last sent (facts compared first: rendering is the costly part).
    last: Option<(NodeFacts, String)>,
    _slot: OwnedSemaphorePermit,
}

/// Why the feed woke up.
enum Wake {
    Change,
    Beat,
    Stop,
}

impl Feed {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.last.is_none() {
                return Some(self.render());
            }
            let wake = tokio::select! {
                _ = self.shutdown.wait_for(|s| *s) => Wake::Stop,
                r = self.changes.recv() => match r {
                    Err(broadcast::error::RecvError::Closed) => Wake::Stop,
                    // Lagged: we only need to know something changed.
                    _ => Wake::Change,
                },
                r = self.metrics.changed() => if r.is_err() { Wake::Stop } else { Wake::Change },
                _ = self.heartbeat.tick() => Wake::Beat,
            };
            match wake {
                Wake::Stop => return None,
                Wake::Change => {
                    // The leader's metrics tick with every heartbeat: render only when
                    // something the page shows may have moved (any applied entry does).
                    let f = facts(&self.ctx);
                    if self.last.as_ref().is_some_and(|(lf, _)| *lf == f) {
                        continue;
                    }
                    if let Some(b) = self.render_if_changed(f) {
                        return Some(b);
                    }
                }
                Wake::Beat => {
                    let f = facts(&self.ctx);
                    if let Some(b) = self.render_if_changed(f) {
                        return Some(b);
                    }
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    return Some(Bytes::from(sse_event(
                        "heartbeat",
                        &format!("{{\"now_ms\":{now}}}"),
                    )));
                }
            }
        }
    }

    fn render(&mut self) -> Bytes {
        let f = facts(&self.ctx);
        let json = to_json(&snapshot_with(&self.ctx, f.clone()));
        // `retry` sets the browser's reconnect delay after a dropped stream.
        let out = format!("retry: 1000\n{}", sse_event("status", &json));
        self.last = Some((f, json));
        Bytes::from(out)
    }

    fn render_if_changed(&mut self, f: NodeFacts) -> Option<Bytes> {
        let json = to_json(&snapshot_with(&self.ctx, f.clone()));
        let same = self.last.as_ref().is_some_and(|(_, lj)| *lj == json);
        let out = (!same).then(|| Bytes::from(sse_event("status", &json)));
        self.last = Some((f, json));
        out
    }
}

/// The `/events` body: the current snapshot at once, then one per change, heartbeats in
/// between. Ends when the node stops; dropped (slot released) when the client goes.
pub fn events(
    ctx: Arc<Ctx>,
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the first snapshot is sent anyway.
    heartbeat.reset();
    let feed = Feed {
        changes: ctx.changes.subscribe(),
        metrics: ctx.raft.metrics(),
        shutdown: ctx.shutdown.clone(),
        ctx,
        heartbeat,
        last: None,
        _slot: slot,
    };
    futures::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next_frame().await?;
        Some((Ok(Frame::data(frame)), feed))
    })
}

#[cfg(test)]
mod tests;
