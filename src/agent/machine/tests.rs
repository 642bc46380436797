use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn core() -> AgentCore {
    AgentCore::new("payments", "us-east", "agent-1", true, true)
}

fn holding(token: u64, valid_until: Instant) -> LeaseStatus {
    LeaseStatus::Holding { token, valid_until }
}

fn revoking(token: u64, valid_until: Instant) -> LeaseStatus {
    LeaseStatus::Revoking { token, valid_until }
}

/// The hooks among `actions`.
fn hooks(actions: &[Action]) -> Vec<&Hook> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RunHook(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// The single hook among `actions`, checked to be `kind` for `token`.
fn one_hook(actions: &[Action], kind: HookKind, token: u64) -> Hook {
    let hs = hooks(actions);
    assert_eq!(hs.len(), 1, "expected one hook in {actions:?}");
    assert_eq!(hs[0].kind, kind, "{actions:?}");
    assert_eq!(hs[0].token, token, "{actions:?}");
    hs[0].clone()
}

fn acks(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ack { token } => Some(*token),
            _ => None,
        })
        .collect()
}

fn published(actions: &[Action]) -> Option<&AgentState> {
    actions.iter().find_map(|a| match a {
        Action::Publish(s) => Some(s),
        _ => None,
    })
}

fn env<'a>(hook: &'a Hook, key: &str) -> Option<&'a str> {
    hook.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn reason(hook: &Hook) -> Option<&str> {
    env(hook, "BATON_REASON")
}

/// A core whose service is primary with `token`, valid until `t + 10 s`.
fn primary(t: Instant, token: u64) -> AgentCore {
    let mut c = core();
    let a = c.on_status(holding(token, t + 10 * SEC), t);
    one_hook(&a, HookKind::Promote, token);
    let a = c.on_hook_done(&HookOutcome::Succeeded, t);
    assert_eq!(published(&a).map(|s| s.role), Some(Role::Primary));
    c
}

#[test]
fn promote_runs_with_env_and_publishes_primary_after_the_hook() {
    let t = Instant::now();
    let mut c = core();
    assert!(c.on_status(LeaseStatus::Pending, t).is_empty());
    let a = c.on_status(holding(7, t + 3 * SEC), t);
    let h = one_hook(&a, HookKind::Promote, 7);
    assert_eq!(env(&h, "BATON_SERVICE"), Some("payments"));
    assert_eq!(env(&h, "BATON_REGION"), Some("us-east"));
    assert_eq!(env(&h, "BATON_TOKEN"), Some("7"));
    assert_eq!(env(&h, "BATON_VALID_UNTIL_MS"), Some("3000"));
    assert_eq!(env(&h, "BATON_EVENT"), Some("promote"));
    assert_eq!(reason(&h), None);
    // Not primary until the service was told.
    assert!(published(&a).is_none());
    assert_eq!(c.published().role, Role::Replica);
    let a = c.on_hook_done(&HookOutcome::Succeeded, t);
    let s = published(&a).expect("publish");
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.token, Some(7));
    assert_eq!(s.valid_until, Some(t + 3 * SEC));
}

#[test]
fn no_duplicate_promote_for_the_same_token() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    for i in 1..5u32 {
        let a = c.on_status(holding(7, t + (10 + i) * SEC), t + i * SEC);
        assert!(hooks(&a).is_empty(), "{a:?}");
        // Only the new validity is published.
        assert_eq!(
            published(&a).and_then(|s| s.valid_until),
            Some(t + (10 + i) * SEC)
        );
    }
}

#[test]
fn revocation_publishes_replica_runs_demote_and_acks_only_after_the_hook() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    let a = c.on_status(revoking(7, t + 2 * SEC), t);
    // Replica first, then the hook; no ack yet.
    assert!(matches!(a.first(), Some(Action::Publish(s)) if s.role == Role::Replica));
    let h = one_hook(&a, HookKind::Demote, 7);
    assert_eq!(reason(&h), Some("revoked"));
    assert_eq!(env(&h, "BATON_EVENT"), Some("demote"));
    assert_eq!(env(&h, "BATON_VALID_UNTIL_MS"), Some("2000"));
    assert!(acks(&a).is_empty());
    // More of the same while the hook runs: still no ack.
    assert!(acks(&c.on_status(revoking(7, t + 2 * SEC), t)).is_empty());
    let a = c.on_hook_done(&HookOutcome::Succeeded, t + SEC);
    assert_eq!(acks(&a), vec![7]);
    assert!(hooks(&a).is_empty());
    // The session reports the lease lost after the ack: nothing more to do.
    assert!(c.on_status(LeaseStatus::Lost, t + SEC).is_empty());
    assert!(c.is_idle());
}

#[test]
fn revocation_during_promote_cancels_it_then_demotes_then_acks() {
    let t = Instant::now();
    let mut c = core();
    one_hook(
        &c.on_status(holding(7, t + 10 * SEC), t),
        HookKind::Promote,
        7,
    );
    let a = c.on_status(revoking(7, t + 5 * SEC), t);
    assert_eq!(a, vec![Action::CancelHook], "the promote is killed first");
    assert!(c.on_tick(t).is_empty(), "asked to cancel once");
    let a = c.on_hook_done(&HookOutcome::Cancelled, t);
    let h = one_hook(&a, HookKind::Demote, 7);
    assert_eq!(reason(&h), Some("revoked"));
    assert!(acks(&a).is_empty());
    // Never published primary.
    assert_eq!(c.published().role, Role::Replica);
    assert_eq!(acks(&c.on_hook_done(&HookOutcome::Succeeded, t)), vec![7]);
}

#[test]
fn self_fences_on_expiry_while_the_cluster_is_unreachable() {
    let t = Instant::now();
    let mut c = core();
    one_hook(&c.on_status(holding(7, t + SEC), t), HookKind::Promote, 7);
    c.on_hook_done(&HookOutcome::Succeeded, t);
    assert_eq!(c.deadline(), Some(t + SEC));
    // No renewal arrives; the agent's own timer fires at the deadline.
    assert!(c.on_tick(t + SEC / 2).is_empty());
    let a = c.on_tick(t + SEC);
    assert!(matches!(a.first(), Some(Action::Publish(s)) if s.role == Role::Replica));
    let h = one_hook(&a, HookKind::Demote, 7);
    assert_eq!(reason(&h), Some("expired"));
    assert_eq!(env(&h, "BATON_VALID_UNTIL_MS"), Some("0"));
    assert_eq!(c.deadline(), None);
    // The session's own timer says the same a moment later: no second demote.
    assert!(c.on_status(LeaseStatus::Lost, t + SEC).is_empty());
    let a = c.on_hook_done(&HookOutcome::Succeeded, t + 2 * SEC);
    assert!(a.is_empty(), "no ack without a revocation: {a:?}");
}

#[test]
fn self_fences_when_the_session_reports_lost() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    let a = c.on_status(LeaseStatus::Lost, t + SEC);
    assert_eq!(reason(&one_hook(&a, HookKind::Demote, 7)), Some("expired"));
}

#[test]
fn a_status_read_after_its_validity_does_not_promote() {
    let t = Instant::now();
    let mut c = core();
    let a = c.on_status(holding(7, t + SEC), t + 2 * SEC);
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(c.deadline(), None);
}

#[test]
fn not_holder_after_holding_demotes_but_not_before() {
    let t = Instant::now();
    let mut c = core();
    assert!(c.on_status(LeaseStatus::NotHolder, t).is_empty());
    let mut c2 = primary(t, 7);
    let a = c2.on_status(LeaseStatus::NotHolder, t);
    assert_eq!(
        reason(&one_hook(&a, HookKind::Demote, 7)),
        Some("not-holder")
    );
    assert!(acks(&c2.on_hook_done(&HookOutcome::Succeeded, t)).is_empty());
}

#[test]
fn re_promotes_with_a_new_token_after_a_demotion() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(&c.on_status(revoking(7, t + SEC), t), HookKind::Demote, 7);
    assert_eq!(acks(&c.on_hook_done(&HookOutcome::Succeeded, t)), vec![7]);
    assert!(c.on_status(LeaseStatus::Lost, t).is_empty());
    assert!(c.on_status(LeaseStatus::NotHolder, t + SEC).is_empty());
    let a = c.on_status(holding(12, t + 20 * SEC), t + 2 * SEC);
    let h = one_hook(&a, HookKind::Promote, 12);
    assert_eq!(env(&h, "BATON_TOKEN"), Some("12"));
    let a = c.on_hook_done(&HookOutcome::Succeeded, t + 2 * SEC);
    assert_eq!(published(&a).and_then(|s| s.token), Some(12));
}

#[test]
fn re_promotes_the_same_token_after_self_fencing_and_renewal() {
    // Validity ran out (cluster unreachable), then renewals got through again and the
    // region still holds the same token: the service is told again.
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(
        &c.on_status(LeaseStatus::Lost, t + SEC),
        HookKind::Demote,
        7,
    );
    assert!(c.on_hook_done(&HookOutcome::Succeeded, t + SEC).is_empty());
    let a = c.on_status(holding(7, t + 20 * SEC), t + 2 * SEC);
    one_hook(&a, HookKind::Promote, 7);
}

#[test]
fn a_new_token_while_primary_demotes_before_promoting() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    let a = c.on_status(holding(12, t + 10 * SEC), t);
    assert_eq!(reason(&one_hook(&a, HookKind::Demote, 7)), Some("expired"));
    let a = c.on_hook_done(&HookOutcome::Succeeded, t);
    one_hook(&a, HookKind::Promote, 12);
}

#[test]
fn a_lapse_during_the_promote_hook_is_followed_by_a_demote() {
    let t = Instant::now();
    let mut c = core();
    one_hook(&c.on_status(holding(7, t + SEC), t), HookKind::Promote, 7);
    // While the hook runs, validity runs out (the hook is killed), then a renewal brings
    // it back before the hook has ended: the demote is still owed.
    assert_eq!(
        c.on_status(LeaseStatus::Lost, t + SEC),
        vec![Action::CancelHook]
    );
    assert!(c.on_status(holding(7, t + 5 * SEC), t + 2 * SEC).is_empty());
    let a = c.on_hook_done(&HookOutcome::Cancelled, t + 2 * SEC);
    assert_eq!(reason(&one_hook(&a, HookKind::Demote, 7)), Some("expired"));
    assert_eq!(c.published().role, Role::Replica);
    let a = c.on_hook_done(&HookOutcome::Succeeded, t + 2 * SEC);
    one_hook(&a, HookKind::Promote, 7);
}

#[test]
fn a_timed_out_demote_hook_is_not_acknowledged() {
    // Issue 7 (4): the service may still be primary; the coordinator must wait out the TTL.
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(&c.on_status(revoking(7, t + SEC), t), HookKind::Demote, 7);
    assert!(acks(&c.on_hook_done(&HookOutcome::TimedOut, t + SEC / 2)).is_empty());
    assert!(acks(&c.on_status(revoking(7, t + SEC), t + SEC / 2)).is_empty());
    assert_eq!(c.published().role, Role::Replica);
}

#[test]
fn a_failed_demote_hook_is_not_acknowledged() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(&c.on_status(revoking(7, t + SEC), t), HookKind::Demote, 7);
    let failed = HookOutcome::Failed {
        code: Some(3),
        stderr_tail: "boom".into(),
    };
    assert!(acks(&c.on_hook_done(&failed, t)).is_empty());
    assert!(acks(&c.on_tick(t + SEC / 4)).is_empty());
}

#[test]
fn demotion_starts_the_demote_timeout_before_validity_ends() {
    // Issue 7 (4): the hook must have finished (it is killed at its timeout) by the time the
    // lease's validity ends, not start then.
    let lead = Duration::from_millis(300);
    let t = Instant::now();
    let mut c = core().with_demote_lead(lead);
    let valid_until = t + SEC;
    one_hook(
        &c.on_status(holding(7, valid_until), t),
        HookKind::Promote,
        7,
    );
    c.on_hook_done(&HookOutcome::Succeeded, t);
    assert_eq!(c.deadline(), Some(valid_until - lead));
    assert!(hooks(&c.on_tick(valid_until - lead - Duration::from_millis(1))).is_empty());
    let a = c.on_tick(valid_until - lead);
    assert_eq!(published(&a).map(|s| s.role), Some(Role::Replica));
    assert_eq!(reason(&one_hook(&a, HookKind::Demote, 7)), Some("expired"));
}

#[test]
fn no_promotion_when_less_than_the_demote_timeout_is_left() {
    let lead = Duration::from_millis(300);
    let t = Instant::now();
    let mut c = core().with_demote_lead(lead);
    assert!(hooks(&c.on_status(holding(7, t + lead), t)).is_empty());
    assert_eq!(c.deadline(), None);
    one_hook(
        &c.on_status(holding(7, t + lead * 2), t),
        HookKind::Promote,
        7,
    );
}

#[test]
fn a_promote_still_running_at_the_demote_deadline_is_cancelled() {
    // Issue 7 (4): a slow on_promote must not push on_demote past validity.
    let lead = Duration::from_millis(300);
    let t = Instant::now();
    let mut c = core().with_demote_lead(lead);
    let valid_until = t + SEC;
    one_hook(
        &c.on_status(holding(7, valid_until), t),
        HookKind::Promote,
        7,
    );
    assert_eq!(c.deadline(), Some(valid_until - lead));
    assert_eq!(c.on_tick(valid_until - lead), vec![Action::CancelHook]);
    let a = c.on_hook_done(&HookOutcome::Cancelled, valid_until - lead);
    one_hook(&a, HookKind::Demote, 7);
    assert_eq!(c.published().role, Role::Replica);
}

#[test]
fn no_ack_once_validity_ran_out_during_the_revocation() {
    // "Lost" does not say which token the session is on, and the coordinator's TTL ends
    // a drift margin later anyway: no ack that could hit a newer grant.
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(&c.on_status(revoking(7, t + SEC), t), HookKind::Demote, 7);
    assert!(c.on_status(LeaseStatus::Lost, t + SEC).is_empty());
    assert!(acks(&c.on_hook_done(&HookOutcome::TimedOut, t + SEC)).is_empty());
    // Nor later.
    assert!(c.on_status(LeaseStatus::NotHolder, t + 2 * SEC).is_empty());
}

#[test]
fn a_revocation_without_promotion_is_acked_at_once_and_once() {
    let t = Instant::now();
    let mut c = core();
    let a = c.on_status(revoking(7, t + SEC), t);
    assert!(hooks(&a).is_empty());
    assert_eq!(acks(&a), vec![7]);
    assert!(acks(&c.on_status(revoking(7, t + SEC), t)).is_empty());
}

#[test]
fn never_acks_once_the_session_moved_to_a_newer_grant() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    one_hook(&c.on_status(revoking(7, t + SEC), t), HookKind::Demote, 7);
    // The revoked lease lapsed and the region got a new grant before the hook ended.
    assert!(c.on_status(holding(9, t + 10 * SEC), t + SEC).is_empty());
    let a = c.on_hook_done(&HookOutcome::Succeeded, t + SEC);
    assert!(acks(&a).is_empty(), "{a:?}");
    one_hook(&a, HookKind::Promote, 9);
}

#[test]
fn shutdown_demotes_a_primary_and_waits_for_the_hook() {
    let t = Instant::now();
    let mut c = primary(t, 7);
    let a = c.on_shutdown(t);
    assert!(matches!(a.first(), Some(Action::Publish(s)) if s.role == Role::Replica));
    assert_eq!(reason(&one_hook(&a, HookKind::Demote, 7)), Some("shutdown"));
    assert!(!c.is_idle());
    // Renewals still arriving do not promote again.
    assert!(hooks(&c.on_status(holding(7, t + 20 * SEC), t)).is_empty());
    assert!(c.on_hook_done(&HookOutcome::Succeeded, t).is_empty());
    assert!(c.is_idle());

    let mut r = core();
    assert!(r.on_shutdown(t).is_empty());
    assert!(r.is_idle());
}

#[test]
fn missing_hooks_count_as_run() {
    let t = Instant::now();
    let mut c = AgentCore::new("payments", "us-east", "agent-1", false, false);
    let a = c.on_status(holding(7, t + SEC), t);
    assert!(hooks(&a).is_empty());
    assert_eq!(published(&a).map(|s| s.role), Some(Role::Primary));
    let a = c.on_status(revoking(7, t + SEC), t);
    assert_eq!(published(&a).map(|s| s.role), Some(Role::Replica));
    assert_eq!(acks(&a), vec![7]);
    assert_eq!(c.promoted(), None);
}

#[test]
fn published_json_and_role_follow_the_clock() {
    let t = Instant::now();
    let s = AgentState {
        role: Role::Primary,
        token: Some(42),
        valid_until: Some(t + 2 * SEC),
        ..AgentState::replica("payments", "us-east", "agent-1")
    };
    let j = s.to_json(t);
    assert_eq!(j["service"], "payments");
    assert_eq!(j["region"], "us-east");
    assert_eq!(j["agent_id"], "agent-1");
    assert_eq!(j["role"], "primary");
    assert_eq!(j["token"], 42);
    assert_eq!(j["valid_for_ms"], 2000);
    assert!(j["valid_until_unix_ms"].as_u64().is_some());
    // Past its validity a primary document reads as replica, without the token.
    let j = s.to_json(t + 2 * SEC);
    assert_eq!(j["role"], "replica");
    assert!(j["token"].is_null());
    assert_eq!(j["valid_for_ms"], 0);
    assert_eq!(s.role_at(t + 3 * SEC), Role::Replica);
}

/// One input of the property test.
#[derive(Debug, Clone)]
enum Input {
    Holding(u64, u64),
    Revoking(u64, u64),
    NotHolder,
    Lost,
    Tick,
    HookDone(u8),
    Advance(u64),
    Shutdown,
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (1..4u64, 0..3000u64).prop_map(|(t, ms)| Input::Holding(t, ms)),
        2 => (1..4u64, 0..3000u64).prop_map(|(t, ms)| Input::Revoking(t, ms)),
        1 => Just(Input::NotHolder),
        1 => Just(Input::Lost),
        1 => Just(Input::Tick),
        4 => (0..4u8).prop_map(Input::HookDone),
        2 => (0..1500u64).prop_map(Input::Advance),
        1 => Just(Input::Shutdown),
    ]
}

proptest! {
    /// Whatever happens: hooks never overlap; they alternate promote(T), demote(T); an
    /// ack is never sent while a hook runs, nor while the service is primary with that
    /// token; `primary` is only published with a valid lease.
    #[test]
    fn hooks_alternate_and_never_overlap(inputs in proptest::collection::vec(input(), 1..60)) {
        let start = Instant::now();
        let mut now = start;
        let lead = Duration::from_millis(200);
        let mut c = core().with_demote_lead(lead);
        let mut running: Option<Hook> = None;
        let mut cancel_asked = false;
        let mut unproven: Option<u64> = None;
        let mut last_promote: Option<u64> = None;
        let mut lease = LeaseStatus::Pending;
        for i in inputs {
            let actions = match i {
                Input::Holding(tok, ms) => {
                    lease = holding(tok, now + Duration::from_millis(ms));
                    c.on_status(lease, now)
                }
                Input::Revoking(tok, ms) => {
                    lease = revoking(tok, now + Duration::from_millis(ms));
                    c.on_status(lease, now)
                }
                Input::NotHolder => { lease = LeaseStatus::NotHolder; c.on_status(lease, now) }
                Input::Lost => { lease = LeaseStatus::Lost; c.on_status(lease, now) }
                Input::Tick => c.on_tick(now),
                Input::HookDone(k) => {
                    let Some(done) = running.take() else { continue; };
                    let outcome = match k {
                        _ if std::mem::take(&mut cancel_asked) => HookOutcome::Cancelled,
                        0 => HookOutcome::TimedOut,
                        1 => HookOutcome::Failed { code: Some(1), stderr_tail: String::new() },
                        _ => HookOutcome::Succeeded,
                    };
                    if done.kind == HookKind::Demote && outcome != HookOutcome::Succeeded {
                        unproven = Some(done.token);
                    }
                    c.on_hook_done(&outcome, now)
                }
                Input::Advance(ms) => { now += Duration::from_millis(ms); continue; }
                Input::Shutdown => c.on_shutdown(now),
            };
            for a in &actions {
                match a {
                    Action::RunHook(h) => {
                        prop_assert!(running.is_none(), "overlapping hooks: {actions:?}");
                        match h.kind {
                            HookKind::Promote => {
                                prop_assert_eq!(last_promote, None, "promote twice");
                                unproven = None;
                                last_promote = Some(h.token);
                            }
                            HookKind::Demote => {
                                prop_assert_eq!(last_promote, Some(h.token), "demote without its promote");
                                last_promote = None;
                            }
                        }
                        running = Some(h.clone());
                    }
                    Action::CancelHook => {
                        let promoting = running.as_ref().is_some_and(|h| h.kind == HookKind::Promote);
                        prop_assert!(promoting, "cancel without a running promote");
                        prop_assert!(!cancel_asked, "cancel asked twice");
                        cancel_asked = true;
                    }
                    Action::Ack { token } => {
                        prop_assert!(running.is_none(), "ack while a hook runs");
                        prop_assert_ne!(last_promote, Some(*token), "ack while primary with it");
                        prop_assert_ne!(unproven, Some(*token), "ack after a failed demote");
                        let ok = matches!(lease, LeaseStatus::Revoking { token: t, .. } if t == *token);
                        prop_assert!(ok, "ack for {} while {:?}", token, lease);
                    }
                    Action::Publish(s) if s.role == Role::Primary => {
                        let valid = matches!(lease, LeaseStatus::Holding { token, valid_until }
                            if Some(token) == s.token && now + lead <= valid_until);
                        prop_assert!(valid, "primary published with {:?}", lease);
                        prop_assert_eq!(last_promote, s.token);
                    }
                    Action::Publish(_) => {}
                }
            }
        }
    }
}
