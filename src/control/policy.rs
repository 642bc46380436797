//! Automation policy, pure: given a service's replicated record, the cluster's voters and
//! the leader's clock, what should happen now and why. No I/O, no clocks: `now_ms` is
//! passed in, so every rule is unit-tested with explicit times.

use std::collections::{BTreeMap, BTreeSet};

use crate::health::verdict::{decide as decide_region, VantageView};
use crate::state::{FailbackMode, LeaseState, RunKind, ServiceRecord, Trigger};

/// How a region looks from the vantage regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A majority of vantage regions see it healthy.
    Healthy,
    /// A majority of vantage regions see it failing.
    Down,
    /// Neither (no check, no reports yet, or a split view).
    Unknown,
}

/// A region's health with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionHealth {
    /// The verdict.
    pub health: Health,
    /// Why, in words.
    pub explanation: String,
    /// Leader time of the latest observation change for the region.
    pub changed_ms: Option<i64>,
}

/// `voters`: node id -> region, of the current voters (the vantage points).
pub fn region_health(
    rec: &ServiceRecord,
    region: &str,
    voters: &BTreeMap<u64, String>,
) -> RegionHealth {
    if !rec.spec.health.contains_key(region) {
        return RegionHealth {
            health: Health::Unknown,
            explanation: "no health check".into(),
            changed_ms: None,
        };
    }
    let observed = rec.observations.get(region);
    let reports: BTreeMap<u64, (String, bool)> = observed
        .map(|by_node| {
            by_node
                .iter()
                .filter(|(node, _)| voters.contains_key(node))
                .map(|(node, o)| (*node, (o.vantage_region.clone(), o.healthy)))
                .collect()
        })
        .unwrap_or_default();
    let changed_ms = observed.and_then(|m| m.values().map(|o| o.at_ms).max());
    if reports.is_empty() {
        return RegionHealth {
            health: Health::Unknown,
            explanation: "no observation yet".into(),
            changed_ms,
        };
    }
    let verdict = decide_region(&reports, voters.values());
    let healthy = verdict
        .views
        .iter()
        .filter(|(_, v)| *v == VantageView::Healthy)
        .count();
    let health = if verdict.down {
        Health::Down
    } else if healthy * 2 > verdict.total {
        Health::Healthy
    } else {
        Health::Unknown
    };
    RegionHealth {
        health,
        explanation: verdict.explanation,
        changed_ms,
    }
}

/// One candidate region and whether automation may move the lease there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The candidate region.
    pub region: String,
    /// Eligible now?
    pub eligible: bool,
    /// Why not (or "eligible").
    pub reasons: Vec<String>,
    /// Its health.
    pub health: RegionHealth,
}

/// Every candidate region in preference order, with reasons.
pub fn candidates(rec: &ServiceRecord, voters: &BTreeMap<u64, String>) -> Vec<Candidate> {
    rec.spec
        .regions
        .iter()
        .map(|region| {
            let health = region_health(rec, region, voters);
            let mut reasons = Vec::new();
            if !rec.spec.is_allowed(region) {
                reasons.push(format!(
                    "not allowed (allowed: {})",
                    rec.spec.allowed_regions.join(", ")
                ));
            }
            if rec.lease.holder.as_deref() == Some(region) && rec.lease.state != LeaseState::Vacant
            {
                reasons.push("current holder".into());
            }
            if health.health == Health::Down {
                reasons.push(format!("unhealthy: {}", health.explanation));
            }
            let eligible = reasons.is_empty();
            if eligible {
                reasons.push("eligible".into());
            }
            Candidate {
                region: region.clone(),
                eligible,
                reasons,
                health,
            }
        })
        .collect()
}

/// What automation should do for a service now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing; the reason says why (for `baton plan`).
    Wait(String),
    /// Start a run.
    Start {
        /// Failover or failback.
        kind: RunKind,
        /// What the policy saw (health, a vacant lease, a healed preferred region).
        trigger: Trigger,
        /// The region to move the lease to.
        to: String,
        /// Why, in words.
        reason: String,
        /// When the trigger was first observable.
        detected_ms: i64,
    },
}

/// Why automation may not act on this service now, if anything stops it.
pub fn blockers(rec: &ServiceRecord, now_ms: i64) -> Vec<String> {
    let mut b = Vec::new();
    if let Some(run) = rec.active_run {
        b.push(format!("run {run} in progress"));
    }
    if rec.frozen {
        b.push(format!("frozen (baton unfreeze {})", rec.spec.name));
    }
    if let Some(p) = &rec.paused {
        b.push(p.clone());
    }
    if !rec.spec.auto_failover {
        b.push("automatic failover is off".into());
    }
    if let Some(until) = cooldown_until(rec) {
        if now_ms < until {
            b.push(format!(
                "cooldown for {} ms more (moves away from a live holder and failbacks wait)",
                until - now_ms
            ));
        }
    }
    b
}

fn cooldown_until(rec: &ServiceRecord) -> Option<i64> {
    rec.auto_moves
        .iter()
        .max()
        .map(|last| last + rec.spec.cooldown_ms as i64)
}

/// What to do for `rec` now. `live` holds the regions with an agent heard from recently:
/// among eligible regions, those that can take the lease up come first.
pub fn decide(
    rec: &ServiceRecord,
    voters: &BTreeMap<u64, String>,
    live: &BTreeSet<String>,
    now_ms: i64,
) -> Decision {
    let vacated_ms = rec.vacated_ms;
    if let Some(run) = rec.active_run {
        return Decision::Wait(format!("run {run} in progress"));
    }
    if rec.frozen {
        return Decision::Wait("frozen: automation is off".into());
    }
    if let Some(p) = &rec.paused {
        return Decision::Wait(p.clone());
    }
    if !rec.spec.auto_failover {
        return Decision::Wait("automatic failover is off".into());
    }
    let mut cands = candidates(rec, voters);
    // A region whose lease just expired stopped renewing: try the others first.
    if rec.lease.state == LeaseState::Vacant {
        if let Some(from) = &rec.vacated_from {
            let others = cands.iter().any(|c| c.eligible && &c.region != from);
            for c in cands
                .iter_mut()
                .filter(|c| &c.region == from && c.eligible && others)
            {
                c.eligible = false;
                c.reasons = vec!["its lease expired: it stopped renewing".into()];
            }
        }
    }
    let first_eligible = || {
        cands
            .iter()
            .find(|c| c.eligible && live.contains(&c.region))
            .or_else(|| cands.iter().find(|c| c.eligible))
    };
    let in_cooldown = cooldown_until(rec).is_some_and(|until| now_ms < until);
    let why_none = || {
        cands
            .iter()
            .map(|c| format!("{}: {}", c.region, c.reasons.join("; ")))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    match rec.lease.state {
        // Nobody is primary: refill at once (no cooldown: a vacant lease is an outage).
        LeaseState::Vacant => match first_eligible() {
            Some(c) => Decision::Start {
                kind: RunKind::Failover,
                trigger: Trigger::LeaseExpired,
                to: c.region.clone(),
                reason: "the lease is vacant: its holder stopped renewing".into(),
                detected_ms: vacated_ms.unwrap_or(now_ms),
            },
            None => Decision::Wait(format!(
                "the lease is vacant and no region is eligible: {}",
                why_none()
            )),
        },
        // Revoking without a run: the keeper ends it by ack or TTL.
        LeaseState::Revoking => Decision::Wait("revocation in progress".into()),
        LeaseState::Held => {
            let holder = rec.lease.holder.clone().unwrap_or_default();
            let holder_health = region_health(rec, &holder, voters);
            if holder_health.health == Health::Down {
                if in_cooldown {
                    return Decision::Wait(format!(
                        "{holder} is down, but the service is in cooldown"
                    ));
                }
                return match first_eligible() {
                    Some(c) => Decision::Start {
                        kind: RunKind::Failover,
                        trigger: Trigger::HealthDown(holder_health.explanation.clone()),
                        to: c.region.clone(),
                        reason: format!("{holder} is {}", holder_health.explanation),
                        detected_ms: holder_health.changed_ms.unwrap_or(now_ms),
                    },
                    None => Decision::Wait(format!(
                        "{holder} is down and no region is eligible: {}",
                        why_none()
                    )),
                };
            }
            if rec.spec.failback != FailbackMode::Auto {
                return Decision::Wait(format!("{holder} holds the lease"));
            }
            let Some(preferred) = rec.spec.regions.iter().find(|r| rec.spec.is_allowed(r)) else {
                return Decision::Wait("no allowed region".into());
            };
            if *preferred == holder {
                return Decision::Wait(format!("the preferred region {holder} holds the lease"));
            }
            let p = region_health(rec, preferred, voters);
            if p.health != Health::Healthy {
                return Decision::Wait(format!(
                    "failback waits: {preferred} is not healthy ({})",
                    p.explanation
                ));
            }
            // The window starts when the preferred region last changed health or when the
            // current holder got the lease, whichever is later: an operator's move away from
            // the preferred region is not undone at once.
            let stable_since = p.changed_ms.unwrap_or(now_ms).max(rec.lease.granted_at_ms);
            let stable_for = now_ms - stable_since;
            if stable_for < rec.spec.failback_stable_ms as i64 {
                return Decision::Wait(format!(
                    "failback waits: {preferred} healthy for {stable_for} ms of the {} ms stable window",
                    rec.spec.failback_stable_ms
                ));
            }
            if in_cooldown {
                return Decision::Wait("failback waits for the cooldown".into());
            }
            Decision::Start {
                kind: RunKind::Failback,
                trigger: Trigger::Failback,
                to: preferred.clone(),
                reason: format!("{preferred} has been healthy for {stable_for} ms"),
                detected_ms: stable_since + rec.spec.failback_stable_ms as i64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, HealthCheck, Observation, Request, ServiceSpec, State};

    const T: i64 = 1_700_000_000_000;

    fn voters() -> BTreeMap<u64, String> {
        [(1, "us-east"), (2, "eu-west"), (3, "ap-south")]
            .into_iter()
            .map(|(i, r)| (i, r.to_string()))
            .collect()
    }

    fn record(failback: FailbackMode) -> ServiceRecord {
        let mut spec = ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"]);
        spec.failback = failback;
        spec.failback_stable_ms = 10_000;
        spec.cooldown_ms = 30_000;
        for r in ["us-east", "eu-west", "ap-south"] {
            spec.health.insert(
                r.into(),
                HealthCheck {
                    kind: "tcp".into(),
                    target: "127.0.0.1:1".into(),
                    interval_ms: 100,
                    timeout_ms: 50,
                    threshold: 2,
                },
            );
        }
        let mut s = State::default();
        s.apply(
            1,
            &Request {
                at_ms: T,
                actor: "op".into(),
                command: Command::PutService {
                    spec,
                    reason: "r".into(),
                },
            },
        );
        s.service("payments").cloned().unwrap()
    }

    fn observe(rec: &mut ServiceRecord, region: &str, node: u64, healthy: bool, at_ms: i64) {
        let vantage = voters()[&node].clone();
        rec.observations.entry(region.into()).or_default().insert(
            node,
            Observation {
                vantage_region: vantage,
                healthy,
                detail: if healthy {
                    "ok".into()
                } else {
                    "HTTP 503".into()
                },
                at_ms,
            },
        );
    }

    #[test]
    fn one_vantage_seeing_the_holder_fail_does_nothing() {
        let mut rec = record(FailbackMode::Manual);
        observe(&mut rec, "us-east", 2, false, T);
        observe(&mut rec, "us-east", 3, true, T);
        assert!(matches!(
            decide(&rec, &voters(), &BTreeSet::new(), T + 1),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_majority_of_vantages_seeing_the_holder_fail_starts_a_failover_to_the_next_healthy_region()
    {
        let mut rec = record(FailbackMode::Manual);
        observe(&mut rec, "us-east", 2, false, T);
        observe(&mut rec, "us-east", 3, false, T + 5);
        observe(&mut rec, "eu-west", 1, false, T);
        observe(&mut rec, "eu-west", 3, false, T);
        match decide(&rec, &voters(), &BTreeSet::new(), T + 10) {
            Decision::Start {
                kind,
                trigger,
                to,
                detected_ms,
                ..
            } => {
                assert_eq!(kind, RunKind::Failover);
                assert!(matches!(trigger, Trigger::HealthDown(_)));
                assert_eq!(to, "ap-south", "eu-west is down too");
                assert_eq!(detected_ms, T + 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vacant_lease_is_refilled_even_in_cooldown() {
        let mut rec = record(FailbackMode::Manual);
        rec.lease.state = LeaseState::Vacant;
        rec.lease.holder = None;
        rec.vacated_ms = Some(T);
        rec.auto_moves.push(T);
        match decide(&rec, &voters(), &BTreeSet::new(), T + 1) {
            Decision::Start {
                trigger,
                to,
                detected_ms,
                ..
            } => {
                assert_eq!(trigger, Trigger::LeaseExpired);
                assert_eq!(to, "us-east");
                assert_eq!(detected_ms, T);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_region_is_avoided_and_regions_with_live_agents_come_first() {
        let mut rec = record(FailbackMode::Manual);
        rec.lease.state = LeaseState::Vacant;
        rec.vacated_from = rec.lease.holder.take();
        let live: BTreeSet<String> = ["ap-south".to_string()].into();
        match decide(&rec, &voters(), &live, T) {
            Decision::Start { to, .. } => assert_eq!(to, "ap-south"),
            other => panic!("{other:?}"),
        }
        match decide(&rec, &voters(), &BTreeSet::new(), T) {
            Decision::Start { to, .. } => assert_eq!(to, "eu-west", "us-east just expired"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cooldown_delays_a_move_away_from_a_live_but_unhealthy_holder() {
        let mut rec = record(FailbackMode::Manual);
        observe(&mut rec, "us-east", 2, false, T);
        observe(&mut rec, "us-east", 3, false, T);
        rec.auto_moves.push(T);
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T + 1_000), Decision::Wait(w) if w.contains("cooldown"))
        );
        assert!(matches!(
            decide(&rec, &voters(), &BTreeSet::new(), T + 31_000),
            Decision::Start { .. }
        ));
    }

    #[test]
    fn frozen_paused_or_busy_services_are_left_alone_and_say_why() {
        let mut rec = record(FailbackMode::Manual);
        rec.lease.state = LeaseState::Vacant;
        rec.frozen = true;
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T), Decision::Wait(w) if w.contains("frozen"))
        );
        rec.frozen = false;
        rec.paused = Some("flap limit".into());
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T), Decision::Wait(w) if w.contains("flap"))
        );
        rec.paused = None;
        rec.active_run = Some(7);
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T), Decision::Wait(w) if w.contains("run 7"))
        );
        assert_eq!(blockers(&rec, T), vec!["run 7 in progress".to_string()]);
    }

    #[test]
    fn failback_waits_for_the_stable_window_and_never_happens_when_manual() {
        let mut rec = record(FailbackMode::Auto);
        rec.lease.holder = Some("eu-west".into());
        for n in [1, 2, 3] {
            observe(&mut rec, "us-east", n, true, T);
        }
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T + 5_000), Decision::Wait(w) if w.contains("stable window"))
        );
        match decide(&rec, &voters(), &BTreeSet::new(), T + 10_000) {
            Decision::Start { kind, to, .. } => {
                assert_eq!((kind, to.as_str()), (RunKind::Failback, "us-east"))
            }
            other => panic!("{other:?}"),
        }
        // A holder granted after the region recovered restarts the window.
        rec.lease.granted_at_ms = T + 8_000;
        assert!(
            matches!(decide(&rec, &voters(), &BTreeSet::new(), T + 10_000), Decision::Wait(w) if w.contains("stable window"))
        );
        assert!(matches!(
            decide(&rec, &voters(), &BTreeSet::new(), T + 18_000),
            Decision::Start { .. }
        ));
        rec.spec.failback = FailbackMode::Manual;
        assert!(matches!(
            decide(&rec, &voters(), &BTreeSet::new(), T + 100_000),
            Decision::Wait(_)
        ));
        rec.spec.failback = FailbackMode::Never;
        assert!(matches!(
            decide(&rec, &voters(), &BTreeSet::new(), T + 100_000),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn candidates_explain_every_region() {
        let mut rec = record(FailbackMode::Manual);
        rec.spec.allowed_regions = vec!["us-east".into(), "eu-west".into()];
        observe(&mut rec, "eu-west", 1, false, T);
        observe(&mut rec, "eu-west", 3, false, T);
        let c = candidates(&rec, &voters());
        assert_eq!(c[0].reasons, vec!["current holder".to_string()]);
        assert!(
            c[1].reasons[0].starts_with("unhealthy"),
            "{:?}",
            c[1].reasons
        );
        assert!(
            c[2].reasons[0].starts_with("not allowed"),
            "{:?}",
            c[2].reasons
        );
        assert!(c.iter().all(|c| !c.eligible));
    }
}
