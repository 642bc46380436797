//! Watch guarantees (invariant 4), after etcd's robustness tests: ordered, unique,
//! reliable (no gap), atomic, identical across watchers, resumable, and no event that no
//! write explains.
//!
//! Each watcher's records are read in history order (its receive order). A watcher
//! *covers* a span of revisions: from its start (the snapshot's greatest lease revision, or
//! `start_revision − 1`) to the highest revision it has been sent or told about by a
//! progress notification. A disconnect followed by `watch_resumed` keeps the span open (the
//! resume must fill it); only an explicit compaction error (`watch_error` with
//! `compacted: true`) closes it, because that is the one gap the server may leave, and it
//! must say so. A watcher must have received every change of its services that any
//! watcher received inside its covered spans.
//!
//! Anomaly kinds:
//! - `out-of-order`: an event with a revision lower than one already received (or at or
//!   below the position a progress notification or the snapshot established);
//! - `duplicate`: the same (service, revision, kind) received twice by one watcher;
//! - `gap`: a change some watcher received is missing for another watcher that covered it;
//! - `divergent`: two observers (watchers, snapshots, client answers or nodes' final
//!   states) disagree on a service's lease at one revision;
//! - `non-atomic`: watchers received different sets of events for one revision;
//! - `unwatched-event`: an event for a service the watcher did not ask for;
//! - `grant-token-mismatch`: a GRANTED event whose token is not its revision (the token is
//!   the granting entry's log index), or any event whose token exceeds its revision;
//! - `unexplained-token`: an event carrying a token that no client ever saw and that the
//!   final state does not list as granted;
//! - `no-final-state`: no node's final state lists the service's tokens, so its events
//!   cannot be explained (a recording rule was broken).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Event, History, LeaseStateRec, Outcome, WatchKind};

/// Checker name in reports.
pub const NAME: &str = "watch";

type Content = (Option<String>, u64, LeaseStateRec);

#[derive(Default)]
struct Watcher {
    /// `None` = every service.
    services: Option<HashSet<String>>,
    /// Start of the open span (`None` while a snapshot is still arriving or before start).
    open_lo: Option<u64>,
    /// Greatest snapshot revision of the current start.
    snap_max: Option<u64>,
    /// Highest revision covered so far.
    position: u64,
    last_event_rev: u64,
    delivered: HashSet<(String, u64)>,
    /// Events received since the last (re)start from a snapshot: uniqueness is judged per
    /// epoch, because after an explicit compaction error the watcher starts over.
    epoch_seen: HashSet<(String, u64, WatchKind)>,
    kinds: HashMap<(String, u64), BTreeSet<WatchKind>>,
    spans: Vec<(u64, u64)>,
    started: bool,
}

impl Watcher {
    fn watches(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(service))
    }

    /// Opens the span once the snapshot (if any) is complete.
    fn settle(&mut self) {
        if self.open_lo.is_none() {
            if let Some(m) = self.snap_max.take() {
                self.open_lo = Some(m);
                self.position = self.position.max(m);
            }
        }
    }

    fn close(&mut self) {
        self.settle();
        if let Some(lo) = self.open_lo.take() {
            if self.position > lo {
                self.spans.push((lo, self.position));
            }
        }
    }

    fn open_at(&mut self, lo: u64) {
        self.close();
        self.open_lo = Some(lo);
        self.position = lo;
        self.last_event_rev = lo;
    }
}

/// Checks every watcher; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let mut anomalies = Vec::new();
    let mut watchers: BTreeMap<String, Watcher> = BTreeMap::new();
    let mut content: HashMap<(String, u64), (Content, serde_json::Value)> = HashMap::new();
    let mut union: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut checked = 0;

    let mut agree = |service: &str,
                     rev: u64,
                     c: Content,
                     src: serde_json::Value,
                     anomalies: &mut Vec<serde_json::Value>| {
        if rev == 0 {
            return;
        }
        match content.get(&(service.to_string(), rev)) {
            None => {
                content.insert((service.to_string(), rev), (c, src));
            }
            Some((first, first_src)) if *first != c => anomalies.push(json!({
                "kind": "divergent", "service": service, "revision": rev,
                "first": {"lease": first, "source": first_src},
                "second": {"lease": c, "source": src},
            })),
            _ => {}
        }
    };

    // Client reads pin the content of a revision too (the lease's own revision).
    for op in h.operations() {
        if let Outcome::Ok(r) = &op.outcome {
            let l = r.lease();
            let c = (l.region.clone(), l.token, l.state);
            agree(
                op.call.service(),
                l.revision,
                c,
                json!({"op": op.id}),
                &mut anomalies,
            );
        }
    }

    // So do the nodes' final states.
    for r in &h.records {
        if let Event::NodeFinal { node, services, .. } = &r.event {
            for s in services {
                let l = &s.lease;
                let c = (l.region.clone(), l.token, l.state);
                agree(
                    &s.service,
                    l.revision,
                    c,
                    json!({"final_state_of_node": node}),
                    &mut anomalies,
                );
            }
        }
    }

    for r in &h.records {
        match &r.event {
            Event::WatchStarted {
                watcher,
                services,
                start_revision,
                ..
            } => {
                checked += 1;
                let w = watchers.entry(watcher.clone()).or_default();
                w.close();
                w.started = true;
                w.services = if services.is_empty() {
                    None
                } else {
                    Some(services.iter().cloned().collect())
                };
                w.epoch_seen.clear();
                if *start_revision > 0 {
                    w.open_at(start_revision - 1);
                } else {
                    w.snap_max = Some(0);
                    w.position = 0;
                    w.last_event_rev = 0;
                }
            }
            Event::WatchResumed {
                watcher,
                from_revision,
                ..
            } => {
                checked += 1;
                let w = watchers.entry(watcher.clone()).or_default();
                w.settle();
                if w.open_lo.is_none() {
                    // After an explicit compaction error: a new span from the resume point.
                    w.open_at(from_revision.saturating_sub(1));
                } else {
                    // Same span: the resumed stream must continue where the old one stopped.
                    // Resuming further ahead than the position is the watcher's choice and
                    // leaves the gap checker to judge the skipped revisions.
                    w.position = w.position.max(from_revision.saturating_sub(1));
                }
            }
            Event::WatchError {
                watcher, compacted, ..
            } => {
                checked += 1;
                if *compacted {
                    watchers.entry(watcher.clone()).or_default().close();
                }
            }
            Event::WatchProgress {
                watcher, revision, ..
            } => {
                checked += 1;
                let w = watchers.entry(watcher.clone()).or_default();
                w.settle();
                w.position = w.position.max(*revision);
            }
            Event::WatchEvent {
                watcher,
                service,
                revision,
                kind,
                lease,
                ..
            } => {
                checked += 1;
                let c = (lease.region.clone(), lease.token, lease.state);
                let src = json!({"watcher": watcher, "kind": kind, "t": r.t});
                agree(service, *revision, c, src, &mut anomalies);
                let w = watchers.entry(watcher.clone()).or_default();
                if !w.watches(service) {
                    anomalies.push(json!({
                        "kind": "unwatched-event", "watcher": watcher, "service": service,
                        "revision": revision,
                    }));
                }
                if *kind == WatchKind::Snapshot {
                    if w.open_lo.is_none() {
                        let m = w.snap_max.get_or_insert(0);
                        *m = (*m).max(*revision);
                    }
                    continue;
                }
                w.settle();
                let rev = *revision;
                let duplicate = !w.epoch_seen.insert((service.clone(), rev, *kind));
                if duplicate {
                    anomalies.push(json!({
                        "kind": "duplicate", "watcher": watcher, "service": service,
                        "revision": rev, "event": kind, "t": r.t,
                    }));
                } else if rev < w.last_event_rev || (rev != w.last_event_rev && rev <= w.position) {
                    anomalies.push(json!({
                        "kind": "out-of-order", "watcher": watcher, "service": service,
                        "revision": rev, "after_revision": w.last_event_rev,
                        "position": w.position, "t": r.t,
                    }));
                }
                w.last_event_rev = w.last_event_rev.max(rev);
                w.delivered.insert((service.clone(), rev));
                w.kinds
                    .entry((service.clone(), rev))
                    .or_default()
                    .insert(*kind);
                w.position = w.position.max(rev);
                if w.open_lo.is_none() {
                    // No snapshot and no start record: coverage starts at this event.
                    w.open_lo = Some(rev.saturating_sub(1));
                }
                union.entry(service.clone()).or_default().insert(rev);
            }
            _ => {}
        }
    }
    for w in watchers.values_mut() {
        w.close();
    }

    // Gaps: every change anyone received, inside each watcher's covered spans.
    for (name, w) in &watchers {
        for &(lo, hi) in &w.spans {
            for (service, revs) in &union {
                if !w.watches(service) {
                    continue;
                }
                for &rev in revs.range(lo + 1..=hi) {
                    if !w.delivered.contains(&(service.clone(), rev)) {
                        anomalies.push(json!({
                            "kind": "gap", "watcher": name, "service": service,
                            "missing_revision": rev, "covered_span": [lo, hi],
                        }));
                    }
                }
            }
        }
    }

    // Atomicity: every watcher that received a revision received all of its events.
    let mut per_rev: HashMap<(String, u64), (BTreeSet<WatchKind>, String)> = HashMap::new();
    for (name, w) in &watchers {
        for (key, kinds) in &w.kinds {
            match per_rev.get(key) {
                None => {
                    per_rev.insert(key.clone(), (kinds.clone(), name.clone()));
                }
                Some((first, first_name)) if first != kinds => anomalies.push(json!({
                    "kind": "non-atomic", "service": key.0, "revision": key.1,
                    "first": {"watcher": first_name, "events": first},
                    "second": {"watcher": name, "events": kinds},
                })),
                _ => {}
            }
        }
    }

    // Explanation: tokens must come from a grant the log made. Without a final token list
    // a missing explanation proves nothing, so that is reported once per service as a
    // broken recording rule instead of as unexplained events.
    let (explained, complete) = explained_tokens(h);
    let mut unlisted: BTreeSet<&str> = BTreeSet::new();
    for r in &h.records {
        let Event::WatchEvent {
            watcher,
            service,
            revision,
            kind,
            lease,
            ..
        } = &r.event
        else {
            continue;
        };
        if lease.token == 0 {
            continue;
        }
        let bad_grant = *kind == WatchKind::Granted && lease.token != *revision;
        if bad_grant || lease.token > *revision {
            anomalies.push(json!({
                "kind": "grant-token-mismatch", "watcher": watcher, "service": service,
                "revision": revision, "event": kind, "token": lease.token,
            }));
        }
        if !complete.contains(service.as_str()) {
            if unlisted.insert(service) {
                anomalies.push(json!({
                    "kind": "no-final-state", "service": service,
                    "why": "no node_final lists this service's tokens: events cannot be explained",
                }));
            }
            continue;
        }
        let known = explained
            .get(service.as_str())
            .is_some_and(|s| s.contains(&lease.token));
        if !known {
            anomalies.push(json!({
                "kind": "unexplained-token", "watcher": watcher, "service": service,
                "revision": revision, "event": kind, "token": lease.token,
            }));
        }
    }
    Verdict::new(NAME, checked, cap(anomalies, cfg.max_anomalies))
}

/// Tokens a write demonstrably produced: seen in a client's successful answer, or listed
/// in a node's final state (its lease or its token history).
/// Also returns the services whose complete token list some node reported.
fn explained_tokens(h: &History) -> (HashMap<String, HashSet<u64>>, HashSet<String>) {
    let mut out: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut complete = HashSet::new();
    for op in h.operations() {
        if let Outcome::Ok(r) = &op.outcome {
            out.entry(op.call.service().to_string())
                .or_default()
                .insert(r.lease().token);
        }
    }
    for r in &h.records {
        if let Event::NodeFinal { services, .. } = &r.event {
            for s in services {
                let set = out.entry(s.service.clone()).or_default();
                set.insert(s.lease.token);
                set.extend(s.tokens.iter().copied());
                if !s.tokens.is_empty() {
                    complete.insert(s.service.clone());
                }
            }
        }
    }
    (out, complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::*;
    use crate::history::{FinalService, LeaseObs};

    fn run(h: &H) -> Verdict {
        check(&h.history(), &CheckConfig::default())
    }

    fn final_tokens(h: &mut H, t: u64, tokens: &[u64], lease: LeaseObs) {
        h.at(
            t,
            Event::NodeFinal {
                node: 1,
                region: "us".into(),
                revision: 100,
                services: vec![FinalService {
                    service: "s".into(),
                    lease,
                    tokens: tokens.to_vec(),
                }],
                error: None,
            },
        );
    }

    /// Two watchers that saw the same three revisions.
    fn base() -> H {
        let mut h = H::new();
        for (i, w) in ["w1", "w2"].into_iter().enumerate() {
            let o = i as u64;
            h.watch_started(o, w, "s", 0);
            h.watch_event(10 + o, w, "s", 5, WatchKind::Snapshot, held("us", 5, 5));
            h.watch_event(20 + o, w, "s", 7, WatchKind::Revoking, revoking("us", 5, 7));
            h.watch_event(30 + o, w, "s", 9, WatchKind::Granted, held("eu", 9, 9));
            h.watch_event(40 + o, w, "s", 12, WatchKind::Vacated, vacant(9, 12));
        }
        final_tokens(&mut h, 100, &[5, 9], vacant(9, 12));
        h
    }

    #[test]
    fn identical_complete_logs_pass() {
        let v = run(&base());
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 10);
    }

    #[test]
    fn resume_after_disconnect_must_fill_the_gap() {
        let mut h = base();
        h.watch_started(1, "w3", "s", 0);
        h.watch_event(11, "w3", "s", 5, WatchKind::Snapshot, held("us", 5, 5));
        h.watch_event(21, "w3", "s", 7, WatchKind::Revoking, revoking("us", 5, 7));
        h.at(
            22,
            Event::WatchError {
                watcher: "w3".into(),
                node: 1,
                error: "reset".into(),
                compacted: false,
            },
        );
        h.at(
            50,
            Event::WatchResumed {
                watcher: "w3".into(),
                node: 2,
                from_revision: 8,
            },
        );
        h.watch_event(51, "w3", "s", 12, WatchKind::Vacated, vacant(9, 12));
        let v = run(&h);
        assert_eq!(v.kinds(), vec!["gap"]);
        assert_eq!(v.anomalies[0]["missing_revision"], 9);
    }

    #[test]
    fn explicit_compaction_error_is_not_a_gap() {
        let mut h = base();
        h.watch_started(1, "w3", "s", 0);
        h.watch_event(11, "w3", "s", 5, WatchKind::Snapshot, held("us", 5, 5));
        h.watch_event(21, "w3", "s", 7, WatchKind::Revoking, revoking("us", 5, 7));
        h.at(
            22,
            Event::WatchError {
                watcher: "w3".into(),
                node: 1,
                error: "compacted".into(),
                compacted: true,
            },
        );
        h.watch_started(50, "w3", "s", 0);
        h.watch_event(51, "w3", "s", 12, WatchKind::Snapshot, vacant(9, 12));
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
    }

    #[test]
    fn progress_notification_claims_coverage() {
        let mut h = base();
        h.watch_started(1, "w3", "s", 0);
        h.watch_event(11, "w3", "s", 5, WatchKind::Snapshot, held("us", 5, 5));
        h.at(
            12,
            Event::WatchProgress {
                watcher: "w3".into(),
                node: 1,
                revision: 10,
            },
        );
        assert_eq!(run(&h).kinds(), vec!["gap", "gap"]);
    }

    #[test]
    fn out_of_order_and_duplicates_fail() {
        let mut h = base();
        h.watch_event(45, "w1", "s", 9, WatchKind::Granted, held("eu", 9, 9));
        assert_eq!(run(&h).kinds(), vec!["duplicate"]);
        let mut h = base();
        h.watch_event(
            45,
            "w1",
            "s",
            8,
            WatchKind::ModeChanged,
            revoking("us", 5, 8),
        );
        let k = run(&h).kinds();
        assert!(k.contains(&"out-of-order".to_string()), "{k:?}");
    }

    #[test]
    fn several_events_of_one_revision_are_not_duplicates() {
        let mut h = H::new();
        h.watch_started(0, "w1", "s", 3);
        h.watch_event(1, "w1", "s", 5, WatchKind::ServicePut, held("us", 5, 5));
        h.watch_event(2, "w1", "s", 5, WatchKind::Granted, held("us", 5, 5));
        final_tokens(&mut h, 100, &[5], held("us", 5, 5));
        assert!(run(&h).valid);
    }

    #[test]
    fn divergent_content_and_partial_revisions_fail() {
        let mut h = base();
        h.watch_started(2, "w3", "s", 9);
        h.watch_event(31, "w3", "s", 9, WatchKind::Granted, held("ap", 9, 9));
        h.watch_event(41, "w3", "s", 12, WatchKind::Vacated, vacant(9, 12));
        final_tokens(&mut h, 100, &[5, 9], vacant(9, 12));
        assert!(run(&h).kinds().contains(&"divergent".to_string()));
        // A client read disagreeing with the watchers is divergent too.
        let mut h = base();
        h.read("c", 0, 100, "s", LeaseObs::held("ap", 9, 9));
        assert!(run(&h).kinds().contains(&"divergent".to_string()));
        let mut h = base();
        h.watch_started(2, "w3", "s", 9);
        h.watch_event(31, "w3", "s", 9, WatchKind::ServicePut, held("eu", 9, 9));
        h.watch_event(32, "w3", "s", 9, WatchKind::Granted, held("eu", 9, 9));
        h.watch_event(41, "w3", "s", 12, WatchKind::Vacated, vacant(9, 12));
        assert_eq!(run(&h).kinds(), vec!["non-atomic"]);
    }

    #[test]
    fn final_state_disagreeing_with_watchers_fails() {
        let mut h = base();
        final_tokens(&mut h, 100, &[5, 9], held("eu", 9, 12));
        assert_eq!(run(&h).kinds(), vec!["divergent"]);
    }

    #[test]
    fn unexplained_tokens_fail() {
        let mut h = base();
        h.watch_event(50, "w1", "s", 20, WatchKind::Granted, held("ap", 20, 20));
        h.watch_event(51, "w2", "s", 20, WatchKind::Granted, held("ap", 20, 20));
        assert_eq!(
            run(&h).kinds(),
            vec!["unexplained-token", "unexplained-token"]
        );
        let mut h = base();
        h.watch_event(50, "w1", "s", 21, WatchKind::Granted, held("eu", 9, 21));
        h.watch_event(51, "w2", "s", 21, WatchKind::Granted, held("eu", 9, 21));
        let k = run(&h).kinds();
        assert_eq!(k, vec!["grant-token-mismatch", "grant-token-mismatch"]);
    }

    #[test]
    fn missing_final_state_is_reported_once() {
        let mut h = base();
        h.recs
            .retain(|r| !matches!(r.event, Event::NodeFinal { .. }));
        assert_eq!(run(&h).kinds(), vec!["no-final-state"]);
    }

    #[test]
    fn events_for_unwatched_services_fail() {
        let mut h = base();
        h.watch_event(
            50,
            "w1",
            "other",
            30,
            WatchKind::Granted,
            held("eu", 30, 30),
        );
        let k = run(&h).kinds();
        assert!(k.contains(&"unwatched-event".to_string()), "{k:?}");
    }
}
