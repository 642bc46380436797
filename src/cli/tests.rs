//! Argument parsing and the printers of the command line.

use clap::{CommandFactory, Parser};

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied()))
}

fn ok(args: &[&str]) -> Cli {
    match parse(args) {
        Ok(c) => c,
        Err(e) => panic!("{args:?} did not parse: {e}"),
    }
}

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn the_bearer_token_is_global_and_distinct_from_a_fencing_token() {
    let cli = ok(&["validate", "payments", "7", "--token", "secret"]);
    assert_eq!(cli.global.token.as_deref(), Some("secret"));
    match cli.command {
        Command::Validate(v) => assert_eq!(v.token, 7),
        other => panic!("{other:?}"),
    }
    let cli = ok(&[
        "--token",
        "t",
        "auth",
        "token",
        "ci",
        "--roles",
        "operator,agent",
    ]);
    assert_eq!(cli.global.token.as_deref(), Some("t"));
}

#[test]
fn endpoints_default_to_the_dev_cluster() {
    // The environment may name other endpoints; the default applies without it.
    if std::env::var_os("BATON_ENDPOINTS").is_some() {
        return;
    }
    let cli = ok(&["status"]);
    assert_eq!(
        cli.global.endpoints,
        vec!["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
    );
    assert_eq!(cli.global.output, OutputFormat::Table);
    assert_eq!(cli.global.timeout, None);
}

#[test]
fn endpoints_accept_lists_urls_and_either_position() {
    let cli = ok(&[
        "--endpoints",
        "http://10.0.0.1:7101/, 10.0.0.2:7102",
        "status",
    ]);
    assert_eq!(cli.global.endpoints, vec!["10.0.0.1:7101", "10.0.0.2:7102"]);
    // Global flags also work after the subcommand.
    let cli = ok(&[
        "primary",
        "payments",
        "--endpoints",
        "[::1]:7101",
        "-w",
        "json",
    ]);
    assert_eq!(cli.global.endpoints, vec!["[::1]:7101"]);
    assert_eq!(cli.global.output, OutputFormat::Json);
    let cli = ok(&["--endpoints", "a:1", "--endpoints", "b:2", "services"]);
    assert_eq!(cli.global.endpoints, vec!["a:1", "b:2"]);
}

#[test]
fn bad_endpoints_are_usage_errors() {
    for bad in ["127.0.0.1", "ftp://a:1", "a:0"] {
        let e = parse(&["--endpoints", bad, "status"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        assert!(e.use_stderr());
    }
}

#[test]
fn tls_flags_are_global_and_https_needs_a_ca() {
    let cli = ok(&[
        "primary",
        "payments",
        "--endpoints",
        "https://a:1/",
        "--cacert",
        "ca.pem",
        "--cert",
        "c.pem",
        "--key",
        "c.key",
    ]);
    assert_eq!(cli.global.endpoints, vec!["https://a:1"]);
    assert_eq!(
        cli.global.cacert.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
    assert_eq!(
        cli.global.key.as_deref(),
        Some(std::path::Path::new("c.key"))
    );
    // An https endpoint without a CA: refused with what to pass.
    let cli = ok(&["--endpoints", "https://a:1", "status"]);
    let mut out = Vec::new();
    let ctx = Ctx {
        global: &cli.global,
        out: &mut out,
    };
    let e = ctx.client().unwrap_err().to_string();
    assert!(e.contains("pass --cacert"), "{e}");
    // A certificate without its key, and an unreadable CA, are named.
    let cli = ok(&[
        "--cacert",
        "/nonexistent/ca.pem",
        "--cert",
        "c.pem",
        "status",
    ]);
    let e = cli.global.tls().unwrap_err().to_string();
    assert!(e.contains("--cert needs --key"), "{e}");
    let cli = ok(&["--cacert", "/nonexistent/ca.pem", "status"]);
    let e = cli.global.tls().unwrap_err().to_string();
    assert!(e.contains("--cacert /nonexistent/ca.pem"), "{e}");
}

#[test]
fn output_formats_and_timeouts_parse() {
    let cli = ok(&["--output", "simple", "--timeout", "750ms", "status"]);
    assert_eq!(cli.global.output, OutputFormat::Simple);
    assert_eq!(
        cli.global.timeout,
        Some(std::time::Duration::from_millis(750))
    );
    let cli = ok(&["--write-out", "json", "status"]);
    assert_eq!(cli.global.output, OutputFormat::Json);
    assert!(parse(&["-w", "yaml", "status"]).is_err());
    assert!(parse(&["--timeout", "soon", "status"]).is_err());
}

#[test]
fn primary_and_watch_arguments() {
    let cli = ok(&["primary", "payments", "--local"]);
    match cli.command {
        Command::Primary(a) => assert!(a.local && a.service == "payments"),
        other => panic!("{other:?}"),
    }
    let cli = ok(&["watch", "payments", "orders", "--from", "42"]);
    match cli.command {
        Command::Watch(a) => {
            assert_eq!(a.services, vec!["payments", "orders"]);
            assert_eq!(a.from, Some(42));
        }
        other => panic!("{other:?}"),
    }
    match ok(&["watch"]).command {
        Command::Watch(a) => assert!(a.services.is_empty() && a.from.is_none()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failover_needs_a_target_and_a_reason() {
    assert!(parse(&["failover", "payments", "--to", "eu-west"]).is_err());
    assert!(parse(&["failover", "payments", "--reason", "x"]).is_err());
    let cli = ok(&[
        "failover",
        "payments",
        "--to",
        "eu-west",
        "--reason",
        "drill",
        "--expected-token",
        "7",
        "--dry-run",
        "-y",
    ]);
    match cli.command {
        Command::Failover(a) => {
            assert_eq!(a.to, "eu-west");
            assert_eq!(a.reason, "drill");
            assert_eq!(a.expected_token, Some(7));
            assert!(a.dry_run && a.yes);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn audit_lists_or_verifies() {
    match ok(&["audit"]).command {
        Command::Audit(a) => {
            assert!(a.command.is_none());
            assert_eq!((a.from, a.limit, a.service), (0, 100, None));
        }
        other => panic!("{other:?}"),
    }
    match ok(&[
        "audit",
        "--service",
        "payments",
        "--from",
        "5",
        "--limit",
        "10",
    ])
    .command
    {
        Command::Audit(a) => {
            assert_eq!((a.from, a.limit), (5, 10));
            assert_eq!(a.service.as_deref(), Some("payments"));
        }
        other => panic!("{other:?}"),
    }
    match ok(&["audit", "verify"]).command {
        Command::Audit(a) => assert!(matches!(a.command, Some(audit::AuditCommand::Verify(_)))),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["audit", "--limit", "0"]).is_err());
}

#[test]
fn service_and_admin_subcommands() {
    assert!(matches!(
        ok(&["service", "apply", "services.toml"]).command,
        Command::Service(service::ServiceCommand::Apply(_))
    ));
    assert!(
        parse(&["service", "delete", "payments"]).is_err(),
        "a reason is required"
    );
    match ok(&[
        "admin",
        "add-node",
        "--id",
        "4",
        "--addr",
        "127.0.0.1:7104",
        "--region",
        "us-west",
        "--learner",
    ])
    .command
    {
        Command::Admin(admin::AdminCommand::AddNode(a)) => {
            assert_eq!(
                (a.id, a.addr.as_str(), a.learner),
                (4, "127.0.0.1:7104", true)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&["admin", "add-node", "--id", "0", "--addr", "a:1", "--region", "r"]).is_err());
    assert!(matches!(
        ok(&["admin", "transfer-leader"]).command,
        Command::Admin(admin::AdminCommand::TransferLeader(admin::TransferArgs {
            to: None
        }))
    ));
    assert!(matches!(
        ok(&["admin", "remove-node", "3"]).command,
        Command::Admin(admin::AdminCommand::RemoveNode(admin::RemoveNodeArgs {
            id: 3
        }))
    ));
}

#[test]
fn bench_defaults() {
    match ok(&["bench", "get-primary"]).command {
        Command::Bench(bench::BenchCommand::GetPrimary(a)) => {
            assert_eq!(a.service, "payments");
            assert_eq!(a.consistency, bench::ConsistencyArg::Linearizable);
            assert_eq!(a.concurrency, vec![1, 64]);
            assert_eq!(a.duration, std::time::Duration::from_secs(10));
        }
        other => panic!("{other:?}"),
    }
    match ok(&[
        "bench",
        "get-primary",
        "--consistency",
        "local",
        "--concurrency",
        "4,8,16",
        "--duration",
        "2s",
    ])
    .command
    {
        Command::Bench(bench::BenchCommand::GetPrimary(a)) => {
            assert_eq!(a.consistency, bench::ConsistencyArg::Local);
            assert_eq!(a.concurrency, vec![4, 8, 16]);
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&["bench", "get-primary", "--concurrency", "0"]).is_err());
}

#[test]
fn server_and_dev_arguments() {
    match ok(&["server", "--config", "node.toml"]).command {
        Command::Server(a) => assert_eq!(a.config, std::path::PathBuf::from("node.toml")),
        other => panic!("{other:?}"),
    }
    match ok(&["dev"]).command {
        Command::Dev(a) => assert_eq!((a.base_port, a.data_dir), (7101, None)),
        other => panic!("{other:?}"),
    }
    assert!(
        parse(&["dev", "--base-port", "65535"]).is_err(),
        "needs three ports"
    );
    assert!(ok(&["dev"]).command.runs_a_node());
    assert!(!ok(&["status"]).command.runs_a_node());
}

#[test]
fn help_and_usage_errors_exit_with_their_codes() {
    let code = |args: &[&str]| {
        run(std::iter::once("baton").chain(args.iter().copied()))
            .map(|c| format!("{c:?}"))
            .unwrap_or_default()
    };
    assert_eq!(code(&["--version"]), format!("{:?}", ExitCode::SUCCESS));
    assert_eq!(
        code(&["no-such-command"]),
        format!("{:?}", ExitCode::from(2))
    );
}

#[test]
fn status_rows_show_roles_and_errors() {
    use crate::client::{ClientError, EndpointStatus};
    let statuses = vec![
        EndpointStatus {
            endpoint: "127.0.0.1:7101".into(),
            result: Ok(crate::proto::ClusterStatusResponse {
                node_id: 1,
                region: "us-east".into(),
                leader_id: 1,
                leader_addr: "127.0.0.1:7101".into(),
                term: 3,
                commit_index: 20,
                applied_index: 20,
                state: "Leader".into(),
                members: vec![
                    crate::proto::NodeStatus {
                        id: 1,
                        voter: true,
                        ..Default::default()
                    },
                    crate::proto::NodeStatus {
                        id: 4,
                        voter: false,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        },
        EndpointStatus {
            endpoint: "127.0.0.1:7102".into(),
            result: Err(ClientError::Unavailable {
                op: "ClusterStatus",
                waited: std::time::Duration::from_secs(1),
                last: "127.0.0.1:7102: connection refused".into(),
            }),
        },
    ];
    let t = status::table(&statuses);
    let text = t.render(OutputFormat::Simple);
    assert_eq!(
        text,
        "127.0.0.1:7101, 1, us-east, leader, 3, 20, 20, 1 (127.0.0.1:7101), 1 voters, 1 learners, -\n\
         127.0.0.1:7102, -, -, -, -, -, -, -, -, unreachable: 127.0.0.1:7102: connection refused\n"
    );
    let json = t.to_json();
    assert_eq!(json[0]["role"], "leader");
    assert_eq!(json[0]["applied"], 20);
    assert_eq!(json[1]["id"], serde_json::Value::Null);
}

#[test]
fn watch_lines_in_each_format() {
    let resp = crate::proto::WatchResponse {
        revision: 12,
        events: vec![crate::proto::WatchEvent {
            kind: crate::proto::EventKind::Granted as i32,
            service: "payments".into(),
            revision: 12,
            lease: Some(crate::proto::Lease {
                service: "payments".into(),
                holder_region: "eu-west".into(),
                token: 12,
                state: crate::proto::LeaseState::Held as i32,
                mode: crate::proto::LeaseMode::ReadWrite as i32,
                ..Default::default()
            }),
            reason: "drill".into(),
            ..Default::default()
        }],
        progress: false,
        served_by: 1,
    };
    let rows = watch::rows(&resp);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        watch::line(OutputFormat::Simple, &rows[0]),
        "12, granted, payments, eu-west, 12, held, read-write, drill"
    );
    let json: serde_json::Value =
        serde_json::from_str(&watch::line(OutputFormat::Json, &rows[0])).unwrap();
    assert_eq!(json["kind"], "granted");
    assert_eq!(json["token"], 12);
    assert!(watch::line(OutputFormat::Table, &rows[0]).starts_with("12         granted "));
    assert_eq!(
        watch::kind_name(crate::proto::EventKind::ModeChanged),
        "mode-changed"
    );
}

#[test]
fn failover_checks_mark_failures() {
    let t = failover::checks_table(&[
        crate::proto::Check {
            name: "target-allowed".into(),
            passed: true,
            detail: "ok".into(),
        },
        crate::proto::Check {
            name: "expected-token".into(),
            passed: false,
            detail: "current token is 9, not 7".into(),
        },
    ]);
    assert_eq!(
        t.render(OutputFormat::Table),
        "CHECK           RESULT  DETAIL\n\
         target-allowed  pass    ok\n\
         expected-token  FAIL    current token is 9, not 7\n"
    );
    assert_eq!(t.to_json()[1]["passed"], false);
}

#[test]
fn bench_results_are_figures() {
    let ms = std::time::Duration::from_millis;
    let r = bench::LevelResult {
        concurrency: 2,
        requests: 4,
        errors: 1,
        elapsed: ms(2000),
        latencies: vec![ms(1), ms(2), ms(3), ms(10)],
    };
    let t = bench::results_table("local", &[r]);
    let json = t.to_json();
    assert_eq!(json[0]["requests_per_s"], 2);
    assert_eq!(json[0]["max_ms"], 10.0);
    assert_eq!(json[0]["concurrency"], 2);
}

#[test]
fn audit_entries_keep_documents_for_json_only() {
    let e = crate::proto::AuditEntry {
        seq: 3,
        at_unix_ms: 1_700_000_000_000,
        actor: "alice".into(),
        action: "failover".into(),
        service: "payments".into(),
        reason: "drill".into(),
        before: r#"{"token":7}"#.into(),
        outcome: "ok".into(),
        ..Default::default()
    };
    let t = audit::entries_table(&[e]);
    assert_eq!(
        t.render(OutputFormat::Simple),
        "3, 2023-11-14T22:13:20.000Z, alice, failover, payments, drill, ok\n"
    );
    let json = t.to_json();
    assert_eq!(json[0]["before"]["token"], 7);
    assert_eq!(json[0]["after"], serde_json::Value::Null);
}

fn candidate(
    region: &str,
    eligible: bool,
    health: &str,
    reasons: &[&str],
) -> crate::proto::CandidateEligibility {
    crate::proto::CandidateEligibility {
        region: region.into(),
        eligible,
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        health: health.into(),
    }
}

fn sample_candidates() -> Vec<crate::proto::CandidateEligibility> {
    vec![
        candidate(
            "us-east",
            false,
            "up: healthy from 3 of 3",
            &["current holder"],
        ),
        candidate(
            "eu-west",
            false,
            "down: failing from us-east, ap-south (2 of 3 vantage regions)",
            &["unhealthy: down: failing from us-east, ap-south (2 of 3 vantage regions)"],
        ),
        candidate("ap-south", true, "no health check", &["eligible"]),
    ]
}

#[test]
fn plan_and_failback_arguments() {
    match ok(&["plan", "payments"]).command {
        Command::Plan(a) => assert_eq!(a.service, "payments"),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["plan"]).is_err());
    assert!(
        parse(&["failback", "payments"]).is_err(),
        "a reason is required"
    );
    match ok(&["failback", "payments", "--reason", "home"]).command {
        Command::Failback(a) => {
            assert_eq!(
                (a.service.as_str(), a.reason.as_str()),
                ("payments", "home")
            );
            assert_eq!(a.expected_token, None);
            assert!(!a.dry_run && !a.yes);
        }
        other => panic!("{other:?}"),
    }
    match ok(&[
        "failback",
        "payments",
        "--reason",
        "home",
        "--expected-token",
        "12",
        "--dry-run",
        "-y",
    ])
    .command
    {
        Command::Failback(a) => {
            assert_eq!(a.expected_token, Some(12));
            assert!(a.dry_run && a.yes);
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&["failback", "payments", "--reason", "x", "--to", "eu-west"]).is_err());
}

#[test]
fn approve_reject_freeze_ack_and_set_mode_arguments() {
    match ok(&["approve", "42", "--reason", "looks right"]).command {
        Command::Approve(a) => assert_eq!((a.run, a.reason.as_str()), (42, "looks right")),
        other => panic!("{other:?}"),
    }
    match ok(&["reject", "42", "--reason", "not now"]).command {
        Command::Reject(a) => assert_eq!(a.run, 42),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["approve", "42"]).is_err(), "a reason is required");
    assert!(parse(&["approve", "run-42", "--reason", "x"]).is_err());
    for (cmd, want) in [
        ("freeze", "freeze"),
        ("unfreeze", "unfreeze"),
        ("ack", "ack"),
    ] {
        let cli = ok(&[cmd, "payments", "--reason", "maintenance"]);
        let (name, args) = match cli.command {
            Command::Freeze(a) => ("freeze", a),
            Command::Unfreeze(a) => ("unfreeze", a),
            Command::Ack(a) => ("ack", a),
            other => panic!("{other:?}"),
        };
        assert_eq!(name, want);
        assert_eq!(
            (args.service.as_str(), args.reason.as_str()),
            ("payments", "maintenance")
        );
        assert!(parse(&[cmd, "payments"]).is_err(), "{cmd} needs a reason");
    }
    match ok(&["set-mode", "payments", "read-only", "--reason", "degrade"]).command {
        Command::SetMode(a) => {
            assert_eq!(a.mode, control::ModeArg::ReadOnly);
            assert_eq!(
                crate::client::LeaseMode::from(a.mode),
                crate::client::LeaseMode::ReadOnly
            );
        }
        other => panic!("{other:?}"),
    }
    match ok(&[
        "set-mode",
        "payments",
        "read-write",
        "--reason",
        "recovered",
    ])
    .command
    {
        Command::SetMode(a) => assert_eq!(
            crate::client::LeaseMode::from(a.mode),
            crate::client::LeaseMode::ReadWrite
        ),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["set-mode", "payments", "rw", "--reason", "x"]).is_err());
    assert!(parse(&["set-mode", "payments", "read-only"]).is_err());
}

#[test]
fn workflows_workflow_and_drill_arguments() {
    match ok(&["workflows"]).command {
        Command::Workflows(a) => assert_eq!((a.service, a.limit), (None, 20)),
        other => panic!("{other:?}"),
    }
    match ok(&["workflows", "payments", "--limit", "5"]).command {
        Command::Workflows(a) => {
            assert_eq!((a.service.as_deref(), a.limit), (Some("payments"), 5))
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&["workflows", "--limit", "0"]).is_err());
    match ok(&["workflow", "17"]).command {
        Command::Workflow(a) => assert_eq!(a.run, 17),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["workflow"]).is_err());
    match ok(&[
        "drill",
        "payments",
        "--to",
        "eu-west",
        "--reason",
        "quarterly",
        "-y",
    ])
    .command
    {
        Command::Drill(a) => {
            assert_eq!(
                (a.service.as_str(), a.to.as_str(), a.reason.as_str()),
                ("payments", "eu-west", "quarterly")
            );
            assert!(a.yes);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        parse(&["drill", "payments", "--reason", "x"]).is_err(),
        "needs --to"
    );
    assert!(
        parse(&["drill", "payments", "--to", "eu-west"]).is_err(),
        "needs a reason"
    );
    assert!(
        !ok(&["drill", "payments", "--to", "eu-west", "--reason", "x"])
            .command
            .runs_a_node()
    );
}

#[test]
fn plan_prints_candidates_in_preference_order() {
    let t = plan::candidates_table(&sample_candidates());
    assert_eq!(
        t.render(OutputFormat::Simple),
        "us-east, false, up: healthy from 3 of 3, current holder\n\
         eu-west, false, down: failing from us-east, ap-south (2 of 3 vantage regions), \
         unhealthy: down: failing from us-east, ap-south (2 of 3 vantage regions)\n\
         ap-south, true, no health check, eligible\n"
    );
    let json = t.to_json();
    assert_eq!(json[2]["region"], "ap-south");
    assert_eq!(json[2]["eligible"], true);
    assert!(t
        .render(OutputFormat::Table)
        .starts_with("REGION    ELIGIBLE  HEALTH"));
    let c = sample_candidates();
    assert!(!plan::candidate_down(&c[0]));
    assert!(plan::candidate_down(&c[1]));
    assert_eq!(plan::preferred_region(&c), Some("us-east"));
    let fenced = vec![
        candidate("us-east", false, "up", &["not allowed (allowed: eu-west)"]),
        candidate("eu-west", true, "up", &["eligible"]),
    ];
    assert_eq!(plan::preferred_region(&fenced), Some("eu-west"));
    assert_eq!(plan::preferred_region(&[]), None);
    let summary = plan::summary_table(&crate::proto::PlanResponse {
        service: "payments".into(),
        holder_region: "us-east".into(),
        candidates: c,
        blockers: vec!["frozen (baton unfreeze payments)".into()],
        failover_steps: vec!["precheck".into(), "fence".into(), "grant".into()],
        next_action: "nothing: frozen: automation is off".into(),
    });
    assert_eq!(
        summary.render(OutputFormat::Table),
        "SERVICE        payments\n\
         HOLDER         us-east\n\
         NEXT ACTION    nothing: frozen: automation is off\n\
         BLOCKERS       frozen (baton unfreeze payments)\n\
         FAILOVER PLAN  precheck -> fence -> grant\n"
    );
    assert_eq!(
        summary.to_json()["blockers"][0],
        "frozen (baton unfreeze payments)"
    );
}

#[test]
fn move_results_show_the_run() {
    let done = crate::proto::FailoverResponse {
        fenced_by: "demotion-ack".into(),
        fence_ms: 120,
        total_ms: 1500,
        run_id: 42,
        ..Default::default()
    };
    assert_eq!(
        moves::result_table(&done).render(OutputFormat::Simple),
        "demotion-ack, 120ms, 1s 500ms, 42\n"
    );
    let dry = crate::proto::FailoverResponse::default();
    assert_eq!(
        moves::result_table(&dry).to_json()["run"],
        serde_json::Value::Null
    );
    assert_eq!(moves::holder_text(None), "nobody (the lease is vacant)");
    let held = crate::proto::Lease {
        holder_region: "us-east".into(),
        token: 7,
        state: crate::proto::LeaseState::Held as i32,
        ..Default::default()
    };
    assert_eq!(moves::holder_text(Some(&held)), "us-east (token 7)");
    let failed = moves::failed_checks(&[
        crate::proto::Check {
            name: "target-healthy".into(),
            passed: false,
            detail: "eu-west: down".into(),
        },
        crate::proto::Check {
            name: "quorum".into(),
            passed: true,
            detail: "ok".into(),
        },
    ]);
    assert_eq!(failed, vec!["target-healthy (eu-west: down)"]);
    assert_eq!(
        moves::Move::Back.target(&sample_candidates()),
        "its preferred region us-east"
    );
    assert_eq!(moves::Move::Back.target(&[]), "its preferred region");
    assert_eq!(moves::Move::To("eu-west".into()).target(&[]), "eu-west");
    assert_eq!(moves::lease_table(None).to_json(), serde_json::Value::Null);
}

#[test]
fn control_printers() {
    let w = sample_workflow();
    let t = control::decision_table(true, 42, Some(&w));
    assert_eq!(
        t.render(OutputFormat::Simple),
        "42, approved, payments, running, 3/4 grant\n"
    );
    let t = control::decision_table(false, 43, None);
    assert_eq!(t.to_json()["decision"], "rejected");
    assert_eq!(t.to_json()["state"], serde_json::Value::Null);
    assert_eq!(
        control::frozen_table("payments", true).render(OutputFormat::Simple),
        "payments, true\n"
    );
    let lease = crate::proto::Lease {
        service: "payments".into(),
        holder_region: "us-east".into(),
        token: 7,
        state: crate::proto::LeaseState::Held as i32,
        mode: crate::proto::LeaseMode::ReadOnly as i32,
        ttl_ms: 2000,
        revision: 30,
        ..Default::default()
    };
    assert_eq!(
        control::mode_table("payments", Some(&lease)).render(OutputFormat::Simple),
        "payments, us-east, 7, held, read-only, 2s, 30\n"
    );
    assert_eq!(
        control::mode_table("orders", None).to_json()["service"],
        "orders"
    );
}

/// A failover run stopped at its grant step: detected at T, decided 800 ms later, fenced
/// at +2 s, granted at +2.5 s.
fn sample_workflow() -> crate::proto::Workflow {
    const T: i64 = 1_700_000_000_000;
    let step =
        |kind: &str, state: &str, timeout_ms: u64, on_failure: &str, start: i64, end: i64| {
            crate::proto::WorkflowStep {
                kind: kind.into(),
                state: state.into(),
                attempts: u32::from(state != "pending"),
                started_unix_ms: start,
                finished_unix_ms: end,
                detail: if state == "done" {
                    "ok".into()
                } else {
                    String::new()
                },
                timeout_ms,
                on_failure: on_failure.into(),
            }
        };
    crate::proto::Workflow {
        id: 42,
        service: "payments".into(),
        kind: "failover".into(),
        trigger: "lease expired".into(),
        from_region: "us-east".into(),
        to_region: "eu-west".into(),
        actor: "automation".into(),
        reason: "us-east stopped renewing".into(),
        state: "running".into(),
        steps: vec![
            step("precheck", "done", 5_000, "abort", T + 800, T + 810),
            step("fence", "done", 0, "abort", T + 810, T + 2_000),
            step("grant", "running", 5_000, "retry(3)", T + 2_000, 0),
            step("verify", "pending", 30_000, "abort", 0, 0),
        ],
        current_step: 2,
        token_before: 7,
        token_after: 0,
        error: String::new(),
        detected_unix_ms: T,
        decided_unix_ms: T + 800,
        fenced_unix_ms: T + 2_000,
        granted_unix_ms: T + 2_500,
        verified_unix_ms: 0,
        finished_unix_ms: 0,
    }
}

#[test]
fn workflow_lists_show_moves_steps_and_tokens() {
    let mut done = sample_workflow();
    done.id = 41;
    done.kind = "switchover".into();
    done.trigger = "operator".into();
    done.from_region = String::new();
    done.state = "succeeded".into();
    done.current_step = 4;
    done.token_after = 12;
    let t = workflow::workflows_table(&[sample_workflow(), done]);
    assert_eq!(
        t.render(OutputFormat::Table),
        "ID  SERVICE   KIND        TRIGGER        MOVE             STATE      STEP       TOKENS\n\
         42  payments  failover    lease expired  us-east→eu-west  running    3/4 grant  7→-\n\
         41  payments  switchover  operator       none→eu-west     succeeded  done       7→12\n"
    );
    let json = t.to_json();
    assert_eq!(json[0]["token_after"], serde_json::Value::Null);
    assert_eq!(json[1]["token_after"], 12);
    assert_eq!(json[1]["from"], "");
    assert_eq!(json[0]["detected"], "2023-11-14T22:13:20.000Z");
    let empty = crate::proto::Workflow::default();
    assert_eq!(workflow::step_text(&empty), "-");
}

#[test]
fn a_workflow_shows_every_step_and_its_timeline() {
    let w = sample_workflow();
    let steps = workflow::steps_table(&w);
    assert_eq!(
        steps.render(OutputFormat::Simple),
        "1, precheck, done, 1, 5s, abort, 10ms, ok\n\
         2, fence, done, 1, none, abort, 1s 190ms, ok\n\
         3, grant, running, 1, 5s, retry(3), -, -\n\
         4, verify, pending, 0, 30s, abort, -, -\n"
    );
    assert_eq!(steps.to_json()[2]["finished"], serde_json::Value::Null);
    let timeline = workflow::timeline_table(&[&w], true);
    assert_eq!(
        timeline.render(OutputFormat::Table),
        "PHASE     AT                        SINCE DETECTED  TOOK\n\
         detected  2023-11-14T22:13:20.000Z  0s              -\n\
         decided   2023-11-14T22:13:20.800Z  800ms           800ms\n\
         fenced    2023-11-14T22:13:22.000Z  2s              1s 200ms\n\
         granted   2023-11-14T22:13:22.500Z  2s 500ms        500ms\n"
    );
    assert_eq!(timeline.to_json()[0]["run"], 42);
    assert_eq!(workflow::time_to_detect(&w), Some(800));
    // No verify yet: recovered when granted.
    assert_eq!(workflow::time_to_recover(&w), Some(2_500));
    let mut verified = w.clone();
    verified.verified_unix_ms = w.detected_unix_ms + 3_000;
    assert_eq!(workflow::time_to_recover(&verified), Some(3_000));
    let run = workflow::run_table(&w).to_json();
    assert_eq!(run["time_to_detect"], "800ms");
    assert_eq!(run["time_to_recover"], "2s 500ms");
    assert_eq!(run["step"], "3/4 grant");
    assert_eq!(run["token_after"], serde_json::Value::Null);
    // Times out of order or missing give no duration rather than a wrong one.
    let mut odd = w.clone();
    odd.decided_unix_ms = w.detected_unix_ms - 5;
    odd.detected_unix_ms = w.detected_unix_ms;
    assert_eq!(workflow::time_to_detect(&odd), None);
    assert_eq!(
        workflow::time_to_detect(&crate::proto::Workflow::default()),
        None
    );
    // Several runs: the run and kind columns show.
    let two = workflow::timeline_table(&[&w, &verified], false);
    assert_eq!(two.rows().len(), 9);
    assert!(two
        .render(OutputFormat::Table)
        .starts_with("RUN  KIND      PHASE"));
}

#[test]
fn drill_parts_and_checks() {
    use crate::client::ClientError;
    let held = |region: &str, token: u64| crate::proto::GetPrimaryResponse {
        lease: Some(crate::proto::Lease {
            service: "payments".into(),
            holder_region: region.into(),
            token,
            state: crate::proto::LeaseState::Held as i32,
            ..Default::default()
        }),
        linearizable: true,
        ..Default::default()
    };
    let p = drill::lease_part(
        "lease after switchover",
        Ok(held("eu-west", 12)),
        "eu-west",
        Some(12),
    );
    assert_eq!(p.passed, Some(true), "{p:?}");
    let p = drill::lease_part(
        "lease after switchover",
        Ok(held("eu-west", 13)),
        "eu-west",
        Some(12),
    );
    assert_eq!(p.passed, Some(false));
    assert!(p.detail.contains("with token 12"), "{}", p.detail);
    let p = drill::lease_part(
        "lease after failback",
        Ok(held("eu-west", 13)),
        "us-east",
        None,
    );
    assert_eq!(p.passed, Some(false));
    assert!(
        p.detail.contains("found eu-west (token 13) in state held"),
        "{}",
        p.detail
    );
    let unavailable = ClientError::Unavailable {
        op: "GetPrimary",
        waited: std::time::Duration::from_secs(1),
        last: "no leader".into(),
    };
    let p = drill::lease_part("lease after failback", Err(unavailable), "us-east", None);
    assert_eq!(p.passed, Some(false));
    assert!(p.detail.starts_with("cannot read the lease"));

    let plan = crate::proto::PlanResponse {
        candidates: sample_candidates(),
        ..Default::default()
    };
    let p = drill::health_part("health after switchover", Ok(plan.clone()), "ap-south");
    assert_eq!(
        (p.passed, p.detail.as_str()),
        (Some(true), "ap-south: no health check")
    );
    let p = drill::health_part("health after switchover", Ok(plan.clone()), "eu-west");
    assert_eq!(p.passed, Some(false));
    let p = drill::health_part("health after switchover", Ok(plan), "mars");
    assert_eq!(p.detail, "mars is not a candidate region");

    let parts = vec![
        drill::Part {
            name: "switchover to eu-west".into(),
            passed: Some(true),
            detail: "run 41".into(),
        },
        drill::Part {
            name: "health after switchover".into(),
            passed: Some(false),
            detail: "eu-west: down".into(),
        },
        drill::Part {
            name: "lease after failback".into(),
            passed: None,
            detail: "the failback failed".into(),
        },
    ];
    let t = drill::parts_table(&parts);
    assert_eq!(
        t.render(OutputFormat::Table),
        "PART                     RESULT   DETAIL\n\
         switchover to eu-west    pass     run 41\n\
         health after switchover  FAIL     eu-west: down\n\
         lease after failback     skipped  the failback failed\n"
    );
    assert_eq!(t.to_json()[2]["passed"], serde_json::Value::Null);
    assert_eq!(drill::failed_parts(&parts), vec!["health after switchover"]);
}

#[test]
fn services_show_frozen_paused_and_the_run() {
    let resp = crate::proto::ListServicesResponse {
        services: vec![
            crate::proto::ServiceStatus {
                spec: Some(crate::proto::ServiceSpec {
                    name: "payments".into(),
                    regions: vec!["us-east".into(), "eu-west".into()],
                    auto_failover: true,
                    ..Default::default()
                }),
                lease: Some(crate::proto::Lease {
                    service: "payments".into(),
                    holder_region: "us-east".into(),
                    token: 7,
                    state: crate::proto::LeaseState::Held as i32,
                    mode: crate::proto::LeaseMode::ReadWrite as i32,
                    ttl_ms: 2000,
                    revision: 9,
                    ..Default::default()
                }),
                frozen: true,
                paused_reason: "flap limit: 3 moves within 10m".into(),
                active_run: 42,
                ..Default::default()
            },
            crate::proto::ServiceStatus {
                spec: Some(crate::proto::ServiceSpec {
                    name: "orders".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        revision: 9,
    };
    let t = services::services_table(&resp);
    assert_eq!(
        t.render(OutputFormat::Simple),
        "payments, us-east, 7, held, read-write, 2s, 9, us-east,eu-west, true, true, \
         flap limit: 3 moves within 10m, 42\n\
         orders, -, -, -, -, -, -, -, false, false, -, -\n"
    );
    let json = t.to_json();
    assert_eq!(json[0]["run"], 42);
    assert_eq!(json[1]["paused"], serde_json::Value::Null);
    assert_eq!(json[1]["frozen"], false);
}

#[test]
fn completions_cover_commands_and_global_flags_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let cli = ok(&["completions", shell]);
        let mut out = Vec::new();
        let Command::Completions(args) = cli.command else {
            panic!("not the completions command");
        };
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(args.shell, &mut cmd, "baton", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["failover", "services", "endpoints", "cacert"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    assert!(parse(&["completions", "tcsh"]).is_err());
}

#[test]
fn status_shows_runs_pauses_and_region_health_and_long_text_stays_on_screen() {
    use crate::proto;
    use std::collections::HashMap;
    let mut spec = proto::ServiceSpec {
        name: "payments".into(),
        regions: vec!["us-east".into(), "eu-west".into()],
        auto_failover: true,
        ..Default::default()
    };
    spec.health
        .insert("us-east".into(), proto::HealthCheck::default());
    spec.health
        .insert("eu-west".into(), proto::HealthCheck::default());
    let obs = |region: &str, vantage: &str, healthy| proto::HealthObservation {
        region: region.into(),
        vantage_node: 1,
        vantage_region: vantage.into(),
        healthy,
        ..Default::default()
    };
    let resp = proto::ListServicesResponse {
        services: vec![proto::ServiceStatus {
            spec: Some(spec),
            lease: Some(proto::Lease {
                service: "payments".into(),
                holder_region: "eu-west".into(),
                token: 9,
                state: proto::LeaseState::Held as i32,
                ..Default::default()
            }),
            paused_reason: "x".repeat(500),
            active_run: 4,
            observations: vec![
                obs("us-east", "us-east", false),
                obs("us-east", "eu-west", false),
                obs("eu-west", "us-east", true),
            ],
            ..Default::default()
        }],
        revision: 10,
    };
    let mut runs = HashMap::new();
    runs.insert(
        4,
        proto::Workflow {
            id: 4,
            kind: "failover".into(),
            trigger: "health".into(),
            to_region: "eu-west".into(),
            current_step: 1,
            steps: vec![
                proto::WorkflowStep {
                    kind: "precheck".into(),
                    ..Default::default()
                },
                proto::WorkflowStep {
                    kind: "fence".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    let overview = status::services_overview(&resp, &runs).render_table();
    assert!(
        overview.contains("#4 failover to eu-west (health), step fence"),
        "{overview}"
    );
    assert!(overview.contains("PAUSED: xxx"), "{overview}");
    // The 500-character reason is cut on screen ...
    assert!(
        overview.lines().all(|l| l.chars().count() < 250),
        "{overview}"
    );
    // ... and whole in JSON.
    let json = status::services_overview(&resp, &runs)
        .to_json()
        .to_string();
    assert!(json.contains(&"x".repeat(500)));
    let regions = status::regions_table(&resp).render_table();
    let row = |r: &str| {
        regions
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(r))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("us-east").contains("UNHEALTHY"), "{regions}");
    assert!(row("us-east").contains("0/2"), "{regions}");
    assert!(row("eu-west").contains("healthy"), "{regions}");
    assert!(row("eu-west").contains("true"), "{regions}");
}
