//! Per (service, region) streaks of probe results from one vantage node, with hysteresis.
//!
//! Pure: no I/O, no clocks. A region becomes failing from this vantage after `threshold`
//! consecutive failures, and healthy again only after `threshold` consecutive successes, so
//! a flapping endpoint does not flap the verdict. An [`Observation`] comes out only when the
//! verdict changes: those are what gets committed to Raft; single probe results never are.
//!
//! A new tracker knows no verdict: the first verdict reached (healthy *or* failing) is
//! emitted. That way a node that restarts re-states what it sees, and a stale "failing" it
//! committed before it went down is corrected even if the region recovered meanwhile.
//! [`StreakTracker::seed`] sets the starting verdict from the replicated state instead, to
//! skip the redundant first commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A change of one vantage node's verdict about one region's health for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The service.
    pub service: String,
    /// The region whose endpoint was probed.
    pub region: String,
    /// The region of the node that probed.
    pub vantage_region: String,
    /// The Raft node id of the node that probed.
    pub vantage_node: u64,
    /// The new verdict.
    pub healthy: bool,
    /// Why, for people: the last probe's detail and the streak length,
    /// e.g. `HTTP 503 (3 failures in a row)`.
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
struct Streak {
    /// The current verdict; `None` until the first `threshold` equal results.
    verdict: Option<bool>,
    /// The result of the current run of equal results.
    run_ok: bool,
    /// The length of the current run.
    run_len: u32,
    /// The last observation emitted (or seeded), for reconciliation with Raft.
    last: Option<Observation>,
}

/// Tracks consecutive probe results per (service, region) for one vantage node.
#[derive(Debug, Clone)]
pub struct StreakTracker {
    vantage_node: u64,
    vantage_region: String,
    streaks: BTreeMap<(String, String), Streak>,
}

impl StreakTracker {
    /// A tracker for the node `vantage_node` in `vantage_region`.
    pub fn new(vantage_node: u64, vantage_region: impl Into<String>) -> Self {
        Self {
            vantage_node,
            vantage_region: vantage_region.into(),
            streaks: BTreeMap::new(),
        }
    }

    /// Records one probe result; returns an observation when the verdict changes.
    ///
    /// `threshold` is the check's current threshold (0 is treated as 1); `detail` is the
    /// probe's detail.
    pub fn record(
        &mut self,
        service: &str,
        region: &str,
        threshold: u32,
        ok: bool,
        detail: &str,
    ) -> Option<Observation> {
        let threshold = threshold.max(1);
        let streak = self
            .streaks
            .entry((service.to_string(), region.to_string()))
            .or_default();
        if streak.run_len > 0 && streak.run_ok == ok {
            streak.run_len = streak.run_len.saturating_add(1);
        } else {
            streak.run_ok = ok;
            streak.run_len = 1;
        }
        // `>=` rather than `==`: the threshold may have been lowered under a running streak.
        if streak.run_len < threshold || streak.verdict == Some(ok) {
            return None;
        }
        streak.verdict = Some(ok);
        let what = if ok { "successes" } else { "failures" };
        let observation = Observation {
            service: service.to_string(),
            region: region.to_string(),
            vantage_region: self.vantage_region.clone(),
            vantage_node: self.vantage_node,
            healthy: ok,
            detail: format!("{detail} ({} {what} in a row)", streak.run_len),
        };
        streak.last = Some(observation.clone());
        Some(observation)
    }

    /// Sets the starting verdict (from the replicated state), so the first matching streak
    /// emits nothing. Keeps any run in progress.
    pub fn seed(&mut self, service: &str, region: &str, healthy: bool, detail: &str) {
        let streak = self
            .streaks
            .entry((service.to_string(), region.to_string()))
            .or_default();
        streak.verdict = Some(healthy);
        streak.last = Some(Observation {
            service: service.to_string(),
            region: region.to_string(),
            vantage_region: self.vantage_region.clone(),
            vantage_node: self.vantage_node,
            healthy,
            detail: detail.to_string(),
        });
    }

    /// Forgets the run in progress but keeps the verdict: used when a check's target or
    /// settings change, so results of the old check do not count toward the new one.
    pub fn reset_run(&mut self, service: &str, region: &str) {
        if let Some(streak) = self
            .streaks
            .get_mut(&(service.to_string(), region.to_string()))
        {
            streak.run_len = 0;
        }
    }

    /// Forgets everything about (service, region): its check was removed.
    pub fn forget(&mut self, service: &str, region: &str) {
        self.streaks
            .remove(&(service.to_string(), region.to_string()));
    }

    /// This vantage's current verdict: `Some(true)` healthy, `Some(false)` failing, `None`
    /// not yet known.
    pub fn verdict(&self, service: &str, region: &str) -> Option<bool> {
        self.streaks
            .get(&(service.to_string(), region.to_string()))
            .and_then(|s| s.verdict)
    }

    /// The last observation per (service, region) that has a verdict.
    pub fn current(&self) -> impl Iterator<Item = &Observation> {
        self.streaks.values().filter_map(|s| s.last.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut StreakTracker, results: &[bool]) -> Vec<Option<bool>> {
        results
            .iter()
            .map(|&ok| {
                t.record(
                    "payments",
                    "us-east",
                    3,
                    ok,
                    if ok { "HTTP 200" } else { "HTTP 503" },
                )
                .map(|o| o.healthy)
            })
            .collect()
    }

    #[test]
    fn first_verdict_needs_threshold_equal_results() {
        let mut t = StreakTracker::new(7, "eu-west");
        assert_eq!(t.verdict("payments", "us-east"), None);
        assert_eq!(feed(&mut t, &[true, true]), vec![None, None]);
        let o = t
            .record("payments", "us-east", 3, true, "HTTP 200")
            .expect("third success establishes the verdict");
        assert_eq!(
            o,
            Observation {
                service: "payments".into(),
                region: "us-east".into(),
                vantage_region: "eu-west".into(),
                vantage_node: 7,
                healthy: true,
                detail: "HTTP 200 (3 successes in a row)".into(),
            }
        );
        assert_eq!(t.verdict("payments", "us-east"), Some(true));
    }

    #[test]
    fn hysteresis_in_both_directions() {
        let mut t = StreakTracker::new(1, "us-east");
        feed(&mut t, &[true, true, true]);
        // Never three failures in a row: no change.
        assert_eq!(
            feed(&mut t, &[false, false, true, false, false, true]),
            vec![None; 6]
        );
        assert_eq!(t.verdict("payments", "us-east"), Some(true));
        // The third consecutive failure flips it, once.
        assert_eq!(
            feed(&mut t, &[false, false, false, false]),
            vec![None, None, Some(false), None]
        );
        // Recovery needs three successes in a row as well.
        assert_eq!(
            feed(&mut t, &[true, true, false, true, true, true, true]),
            vec![None, None, None, None, None, Some(true), None]
        );
    }

    #[test]
    fn failing_observation_carries_the_last_detail() {
        let mut t = StreakTracker::new(1, "us-east");
        t.record("s", "r", 2, false, "connect refused");
        let o = t.record("s", "r", 2, false, "timeout after 500ms").unwrap();
        assert!(!o.healthy);
        assert_eq!(o.detail, "timeout after 500ms (2 failures in a row)");
    }

    #[test]
    fn threshold_one_and_zero_react_to_every_change() {
        let mut t = StreakTracker::new(1, "us-east");
        for threshold in [1, 0] {
            assert!(t.record("s", "r", threshold, false, "x").is_some());
            assert!(t.record("s", "r", threshold, false, "x").is_none());
            assert!(t.record("s", "r", threshold, true, "y").is_some());
        }
    }

    #[test]
    fn keys_are_independent() {
        let mut t = StreakTracker::new(1, "us-east");
        assert!(t.record("a", "r1", 2, false, "x").is_none());
        assert!(t.record("a", "r2", 2, false, "x").is_none());
        assert!(t.record("b", "r1", 2, false, "x").is_none());
        assert!(t.record("a", "r1", 2, false, "x").is_some());
        assert_eq!(t.verdict("a", "r2"), None);
        assert_eq!(t.current().count(), 1);
    }

    #[test]
    fn seed_suppresses_the_redundant_first_commit() {
        let mut t = StreakTracker::new(1, "us-east");
        t.seed("s", "r", false, "from raft");
        assert!(t.record("s", "r", 2, false, "x").is_none());
        assert!(t.record("s", "r", 2, false, "x").is_none());
        assert!(t.record("s", "r", 2, true, "ok").is_none());
        assert!(t.record("s", "r", 2, true, "ok").unwrap().healthy);
    }

    #[test]
    fn reset_run_keeps_the_verdict_and_forget_drops_it() {
        let mut t = StreakTracker::new(1, "us-east");
        t.record("s", "r", 2, false, "x");
        t.record("s", "r", 2, false, "x");
        t.record("s", "r", 2, true, "ok");
        t.reset_run("s", "r");
        // The success before the reset does not count.
        assert!(t.record("s", "r", 2, true, "ok").is_none());
        assert_eq!(t.verdict("s", "r"), Some(false));
        assert!(t.record("s", "r", 2, true, "ok").is_some());
        t.forget("s", "r");
        assert_eq!(t.verdict("s", "r"), None);
        assert_eq!(t.current().count(), 0);
    }
}
