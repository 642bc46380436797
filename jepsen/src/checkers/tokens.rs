//! Fencing tokens (invariant 2): every grant gets a fresh token greater than every token
//! before it, a token belongs to one service and one holder, and a superseded token is
//! never treated as valid again.
//!
//! Evidence used, and what it proves about *when* something was committed:
//! - an `ok` linearizable operation's lease was committed before the operation completed;
//! - a watch event was committed before the watcher received it;
//! - local reads, agent renewals and fenced-resource writes prove only that a token exists
//!   with that holder (they may be stale), so they feed the identity checks, not the
//!   real-time ones.
//!
//! Anomaly kinds:
//! - `token-two-holders`: one token seen held by two regions;
//! - `token-reused-across-services`: one token seen for two services (tokens are global log
//!   indices);
//! - `duplicate-grant`: two acknowledged failovers granted the same fresh token;
//! - `token-not-fresh`: a failover "granted" a token that had been observed before the
//!   failover was even invoked;
//! - `token-regressed`: a linearizable operation saw a token lower than one an operation
//!   completed before its invocation had already seen;
//! - `superseded-renewed`: the leader acknowledged a renewal (RENEWED) of a token, sent
//!   after a greater token was known committed;
//! - `renewed-after-revoke`: ... sent after that token's revocation was known committed;
//! - `validate-inconsistent`: a `ValidateToken` verdict contradicts the lease in the same
//!   answer;
//! - `superseded-validated`: `ValidateToken` said CURRENT for a token already superseded
//!   before the call was invoked;
//! - `issued-token-unknown`: `ValidateToken` said UNKNOWN for a token already seen issued
//!   for that service before the call was invoked.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{
    Call, Event, History, LeaseObs, LeaseStateRec, OpResult, Operation, Outcome, Validity,
};

/// Checker name in reports.
pub const NAME: &str = "tokens";

/// A lease observation committed before `by_ns`.
#[derive(Debug, Clone)]
struct Committed {
    token: u64,
    state: LeaseStateRec,
    by_ns: u64,
    source: serde_json::Value,
}

/// Per service, the earliest time by which each fact was known committed.
#[derive(Default)]
struct Timeline {
    /// Sorted by token.
    obs: Vec<Committed>,
    /// `suffix_min[i]` = earliest `by_ns` among `obs[i..]`.
    suffix_min: Vec<u64>,
    /// Earliest time a token was seen revoking or vacant.
    ended: HashMap<u64, u64>,
    /// Sorted by `by_ns`: (by_ns, running max token).
    max_by_time: Vec<(u64, u64)>,
}

impl Timeline {
    fn build(mut obs: Vec<Committed>) -> Self {
        obs.sort_by_key(|o| o.token);
        let mut suffix_min = vec![u64::MAX; obs.len() + 1];
        for i in (0..obs.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(obs[i].by_ns);
        }
        let mut ended = HashMap::new();
        for o in &obs {
            if o.state != LeaseStateRec::Held {
                let e = ended.entry(o.token).or_insert(u64::MAX);
                *e = (*e).min(o.by_ns);
            }
        }
        let mut by_time: Vec<(u64, u64)> = obs.iter().map(|o| (o.by_ns, o.token)).collect();
        by_time.sort_unstable();
        let mut m = 0;
        for e in &mut by_time {
            m = m.max(e.1);
            e.1 = m;
        }
        Self {
            obs,
            suffix_min,
            ended,
            max_by_time: by_time,
        }
    }

    /// Earliest time a token greater than `t` was known committed, with its evidence.
    fn superseded_at(&self, t: u64) -> Option<(u64, &Committed)> {
        let i = self.obs.partition_point(|o| o.token <= t);
        let when = self.suffix_min[i];
        if when == u64::MAX {
            return None;
        }
        let evidence = self.obs[i..].iter().find(|o| o.by_ns == when)?;
        Some((when, evidence))
    }

    /// Greatest token known committed strictly before `t_ns`.
    fn max_before(&self, t_ns: u64) -> u64 {
        let i = self.max_by_time.partition_point(|(b, _)| *b < t_ns);
        if i == 0 {
            0
        } else {
            self.max_by_time[i - 1].1
        }
    }
}

fn lin_lease(op: &Operation) -> Option<&LeaseObs> {
    match &op.outcome {
        Outcome::Ok(r) if op.call.is_linearizable() => Some(r.lease()),
        _ => None,
    }
}

/// Checks tokens; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let ops = h.operations();
    let mut anomalies = Vec::new();
    let mut checked = 0usize;

    // Identity: token -> (service, region) from every source, stale or not.
    let mut owner: BTreeMap<u64, (String, Option<String>, serde_json::Value)> = BTreeMap::new();
    let mut identity = |service: &str,
                        token: u64,
                        region: Option<&str>,
                        src: serde_json::Value,
                        anomalies: &mut Vec<serde_json::Value>| {
        if token == 0 {
            return;
        }
        match owner.get_mut(&token) {
            None => {
                owner.insert(token, (service.into(), region.map(str::to_string), src));
            }
            Some((s, r, first)) => {
                if s != service {
                    anomalies.push(json!({
                        "kind": "token-reused-across-services", "token": token,
                        "first": first, "second": src,
                    }));
                } else if let (Some(a), Some(b)) = (r.as_deref(), region) {
                    if a != b {
                        anomalies.push(json!({
                            "kind": "token-two-holders", "service": service, "token": token,
                            "first": first, "second": src,
                        }));
                    }
                } else if r.is_none() {
                    *r = region.map(str::to_string);
                    *first = src;
                }
            }
        }
    };
    let holder = |l: &LeaseObs| match l.state {
        LeaseStateRec::Vacant => None,
        _ => l.region.clone(),
    };

    let mut committed: BTreeMap<String, Vec<Committed>> = BTreeMap::new();
    for op in &ops {
        if let Outcome::Ok(r) = &op.outcome {
            checked += 1;
            let l = r.lease();
            identity(
                op.call.service(),
                l.token,
                holder(l).as_deref(),
                json!({"op": op.id}),
                &mut anomalies,
            );
            if let (Some(l), Some(c)) = (lin_lease(op), op.complete_ns) {
                committed
                    .entry(op.call.service().to_string())
                    .or_default()
                    .push(Committed {
                        token: l.token,
                        state: l.state,
                        by_ns: c,
                        source: json!({"op": op.id}),
                    });
            }
        }
    }
    for r in &h.records {
        match &r.event {
            Event::WatchEvent {
                watcher,
                service,
                revision,
                lease,
                ..
            } => {
                checked += 1;
                let src = json!({"watcher": watcher, "revision": revision, "t": r.t});
                identity(
                    service,
                    lease.token,
                    holder(lease).as_deref(),
                    src.clone(),
                    &mut anomalies,
                );
                committed
                    .entry(service.clone())
                    .or_default()
                    .push(Committed {
                        token: lease.token,
                        state: lease.state,
                        by_ns: r.t,
                        source: src,
                    });
            }
            Event::Renewed {
                agent,
                region,
                service,
                token,
                ..
            }
            | Event::Promoted {
                agent,
                region,
                service,
                token,
            } => {
                checked += 1;
                identity(
                    service,
                    *token,
                    Some(region),
                    json!({"agent": agent, "t": r.t}),
                    &mut anomalies,
                );
            }
            Event::FenceAccept {
                writer,
                region: Some(region),
                service,
                token,
                write,
                ..
            } if !service.is_empty() => {
                identity(
                    service,
                    *token,
                    Some(region),
                    json!({"writer": writer, "write": write}),
                    &mut anomalies,
                );
            }
            _ => {}
        }
    }
    let timelines: BTreeMap<String, Timeline> = committed
        .into_iter()
        .map(|(s, v)| (s, Timeline::build(v)))
        .collect();
    let empty = Timeline::build(Vec::new());
    let tl = |s: &str| timelines.get(s).unwrap_or(&empty);

    // Fresh grants: acknowledged failovers that changed the token.
    let mut grants: HashMap<(String, u64), u64> = HashMap::new();
    for op in &ops {
        let (Call::Failover { expected_token, .. }, Outcome::Ok(OpResult::Failover { lease, .. })) =
            (&op.call, &op.outcome)
        else {
            continue;
        };
        // A no-op (the target already held the lease) answers the expected token; without
        // an expected token a no-op cannot be told from a grant, so it is not judged here.
        if *expected_token == 0 || lease.token == *expected_token {
            continue;
        }
        let svc = op.call.service().to_string();
        if let Some(first) = grants.insert((svc.clone(), lease.token), op.id) {
            anomalies.push(json!({
                "kind": "duplicate-grant", "service": svc, "token": lease.token,
                "ops": [first, op.id],
            }));
        }
        let before = tl(&svc).max_before(op.invoke_ns);
        if before >= lease.token {
            anomalies.push(json!({
                "kind": "token-not-fresh", "service": svc, "op": op.describe(),
                "greatest_token_before_invocation": before,
            }));
        }
    }

    // Real-time monotonicity of linearizable observations.
    for op in &ops {
        let Some(l) = lin_lease(op) else { continue };
        let svc = op.call.service();
        let before = tl(svc).max_before(op.invoke_ns);
        if l.token < before {
            anomalies.push(json!({
                "kind": "token-regressed", "service": svc, "op": op.describe(),
                "greatest_token_before_invocation": before,
            }));
        }
        if let (
            Call::ValidateToken { token, .. },
            Outcome::Ok(OpResult::ValidateToken { validity, lease }),
        ) = (&op.call, &op.outcome)
        {
            let current = *token == lease.token && lease.state == LeaseStateRec::Held;
            let consistent = match validity {
                Validity::Current => current,
                Validity::Superseded => !current && *token <= lease.token,
                Validity::Unknown => !current,
            };
            if !consistent {
                anomalies.push(json!({"kind": "validate-inconsistent", "op": op.describe()}));
            }
            let t = tl(svc);
            let superseded_before = t
                .superseded_at(*token)
                .is_some_and(|(when, _)| when < op.invoke_ns)
                || t.ended.get(token).is_some_and(|&e| e < op.invoke_ns);
            if *validity == Validity::Current && superseded_before {
                anomalies.push(json!({"kind": "superseded-validated", "op": op.describe()}));
            }
            let issued_before = t
                .obs
                .iter()
                .any(|o| o.token == *token && o.by_ns < op.invoke_ns);
            if *validity == Validity::Unknown && issued_before {
                anomalies.push(json!({"kind": "issued-token-unknown", "op": op.describe()}));
            }
        }
    }

    // Renewals acknowledged for tokens already superseded or revoked when they were sent.
    for r in &h.records {
        let Event::Renewed {
            agent,
            region,
            service,
            token,
            sent_ns,
            ..
        } = &r.event
        else {
            continue;
        };
        let t = tl(service);
        if let Some((when, ev)) = t.superseded_at(*token) {
            if when < *sent_ns {
                anomalies.push(json!({
                    "kind": "superseded-renewed", "service": service, "agent": agent,
                    "region": region, "token": token, "sent_ns": sent_ns,
                    "superseded_by": ev.token, "superseded_known_at_ns": when,
                    "evidence": ev.source,
                }));
                continue;
            }
        }
        if let Some(&when) = t.ended.get(token) {
            if when < *sent_ns {
                anomalies.push(json!({
                    "kind": "renewed-after-revoke", "service": service, "agent": agent,
                    "region": region, "token": token, "sent_ns": sent_ns,
                    "revocation_known_at_ns": when,
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
    use crate::history::{Event, WatchKind};

    fn run(h: &H) -> Verdict {
        check(&h.history(), &CheckConfig::default())
    }

    fn renewed(h: &mut H, t: u64, region: &str, token: u64, sent: u64) {
        h.at(
            t,
            Event::Renewed {
                agent: format!("agent-{region}"),
                region: region.into(),
                service: "s".into(),
                token,
                sent_ns: sent,
                valid_until_ns: sent + 1000,
                ttl_ms: 1,
            },
        );
    }

    #[test]
    fn clean_history_passes() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        renewed(&mut h, 12, "us", 5, 11);
        h.failover("c", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read("c", 40, 50, "s", held("eu", 9, 9));
        h.validate("c", 60, 70, "s", 5, Validity::Superseded, held("eu", 9, 9));
        h.validate("c", 60, 70, "s", 9, Validity::Current, held("eu", 9, 9));
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
    }

    #[test]
    fn two_regions_with_one_token_fail() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        renewed(&mut h, 12, "eu", 5, 11);
        assert_eq!(run(&h).kinds(), vec!["token-two-holders"]);
    }

    #[test]
    fn token_of_two_services_fails() {
        let mut h = H::new();
        h.read("c", 0, 10, "a", held("us", 5, 5));
        h.read("c", 20, 30, "b", held("us", 5, 5));
        assert_eq!(run(&h).kinds(), vec!["token-reused-across-services"]);
    }

    #[test]
    fn duplicate_and_stale_grants_fail() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        h.failover("c", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.failover("d", 20, 30, "s", "eu", 4, held("eu", 9, 9));
        assert!(run(&h).kinds().contains(&"duplicate-grant".to_string()));
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 9, 9));
        h.failover("c", 20, 30, "s", "us", 5, held("us", 7, 7));
        assert!(run(&h).kinds().contains(&"token-not-fresh".to_string()));
    }

    #[test]
    fn token_going_back_in_real_time_fails() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("eu", 9, 9));
        h.read("d", 20, 30, "s", held("us", 5, 5));
        assert!(run(&h).kinds().contains(&"token-regressed".to_string()));
    }

    #[test]
    fn renewal_of_superseded_or_revoked_token_fails() {
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        h.watch_event(20, "w", "s", 9, WatchKind::Granted, held("eu", 9, 9));
        renewed(&mut h, 40, "us", 5, 30);
        assert_eq!(run(&h).kinds(), vec!["superseded-renewed"]);
        let mut h = H::new();
        h.read("c", 0, 10, "s", revoking("us", 5, 7));
        renewed(&mut h, 40, "us", 5, 30);
        assert_eq!(run(&h).kinds(), vec!["renewed-after-revoke"]);
        // Sent before the supersession was known: no proof of a violation.
        let mut h = H::new();
        h.read("c", 0, 10, "s", revoking("us", 5, 7));
        renewed(&mut h, 40, "us", 5, 5);
        assert!(run(&h).valid);
    }

    #[test]
    fn wrong_validate_answers_fail() {
        let mut h = H::new();
        h.validate("c", 0, 10, "s", 5, Validity::Current, held("eu", 9, 9));
        assert_eq!(run(&h).kinds(), vec!["validate-inconsistent"]);
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("eu", 9, 9));
        h.validate("c", 20, 30, "s", 5, Validity::Current, held("us", 5, 5));
        assert!(run(&h)
            .kinds()
            .contains(&"superseded-validated".to_string()));
        let mut h = H::new();
        h.read("c", 0, 10, "s", held("us", 5, 5));
        h.validate("c", 20, 30, "s", 5, Validity::Unknown, held("eu", 9, 9));
        assert_eq!(run(&h).kinds(), vec!["issued-token-unknown"]);
    }
}
