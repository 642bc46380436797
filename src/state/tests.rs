//! Unit and property tests of the pure replicated model.
//!
//! The unit tests pin one behaviour each; the property tests drive random command
//! sequences through [`State::apply`] and check the invariants of docs/ARCHITECTURE.md ("Tokens",
//! "No split brain", audit chain, determinism, watch history).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseResult;

use super::audit::{self, GENESIS};
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const AT_MS: i64 = 1_700_000_000_000;

/// A request from operator `alice` at a fixed time.
fn req(command: Command) -> Request {
    Request {
        at_ms: AT_MS,
        actor: "alice".to_string(),
        command,
    }
}

fn put(spec: &ServiceSpec) -> Request {
    req(Command::PutService {
        spec: spec.clone(),
        reason: "define".to_string(),
    })
}

fn delete(name: &str) -> Request {
    req(Command::DeleteService {
        name: name.to_string(),
        reason: "retire".to_string(),
    })
}

fn revoke(service: &str, token: u64) -> Request {
    req(Command::Revoke {
        service: service.to_string(),
        token,
        reason: "fence".to_string(),
    })
}

fn grant(service: &str, region: &str, expected_token: u64) -> Request {
    req(Command::Grant {
        service: service.to_string(),
        region: region.to_string(),
        expected_token,
        reason: "failover".to_string(),
    })
}

fn expire(service: &str, token: u64) -> Request {
    req(Command::Expire {
        service: service.to_string(),
        token,
        reason: "no renewal for 5s".to_string(),
    })
}

fn set_mode(service: &str, mode: LeaseMode) -> Request {
    req(Command::SetMode {
        service: service.to_string(),
        mode,
        reason: "degrade".to_string(),
    })
}

fn set_frozen(service: &str, frozen: bool) -> Request {
    req(Command::SetFrozen {
        service: service.to_string(),
        frozen,
        reason: "maintenance".to_string(),
    })
}

/// `payments` on us-east (preferred), eu-west, ap-south.
fn payments() -> ServiceSpec {
    ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"])
}

/// A state where `payments` was created at index 1 (held by us-east, token 1).
fn with_payments() -> State {
    let mut s = State::default();
    let a = s.apply(1, &put(&payments()));
    assert!(matches!(a.response, Response::Applied { .. }), "{a:?}");
    s
}

fn lease<'a>(s: &'a State, service: &str) -> &'a Lease {
    &s.service(service).expect("service exists").lease
}

fn rejection(a: &Applied) -> &Rejection {
    match &a.response {
        Response::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// Everything but the audit head: what a refused command must leave alone.
fn without_audit(s: &State) -> (Vec<ServiceRecord>, u64, History) {
    (
        s.services().cloned().collect(),
        s.revision(),
        s.history().clone(),
    )
}

/// Applies `r` at `index`, asserts it was refused, and that only the audit trail moved.
fn assert_refused_changing_nothing(s: &mut State, index: u64, r: &Request) -> Rejection {
    let before = without_audit(s);
    let head = s.audit_head().clone();
    let a = s.apply(index, r);
    let rej = rejection(&a).clone();
    assert!(a.events.is_empty(), "a refusal emits no event: {a:?}");
    assert_eq!(without_audit(s), before, "a refusal changes nothing");
    assert_eq!(s.audit_head().next_seq, head.next_seq + 1);
    assert_eq!(a.audit.prev_hash, head.last_hash);
    assert!(
        a.audit.outcome.starts_with("rejected: "),
        "{}",
        a.audit.outcome
    );
    assert_eq!(a.audit.before, a.audit.after);
    rej
}

// ---------------------------------------------------------------------------------------------
// Unit tests: one behaviour each
// ---------------------------------------------------------------------------------------------

#[test]
fn creating_a_service_grants_its_first_allowed_region_with_token_equal_to_index() {
    let mut spec = payments();
    spec.allowed_regions = vec!["eu-west".into(), "ap-south".into()];
    let mut s = State::default();
    let a = s.apply(7, &put(&spec));

    let l = lease(&s, "payments");
    assert_eq!(
        l.holder.as_deref(),
        Some("eu-west"),
        "us-east is not allowed"
    );
    assert_eq!(l.primary(), Some("eu-west"));
    assert_eq!(l.state, LeaseState::Held);
    assert_eq!(l.token, 7);
    assert_eq!(l.revision, 7);
    assert_eq!(l.granted_at_ms, AT_MS);
    assert_eq!(l.ttl_ms, spec.lease_ttl_ms);
    assert_eq!(l.mode, LeaseMode::ReadWrite);
    let rec = s.service("payments").unwrap();
    assert_eq!(rec.tokens, vec![7]);
    assert!(!rec.frozen);
    assert_eq!(rec.spec, spec);
    assert_eq!(s.revision(), 7);
    assert_eq!(
        a.response,
        Response::Applied {
            revision: 7,
            lease: Some(l.clone())
        }
    );
    assert_eq!(
        kinds(&a.events),
        vec![EventKind::ServicePut, EventKind::Granted]
    );
    assert!(a.events.iter().all(|e| e.revision == 7 && e.lease == *l));
    assert_eq!(a.audit.action, "put-service");
    assert_eq!(a.audit.outcome, "ok");
    assert_eq!(a.audit.before, "null");
}

#[test]
fn creating_a_service_honours_its_initial_primary() {
    let mut spec = payments();
    spec.initial_primary = Some("ap-south".into());
    let mut s = State::default();
    s.apply(3, &put(&spec));
    assert_eq!(lease(&s, "payments").holder.as_deref(), Some("ap-south"));
    assert_eq!(lease(&s, "payments").token, 3);
}

#[test]
fn an_invalid_spec_is_refused_as_invalid() {
    let mut s = State::default();
    let mut spec = payments();
    spec.lease_ttl_ms = 10;
    let rej = assert_refused_changing_nothing(&mut s, 1, &put(&spec));
    assert!(
        matches!(rej, Rejection::Invalid(ref m) if m.contains("TTL")),
        "{rej:?}"
    );
    assert_eq!(s.service_count(), 0);
}

#[test]
fn a_grant_from_held_to_another_region_is_refused_revoke_first() {
    let mut s = with_payments();
    let rej = assert_refused_changing_nothing(&mut s, 2, &grant("payments", "eu-west", 1));
    assert!(
        matches!(rej, Rejection::WrongState(ref m) if m.contains("revoke")),
        "{rej:?}"
    );
    // Not even to the holder itself: a fresh token needs a revocation too.
    let rej = assert_refused_changing_nothing(&mut s, 3, &grant("payments", "us-east", 1));
    assert!(matches!(rej, Rejection::WrongState(_)), "{rej:?}");
    assert_eq!(lease(&s, "payments").holder.as_deref(), Some("us-east"));
}

#[test]
fn revoke_then_grant_raises_the_token_to_the_grant_index() {
    let mut s = with_payments();

    let a = s.apply(5, &revoke("payments", 1));
    assert_eq!(kinds(&a.events), vec![EventKind::Revoking]);
    let l = lease(&s, "payments");
    assert_eq!(l.state, LeaseState::Revoking);
    assert_eq!(
        l.holder.as_deref(),
        Some("us-east"),
        "still the last holder"
    );
    assert_eq!(
        l.primary(),
        None,
        "nobody may act as primary while revoking"
    );
    assert_eq!(l.token, 1, "revoking does not issue a token");

    let a = s.apply(9, &grant("payments", "eu-west", 1));
    assert_eq!(kinds(&a.events), vec![EventKind::Granted]);
    let l = lease(&s, "payments");
    assert_eq!(l.state, LeaseState::Held);
    assert_eq!(l.holder.as_deref(), Some("eu-west"));
    assert_eq!(l.token, 9);
    assert_eq!(l.revision, 9);
    assert_eq!(s.service("payments").unwrap().tokens, vec![1, 9]);
    assert_eq!(a.events[0].lease.token, 9);
}

#[test]
fn a_grant_from_vacant_raises_the_token_to_the_grant_index() {
    let mut s = with_payments();
    s.apply(2, &expire("payments", 1));
    assert_eq!(lease(&s, "payments").state, LeaseState::Vacant);
    s.apply(4, &grant("payments", "ap-south", 1));
    let l = lease(&s, "payments");
    assert_eq!(
        (l.holder.as_deref(), l.token, l.state),
        (Some("ap-south"), 4, LeaseState::Held)
    );
}

#[test]
fn expire_with_a_stale_token_is_refused() {
    let mut s = with_payments();
    s.apply(2, &revoke("payments", 1));
    s.apply(3, &grant("payments", "eu-west", 1));
    let rej = assert_refused_changing_nothing(&mut s, 4, &expire("payments", 1));
    assert_eq!(
        rej,
        Rejection::TokenMismatch {
            service: "payments".into(),
            expected: 1,
            actual: 3
        }
    );
    assert_eq!(lease(&s, "payments").primary(), Some("eu-west"));

    // The current token does expire it.
    let a = s.apply(5, &expire("payments", 3));
    assert_eq!(kinds(&a.events), vec![EventKind::Vacated]);
    let l = lease(&s, "payments");
    assert_eq!((l.state, l.holder.as_deref()), (LeaseState::Vacant, None));
    assert_eq!(l.token, 3, "the last token is kept for compare-and-set");
}

#[test]
fn an_expected_token_mismatch_is_refused_and_changes_nothing_but_the_audit_trail() {
    let mut s = with_payments();
    s.apply(2, &revoke("payments", 1));

    for (index, r) in [
        (3, grant("payments", "eu-west", 2)),
        (4, revoke("payments", 0)),
        (5, expire("payments", 7)),
    ] {
        let rej = assert_refused_changing_nothing(&mut s, index, &r);
        assert!(
            matches!(rej, Rejection::TokenMismatch { ref service, actual: 1, .. } if service == "payments"),
            "{rej:?}"
        );
    }
    assert_eq!(s.audit_head().next_seq, 5);
}

#[test]
fn an_unknown_service_is_refused_as_unknown_service() {
    let mut s = with_payments();
    let unknown = Rejection::UnknownService("orders".into());
    for (index, r) in [
        (2, delete("orders")),
        (3, revoke("orders", 1)),
        (4, grant("orders", "us-east", 1)),
        (5, expire("orders", 1)),
        (6, set_mode("orders", LeaseMode::ReadOnly)),
        (7, set_frozen("orders", true)),
    ] {
        assert_eq!(
            assert_refused_changing_nothing(&mut s, index, &r),
            unknown,
            "{r:?}"
        );
    }
}

#[test]
fn an_unknown_region_is_refused_as_unknown_region() {
    let mut s = with_payments();
    s.apply(2, &revoke("payments", 1));
    let rej = assert_refused_changing_nothing(&mut s, 3, &grant("payments", "mars", 1));
    assert_eq!(
        rej,
        Rejection::UnknownRegion {
            service: "payments".into(),
            region: "mars".into(),
            candidates: "us-east, eu-west, ap-south".into(),
        }
    );
}

#[test]
fn a_candidate_region_that_is_not_allowed_is_refused_as_not_allowed() {
    let mut spec = payments();
    spec.allowed_regions = vec!["us-east".into(), "eu-west".into()];
    let mut s = State::default();
    s.apply(1, &put(&spec));
    s.apply(2, &revoke("payments", 1));
    let rej = assert_refused_changing_nothing(&mut s, 3, &grant("payments", "ap-south", 1));
    assert_eq!(
        rej,
        Rejection::NotAllowed {
            service: "payments".into(),
            region: "ap-south".into(),
            allowed: "us-east, eu-west".into(),
        }
    );
}

#[test]
fn put_service_that_would_disallow_the_current_holder_is_refused() {
    let mut s = with_payments();

    let mut not_allowed = payments();
    not_allowed.allowed_regions = vec!["eu-west".into()];
    let rej = assert_refused_changing_nothing(&mut s, 2, &put(&not_allowed));
    assert!(
        matches!(rej, Rejection::WrongState(ref m) if m.contains("us-east")),
        "{rej:?}"
    );

    let dropped = ServiceSpec::new("payments", &["eu-west", "ap-south"]);
    let rej = assert_refused_changing_nothing(&mut s, 3, &put(&dropped));
    assert!(matches!(rej, Rejection::WrongState(_)), "{rej:?}");

    // While revoking, us-east may still act until it demotes: still refused.
    s.apply(4, &revoke("payments", 1));
    let rej = assert_refused_changing_nothing(&mut s, 5, &put(&not_allowed));
    assert!(matches!(rej, Rejection::WrongState(_)), "{rej:?}");

    // Once the lease is vacant, the definition may change.
    s.apply(6, &expire("payments", 1));
    let a = s.apply(7, &put(&not_allowed));
    assert_eq!(kinds(&a.events), vec![EventKind::ServicePut]);
    assert_eq!(s.service("payments").unwrap().spec, not_allowed);
}

#[test]
fn put_service_changing_the_definition_emits_service_put_and_keeps_the_lease() {
    let mut s = with_payments();
    let mut spec = payments();
    spec.lease_ttl_ms = 9_000;
    let a = s.apply(2, &put(&spec));
    assert_eq!(kinds(&a.events), vec![EventKind::ServicePut]);
    let l = lease(&s, "payments");
    assert_eq!(l.ttl_ms, 9_000);
    assert_eq!((l.holder.as_deref(), l.token), (Some("us-east"), 1));
    assert_eq!(l.revision, 2);
    assert_eq!(s.service("payments").unwrap().tokens, vec![1]);
}

#[test]
fn a_shorter_ttl_waits_for_the_next_grant_and_a_longer_one_applies_at_once() {
    let mut s = with_payments();
    let initial = lease(&s, "payments").ttl_ms;
    let mut spec = payments();
    spec.lease_ttl_ms = initial / 2;
    s.apply(2, &put(&spec));
    // Held: the holder's renewals were answered under the longer TTL.
    assert_eq!(lease(&s, "payments").ttl_ms, initial);
    assert_eq!(
        s.service("payments").unwrap().spec.lease_ttl_ms,
        initial / 2
    );
    s.apply(3, &revoke("payments", 1));
    assert_eq!(lease(&s, "payments").ttl_ms, initial);
    s.apply(4, &grant("payments", "eu-west", 1));
    assert_eq!(lease(&s, "payments").ttl_ms, initial / 2);
    spec.lease_ttl_ms = initial * 3;
    s.apply(5, &put(&spec));
    assert_eq!(lease(&s, "payments").ttl_ms, initial * 3);
}

#[test]
fn set_mode_emits_mode_changed_and_only_on_a_change() {
    let mut s = with_payments();
    let a = s.apply(2, &set_mode("payments", LeaseMode::ReadOnly));
    assert_eq!(kinds(&a.events), vec![EventKind::ModeChanged]);
    assert_eq!(a.events[0].lease.mode, LeaseMode::ReadOnly);
    let l = lease(&s, "payments");
    assert_eq!((l.mode, l.revision, l.token), (LeaseMode::ReadOnly, 2, 1));
    assert_eq!(s.revision(), 2);

    let a = s.apply(3, &set_mode("payments", LeaseMode::ReadOnly));
    assert!(a.events.is_empty());
    assert_eq!(s.revision(), 2);

    let a = s.apply(4, &set_mode("payments", LeaseMode::ReadWrite));
    assert_eq!(kinds(&a.events), vec![EventKind::ModeChanged]);
    assert_eq!(lease(&s, "payments").mode, LeaseMode::ReadWrite);
}

#[test]
fn delete_removes_the_service_and_emits_a_vacant_service_deleted_event() {
    let mut s = with_payments();
    s.apply(2, &expire("payments", 1));
    let a = s.apply(3, &delete("payments"));
    assert_eq!(kinds(&a.events), vec![EventKind::ServiceDeleted]);
    let e = &a.events[0];
    assert_eq!((e.revision, e.lease.state), (3, LeaseState::Vacant));
    assert_eq!(e.lease.holder, None);
    assert_eq!(
        a.response,
        Response::Applied {
            revision: 3,
            lease: None
        }
    );
    assert_eq!(a.audit.after, "null");
    assert!(s.service("payments").is_none());
    assert_eq!(s.service_count(), 0);
    assert_eq!(s.revision(), 3);
    // The tombstone keeps the old tokens: SUPERSEDED, not UNKNOWN.
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Superseded)
    );
    assert_eq!(
        s.validate_token("payments", 2),
        Some(TokenValidity::Unknown)
    );
    assert_eq!(s.validate_token("never-was", 1), None);

    // Recreating it issues a fresh token, above every token of the old incarnation.
    s.apply(5, &put(&payments()));
    assert_eq!(lease(&s, "payments").token, 5);
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Superseded)
    );
    assert_eq!(
        s.validate_token("payments", 5),
        Some(TokenValidity::Current)
    );
}

// Deleting a held service, then creating it again, would grant the lease to a new region while
// the old holder may still consider its lease valid (invariant 1). So deleting a held service
// is one command that revokes first; the service goes when the holder is fenced (Expire), and
// nothing can grant or redefine it in between.
#[test]
fn deleting_a_held_service_revokes_then_removes_it_once_fenced() {
    let mut s = with_payments();
    let a = s.apply(2, &delete("payments"));
    assert_eq!(kinds(&a.events), vec![EventKind::Revoking]);
    assert!(matches!(a.response, Response::Applied { .. }), "{a:?}");
    assert_eq!(lease(&s, "payments").state, LeaseState::Revoking);
    assert_eq!(s.deleting("payments"), Some("retire"));

    // Nothing hands the lease out or redefines the service meanwhile.
    for (i, r) in [(3, grant("payments", "eu-west", 1)), (4, put(&payments()))] {
        let rej = assert_refused_changing_nothing(&mut s, i, &r);
        assert!(rej.to_string().contains("being deleted"), "{rej}");
    }
    // Deleting again is harmless.
    let a = s.apply(5, &delete("payments"));
    assert!(a.events.is_empty(), "{a:?}");

    // The holder is fenced: the same entry removes the service.
    let a = s.apply(6, &expire("payments", 1));
    assert_eq!(
        kinds(&a.events),
        vec![EventKind::Vacated, EventKind::ServiceDeleted]
    );
    assert!(s.service("payments").is_none());
    assert_eq!(s.deleting("payments"), None);
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Superseded)
    );
    // And it may be created again, with a fresh token.
    s.apply(7, &put(&payments()));
    assert_eq!(lease(&s, "payments").token, 7);
}

#[test]
fn validate_token_answers_current_superseded_or_unknown() {
    let mut s = with_payments();
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Current)
    );
    assert_eq!(
        s.validate_token("payments", 0),
        Some(TokenValidity::Unknown)
    );
    assert_eq!(
        s.validate_token("payments", 2),
        Some(TokenValidity::Unknown)
    );
    assert_eq!(s.validate_token("orders", 1), None);

    // Revoked but not yet granted elsewhere: no longer valid.
    s.apply(2, &revoke("payments", 1));
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Superseded)
    );

    s.apply(4, &grant("payments", "eu-west", 1));
    assert_eq!(
        s.validate_token("payments", 1),
        Some(TokenValidity::Superseded)
    );
    assert_eq!(
        s.validate_token("payments", 4),
        Some(TokenValidity::Current)
    );
    // Indices that never granted anything were never issued.
    for never in [2, 3, 5, u64::MAX] {
        assert_eq!(
            s.validate_token("payments", never),
            Some(TokenValidity::Unknown),
            "{never}"
        );
    }

    s.apply(6, &expire("payments", 4));
    assert_eq!(
        s.validate_token("payments", 4),
        Some(TokenValidity::Superseded)
    );
}

#[test]
fn revision_moves_only_on_changes() {
    let mut s = with_payments();
    assert_eq!(s.revision(), 1);

    // No-ops and refusals: answered at their index, but the revision stays.
    let no_ops = [
        (2, put(&payments())),
        (3, set_mode("payments", LeaseMode::ReadWrite)),
        (4, grant("payments", "eu-west", 1)),
        (5, revoke("payments", 99)),
        (6, delete("orders")),
    ];
    for (index, r) in &no_ops {
        let a = s.apply(*index, r);
        assert!(a.events.is_empty(), "{r:?}");
        assert_eq!(s.revision(), 1, "{r:?}");
        assert_eq!(lease(&s, "payments").revision, 1, "{r:?}");
    }
    assert_eq!(s.history().len(), 1);

    s.apply(7, &revoke("payments", 1));
    assert_eq!(s.revision(), 7);
    // Revoking twice and expiring twice are no-ops.
    let a = s.apply(8, &revoke("payments", 1));
    assert_eq!(
        a.response,
        Response::Applied {
            revision: 8,
            lease: Some(lease(&s, "payments").clone())
        }
    );
    assert!(a.events.is_empty());
    assert_eq!(s.revision(), 7);
    s.apply(9, &expire("payments", 1));
    assert_eq!(s.revision(), 9);
    let a = s.apply(10, &expire("payments", 1));
    assert!(a.events.is_empty());
    assert_eq!(s.revision(), 9);
    assert_eq!(lease(&s, "payments").revision, 9);
}

#[test]
fn set_frozen_to_the_same_value_is_a_no_op() {
    let mut s = with_payments();
    let a = s.apply(2, &set_frozen("payments", false));
    assert!(a.events.is_empty());
    assert_eq!(s.revision(), 1);
    assert!(!s.service("payments").unwrap().frozen);
}

// Freezing changes the replicated record: it moves the revision and reaches watchers.
#[test]
fn set_frozen_is_a_change_that_moves_the_revision_and_reaches_watchers() {
    let mut s = with_payments();
    let a = s.apply(2, &set_frozen("payments", true));
    assert!(s.service("payments").unwrap().frozen);
    assert!(
        !a.events.is_empty(),
        "freezing changed the service: watchers must hear of it"
    );
    assert_eq!(s.revision(), 2, "freezing changed the service");
    assert_eq!(s.history().since(2).unwrap().len(), 1);
}

#[test]
fn history_since_returns_every_revision_from_n() {
    let mut s = with_payments(); // revision 1
    s.apply(3, &revoke("payments", 1));
    s.apply(4, &revoke("payments", 1)); // already revoking: no change
    s.apply(6, &grant("payments", "eu-west", 1));
    s.apply(8, &set_mode("payments", LeaseMode::ReadOnly));

    let revs = |from| -> Vec<u64> {
        s.history()
            .since(from)
            .unwrap()
            .iter()
            .map(|(r, _)| *r)
            .collect()
    };
    assert_eq!(revs(1), vec![1, 3, 6, 8]);
    assert_eq!(
        revs(2),
        vec![3, 6, 8],
        "a revision with no change resumes at the next"
    );
    assert_eq!(revs(3), vec![3, 6, 8]);
    assert_eq!(revs(7), vec![8]);
    assert_eq!(revs(8), vec![8]);
    assert_eq!(revs(9), Vec::<u64>::new());
    assert_eq!(revs(1_000), Vec::<u64>::new());

    let all = s.history().since(1).unwrap();
    assert_eq!(
        kinds(&all[1].1),
        vec![EventKind::Revoking],
        "events carry their kind"
    );
    assert!(all
        .iter()
        .all(|(r, es)| es.iter().all(|e| e.revision == *r)));
}

#[test]
fn history_reports_compacted_once_the_revision_fell_out_of_a_small_history() {
    let mut s = State::new(3);
    s.apply(1, &put(&payments()));
    s.apply(2, &set_mode("payments", LeaseMode::ReadOnly));
    s.apply(3, &set_mode("payments", LeaseMode::ReadWrite));
    assert_eq!(s.history().oldest_available(), 1, "nothing dropped yet");
    assert_eq!(s.history().since(1).unwrap().len(), 3);

    s.apply(5, &revoke("payments", 1));
    s.apply(7, &grant("payments", "eu-west", 1));
    assert_eq!(s.history().len(), 3);
    assert_eq!(s.history().oldest_available(), 3);

    for from in [0, 1, 2] {
        assert_eq!(
            s.history().since(from),
            Err(Compacted {
                requested: from,
                oldest: 3
            })
        );
    }
    let revs: Vec<u64> = s
        .history()
        .since(3)
        .unwrap()
        .iter()
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(revs, vec![3, 5, 7]);
    assert_eq!(s.history().since(4).unwrap().len(), 2);
}

// With nothing compacted, `since(0)` is everything kept: an error only when a revision was
// really dropped (invariant 4).
#[test]
fn history_since_zero_without_compaction_returns_everything() {
    let mut s = with_payments();
    s.apply(2, &revoke("payments", 1));
    assert_eq!(s.history().oldest_available(), 1);
    let from_zero = s.history().since(0);
    assert_eq!(from_zero, s.history().since(1));
    assert_eq!(from_zero.map(|h| h.len()), Ok(2));
}

#[test]
fn the_events_of_one_revision_come_together() {
    let mut s = State::new(2);
    s.apply(4, &put(&payments()));
    let h = s.history().since(1).unwrap();
    assert_eq!(h.len(), 1, "one revision");
    let (rev, events) = &h[0];
    assert_eq!(*rev, 4);
    assert_eq!(
        kinds(events),
        vec![EventKind::ServicePut, EventKind::Granted]
    );

    // Compaction drops whole revisions, never half of one.
    s.apply(5, &set_mode("payments", LeaseMode::ReadOnly));
    s.apply(6, &set_mode("payments", LeaseMode::ReadWrite));
    assert_eq!(
        s.history().since(4),
        Err(Compacted {
            requested: 4,
            oldest: 5
        })
    );
    let h = s.history().since(5).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|(_, es)| es.len() == 1));
}

#[test]
fn every_command_leaves_one_audit_entry_chained_to_the_one_before() {
    let mut s = State::default();
    let requests = [
        put(&payments()),                           // ok
        grant("payments", "eu-west", 1),            // refused
        set_mode("payments", LeaseMode::ReadWrite), // no-op
        revoke("payments", 1),                      // ok
        delete("orders"),                           // refused
        grant("payments", "eu-west", 1),            // ok
        set_frozen("payments", true),               // ok
    ];
    let mut entries = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let index = 1 + 2 * i as u64;
        let a = s.apply(index, r);
        let e = &a.audit;
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.revision, index);
        assert_eq!(e.at_ms, AT_MS);
        assert_eq!(e.actor, "alice");
        assert_eq!(e.action, r.command.action());
        assert_eq!(e.service, r.command.service());
        assert_eq!(e.reason, r.command.reason());
        assert_eq!(e.hash, e.compute_hash());
        entries.push(a.audit);
    }
    assert_eq!(entries[0].prev_hash, GENESIS);
    assert!(entries[1].outcome.starts_with("rejected: "));
    assert_eq!(entries[2].outcome, "ok");
    assert!(entries[3].before.contains("Held") && entries[3].after.contains("Revoking"));
    assert_eq!(audit::verify(&entries, None), Ok(()));
    assert_eq!(audit::verify(&entries[3..], Some(&entries[2].hash)), Ok(()));
    assert_eq!(s.audit_head().next_seq, entries.len() as u64);
    assert_eq!(s.audit_head().last_hash, entries.last().unwrap().hash);
}

#[test]
fn state_round_trips_through_bincode() {
    let mut spec = payments();
    spec.allowed_regions = vec!["us-east".into(), "eu-west".into()];
    spec.initial_primary = Some("eu-west".into());
    spec.failback = FailbackMode::Auto;
    spec.health.insert(
        "us-east".into(),
        HealthCheck {
            kind: "http".into(),
            target: "https://us-east.example/healthz".into(),
            interval_ms: 1_000,
            timeout_ms: 500,
            threshold: 3,
        },
    );
    let mut s = State::new(3);
    s.apply(1, &put(&spec));
    s.apply(2, &put(&ServiceSpec::new("orders", &["eu-west"])));
    s.apply(3, &revoke("payments", 1));
    s.apply(4, &grant("payments", "us-east", 1));
    s.apply(5, &set_mode("payments", LeaseMode::ReadOnly));
    s.apply(6, &set_frozen("orders", true));
    s.apply(7, &expire("orders", 2));
    s.apply(8, &grant("payments", "mars", 4)); // refused, still audited

    let bytes = bincode::serialize(&s).expect("serialize");
    let back: State = bincode::deserialize(&bytes).expect("deserialize");
    assert_eq!(back, s);
    assert_eq!(bincode::serialize(&back).unwrap(), bytes);
    assert_eq!(back.history().since(3), s.history().since(3));

    // The restored state goes on exactly like the original.
    let (mut a, mut b) = (s, back);
    let next = grant("orders", "eu-west", 2);
    assert_eq!(a.apply(9, &next), b.apply(9, &next));
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------------
// Property tests over random command sequences
// ---------------------------------------------------------------------------------------------

const SERVICES: [&str; 2] = ["alpha", "beta"];
/// `r4` is never a candidate region (so grants to it are refused as unknown).
const REGIONS: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// A token as the generator means it; resolved against the state when the step is applied.
#[derive(Debug, Clone)]
enum Tok {
    /// The service's current token.
    Current,
    /// The token before the current one (stale).
    Previous,
    /// Anything.
    Raw(u64),
}

/// A region as the generator means it; resolved against the service's definition.
#[derive(Debug, Clone)]
enum Reg {
    /// One of the service's candidate regions (allowed or not).
    Candidate(Index),
    /// Any region, `r4` included.
    Any(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        svc: usize,
        regions: Vec<usize>,
        /// Bit `i` set: region `i` is allowed (when it is a candidate).
        allowed: u8,
        ttl_ms: u64,
    },
    Delete {
        svc: usize,
    },
    Revoke {
        svc: usize,
        tok: Tok,
    },
    Grant {
        svc: usize,
        region: Reg,
        tok: Tok,
    },
    Expire {
        svc: usize,
        tok: Tok,
    },
    SetMode {
        svc: usize,
        read_only: bool,
    },
    SetFrozen {
        svc: usize,
        frozen: bool,
    },
}

/// One generated step: how far the log index advances, the leader's clock, the command.
#[derive(Debug, Clone)]
struct Step {
    gap: u64,
    at_ms: i64,
    op: Op,
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        4 => Just(Tok::Current),
        1 => Just(Tok::Previous),
        1 => (0u64..60).prop_map(Tok::Raw),
    ]
}

fn reg() -> impl Strategy<Value = Reg> {
    prop_oneof![
        3 => any::<Index>().prop_map(Reg::Candidate),
        1 => (0..REGIONS.len()).prop_map(Reg::Any),
    ]
}

fn put_op(svc: impl Strategy<Value = usize>) -> impl Strategy<Value = Op> {
    let regions = prop::sample::subsequence(vec![0usize, 1, 2], 1..=3).prop_shuffle();
    // 10 ms is below the minimum TTL: an invalid spec.
    let ttl = prop_oneof![6 => Just(5_000u64), 3 => Just(1_000u64), 1 => Just(10u64)];
    (svc, regions, any::<u8>(), ttl).prop_map(|(svc, regions, allowed, ttl_ms)| Op::Put {
        svc,
        regions,
        allowed,
        ttl_ms,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let svc = 0..SERVICES.len();
    prop_oneof![
        4 => put_op(svc.clone()),
        1 => svc.clone().prop_map(|svc| Op::Delete { svc }),
        6 => (svc.clone(), tok()).prop_map(|(svc, tok)| Op::Revoke { svc, tok }),
        10 => (svc.clone(), reg(), tok())
            .prop_map(|(svc, region, tok)| Op::Grant { svc, region, tok }),
        3 => (svc.clone(), tok()).prop_map(|(svc, tok)| Op::Expire { svc, tok }),
        1 => (svc.clone(), any::<bool>()).prop_map(|(svc, read_only)| Op::SetMode { svc, read_only }),
        1 => (svc, any::<bool>()).prop_map(|(svc, frozen)| Op::SetFrozen { svc, frozen }),
    ]
}

/// A command sequence: defines both services, then anything.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step =
        |op| (1u64..4, 0i64..10_000_000, op).prop_map(|(gap, at_ms, op)| Step { gap, at_ms, op });
    let prefix = (step(put_op(Just(0)).boxed()), step(put_op(Just(1)).boxed()));
    let rest = prop::collection::vec(step(op().boxed()), 1..60);
    (prefix, rest).prop_map(|((a, b), rest)| [a, b].into_iter().chain(rest).collect())
}

/// The concrete request for `step`, resolving its tokens against `state`.
fn to_request(state: &State, step: &Step) -> Request {
    let token = |svc: usize, t: &Tok| {
        let rec = state.service(SERVICES[svc]);
        match t {
            Tok::Current => rec.map_or(0, |r| r.lease.token),
            Tok::Previous => rec
                .and_then(|r| r.tokens.iter().rev().nth(1).copied())
                .unwrap_or(0),
            Tok::Raw(n) => *n,
        }
    };
    let command = match &step.op {
        Op::Put {
            svc,
            regions,
            allowed,
            ttl_ms,
        } => {
            let names: Vec<&str> = regions.iter().map(|&r| REGIONS[r]).collect();
            let mut spec = ServiceSpec::new(SERVICES[*svc], &names);
            spec.allowed_regions = regions
                .iter()
                .filter(|&&r| allowed & (1 << r) != 0)
                .map(|&r| REGIONS[r].to_string())
                .collect();
            spec.lease_ttl_ms = *ttl_ms;
            Command::PutService {
                spec,
                reason: "define".into(),
            }
        }
        Op::Delete { svc } => Command::DeleteService {
            name: SERVICES[*svc].into(),
            reason: "retire".into(),
        },
        Op::Revoke { svc, tok } => Command::Revoke {
            service: SERVICES[*svc].into(),
            token: token(*svc, tok),
            reason: "fence".into(),
        },
        Op::Grant { svc, region, tok } => Command::Grant {
            service: SERVICES[*svc].into(),
            region: match region {
                Reg::Candidate(i) => state
                    .service(SERVICES[*svc])
                    .map_or(REGIONS[0], |r| i.get(&r.spec.regions).as_str())
                    .into(),
                Reg::Any(i) => REGIONS[*i].into(),
            },
            expected_token: token(*svc, tok),
            reason: "failover".into(),
        },
        Op::Expire { svc, tok } => Command::Expire {
            service: SERVICES[*svc].into(),
            token: token(*svc, tok),
            reason: "expired".into(),
        },
        Op::SetMode { svc, read_only } => Command::SetMode {
            service: SERVICES[*svc].into(),
            mode: if *read_only {
                LeaseMode::ReadOnly
            } else {
                LeaseMode::ReadWrite
            },
            reason: "mode".into(),
        },
        Op::SetFrozen { svc, frozen } => Command::SetFrozen {
            service: SERVICES[*svc].into(),
            frozen: *frozen,
            reason: "maintenance".into(),
        },
    };
    Request {
        at_ms: step.at_ms,
        actor: "automation".into(),
        command,
    }
}

/// Everything a run produced, step by step.
struct Trace {
    /// (log index, request) of each step.
    requests: Vec<(u64, Request)>,
    /// What each step answered.
    applied: Vec<Applied>,
    /// Every service's lease before the first step and after each step.
    leases: Vec<BTreeMap<String, Lease>>,
    /// Whether each step left everything but the audit trail untouched.
    untouched: Vec<bool>,
    /// Revision before each step.
    revisions_before: Vec<u64>,
    state: State,
}

fn leases_of(s: &State) -> BTreeMap<String, Lease> {
    s.services()
        .map(|r| (r.spec.name.clone(), r.lease.clone()))
        .collect()
}

fn run(steps: &[Step], history_limit: usize) -> Trace {
    let mut state = State::new(history_limit);
    let mut t = Trace {
        requests: Vec::new(),
        applied: Vec::new(),
        leases: vec![leases_of(&state)],
        untouched: Vec::new(),
        revisions_before: Vec::new(),
        state: State::new(history_limit),
    };
    let mut index = 0;
    for step in steps {
        index += step.gap;
        let r = to_request(&state, step);
        let before = without_audit(&state);
        t.revisions_before.push(state.revision());
        let a = state.apply(index, &r);
        t.untouched.push(without_audit(&state) == before);
        t.leases.push(leases_of(&state));
        t.requests.push((index, r));
        t.applied.push(a);
    }
    t.state = state;
    t
}

fn replay(requests: &[(u64, Request)]) -> (State, Vec<Applied>) {
    let mut s = State::default();
    let applied = requests.iter().map(|(i, r)| s.apply(*i, r)).collect();
    (s, applied)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        // Keep failures in the test output, not in files beside the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// (a) Tokens strictly increase per service (and globally), are never reused, and every
/// grant's token is the index (= revision) of its entry.
fn check_tokens(t: &Trace) -> TestCaseResult {
    let mut issued = BTreeSet::new();
    let mut last_per_service: BTreeMap<String, u64> = BTreeMap::new();
    for (step, ((index, _), a)) in t.requests.iter().zip(&t.applied).enumerate() {
        for e in a.events.iter().filter(|e| e.kind == EventKind::Granted) {
            prop_assert_eq!(e.lease.token, e.revision, "step {}", step);
            prop_assert_eq!(e.revision, *index);
            prop_assert_eq!(e.lease.state, LeaseState::Held);
            let last = last_per_service.entry(e.service.clone()).or_insert(0);
            prop_assert!(
                e.lease.token > *last,
                "token {} after {}",
                e.lease.token,
                last
            );
            *last = e.lease.token;
            prop_assert!(
                issued.last().is_none_or(|&max| e.lease.token > max),
                "not above every earlier token"
            );
            prop_assert!(issued.insert(e.lease.token), "token reused");
        }
        let granted = a.events.iter().any(|e| e.kind == EventKind::Granted);
        for (name, l) in &t.leases[step + 1] {
            match t.leases[step].get(name) {
                Some(prev) if !granted => prop_assert_eq!(
                    prev.token,
                    l.token,
                    "token of {} changed without a grant at step {}",
                    name,
                    step
                ),
                _ => {}
            }
        }
    }
    for rec in t.state.services() {
        prop_assert!(
            rec.tokens.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            rec.tokens
        );
        prop_assert_eq!(rec.tokens.last().copied(), Some(rec.lease.token));
        for tok in &rec.tokens {
            prop_assert!(issued.contains(tok), "token {} was never granted", tok);
        }
    }
    Ok(())
}

/// (b) At every step each service has at most one holder, `holder` is set exactly when the
/// lease is Held or Revoking, and a Held lease never passes to another holder (or a new
/// token) without going through Revoking or Vacant first.
fn check_single_holder(t: &Trace) -> TestCaseResult {
    for (step, a) in t.applied.iter().enumerate() {
        let (prev, next) = (&t.leases[step], &t.leases[step + 1]);
        for (name, l) in next {
            prop_assert_eq!(l.holder.is_some(), l.state != LeaseState::Vacant, "{:?}", l);
            prop_assert_eq!(
                l.primary(),
                if l.state == LeaseState::Held {
                    l.holder.as_deref()
                } else {
                    None
                }
            );
            if let Some(p) = prev.get(name) {
                if p.state == LeaseState::Held && l.state == LeaseState::Held {
                    prop_assert_eq!(
                        (&p.holder, p.token),
                        (&l.holder, l.token),
                        "held lease of {} replaced in one step ({})",
                        name,
                        step
                    );
                }
                if p.state == LeaseState::Revoking && l.state == LeaseState::Revoking {
                    prop_assert_eq!((&p.holder, p.token), (&l.holder, l.token));
                }
                // Renewals answered under a TTL must never be measured against a shorter one.
                if p.state != LeaseState::Vacant
                    && l.state != LeaseState::Vacant
                    && p.token == l.token
                {
                    prop_assert!(
                        l.ttl_ms >= p.ttl_ms,
                        "TTL of the held lease of {} shortened from {} to {} ms ({})",
                        name,
                        p.ttl_ms,
                        l.ttl_ms,
                        step
                    );
                }
            }
        }
        // A service that disappeared was deleted, and watchers saw it go vacant.
        for name in prev.keys().filter(|n| !next.contains_key(*n)) {
            let deleted = a
                .events
                .iter()
                .find(|e| e.kind == EventKind::ServiceDeleted && &e.service == name);
            prop_assert!(deleted.is_some(), "{} vanished without a delete", name);
            let l = &deleted.unwrap().lease;
            prop_assert_eq!((l.state, &l.holder), (LeaseState::Vacant, &None));
        }
    }
    Ok(())
}

/// Refusals change nothing but the audit trail; only changes move the revision.
fn check_refusals_and_revision(t: &Trace) -> TestCaseResult {
    let mut revision = 0;
    for (step, ((index, r), a)) in t.requests.iter().zip(&t.applied).enumerate() {
        prop_assert_eq!(t.revisions_before[step], revision);
        match &a.response {
            Response::Rejected(_) => {
                prop_assert!(a.events.is_empty());
                prop_assert!(t.untouched[step], "refused {:?} changed the state", r);
                prop_assert!(a.audit.outcome.starts_with("rejected: "));
            }
            Response::Applied {
                revision: rev,
                lease,
            } => {
                prop_assert_eq!(rev, index);
                prop_assert_eq!(lease.as_ref(), t.leases[step + 1].get(r.command.service()));
                prop_assert_eq!(&a.audit.outcome, "ok");
            }
            Response::Internal => prop_assert!(false, "Internal from apply"),
        }
        if !a.events.is_empty() {
            revision = *index;
            for e in &a.events {
                prop_assert_eq!(e.revision, *index);
                prop_assert_eq!(e.lease.revision, *index);
                prop_assert_eq!(&e.service, r.command.service());
            }
        }
    }
    prop_assert_eq!(t.state.revision(), revision);
    Ok(())
}

/// (e) With a large limit, the history holds every change, grouped by revision.
fn check_history(t: &Trace) -> TestCaseResult {
    let history = t.state.history().since(1).expect("nothing compacted");
    prop_assert!(
        history.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions increase"
    );
    let flat: Vec<&Event> = history.iter().flat_map(|(_, es)| es).collect();
    let emitted: Vec<&Event> = t.applied.iter().flat_map(|a| &a.events).collect();
    prop_assert_eq!(flat, emitted);
    let groups: Vec<(u64, Vec<Event>)> = t
        .requests
        .iter()
        .zip(&t.applied)
        .filter(|(_, a)| !a.events.is_empty())
        .map(|((i, _), a)| (*i, a.events.clone()))
        .collect();
    prop_assert_eq!(&history, &groups, "each revision's events come together");
    for (k, (rev, _)) in history.iter().enumerate() {
        prop_assert_eq!(
            &t.state.history().since(*rev).unwrap(),
            &history[k..].to_vec()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tokens_strictly_increase_are_never_reused_and_equal_the_grant_revision(s in steps()) {
        check_tokens(&run(&s, 10_000))?;
    }

    #[test]
    fn there_is_never_more_than_one_holder(s in steps()) {
        check_single_holder(&run(&s, 10_000))?;
    }

    #[test]
    fn refusals_change_nothing_but_the_audit_and_only_changes_move_the_revision(s in steps()) {
        check_refusals_and_revision(&run(&s, 10_000))?;
    }

    #[test]
    fn the_audit_chain_verifies_and_any_tampering_breaks_it(
        s in steps(),
        victim in any::<Index>(),
        other in any::<Index>(),
    ) {
        let t = run(&s, 10_000);
        let entries: Vec<AuditEntry> = t.applied.iter().map(|a| a.audit.clone()).collect();
        prop_assert_eq!(entries.len(), s.len(), "one entry per command");
        for (i, e) in entries.iter().enumerate() {
            prop_assert_eq!(e.seq, i as u64);
            prop_assert_eq!(e.revision, t.requests[i].0);
        }
        prop_assert_eq!(audit::verify(&entries, None), Ok(()));
        prop_assert_eq!(&t.state.audit_head().last_hash, &entries.last().unwrap().hash);
        prop_assert_eq!(t.state.audit_head().next_seq, entries.len() as u64);

        let n = entries.len();
        let v = victim.index(n);
        // Change every field of one entry, one at a time.
        for field in 0..12 {
            let mut bad = entries.clone();
            let e = &mut bad[v];
            match field {
                0 => e.seq += 1,
                1 => e.revision += 1,
                2 => e.at_ms = e.at_ms.wrapping_add(1),
                3 => e.actor.push('x'),
                4 => e.action.push('x'),
                5 => e.service.push('x'),
                6 => e.reason.push('x'),
                7 => e.before.push(' '),
                8 => e.after.push(' '),
                9 => e.outcome.push('!'),
                10 => e.prev_hash = e.hash.clone(),
                _ => e.hash = e.prev_hash.clone(),
            }
            prop_assert!(audit::verify(&bad, None).is_err(), "field {} of entry {} changed", field, v);
        }
        // Duplicate any entry, or swap two neighbours.
        let mut dup = entries.clone();
        dup.insert(v, entries[v].clone());
        prop_assert!(audit::verify(&dup, None).is_err(), "entry {} duplicated", v);
        if n >= 2 {
            let mut swapped = entries.clone();
            let w = v.min(n - 2);
            swapped.swap(w, w + 1);
            prop_assert!(audit::verify(&swapped, None).is_err(), "{} and {} swapped", w, w + 1);
        }
        // Remove an entry. A missing last entry only shows against the head; a missing first
        // entry only against GENESIS (`None` verifies a run starting anywhere).
        if n >= 3 {
            let mut removed = entries.clone();
            removed.remove(1 + other.index(n - 2));
            prop_assert!(audit::verify(&removed, None).is_err(), "an inner entry removed");
        }
        if n >= 2 {
            prop_assert!(audit::verify(&entries[1..], Some(GENESIS)).is_err());
            prop_assert_ne!(&entries[n - 2].hash, &t.state.audit_head().last_hash);
        }
    }

    #[test]
    fn the_same_sequence_gives_the_same_state_and_outputs(s in steps()) {
        let t = run(&s, history::DEFAULT_HISTORY);
        let (a, out_a) = replay(&t.requests);
        let (b, out_b) = replay(&t.requests);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&out_a, &out_b);
        prop_assert_eq!(&a, &t.state);
        prop_assert_eq!(&out_a, &t.applied);
        // A snapshot restored from bincode is the same state too.
        let restored: State = bincode::deserialize(&bincode::serialize(&a).unwrap()).unwrap();
        prop_assert_eq!(&restored, &a);
    }

    #[test]
    fn the_history_holds_every_event_grouped_by_increasing_revision(s in steps()) {
        check_history(&run(&s, 10_000))?;
    }

    #[test]
    fn a_small_history_keeps_the_last_revisions_and_reports_the_rest_compacted(s in steps()) {
        let limit = 3;
        let t = run(&s, limit);
        let groups: Vec<(u64, Vec<Event>)> = t
            .requests
            .iter()
            .zip(&t.applied)
            .filter(|(_, a)| !a.events.is_empty())
            .map(|((i, _), a)| (*i, a.events.clone()))
            .collect();
        let kept = &groups[groups.len().saturating_sub(limit)..];
        let h = t.state.history();
        prop_assert_eq!(h.len(), kept.len());
        prop_assert_eq!(h.since(h.oldest_available()).unwrap(), kept.to_vec());
        if groups.len() > limit {
            let dropped = groups[groups.len() - limit - 1].0;
            prop_assert_eq!(h.oldest_available(), dropped + 1);
            prop_assert_eq!(
                h.since(dropped),
                Err(Compacted { requested: dropped, oldest: dropped + 1 })
            );
        } else {
            prop_assert_eq!(h.oldest_available(), 1);
        }
    }
}
