//! Outbound Raft transport over tonic, and client-write forwarding to the leader.
//!
//! One [`Channel`] per peer address, created lazily and shared by the Raft replication tasks
//! and the API layer (through [`Peers`]). Payloads are bincode of openraft's structures; a
//! Raft error from the remote travels bincode-encoded in `RaftReply.error`.
//!
//! Failures are classified so openraft backs off correctly: a peer we cannot connect to is
//! [`Unreachable`] (openraft then waits per [`RaftNetwork::backoff`]), other transport
//! failures and timeouts are [`NetworkError`]s (retried at once), and an error the remote
//! Raft returned is a [`RemoteError`].

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, ClientTlsConfig};

use super::pool::ChannelPool;
use super::{NodeId, NodeInfo, TypeConfig};
use crate::proto::raft_client::RaftClient;
use crate::proto::RaftRequest;
use crate::state::{Request, Response};

/// Largest gRPC message between nodes, both directions (snapshot chunks, log batches).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Default time a forwarded write may take.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a forwarded write did not produce an answer, as the leader encodes it in
/// `RaftReply.error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardReject {
    /// The node asked is not the leader.
    NotLeader {
        /// The leader it knows of.
        leader_id: Option<NodeId>,
        /// Its address and region.
        leader: Option<NodeInfo>,
    },
    /// Raft failed the write (shutting down, storage error, ...).
    Failed(String),
}

/// Why [`Peers::forward`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The node asked is not the leader any more; the write was not applied.
    #[error("{addr} is not the leader any more; {}", leader_hint(*.leader_id, .leader.as_ref()))]
    NotLeader {
        /// The node asked.
        addr: String,
        /// The leader it knows of, if any.
        leader_id: Option<NodeId>,
        /// Its address and region, if known.
        leader: Option<NodeInfo>,
    },
    /// Could not connect to the leader; the write was not sent.
    #[error("cannot reach the leader at {addr}: {reason}")]
    Unreachable {
        /// The leader's address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// Anything else: the write may or may not have been applied.
    #[error(
        "forwarding the write to {addr} failed (it may or may not have been applied): {reason}"
    )]
    Other {
        /// The leader's address.
        addr: String,
        /// What failed.
        reason: String,
    },
}

fn leader_hint(id: Option<NodeId>, node: Option<&NodeInfo>) -> String {
    match (id, node) {
        (Some(id), Some(n)) => format!("the leader is node {id} at {n}"),
        (Some(id), None) => format!("the leader is node {id}"),
        _ => "no leader is known yet; retry shortly".to_string(),
    }
}

/// The channels to the other nodes, shared by the Raft network and the API layer.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    cluster: String,
    me: NodeId,
    forward_timeout: Duration,
    /// Channels to the peers' Raft listeners (mutual TLS with `[peer_tls]`).
    pool: ChannelPool,
    /// This node's last quorum confirmation as leader; its age goes out with AppendEntries.
    confirmed: Arc<super::Confirmed>,
    /// Last AppendEntries round trip per peer (added to that age: a bound on the one-way
    /// delay; also checked against the heartbeat interval).
    rtts: Arc<Mutex<HashMap<NodeId, Duration>>>,
}

impl Peers {
    /// Channels for node `me` of cluster `cluster`.
    pub fn new(cluster: impl Into<String>, me: NodeId) -> Self {
        Self {
            inner: Arc::new(PeersInner {
                cluster: cluster.into(),
                me,
                forward_timeout: DEFAULT_FORWARD_TIMEOUT,
                pool: ChannelPool::new(),
                confirmed: Arc::default(),
                rtts: Arc::default(),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut PeersInner)) -> Self {
        let old = &self.inner;
        let mut inner = PeersInner {
            cluster: old.cluster.clone(),
            me: old.me,
            forward_timeout: old.forward_timeout,
            pool: old.pool.clone(),
            confirmed: old.confirmed.clone(),
            rtts: old.rtts.clone(),
        };
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Dials node `id` at the given address instead of the one in its [`NodeInfo`] (a proxy
    /// in fault-injection tests, a different network path).
    pub fn with_dial(self, dial: HashMap<NodeId, String>) -> Self {
        self.rebuild(|i| i.pool = i.pool.clone().with_dial(dial))
    }

    /// Tells followers the age of `confirmed` (this node's last quorum confirmation as
    /// leader) with every AppendEntries.
    pub fn with_confirmed(self, confirmed: Arc<super::Confirmed>) -> Self {
        self.rebuild(|i| i.confirmed = confirmed)
    }

    /// Runs peer connections on `runtime` (Raft's own threads, so that a flood of client
    /// calls on the node's main runtime cannot delay heartbeats).
    pub fn with_runtime(self, runtime: tokio::runtime::Handle) -> Self {
        self.rebuild(|i| i.pool = i.pool.clone().with_runtime(runtime))
    }

    /// The last AppendEntries round trip to each peer that answered one.
    pub fn round_trips(&self) -> HashMap<NodeId, Duration> {
        self.inner
            .rtts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Dials peers with `tls` from now on (rotated certificates), in every clone.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        self.inner.pool.set_tls(Some(tls));
    }

    /// Dials peers over mutual TLS with `tls` (and `https`). Drops channels made so far.
    pub fn with_tls(self, tls: ClientTlsConfig) -> Self {
        self.rebuild(|i| i.pool = i.pool.clone().with_tls(Some(tls)))
    }

    /// Sets the time a forwarded write may take (default [`DEFAULT_FORWARD_TIMEOUT`]).
    pub fn with_forward_timeout(self, timeout: Duration) -> Self {
        self.rebuild(|i| i.forward_timeout = timeout)
    }

    /// The address to dial for node `id` advertised as `node`.
    pub fn dial_addr<'a>(&'a self, id: NodeId, node: &'a NodeInfo) -> &'a str {
        self.inner.pool.dial_addr(id, &node.addr)
    }

    /// The cluster name every request carries.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// This node's id, sent as the sender of every request.
    pub fn me(&self) -> NodeId {
        self.inner.me
    }

    /// The openraft network factory over these channels.
    pub fn factory(&self) -> NetworkFactory {
        NetworkFactory {
            peers: self.clone(),
        }
    }

    /// The (lazily connecting) channel to `addr` (`host:port` or a URL), created on first use
    /// and reused afterwards.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.inner.pool.channel(addr)
    }

    /// Drops the channel to `addr` (e.g. after the node left the cluster).
    pub fn forget(&self, addr: &str) {
        self.inner.pool.forget(addr)
    }

    fn rtt(&self, node: NodeId) -> Option<Duration> {
        self.inner
            .rtts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }

    fn set_rtt(&self, node: NodeId, rtt: Duration) {
        self.inner
            .rtts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, rtt);
    }

    /// A Raft gRPC client for `addr` with the message size limits set.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }

    fn request(
        &self,
        payload: Vec<u8>,
        timeout: Duration,
        confirmed_age: Option<Duration>,
        to: Option<NodeId>,
    ) -> tonic::Request<RaftRequest> {
        let mut req = tonic::Request::new(RaftRequest {
            cluster: self.inner.cluster.clone(),
            from: self.inner.me,
            to,
            payload,
            leader_confirmed_age_ms: confirmed_age
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
        });
        // Lets the receiver give up on work whose answer nobody waits for.
        req.set_timeout(timeout);
        req
    }

    /// Sends a client write to `leader` (its `Forward` RPC, at its advertised address) and
    /// returns the applied response.
    pub async fn forward(
        &self,
        leader: &NodeInfo,
        req: &Request,
    ) -> Result<Response, ForwardError> {
        self.forward_at(&leader.addr, req).await
    }

    /// Like [`Peers::forward`], honouring the dial override of node `leader_id`.
    pub async fn forward_to(
        &self,
        leader_id: NodeId,
        leader: &NodeInfo,
        req: &Request,
    ) -> Result<Response, ForwardError> {
        self.forward_at(self.dial_addr(leader_id, leader), req)
            .await
    }

    async fn forward_at(&self, addr: &str, req: &Request) -> Result<Response, ForwardError> {
        let payload = bincode::serialize(req).map_err(|e| ForwardError::Other {
            addr: addr.to_string(),
            reason: format!("encoding: {e}"),
        })?;
        self.ask(
            addr,
            LeaderRpc::Forward,
            payload,
            self.inner.forward_timeout,
        )
        .await
    }

    /// Asks leader `leader_id` for a read point (its `ReadIndex` RPC): the applied log index
    /// at which it confirmed its leadership with a quorum, after this call began.
    pub async fn read_index_to(
        &self,
        leader_id: NodeId,
        leader: &NodeInfo,
        timeout: Duration,
    ) -> Result<u64, ForwardError> {
        let payload = bincode::serialize(&()).map_err(|e| ForwardError::Other {
            addr: leader.addr.clone(),
            reason: format!("encoding: {e}"),
        })?;
        self.ask(
            self.dial_addr(leader_id, leader),
            LeaderRpc::ReadIndex,
            payload,
            timeout,
        )
        .await
    }

    /// One call to the leader's `rpc`, its reply decoded.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        rpc: LeaderRpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, ForwardError> {
        let addr = addr.to_string();
        let other = |reason: String| ForwardError::Other {
            addr: addr.clone(),
            reason,
        };
        let mut client = self.client(&addr).map_err(|e| ForwardError::Unreachable {
            addr: addr.clone(),
            reason: format!("bad address: {e}"),
        })?;
        let req = self.request(payload, timeout, None, None);
        let call = async {
            match rpc {
                LeaderRpc::Forward => client.forward(req).await,
                LeaderRpc::ReadIndex => client.read_index(req).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(other(format!("no answer within {timeout:?}"))),
            Ok(Err(status)) if is_connect_error(&status) => {
                return Err(ForwardError::Unreachable {
                    addr: addr.clone(),
                    reason: status.message().to_string(),
                })
            }
            Ok(Err(status)) => {
                return Err(other(format!("{}: {}", status.code(), status.message())))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        if !reply.error.is_empty() {
            let reject: ForwardReject = bincode::deserialize(&reply.error)
                .map_err(|e| other(format!("undecodable error reply: {e}")))?;
            return Err(match reject {
                ForwardReject::NotLeader { leader_id, leader } => ForwardError::NotLeader {
                    addr: addr.clone(),
                    leader_id,
                    leader,
                },
                ForwardReject::Failed(reason) => other(reason),
            });
        }
        bincode::deserialize(&reply.payload).map_err(|e| other(format!("undecodable reply: {e}")))
    }
}

/// The leader's RPCs a follower calls.
#[derive(Clone, Copy)]
enum LeaderRpc {
    Forward,
    ReadIndex,
}

/// Whether `status` means the connection could not be established (nothing was sent).
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Creates a [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// The connection to one peer, as openraft uses it.
pub struct PeerNetwork {
    peers: Peers,
    target: NodeId,
    node: NodeInfo,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// The error type of an RPC whose remote Raft error is `E`.
type RpcErr<E> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        // From the pool on every call (a map lookup): after a certificate reload the pool
        // holds channels with the new identity, and a replication stream picks them up.
        let mut client = match self
            .peers
            .client(self.peers.dial_addr(self.target, &self.node))
        {
            Ok(c) => c,
            Err(e) => {
                let e = std::io::Error::other(format!("bad address {:?}: {e}", self.node.addr));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let payload =
            bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // AppendEntries say how old this leader's last quorum confirmation is, plus the last
        // round trip to the target (a bound on the one-way delay): never confirmed counts as
        // infinitely old.
        let confirmed_age = matches!(rpc, Rpc::AppendEntries).then(|| {
            let rtt = self.peers.rtt(self.target).unwrap_or_default();
            self.peers
                .inner
                .confirmed
                .age()
                .map_or(Duration::MAX, |a| a.saturating_add(rtt))
        });
        let request = self
            .peers
            .request(payload, ttl, confirmed_age, Some(self.target));
        let sent = std::time::Instant::now();
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{rpc:?} to node {} timed out after {ttl:?}", self.target),
                );
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(status)) => return Err(classify(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        if matches!(rpc, Rpc::AppendEntries) {
            self.peers.set_rtt(self.target, sent.elapsed());
        }
        let bad = |e: bincode::Error| RPCError::Network(NetworkError::new(&e));
        if !reply.error.is_empty() {
            let err: RaftError<NodeId, E> = bincode::deserialize(&reply.error).map_err(bad)?;
            return Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                err,
            )));
        }
        bincode::deserialize(&reply.payload).map_err(bad)
    }
}

fn classify<E: StdError>(status: tonic::Status) -> RpcErr<E> {
    // A peer of another cluster, or one that refuses us (not a member in its view, a term it
    // finds absurd), will not start answering: treat it like a dead one so openraft backs
    // off instead of hammering it.
    let refused = matches!(
        status.code(),
        tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
    );
    if is_connect_error(&status) || refused {
        RPCError::Unreachable(Unreachable::new(&status))
    } else {
        RPCError::Network(NetworkError::new(&status))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        // openraft 0.9 wraps this call in its own timeout of one heartbeat interval, so a
        // longer deadline here would not help: what keeps a batch within that time is its
        // size, bounded by the log reader (`store::log::REPLICATION_BATCH_BYTES`) and by
        // `state::limits::MAX_COMMAND_BYTES` per entry. Snapshot chunks get
        // `timing.install_snapshot_timeout` each.
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // 100 ms doubling to 2 s: a restarting peer is found again quickly, a dead one is not
        // hammered.
        Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(100u64 << i.min(5)).min(Duration::from_secs(2))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::VoteRequest;
    use openraft::Vote;

    use super::*;

    fn node(addr: &str) -> NodeInfo {
        NodeInfo {
            addr: addr.into(),
            region: "r".into(),
        }
    }

    async fn vote(peers: &Peers, addr: &str) -> RpcErr<openraft::error::Infallible> {
        let mut factory = peers.factory();
        let mut net = factory.new_client(2, &node(addr)).await;
        let req = VoteRequest::new(Vote::new(1, 1), None);
        net.vote(req, RPCOption::new(Duration::from_millis(300)))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn failures_are_classified_for_backoff() {
        let peers = Peers::new("c", 1);
        // Nothing listens: unreachable, so openraft backs off.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(matches!(
            vote(&peers, &closed_addr).await,
            RPCError::Unreachable(_)
        ));
        // Accepts TCP but never speaks HTTP/2: a timeout, a plain network error.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        assert!(matches!(
            vote(&peers, &silent_addr).await,
            RPCError::Network(_)
        ));
        hold.abort();
        // An address that does not parse.
        assert!(matches!(
            vote(&peers, "bad addr with spaces").await,
            RPCError::Unreachable(_)
        ));
    }

    #[test]
    fn dial_overrides_and_messages() {
        let peers = Peers::new("c", 1).with_dial(HashMap::from([(2, "proxy:7000".to_string())]));
        assert_eq!(peers.dial_addr(2, &node("n2:1")), "proxy:7000");
        assert_eq!(peers.dial_addr(3, &node("n3:1")), "n3:1");
        assert_eq!(peers.cluster(), "c");
        let e = ForwardError::NotLeader {
            addr: "a:1".into(),
            leader_id: Some(3),
            leader: Some(node("n3:1")),
        };
        assert!(e.to_string().contains("the leader is node 3 at n3:1@r"));
    }
}
