//! Tests of workflow runs, observations and automation policy bookkeeping in the state.

use super::*;

const T: i64 = 1_700_000_000_000;

fn req(at_ms: i64, actor: &str, command: Command) -> Request {
    Request {
        at_ms,
        actor: actor.into(),
        command,
    }
}

fn state_with_payments(flap_limit: u32) -> State {
    let mut s = State::default();
    let mut spec = ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"]);
    spec.flap_limit = flap_limit;
    spec.flap_window_ms = 60_000;
    let a = s.apply(
        1,
        &req(
            T,
            "op",
            Command::PutService {
                spec,
                reason: "create".into(),
            },
        ),
    );
    assert!(matches!(a.response, Response::Applied { .. }));
    s
}

fn start(s: &mut State, index: u64, at: i64, trigger: Trigger, to: &str) -> Response {
    let actor = if trigger.is_automatic() {
        audit::AUTOMATION
    } else {
        "op"
    };
    s.apply(
        index,
        &req(
            at,
            actor,
            Command::StartRun {
                service: "payments".into(),
                kind: RunKind::Failover,
                trigger,
                to: to.into(),
                plan: default_plan(RunKind::Failover),
                reason: "test".into(),
                detected_ms: at - 10,
                expected_token: None,
            },
        ),
    )
    .response
}

fn advance(
    s: &mut State,
    index: u64,
    run: u64,
    step: usize,
    outcome: StepOutcome,
    effect: Option<Effect>,
) -> Response {
    s.apply(
        index,
        &req(
            T + index as i64,
            audit::AUTOMATION,
            Command::AdvanceRun {
                service: "payments".into(),
                run,
                step,
                outcome,
                effect,
                phase: None,
                reason: "step".into(),
            },
        ),
    )
    .response
}

fn rejected(r: &Response) -> bool {
    matches!(r, Response::Rejected(_))
}

#[test]
fn a_run_walks_its_steps_and_grants_atomically_with_the_grant_step() {
    let mut s = state_with_payments(0);
    assert!(!rejected(&start(
        &mut s,
        2,
        T,
        Trigger::Operator,
        "eu-west"
    )));
    assert_eq!(s.service("payments").unwrap().active_run, Some(2));
    // precheck
    assert!(!rejected(&advance(
        &mut s,
        3,
        2,
        0,
        StepOutcome::Done,
        None
    )));
    // fence: started with the revoke, then done
    assert!(!rejected(&advance(
        &mut s,
        4,
        2,
        1,
        StepOutcome::Started,
        Some(Effect::Revoke { token: 1 })
    )));
    assert_eq!(
        s.service("payments").unwrap().lease.state,
        LeaseState::Revoking
    );
    assert!(!rejected(&advance(
        &mut s,
        5,
        2,
        1,
        StepOutcome::Done,
        None
    )));
    // grant
    let a = s.apply(
        6,
        &req(
            T,
            "automation",
            Command::AdvanceRun {
                service: "payments".into(),
                run: 2,
                step: 2,
                outcome: StepOutcome::Done,
                effect: Some(Effect::Grant { expected_token: 1 }),
                phase: Some(PhaseMark::Granted),
                reason: "granted".into(),
            },
        ),
    );
    assert_eq!(a.events.len(), 1);
    assert_eq!(a.events[0].kind, EventKind::Granted);
    let lease = &s.service("payments").unwrap().lease;
    assert_eq!((lease.holder.as_deref(), lease.token), (Some("eu-west"), 6));
    assert_eq!(s.run(2).unwrap().token_after, Some(6));
    assert_eq!(s.run(2).unwrap().phases.granted_ms, Some(T));
    // The same step cannot be recorded twice (a resumed run never grants again).
    assert!(rejected(&advance(
        &mut s,
        7,
        2,
        2,
        StepOutcome::Done,
        Some(Effect::Grant { expected_token: 6 })
    )));
    assert_eq!(s.service("payments").unwrap().lease.token, 6);
    // verify -> succeeded, service free for the next run
    assert!(!rejected(&advance(
        &mut s,
        8,
        2,
        3,
        StepOutcome::Done,
        None
    )));
    assert_eq!(s.run(2).unwrap().state, RunState::Succeeded);
    assert_eq!(s.service("payments").unwrap().active_run, None);
}

#[test]
fn only_one_run_per_service() {
    let mut s = state_with_payments(0);
    assert!(!rejected(&start(
        &mut s,
        2,
        T,
        Trigger::Operator,
        "eu-west"
    )));
    match start(&mut s, 3, T, Trigger::Operator, "ap-south") {
        Response::Rejected(Rejection::WrongState(m)) => assert!(m.contains("in progress"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_grant_effect_changes_nothing() {
    let mut s = state_with_payments(0);
    start(&mut s, 2, T, Trigger::Operator, "eu-west");
    advance(&mut s, 3, 2, 0, StepOutcome::Done, None);
    // Granting while still held is refused, and the step does not advance.
    assert!(rejected(&advance(
        &mut s,
        4,
        2,
        1,
        StepOutcome::Done,
        Some(Effect::Grant { expected_token: 1 })
    )));
    assert_eq!(s.run(2).unwrap().current, 1);
    assert_eq!(s.service("payments").unwrap().lease.token, 1);
}

#[test]
fn retry_returns_the_step_to_pending_until_attempts_run_out() {
    let mut s = state_with_payments(0);
    start(&mut s, 2, T, Trigger::Operator, "eu-west");
    advance(&mut s, 3, 2, 0, StepOutcome::Done, None);
    advance(
        &mut s,
        4,
        2,
        1,
        StepOutcome::Started,
        Some(Effect::Revoke { token: 1 }),
    );
    advance(&mut s, 5, 2, 1, StepOutcome::Done, None);
    // grant has Retry(3)
    for i in 0..3u64 {
        advance(&mut s, 6 + 2 * i, 2, 2, StepOutcome::Started, None);
        advance(&mut s, 7 + 2 * i, 2, 2, StepOutcome::Failed, None);
        assert_eq!(s.run(2).unwrap().steps[2].state, StepState::Pending);
        assert_eq!(s.run(2).unwrap().state, RunState::Running);
    }
    advance(&mut s, 20, 2, 2, StepOutcome::Started, None);
    advance(&mut s, 21, 2, 2, StepOutcome::Failed, None);
    let run = s.run(2).unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.steps[3].state, StepState::Skipped);
    assert_eq!(s.service("payments").unwrap().active_run, None);
}

#[test]
fn rollback_gives_the_lease_back_to_the_previous_holder() {
    let mut s = state_with_payments(0);
    let mut plan = default_plan(RunKind::Failover);
    plan[1].on_failure = OnFailure::Rollback;
    s.apply(
        2,
        &req(
            T,
            "op",
            Command::StartRun {
                service: "payments".into(),
                kind: RunKind::Switchover,
                trigger: Trigger::Operator,
                to: "eu-west".into(),
                plan,
                reason: "r".into(),
                detected_ms: T,
                expected_token: None,
            },
        ),
    );
    advance(&mut s, 3, 2, 0, StepOutcome::Done, None);
    advance(
        &mut s,
        4,
        2,
        1,
        StepOutcome::Started,
        Some(Effect::Revoke { token: 1 }),
    );
    assert!(!rejected(&advance(
        &mut s,
        5,
        2,
        1,
        StepOutcome::Failed,
        Some(Effect::GrantBack { expected_token: 1 })
    )));
    let run = s.run(2).unwrap();
    assert_eq!(run.state, RunState::RolledBack);
    let lease = &s.service("payments").unwrap().lease;
    assert_eq!(
        (lease.holder.as_deref(), lease.token, lease.state),
        (Some("us-east"), 5, LeaseState::Held)
    );
}

#[test]
fn approval_waits_for_a_decision_and_reject_ends_the_run() {
    let mut s = state_with_payments(0);
    let plan = vec![
        StepSpec {
            kind: StepKind::Approval,
            timeout_ms: 0,
            on_failure: OnFailure::Abort,
        },
        StepSpec {
            kind: StepKind::Precheck,
            timeout_ms: 0,
            on_failure: OnFailure::Abort,
        },
    ];
    let mk = |plan: Vec<StepSpec>| Command::StartRun {
        service: "payments".into(),
        kind: RunKind::Switchover,
        trigger: Trigger::Operator,
        to: "eu-west".into(),
        plan,
        reason: "r".into(),
        detected_ms: T,
        expected_token: None,
    };
    s.apply(2, &req(T, "op", mk(plan.clone())));
    let decide = |approve| Command::DecideRun {
        service: "payments".into(),
        run: 2,
        approve,
        reason: "looks good".into(),
    };
    assert!(!rejected(
        &s.apply(3, &req(T, "boss", decide(true))).response
    ));
    assert_eq!(s.run(2).unwrap().current, 1);
    // Not waiting for approval any more.
    assert!(rejected(
        &s.apply(4, &req(T, "boss", decide(true))).response
    ));

    let mut s = state_with_payments(0);
    s.apply(2, &req(T, "op", mk(plan)));
    s.apply(3, &req(T, "boss", decide(false)));
    assert_eq!(s.run(2).unwrap().state, RunState::Rejected);
    assert_eq!(s.service("payments").unwrap().active_run, None);
}

#[test]
fn the_flap_limit_pauses_automation_until_acknowledged() {
    let mut s = state_with_payments(2);
    let finish = |s: &mut State, run: u64, idx: u64| {
        // Abort the run quickly: precheck fails.
        advance(s, idx, run, 0, StepOutcome::Failed, None);
    };
    assert!(!rejected(&start(
        &mut s,
        2,
        T,
        Trigger::LeaseExpired,
        "eu-west"
    )));
    finish(&mut s, 2, 3);
    assert!(s.service("payments").unwrap().paused.is_none());
    assert!(!rejected(&start(
        &mut s,
        4,
        T + 1000,
        Trigger::LeaseExpired,
        "eu-west"
    )));
    finish(&mut s, 4, 5);
    let paused = s
        .service("payments")
        .unwrap()
        .paused
        .clone()
        .expect("paused at the limit");
    assert!(paused.contains("baton ack payments"), "{paused}");
    match start(&mut s, 6, T + 2000, Trigger::LeaseExpired, "eu-west") {
        Response::Rejected(Rejection::WrongState(m)) => assert!(m.contains("flap limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Operators may still act while automation is paused.
    assert!(!rejected(&start(
        &mut s,
        7,
        T + 2000,
        Trigger::Operator,
        "eu-west"
    )));
    finish(&mut s, 7, 8);
    s.apply(
        9,
        &req(
            T,
            "op",
            Command::AckFlap {
                service: "payments".into(),
                reason: "fixed".into(),
            },
        ),
    );
    assert!(!rejected(&start(
        &mut s,
        10,
        T + 3000,
        Trigger::LeaseExpired,
        "eu-west"
    )));
}

#[test]
fn freezing_stops_automatic_runs_only() {
    let mut s = state_with_payments(0);
    s.apply(
        2,
        &req(
            T,
            "op",
            Command::SetFrozen {
                service: "payments".into(),
                frozen: true,
                reason: "maintenance".into(),
            },
        ),
    );
    assert!(rejected(&start(
        &mut s,
        3,
        T,
        Trigger::HealthDown("x".into()),
        "eu-west"
    )));
    assert!(!rejected(&start(
        &mut s,
        4,
        T,
        Trigger::Operator,
        "eu-west"
    )));
}

#[test]
fn observations_are_kept_per_region_and_vantage() {
    let mut s = state_with_payments(0);
    let obs = |node, healthy| Command::Observe {
        service: "payments".into(),
        region: "us-east".into(),
        vantage_node: node,
        vantage_region: "eu-west".into(),
        healthy,
        reason: "HTTP 503".into(),
    };
    s.apply(2, &req(T, audit::AUTOMATION, obs(2, false)));
    s.apply(3, &req(T + 5, audit::AUTOMATION, obs(3, true)));
    let o = &s.service("payments").unwrap().observations["us-east"];
    assert!(!o[&2].healthy && o[&3].healthy);
    assert_eq!(o[&3].at_ms, T + 5);
    let bad = Command::Observe {
        service: "payments".into(),
        region: "mars".into(),
        vantage_node: 1,
        vantage_region: "eu-west".into(),
        healthy: false,
        reason: String::new(),
    };
    assert!(rejected(
        &s.apply(4, &req(T, audit::AUTOMATION, bad)).response
    ));
}

#[test]
fn deleting_a_service_ends_its_run() {
    let mut s = state_with_payments(0);
    start(&mut s, 2, T, Trigger::Operator, "eu-west");
    advance(&mut s, 3, 2, 0, StepOutcome::Done, None);
    advance(
        &mut s,
        4,
        2,
        1,
        StepOutcome::Started,
        Some(Effect::Revoke { token: 1 }),
    );
    let a = s.apply(
        5,
        &req(
            T,
            "op",
            Command::DeleteService {
                name: "payments".into(),
                reason: "retire".into(),
            },
        ),
    );
    assert!(
        matches!(a.response, Response::Applied { .. }),
        "{:?}",
        a.response
    );
    let run = s.run(2).unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(run
        .error
        .as_deref()
        .unwrap_or("")
        .contains("service deleted"));
}

#[test]
fn a_run_with_an_expected_token_is_refused_once_the_lease_moved() {
    let mut s = state_with_payments(0);
    let cmd = |expected| Command::StartRun {
        service: "payments".into(),
        kind: RunKind::Switchover,
        trigger: Trigger::Operator,
        to: "eu-west".into(),
        plan: default_plan(RunKind::Switchover),
        reason: "r".into(),
        detected_ms: T,
        expected_token: Some(expected),
    };
    match s.apply(2, &req(T, "op", cmd(7))).response {
        Response::Rejected(Rejection::TokenMismatch {
            expected: 7,
            actual: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!rejected(&s.apply(3, &req(T, "op", cmd(1))).response));
}

#[test]
fn a_rollback_after_the_grant_is_refused_and_the_default_failback_plan_has_none() {
    // Issue 7: the failback plan's verify-step rollback could never roll back (the lease had
    // moved to the new holder, whose token no longer matched).
    for kind in [RunKind::Failover, RunKind::Switchover, RunKind::Failback] {
        assert_eq!(
            crate::state::service::validate_plan(kind.as_str(), &default_plan(kind)),
            Ok(())
        );
    }
    let mut plan = default_plan(RunKind::Failback);
    let verify = plan.len() - 1;
    plan[verify].on_failure = OnFailure::Rollback;
    let err = crate::state::service::validate_plan("failback", &plan).unwrap_err();
    assert!(err.contains("after the grant"), "{err}");
    // Before the grant a rollback is possible (nothing was granted yet).
    let mut plan = default_plan(RunKind::Failback);
    plan[1].on_failure = OnFailure::Rollback;
    assert_eq!(
        crate::state::service::validate_plan("failback", &plan),
        Ok(())
    );
}

#[test]
fn an_approval_without_a_timeout_gets_the_default_one() {
    let approval = StepSpec {
        kind: StepKind::Approval,
        timeout_ms: 0,
        on_failure: OnFailure::Abort,
    };
    assert_eq!(
        approval.effective_timeout_ms(),
        crate::state::workflow::DEFAULT_APPROVAL_TIMEOUT_MS
    );
    let explicit = StepSpec {
        timeout_ms: 1_000,
        ..approval.clone()
    };
    assert_eq!(explicit.effective_timeout_ms(), 1_000);
    let fence = StepSpec {
        kind: StepKind::Fence,
        ..approval
    };
    assert_eq!(fence.effective_timeout_ms(), 0);
}

#[test]
fn an_approval_by_another_refuses_the_requester_and_records_it() {
    let mut s = state_with_payments(0);
    let plan = vec![StepSpec {
        kind: StepKind::ApprovalByAnother,
        timeout_ms: 0,
        on_failure: OnFailure::Abort,
    }];
    s.apply(
        2,
        &req(
            T,
            "alice",
            Command::StartRun {
                service: "payments".into(),
                kind: RunKind::Switchover,
                trigger: Trigger::Operator,
                to: "eu-west".into(),
                plan,
                reason: "r".into(),
                detected_ms: T,
                expected_token: None,
            },
        ),
    );
    let decide = |approve| Command::DecideRun {
        service: "payments".into(),
        run: 2,
        approve,
        reason: "ok".into(),
    };
    let own = s.apply(3, &req(T, "alice", decide(true)));
    match &own.response {
        Response::Rejected(Rejection::Forbidden(m)) => {
            assert!(m.contains("requested by alice"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(own
        .audit
        .outcome
        .starts_with("rejected: run 2 was requested by alice"));
    assert_eq!(own.audit.actor, "alice");
    assert_eq!(s.run(2).unwrap().current, 0, "still waiting");
    // The requester may still reject their own run; another principal may approve.
    assert!(!rejected(
        &s.apply(4, &req(T, "bob", decide(true))).response
    ));
    assert_eq!(s.run(2).unwrap().state, RunState::Succeeded);
}

#[test]
fn audit_only_commands_change_nothing_but_the_trail() {
    let mut s = state_with_payments(0);
    let before = s.service("payments").cloned();
    let refused = s.apply(
        2,
        &req(
            T,
            "reader",
            Command::Refused {
                method: "/baton.v1.Coordinator/Failover".into(),
                reason: "PermissionDenied: needs operator".into(),
                dropped: 3,
            },
        ),
    );
    assert_eq!(refused.audit.action, "refused");
    assert_eq!(refused.audit.actor, "reader");
    assert!(
        refused.audit.outcome.contains("3 earlier refusals"),
        "{}",
        refused.audit.outcome
    );
    let added = s.apply(
        3,
        &req(
            T,
            "root",
            Command::Cluster {
                action: ClusterAction::AddNode,
                reason: "node 4 (eu-west) at 127.0.0.1:9".into(),
                outcome: "ok".into(),
            },
        ),
    );
    assert_eq!(
        (added.audit.action.as_str(), added.audit.outcome.as_str()),
        ("node.add", "ok")
    );
    assert_eq!(s.service("payments").cloned(), before);
    assert!(refused.events.is_empty() && added.events.is_empty());
    assert!(crate::state::audit::verify(&[refused.audit, added.audit], None).is_ok());
}

#[test]
fn new_variants_keep_old_log_entries_decodable() {
    // bincode numbers enum variants in declaration order: the variants added for
    // authorization went last, so every older entry decodes to what it was written as.
    let ack = Command::AckFlap {
        service: "p".into(),
        reason: "r".into(),
    };
    assert_eq!(
        &bincode::serialize(&ack).unwrap()[..4],
        &11u32.to_le_bytes()
    );
    let invalid = Rejection::Invalid("x".into());
    assert_eq!(
        &bincode::serialize(&invalid).unwrap()[..4],
        &5u32.to_le_bytes()
    );
    assert_eq!(
        &bincode::serialize(&StepKind::Verify).unwrap()[..4],
        &6u32.to_le_bytes()
    );
}

#[test]
fn an_automatic_run_stamped_far_before_the_last_one_does_not_overflow_the_flap_window() {
    // A leader's clock can be anything: a command stamped near i64::MIN after a move at a
    // normal time overflowed `at - previous` and panicked in apply.
    let mut s = state_with_payments(3);
    assert!(!rejected(&start(
        &mut s,
        2,
        T,
        Trigger::LeaseExpired,
        "eu-west"
    )));
    advance(&mut s, 3, 2, 0, StepOutcome::Failed, None);
    let _ = start(&mut s, 4, i64::MIN + 10, Trigger::LeaseExpired, "eu-west");
}
