//! Golden tests: the log encoding of [`Request`] and what [`State::apply`] makes of a
//! scripted log never change by accident.
//!
//! The Raft log and snapshots hold bincode 1 of `Request`/`Command` (src/raft/store), so a
//! reordered variant or field would make every stored log undecodable or, worse, decode
//! into other commands. The transcript pins states, events, revisions and audit entries, so
//! a refactoring of `apply` can be shown to be a pure move.
//!
//! After an intended change, regenerate with `BATON_BLESS=1 cargo test --lib state::codec`
//! and say in the commit why the bytes moved (a changed encoding needs a log migration).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::*;

const T: i64 = 1_700_000_000_000;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/state/testdata")
        .join(name)
}

/// Compares `actual` with the golden file `name`, or rewrites it under `BATON_BLESS=1`.
fn check_golden(name: &str, actual: &str) {
    let path = testdata(name);
    if std::env::var_os("BATON_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists");
    // Line by line, so a failure names the first entry that moved.
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        assert_eq!(a, e, "{name}: line {} differs", i + 1);
    }
    assert_eq!(actual, expected, "{name}: different number of lines");
}

/// Every field set explicitly (not through `ServiceSpec::new`), so a new default does not
/// move the golden bytes.
fn full_spec() -> ServiceSpec {
    let step = |kind, timeout_ms, on_failure| StepSpec {
        kind,
        timeout_ms,
        on_failure,
    };
    ServiceSpec {
        name: "payments".into(),
        regions: vec!["us-east".into(), "eu-west".into(), "ap-south".into()],
        allowed_regions: vec!["us-east".into(), "eu-west".into()],
        lease_ttl_ms: 5_000,
        initial_primary: Some("eu-west".into()),
        auto_failover: true,
        failback: FailbackMode::Auto,
        failback_stable_ms: 60_000,
        cooldown_ms: 30_000,
        flap_limit: 3,
        flap_window_ms: 600_000,
        health: BTreeMap::from([(
            "us-east".to_string(),
            HealthCheck {
                kind: "http".into(),
                target: "http://db.us-east:8080/health".into(),
                interval_ms: 1_000,
                timeout_ms: 500,
                threshold: 3,
            },
        )]),
        plans: BTreeMap::from([(
            "switchover".to_string(),
            vec![
                step(StepKind::Precheck, 0, OnFailure::Abort),
                step(StepKind::Approval, 10_000, OnFailure::Abort),
                step(StepKind::ApprovalByAnother, 0, OnFailure::Abort),
                step(StepKind::Fence, 20_000, OnFailure::Rollback),
                step(StepKind::Grant, 0, OnFailure::Retry(2)),
                step(
                    StepKind::Webhook("https://hooks.example/moved".into()),
                    5_000,
                    OnFailure::Retry(1),
                ),
                step(StepKind::WaitHealthy, 30_000, OnFailure::Abort),
                step(StepKind::Verify, 0, OnFailure::Abort),
            ],
        )]),
    }
}

/// One request of every `Command` variant, and of every variant of the enums inside them.
fn golden_requests() -> Vec<Request> {
    let svc = || "payments".to_string();
    let why = |s: &str| s.to_string();
    let advance = |step, outcome, effect, phase| Command::AdvanceRun {
        service: svc(),
        run: 41,
        step,
        outcome,
        effect,
        phase,
        reason: why("step"),
    };
    let start = |kind, trigger, expected_token| Command::StartRun {
        service: svc(),
        kind,
        trigger,
        to: "eu-west".into(),
        plan: vec![StepSpec {
            kind: StepKind::Fence,
            timeout_ms: 1_000,
            on_failure: OnFailure::Abort,
        }],
        reason: why("move"),
        detected_ms: T - 250,
        expected_token,
    };
    let cluster = |action| Command::Cluster {
        action,
        reason: why("node 4 at 10.0.0.4:7000"),
        outcome: "ok".into(),
    };
    let commands = vec![
        Command::PutService {
            spec: full_spec(),
            reason: why("define"),
        },
        Command::DeleteService {
            name: svc(),
            reason: why("retire"),
        },
        Command::Revoke {
            service: svc(),
            token: 7,
            reason: why("fence"),
        },
        Command::Grant {
            service: svc(),
            region: "eu-west".into(),
            expected_token: 7,
            reason: why("failover"),
        },
        Command::Expire {
            service: svc(),
            token: u64::MAX,
            reason: why("no renewal for 5s"),
        },
        Command::SetMode {
            service: svc(),
            mode: LeaseMode::ReadOnly,
            reason: why("degrade"),
        },
        Command::SetMode {
            service: svc(),
            mode: LeaseMode::ReadWrite,
            reason: why("recover"),
        },
        Command::SetFrozen {
            service: svc(),
            frozen: true,
            reason: why("maintenance"),
        },
        Command::Observe {
            service: svc(),
            region: "us-east".into(),
            vantage_node: 3,
            vantage_region: "eu-west".into(),
            healthy: false,
            reason: why("connection refused"),
        },
        start(
            RunKind::Failover,
            Trigger::HealthDown("2 of 3 vantages".into()),
            Some(7),
        ),
        start(RunKind::Switchover, Trigger::Operator, None),
        start(RunKind::Failback, Trigger::Failback, None),
        start(RunKind::Failover, Trigger::LeaseExpired, Some(0)),
        advance(
            0,
            StepOutcome::Started,
            Some(Effect::Revoke { token: 7 }),
            None,
        ),
        advance(
            0,
            StepOutcome::Done,
            Some(Effect::Grant { expected_token: 7 }),
            Some(PhaseMark::Fenced),
        ),
        advance(
            1,
            StepOutcome::Failed,
            Some(Effect::GrantBack { expected_token: 9 }),
            Some(PhaseMark::Granted),
        ),
        advance(2, StepOutcome::Done, None, Some(PhaseMark::Verified)),
        Command::DecideRun {
            service: svc(),
            run: 41,
            approve: true,
            reason: why("looks right"),
        },
        Command::DecideRun {
            service: svc(),
            run: 41,
            approve: false,
            reason: why("not now"),
        },
        Command::AckFlap {
            service: svc(),
            reason: why("fixed the network"),
        },
        Command::Refused {
            method: "/baton.Admin/Move".into(),
            reason: why("not an operator"),
            dropped: 12,
        },
        cluster(ClusterAction::AddNode),
        cluster(ClusterAction::RemoveNode),
        cluster(ClusterAction::TransferLeadership),
        cluster(ClusterAction::TriggerSnapshot),
        cluster(ClusterAction::SaveSnapshot),
    ];
    commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| Request {
            // Negative and non-ASCII values too: zigzag-free fixed ints and UTF-8 lengths.
            at_ms: if i == 0 { -1 } else { T + i as i64 },
            actor: if i == 1 { "zoë@ops" } else { "alice" }.into(),
            command,
        })
        .collect()
}

/// Position of the variant in `Command`. No wildcard arm: a new variant does not compile
/// until it is added here, and then the test below asks for a golden request of it.
fn variant(c: &Command) -> usize {
    match c {
        Command::PutService { .. } => 0,
        Command::DeleteService { .. } => 1,
        Command::Revoke { .. } => 2,
        Command::Grant { .. } => 3,
        Command::Expire { .. } => 4,
        Command::SetMode { .. } => 5,
        Command::SetFrozen { .. } => 6,
        Command::Observe { .. } => 7,
        Command::StartRun { .. } => 8,
        Command::AdvanceRun { .. } => 9,
        Command::DecideRun { .. } => 10,
        Command::AckFlap { .. } => 11,
        Command::Refused { .. } => 12,
        Command::Cluster { .. } => 13,
    }
}

#[test]
fn request_encoding_matches_the_golden_log_bytes() {
    let requests = golden_requests();
    let mut seen: Vec<usize> = requests.iter().map(|r| variant(&r.command)).collect();
    seen.dedup();
    assert_eq!(seen, (0..=13).collect::<Vec<_>>(), "one of each, in order");
    let mut golden = String::new();
    for r in &requests {
        let bytes = bincode::serialize(r).expect("a request encodes");
        let back: Request = bincode::deserialize(&bytes).expect("its bytes decode");
        assert_eq!(&back, r, "round trip");
        writeln!(golden, "{} {}", r.command.action(), hex::encode(&bytes)).expect("write");
    }
    check_golden("requests.hex", &golden);
}

/// A scripted log reaching every command family, its refusals and the run paths
/// (approval, separation of duties, effects, retry, rollback, flap pause, deletion).
fn script() -> Vec<(&'static str, Command)> {
    let p = || "payments".to_string();
    let why = |s: &str| s.to_string();
    let mut spec = ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"]);
    spec.flap_limit = 2;
    spec.flap_window_ms = 600_000;
    let mut longer = spec.clone();
    longer.lease_ttl_ms = spec.lease_ttl_ms * 2;
    let mut orders = ServiceSpec::new("orders", &["us-east", "eu-west", "ap-south"]);
    orders.allowed_regions = vec!["us-east".into(), "eu-west".into()];
    let mut spare = ServiceSpec::new("spare", &["us-east", "eu-west"]);
    spare.lease_ttl_ms = 2_000;
    let step = |kind, on_failure| StepSpec {
        kind,
        timeout_ms: 0,
        on_failure,
    };
    let start = |service: &str, kind, trigger, to: &str, plan, expected_token| Command::StartRun {
        service: service.into(),
        kind,
        trigger,
        to: to.into(),
        plan,
        reason: why("move"),
        detected_ms: T,
        expected_token,
    };
    let advance = |run, step, outcome, effect, phase| Command::AdvanceRun {
        service: p(),
        run,
        step,
        outcome,
        effect,
        phase,
        reason: why("step"),
    };
    let decide = |run, approve| Command::DecideRun {
        service: p(),
        run,
        approve,
        reason: why("decided"),
    };
    let observe = |region: &str| Command::Observe {
        service: p(),
        region: region.into(),
        vantage_node: 2,
        vantage_region: "eu-west".into(),
        healthy: true,
        reason: why("200 OK"),
    };
    let grant = |service: &str, region: &str, expected_token| Command::Grant {
        service: service.into(),
        region: region.into(),
        expected_token,
        reason: why("grant"),
    };
    let revoke = |service: &str, token| Command::Revoke {
        service: service.into(),
        token,
        reason: why("fence"),
    };
    let expire = |service: &str, token| Command::Expire {
        service: service.into(),
        token,
        reason: why("expired"),
    };
    let put = |spec: &ServiceSpec| Command::PutService {
        spec: spec.clone(),
        reason: why("define"),
    };
    let delete = |name: &str| Command::DeleteService {
        name: name.into(),
        reason: why("retire"),
    };
    let mode = |mode| Command::SetMode {
        service: p(),
        mode,
        reason: why("mode"),
    };
    let frozen = |frozen| Command::SetFrozen {
        service: p(),
        frozen,
        reason: why("maintenance"),
    };
    let switchover = vec![
        step(StepKind::ApprovalByAnother, OnFailure::Abort),
        step(StepKind::Fence, OnFailure::Abort),
        step(StepKind::Grant, OnFailure::Abort),
        step(StepKind::Verify, OnFailure::Retry(1)),
    ];
    let rollback = vec![
        step(StepKind::Fence, OnFailure::Rollback),
        step(StepKind::Grant, OnFailure::Abort),
    ];
    let approval = vec![
        step(StepKind::Approval, OnFailure::Abort),
        step(StepKind::Fence, OnFailure::Abort),
        step(StepKind::Grant, OnFailure::Abort),
    ];
    let auto = Trigger::HealthDown("2 of 3 vantages".into());
    let (a, bob, bot) = ("alice", "bob", audit::AUTOMATION);
    vec![
        (a, put(&spec)),                // 1: held by us-east, token 1
        (a, put(&spec)),                // 2: no change
        (a, put(&longer)),              // 3: longer TTL at once
        (bot, observe("eu-west")),      // 4
        (bot, observe("mars")),         // 5: unknown region
        (a, mode(LeaseMode::ReadOnly)), // 6
        (a, mode(LeaseMode::ReadOnly)), // 7: no change
        (a, frozen(true)),              // 8
        (
            bot,
            start(
                "payments",
                RunKind::Failover,
                auto.clone(),
                "eu-west",
                rollback.clone(),
                None,
            ),
        ), // 9: frozen
        (a, frozen(false)),             // 10
        (
            a,
            start(
                "payments",
                RunKind::Switchover,
                Trigger::Operator,
                "eu-west",
                switchover,
                Some(1),
            ),
        ), // 11
        (a, decide(11, true)),          // 12: same principal
        (bob, decide(11, true)),        // 13
        (
            bot,
            advance(
                11,
                1,
                StepOutcome::Started,
                Some(Effect::Revoke { token: 1 }),
                None,
            ),
        ), // 14
        (
            bot,
            advance(11, 1, StepOutcome::Done, None, Some(PhaseMark::Fenced)),
        ), // 15
        (
            bot,
            advance(11, 1, StepOutcome::Done, None, Some(PhaseMark::Fenced)),
        ), // 16: twice
        (
            bot,
            advance(
                11,
                2,
                StepOutcome::Started,
                Some(Effect::Grant { expected_token: 1 }),
                None,
            ),
        ), // 17
        (
            bot,
            advance(11, 2, StepOutcome::Done, None, Some(PhaseMark::Granted)),
        ), // 18
        (bot, advance(11, 3, StepOutcome::Started, None, None)), // 19
        (bot, advance(11, 3, StepOutcome::Failed, None, None)), // 20: retry
        (bot, advance(11, 3, StepOutcome::Started, None, None)), // 21
        (
            bot,
            advance(11, 3, StepOutcome::Done, None, Some(PhaseMark::Verified)),
        ), // 22
        (
            bot,
            start(
                "payments",
                RunKind::Failback,
                auto.clone(),
                "us-east",
                rollback.clone(),
                None,
            ),
        ), // 23
        (bob, decide(23, true)),        // 24: not at an approval
        (
            bot,
            advance(
                23,
                0,
                StepOutcome::Started,
                Some(Effect::Revoke { token: 17 }),
                None,
            ),
        ), // 25
        (
            bot,
            advance(
                23,
                0,
                StepOutcome::Failed,
                Some(Effect::GrantBack { expected_token: 17 }),
                None,
            ),
        ), // 26
        (
            bot,
            start(
                "payments",
                RunKind::Failover,
                Trigger::LeaseExpired,
                "us-east",
                approval,
                None,
            ),
        ), // 27: flap pause
        (bob, decide(27, false)),       // 28
        (
            bot,
            start(
                "payments",
                RunKind::Failover,
                auto,
                "us-east",
                rollback,
                None,
            ),
        ), // 29: paused
        (
            a,
            Command::AckFlap {
                service: p(),
                reason: why("ack"),
            },
        ), // 30
        (a, revoke("payments", 26)),    // 31
        (a, revoke("payments", 26)),    // 32: already revoking
        (a, grant("payments", "ap-south", 26)), // 33
        (a, grant("payments", "us-east", 26)), // 34: stale token
        (bot, expire("payments", 33)),  // 35
        (bot, expire("payments", 33)),  // 36: already vacant
        (a, grant("payments", "us-east", 33)), // 37
        (a, grant("nowhere", "us-east", 0)), // 38: unknown service
        (a, put(&orders)),              // 39
        (a, grant("orders", "ap-south", 39)), // 40: not allowed
        (
            a,
            start(
                "orders",
                RunKind::Switchover,
                Trigger::Operator,
                "eu-west",
                vec![],
                None,
            ),
        ), // 41: no steps
        (
            a,
            start(
                "orders",
                RunKind::Switchover,
                Trigger::Operator,
                "eu-west",
                vec![step(StepKind::Fence, OnFailure::Abort)],
                None,
            ),
        ), // 42
        (a, delete("orders")),          // 43: held: revoking
        (a, put(&orders)),              // 44: being deleted
        (a, delete("orders")),          // 45: revoking: still deleting
        (bot, expire("orders", 39)),    // 46: fenced: gone
        (a, put(&spare)),               // 47
        (a, revoke("spare", 47)),       // 48
        (bot, expire("spare", 47)),     // 49
        (a, delete("spare")),           // 50: vacant: gone at once
        (a, put(&ServiceSpec::new("bad", &[]))), // 51: invalid
        (
            a,
            Command::Refused {
                method: "/baton.Admin/Move".into(),
                reason: why("no"),
                dropped: 0,
            },
        ), // 52
        (
            a,
            Command::Refused {
                method: "/baton.Admin/Move".into(),
                reason: why("no"),
                dropped: 3,
            },
        ), // 53
        (
            a,
            Command::Cluster {
                action: ClusterAction::AddNode,
                reason: why("node 4"),
                outcome: "ok".into(),
            },
        ), // 54
        (a, delete("payments")),        // 55: held: revoking
        (bot, expire("payments", 37)),  // 56: gone
        (a, grant("payments", "us-east", 37)), // 57: tombstoned: unknown
    ]
}

#[test]
fn applying_a_scripted_log_matches_the_golden_transcript() {
    let mut state = State::new(16);
    let mut transcript = String::new();
    for (i, (actor, command)) in script().into_iter().enumerate() {
        let index = i as u64 + 1;
        let req = Request {
            at_ms: T + i as i64 * 1_000,
            actor: actor.into(),
            command,
        };
        let applied = state.apply(index, &req);
        writeln!(transcript, "{index} {applied:?}").expect("write");
    }
    writeln!(transcript, "state {state:?}").expect("write");
    check_golden("apply_transcript.txt", &transcript);
}
