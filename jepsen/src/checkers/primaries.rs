//! No two primaries (invariant 1), judged from what the real `baton agent` processes' hooks
//! did, not from the harness's own lease handles.
//!
//! A region is primary from the start of its `on_promote` hook (`hook` record `promote`)
//! until the end of its `on_demote` hook (`hook` record `demote`). A region whose role
//! never ended by a demote record is primary:
//! - until its agent was SIGKILLed (`agent_process` `killed`) or exited by itself, plus
//!   `TTL·(1−drift) − margin` (the longest it could still believe its lease valid; TTL is
//!   the largest the run used);
//! - otherwise until the end of the run, so it overlaps any later promotion of another
//!   region and is flagged: a role that never ends is not safe.
//!
//! Any instant covered by the intervals of two regions is a `two-primaries` anomaly, with
//! both regions, their tokens, the overlap in ms and whether an interval was closed by a
//! rule above rather than a demote record.

use std::collections::BTreeMap;

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Event, History};

/// Checker name in reports.
pub const NAME: &str = "primaries";

/// One region's time as primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Region.
    pub region: String,
    /// Token of the promote hook that started it.
    pub token: u64,
    /// Start of the promote hook.
    pub start: u64,
    /// End of the demote hook (or the rule's end).
    pub end: u64,
    /// How it ended: `demote`, `killed`, `exited` or `run-ended`.
    pub ended_by: &'static str,
}

/// The primary intervals of every region, in start order.
pub fn intervals(h: &History, cfg: &CheckConfig) -> Vec<Interval> {
    let ttl = h
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::TtlChanged { ttl_ms, .. } | Event::Renewed { ttl_ms, .. } => Some(*ttl_ms),
            _ => None,
        })
        .fold(cfg.lease_ttl_ms, u64::max);
    let believed = ((ttl as f64 * 1e6 * (1.0 - cfg.drift)).max(0.0) as u64)
        .saturating_sub(cfg.margin_ms * 1_000_000);
    let mut open: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut records: Vec<_> = h.records.iter().collect();
    records.sort_by_key(|r| r.t);
    for r in records {
        match &r.event {
            Event::Hook {
                region,
                event,
                token,
                ..
            } => match event.as_str() {
                "promote" => {
                    // Hooks alternate; a second promote without a demote keeps the earlier
                    // start (the role never ended in between).
                    open.entry(region.clone()).or_insert((r.t, *token));
                }
                "demote" => {
                    if let Some((start, token)) = open.remove(region) {
                        out.push(Interval {
                            region: region.clone(),
                            token,
                            start,
                            end: r.t,
                            ended_by: "demote",
                        });
                    }
                }
                _ => {}
            },
            Event::AgentProcess { region, action, .. }
                if action == "killed" || action == "exited" =>
            {
                if let Some((start, token)) = open.remove(region) {
                    out.push(Interval {
                        region: region.clone(),
                        token,
                        start,
                        end: r.t.saturating_add(believed).max(start),
                        ended_by: if action == "killed" {
                            "killed"
                        } else {
                            "exited"
                        },
                    });
                }
            }
            _ => {}
        }
    }
    let end = h.end_ns();
    for (region, (start, token)) in open {
        out.push(Interval {
            region,
            token,
            start,
            end: end.max(start),
            ended_by: "run-ended",
        });
    }
    out.sort_by_key(|i| (i.start, i.end));
    out
}

/// Checks that no two regions were primary at once; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let checked = h
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::Hook { .. }))
        .count();
    let iv = intervals(h, cfg);
    let mut anomalies = Vec::new();
    for (i, a) in iv.iter().enumerate() {
        for b in &iv[i + 1..] {
            if b.start >= a.end {
                // Sorted by start: no later interval starts before `a` ends either.
                break;
            }
            if a.region == b.region {
                continue;
            }
            let from = a.start.max(b.start);
            let to = a.end.min(b.end);
            if to > from {
                anomalies.push(json!({
                    "kind": "two-primaries",
                    "regions": [a.region, b.region],
                    "tokens": [a.token, b.token],
                    "overlap_ms": (to - from) as f64 / 1e6,
                    "from_ns": from,
                    "to_ns": to,
                    "intervals": [
                        {"region": a.region, "token": a.token, "start_ns": a.start, "end_ns": a.end, "ended_by": a.ended_by},
                        {"region": b.region, "token": b.token, "start_ns": b.start, "end_ns": b.end, "ended_by": b.ended_by},
                    ],
                }));
            }
        }
    }
    Verdict::new(NAME, checked, cap(anomalies, cfg.max_anomalies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::H;

    const MS: u64 = 1_000_000;

    fn hook(h: &mut H, t_ms: u64, region: &str, event: &str, token: u64) {
        h.at(
            t_ms * MS,
            Event::Hook {
                agent: format!("{region}-proc"),
                region: region.into(),
                service: "payments".into(),
                event: event.into(),
                token,
                realtime_ns: 0,
            },
        );
    }

    fn cfg() -> CheckConfig {
        CheckConfig {
            lease_ttl_ms: 2_000,
            drift: 0.05,
            margin_ms: 50,
            ..CheckConfig::default()
        }
    }

    #[test]
    fn overlapping_promotions_of_two_regions_fail() {
        let mut h = H::new();
        hook(&mut h, 100, "us-east", "promote", 3);
        hook(&mut h, 1_000, "eu-west", "promote", 9);
        hook(&mut h, 1_085, "us-east", "demote", 3);
        hook(&mut h, 5_000, "eu-west", "demote", 9);
        let v = check(&h.history(), &cfg());
        assert!(!v.valid);
        assert_eq!(v.kinds(), vec!["two-primaries"]);
        let a = &v.anomalies[0];
        assert_eq!(a["regions"], json!(["us-east", "eu-west"]));
        assert_eq!(a["tokens"], json!([3, 9]));
        assert_eq!(a["overlap_ms"], json!(85.0));
        assert_eq!(v.checked_ops, 4);
    }

    #[test]
    fn disjoint_intervals_pass() {
        let mut h = H::new();
        hook(&mut h, 100, "us-east", "promote", 3);
        hook(&mut h, 900, "us-east", "demote", 3);
        hook(&mut h, 1_000, "eu-west", "promote", 9);
        hook(&mut h, 2_000, "eu-west", "demote", 9);
        hook(&mut h, 2_000, "ap-south", "promote", 12);
        hook(&mut h, 3_000, "ap-south", "demote", 12);
        let v = check(&h.history(), &cfg());
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 6);
    }

    #[test]
    fn a_role_that_never_ends_overlaps_later_promotions() {
        let mut h = H::new();
        hook(&mut h, 100, "us-east", "promote", 3);
        hook(&mut h, 10_000, "eu-west", "promote", 9);
        hook(&mut h, 11_000, "eu-west", "demote", 9);
        let v = check(&h.history(), &cfg());
        assert_eq!(v.kinds(), vec!["two-primaries"]);
        assert_eq!(v.anomalies[0]["intervals"][0]["ended_by"], "run-ended");
    }

    #[test]
    fn a_killed_agent_is_primary_for_its_remaining_validity_only() {
        let kill = |h: &mut H, t_ms: u64| {
            h.at(
                t_ms * MS,
                Event::AgentProcess {
                    agent: "us-east-proc".into(),
                    region: "us-east".into(),
                    action: "killed".into(),
                    pid: 1,
                },
            );
        };
        // Killed at 1 s: believed valid for at most 2000·0.95 − 50 = 1850 ms more.
        let mut h = H::new();
        hook(&mut h, 100, "us-east", "promote", 3);
        kill(&mut h, 1_000);
        hook(&mut h, 2_900, "eu-west", "promote", 9);
        hook(&mut h, 4_000, "eu-west", "demote", 9);
        let v = check(&h.history(), &cfg());
        assert!(v.valid, "{:?}", v.anomalies);
        let mut h = H::new();
        hook(&mut h, 100, "us-east", "promote", 3);
        kill(&mut h, 1_000);
        hook(&mut h, 2_800, "eu-west", "promote", 9);
        hook(&mut h, 4_000, "eu-west", "demote", 9);
        let v = check(&h.history(), &cfg());
        assert_eq!(v.kinds(), vec!["two-primaries"]);
        assert_eq!(v.anomalies[0]["overlap_ms"], json!(50.0));
        assert_eq!(v.anomalies[0]["intervals"][0]["ended_by"], "killed");
    }

    #[test]
    fn no_hook_records_is_a_failure() {
        let v = check(&H::new().history(), &cfg());
        assert!(!v.valid);
        assert_eq!(v.kinds(), vec!["nothing-checked"]);
    }
}
