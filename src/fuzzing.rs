//! The bodies of the fuzz targets in `fuzz/` (built with the `fuzzing` feature), shared with
//! their property-test twins in `cargo test`, so both run the same code.
//!
//! Each takes arbitrary bytes and panics only when a property breaks: hostile input must
//! give an error, never a panic, and whatever is accepted must be within the limits.

use prost::Message;
use tonic::{Code, Status};

use crate::api::validate;
use crate::config::{check_ttl, NodeConfig, ServiceFile, TimingConfig};
use crate::convert::{spec_from_proto, spec_to_proto};
use crate::proto;
use crate::state::invariants::check_step;
use crate::state::limits::{
    MAX_ADDR_LEN, MAX_PLAN_STEPS, MAX_SERVICES, MAX_SPEC_BYTES, MAX_TARGET_LEN, MAX_URL_LEN,
    MIN_PROBE_INTERVAL_MS,
};
use crate::state::names::{check_name, MAX_REASON_LEN};
use crate::state::service::{MAX_REGIONS, MAX_TTL_MS, MIN_TTL_MS};
use crate::state::{
    default_plan, Command, Effect, LeaseMode, OnFailure, PhaseMark, Request, Response, RunKind,
    ServiceSpec, State, StepKind, StepOutcome, StepSpec, Trigger,
};

/// Panics unless an accepted definition is within every limit of `state::limits`.
pub fn assert_spec_within_limits(s: &ServiceSpec) {
    let size = bincode::serialized_size(s).unwrap_or(u64::MAX);
    assert!(size <= MAX_SPEC_BYTES as u64, "{size} bytes accepted");
    assert!(check_name("service", &s.name).is_ok(), "{:?}", s.name);
    assert!(!s.regions.is_empty() && s.regions.len() <= MAX_REGIONS);
    for r in s.regions.iter().chain(&s.allowed_regions) {
        assert!(check_name("region", r).is_ok(), "{r:?}");
    }
    assert!((MIN_TTL_MS..=MAX_TTL_MS).contains(&s.lease_ttl_ms));
    let first = s.first_primary().unwrap_or_default();
    assert!(s.is_allowed(first), "starts on {first:?}, not allowed");
    for (region, c) in &s.health {
        assert!(s.regions.contains(region), "health check for {region:?}");
        assert!(!c.target.is_empty() && c.target.len() <= MAX_TARGET_LEN);
        assert!(c.interval_ms >= MIN_PROBE_INTERVAL_MS && c.timeout_ms > 0 && c.threshold > 0);
    }
    for (kind, steps) in &s.plans {
        assert!(["failover", "switchover", "failback"].contains(&kind.as_str()));
        assert!(steps.len() <= MAX_PLAN_STEPS);
        for step in steps {
            if let StepKind::Webhook(url) = &step.kind {
                assert!(
                    url.len() <= MAX_URL_LEN && url.starts_with("http://"),
                    "{url:?}"
                );
            }
        }
    }
}

/// Panics unless an accepted definition round-trips (protobuf and bincode) and a fresh
/// state machine takes it.
fn assert_spec_usable(s: &ServiceSpec) {
    assert_spec_within_limits(s);
    assert_eq!(spec_from_proto(&spec_to_proto(s)).as_ref(), Ok(s));
    let bytes = bincode::serialize(s).expect("an accepted spec encodes");
    assert_eq!(
        &bincode::deserialize::<ServiceSpec>(&bytes).expect("decodes"),
        s
    );
    let mut st = State::default();
    let req = Request {
        at_ms: 1,
        actor: "fuzz".into(),
        command: Command::PutService {
            spec: s.clone(),
            reason: "fuzz".into(),
        },
    };
    let a = st.apply(1, &req);
    assert!(matches!(a.response, Response::Applied { .. }), "{a:?}");
}

// ---------------------------------------------------------------------------------------------
// config: node.toml and service files
// ---------------------------------------------------------------------------------------------

/// Parses `data` as a node config and as a service file; validates what parses.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<NodeConfig>(text) {
        let first = cfg.validate().map_err(|e| e.to_string());
        assert_eq!(first, cfg.validate().map_err(|e| e.to_string()));
        if first.is_ok() {
            for s in &cfg.services {
                let spec = s.to_spec().expect("validate checked every service");
                assert_spec_within_limits(&spec);
                assert!(check_ttl(&spec, &cfg.timing).is_ok());
            }
        }
    }
    if let Ok(file) = toml::from_str::<ServiceFile>(text) {
        for s in &file.services {
            let first = s.to_spec();
            assert_eq!(first, s.to_spec());
            if let Ok(spec) = first {
                assert_spec_usable(&spec);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// spec: service definitions from the wire
// ---------------------------------------------------------------------------------------------

/// Decodes `data` as a protobuf `ServiceSpec`, converts and validates it.
pub fn spec(data: &[u8]) {
    let Ok(p) = proto::ServiceSpec::decode(data) else {
        return;
    };
    spec_message(&p);
}

/// Converts and validates one `ServiceSpec` message.
pub fn spec_message(p: &proto::ServiceSpec) {
    let first = spec_from_proto(p);
    assert_eq!(first, spec_from_proto(p));
    if let Ok(s) = first {
        assert_spec_usable(&s);
        // The TTL check against the node's timing only refuses, never panics.
        let _ = check_ttl(&s, &TimingConfig::default());
    }
}

// ---------------------------------------------------------------------------------------------
// apply: sequences of commands through the state machine
// ---------------------------------------------------------------------------------------------

/// Most commands one input applies.
const MAX_COMMANDS: usize = 64;
const SERVICES: [&str; 3] = ["payments", "orders", "x"];
const REGIONS: [&str; 4] = ["us-east", "eu-west", "ap-south", "nowhere"];

/// Reads bytes, giving zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.u8();
        }
        u64::from_le_bytes(v)
    }

    fn pick<'b, T>(&mut self, from: &'b [T]) -> &'b T {
        &from[self.u8() as usize % from.len()]
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
}

/// Splits `data` into frames: a length byte, then that many bytes.
fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let n = (len as usize).min(rest.len());
        let (frame, tail) = rest.split_at(n);
        data = tail;
        Some(frame)
    })
}

/// A token to expect: usually the service's current one, sometimes another.
fn token(b: &mut Bytes, state: &State, service: &str) -> u64 {
    let current = state.service(service).map_or(0, |r| r.lease.token);
    match b.u8() % 4 {
        0 | 1 => current,
        2 => current.saturating_sub(1),
        _ => b.u64(),
    }
}

fn region(b: &mut Bytes) -> String {
    b.pick(&REGIONS).to_string()
}

/// A definition from the pools: mostly valid, sometimes not.
fn templated_spec(b: &mut Bytes, name: &str) -> ServiceSpec {
    let mask = b.u8();
    let regions: Vec<&str> = REGIONS[..3]
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| *r)
        .collect();
    let mut s = ServiceSpec::new(name, &regions);
    s.lease_ttl_ms = *b.pick(&[5_000, 100, 60_000, 10, MAX_TTL_MS]);
    if mask & 8 != 0 {
        s.allowed_regions = vec![region(b)];
    }
    if mask & 16 != 0 {
        s.initial_primary = Some(region(b));
    }
    s.flap_limit = u32::from(b.u8() % 3);
    s.auto_failover = mask & 32 == 0;
    if mask & 64 != 0 {
        let mut plan = default_plan(RunKind::Switchover);
        plan.insert(
            0,
            StepSpec {
                kind: StepKind::Approval,
                timeout_ms: 0,
                on_failure: OnFailure::Retry(u32::from(b.u8() % 3)),
            },
        );
        s.plans.insert("switchover".into(), plan);
    }
    s
}

/// A command built from the pools, shaped to reach deep states (runs, grants, deletes).
fn templated(b: &mut Bytes, state: &State) -> Command {
    let service = b.pick(&SERVICES).to_string();
    let reason = "fuzz".to_string();
    match b.u8() % 13 {
        0 => Command::PutService {
            spec: templated_spec(b, &service),
            reason,
        },
        1 => Command::DeleteService {
            name: service,
            reason,
        },
        2 => Command::Revoke {
            token: token(b, state, &service),
            service,
            reason,
        },
        3 => Command::Grant {
            region: region(b),
            expected_token: token(b, state, &service),
            service,
            reason,
        },
        4 => Command::Expire {
            token: token(b, state, &service),
            service,
            reason,
        },
        5 => Command::SetMode {
            service,
            mode: if b.bool() {
                LeaseMode::ReadOnly
            } else {
                LeaseMode::ReadWrite
            },
            reason,
        },
        6 => Command::SetFrozen {
            service,
            frozen: b.bool(),
            reason,
        },
        7 => Command::Observe {
            service,
            region: region(b),
            vantage_node: u64::from(b.u8() % 4),
            vantage_region: region(b),
            healthy: b.bool(),
            reason,
        },
        8 => {
            let kind = *b.pick(&[RunKind::Failover, RunKind::Switchover, RunKind::Failback]);
            let trigger = b
                .pick(&[
                    Trigger::Operator,
                    Trigger::LeaseExpired,
                    Trigger::Failback,
                    Trigger::HealthDown("down".into()),
                ])
                .clone();
            let plan = match (b.u8() % 4, state.service(&service)) {
                (0, _) => Vec::new(),
                (1, Some(rec)) => crate::state::plan_for(&rec.spec, kind),
                _ => default_plan(kind),
            };
            let expected = match b.u8() % 3 {
                0 => None,
                _ => Some(token(b, state, &service)),
            };
            Command::StartRun {
                to: region(b),
                kind,
                trigger,
                plan,
                reason,
                detected_ms: b.u64() as i64,
                expected_token: expected,
                service,
            }
        }
        9 => {
            let active = state.service(&service).and_then(|r| r.active_run);
            let run = match (b.u8() % 4, active) {
                (0, _) | (_, None) => state.runs().next_back().map_or(0, |r| r.id),
                (_, Some(id)) => id,
            };
            let current = state.run(run).map_or(0, |r| r.current);
            let step = match b.u8() % 4 {
                0 => current + 1,
                _ => current,
            };
            let outcome = b
                .pick(&[StepOutcome::Started, StepOutcome::Done, StepOutcome::Failed])
                .clone();
            let effect = match b.u8() % 4 {
                0 => None,
                1 => Some(Effect::Revoke {
                    token: token(b, state, &service),
                }),
                2 => Some(Effect::Grant {
                    expected_token: token(b, state, &service),
                }),
                _ => Some(Effect::GrantBack {
                    expected_token: token(b, state, &service),
                }),
            };
            let phase = b
                .pick(&[
                    None,
                    Some(PhaseMark::Fenced),
                    Some(PhaseMark::Granted),
                    Some(PhaseMark::Verified),
                ])
                .to_owned();
            Command::AdvanceRun {
                service,
                run,
                step,
                outcome,
                effect,
                phase,
                reason,
            }
        }
        10 => Command::DecideRun {
            run: state.runs().next_back().map_or(0, |r| r.id),
            approve: b.bool(),
            service,
            reason,
        },
        11 => Command::AckFlap { service, reason },
        _ => Command::DeleteService {
            name: b.pick(&SERVICES).to_string(),
            reason: String::new(),
        },
    }
}

/// The leader's clock: mostly moving forward, sometimes anywhere (a replica must survive
/// whatever time an entry carries).
fn at_ms(b: &mut Bytes, last: i64) -> i64 {
    match b.u8() % 8 {
        0 => b.u64() as i64,
        1 => i64::MIN,
        2 => i64::MAX,
        n => last.saturating_add(i64::from(n) * 1000),
    }
}

/// Applies the commands in `data` to a state holding one service, checking every
/// invariant after each, determinism, and that a snapshot restores the same state.
///
/// Each frame is one command: an even first byte decodes the rest as a bincode
/// [`Request`] (what a peer's AppendEntries carries), an odd one builds a command from
/// the rest (so inputs reach runs, grants and deletions).
pub fn apply(data: &[u8]) {
    let mut state = State::new(8);
    let seed = Request {
        at_ms: 1_700_000_000_000,
        actor: "fuzz".into(),
        command: Command::PutService {
            spec: ServiceSpec::new("payments", &REGIONS[..3]),
            reason: "seed".into(),
        },
    };
    state.apply(1, &seed);
    let (mut index, mut last_ms) = (1u64, seed.at_ms);
    for frame in frames(data).take(MAX_COMMANDS) {
        let Some((&tag, body)) = frame.split_first() else {
            continue;
        };
        let req = if tag & 1 == 0 {
            match bincode::deserialize::<Request>(body) {
                Ok(r) => r,
                Err(_) => continue,
            }
        } else {
            let mut b = Bytes(body);
            last_ms = at_ms(&mut b, last_ms);
            Request {
                at_ms: last_ms,
                actor: "fuzz".into(),
                command: templated(&mut b, &state),
            }
        };
        // Raft indexes only grow; gaps are membership and blank entries.
        index += 1 + u64::from(tag >> 6);
        let before = state.clone();
        let applied = state.apply(index, &req);
        if let Err(e) = check_step(&before, index, &req, &applied, &state) {
            panic!("{e}\nat index {index} after {req:?}\nanswered {applied:?}");
        }
        let mut again = before;
        assert_eq!(
            again.apply(index, &req),
            applied,
            "apply is not deterministic"
        );
        assert_eq!(again, state, "apply is not deterministic");
        assert!(state.service_count() <= MAX_SERVICES);
    }
    let bytes = bincode::serialize(&state).expect("a state encodes");
    let restored: State = bincode::deserialize(&bytes).expect("a snapshot decodes");
    assert_eq!(restored, state, "the snapshot restores another state");
}

// ---------------------------------------------------------------------------------------------
// requests: the validation of every RPC
// ---------------------------------------------------------------------------------------------

/// Number of request messages [`requests`] chooses from.
pub const REQUEST_KINDS: u8 = 23;

/// Decodes `data[1..]` as the request message `data[0]` picks (of `coordinator.proto` and
/// `admin.proto`) and runs the validation its handler runs. Validation is deterministic,
/// survives a round trip through the wire, refuses only with INVALID_ARGUMENT and a
/// message, and what it accepts is within the limits.
pub fn requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let name_ok = |n: &str| assert!(check_name("name", n).is_ok(), "{n:?} accepted");
    let reason_ok = |r: &str| assert!(r.len() <= MAX_REASON_LEN);
    let timing = TimingConfig::default();
    match which % REQUEST_KINDS {
        0 => check(
            body,
            validate::get_primary,
            |r: &proto::GetPrimaryRequest, _| name_ok(&r.service),
        ),
        1 => check(
            body,
            validate::list_services,
            |_: &proto::ListServicesRequest, _| {},
        ),
        2 => check(body, validate::watch, |r: &proto::WatchRequest, _| {
            assert!(r.services.len() <= crate::api::watch::MAX_WATCHED);
            r.services.iter().for_each(|s| name_ok(s));
        }),
        3 => check(
            body,
            validate::keep_alive,
            |r: &proto::KeepAliveRequest, _| {
                name_ok(&r.service);
                name_ok(&r.region);
                assert!((1..=crate::api::keepalive::MAX_AGENT_ID).contains(&r.agent_id.len()));
            },
        ),
        4 => check(
            body,
            validate::validate_token,
            |r: &proto::ValidateTokenRequest, _| name_ok(&r.service),
        ),
        5 => check(body, validate::failover, |r: &proto::FailoverRequest, _| {
            name_ok(&r.service);
            name_ok(&r.to_region);
            reason_ok(&r.reason);
            assert!(r.dry_run || !r.reason.trim().is_empty());
        }),
        6 => check(body, validate::failback, |r: &proto::FailbackRequest, _| {
            name_ok(&r.service);
            reason_ok(&r.reason);
            assert!(r.dry_run || !r.reason.trim().is_empty());
        }),
        7 => check(
            body,
            validate::list_audit,
            |r: &proto::ListAuditRequest, n| {
                assert!((1..=validate::MAX_AUDIT_PAGE).contains(n));
                if !r.service.is_empty() {
                    name_ok(&r.service);
                }
            },
        ),
        8 => check(body, validate::set_mode, |r: &proto::SetModeRequest, m| {
            name_ok(&r.service);
            reason_ok(&r.reason);
            let wire = match m {
                LeaseMode::ReadWrite => proto::LeaseMode::ReadWrite,
                LeaseMode::ReadOnly => proto::LeaseMode::ReadOnly,
            };
            assert_eq!(r.mode, wire as i32);
        }),
        9 => check(body, validate::freeze, |r: &proto::FreezeRequest, _| {
            name_ok(&r.service);
            reason_ok(&r.reason);
        }),
        10 => check(body, validate::ack, |r: &proto::AckRequest, _| {
            name_ok(&r.service);
            reason_ok(&r.reason);
        }),
        11 => check(body, validate::approve, |r: &proto::ApproveRequest, _| {
            reason_ok(&r.reason);
            assert!(!r.reason.trim().is_empty());
        }),
        12 => check(
            body,
            validate::list_workflows,
            |r: &proto::ListWorkflowsRequest, n| {
                assert!((1..=validate::MAX_WORKFLOWS_PAGE).contains(n));
                if !r.service.is_empty() {
                    name_ok(&r.service);
                }
            },
        ),
        13 => check(body, validate::plan, |r: &proto::PlanRequest, _| {
            name_ok(&r.service)
        }),
        14 => check(body, validate::add_node, |r: &proto::AddNodeRequest, _| {
            assert!(r.id != 0 && r.addr.len() <= MAX_ADDR_LEN);
            name_ok(&r.region);
        }),
        15 => check(
            body,
            |r: &proto::PutServiceRequest| validate::put_service(r, &timing),
            |r, spec| {
                assert_spec_usable(spec);
                assert!(check_ttl(spec, &timing).is_ok());
                reason_ok(&r.reason);
            },
        ),
        16 => check(
            body,
            validate::delete_service,
            |r: &proto::DeleteServiceRequest, _| {
                name_ok(&r.name);
                reason_ok(&r.reason);
            },
        ),
        17 => check(
            body,
            validate::get_service,
            |r: &proto::GetServiceRequest, _| name_ok(&r.name),
        ),
        // Requests with nothing to check: decoding alone must not panic.
        18 => decode_only::<proto::GetWorkflowRequest>(body),
        19 => decode_only::<proto::ClusterStatusRequest>(body),
        20 => decode_only::<proto::RemoveNodeRequest>(body),
        21 => decode_only::<proto::TransferLeadershipRequest>(body),
        _ => decode_only::<proto::TriggerSnapshotRequest>(body),
    }
}

fn decode_only<M: Message + Default>(body: &[u8]) {
    if let Ok(m) = M::decode(body) {
        let _ = M::decode(m.encode_to_vec().as_slice()).expect("a decoded message re-decodes");
    }
}

/// What a refusal says, for comparing two answers.
fn said<T: Clone>(r: &Result<T, Status>) -> Result<T, (Code, String)> {
    match r {
        Ok(t) => Ok(t.clone()),
        Err(s) => Err((s.code(), s.message().to_string())),
    }
}

/// Runs `validate` on the message in `body` twice and once more after a round trip
/// through the wire; checks refusals and what was accepted (`accepted`).
fn check<M, T>(body: &[u8], validate: impl Fn(&M) -> Result<T, Status>, accepted: impl Fn(&M, &T))
where
    M: Message + Default,
    T: Clone + PartialEq + std::fmt::Debug,
{
    let Ok(m) = M::decode(body) else {
        return;
    };
    let first = validate(&m);
    assert_eq!(said(&first), said(&validate(&m)), "not deterministic");
    let wire = M::decode(m.encode_to_vec().as_slice()).expect("a decoded message re-decodes");
    assert_eq!(
        said(&first),
        said(&validate(&wire)),
        "changed by a round trip"
    );
    match &first {
        Ok(t) => accepted(&m, t),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(!s.message().is_empty());
        }
    }
}
