//! Property-test twins of the fuzz targets in `fuzz/`: config parsing, service-spec
//! validation, decoding and applying Raft commands, and request validation of every RPC.
//! Each runs the target's body (`crate::fuzzing`) on generated input; hostile input must
//! give an error, never a panic, and whatever is accepted must be within the limits.

use proptest::prelude::*;
use prost::Message;

use crate::config::NodeConfig;
use crate::fuzzing;
use crate::proto;
use crate::state::{Request, State};

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES runs longer searches by hand; CI keeps the quick default.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mostly plausible text with hostile bits: long runs, odd characters, empty strings.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,12}",
        "[ -~]{0,40}",
        ".{0,20}",
        (1usize..3000).prop_map(|n| "x".repeat(n)),
        Just("us-east".to_string()),
        Just("http://127.0.0.1:1/h".to_string()),
        Just("webhook".to_string()),
        Just("fence".to_string()),
        Just("grant".to_string()),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..200, 50u64..100_000, any::<u64>()]
}

fn spec() -> impl Strategy<Value = proto::ServiceSpec> {
    let step = (text(), number(), text(), text()).prop_map(|(kind, t, on, url)| proto::PlanStep {
        kind,
        timeout_ms: t,
        on_failure: on,
        url,
    });
    let check = (text(), text(), number(), number(), any::<u32>()).prop_map(
        |(kind, target, interval_ms, timeout_ms, threshold)| proto::HealthCheck {
            kind,
            target,
            interval_ms,
            timeout_ms,
            threshold,
        },
    );
    (
        text(),
        prop::collection::vec(text(), 0..5),
        prop::collection::vec(text(), 0..3),
        number(),
        text(),
        text(),
        prop::collection::btree_map(text(), check, 0..3),
        prop::collection::btree_map(text(), prop::collection::vec(step, 0..20), 0..3),
        any::<u32>(),
        number(),
    )
        .prop_map(
            |(name, regions, allowed, ttl, primary, failback, health, plans, flap, window)| {
                proto::ServiceSpec {
                    name,
                    regions,
                    allowed_regions: allowed,
                    lease_ttl_ms: ttl,
                    initial_primary: primary,
                    auto_failover: true,
                    failback,
                    failback_stable_ms: 1000,
                    cooldown_ms: 1000,
                    flap_limit: flap,
                    flap_window_ms: window,
                    health,
                    plans: plans
                        .into_iter()
                        .map(|(k, steps)| (k, proto::Plan { steps }))
                        .collect(),
                }
            },
        )
}

/// TOML built from known keys with hostile values, or arbitrary text.
fn node_toml() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("id"),
        Just("cluster"),
        Just("region"),
        Just("listen"),
        Just("data_dir"),
        Just("advertise"),
        Just("unknown_key"),
    ];
    let value = prop_oneof![
        number().prop_map(|n| n.to_string()),
        text().prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999999".to_string()),
    ];
    let table = prop_oneof![
        Just(""),
        Just("[timing]\nheartbeat = \"1ms\"\n"),
        Just("[timing]\nheartbeat = \"soon\"\n"),
        Just("[limits]\nmax_connections = 0\n"),
        Just("[storage]\nwatch_history = 0\n"),
        Just("[[peers]]\nid = 0\naddr = \"\"\nregion = \"\"\n"),
        Just("[[services]]\nname = \"x\"\nregions = []\n"),
    ];
    prop_oneof![
        (prop::collection::vec((key, value), 0..8), table).prop_map(|(kv, t)| {
            let mut s: String = kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            s.push_str(t);
            s
        }),
        valid_node_toml(),
        ".{0,200}",
    ]
}

/// A duration as a person might write it, or a hostile one.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("100ms".to_string()),
        Just("0s".to_string()),
        Just("5s".to_string()),
        Just("soon".to_string()),
        (1u64..u64::MAX).prop_map(|n| format!("{n}s")),
        (1u64..u64::MAX).prop_map(|n| format!("{n}ms")),
        (1u64..u64::MAX).prop_map(|n| format!("{n}y")),
    ]
}

/// A node config that parses, with hostile timing and a service: validation runs deep.
fn valid_node_toml() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (
                prop_oneof![
                    Just("heartbeat"),
                    Just("election_timeout_min"),
                    Just("election_timeout_max"),
                    Just("margin"),
                ],
                duration(),
            ),
            0..4,
        ),
        prop::option::of(duration()),
    )
        .prop_map(|(timing, ttl)| {
            let mut s = "id = 1\nregion = \"us-east\"\nlisten = \"127.0.0.1:7101\"\n\
                         data_dir = \"/tmp/x\"\n[timing]\n"
                .to_string();
            for (k, v) in timing {
                s.push_str(&format!("{k} = {v:?}\n"));
            }
            if let Some(ttl) = ttl {
                s.push_str(&format!(
                    "[[services]]\nname = \"payments\"\nregions = [\"us-east\"]\nlease_ttl = {ttl:?}\n"
                ));
            }
            s
        })
}

/// One request message of every RPC, encoded, after the byte that picks its kind in
/// [`fuzzing::requests`].
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0..fuzzing::REQUEST_KINDS,
        (text(), text(), text()),
        (number(), any::<u32>(), any::<bool>(), -2i32..5),
        prop::collection::vec(text(), 0..4),
        spec(),
    )
        .prop_map(|(kind, (a, b, c), (n, m, flag, e), list, spec)| {
            let body = match kind {
                0 => proto::GetPrimaryRequest {
                    service: a,
                    consistency: e,
                }
                .encode_to_vec(),
                1 => proto::ListServicesRequest { consistency: e }.encode_to_vec(),
                2 => proto::WatchRequest {
                    services: list,
                    start_revision: n,
                    progress_interval_ms: u64::from(m),
                }
                .encode_to_vec(),
                3 => proto::KeepAliveRequest {
                    service: a,
                    region: b,
                    agent_id: c,
                    seq: n,
                    demoted: flag,
                    token: n,
                }
                .encode_to_vec(),
                4 => proto::ValidateTokenRequest {
                    service: a,
                    token: n,
                    consistency: e,
                }
                .encode_to_vec(),
                5 => proto::FailoverRequest {
                    service: a,
                    to_region: b,
                    reason: c,
                    expected_token: n,
                    dry_run: flag,
                }
                .encode_to_vec(),
                6 => proto::FailbackRequest {
                    service: a,
                    reason: c,
                    expected_token: n,
                    dry_run: flag,
                }
                .encode_to_vec(),
                7 => proto::ListAuditRequest {
                    from_seq: n,
                    limit: m,
                    service: a,
                }
                .encode_to_vec(),
                8 => proto::SetModeRequest {
                    service: a,
                    mode: e,
                    reason: c,
                }
                .encode_to_vec(),
                9 => proto::FreezeRequest {
                    service: a,
                    freeze: flag,
                    reason: c,
                }
                .encode_to_vec(),
                10 => proto::AckRequest {
                    service: a,
                    reason: c,
                }
                .encode_to_vec(),
                11 => proto::ApproveRequest {
                    run_id: n,
                    approve: flag,
                    reason: c,
                }
                .encode_to_vec(),
                12 => proto::ListWorkflowsRequest {
                    service: a,
                    limit: m,
                }
                .encode_to_vec(),
                13 => proto::PlanRequest { service: a }.encode_to_vec(),
                14 => proto::AddNodeRequest {
                    id: n,
                    addr: b,
                    region: a,
                    learner_only: flag,
                }
                .encode_to_vec(),
                15 => proto::PutServiceRequest {
                    spec: flag.then_some(spec),
                    reason: c,
                }
                .encode_to_vec(),
                16 => proto::DeleteServiceRequest { name: a, reason: c }.encode_to_vec(),
                17 => proto::GetServiceRequest { name: a }.encode_to_vec(),
                18 => proto::GetWorkflowRequest { run_id: n }.encode_to_vec(),
                20 => proto::RemoveNodeRequest { id: n }.encode_to_vec(),
                21 => proto::TransferLeadershipRequest {
                    to: n,
                    campaign: flag,
                }
                .encode_to_vec(),
                _ => Vec::new(),
            };
            let mut out = vec![kind];
            out.extend(body);
            out
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_spec_is_refused_or_within_the_limits(p in spec()) {
        fuzzing::spec_message(&p);
    }

    #[test]
    fn any_spec_bytes_are_refused_or_within_the_limits(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        fuzzing::spec(&bytes);
    }

    #[test]
    fn any_bytes_decode_to_an_error_or_a_command_that_applies(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // What a peer's Forward or AppendEntries payload decodes to.
        if let Ok(req) = bincode::deserialize::<Request>(&bytes) {
            let mut st = State::default();
            let before = st.audit_head().next_seq;
            st.apply(7, &req);
            // Refused or not, one audit entry.
            prop_assert_eq!(st.audit_head().next_seq, before + 1);
        }
    }

    #[test]
    fn any_command_sequence_keeps_every_state_invariant(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        fuzzing::apply(&bytes);
    }

    #[test]
    fn any_config_text_parses_to_an_error_or_a_valid_config(t in node_toml()) {
        fuzzing::config(t.as_bytes());
    }

    #[test]
    fn any_request_is_refused_with_invalid_argument_or_within_the_limits(
        bytes in request_bytes(),
    ) {
        fuzzing::requests(&bytes);
    }

    #[test]
    fn any_request_bytes_are_refused_or_within_the_limits(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        fuzzing::requests(&bytes);
    }
}

/// The committed seed corpora (`fuzz/seeds/<target>/`) run clean through their targets, and
/// the seeds are valid input (so fuzzing starts from accepted messages).
#[test]
fn the_fuzz_seeds_run_clean_and_are_accepted() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut n = 0;
    for (target, body) in [
        ("config", fuzzing::config as fn(&[u8])),
        ("spec", fuzzing::spec),
        ("requests", fuzzing::requests),
    ] {
        for entry in std::fs::read_dir(root.join(target)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            body(&data);
            let text = std::str::from_utf8(&data);
            let accepted = match target {
                "config" => match toml::from_str::<NodeConfig>(text.unwrap()) {
                    Ok(cfg) => cfg.validate().map_err(|e| e.to_string()),
                    Err(_) => toml::from_str::<crate::config::ServiceFile>(text.unwrap())
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.services[0].to_spec().map(drop)),
                },
                "spec" => proto::ServiceSpec::decode(data.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|p| crate::convert::spec_from_proto(&p).map(drop)),
                _ => request_accepted(&data),
            };
            assert_eq!(accepted, Ok(()), "{}", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 3 + 2 + 18);
}

/// Whether the request seed `data` passes its RPC's validation.
fn request_accepted(data: &[u8]) -> Result<(), String> {
    use crate::api::validate as v;
    fn run<M: Message + Default, T>(
        body: &[u8],
        f: impl Fn(&M) -> Result<T, tonic::Status>,
    ) -> Result<(), String> {
        let m = M::decode(body).map_err(|e| e.to_string())?;
        f(&m).map(drop).map_err(|s| s.message().to_string())
    }
    let timing = crate::config::TimingConfig::default();
    let body = &data[1..];
    match data[0] {
        0 => run(body, v::get_primary),
        1 => run(body, v::list_services),
        2 => run(body, v::watch),
        3 => run(body, v::keep_alive),
        4 => run(body, v::validate_token),
        5 => run(body, v::failover),
        6 => run(body, v::failback),
        7 => run(body, v::list_audit),
        8 => run(body, v::set_mode),
        9 => run(body, v::freeze),
        10 => run(body, v::ack),
        11 => run(body, v::approve),
        12 => run(body, v::list_workflows),
        13 => run(body, v::plan),
        14 => run(body, v::add_node),
        15 => run(body, |r| v::put_service(r, &timing)),
        16 => run(body, v::delete_service),
        17 => run(body, v::get_service),
        k => Err(format!("no seed kind {k}")),
    }
}
