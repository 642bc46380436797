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
    for bad in ["127.0.0.1", "https://a:1", "a:0"] {
        let e = parse(&["--endpoints", bad, "status"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        assert!(e.use_stderr());
    }
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
        Command::Audit(a) => assert!(matches!(a.command, Some(audit::AuditCommand::Verify))),
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
