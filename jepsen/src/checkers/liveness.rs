//! Liveness after healing (invariant 6's other half: safety over liveness, but only while
//! faults last). Once the last fault stops, within `liveness_bound_ms`:
//!
//! - a linearizable read succeeds;
//! - if the workload fails over at all, a failover invoked after the heal succeeds;
//! - every watcher reaches the final revision of the services it watches, within the bound
//!   after both the heal and the moment that revision was first seen by anyone.
//!
//! Anomaly kinds: `no-read-after-heal`, `no-failover-after-heal`,
//! `no-failover-attempted-after-heal` (the workload stopped writing: liveness of writes was
//! not exercised), `watcher-not-converged`, `watcher-converged-late`,
//! `liveness-window-too-short` (the run ended before the bound elapsed and the check could
//! not succeed: a harness problem, reported so that it is never a silent pass).

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Call, Event, History, WatchKind};

/// Checker name in reports.
pub const NAME: &str = "liveness";

#[derive(Default)]
struct W {
    services: Option<HashSet<String>>,
    /// (time, position) each time the position grew.
    progress: Vec<(u64, u64)>,
}

/// Checks liveness after the last fault heals; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let heal = h.last_heal_ns();
    let bound = cfg.liveness_bound_ms * 1_000_000;
    let deadline = heal.saturating_add(bound);
    let end = h.end_ns();
    let ops = h.operations();
    let mut anomalies = Vec::new();
    let mut checked = 0;
    let short = end < deadline;

    let in_window = |o: &&crate::history::Operation| {
        o.invoke_ns >= heal && o.ok().is_some() && o.complete_ns.is_some_and(|c| c <= deadline)
    };
    let reads = ops
        .iter()
        .filter(|o| matches!(o.call, Call::GetPrimary { .. }) && o.call.is_linearizable());
    checked += 1;
    if !reads.clone().any(|o| in_window(&o)) {
        let first_ok = reads
            .filter(|o| o.invoke_ns >= heal && o.ok().is_some())
            .filter_map(|o| o.complete_ns)
            .min();
        anomalies.push(json!({
            "kind": if short && first_ok.is_none() { "liveness-window-too-short" } else { "no-read-after-heal" },
            "what": "linearizable read",
            "healed_at_ns": heal, "deadline_ns": deadline, "run_end_ns": end,
            "first_success_ns": first_ok,
        }));
    }

    let failovers: Vec<_> = ops
        .iter()
        .filter(|o| matches!(o.call, Call::Failover { .. }))
        .collect();
    if !failovers.is_empty() {
        checked += 1;
        let after: Vec<_> = failovers.iter().filter(|o| o.invoke_ns >= heal).collect();
        if after.is_empty() {
            anomalies.push(json!({
                "kind": "no-failover-attempted-after-heal", "healed_at_ns": heal,
            }));
        } else if !after.iter().any(|o| in_window(o)) {
            let first_ok = after
                .iter()
                .filter(|o| o.ok().is_some())
                .filter_map(|o| o.complete_ns)
                .min();
            anomalies.push(json!({
                "kind": if short && first_ok.is_none() { "liveness-window-too-short" } else { "no-failover-after-heal" },
                "what": "failover",
                "healed_at_ns": heal, "deadline_ns": deadline, "run_end_ns": end,
                "first_success_ns": first_ok,
            }));
        }
    }

    // Watchers: where each got to, and when each revision was first seen by anyone.
    let mut watchers: BTreeMap<String, W> = BTreeMap::new();
    let mut final_rev: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_seen: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut note = |svc: &str, rev: u64, t: u64, final_rev: &mut BTreeMap<String, u64>| {
        let f = final_rev.entry(svc.to_string()).or_insert(0);
        *f = (*f).max(rev);
        let e = first_seen.entry((svc.to_string(), rev)).or_insert(t);
        *e = (*e).min(t);
    };
    for r in &h.records {
        match &r.event {
            Event::WatchStarted {
                watcher, services, ..
            } => {
                let w = watchers.entry(watcher.clone()).or_default();
                w.services = (!services.is_empty()).then(|| services.iter().cloned().collect());
            }
            Event::WatchEvent {
                watcher,
                service,
                revision,
                kind,
                ..
            } => {
                let w = watchers.entry(watcher.clone()).or_default();
                let pos = w.progress.last().map(|p| p.1).unwrap_or(0);
                if *revision > pos {
                    w.progress.push((r.t, *revision));
                }
                if *kind != WatchKind::Snapshot {
                    note(service, *revision, r.t, &mut final_rev);
                }
            }
            Event::WatchProgress {
                watcher, revision, ..
            } => {
                let w = watchers.entry(watcher.clone()).or_default();
                let pos = w.progress.last().map(|p| p.1).unwrap_or(0);
                if *revision > pos {
                    w.progress.push((r.t, *revision));
                }
            }
            Event::NodeFinal { services, .. } => {
                for s in services {
                    note(&s.service, s.lease.revision, r.t, &mut final_rev);
                }
            }
            _ => {}
        }
    }
    for (name, w) in &watchers {
        checked += 1;
        let target = final_rev
            .iter()
            .filter(|(s, _)| w.services.as_ref().is_none_or(|set| set.contains(*s)))
            .map(|(s, r)| (s.clone(), *r))
            .max_by_key(|(_, r)| *r);
        let Some((svc, target)) = target else {
            continue;
        };
        if target == 0 {
            continue;
        }
        let seen = first_seen
            .get(&(svc.clone(), target))
            .copied()
            .unwrap_or(heal);
        let due = heal.max(seen).saturating_add(bound);
        match w.progress.iter().find(|(_, p)| *p >= target) {
            None => anomalies.push(json!({
                "kind": if end < due { "liveness-window-too-short" } else { "watcher-not-converged" },
                "watcher": name, "service": svc, "final_revision": target,
                "reached_revision": w.progress.last().map(|p| p.1).unwrap_or(0),
                "due_ns": due,
            })),
            Some(&(t, _)) if t > due => anomalies.push(json!({
                "kind": "watcher-converged-late", "watcher": name, "service": svc,
                "final_revision": target, "reached_at_ns": t, "due_ns": due,
            })),
            _ => {}
        }
    }
    Verdict::new(NAME, checked, cap(anomalies, cfg.max_anomalies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::*;
    use crate::history::WatchKind;

    const MS: u64 = 1_000_000;

    fn cfg() -> CheckConfig {
        CheckConfig {
            liveness_bound_ms: 1_000,
            ..CheckConfig::default()
        }
    }

    fn healthy() -> H {
        let mut h = H::new();
        h.nemesis("partition", 0, 100 * MS);
        h.watch_started(0, "w", "s", 0);
        h.watch_event(MS, "w", "s", 5, WatchKind::Snapshot, held("us", 5, 5));
        h.failover("c", 150 * MS, 300 * MS, "s", "eu", 5, held("eu", 9, 9));
        h.watch_event(310 * MS, "w", "s", 9, WatchKind::Granted, held("eu", 9, 9));
        h.read("c", 400 * MS, 410 * MS, "s", held("eu", 9, 9));
        h.read("c", 2_000 * MS, 2_010 * MS, "s", held("eu", 9, 9));
        h
    }

    #[test]
    fn recovery_within_the_bound_passes() {
        let v = check(&healthy().history(), &cfg());
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 3);
    }

    #[test]
    fn no_read_after_heal_fails() {
        let mut h = H::new();
        h.nemesis("partition", 0, 100 * MS);
        h.read("c", 10 * MS, 20 * MS, "s", held("us", 5, 5));
        h.read_fail("c", 200 * MS, 300 * MS, "s");
        h.read("c", 1_500 * MS, 1_600 * MS, "s", held("us", 5, 5));
        let v = check(&h.history(), &cfg());
        assert_eq!(v.kinds(), vec!["no-read-after-heal"]);
    }

    #[test]
    fn failover_never_succeeding_after_heal_fails() {
        let mut h = H::new();
        h.nemesis("partition", 0, 100 * MS);
        h.read("c", 150 * MS, 160 * MS, "s", held("us", 5, 5));
        h.failover_info("c", 170 * MS, 900 * MS, "s", "eu", 5);
        h.failover("c", 1_500 * MS, 1_600 * MS, "s", "eu", 5, held("eu", 9, 9));
        let v = check(&h.history(), &cfg());
        assert!(
            v.kinds().contains(&"no-failover-after-heal".to_string()),
            "{:?}",
            v.kinds()
        );
    }

    #[test]
    fn watcher_left_behind_fails() {
        let mut h = healthy();
        h.watch_started(0, "w2", "s", 0);
        h.watch_event(MS, "w2", "s", 5, WatchKind::Snapshot, held("us", 5, 5));
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["watcher-not-converged"]
        );
        let mut h = healthy();
        h.watch_started(0, "w2", "s", 0);
        h.watch_event(
            1_900 * MS,
            "w2",
            "s",
            9,
            WatchKind::Granted,
            held("eu", 9, 9),
        );
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["watcher-converged-late"]
        );
    }

    #[test]
    fn run_too_short_is_reported_not_passed() {
        let mut h = H::new();
        h.nemesis("kill", 0, 100 * MS);
        h.read_fail("c", 200 * MS, 300 * MS, "s");
        let v = check(&h.history(), &cfg());
        assert_eq!(v.kinds(), vec!["liveness-window-too-short"]);
    }
}
