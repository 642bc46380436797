//! The inbound side of the Raft transport: the `baton.v1.Raft` gRPC service.
//!
//! Checks the cluster name, decodes the bincode payload, hands it to openraft and encodes
//! the answer (or openraft's error, in `RaftReply.error`). `Forward` runs a client write
//! that a follower's API layer sent here because this node is (or was) the leader.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::{ForwardReject, MAX_MESSAGE_SIZE};
use super::{LeaderContact, NodeId, Raft};
use crate::proto::raft_server::{Raft as RaftRpc, RaftServer};
use crate::proto::{RaftReply, RaftRequest};

/// The gRPC service; build it with [`server`].
pub struct RaftService {
    raft: Raft,
    cluster: String,
    contact: Arc<LeaderContact>,
}

/// The `baton.v1.Raft` server for `raft`, accepting only requests of `cluster`, recording
/// leader contact in `contact`, with 64 MiB message limits.
pub fn server(
    raft: Raft,
    cluster: impl Into<String>,
    contact: Arc<LeaderContact>,
) -> RaftServer<RaftService> {
    RaftServer::new(RaftService {
        raft,
        cluster: cluster.into(),
        contact,
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

impl RaftService {
    /// Checks the cluster name and decodes the payload.
    fn decode<T: DeserializeOwned>(&self, request: Request<RaftRequest>) -> Result<T, Status> {
        let req = request.into_inner();
        if req.cluster != self.cluster {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {:?}, but this node belongs to cluster {:?}: \
                 check `cluster` in both nodes' configs and the peer addresses",
                req.from, req.cluster, self.cluster
            )));
        }
        bincode::deserialize(&req.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "undecodable Raft payload from node {} (mismatched baton versions?): {e}",
                req.from
            ))
        })
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
        let req = self.decode(request)?;
        let res = self.raft.append_entries(req).await;
        // Any answer but HigherVote means the sender's vote is current: it is our leader.
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        reply(res)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = self.decode(request)?;
        reply(self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = self.decode(request)?;
        reply(self.raft.install_snapshot(req).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let mut req: crate::state::Request = self.decode(request)?;
        // Time enters the state only as the leader stamps it: replace the forwarder's clock.
        req.at_ms = crate::control::wall_clock_ms();
        let res = match self.raft.client_write(req).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(forward_reject(e)),
        };
        reply(res)
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
