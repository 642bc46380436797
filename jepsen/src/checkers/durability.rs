//! Durability (invariant 5) and per-client monotonic reads (invariant 3, client view).
//!
//! Every acknowledged change must survive: each token an `ok` failover or linearizable read
//! returned must be no greater than the token of the final linearizable read taken after
//! healing (`get_primary` with `final_read: true`), and must appear in the token history of
//! the most advanced node's final state. Each client's successive linearizable answers must
//! never show an older revision or token than it already saw.
//!
//! Anomaly kinds:
//! - `final-read-missing`: acknowledged operations exist for a service but no final read
//!   succeeded, so their survival cannot be shown (the liveness checker says why);
//! - `acked-token-lost`: the final read shows a token lower than an acknowledged one;
//! - `acked-token-not-in-history`: an acknowledged token missing from the final token list;
//! - `revision-went-backwards` / `token-went-backwards`: a client saw an older lease after
//!   a newer one.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Call, Event, History, OpResult, Operation, Outcome};

/// Checker name in reports.
pub const NAME: &str = "durability";

/// The lease of an ok answer and the answering node's revision (0 when not recorded).
fn lease_and_node_rev(op: &Operation) -> (&crate::history::LeaseObs, u64) {
    let r = op.ok().expect("only ok operations are compared");
    let n = match r {
        OpResult::GetPrimary { node_revision, .. } => *node_revision,
        _ => 0,
    };
    (r.lease(), n)
}

fn is_final_read(op: &Operation) -> bool {
    matches!(
        op.call,
        Call::GetPrimary {
            final_read: true,
            ..
        }
    )
}

/// Checks durability and client monotonicity; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let ops = h.operations();
    let mut anomalies = Vec::new();
    let mut checked = 0;

    // Final reads: the last successful one per service.
    let mut finals: HashMap<&str, &Operation> = HashMap::new();
    for op in &ops {
        if is_final_read(op) && op.ok().is_some() && op.call.is_linearizable() {
            let e = finals.entry(op.call.service()).or_insert(op);
            if op.complete_ns > e.complete_ns {
                *e = op;
            }
        }
    }
    // Token history of the most advanced node that reported each service.
    let mut history_of: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
    for r in &h.records {
        if let Event::NodeFinal {
            revision, services, ..
        } = &r.event
        {
            for s in services {
                if s.tokens.is_empty() {
                    continue;
                }
                let e = history_of
                    .entry(s.service.clone())
                    .or_insert((0, Vec::new()));
                if *revision >= e.0 {
                    *e = (*revision, s.tokens.clone());
                }
            }
        }
    }

    let mut missing_reported: HashMap<&str, bool> = HashMap::new();
    for op in &ops {
        let Outcome::Ok(r) = &op.outcome else {
            continue;
        };
        if !op.call.is_linearizable() || is_final_read(op) {
            continue;
        }
        let service = op.call.service();
        let token = r.lease().token;
        checked += 1;
        let Some(fin) = finals.get(service) else {
            if !missing_reported.insert(service, true).unwrap_or(false) {
                anomalies.push(json!({"kind": "final-read-missing", "service": service}));
            }
            continue;
        };
        // Only acknowledgements that completed before the final read began are ordered
        // before it.
        if op.complete_ns.unwrap_or(u64::MAX) >= fin.invoke_ns {
            continue;
        }
        let final_token = fin.ok().map(|r| r.lease().token).unwrap_or(0);
        if token > final_token {
            anomalies.push(json!({
                "kind": "acked-token-lost", "service": service, "op": op.describe(),
                "final_read": fin.describe(),
            }));
        }
        if let Some((node_rev, tokens)) = history_of.get(service) {
            // A node that has not applied the token's entry yet proves nothing either way.
            let applied = *node_rev == 0 || token <= *node_rev;
            if token > 0 && applied && tokens.binary_search(&token).is_err() {
                anomalies.push(json!({
                    "kind": "acked-token-not-in-history", "service": service, "token": token,
                    "op": op.id, "final_state_revision": node_rev,
                }));
            }
        }
    }

    // Monotonic reads per client. A client normally has one operation at a time; an answer
    // is compared only with the client's answers that completed before it was invoked, so
    // a client that does overlap operations cannot produce a false alarm.
    let mut per_client: BTreeMap<(&str, &str), Vec<&Operation>> = BTreeMap::new();
    for op in &ops {
        if op.ok().is_some() && op.call.is_linearizable() {
            per_client
                .entry((op.process.as_str(), op.call.service()))
                .or_default()
                .push(op);
        }
    }
    for ((client, svc), list) in per_client {
        let mut done: Vec<&Operation> = list.clone();
        done.sort_by_key(|o| o.complete_ns);
        let mut next = 0;
        // Greatest (revision, node revision, token) among completed answers, with the op
        // that showed each.
        let (mut rev, mut nrev, mut tok) = ((0, 0), (0, 0), (0, 0));
        for op in list {
            while next < done.len() && done[next].complete_ns < Some(op.invoke_ns) {
                let d = done[next];
                let (l, n) = lease_and_node_rev(d);
                rev = rev.max((l.revision, d.id));
                nrev = nrev.max((n, d.id));
                tok = tok.max((l.token, d.id));
                next += 1;
            }
            let (l, n) = lease_and_node_rev(op);
            if (l.revision > 0 && l.revision < rev.0) || (n > 0 && n < nrev.0) {
                anomalies.push(json!({
                    "kind": "revision-went-backwards", "client": client, "service": svc,
                    "previous_op": if l.revision > 0 && l.revision < rev.0 { rev.1 } else { nrev.1 },
                    "previous_revision": rev.0, "previous_node_revision": nrev.0,
                    "op": op.describe(),
                }));
            }
            if l.token < tok.0 {
                anomalies.push(json!({
                    "kind": "token-went-backwards", "client": client, "service": svc,
                    "previous_op": tok.1, "previous_token": tok.0, "op": op.describe(),
                }));
            }
        }
    }
    Verdict::new(NAME, checked, cap(anomalies, cfg.max_anomalies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::*;
    use crate::history::FinalService;

    fn run(h: &H) -> Verdict {
        check(&h.history(), &CheckConfig::default())
    }

    fn node_final(h: &mut H, t: u64, tokens: &[u64]) {
        let last = *tokens.last().unwrap();
        h.at(
            t,
            Event::NodeFinal {
                node: 1,
                region: "us".into(),
                revision: 50,
                services: vec![FinalService {
                    service: "s".into(),
                    lease: held("eu", last, last),
                    tokens: tokens.to_vec(),
                }],
                error: None,
            },
        );
    }

    #[test]
    fn surviving_acknowledgements_pass() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        h.failover("c", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read_ext("c", 100, 110, "s", held("eu", 9, 9), true);
        node_final(&mut h, 120, &[5, 9]);
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 2);
    }

    #[test]
    fn lost_acknowledged_failover_fails() {
        let mut h = H::new();
        h.failover("c", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read_ext("d", 100, 110, "s", held("us", 5, 5), true);
        node_final(&mut h, 120, &[5]);
        let k = run(&h).kinds();
        assert_eq!(k, vec!["acked-token-lost", "acked-token-not-in-history"]);
    }

    #[test]
    fn missing_final_read_fails() {
        let mut h = H::new();
        h.failover("c", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read("c", 40, 50, "s", held("eu", 9, 9));
        assert_eq!(run(&h).kinds(), vec!["final-read-missing"]);
    }

    #[test]
    fn overlapping_operations_of_one_client_are_not_ordered() {
        let mut h = H::new();
        h.read("c", 0, 50, "s", held("us", 5, 5));
        h.read("c", 10, 20, "s", held("eu", 9, 9));
        h.read_ext("c", 100, 110, "s", held("eu", 9, 9), true);
        assert!(run(&h).valid);
    }

    #[test]
    fn client_seeing_older_lease_fails() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("eu", 9, 12));
        h.read("c", 20, 30, "s", held("eu", 9, 11));
        h.read_ext("c", 100, 110, "s", held("eu", 9, 12), true);
        assert_eq!(run(&h).kinds(), vec!["revision-went-backwards"]);
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("eu", 9, 0));
        h.read("c", 20, 30, "s", held("us", 5, 0));
        h.read_ext("c", 100, 110, "s", held("eu", 9, 0), true);
        assert_eq!(run(&h).kinds(), vec!["token-went-backwards"]);
    }
}
