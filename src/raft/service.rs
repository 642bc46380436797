//! The inbound side of the Raft transport: the `baton.v1.Raft` gRPC service.
//!
//! Checks the cluster name, decodes the bincode payload, hands it to openraft and encodes
//! the answer (or openraft's error, in `RaftReply.error`). `Forward` runs a client write
//! that a follower's API layer sent here because this node is (or was) the leader.
//!
//! Before openraft sees a message, [`admit`] refuses senders outside the current membership
//! and absurd terms: openraft trusts its peers, and one granted vote at a term near
//! `u64::MAX` wedges every later election (issue 9).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::{ForwardReject, MAX_MESSAGE_SIZE};
use super::{LeaderContact, Metrics, NodeId, Raft};
use crate::proto::raft_server::{Raft as RaftRpc, RaftServer};
use crate::proto::{RaftReply, RaftRequest};

/// How the leader answers a follower's `ReadIndex`: its read point (confirmed with a
/// quorum after the call began) as an applied log index. The node supplies it from its
/// batched read barrier, so a follower's reads share the leader's rounds and honour its
/// pauses (a leadership transfer).
pub type ReadIndexFn =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<u64, ForwardReject>> + Send + Sync>;

/// The gRPC service; build it with [`server`].
pub struct RaftService {
    raft: Raft,
    /// Without one, `ReadIndex` is refused and followers forward their reads.
    read_index: Option<ReadIndexFn>,
    cluster: String,
    contact: Arc<LeaderContact>,
    /// Peers authenticate with TLS certificates: the sender id must be the one the
    /// certificate names (DNS name `node-<id>`).
    verify_identity: bool,
    /// Refusals since the last warning logged (warnings are rate-limited, see [`Self::refuse`]).
    refusals: AtomicU64,
    /// When the last refusal warning was logged, in ms since `started`.
    warned_ms: AtomicU64,
    started: std::time::Instant,
}

/// How far above this node's current term a sender's term may be. Honest nodes only move
/// ahead by failed elections (one per election timeout), so a million terms is days of
/// partition; a forged term near `u64::MAX` is far beyond it.
pub const MAX_TERM_LEAD: u64 = 1_000_000;

/// Whether the DER certificate `cert` names node `id`: it carries the DNS name `node-<id>`
/// (as `baton cert` makes them). Chain and validity were checked by the TLS handshake.
pub fn cert_names_node(cert: &tonic::transport::CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(format!("node-{id}")) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

/// Whether a Raft message from `from`, carrying the vote of `sender` at `term`, may be handed
/// to openraft, given this node's metrics. Refuses senders outside the membership (voters and
/// learners) and absurd terms. A node with an empty membership has not joined yet and
/// accepts its first leader.
pub fn admit(from: NodeId, sender: NodeId, term: u64, m: &Metrics) -> Result<(), Status> {
    if from != sender {
        return Err(Status::permission_denied(format!(
            "node {from} sent a Raft message carrying the vote of node {sender}: refused"
        )));
    }
    let membership = m.membership_config.membership();
    let empty = membership.nodes().next().is_none();
    if !empty && membership.get_node(&sender).is_none() {
        return Err(Status::permission_denied(format!(
            "node {sender} is not a member of this cluster: refused; add it with \
             `baton admin add-node` before it takes part in Raft"
        )));
    }
    if term >= u64::MAX / 2 || term > m.current_term.saturating_add(MAX_TERM_LEAD) {
        return Err(Status::invalid_argument(format!(
            "term {term} from node {sender} is absurd (this node is at term {}): refused",
            m.current_term
        )));
    }
    Ok(())
}

/// The `baton.v1.Raft` server for `raft`, accepting only requests of `cluster`, recording
/// leader contact in `contact`, with 64 MiB message limits.
pub fn server(
    raft: Raft,
    cluster: impl Into<String>,
    contact: Arc<LeaderContact>,
) -> RaftServer<RaftService> {
    server_verifying(raft, cluster, contact, false, None)
}

/// Like [`server`]; with `verify_identity` (the peer listener runs mutual TLS) a request's
/// sender id must be named by the peer's certificate, see [`cert_names_node`].
pub fn server_verifying(
    raft: Raft,
    cluster: impl Into<String>,
    contact: Arc<LeaderContact>,
    verify_identity: bool,
    read_index: Option<ReadIndexFn>,
) -> RaftServer<RaftService> {
    RaftServer::new(RaftService {
        raft,
        read_index,
        cluster: cluster.into(),
        contact,
        verify_identity,
        refusals: AtomicU64::new(0),
        warned_ms: AtomicU64::new(0),
        started: std::time::Instant::now(),
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

impl RaftService {
    /// Checks the cluster name and decodes the payload; returns the sender's id with it.
    fn decode<T: DeserializeOwned>(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<(NodeId, T), Status> {
        let leaf = crate::connection::ConnInfo::of(&request)
            .and_then(|c| c.peer_certs())
            .and_then(|c| c.first())
            .cloned();
        let req = request.into_inner();
        if self.verify_identity {
            let named = leaf.as_ref().is_some_and(|c| cert_names_node(c, req.from));
            if !named {
                return Err(self.refuse(
                    "any",
                    Status::permission_denied(format!(
                        "the peer certificate does not name node {0} (DNS name node-{0}): \
                         a node may only speak for itself",
                        req.from
                    )),
                ));
            }
        }
        if req.cluster != self.cluster {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {:?}, but this node belongs to cluster {:?}: \
                 check `cluster` in both nodes' configs and the peer addresses",
                req.from, req.cluster, self.cluster
            )));
        }
        if let Some(to) = req.to {
            let me = self.raft.metrics().borrow().id;
            if to != me {
                return Err(self.refuse(
                    "any",
                    Status::failed_precondition(format!(
                        "node {} meant node {to}, but this is node {me}: its peer address for \
                         node {to} reaches another node (a replacement started on the address \
                         of a member not yet removed?); remove node {to} first, or fix [dial]",
                        req.from
                    )),
                ));
            }
        }
        let value = bincode::deserialize(&req.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "undecodable Raft payload from node {} (mismatched baton versions?): {e}",
                req.from
            ))
        })?;
        Ok((req.from, value))
    }

    /// [`admit`] against this node's current metrics, logging refusals.
    fn check(&self, rpc: &str, from: NodeId, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
        let metrics = self.raft.metrics();
        let res = admit(
            from,
            vote.leader_id.node_id,
            vote.leader_id.term,
            &metrics.borrow(),
        );
        res.map_err(|status| self.refuse(rpc, status))
    }

    /// Logs a refusal at warn, at most once a second (with the count of the others) so a
    /// flood of forged messages cannot flood the log.
    fn refuse(&self, rpc: &str, status: Status) -> Status {
        let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.warned_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refusals.store(0, Ordering::Relaxed);
            tracing::warn!(
                rpc,
                refused_since_last_warning = n,
                "refused a Raft message: {}",
                status.message()
            );
        }
        status
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(value).map_err(|e| Status::internal(format!("encoding the reply: {e}")))
}

/// The reply for an openraft result: the value, or the Raft error in `error`.
fn reply<T: Serialize, E: Serialize>(res: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let out = match res {
        Ok(v) => RaftReply {
            payload: encode(&v)?,
            error: Vec::new(),
        },
        Err(e) => RaftReply {
            payload: Vec::new(),
            error: encode(&e)?,
        },
    };
    Ok(Response::new(out))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let age = request
            .get_ref()
            .leader_confirmed_age_ms
            .map(std::time::Duration::from_millis);
        let (from, req): (_, openraft::raft::AppendEntriesRequest<super::TypeConfig>) =
            self.decode(request)?;
        self.check("AppendEntries", from, &req.vote)?;
        let res = self.raft.append_entries(req).await;
        // Any answer but HigherVote means the sender's vote is current: it is our leader. It
        // vouches for our state as of its last quorum confirmation, not as of now.
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch(age);
        }
        reply(res)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (from, req): (_, openraft::raft::VoteRequest<NodeId>) = self.decode(request)?;
        self.check("Vote", from, &req.vote)?;
        reply(self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (from, req): (_, openraft::raft::InstallSnapshotRequest<super::TypeConfig>) =
            self.decode(request)?;
        self.check("InstallSnapshot", from, &req.vote)?;
        reply(self.raft.install_snapshot(req).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (from, mut req): (_, crate::state::Request) = self.decode(request)?;
        self.member("Forward", from)?;
        // Time enters the state only as the leader stamps it: replace the forwarder's clock.
        req.at_ms = crate::clock::wall_clock_ms();
        let res = match self.raft.client_write(req).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(forward_reject(e)),
        };
        reply(res)
    }

    async fn read_index(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (from, ()) = self.decode(request)?;
        self.member("ReadIndex", from)?;
        let Some(read_index) = &self.read_index else {
            return Err(Status::unimplemented(
                "this node serves no read index; forward the read instead",
            ));
        };
        reply(read_index().await)
    }
}

impl RaftService {
    /// Only members forward writes and ask for read points (the sender's id is only claimed
    /// until peers authenticate with certificates).
    fn member(&self, rpc: &str, from: NodeId) -> Result<(), Status> {
        let member = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&from).is_some()
        };
        if member {
            return Ok(());
        }
        Err(self.refuse(
            rpc,
            Status::permission_denied(format!(
                "node {from} is not a member of this cluster: refused"
            )),
        ))
    }
}

fn forward_reject(
    e: RaftError<NodeId, ClientWriteError<NodeId, super::NodeInfo>>,
) -> ForwardReject {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardReject::NotLeader {
            leader_id: f.leader_id,
            leader: f.leader_node,
        },
        other => ForwardReject::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{Membership, StoredMembership};
    use tonic::Code;

    use super::*;
    use crate::raft::NodeInfo;

    /// Metrics of a node at `term` whose membership has voters 1..=3 and learner 4.
    fn metrics(term: u64) -> Metrics {
        let nodes: BTreeMap<NodeId, NodeInfo> =
            (1..=4).map(|id| (id, NodeInfo::default())).collect();
        let voters = BTreeSet::from([1, 2, 3]);
        let mut m = Metrics::new_initial(1);
        m.current_term = term;
        m.membership_config = Arc::new(StoredMembership::new(
            None,
            Membership::new(vec![voters], nodes),
        ));
        m
    }

    fn code(r: Result<(), Status>) -> Option<Code> {
        r.err().map(|s| s.code())
    }

    #[test]
    fn members_with_sane_terms_are_admitted() {
        let m = metrics(7);
        assert_eq!(code(admit(2, 2, 8, &m)), None);
        assert_eq!(code(admit(4, 4, 7, &m)), None, "learners take part too");
        assert_eq!(code(admit(3, 3, 7 + MAX_TERM_LEAD, &m)), None);
    }

    #[test]
    fn strangers_spoofers_and_absurd_terms_are_refused() {
        let m = metrics(7);
        assert_eq!(code(admit(42, 42, 8, &m)), Some(Code::PermissionDenied));
        assert_eq!(code(admit(2, 42, 8, &m)), Some(Code::PermissionDenied));
        assert_eq!(
            code(admit(2, 2, 8 + MAX_TERM_LEAD, &m)),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(admit(2, 2, u64::MAX - 2, &metrics(u64::MAX / 2))),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn a_certificate_names_only_its_node() {
        let c =
            rcgen::generate_simple_self_signed(vec!["node-2".into(), "localhost".into()]).unwrap();
        let der = c.cert.der();
        assert!(cert_names_node(der, 2));
        assert!(!cert_names_node(der, 3));
        assert!(!cert_names_node(der, 22));
        let junk = tonic::transport::CertificateDer::from(vec![1u8, 2, 3]);
        assert!(!cert_names_node(&junk, 2));
    }

    #[test]
    fn a_node_that_has_not_joined_accepts_its_first_leader() {
        let m = Metrics::new_initial(4);
        assert_eq!(code(admit(1, 1, 3, &m)), None);
        assert_eq!(
            code(admit(1, 1, u64::MAX - 2, &m)),
            Some(Code::InvalidArgument)
        );
    }
}
