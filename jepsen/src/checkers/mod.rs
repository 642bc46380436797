//! Checkers: each reads a [`History`] and returns a [`Verdict`] for one invariant of
//! `DESIGN.md`. They are pure functions of the history (and of [`CheckConfig`]), so
//! `baton-jepsen check <run-dir>` reproduces a run's verdicts exactly.
//!
//! Every checker is written to have no false positives under the documented recording
//! rules (README: "What the workload must record"): an anomaly is a proof that the system
//! violated the invariant, or that the history broke a recording rule (which is reported as
//! such, because a checker that cannot see cannot vouch).

pub mod durability;
pub mod fence;
pub mod lease_timing;
pub mod linearizability;
pub mod liveness;
pub mod primaries;
pub mod tokens;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::history::History;

/// One checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Checker name.
    pub name: String,
    /// True when no anomaly was found.
    pub valid: bool,
    /// How many operations or events the checker examined.
    pub checked_ops: usize,
    /// What went wrong, one JSON object per anomaly, each with a `kind`.
    pub anomalies: Vec<serde_json::Value>,
    /// Why the checker did not apply (e.g. lease timing under clock faults), if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Verdict {
    /// A verdict whose validity follows from its anomalies. A checker that examined
    /// nothing cannot vouch for anything: zero `checked_ops` is a `nothing-checked`
    /// anomaly (the workload did not record what the checker needs).
    pub fn new(name: &str, checked_ops: usize, mut anomalies: Vec<serde_json::Value>) -> Self {
        if checked_ops == 0 {
            anomalies.push(serde_json::json!({
                "kind": "nothing-checked",
                "why": "the checker examined no operation: the history lacks what it judges",
            }));
        }
        Self {
            name: name.to_string(),
            valid: anomalies.is_empty(),
            checked_ops,
            anomalies,
            skipped: None,
        }
    }

    /// A checker that did not apply to this run; valid, with the reason recorded.
    pub fn skipped(name: &str, why: &str) -> Self {
        Self {
            name: name.to_string(),
            valid: true,
            checked_ops: 0,
            anomalies: Vec::new(),
            skipped: Some(why.to_string()),
        }
    }

    /// Anomaly kinds, for tests and summaries.
    pub fn kinds(&self) -> Vec<String> {
        self.anomalies
            .iter()
            .filter_map(|a| a.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .collect()
    }
}

/// Parameters the checkers need beyond the history.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// Automatic failover was on: the register may change by grants no client asked for.
    pub automation: bool,
    /// Lease TTL (ms) when the renewals do not carry one.
    pub lease_ttl_ms: u64,
    /// Drift margin fraction: a holder trusts its lease for TTL·(1−drift).
    pub drift: f64,
    /// Safety margin (ms) agents subtract from their validity.
    pub margin_ms: u64,
    /// Liveness bound after the last fault heals (ms).
    pub liveness_bound_ms: u64,
    /// At most this many anomalies are reported per checker (and per service in the
    /// linearizability checker); the rest are counted.
    pub max_anomalies: usize,
    /// Give up on a service's linearizability search beyond this many configurations (an
    /// explicit `search-budget-exceeded` anomaly, never a silent pass).
    pub max_configs: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            automation: false,
            lease_ttl_ms: 5_000,
            drift: 0.05,
            margin_ms: 50,
            liveness_bound_ms: 30_000,
            max_anomalies: 20,
            max_configs: 200_000,
        }
    }
}

impl CheckConfig {
    /// Defaults overridden by the run's `meta` record, when it has one.
    pub fn from_history(h: &History) -> Self {
        let mut c = Self::default();
        if let Some(m) = h.meta() {
            c.automation = m.automation;
            c.lease_ttl_ms = m.lease_ttl_ms;
            c.drift = m.drift;
            c.margin_ms = m.margin_ms;
            c.liveness_bound_ms = m.liveness_bound_ms;
        }
        c
    }
}

/// Runs every checker.
pub fn check_all(h: &History, cfg: &CheckConfig) -> Vec<Verdict> {
    vec![
        linearizability::check(h, cfg),
        tokens::check(h, cfg),
        fence::check(h, cfg),
        watch::check(h, cfg),
        durability::check(h, cfg),
        liveness::check(h, cfg),
        lease_timing::check(h, cfg),
        primaries::check(h, cfg),
    ]
}

/// Keeps at most `max` anomalies and appends a summary of how many were dropped.
pub(crate) fn cap(mut anomalies: Vec<serde_json::Value>, max: usize) -> Vec<serde_json::Value> {
    if anomalies.len() > max {
        let dropped = anomalies.len() - max;
        anomalies.truncate(max);
        anomalies.push(serde_json::json!({ "kind": "more-anomalies", "count": dropped }));
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checker_that_examined_nothing_fails() {
        let v = Verdict::new("x", 0, Vec::new());
        assert!(!v.valid);
        assert_eq!(v.kinds(), vec!["nothing-checked"]);
        assert!(Verdict::new("x", 1, Vec::new()).valid);
        // Every checker, given a history with nothing to judge, fails. Liveness counts
        // the conditions it judged (never zero); they fail on an empty history.
        let verdicts = check_all(&History::default(), &CheckConfig::default());
        assert_eq!(verdicts.len(), 8);
        for v in verdicts {
            assert!(!v.valid, "{} passed an empty history", v.name);
            if v.name == liveness::NAME {
                continue;
            }
            assert!(
                v.kinds().contains(&"nothing-checked".to_string()),
                "{}: {:?}",
                v.name,
                v.anomalies
            );
        }
    }
}

/// Builders of small histories for the checkers' unit tests.
#[cfg(test)]
pub(crate) mod testkit {
    use crate::history::*;

    /// Accumulates records with explicit times.
    #[derive(Default)]
    pub struct H {
        pub recs: Vec<Record>,
        next_id: u64,
    }

    impl H {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn at(&mut self, t: u64, event: Event) -> &mut Self {
            self.recs.push(Record { t, event });
            self
        }

        pub fn history(&self) -> History {
            let mut recs = self.recs.clone();
            recs.sort_by_key(|r| r.t);
            History::new(recs)
        }

        fn op(&mut self, process: &str, t0: u64, call: Call, t1: u64, end: Option<Event>) -> u64 {
            self.next_id += 1;
            let id = self.next_id;
            self.at(
                t0,
                Event::Invoke {
                    id,
                    process: process.into(),
                    node: Some(1),
                    op: call,
                },
            );
            if let Some(mut e) = end {
                match &mut e {
                    Event::Ok { id: i, .. }
                    | Event::Fail { id: i, .. }
                    | Event::Info { id: i, .. } => *i = id,
                    _ => unreachable!(),
                }
                self.at(t1, e);
            }
            id
        }

        /// A linearizable read of `svc` returning `lease`.
        pub fn read(&mut self, p: &str, t0: u64, t1: u64, svc: &str, lease: LeaseObs) -> u64 {
            self.read_ext(p, t0, t1, svc, lease, false)
        }

        pub fn read_ext(
            &mut self,
            p: &str,
            t0: u64,
            t1: u64,
            svc: &str,
            lease: LeaseObs,
            final_read: bool,
        ) -> u64 {
            let node_revision = lease.revision;
            self.op(
                p,
                t0,
                Call::GetPrimary {
                    service: svc.into(),
                    consistency: Consistency::Linearizable,
                    final_read,
                },
                t1,
                Some(Event::Ok {
                    id: 0,
                    result: OpResult::GetPrimary {
                        lease,
                        node_revision,
                        served_by: Some(1),
                        linearizable: true,
                    },
                }),
            )
        }

        /// A read that failed.
        pub fn read_fail(&mut self, p: &str, t0: u64, t1: u64, svc: &str) -> u64 {
            self.op(
                p,
                t0,
                Call::GetPrimary {
                    service: svc.into(),
                    consistency: Consistency::Linearizable,
                    final_read: false,
                },
                t1,
                Some(Event::Fail {
                    id: 0,
                    error: "unavailable".into(),
                }),
            )
        }

        /// An ok failover to `to` with `expected`, answering `lease`.
        #[allow(clippy::too_many_arguments)]
        pub fn failover(
            &mut self,
            p: &str,
            t0: u64,
            t1: u64,
            svc: &str,
            to: &str,
            expected: u64,
            lease: LeaseObs,
        ) -> u64 {
            self.op(
                p,
                t0,
                Call::Failover {
                    service: svc.into(),
                    to_region: to.into(),
                    expected_token: expected,
                },
                t1,
                Some(Event::Ok {
                    id: 0,
                    result: OpResult::Failover {
                        lease,
                        fenced_by: None,
                    },
                }),
            )
        }

        /// A failover with unknown outcome.
        pub fn failover_info(
            &mut self,
            p: &str,
            t0: u64,
            t1: u64,
            svc: &str,
            to: &str,
            expected: u64,
        ) -> u64 {
            self.op(
                p,
                t0,
                Call::Failover {
                    service: svc.into(),
                    to_region: to.into(),
                    expected_token: expected,
                },
                t1,
                Some(Event::Info {
                    id: 0,
                    error: "deadline exceeded".into(),
                }),
            )
        }

        /// A validate_token call answering `validity` against `lease`.
        #[allow(clippy::too_many_arguments)]
        pub fn validate(
            &mut self,
            p: &str,
            t0: u64,
            t1: u64,
            svc: &str,
            token: u64,
            validity: Validity,
            lease: LeaseObs,
        ) -> u64 {
            self.op(
                p,
                t0,
                Call::ValidateToken {
                    service: svc.into(),
                    token,
                    consistency: Consistency::Linearizable,
                },
                t1,
                Some(Event::Ok {
                    id: 0,
                    result: OpResult::ValidateToken { validity, lease },
                }),
            )
        }

        pub fn nemesis(&mut self, family: &str, start: u64, stop: u64) -> &mut Self {
            let detail = serde_json::json!({ "test": true });
            self.at(
                start,
                Event::NemesisStart {
                    family: family.into(),
                    detail: detail.clone(),
                },
            );
            self.at(
                stop,
                Event::NemesisStop {
                    family: family.into(),
                    detail,
                },
            )
        }

        pub fn watch_event(
            &mut self,
            t: u64,
            watcher: &str,
            svc: &str,
            revision: u64,
            kind: WatchKind,
            lease: LeaseObs,
        ) -> &mut Self {
            self.at(
                t,
                Event::WatchEvent {
                    watcher: watcher.into(),
                    node: 1,
                    service: svc.into(),
                    revision,
                    kind,
                    lease,
                },
            )
        }

        pub fn watch_started(&mut self, t: u64, watcher: &str, svc: &str, start: u64) -> &mut Self {
            self.at(
                t,
                Event::WatchStarted {
                    watcher: watcher.into(),
                    node: 1,
                    services: vec![svc.into()],
                    start_revision: start,
                },
            )
        }
    }

    pub fn held(region: &str, token: u64, revision: u64) -> LeaseObs {
        LeaseObs::held(region, token, revision)
    }

    pub fn revoking(region: &str, token: u64, revision: u64) -> LeaseObs {
        LeaseObs {
            state: LeaseStateRec::Revoking,
            ..LeaseObs::held(region, token, revision)
        }
    }

    pub fn vacant(token: u64, revision: u64) -> LeaseObs {
        LeaseObs {
            region: None,
            token,
            revision,
            state: LeaseStateRec::Vacant,
            mode: None,
        }
    }
}
