//! `baton.v1.Admin`: cluster status, membership, leadership transfer, service definitions,
//! snapshots and backups.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::raft::typ::ChangeMembers;
use tonic::{Request, Response, Status};

use super::{actor, forwarded, principal, redact_service, rejection_status, validate, Caller, Ctx};
use crate::auth::policy::Need;
use crate::backup;
use crate::control::propose;
use crate::convert::record_to_proto;
use crate::proto::{self, admin_client::AdminClient, admin_server::Admin};
use crate::raft::{NodeId, NodeInfo};
use crate::state::{ClusterAction, Command, Response as StateResponse};

/// The Admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    ctx: Arc<Ctx>,
}

impl AdminService {
    /// A service over a node's parts.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    fn members(&self) -> Vec<proto::NodeStatus> {
        let m = self.ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        membership
            .nodes()
            .map(|(id, node)| proto::NodeStatus {
                id: *id,
                region: node.region.clone(),
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).copied().unwrap_or(0),
                reachable: *id == self.ctx.id || matched.contains_key(id),
            })
            .collect()
    }

    /// Runs `f` here when this node leads, else forwards the request to the leader once.
    async fn on_leader<T, R, F, Fut>(
        &self,
        request: Request<T>,
        local: F,
        remote: impl AsyncFnOnce(
            AdminClient<tonic::transport::Channel>,
            Request<T>,
        ) -> Result<Response<R>, Status>,
    ) -> Result<Response<R>, Status>
    where
        T: Clone,
        F: FnOnce(Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        if self.ctx.keeper.is_leading() || Ctx::was_forwarded(&request) {
            return local(request).await.map(Response::new);
        }
        let ch = self.ctx.leader_channel()?;
        let fwd = forwarded(&request, request.get_ref().clone());
        self.ctx
            .leader_answered(remote(AdminClient::new(ch), fwd).await)
    }
}

fn quorum_commit(matched: &[u64]) -> u64 {
    let mut v = matched.to_vec();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The chunks of a backup file.
pub type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<proto::SnapshotChunk, Status>> + Send + 'static>>;

/// Audit entries read per page while building a backup.
const AUDIT_PAGE: usize = 4096;

#[tonic::async_trait]
impl Admin for AdminService {
    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<proto::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        if !self.ctx.keeper.is_leading() && !Ctx::was_forwarded(&request) {
            // Served by the leader: its read barrier is what makes the copy complete.
            let ch = self.ctx.leader_channel()?;
            let fwd = forwarded(&request, proto::SaveSnapshotRequest {});
            let answer = AdminClient::new(ch)
                .max_decoding_message_size(backup::MAX_CHUNK_BYTES + 4096)
                .save_snapshot(fwd)
                .await;
            let resp = self.ctx.leader_answered(answer)?;
            let (meta, stream, ext) = resp.into_parts();
            return Ok(Response::from_parts(meta, Box::pin(stream), ext));
        }
        let who = actor(&request);
        let built = self.build_backup().await;
        let what = match &built {
            Ok((_, info)) => format!(
                "from node {} at revision {} ({} bytes, sha256 {})",
                self.ctx.id, info.revision, info.size, info.sha256
            ),
            Err(_) => format!("from node {}", self.ctx.id),
        };
        self.record(&who, ClusterAction::SaveSnapshot, what, &built);
        let (bytes, info) = built?;
        tracing::info!(
            revision = info.revision,
            size = info.size,
            sha256 = %info.sha256,
            "serving a backup"
        );
        let bytes = Arc::new(bytes);
        let stream = futures::stream::unfold((0usize, Some(info)), move |(at, info)| {
            let bytes = bytes.clone();
            async move {
                if at >= bytes.len() && info.is_none() {
                    return None;
                }
                let end = (at + backup::CHUNK_BYTES).min(bytes.len());
                let chunk = proto::SnapshotChunk {
                    info,
                    data: bytes[at..end].to_vec(),
                };
                Some((Ok(chunk), (end, None)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let m = self.ctx.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let members = self.members();
        let leader = self.ctx.leader();
        let commit = if m.state == crate::raft::typ::ServerState::Leader {
            let voters: Vec<u64> = members
                .iter()
                .filter(|n| n.voter)
                .map(|n| {
                    if n.id == self.ctx.id {
                        m.last_log_index.unwrap_or(0)
                    } else {
                        n.matched_index
                    }
                })
                .collect();
            quorum_commit(&voters)
        } else {
            applied
        };
        Ok(Response::new(proto::ClusterStatusResponse {
            node_id: self.ctx.id,
            region: self.ctx.region.clone(),
            leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
            leader_addr: leader.map(|(_, n)| n.addr).unwrap_or_default(),
            term: m.current_term,
            commit_index: commit,
            applied_index: applied,
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members,
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
            cluster_name: self.ctx.cluster.clone(),
            state: format!("{:?}", m.state),
        }))
    }

    async fn add_node(
        &self,
        request: Request<proto::AddNodeRequest>,
    ) -> Result<Response<proto::AddNodeResponse>, Status> {
        validate::add_node(request.get_ref())?;
        let who = actor(&request);
        self.on_leader(
            request,
            |r| async move {
                let r = r.into_inner();
                let what = format!(
                    "node {} ({}) at {}{}",
                    r.id,
                    r.region,
                    r.addr,
                    if r.learner_only { " as a learner" } else { "" }
                );
                let done = self.add(&r).await;
                self.record(&who, ClusterAction::AddNode, what, &done);
                done
            },
            async |mut c, r| c.add_node(r).await,
        )
        .await
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        let who = actor(&request);
        self.on_leader(
            request,
            |r| async move {
                let id = r.get_ref().id;
                let done = self.remove(id).await;
                self.record(&who, ClusterAction::RemoveNode, format!("node {id}"), &done);
                done
            },
            async |mut c, r| c.remove_node(r).await,
        )
        .await
    }
    async fn transfer_leadership(
        &self,
        request: Request<proto::TransferLeadershipRequest>,
    ) -> Result<Response<proto::TransferLeadershipResponse>, Status> {
        if request.get_ref().campaign {
            return self.campaign().await.map(Response::new);
        }
        let who = actor(&request);
        // A request marked as a campaign passes the auth layer without credentials (see
        // `auth::policy::CAMPAIGN_HEADER`); it may only campaign.
        if !who.principal.may(Need::Admin) {
            return Err(Status::permission_denied(format!(
                "{who} may not transfer leadership: it needs the admin role"
            )));
        }
        if !self.ctx.keeper.is_leading() {
            let ch = self.ctx.leader_channel()?;
            let fwd = forwarded(&request, *request.get_ref());
            return self
                .ctx
                .leader_answered(AdminClient::new(ch).transfer_leadership(fwd).await);
        }
        let to = request.get_ref().to;
        let done = super::transfer::transfer(&self.ctx, to).await;
        let what = match (&done, to) {
            (Ok(l), _) => format!("from node {} to node {l}", self.ctx.id),
            (Err(_), 0) => format!("from node {} to the most up-to-date voter", self.ctx.id),
            (Err(_), t) => format!("from node {} to node {t}", self.ctx.id),
        };
        self.record(&who, ClusterAction::TransferLeadership, what, &done);
        done.map(|leader_id| Response::new(proto::TransferLeadershipResponse { leader_id }))
    }

    async fn put_service(
        &self,
        request: Request<proto::PutServiceRequest>,
    ) -> Result<Response<proto::PutServiceResponse>, Status> {
        let spec = validate::put_service(request.get_ref(), &self.ctx.timing)?;
        let who = actor(&request);
        who.check_scope(&spec.name, None)?;
        self.on_leader(
            request,
            |r| async move {
                let reason = match r.get_ref().reason.as_str() {
                    "" => "service definition applied".to_string(),
                    s => s.to_string(),
                };
                let (index, resp) = propose(
                    &self.ctx.raft,
                    who.name(),
                    who.stamp(Command::PutService { spec, reason }),
                )
                .await
                .map_err(|e| self.ctx.control_status(e))?;
                if let StateResponse::Rejected(rej) = resp {
                    return Err(rejection_status(&rej));
                }
                let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                let name = &spec_proto_name(r.get_ref());
                Ok(proto::PutServiceResponse {
                    service: view.state.service(name).map(record_to_proto),
                    revision: index,
                })
            },
            async |mut c, r| c.put_service(r).await,
        )
        .await
    }

    async fn delete_service(
        &self,
        request: Request<proto::DeleteServiceRequest>,
    ) -> Result<Response<proto::DeleteServiceResponse>, Status> {
        validate::delete_service(request.get_ref())?;
        let who = actor(&request);
        who.check_scope(&request.get_ref().name, None)?;
        self.on_leader(
            request,
            |r| async move {
                let r = r.into_inner();
                // One command: a held lease is revoked and the service removed once its
                // holder is fenced, so nothing waits here and no half-done delete is left.
                let (index, resp) = propose(
                    &self.ctx.raft,
                    who.name(),
                    who.stamp(Command::DeleteService {
                        name: r.name.clone(),
                        reason: r.reason,
                    }),
                )
                .await
                .map_err(|e| self.ctx.control_status(e))?;
                if let StateResponse::Rejected(rej) = resp {
                    return Err(rejection_status(&rej));
                }
                let pending = {
                    let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                    view.state.deleting(&r.name).is_some()
                };
                Ok(proto::DeleteServiceResponse {
                    revision: index,
                    pending,
                })
            },
            async |mut c, r| c.delete_service(r).await,
        )
        .await
    }

    async fn get_service(
        &self,
        request: Request<proto::GetServiceRequest>,
    ) -> Result<Response<proto::GetServiceResponse>, Status> {
        let internals = principal(&request).sees_internals();
        let req = request.into_inner();
        validate::get_service(&req)?;
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        let rec = view
            .state
            .service(&req.name)
            .ok_or_else(|| Status::not_found(format!("service {:?} does not exist", req.name)))?;
        Ok(Response::new(proto::GetServiceResponse {
            service: Some(redact_service(record_to_proto(rec), internals)),
        }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<proto::TriggerSnapshotRequest>,
    ) -> Result<Response<proto::TriggerSnapshotResponse>, Status> {
        let who = actor(&request);
        let done = self.snapshot().await;
        let what = match &done {
            Ok(r) => format!("on node {} at index {}", self.ctx.id, r.snapshot_index),
            Err(_) => format!("on node {}", self.ctx.id),
        };
        self.record(&who, ClusterAction::TriggerSnapshot, what, &done);
        done.map(Response::new)
    }
}

impl AdminService {
    async fn snapshot(&self) -> Result<proto::TriggerSnapshotResponse, Status> {
        let applied = self
            .ctx
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        self.ctx
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(format!("raft stopped: {e}")))?;
        let m = self
            .ctx
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot not built in time: {e}")))?;
        Ok(proto::TriggerSnapshotResponse {
            snapshot_index: m.snapshot.map_or(0, |s| s.index),
        })
    }
}

fn spec_proto_name(r: &proto::PutServiceRequest) -> String {
    r.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default()
}

impl AdminService {
    /// A backup of everything committed before the call: a read barrier, then a copy of the
    /// applied state and the audit trail up to its head.
    async fn build_backup(&self) -> Result<(Vec<u8>, proto::SnapshotInfo), Status> {
        self.ctx
            .reads
            .linearize()
            .await
            .map_err(|e| self.ctx.control_status(e))?;
        let (state, revision) = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            (view.state.clone(), view.applied)
        };
        // Entries below the state's audit head are written before that state is published
        // (under the same lock) and never change, so reading them now is consistent.
        // The node's retained trail: entries before its compaction checkpoint are gone.
        let next_seq = state.audit_head().next_seq;
        let read = |e: String| Status::internal(format!("reading the audit trail: {e}"));
        let first = self.ctx.audit.oldest_seq().map_err(read)?.min(next_seq);
        let mut audit = Vec::with_capacity(usize::try_from(next_seq - first).unwrap_or(0));
        let mut from = first;
        while from < next_seq {
            let page = self.ctx.audit.list(from, AUDIT_PAGE, None).map_err(read)?;
            let before = audit.len();
            audit.extend(
                page.into_iter()
                    .take_while(|e| e.seq < next_seq)
                    .enumerate()
                    .take_while(|(i, e)| e.seq == from + *i as u64)
                    .map(|(_, e)| e),
            );
            if audit.len() == before {
                return Err(Status::internal(format!(
                    "the audit trail on node {} has no entry {from}, the state expects entries up to {next_seq}",
                    self.ctx.id,
                )));
            }
            from = first + audit.len() as u64;
        }
        let members = self
            .members()
            .into_iter()
            .map(|m| backup::Member {
                id: m.id,
                addr: m.addr,
                region: m.region,
                voter: m.voter,
            })
            .collect();
        let header = backup::Header {
            revision,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            source_cluster: self.ctx.cluster.clone(),
            source_node: self.ctx.id,
            members,
            services: 0,
            audit_entries: 0,
            audit_first_seq: 0,
            body_len: 0,
        };
        let body = backup::Body { state, audit };
        let (bytes, sha256, services, audit_entries) = tokio::task::spawn_blocking(move || {
            let services = u32::try_from(body.state.service_count()).unwrap_or(u32::MAX);
            let entries = body.audit.len() as u64;
            backup::encode(header, &body).map(|(b, s)| (b, s, services, entries))
        })
        .await
        .map_err(|e| Status::internal(format!("building the backup: {e}")))?
        .map_err(|e| Status::internal(format!("building the backup: {e}")))?;
        let info = proto::SnapshotInfo {
            format_version: backup::FORMAT_VERSION,
            revision,
            size: bytes.len() as u64,
            sha256,
            services,
            audit_entries,
        };
        Ok((bytes, info))
    }

    /// The target side of a leadership transfer: wait until the old leader's lease on the
    /// other voters has run out, then start an election.
    async fn campaign(&self) -> Result<proto::TransferLeadershipResponse, Status> {
        super::transfer::campaign(&self.ctx)
            .await
            .map(|leader_id| proto::TransferLeadershipResponse { leader_id })
    }
}

impl AdminService {
    /// Writes an audit-only entry for a cluster operation (from any node).
    fn record<T>(
        &self,
        who: &Caller,
        action: ClusterAction,
        what: String,
        done: &Result<T, Status>,
    ) {
        let outcome = match done {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("failed: {}", e.message()),
        };
        self.ctx.recorder.record(
            who.name(),
            who.stamp(Command::Cluster {
                action,
                reason: what,
                outcome,
            }),
        );
    }

    async fn add(&self, r: &proto::AddNodeRequest) -> Result<proto::AddNodeResponse, Status> {
        let node = NodeInfo {
            addr: r.addr.clone(),
            region: r.region.clone(),
        };
        tracing::info!(id = r.id, addr = %r.addr, "adding node as learner; waiting for it to catch up");
        self.ctx
            .raft
            .add_learner(r.id, node, true)
            .await
            .map_err(|e| {
                Status::unavailable(format!("adding node {} as learner failed: {e}", r.id))
            })?;
        if !r.learner_only {
            tracing::info!(id = r.id, "node caught up; promoting to voter");
            self.ctx
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), false)
                .await
                .map_err(|e| Status::unavailable(format!("promoting node {} failed: {e}", r.id)))?;
        }
        Ok(proto::AddNodeResponse {
            members: self.members(),
        })
    }

    async fn remove(&self, id: NodeId) -> Result<proto::RemoveNodeResponse, Status> {
        let m = self.ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.ctx
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| Status::failed_precondition(format!("removing node {id} failed: {e}")))?;
        if is_voter {
            // Now a learner; drop it entirely.
            let _ = self
                .ctx
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await;
        }
        Ok(proto::RemoveNodeResponse {
            members: self.members(),
        })
    }
}
