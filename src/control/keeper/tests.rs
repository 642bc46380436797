//! The keeper's races, replayed with made-up instants: one test per behaviour.

use std::time::{Duration, Instant};

use super::core::*;
use crate::state::{Lease, LeaseMode, LeaseState};

const TTL: Duration = Duration::from_millis(2_000);

fn timing() -> KeeperTiming {
    KeeperTiming {
        drift: 0.05,
        margin: Duration::from_millis(50),
        tick: Duration::from_millis(25),
        stall: Duration::from_millis(500),
    }
}

/// ttl·(1+drift)+margin for TTL.
fn wait() -> Duration {
    timing().wait(TTL)
}

fn lease(holder: &str, token: u64, state: LeaseState, ttl: Duration) -> Lease {
    Lease {
        holder: (state != LeaseState::Vacant).then(|| holder.to_string()),
        token,
        revision: token,
        granted_at_ms: 0,
        ttl_ms: ttl.as_millis() as u64,
        state,
        mode: LeaseMode::ReadWrite,
    }
}

fn held(token: u64) -> Lease {
    lease("us-east", token, LeaseState::Held, TTL)
}

fn revoking(token: u64) -> Lease {
    lease("us-east", token, LeaseState::Revoking, TTL)
}

struct Msg {
    region: &'static str,
    agent: &'static str,
    stream: u64,
    demoted: bool,
    token: u64,
}

fn msg(agent: &'static str, stream: u64) -> Msg {
    Msg {
        region: "us-east",
        agent,
        stream,
        demoted: false,
        token: 0,
    }
}

impl Msg {
    fn ack(mut self, token: u64) -> Self {
        self.demoted = true;
        self.token = token;
        self
    }

    fn region(mut self, region: &'static str) -> Self {
        self.region = region;
        self
    }
}

fn renew(core: &mut KeeperCore, m: Msg, lease: &Lease, received: Instant, now: Instant) -> Renewal {
    core.renew(
        &RenewalMsg {
            service: "payments",
            region: m.region,
            agent_id: m.agent,
            stream: m.stream,
            received,
            demoted: m.demoted,
            token: m.token,
        },
        Some(lease),
        now,
    )
}

/// A core leading in term 1 since `t0`.
fn leading(t0: Instant) -> KeeperCore {
    let mut core = KeeperCore::new(timing(), t0);
    assert!(core.on_leadership(Some(1), t0));
    core
}

#[test]
fn a_renewal_is_refused_once_the_leader_decided_to_expire_its_token() {
    // The race of issue 7 (1): the holder renews just as the leader's deadline passes; the
    // renewal was received before the decision but reaches the keeper after it (it waited
    // for its read barrier). Answering RENEWED would let the holder act on while the expiry
    // commits and another region is granted.
    let t0 = Instant::now();
    let mut core = leading(t0);
    let l = held(7);
    let at = t0 + Duration::from_millis(100);
    assert_eq!(
        renew(&mut core, msg("a", 1), &l, at, at),
        Renewal::Renewed { token: 7 }
    );
    let deadline = at + wait();
    assert_eq!(
        core.due("payments", &l, false, deadline - Duration::from_millis(1)),
        None
    );
    assert_eq!(
        core.decide_expiry("payments", &l, false, deadline),
        Some(Due::Expired)
    );
    let late = renew(
        &mut core,
        msg("a", 1),
        &l,
        deadline - Duration::from_millis(5),
        deadline + Duration::from_millis(3),
    );
    assert_eq!(late, Renewal::Revoke { token: 7 });
    // ... and still refused on later ticks while the expiry is (re)proposed.
    let later = deadline + Duration::from_millis(200);
    assert_eq!(
        renew(&mut core, msg("a", 1), &l, later, later),
        Renewal::Revoke { token: 7 }
    );
    assert_eq!(
        core.decide_expiry("payments", &l, false, later),
        Some(Due::Expired)
    );
}

#[test]
fn a_renewal_recorded_before_the_decision_postpones_it() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let l = held(7);
    let first = t0 + Duration::from_millis(10);
    renew(&mut core, msg("a", 1), &l, first, first);
    let deadline = first + wait();
    // The renewal won the lock: the decision, re-checked, finds nothing due.
    let r = deadline - Duration::from_millis(2);
    assert_eq!(
        renew(
            &mut core,
            msg("a", 1),
            &l,
            r,
            deadline + Duration::from_millis(1)
        ),
        Renewal::Renewed { token: 7 }
    );
    assert_eq!(
        core.decide_expiry("payments", &l, false, deadline + Duration::from_millis(1)),
        None
    );
    assert_eq!(
        core.decide_expiry("payments", &l, false, r + wait()),
        Some(Due::Expired)
    );
}

#[test]
fn a_decision_for_an_old_token_does_not_refuse_a_new_grant() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let old = held(7);
    assert_eq!(core.due("payments", &old, false, t0), None);
    let at = t0 + wait();
    assert!(core.decide_expiry("payments", &old, false, at).is_some());
    let new = held(12);
    assert_eq!(
        renew(&mut core, msg("a", 1), &new, at, at),
        Renewal::Renewed { token: 12 }
    );
}

#[test]
fn a_renewal_under_a_longer_ttl_is_waited_out_even_if_the_lease_says_shorter() {
    // Issue 7 (2): the state never shortens a held lease's TTL any more, but the keeper does
    // not rely on it: each renewal keeps the deadline of the TTL it was answered with.
    let t0 = Instant::now();
    let mut core = leading(t0);
    let long = lease("us-east", 7, LeaseState::Held, Duration::from_secs(30));
    let at = t0 + Duration::from_secs(3);
    renew(&mut core, msg("a", 1), &long, at, at);
    let short = lease("us-east", 7, LeaseState::Held, Duration::from_secs(5));
    let promised = at + timing().wait(Duration::from_secs(30));
    assert_eq!(
        core.due("payments", &short, false, at + Duration::from_secs(20)),
        None
    );
    assert_eq!(
        core.due(
            "payments",
            &short,
            false,
            promised - Duration::from_millis(1)
        ),
        None
    );
    assert_eq!(
        core.due("payments", &short, false, promised),
        Some(Due::Expired)
    );
}

#[test]
fn a_stale_ack_for_an_older_token_does_not_fence_the_current_one() {
    // Issue 7 (3): an ack names the token it demoted from.
    let t0 = Instant::now();
    let mut core = leading(t0);
    let at = t0 + wait(); // past the new leader's wait-out
    renew(&mut core, msg("a", 1), &held(9), at, at);
    let r = revoking(9);
    assert_eq!(
        renew(&mut core, msg("a", 1).ack(4), &r, at, at),
        Renewal::Revoke { token: 9 }
    );
    assert_eq!(core.fence_status("payments", 9, Some(&r), at), Ok(None));
    renew(&mut core, msg("a", 1).ack(9), &r, at, at);
    assert_eq!(
        core.fence_status("payments", 9, Some(&r), at),
        Ok(Some(FenceOutcome::DemotionAck))
    );
}

#[test]
fn an_ack_from_another_stream_does_not_fence_a_live_holder() {
    // Issue 7 (5): a forged `demoted = true` with the holder's agent id, on a stream of its own.
    let t0 = Instant::now();
    let mut core = leading(t0);
    let at = t0 + wait();
    renew(&mut core, msg("a", 1), &held(9), at, at);
    let r = revoking(9);
    renew(&mut core, msg("a", 666).ack(9), &r, at, at);
    assert_eq!(core.fence_status("payments", 9, Some(&r), at), Ok(None));
    // Claiming another region for the same id neither acks nor hides the real agent.
    renew(
        &mut core,
        msg("a", 666).region("eu-west").ack(9),
        &r,
        at,
        at,
    );
    assert_eq!(core.fence_status("payments", 9, Some(&r), at), Ok(None));
    // The holder's own stream acks.
    renew(&mut core, msg("a", 1).ack(9), &r, at, at);
    assert_eq!(
        core.fence_status("payments", 9, Some(&r), at),
        Ok(Some(FenceOutcome::DemotionAck))
    );
}

#[test]
fn every_agent_that_may_still_act_must_ack() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let at = t0 + wait();
    renew(&mut core, msg("a", 1), &held(9), at, at);
    renew(&mut core, msg("b", 2), &held(9), at, at);
    let r = revoking(9);
    renew(&mut core, msg("a", 1).ack(9), &r, at, at);
    assert_eq!(core.fence_status("payments", 9, Some(&r), at), Ok(None));
    renew(&mut core, msg("b", 2).ack(9), &r, at, at);
    assert_eq!(
        core.fence_status("payments", 9, Some(&r), at),
        Ok(Some(FenceOutcome::DemotionAck))
    );
}

#[test]
fn a_new_leader_waits_out_a_whole_ttl_before_acks_count() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let r = revoking(9);
    let soon = t0 + Duration::from_millis(100);
    renew(&mut core, msg("a", 1), &held(9), soon, soon);
    renew(&mut core, msg("a", 1).ack(9), &r, soon, soon);
    // An agent that renewed with the previous leader may still act: no fence yet.
    assert_eq!(core.fence_status("payments", 9, Some(&r), soon), Ok(None));
    assert_eq!(
        core.fence_status("payments", 9, Some(&r), t0 + wait()),
        Ok(Some(FenceOutcome::DemotionAck))
    );
}

#[test]
fn leadership_lost_mid_expiry_forgets_the_decision_and_a_new_term_starts_over() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let l = held(7);
    assert_eq!(core.due("payments", &l, false, t0), None);
    let deadline = t0 + wait();
    assert!(core
        .decide_expiry("payments", &l, false, deadline)
        .is_some());
    assert!(core.on_leadership(None, deadline));
    assert_eq!(
        renew(&mut core, msg("a", 1), &l, deadline, deadline),
        Renewal::NotLeader
    );
    assert_eq!(core.due("payments", &l, false, deadline), None);
    assert!(core
        .fence_status("payments", 7, Some(&l), deadline)
        .is_err());
    // Leading again (a later term): every lease counts as renewed at that moment.
    let back = deadline + Duration::from_millis(300);
    assert!(core.on_leadership(Some(3), back));
    assert_eq!(core.due("payments", &l, false, back), None);
    assert_eq!(
        core.due(
            "payments",
            &l,
            false,
            back + wait() - Duration::from_millis(1)
        ),
        None
    );
    assert_eq!(
        core.due("payments", &l, false, back + wait()),
        Some(Due::Expired)
    );
}

#[test]
fn a_stall_counts_every_lease_as_renewed() {
    // A slow disk (a leadership round that took longer than a stall) or a paused keeper:
    // renewals queued meanwhile were never seen, so nothing expires for a whole TTL.
    let t0 = Instant::now();
    let mut core = leading(t0);
    let l = held(7);
    assert_eq!(core.due("payments", &l, false, t0), None);
    let late = t0 + wait() * 2;
    assert!(core.due("payments", &l, false, late).is_some());
    core.on_stall(late);
    assert_eq!(
        core.due(
            "payments",
            &l,
            false,
            late + wait() - Duration::from_millis(1)
        ),
        None
    );
    assert!(core.due("payments", &l, false, late + wait()).is_some());
}

#[test]
fn a_fresh_grant_is_not_expired_against_the_old_leases_renewals() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let later = t0 + wait() * 3;
    // Token 12 first seen now: it counts as renewed now.
    assert_eq!(core.due("payments", &held(12), false, later), None);
    assert!(core
        .due("payments", &held(12), false, later + wait())
        .is_some());
}

#[test]
fn a_dead_holder_expires_even_while_a_run_waits_but_a_revoked_one_is_left_to_the_run() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    assert_eq!(core.due("payments", &held(7), true, t0), None);
    let at = t0 + wait();
    assert_eq!(core.due("payments", &held(7), true, at), Some(Due::Expired));
    assert_eq!(core.due("payments", &revoking(7), true, at), None);
    assert_eq!(
        core.due("payments", &revoking(7), false, at),
        Some(Due::Expired)
    );
}

#[test]
fn an_operator_switchover_is_never_expired_under_it() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    assert_eq!(core.due("payments", &revoking(7), false, t0), None);
    assert!(core.begin_switchover("payments"));
    assert!(!core.begin_switchover("payments"));
    let at = t0 + wait();
    assert_eq!(core.due("payments", &revoking(7), false, at), None);
    core.end_switchover("payments");
    assert!(core.due("payments", &revoking(7), false, at).is_some());
}

#[test]
fn renewals_from_other_regions_or_of_a_vacant_lease_are_not_holder() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    assert_eq!(
        renew(&mut core, msg("a", 1).region("eu-west"), &held(7), t0, t0),
        Renewal::NotHolder
    );
    let vacant = lease("us-east", 7, LeaseState::Vacant, TTL);
    assert_eq!(
        renew(&mut core, msg("a", 1), &vacant, t0, t0),
        Renewal::NotHolder
    );
    assert_eq!(
        core.renew(
            &RenewalMsg {
                service: "nope",
                region: "us-east",
                agent_id: "a",
                stream: 1,
                received: t0,
                demoted: false,
                token: 0,
            },
            None,
            t0
        ),
        Renewal::UnknownService
    );
}

#[test]
fn agents_are_capped_per_service_and_idle_ones_are_forgotten() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let l = lease("us-east", 7, LeaseState::Held, TTL);
    let ids: Vec<String> = (0..MAX_AGENTS_PER_SERVICE)
        .map(|i| format!("agent-{i}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let r = core.renew(
            &RenewalMsg {
                service: "payments",
                region: "eu-west",
                agent_id: id,
                stream: i as u64,
                received: t0,
                demoted: false,
                token: 0,
            },
            Some(&l),
            t0,
        );
        assert_eq!(r, Renewal::NotHolder);
    }
    assert_eq!(
        renew(&mut core, msg("real", 999), &l, t0, t0),
        Renewal::TooManyAgents
    );
    // A minute later the silent ones are forgotten and the real agent gets in.
    let later = t0 + Duration::from_secs(61);
    assert_eq!(
        renew(&mut core, msg("real", 999), &l, later, later),
        Renewal::Renewed { token: 7 }
    );
    assert_eq!(core.agent_count("payments"), 1);
}

#[test]
fn an_agent_whose_renewal_may_still_be_valid_is_never_pruned() {
    let t0 = Instant::now();
    let mut core = leading(t0);
    let long = lease("us-east", 7, LeaseState::Held, Duration::from_secs(120));
    renew(&mut core, msg("a", 1), &long, t0, t0);
    core.prune(t0 + Duration::from_secs(90));
    assert_eq!(core.agent_count("payments"), 1);
    core.prune(t0 + Duration::from_secs(200));
    assert_eq!(core.agent_count("payments"), 0);
}

#[test]
fn a_revoked_holder_whose_renewals_all_ran_out_is_fenced_by_ttl_not_by_ack() {
    // No agent acknowledged anything: fencing must not be reported as a demotion ack just
    // because no agent is left that could still act (a later first sight of the token, its
    // baseline, keeps the TTL deadline itself in the future).
    let t0 = Instant::now();
    let mut core = leading(t0);
    let at = t0 + wait();
    renew(&mut core, msg("a", 1), &held(9), at, at);
    let r = revoking(9);
    let after = at + wait();
    // A token this leader first sees only now (e.g. re-granted): its baseline is `after`.
    let fresh = lease("us-east", 10, LeaseState::Revoking, TTL);
    assert_eq!(
        core.fence_status("payments", 9, Some(&r), after),
        Ok(Some(FenceOutcome::TtlExpired))
    );
    assert_eq!(
        core.fence_status("payments", 10, Some(&fresh), after),
        Ok(Some(FenceOutcome::TtlExpired))
    );
    assert_eq!(
        core.due("payments", &fresh, false, after),
        Some(Due::Expired)
    );
}
