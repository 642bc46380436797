//! Exit codes and the command line's error: each error maps to one named exit code and
//! carries a hint of what to do.

use std::io;
use std::process::ExitCode;

use tonic::Code;

use crate::client::ClientError;
use crate::config::ConfigError;
use crate::node::NodeError;

/// The exit codes of `baton`, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done as asked (`0`).
    Ok = 0,
    /// Any other error (I/O, a node failed, an internal error).
    Error = 1,
    /// The command line was wrong.
    Usage = 2,
    /// The cluster could not be reached or had no leader/quorum; or a write's outcome is
    /// unknown. Retrying later may succeed.
    Unavailable = 3,
    /// The cluster refused the request: invalid input, unknown service, failed
    /// precondition (token mismatch, region not allowed, ...). Retrying will not help.
    Rejected = 4,
    /// A check came out negative: a token is not current, the audit chain is broken, a
    /// dry run's checks failed.
    CheckFailed = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The exit code for a gRPC status code.
pub fn exit_for_code(code: Code) -> Exit {
    match code {
        Code::Ok => Exit::Ok,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated => Exit::Rejected,
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unavailable,
        Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => Exit::Error,
    }
}

const UNAVAILABLE_HINT: &str = "check that the nodes in --endpoints (or BATON_ENDPOINTS) are \
    running (`baton status`) and that a majority of voters is up; for the local dev cluster run `baton dev`";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the client library.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// From the client library, while doing something the message names.
    #[error("{context}: {source}")]
    ClientAt {
        /// What was being done (`applying service "payments"`).
        context: String,
        /// The error underneath, printed after the context.
        source: ClientError,
    },
    /// No node could be reached (the message says which were tried).
    #[error("{0}")]
    Unavailable(String),
    /// The cluster would refuse the request (a check of the plan failed).
    #[error("{0}")]
    Refused(String),
    /// A configuration or service file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A node (server or dev) failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error underneath, printed after the context.
        source: io::Error,
    },
    /// The command line is inconsistent in a way clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// A check came out negative (the message says which).
    #[error("{0}")]
    CheckFailed(String),
    /// The operator declined a confirmation.
    #[error("aborted: {0}")]
    Aborted(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<io::Error> for CliError {
    fn from(source: io::Error) -> Self {
        CliError::Io {
            context: "output".into(),
            source,
        }
    }
}

impl CliError {
    /// The client error behind this one, if any.
    fn client_error(&self) -> Option<&ClientError> {
        match self {
            CliError::Client(e) | CliError::ClientAt { source: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The exit code.
    pub fn exit(&self) -> Exit {
        if let Some(e) = self.client_error() {
            return match e {
                ClientError::InvalidEndpoint { .. }
                | ClientError::InvalidActor { .. }
                | ClientError::InvalidToken => Exit::Usage,
                ClientError::OutcomeUnknown { .. } => Exit::Unavailable,
                ClientError::Closed => Exit::Error,
                other => exit_for_code(other.code()),
            };
        }
        match self {
            CliError::Client(_) | CliError::ClientAt { .. } => Exit::Error,
            CliError::Refused(_) => Exit::Rejected,
            CliError::Unavailable(_) => Exit::Unavailable,
            CliError::Config(_) => Exit::Usage,
            CliError::Node(_) | CliError::Io { .. } | CliError::Other(_) => Exit::Error,
            CliError::Aborted(_) => Exit::Error,
            CliError::Usage(_) => Exit::Usage,
            CliError::CheckFailed(_) => Exit::CheckFailed,
        }
    }

    /// Whether this is a closed stdout (`baton audit | head`), which is not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    /// What the operator can do about it, when the message alone does not say.
    pub fn hint(&self) -> Option<String> {
        let Some(e) = self.client_error() else {
            return match self {
                CliError::Config(_) => Some("fix the file and run the command again".into()),
                CliError::Unavailable(_) => Some(UNAVAILABLE_HINT.into()),
                _ => None,
            };
        };
        match e {
            ClientError::InvalidEndpoint { .. } => Some(
                "pass --endpoints (or BATON_ENDPOINTS) as comma-separated host:port, e.g. 127.0.0.1:7101,127.0.0.1:7102"
                    .into(),
            ),
            ClientError::Unavailable { .. } => Some(UNAVAILABLE_HINT.into()),
            ClientError::OutcomeUnknown { .. } => Some(
                "the change may or may not have been applied: look at `baton primary SERVICE` and `baton audit` before retrying"
                    .into(),
            ),
            ClientError::Compacted { oldest, .. } => Some(format!(
                "re-read the current state: `baton watch` (from the current state) or `baton watch --from {oldest}`"
            )),
            ClientError::Rpc { status, .. } => match status.code() {
                Code::DeadlineExceeded => Some(
                    "the cluster did not finish in time and the change may still complete: check \
                     `baton primary SERVICE` and `baton audit`; a longer --timeout may help"
                        .into(),
                ),
                Code::Unavailable => Some(
                    "the cluster has no leader or no quorum right now; check `baton status` and retry"
                        .into(),
                ),
                Code::FailedPrecondition => crate::wire::current_token(status).map(|t| {
                    format!(
                        "the lease moved on: its current token is {t}; check `baton primary \
                         SERVICE` and pass --expected-token {t} if the move still makes sense"
                    )
                }),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn rpc(status: Status) -> CliError {
        CliError::Client(ClientError::Rpc {
            endpoint: "127.0.0.1:7101".into(),
            status,
        })
    }

    #[test]
    fn a_failed_compare_and_set_hints_the_current_token_from_its_details() {
        let e = rpc(crate::wire::token_mismatch(
            "payments",
            7,
            9,
            "the lease changed".into(),
        ));
        assert_eq!(e.exit(), Exit::Rejected);
        assert!(
            e.hint().is_some_and(|h| h.contains("--expected-token 9")),
            "{:?}",
            e.hint()
        );
        // The same code without details: no made-up token.
        assert!(rpc(Status::failed_precondition("x")).hint().is_none());
    }

    #[test]
    fn exit_codes_follow_grpc_codes() {
        assert_eq!(exit_for_code(Code::NotFound), Exit::Rejected);
        assert_eq!(exit_for_code(Code::InvalidArgument), Exit::Rejected);
        assert_eq!(exit_for_code(Code::FailedPrecondition), Exit::Rejected);
        assert_eq!(exit_for_code(Code::Unavailable), Exit::Unavailable);
        assert_eq!(exit_for_code(Code::DeadlineExceeded), Exit::Unavailable);
        assert_eq!(exit_for_code(Code::Internal), Exit::Error);
        assert_eq!(rpc(Status::not_found("x")).exit(), Exit::Rejected);
        assert_eq!(
            rpc(Status::unavailable("no quorum")).exit(),
            Exit::Unavailable
        );
        assert_eq!(rpc(Status::internal("boom")).exit(), Exit::Error);
    }

    #[test]
    fn client_errors_map_to_named_codes() {
        let unknown = CliError::Client(ClientError::OutcomeUnknown {
            op: "Failover",
            endpoint: "a:1".into(),
            detail: "connection reset".into(),
        });
        assert_eq!(unknown.exit(), Exit::Unavailable);
        assert!(unknown.hint().is_some_and(|h| h.contains("baton audit")));
        let compacted = CliError::Client(ClientError::Compacted {
            requested: 3,
            oldest: 90,
        });
        assert_eq!(compacted.exit(), Exit::Rejected);
        assert!(compacted.hint().is_some_and(|h| h.contains("--from 90")));
        let bad = CliError::Client(ClientError::InvalidEndpoint {
            endpoint: "x".into(),
            reason: "missing port".into(),
        });
        assert_eq!(bad.exit(), Exit::Usage);
        assert_eq!(CliError::CheckFailed("x".into()).exit(), Exit::CheckFailed);
        assert_eq!(ExitCode::from(Exit::Rejected), ExitCode::from(4));
    }

    #[test]
    fn a_broken_pipe_is_recognised() {
        let e = CliError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(e.is_broken_pipe());
        assert!(!CliError::Other("x".into()).is_broken_pipe());
    }
}
