//! Lease safety in time (invariant 1, "no split brain").
//!
//! A holder's agent trusts its lease until `send time of its last acknowledged renewal +
//! TTL·(1−drift)` (minus its own margin), unless it demoted or fenced itself earlier. The
//! leader accepted that renewal no earlier than it was sent, and may grant the lease to
//! another region only after TTL plus a drift margin since the last renewal it accepted, or
//! once every agent acknowledged demotion. So for every grant to region B (known committed
//! by the earliest time anyone saw its token) and every renewal by an agent of another
//! region A of a lower token, the grant must not be known committed before
//! `min(sent + TTL·(1−drift), when that agent stopped acting)`.
//!
//! **Clock faults.** The history clock and a node's monotonic clock advance at the same
//! rate only while that node has no clock fault. A leader decides a grant by measuring,
//! on its own clock, the time since the last renewal it accepted; if that span overlaps a
//! clock fault the measurement can be wrong, but a grant made more than
//! `G = 2·TTL·(1+drift)` after the fault healed is correct however the earlier part was
//! measured (real time since the heal alone exceeds the wait). So grants known committed
//! during a clock fault or within `G` after it are not judged (nor are agents' writes
//! against such grants); everything else is, and a run made only of clock faults is
//! judged outside them. Agents run in the harness, on the history clock, so their own
//! validity (`acted-after-lease-expired`) is always judged.
//!
//! Anomaly kinds:
//! - `grant-before-lease-expired`: the new grant was committed while an agent of the old
//!   holder's region could still trust its lease (two regions primary at once);
//! - `acted-after-lease-expired`: an agent wrote to the fenced resource with a token after
//!   the validity its own renewals gave it (it failed to fence itself);
//! - `stale-holder-acted`: an agent wrote with a token after a greater token had been
//!   granted to another region and known committed.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Event, History, LeaseStateRec};

/// Checker name in reports.
pub const NAME: &str = "lease-timing";

/// A token's holder and the earliest time its grant was known committed.
#[derive(Debug, Clone)]
struct Grant {
    region: String,
    known_by: u64,
}

#[derive(Debug, Clone)]
struct Renewal {
    agent: String,
    region: String,
    token: u64,
    sent: u64,
    trusted_until: u64,
    valid_until: u64,
}

/// Checks lease timing; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    // Windows in which a node's clock may have misjudged time (see the module docs).
    // With the largest TTL the run used: the TTL nemesis may have raised it.
    let ttl_max = h
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::TtlChanged { ttl_ms, .. } | Event::Renewed { ttl_ms, .. } => Some(*ttl_ms),
            _ => None,
        })
        .fold(cfg.lease_ttl_ms, u64::max);
    let guard = (2.0 * ttl_max as f64 * 1e6 * (1.0 + cfg.drift)).max(0.0) as u64;
    let clock_windows: Vec<(u64, u64)> = h
        .nemesis_intervals()
        .into_iter()
        .filter(|(f, _, _)| f == "clock")
        .map(|(_, s, e)| (s, e.saturating_add(guard)))
        .collect();
    let clock_fault_at = |t: u64| clock_windows.iter().any(|&(s, e)| s <= t && t <= e);
    let mut grants: BTreeMap<String, BTreeMap<u64, Grant>> = BTreeMap::new();
    let mut saw = |service: &str, token: u64, region: Option<&str>, t: u64| {
        let Some(region) = region else { return };
        if token == 0 {
            return;
        }
        let e = grants
            .entry(service.to_string())
            .or_default()
            .entry(token)
            .or_insert(Grant {
                region: region.to_string(),
                known_by: t,
            });
        e.known_by = e.known_by.min(t);
    };
    for op in h.operations() {
        if let (Some(r), Some(c)) = (op.ok(), op.complete_ns) {
            let l = r.lease();
            if l.state != LeaseStateRec::Vacant {
                saw(op.call.service(), l.token, l.region.as_deref(), c);
            }
        }
    }
    let mut renewals: BTreeMap<String, Vec<Renewal>> = BTreeMap::new();
    // (agent, service, token) -> every time the agent stopped acting with that token. An
    // agent can stop more than once with one token: it fences itself when its validity
    // runs out unrenewed, and acts again when a later renewal of the same (still held)
    // lease is acknowledged.
    let mut stopped: HashMap<(String, String, u64), Vec<u64>> = HashMap::new();
    for r in &h.records {
        match &r.event {
            Event::WatchEvent { service, lease, .. } if lease.state != LeaseStateRec::Vacant => {
                saw(service, lease.token, lease.region.as_deref(), r.t);
            }
            Event::Renewed {
                agent,
                region,
                service,
                token,
                sent_ns,
                valid_until_ns,
                ttl_ms,
            } => {
                saw(service, *token, Some(region), r.t);
                let ttl = if *ttl_ms > 0 {
                    *ttl_ms
                } else {
                    cfg.lease_ttl_ms
                };
                let trusted = (ttl as f64 * 1e6 * (1.0 - cfg.drift)).max(0.0) as u64;
                renewals.entry(service.clone()).or_default().push(Renewal {
                    agent: agent.clone(),
                    region: region.clone(),
                    token: *token,
                    sent: *sent_ns,
                    trusted_until: sent_ns + trusted,
                    valid_until: *valid_until_ns,
                });
            }
            Event::Demoted {
                agent,
                service,
                token,
                ..
            }
            | Event::SelfFenced {
                agent,
                service,
                token,
                ..
            } => {
                stopped
                    .entry((agent.clone(), service.clone(), *token))
                    .or_default()
                    .push(r.t);
            }
            _ => {}
        }
    }

    let mut anomalies = Vec::new();
    let mut checked = 0;
    for (service, tokens) in &grants {
        let Some(list) = renewals.get(service) else {
            continue;
        };
        for (&g, grant) in tokens {
            if clock_fault_at(grant.known_by) {
                continue;
            }
            checked += 1;
            for rn in list {
                if rn.token >= g || rn.region == grant.region {
                    continue;
                }
                // The first time the agent stopped after sending this renewal.
                let stop = stopped
                    .get(&(rn.agent.clone(), service.clone(), rn.token))
                    .and_then(|v| v.iter().copied().filter(|&s| s >= rn.sent).min())
                    .unwrap_or(u64::MAX);
                let end = rn.trusted_until.min(stop);
                if grant.known_by < end {
                    anomalies.push(json!({
                        "kind": "grant-before-lease-expired", "service": service,
                        "new_token": g, "new_region": grant.region,
                        "granted_by_ns": grant.known_by,
                        "old_token": rn.token, "old_region": rn.region, "agent": rn.agent,
                        "renewal_sent_ns": rn.sent, "lease_trusted_until_ns": end,
                        "early_by_ms": (end - grant.known_by) as f64 / 1e6,
                    }));
                }
            }
        }
    }

    // Agents acting with a token: after their own validity, or after a newer grant.
    for r in &h.records {
        let (writer, region, service, token, at) = match &r.event {
            Event::FenceAccept {
                writer,
                region,
                service,
                token,
                checked_ns,
                ..
            }
            | Event::FenceReject {
                writer,
                region,
                service,
                token,
                checked_ns,
                ..
            } => (writer, region, service, *token, checked_ns.unwrap_or(r.t)),
            _ => continue,
        };
        checked += 1;
        if let Some(list) = renewals.get(service) {
            let valid = list
                .iter()
                .filter(|rn| rn.agent == *writer && rn.token == token && rn.sent <= at)
                .map(|rn| rn.valid_until)
                .max();
            if let Some(v) = valid {
                if at > v {
                    anomalies.push(json!({
                        "kind": "acted-after-lease-expired", "service": service,
                        "agent": writer, "token": token, "at_ns": at, "valid_until_ns": v,
                    }));
                }
            }
        }
        if let (Some(region), Some(tokens)) = (region, grants.get(service)) {
            let newer = tokens
                .range(token + 1..)
                .filter(|(_, g)| {
                    g.region != *region && g.known_by < at && !clock_fault_at(g.known_by)
                })
                .min_by_key(|(_, g)| g.known_by);
            if let Some((g, grant)) = newer {
                anomalies.push(json!({
                    "kind": "stale-holder-acted", "service": service, "agent": writer,
                    "token": token, "at_ns": at, "newer_token": g,
                    "newer_region": grant.region, "newer_known_at_ns": grant.known_by,
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

    const MS: u64 = 1_000_000;

    fn cfg() -> CheckConfig {
        CheckConfig {
            lease_ttl_ms: 1_000,
            drift: 0.1,
            ..CheckConfig::default()
        }
    }

    fn renewed(h: &mut H, region: &str, token: u64, sent_ms: u64) {
        h.at(
            (sent_ms + 5) * MS,
            Event::Renewed {
                agent: format!("agent-{region}"),
                region: region.into(),
                service: "s".into(),
                token,
                sent_ns: sent_ms * MS,
                valid_until_ns: (sent_ms + 850) * MS,
                ttl_ms: 1_000,
            },
        );
    }

    fn write(h: &mut H, t_ms: u64, region: &str, token: u64) {
        h.at(
            t_ms * MS,
            Event::FenceAccept {
                resource: "r".into(),
                writer: format!("agent-{region}"),
                region: Some(region.into()),
                service: "s".into(),
                token,
                write: t_ms,
                checked_ns: None,
            },
        );
    }

    #[test]
    fn grant_after_ttl_passes() {
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        write(&mut h, 200, "us", 5);
        // Unplanned failover: waits out TTL since the last renewal (sent at 100 ms).
        h.failover("c", 150 * MS, 1_200 * MS, "s", "eu", 5, held("eu", 9, 9));
        write(&mut h, 1_300, "eu", 9);
        let v = check(&h.history(), &cfg());
        assert!(v.valid, "{:?}", v.anomalies);
    }

    #[test]
    fn grant_while_old_holder_still_trusts_its_lease_fails() {
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        h.failover("c", 150 * MS, 400 * MS, "s", "eu", 5, held("eu", 9, 9));
        let v = check(&h.history(), &cfg());
        assert_eq!(v.kinds(), vec!["grant-before-lease-expired"]);
        assert_eq!(v.anomalies[0]["early_by_ms"], 600.0);
    }

    #[test]
    fn demotion_ack_allows_an_early_grant() {
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        h.at(
            200 * MS,
            Event::Demoted {
                agent: "agent-us".into(),
                region: "us".into(),
                service: "s".into(),
                token: 5,
            },
        );
        h.failover("c", 150 * MS, 250 * MS, "s", "eu", 5, held("eu", 9, 9));
        assert!(check(&h.history(), &cfg()).valid);
    }

    #[test]
    fn a_demotion_after_a_self_fence_and_a_new_renewal_counts() {
        // The agent fenced itself (validity ran out), renewed the same token again, then
        // acknowledged a revocation: the grant after that acknowledgement is early but
        // legal.
        let stop = |h: &mut H, t_ms: u64, demoted: bool| {
            let (agent, region, service, token) =
                ("agent-us".to_string(), "us".to_string(), "s".to_string(), 5);
            h.at(
                t_ms * MS,
                if demoted {
                    Event::Demoted {
                        agent,
                        region,
                        service,
                        token,
                    }
                } else {
                    Event::SelfFenced {
                        agent,
                        region,
                        service,
                        token,
                    }
                },
            );
        };
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        stop(&mut h, 50, false);
        renewed(&mut h, "us", 5, 100);
        stop(&mut h, 200, true);
        h.failover("c", 150 * MS, 250 * MS, "s", "eu", 5, held("eu", 9, 9));
        let v = check(&h.history(), &cfg());
        assert!(v.valid, "{:?}", v.anomalies);
        // Without the later demotion, the grant is early.
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        stop(&mut h, 50, false);
        renewed(&mut h, "us", 5, 100);
        h.failover("c", 150 * MS, 250 * MS, "s", "eu", 5, held("eu", 9, 9));
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["grant-before-lease-expired"]
        );
    }

    #[test]
    fn agents_acting_beyond_their_lease_fail() {
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        write(&mut h, 1_000, "us", 5);
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["acted-after-lease-expired"]
        );
        let mut h = H::new();
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        h.failover("c", 150 * MS, 1_200 * MS, "s", "eu", 5, held("eu", 9, 9));
        write(&mut h, 1_300, "us", 5);
        let k = check(&h.history(), &cfg()).kinds();
        assert_eq!(k, vec!["acted-after-lease-expired", "stale-holder-acted"]);
    }

    #[test]
    fn grants_during_and_just_after_clock_faults_are_not_judged() {
        // An early grant inside a clock fault (or within 2·TTL·(1+drift) after it) may be
        // the faulty clock's doing: not judged.
        let mut h = H::new();
        h.nemesis("clock", 0, 10 * MS);
        renewed(&mut h, "us", 5, 100);
        h.failover("c", 150 * MS, 400 * MS, "s", "eu", 5, held("eu", 9, 9));
        let v = check(&h.history(), &cfg());
        // Nothing else is in this history, so nothing was judged, which is itself a
        // failure (`nothing-checked`); the early grant is not reported.
        assert_eq!(v.kinds(), vec!["nothing-checked"], "{:?}", v.anomalies);
        assert!(v.skipped.is_none());
        // Long after the fault healed, the same early grant is a violation.
        let mut h = H::new();
        h.nemesis("clock", 0, 10 * MS);
        renewed(&mut h, "us", 5, 5_000);
        h.failover("c", 5_050 * MS, 5_300 * MS, "s", "eu", 5, held("eu", 9, 9));
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["grant-before-lease-expired"]
        );
        // An agent's own validity is judged even during a clock fault.
        let mut h = H::new();
        h.nemesis("clock", 0, 2_000 * MS);
        h.read("c", 0, MS, "s", held("us", 5, 5));
        renewed(&mut h, "us", 5, 100);
        write(&mut h, 1_000, "us", 5);
        assert_eq!(
            check(&h.history(), &cfg()).kinds(),
            vec!["acted-after-lease-expired"]
        );
    }
}
