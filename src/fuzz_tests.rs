//! Property-test twins of fuzz targets: config parsing, service-spec validation, and
//! decoding and applying Raft commands. Hostile input must give an error, never a panic,
//! and whatever is accepted must be within the limits.

use proptest::prelude::*;

use crate::config::{NodeConfig, ServiceFile};
use crate::convert::spec_from_proto;
use crate::proto;
use crate::state::limits::{MAX_SPEC_BYTES, MAX_TARGET_LEN, MAX_URL_LEN};
use crate::state::{Command, Request, State};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
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
        prop::collection::hash_map(text(), check, 0..3),
        prop::collection::hash_map(text(), prop::collection::vec(step, 0..20), 0..3),
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
        ".{0,200}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_spec_is_refused_or_within_the_limits(p in spec()) {
        if let Ok(s) = spec_from_proto(&p) {
            if s.validate().is_ok() {
                let size = bincode::serialized_size(&s).unwrap() as usize;
                prop_assert!(size <= MAX_SPEC_BYTES);
                for c in s.health.values() {
                    prop_assert!(c.target.len() <= MAX_TARGET_LEN);
                }
                for steps in s.plans.values() {
                    for step in steps {
                        if let crate::state::StepKind::Webhook(url) = &step.kind {
                            prop_assert!(url.len() <= MAX_URL_LEN);
                        }
                    }
                }
                // The state machine takes what validation passed.
                let mut st = State::default();
                let req = Request {
                    at_ms: 1,
                    actor: "fuzz".into(),
                    command: Command::PutService { spec: s, reason: "fuzz".into() },
                };
                st.apply(1, &req);
            }
        }
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
    fn any_config_text_parses_to_an_error_or_a_valid_config(t in node_toml()) {
        if let Ok(cfg) = toml::from_str::<NodeConfig>(&t) {
            let _ = cfg.validate();
        }
        let _ = toml::from_str::<ServiceFile>(&t);
    }
}
