//! The fenced resource: a register owned by the test that accepts a write only with a token
//! not lower than the highest it has accepted (the pattern Jepsen's etcd analysis showed
//! locks need). This checks that the resource kept its rule and lost nothing; whether the
//! writers *should* have been writing at all is the lease-timing checker's business.
//!
//! Records are taken in history order, which is the resource's own order: it is one
//! in-process object that records each decision while holding its lock.
//!
//! Anomaly kinds:
//! - `accepted-lower-token`: a write accepted with a token lower than one accepted before;
//! - `rejected-valid-token`: a write refused although its token was not lower than the
//!   highest accepted (the resource broke its own rule: the harness is wrong);
//! - `lost-write`: an accepted write missing from the resource's final contents;
//! - `phantom-write`: a write in the final contents that was never accepted;
//! - `final-out-of-order`: the final contents do not have non-decreasing tokens;
//! - `no-final-state`: writes were accepted but the final contents were never recorded.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Event, FenceWrite, History};

/// Checker name in reports.
pub const NAME: &str = "fenced-resource";

#[derive(Default)]
struct Resource {
    highest: u64,
    accepted: Vec<(u64, u64, String, u64)>, // (write, token, writer, t)
    final_writes: Option<Vec<FenceWrite>>,
}

/// Checks every fenced resource; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut checked = 0;
    for r in &h.records {
        match &r.event {
            Event::FenceAccept {
                resource,
                writer,
                token,
                write,
                ..
            } => {
                checked += 1;
                let res = resources.entry(resource.clone()).or_default();
                if *token < res.highest {
                    anomalies.push(json!({
                        "kind": "accepted-lower-token", "resource": resource, "writer": writer,
                        "write": write, "token": token, "highest_accepted": res.highest, "t": r.t,
                    }));
                }
                res.highest = res.highest.max(*token);
                res.accepted.push((*write, *token, writer.clone(), r.t));
            }
            Event::FenceReject {
                resource,
                writer,
                token,
                write,
                ..
            } => {
                checked += 1;
                let res = resources.entry(resource.clone()).or_default();
                if *token >= res.highest {
                    anomalies.push(json!({
                        "kind": "rejected-valid-token", "resource": resource, "writer": writer,
                        "write": write, "token": token, "highest_accepted": res.highest, "t": r.t,
                    }));
                }
            }
            Event::FenceFinal { resource, writes } => {
                resources.entry(resource.clone()).or_default().final_writes = Some(writes.clone());
            }
            _ => {}
        }
    }
    for (name, res) in &resources {
        let Some(fin) = &res.final_writes else {
            if !res.accepted.is_empty() {
                anomalies.push(json!({
                    "kind": "no-final-state", "resource": name,
                    "accepted_writes": res.accepted.len(),
                }));
            }
            continue;
        };
        let in_final: HashSet<u64> = fin.iter().map(|w| w.write).collect();
        let accepted: HashMap<u64, u64> = res.accepted.iter().map(|a| (a.0, a.1)).collect();
        for (write, token, writer, t) in &res.accepted {
            if !in_final.contains(write) {
                anomalies.push(json!({
                    "kind": "lost-write", "resource": name, "write": write, "token": token,
                    "writer": writer, "accepted_at_ns": t,
                }));
            }
        }
        for w in fin {
            if accepted.get(&w.write) != Some(&w.token) {
                anomalies.push(json!({
                    "kind": "phantom-write", "resource": name, "write": w.write,
                    "token": w.token, "writer": w.writer,
                }));
            }
        }
        if let Some(p) = fin.windows(2).position(|w| w[1].token < w[0].token) {
            anomalies.push(json!({
                "kind": "final-out-of-order", "resource": name,
                "writes": [fin[p].write, fin[p + 1].write],
                "tokens": [fin[p].token, fin[p + 1].token],
            }));
        }
    }
    Verdict::new(NAME, checked, cap(anomalies, cfg.max_anomalies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::H;

    fn accept(h: &mut H, t: u64, writer: &str, token: u64, write: u64) {
        h.at(
            t,
            Event::FenceAccept {
                resource: "r".into(),
                writer: writer.into(),
                region: None,
                service: "s".into(),
                token,
                write,
                checked_ns: None,
            },
        );
    }

    fn reject(h: &mut H, t: u64, writer: &str, token: u64, write: u64, highest: u64) {
        h.at(
            t,
            Event::FenceReject {
                resource: "r".into(),
                writer: writer.into(),
                region: None,
                service: "s".into(),
                token,
                write,
                highest,
                checked_ns: None,
            },
        );
    }

    fn final_state(h: &mut H, t: u64, writes: &[(u64, u64)]) {
        h.at(
            t,
            Event::FenceFinal {
                resource: "r".into(),
                writes: writes
                    .iter()
                    .map(|&(write, token)| FenceWrite {
                        write,
                        token,
                        writer: "a".into(),
                    })
                    .collect(),
            },
        );
    }

    fn run(h: &H) -> Verdict {
        check(&h.history(), &CheckConfig::default())
    }

    #[test]
    fn fencing_that_works_passes() {
        let mut h = H::new();
        accept(&mut h, 1, "a", 5, 1);
        accept(&mut h, 2, "b", 9, 2);
        reject(&mut h, 3, "a", 5, 3, 9);
        accept(&mut h, 4, "b", 9, 4);
        final_state(&mut h, 10, &[(1, 5), (2, 9), (4, 9)]);
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 4);
    }

    #[test]
    fn accepting_a_lower_token_fails() {
        let mut h = H::new();
        accept(&mut h, 1, "b", 9, 1);
        accept(&mut h, 2, "a", 5, 2);
        final_state(&mut h, 10, &[(1, 9), (2, 5)]);
        let k = run(&h).kinds();
        assert!(k.contains(&"accepted-lower-token".to_string()));
        assert!(k.contains(&"final-out-of-order".to_string()));
    }

    #[test]
    fn rejecting_a_valid_token_fails() {
        let mut h = H::new();
        accept(&mut h, 1, "a", 5, 1);
        reject(&mut h, 2, "b", 9, 2, 5);
        final_state(&mut h, 10, &[(1, 5)]);
        assert_eq!(run(&h).kinds(), vec!["rejected-valid-token"]);
    }

    #[test]
    fn lost_and_phantom_writes_fail() {
        let mut h = H::new();
        accept(&mut h, 1, "a", 5, 1);
        accept(&mut h, 2, "a", 5, 2);
        final_state(&mut h, 10, &[(1, 5), (7, 5)]);
        let k = run(&h).kinds();
        assert_eq!(k, vec!["lost-write", "phantom-write"]);
    }

    #[test]
    fn missing_final_state_fails() {
        let mut h = H::new();
        accept(&mut h, 1, "a", 5, 1);
        assert_eq!(run(&h).kinds(), vec!["no-final-state"]);
    }
}
