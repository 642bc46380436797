//! What can go wrong talking to a cluster, and how a `tonic::Status` is read: is it a
//! "not the leader" answer, did the request leave this process at all, which revision is the
//! oldest one a watch may resume from.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

use super::endpoint::normalize_endpoint;

/// ASCII metadata key with which a non-leader names the leader's `host:port`.
pub const LEADER_METADATA: &str = crate::wire::LEADER_KEY;

/// ASCII metadata key with which a compacted watch names the oldest revision it can serve.
/// The client reads the structured details first, then this key, then the message (older
/// servers).
pub const OLDEST_REVISION_METADATA: &str = crate::wire::OLDEST_REVISION_KEY;

/// An error of the client library, with enough context to tell the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An endpoint string could not be understood.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS files or flags cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The actor name cannot be sent as gRPC metadata.
    #[error("invalid actor {actor:?}: use at most 128 printable ASCII characters")]
    InvalidActor {
        /// As given.
        actor: String,
    },
    /// The token cannot be sent as gRPC metadata.
    #[error("invalid token: use the printable token `baton auth token` printed (at most 512 characters, no spaces)")]
    InvalidToken,
    /// A node answered the request with an error: the request reached the cluster and was
    /// refused or failed there (unknown service, bad argument, token mismatch, ...).
    #[error("{endpoint} answered {}: {}", code_name(.status.code()), .status.message())]
    Rpc {
        /// `host:port` of the node that answered.
        endpoint: String,
        /// The answer.
        status: Status,
    },
    /// No node could serve the request before the deadline: unreachable, no leader, no
    /// quorum. Nothing was changed by this request.
    #[error("no node could serve {op} within {}: {last}", humantime::format_duration(*.waited))]
    Unavailable {
        /// The call (`GetPrimary`, ...).
        op: &'static str,
        /// How long the client tried.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// A write was sent but no answer came back (the connection broke or the deadline ran
    /// out): it may or may not have been applied, so it was not retried.
    #[error("the outcome of {op} sent to {endpoint} is unknown: {detail}")]
    OutcomeUnknown {
        /// The call (`Failover`, ...).
        op: &'static str,
        /// `host:port` it was sent to.
        endpoint: String,
        /// What happened to the call.
        detail: String,
    },
    /// A watch could not resume at `requested`: the cluster no longer keeps that revision.
    /// Changes between the last one seen and `oldest` cannot be replayed; re-read the state
    /// and watch again from 0 (snapshot) or from `oldest`.
    #[error(
        "watch cannot resume at revision {requested}: history before revision {oldest} was compacted"
    )]
    Compacted {
        /// The revision the watch asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// The lease session was closed or its task stopped.
    #[error("the lease session is closed")]
    Closed,
}

impl ClientError {
    /// The gRPC code that best describes the error (for exit codes and retry decisions).
    pub fn code(&self) -> Code {
        match self {
            ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidActor { .. }
            | ClientError::Tls(_)
            | ClientError::InvalidToken => Code::InvalidArgument,
            ClientError::Rpc { status, .. } => status.code(),
            ClientError::Unavailable { .. } => Code::Unavailable,
            ClientError::OutcomeUnknown { .. } => Code::Unknown,
            ClientError::Compacted { .. } => Code::FailedPrecondition,
            ClientError::Closed => Code::Cancelled,
        }
    }

    /// The status a node answered with, if this error is such an answer.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// `NOT_FOUND`-style name of a gRPC code, as people read them in docs and logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How one failed attempt is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The node is not the leader and did not execute the request; `hint` is the leader it
    /// named (normalised `host:port`), if it knows one.
    NotLeader {
        /// Leader to try next.
        hint: Option<String>,
    },
    /// The request never left this process (connection refused, connect timeout).
    NotSent,
    /// The transport failed after the request may have been sent (reset, broken
    /// connection, client-side timeout).
    Transport,
    /// The node answered with this error.
    Answered,
}

/// Classifies a failed call.
///
/// A status a node sent arrives without a source; one tonic made from a local transport
/// error carries that error as its source, and tonic wraps connect failures in
/// `ConnectError`, which is how "not sent" is recognised.
pub(crate) fn classify(status: &Status) -> Failure {
    if is_not_leader(status) {
        return Failure::NotLeader {
            hint: leader_hint(status),
        };
    }
    let Some(source) = status.source() else {
        return Failure::Answered;
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(e) = cur {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return Failure::NotSent;
        }
        cur = e.source();
    }
    Failure::Transport
}

/// A status's message with the causes tonic keeps in its source chain ("tcp connect error:
/// Connection refused (os error 111)"), without repeating the same text.
pub(crate) fn detail(status: &Status) -> String {
    let mut out = status.message().to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = status.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !m.is_empty() && !out.contains(&m) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&m);
        }
        cur = e.source();
    }
    out
}

/// A transport failure's detail with advice appended when it looks like a TLS mismatch
/// (`tls`: whether this client speaks TLS): the raw errors ("frame with invalid size",
/// "connection closed") do not say what to do.
pub(crate) fn explain(detail: String, tls: bool) -> String {
    match tls_advice(&detail, tls) {
        Some(advice) => format!("{detail} ({advice})"),
        None => detail,
    }
}

fn tls_advice(detail: &str, tls: bool) -> Option<&'static str> {
    let d = detail.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| d.contains(w));
    if !tls {
        // A TLS listener answers the HTTP/2 preface with a TLS alert (read as a bad frame)
        // or just closes the connection.
        if any(&[
            "frame with invalid size",
            "invalidcontenttype",
            "corrupt message",
        ]) {
            return Some(
                "the node requires TLS: pass --cacert (BATON_CACERT) with the CA that signed \
                 the nodes' certificates, and --cert/--key if it asks for a client certificate",
            );
        }
        // Closed while the preface was still being written: a broken pipe (a busy node
        // reads the preface later, so which of these the client sees is a race).
        return any(&["connection closed", "connection reset", "broken pipe"]).then_some(
            "if the node requires TLS: pass --cacert (BATON_CACERT) with the CA that signed \
             the nodes' certificates, and --cert/--key if it asks for a client certificate",
        );
    }
    if any(&["invalidcontenttype", "corrupt message", "wrong version"]) {
        return Some(
            "the node does not speak TLS: drop --cacert/--cert/--key and https://, or \
             configure [client_tls] on the node",
        );
    }
    if any(&[
        "peer certificate",
        "unknownissuer",
        "badsignature",
        "notvalidforname",
    ]) {
        return Some(
            "the node's certificate is not trusted: check that --cacert is the CA that signed \
             it, that it is not expired, and that it names the host you dial",
        );
    }
    if any(&[
        "connection closed",
        "connection reset",
        "certificate required",
        "broken pipe",
    ]) {
        return Some(
            "if the node requires a client certificate: pass --cert and --key signed by the \
             cluster's CA, and check that it has not expired",
        );
    }
    None
}

/// Did the node say it is not the leader, or that it knows no leader (and so did not
/// execute the request)?
pub(crate) fn is_not_leader(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let m = status.message();
    crate::wire::is_not_leader(status)
        || status.metadata().get(LEADER_METADATA).is_some()
        || m.contains("not the leader")
        || m.contains("knows no leader")
}

/// The leader a non-leader named: `x-baton-leader` metadata first, else the address after
/// "at " in a message like "...; the leader is node 1 at 127.0.0.1:7101".
pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    if let Some(addr) = crate::wire::leader_addr(status).and_then(|a| normalize_endpoint(&a).ok()) {
        return Some(addr);
    }
    leader_from_message(status.message())
}

/// The leader named in the metadata of a successful answer (a follower that forwarded the
/// request may add it).
pub(crate) fn success_hint(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = metadata.get(LEADER_METADATA)?.to_str().ok()?;
    normalize_endpoint(v).ok()
}

/// Parses the leader address out of a not-leader message.
pub(crate) fn leader_from_message(message: &str) -> Option<String> {
    let (_, tail) = message.rsplit_once("leader is ")?;
    let (_, addr) = tail.split_once(" at ")?;
    let addr = addr
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ')')
        .next()?;
    normalize_endpoint(addr.trim_end_matches('.')).ok()
}

/// The oldest revision named by a compacted-watch answer.
pub(crate) fn compacted_oldest(status: &Status) -> Option<u64> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    crate::wire::oldest_revision(status).or_else(|| oldest_from_message(status.message()))
}

/// The first number after the word "oldest" in a message.
pub(crate) fn oldest_from_message(message: &str) -> Option<u64> {
    let (_, tail) = message.split_once("oldest")?;
    let digits: String = tail
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn not_leader(meta: Option<&'static str>, msg: &str) -> Status {
        let mut s = Status::unavailable(msg.to_string());
        if let Some(m) = meta {
            s.metadata_mut()
                .insert(LEADER_METADATA, MetadataValue::from_static(m));
        }
        s
    }

    #[test]
    fn leader_hint_prefers_metadata() {
        let s = not_leader(
            Some("10.0.0.1:7101"),
            "node 2 is not the leader; the leader is node 1 at 127.0.0.1:7101",
        );
        assert!(is_not_leader(&s));
        assert_eq!(leader_hint(&s).as_deref(), Some("10.0.0.1:7101"));
    }

    #[test]
    fn leader_hint_falls_back_to_the_message() {
        let s = not_leader(
            None,
            "node 2 is not the leader; the leader is node 1 at 127.0.0.1:7101",
        );
        assert!(is_not_leader(&s));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7101"));
        assert_eq!(
            leader_from_message("the leader is node 3 at [::1]:7103."),
            Some("[::1]:7103".to_string())
        );
    }

    #[test]
    fn leader_hint_absent_during_an_election() {
        let s = not_leader(
            None,
            "node 2 knows no leader right now (an election may be in progress); retry shortly",
        );
        assert!(is_not_leader(&s));
        assert_eq!(leader_hint(&s), None);
        assert_eq!(
            classify(&s),
            Failure::NotLeader { hint: None },
            "a not-leader answer without a hint is still never executed"
        );
    }

    #[test]
    fn garbage_leader_metadata_is_ignored() {
        let s = not_leader(Some("not an address"), "node 2 is not the leader");
        assert_eq!(leader_hint(&s), None);
    }

    #[test]
    fn other_unavailable_answers_are_not_leader_answers() {
        let s = Status::unavailable("no quorum: 1 of 3 voters reachable");
        assert!(!is_not_leader(&s));
        assert_eq!(classify(&s), Failure::Answered);
        assert_eq!(
            classify(&Status::not_found("no service x")),
            Failure::Answered
        );
    }

    #[test]
    fn compacted_revision_is_read_from_metadata_or_message() {
        let s = Status::failed_precondition(
            "revision 5 was compacted; the oldest available revision is 120",
        );
        assert_eq!(compacted_oldest(&s), Some(120));
        let mut s = Status::failed_precondition("compacted");
        s.metadata_mut()
            .insert(OLDEST_REVISION_METADATA, MetadataValue::from_static("77"));
        assert_eq!(compacted_oldest(&s), Some(77));
        assert_eq!(
            compacted_oldest(&Status::failed_precondition("token")),
            None
        );
        assert_eq!(compacted_oldest(&Status::not_found("oldest 3")), None);
    }

    #[test]
    fn details_include_the_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(classify(&status), Failure::NotSent);
        assert_eq!(detail(&status), "Connection refused");
        assert_eq!(detail(&Status::unavailable("no quorum")), "no quorum");
    }

    #[test]
    fn tls_mismatches_come_with_advice() {
        let plain_to_tls = explain("h2 protocol error: frame with invalid size".into(), false);
        assert!(plain_to_tls.contains("pass --cacert"), "{plain_to_tls}");
        // Seen on a busy machine: the TLS listener closed before the preface was written.
        let closed_early = explain(
            "transport error: connection error: stream closed because of a broken pipe".into(),
            false,
        );
        assert!(closed_early.contains("pass --cacert"), "{closed_early}");
        let tls_to_plain = explain(
            "received corrupt message of type InvalidContentType".into(),
            true,
        );
        assert!(
            tls_to_plain.contains("does not speak TLS"),
            "{tls_to_plain}"
        );
        let untrusted = explain("invalid peer certificate: UnknownIssuer".into(), true);
        assert!(untrusted.contains("--cacert is the CA"), "{untrusted}");
        let refused = explain("transport error: connection closed".into(), true);
        assert!(refused.contains("--cert and --key"), "{refused}");
        assert_eq!(
            explain("Connection refused".into(), true),
            "Connection refused"
        );
        let closed = explain("transport error: connection closed".into(), false);
        assert!(closed.contains("if the node requires TLS"), "{closed}");
        assert_eq!(explain("no quorum".into(), false), "no quorum");
    }

    #[test]
    fn error_codes_and_names() {
        let e = ClientError::Rpc {
            endpoint: "127.0.0.1:7101".into(),
            status: Status::not_found("no service \"x\""),
        };
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(
            e.to_string(),
            "127.0.0.1:7101 answered NOT_FOUND: no service \"x\""
        );
        assert_eq!(
            ClientError::Compacted {
                requested: 3,
                oldest: 9
            }
            .code(),
            Code::FailedPrecondition
        );
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }
}
