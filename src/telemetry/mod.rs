//! Prometheus metrics (`/metrics` on the admin listener), built with `prometheus-client`.
//!
//! Two kinds: counters and histograms that events update as they happen ([`Metrics`]:
//! requests by RPC and code, leader changes, workflow runs and their time to detect and to
//! recover), and gauges read from the node at scrape time ([`NodeView`]: Raft indexes, the
//! leader, each service's lease, renewal ages, open streams, health verdicts). Each scrape
//! builds one registry from both, so nothing is sampled on a timer.

pub mod rpc;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::{LeaseState, Run, RunState, State, Trigger};

/// Labels as name/value pairs.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The metrics that events update.
#[derive(Debug)]
pub struct Metrics {
    /// Requests by gRPC method and status code.
    pub requests: Family<Labels, Counter>,
    /// Time to the response headers, by gRPC method.
    pub latency: Family<Labels, Histogram>,
    /// Leader changes this node has seen.
    pub leader_changes: Counter,
    runs: Family<Labels, Counter>,
    detect: Histogram,
    recover: Histogram,
    /// Finished runs already counted (ids of runs the state still keeps).
    counted: Mutex<BTreeSet<u64>>,
    /// The last leader seen, for `leader_changes` (0: none).
    last_leader: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
            }),
            leader_changes: Counter::default(),
            runs: Family::default(),
            // Detection and recovery take from tens of milliseconds to minutes.
            detect: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            recover: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            counted: Mutex::new(BTreeSet::new()),
            last_leader: AtomicU64::new(0),
        }
    }

    /// Notes the leader this node currently knows (0: none); counts changes between leaders.
    pub fn observe_leader(&self, leader: u64) {
        let before = self.last_leader.swap(leader, Ordering::Relaxed);
        if leader != 0 && before != leader {
            self.leader_changes.inc();
        }
    }

    /// Counts the runs that finished since the last call, once each, and observes their
    /// time to detect (trigger observed → run decided) and to recover (detected or decided →
    /// new holder verified or granted).
    fn count_runs<'a>(&self, runs: impl Iterator<Item = &'a Run>) {
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = BTreeSet::new();
        for run in runs {
            kept.insert(run.id);
            if run.state == RunState::Running || counted.contains(&run.id) {
                continue;
            }
            counted.insert(run.id);
            let trigger = match run.trigger {
                Trigger::LeaseExpired => "lease_expired",
                Trigger::HealthDown(_) => "health_down",
                Trigger::Failback => "failback",
                Trigger::Operator => "operator",
            };
            self.runs
                .get_or_create(&labels(&[
                    ("kind", run.kind.as_str()),
                    ("trigger", trigger),
                    ("outcome", run.state.as_str()),
                ]))
                .inc();
            let p = &run.phases;
            if let (Some(d), Some(c)) = (p.detected_ms, p.decided_ms) {
                self.detect.observe(secs(c - d));
            }
            let start = p.detected_ms.or(p.decided_ms);
            let end = p.verified_ms.or(p.granted_ms);
            if let (Some(s), Some(e), RunState::Succeeded) = (start, end, run.state) {
                self.recover.observe(secs(e - s));
            }
        }
        // Forget runs the state no longer keeps: the set stays as small as the run history.
        counted.retain(|id| kept.contains(id));
    }
}

fn secs(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// What a scrape reads from the node.
#[derive(Debug, Default)]
pub struct NodeView {
    /// This node's id and region.
    pub id: u64,
    /// This node's region.
    pub region: String,
    /// Raft term.
    pub term: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Highest log index known committed.
    pub committed: u64,
    /// Highest log index applied to the state.
    pub applied: u64,
    /// Last log index.
    pub last_log: u64,
    /// Upper bound on how stale this node's state may be, in ms (None: unknown).
    pub staleness_ms: Option<u64>,
    /// Seconds since the last renewal the leader accepted, per service (leader only).
    pub renewal_age: Vec<(String, f64)>,
    /// Open watch streams.
    pub watchers: usize,
    /// Open KeepAlive streams.
    pub keepalive_streams: usize,
}

/// Renders every metric in the OpenMetrics text format.
pub fn render(metrics: &Metrics, view: &NodeView, state: &State) -> String {
    metrics.count_runs(state.runs());
    let mut r = Registry::with_prefix("baton");
    let node = labels(&[("node", &view.id.to_string()), ("region", &view.region)]);

    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let info: Family<Labels, Gauge> = Family::default();
    info.get_or_create(&node).set(1);
    r.register("node", "This node (labels: its id and region)", info);
    r.register("raft_term", "Current Raft term", gauge(view.term as i64));
    r.register(
        "raft_leader",
        "Id of the leader this node knows (0: none)",
        gauge(view.leader as i64),
    );
    r.register(
        "raft_is_leader",
        "1 on the leader",
        gauge(i64::from(view.leader != 0 && view.leader == view.id)),
    );
    r.register(
        "raft_last_log_index",
        "Last index in this node's log",
        gauge(view.last_log as i64),
    );
    r.register(
        "raft_commit_index",
        "Highest log index known committed",
        gauge(view.committed as i64),
    );
    r.register(
        "raft_applied_index",
        "Highest log index applied to the state",
        gauge(view.applied as i64),
    );
    r.register(
        "raft_apply_lag",
        "Committed entries not applied yet",
        gauge(view.committed.saturating_sub(view.applied) as i64),
    );
    r.register(
        "raft_leader_changes",
        "Leader changes this node has seen",
        metrics.leader_changes.clone(),
    );
    r.register(
        "staleness_milliseconds",
        "Upper bound on how stale this node's state may be (-1: unknown, no leader contact)",
        gauge(
            view.staleness_ms
                .map_or(-1, |s| s.min(i64::MAX as u64) as i64),
        ),
    );

    let state_g: Family<Labels, Gauge> = Family::default();
    let token_g: Family<Labels, Gauge> = Family::default();
    let holder_g: Family<Labels, Gauge> = Family::default();
    let frozen_g: Family<Labels, Gauge> = Family::default();
    let health_g: Family<Labels, Gauge> = Family::default();
    for rec in state.services() {
        let name = rec.spec.name.as_str();
        for s in [LeaseState::Held, LeaseState::Revoking, LeaseState::Vacant] {
            let label = format!("{s:?}").to_lowercase();
            state_g
                .get_or_create(&labels(&[("service", name), ("state", &label)]))
                .set(i64::from(rec.lease.state == s));
        }
        token_g
            .get_or_create(&labels(&[("service", name)]))
            .set(rec.lease.token.min(i64::MAX as u64) as i64);
        if let Some(h) = rec.lease.holder.as_deref() {
            holder_g
                .get_or_create(&labels(&[("service", name), ("region", h)]))
                .set(1);
        }
        frozen_g
            .get_or_create(&labels(&[("service", name)]))
            .set(i64::from(rec.frozen));
        for (region, by_vantage) in &rec.observations {
            for obs in by_vantage.values() {
                health_g
                    .get_or_create(&labels(&[
                        ("service", name),
                        ("region", region),
                        ("vantage", &obs.vantage_region),
                    ]))
                    .set(i64::from(obs.healthy));
            }
        }
    }
    r.register(
        "lease_state",
        "1 for the state each service's lease is in",
        state_g,
    );
    r.register(
        "lease_token",
        "Each service's current fencing token",
        token_g,
    );
    r.register(
        "lease_holder",
        "1 for the region holding each service's lease",
        holder_g,
    );
    r.register(
        "service_frozen",
        "1 while automation is paused for the service",
        frozen_g,
    );
    r.register(
        "health_healthy",
        "The last committed health observation of each region, by vantage region (1 healthy)",
        health_g,
    );

    let age: Family<Labels, prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>> =
        Family::default();
    for (service, s) in &view.renewal_age {
        age.get_or_create(&labels(&[("service", service)])).set(*s);
    }
    r.register(
        "lease_last_renewal_seconds",
        "Seconds since the leader accepted a renewal of each held lease (leader only)",
        age,
    );
    r.register(
        "watchers_open",
        "Open Watch streams on this node",
        gauge(view.watchers as i64),
    );
    r.register(
        "keepalive_streams_open",
        "Open KeepAlive streams on this node",
        gauge(view.keepalive_streams as i64),
    );
    r.register(
        "workflow_runs",
        "Finished workflow runs by kind, trigger and outcome (as applied on this node)",
        metrics.runs.clone(),
    );
    r.register(
        "time_to_detect_seconds",
        "From a trigger's observation to the run that answers it",
        metrics.detect.clone(),
    );
    r.register(
        "time_to_recover_seconds",
        "From detection (or the decision) to the new holder granted and verified",
        metrics.recover.clone(),
    );
    r.register(
        "grpc_requests",
        "gRPC requests by method and status code (the code of the response headers)",
        metrics.requests.clone(),
    );
    r.register(
        "grpc_request_duration_seconds",
        "Time to the response headers by gRPC method",
        metrics.latency.clone(),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_labels() {
        let m = Metrics::new();
        m.observe_leader(1);
        m.observe_leader(1);
        m.observe_leader(2);
        let view = NodeView {
            id: 2,
            region: "eu-west".into(),
            term: 3,
            leader: 2,
            committed: 10,
            applied: 9,
            last_log: 10,
            renewal_age: vec![("payments".into(), 0.25)],
            ..NodeView::default()
        };
        let text = render(&m, &view, &State::new(100));
        for want in [
            "baton_raft_term 3",
            "baton_raft_is_leader 1",
            "baton_raft_apply_lag 1",
            "baton_raft_leader_changes_total 2",
            "baton_lease_last_renewal_seconds{service=\"payments\"} 0.25",
            "baton_node{node=\"2\",region=\"eu-west\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
