//! What both ends of the API agree on beyond the generated messages (`proto`): metadata keys,
//! and the structured error details that carry facts a program acts on — the leader to
//! follow, the oldest revision a watch can resume from, the token a compare-and-set found.
//! The message text is for people; clients read these.
//!
//! Details travel as google.rpc `ErrorInfo` (reason + metadata, domain [`DOMAIN`]) and, for
//! a failed compare-and-set, `PreconditionFailure` (tonic-types), so any gRPC client can read
//! them; the leader and oldest revision are also plain metadata for the simplest clients.

use std::collections::HashMap;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of baton's errors.
pub const DOMAIN: &str = "baton.v1";

/// Metadata key carrying the leader's `host:port` (on a not-leader answer, and on answers a
/// follower got by forwarding).
pub const LEADER_KEY: &str = "x-baton-leader";
/// Metadata key naming the oldest revision a compacted watch can resume from.
pub const OLDEST_REVISION_KEY: &str = "x-baton-oldest-revision";
/// Metadata key naming the oldest audit seq a node still keeps, on a compacted ListAudit.
pub const OLDEST_AUDIT_SEQ_KEY: &str = "x-baton-oldest-audit-seq";
/// Metadata key with which a caller says on whose behalf it acts: a note in the audit
/// reason, never the principal.
pub const ACTOR_KEY: &str = "x-baton-actor";
/// Metadata key of a caller-chosen request id, echoed in the server's logs.
pub const REQUEST_ID_KEY: &str = "x-request-id";
/// Metadata key of the bearer token (`Bearer <token>`).
pub const AUTHORIZATION_KEY: &str = "authorization";

// Node-to-node metadata: set only by nodes forwarding a call to the leader. Callers' values
// are never trusted (the auth layer believes them only from a member node's certificate).

/// Marks a request a follower already forwarded (never forwarded twice).
pub const FORWARDED_KEY: &str = "x-baton-forwarded";
/// Marks the campaign a leader handing over sends to the transfer target.
pub const CAMPAIGN_KEY: &str = "x-baton-campaign";
/// The principal a forwarding node vouches for.
pub const PRINCIPAL_KEY: &str = "x-baton-principal";
/// Its roles, comma-separated.
pub const PRINCIPAL_ROLES_KEY: &str = "x-baton-principal-roles";
/// Its bound services, comma-separated.
pub const PRINCIPAL_SERVICES_KEY: &str = "x-baton-principal-services";
/// Its bound regions, comma-separated.
pub const PRINCIPAL_REGIONS_KEY: &str = "x-baton-principal-regions";

/// Largest public API message sent (a ListServices of every service fits).
pub const MAX_API_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest public API request accepted: the biggest legitimate one is a PutService of a
/// definition within `state::limits::MAX_SPEC_BYTES`; more is refused before it is decoded.
pub const MAX_API_REQUEST: usize = 1024 * 1024;

/// Longest agent id a KeepAlive may carry (the agent checks it before it connects).
pub const MAX_AGENT_ID: usize = 128;

/// `ErrorInfo` reasons.
pub mod reason {
    /// This node is not the leader (metadata: `leader_addr`, `leader_id` when known).
    pub const NOT_LEADER: &str = "NOT_LEADER";
    /// A watch asked for a revision no longer kept (metadata: `requested_revision`,
    /// `oldest_revision`).
    pub const REVISION_COMPACTED: &str = "REVISION_COMPACTED";
    /// ListAudit asked for entries compacted away (metadata: `requested_seq`,
    /// `oldest_seq`).
    pub const AUDIT_COMPACTED: &str = "AUDIT_COMPACTED";
    /// A compare-and-set found another token (metadata: `service`, `expected_token`,
    /// `current_token`).
    pub const TOKEN_MISMATCH: &str = "TOKEN_MISMATCH";
}

fn info(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// UNAVAILABLE from a node that is not the leader, naming the leader when it knows one.
pub fn not_leader(message: String, leader: Option<(u64, &str)>) -> Status {
    let mut meta = Vec::new();
    if let Some((id, addr)) = leader {
        meta.push(("leader_id", id.to_string()));
        meta.push(("leader_addr", addr.to_string()));
    }
    let mut d = ErrorDetails::new();
    d.set_error_info(reason::NOT_LEADER, DOMAIN, info(&meta));
    let mut s = Status::with_error_details(Code::Unavailable, message, d);
    if let Some(v) = leader.and_then(|(_, a)| MetadataValue::try_from(a).ok()) {
        s.metadata_mut().insert(LEADER_KEY, v);
    }
    s
}

/// FAILED_PRECONDITION for a watch from a compacted revision.
pub fn compacted(requested: u64, oldest: u64, message: String) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(
        reason::REVISION_COMPACTED,
        DOMAIN,
        info(&[
            ("requested_revision", requested.to_string()),
            ("oldest_revision", oldest.to_string()),
        ]),
    );
    let mut s = Status::with_error_details(Code::FailedPrecondition, message, d);
    if let Ok(v) = MetadataValue::try_from(oldest.to_string()) {
        s.metadata_mut().insert(OLDEST_REVISION_KEY, v);
    }
    s
}

/// FAILED_PRECONDITION for a ListAudit from a seq compacted away.
pub fn audit_compacted(requested: u64, oldest: u64, message: String) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(
        reason::AUDIT_COMPACTED,
        DOMAIN,
        info(&[
            ("requested_seq", requested.to_string()),
            ("oldest_seq", oldest.to_string()),
        ]),
    );
    let mut s = Status::with_error_details(Code::FailedPrecondition, message, d);
    if let Ok(v) = MetadataValue::try_from(oldest.to_string()) {
        s.metadata_mut().insert(OLDEST_AUDIT_SEQ_KEY, v);
    }
    s
}

/// The oldest audit seq a compacted-ListAudit answer names: its details, else its metadata.
pub fn oldest_audit_seq(status: &Status) -> Option<u64> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    detail(status, reason::AUDIT_COMPACTED, "oldest_seq")
        .or_else(|| {
            status
                .metadata()
                .get(OLDEST_AUDIT_SEQ_KEY)?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
}

/// FAILED_PRECONDITION for a compare-and-set that found `actual` instead of `expected`.
pub fn token_mismatch(service: &str, expected: u64, actual: u64, message: String) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(
        reason::TOKEN_MISMATCH,
        DOMAIN,
        info(&[
            ("service", service.to_string()),
            ("expected_token", expected.to_string()),
            ("current_token", actual.to_string()),
        ]),
    );
    d.add_precondition_failure_violation(
        "TOKEN",
        format!("services/{service}"),
        format!("the current token is {actual}, not {expected}: read the lease again"),
    );
    Status::with_error_details(Code::FailedPrecondition, message, d)
}

/// The `ErrorInfo` metadata value `key` of a baton error with `reason`, if the status has one.
fn detail(status: &Status, reason: &str, key: &str) -> Option<String> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    if info.domain != DOMAIN || info.reason != reason {
        return None;
    }
    info.metadata.get(key).cloned()
}

/// The leader's `host:port` a not-leader answer names: its details, else its metadata.
pub fn leader_addr(status: &Status) -> Option<String> {
    detail(status, reason::NOT_LEADER, "leader_addr").or_else(|| {
        status
            .metadata()
            .get(LEADER_KEY)?
            .to_str()
            .ok()
            .map(str::to_string)
    })
}

/// Whether the status is a baton not-leader answer (by its details).
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|i| i.domain == DOMAIN && i.reason == reason::NOT_LEADER)
}

/// The oldest revision a compacted-watch answer names: its details, else its metadata.
pub fn oldest_revision(status: &Status) -> Option<u64> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    detail(status, reason::REVISION_COMPACTED, "oldest_revision")
        .or_else(|| {
            status
                .metadata()
                .get(OLDEST_REVISION_KEY)?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
}

/// The current token a failed compare-and-set names.
pub fn current_token(status: &Status) -> Option<u64> {
    detail(status, reason::TOKEN_MISMATCH, "current_token").and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the wire: details survive encoding into and out of HTTP headers.
    fn round_trip(s: Status) -> Status {
        let http = s.into_http::<()>();
        Status::from_header_map(http.headers()).expect("a grpc-status header")
    }

    #[test]
    fn each_fact_is_read_back_from_the_details_alone() {
        let s = round_trip(not_leader("no".into(), Some((3, "10.0.0.3:7100"))));
        assert!(is_not_leader(&s));
        assert_eq!(leader_addr(&s).as_deref(), Some("10.0.0.3:7100"));
        // Without the plain metadata key, the details still name the leader.
        let mut bare = s.clone();
        bare.metadata_mut().remove(LEADER_KEY);
        assert_eq!(leader_addr(&bare).as_deref(), Some("10.0.0.3:7100"));
        assert!(leader_addr(&round_trip(not_leader("no".into(), None))).is_none());

        let s = round_trip(compacted(5, 40, "gone".into()));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(oldest_revision(&s), Some(40));
        let mut bare = s.clone();
        bare.metadata_mut().remove(OLDEST_REVISION_KEY);
        assert_eq!(oldest_revision(&bare), Some(40));

        let s = round_trip(token_mismatch("payments", 7, 9, "moved".into()));
        assert_eq!(current_token(&s), Some(9));
        let pf = s.get_error_details();
        let v = &pf
            .precondition_failure()
            .expect("precondition failure")
            .violations[0];
        assert_eq!(v.r#type, "TOKEN");
        assert_eq!(v.subject, "services/payments");
        assert_eq!(s.message(), "moved");
    }

    #[test]
    fn other_errors_name_nothing() {
        let s = Status::failed_precondition("oldest 12");
        assert_eq!(current_token(&s), None);
        assert!(!is_not_leader(&Status::unavailable("x")));
        // Another domain's ErrorInfo is not taken for baton's.
        let mut d = ErrorDetails::new();
        d.set_error_info(
            reason::TOKEN_MISMATCH,
            "example.com",
            info(&[("current_token", "4".into())]),
        );
        assert_eq!(
            current_token(&Status::with_error_details(
                Code::FailedPrecondition,
                "m",
                d
            )),
            None
        );
    }
}
