//! The Rust client of a baton cluster.
//!
//! A [`Client`] is given a few endpoints (`host:port`). It keeps one lazily connected
//! channel per endpoint, remembers which node is the leader, follows the `x-baton-leader`
//! hint a non-leader answers with, and moves on to the next endpoint when one is
//! unreachable — all within a per-call deadline (default 5 s).
//!
//! Retries are safe by construction: reads are retried on any node failure; writes only
//! when it is certain they were not executed (a "not the leader" answer, or a connection
//! that could not be made). Otherwise a write fails with [`ClientError::OutcomeUnknown`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton::client::ClientError> {
//! use baton::client::{Client, Consistency, LeaseOptions};
//! let client = Client::new(vec!["127.0.0.1:7101".into(), "127.0.0.1:7102".into()])?;
//! let p = client.primary("payments", Consistency::Linearizable).await?;
//! println!("{:?}", p.lease);
//!
//! // Follow every change, resuming on another node if this one dies.
//! let mut watcher = client.watch(vec!["payments".into()], 0);
//! while let Some(resp) = watcher.next().await {
//!     println!("{:?}", resp?);
//! }
//!
//! // An agent of us-east holding the lease.
//! let lease = client.keep_alive("payments", "us-east", "agent-1", LeaseOptions::default());
//! let token = lease.held().await?;
//! // ... act as primary, passing `token` to fenced writes, while lease.is_valid() ...
//! lease.lost().await;
//! # let _ = token; Ok(()) }
//! ```

mod endpoint;
mod error;
mod lease;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tracing::debug;

use crate::proto::{self, admin_client::AdminClient, coordinator_client::CoordinatorClient};

pub use crate::proto::{Consistency, LeaseMode};
pub use endpoint::{normalize_endpoint, parse_endpoints, ClientTls};
pub use error::{code_name, ClientError, LEADER_METADATA, OLDEST_REVISION_METADATA};
pub use lease::{LeaseHandle, LeaseOptions, LeaseStatus};
pub use watch::{WatchOptions, Watcher};

use endpoint::{Backoff, Pool, Route};
use error::{classify, detail, explain, Failure};

/// How a client connects and how long it keeps trying.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one call, retries included.
    pub timeout: Duration,
    /// Time allowed to open a TCP connection to one node.
    pub connect_timeout: Duration,
    /// For reads: how long one node may take before the next one is tried. Writes wait
    /// for the whole deadline on one node, since resending them could apply them twice.
    pub attempt_timeout: Duration,
    /// Interval of HTTP/2 pings on every connection.
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this is considered dead.
    pub keepalive_timeout: Duration,
    /// Largest message accepted from a node (a `ListServices` of many services is big).
    pub max_message_size: usize,
    /// Who is calling, recorded as the actor of audited changes (`x-baton-actor`); printable
    /// ASCII, at most 128 bytes. `None`: the cluster records `anonymous`.
    pub actor: Option<String>,
    /// TLS to every node (`https`); `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// Bearer token sent as `authorization: Bearer <token>` on every call, streams
    /// included (clusters with `[auth]` on require credentials).
    pub token: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(2),
            max_message_size: 64 * 1024 * 1024,
            actor: None,
            tls: None,
            token: None,
        }
    }
}

/// Longest deadline or timeout the client uses: longer values are cut to this, so no
/// arithmetic on instants can overflow and gRPC can encode every deadline.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl ClientOptions {
    /// The options with every duration cut to [`MAX_TIMEOUT`].
    fn clamped(mut self) -> Self {
        for d in [
            &mut self.timeout,
            &mut self.connect_timeout,
            &mut self.attempt_timeout,
            &mut self.keepalive_interval,
            &mut self.keepalive_timeout,
        ] {
            *d = (*d).min(MAX_TIMEOUT);
        }
        self
    }
}

/// Whether a call may be sent again after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Changes nothing: retry on any failure.
    Read,
    /// Changes state: retry only when certainly not executed.
    Write,
}

/// The status of one endpoint, or why it could not be had.
#[derive(Debug)]
pub struct EndpointStatus {
    /// The endpoint asked (`host:port`).
    pub endpoint: String,
    /// Its answer.
    pub result: Result<proto::ClusterStatusResponse, ClientError>,
}

/// A client of a baton cluster. Cheap to clone: clones share channels and what was learned
/// about the leader.
#[derive(Debug, Clone)]
pub struct Client {
    pool: Arc<Pool>,
    timeout: Duration,
}

impl Client {
    /// A client of the cluster reachable at `endpoints` (`host:port` or `http://host:port`),
    /// with default options. No connection is made until the first call.
    pub fn new(endpoints: Vec<String>) -> Result<Client, ClientError> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options(
        endpoints: Vec<String>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let options = options.clamped();
        let timeout = options.timeout;
        Ok(Client {
            pool: Arc::new(Pool::new(&endpoints, options)?),
            timeout,
        })
    }

    /// The same client (same channels, same leader knowledge) with another call deadline
    /// (at most [`MAX_TIMEOUT`]); e.g. a failover that may wait out a lease TTL.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            pool: self.pool.clone(),
            timeout: timeout.min(MAX_TIMEOUT),
        }
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Every endpoint known: the configured ones, then any learned from leader hints.
    pub fn endpoints(&self) -> Vec<String> {
        self.pool.addrs()
    }

    /// The node this client believes is the leader, if any.
    pub fn leader(&self) -> Option<String> {
        self.pool.leader()
    }

    /// Who is primary for `service`, and with which token. `Linearizable` is answered by the
    /// leader after a quorum check; `Local` by any node from its applied state.
    pub async fn primary(
        &self,
        service: &str,
        consistency: Consistency,
    ) -> Result<proto::GetPrimaryResponse, ClientError> {
        let max = self.max();
        let req = proto::GetPrimaryRequest {
            service: service.to_string(),
            consistency: consistency as i32,
        };
        self.unary(
            "GetPrimary",
            read_route(consistency),
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).get_primary(r).await },
        )
        .await
    }

    /// Every service with its lease.
    pub async fn list_services(
        &self,
        consistency: Consistency,
    ) -> Result<proto::ListServicesResponse, ClientError> {
        let max = self.max();
        let req = proto::ListServicesRequest {
            consistency: consistency as i32,
        };
        self.unary(
            "ListServices",
            read_route(consistency),
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).list_services(r).await },
        )
        .await
    }

    /// Is `token` the current token of `service` (linearizable)?
    pub async fn validate_token(
        &self,
        service: &str,
        token: u64,
    ) -> Result<proto::ValidateTokenResponse, ClientError> {
        let max = self.max();
        let req = proto::ValidateTokenRequest {
            service: service.to_string(),
            token,
            consistency: Consistency::Linearizable as i32,
        };
        self.unary(
            "ValidateToken",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).validate_token(r).await },
        )
        .await
    }

    /// Moves a service's lease to another region (or, with `dry_run`, explains the plan).
    /// Fencing may wait out the old holder's TTL: give the client a deadline longer than
    /// that ([`Client::with_timeout`]).
    pub async fn failover(
        &self,
        request: proto::FailoverRequest,
    ) -> Result<proto::FailoverResponse, ClientError> {
        let max = self.max();
        // A dry run changes nothing, so it may be resent like a read.
        let effect = if request.dry_run {
            Effect::Read
        } else {
            Effect::Write
        };
        self.unary(
            "Failover",
            Route::Leader,
            effect,
            request,
            move |ch, r| async move { coordinator(ch, max).failover(r).await },
        )
        .await
    }

    /// Moves a service's lease back to its preferred region (the first allowed candidate) as
    /// a failback run, or, with `dry_run`, explains the plan. The run may wait for the
    /// preferred region to be healthy and for the old holder to be fenced: give the client a
    /// deadline like a failover's ([`Client::with_timeout`], e.g. 60 s).
    pub async fn failback(
        &self,
        request: proto::FailbackRequest,
    ) -> Result<proto::FailoverResponse, ClientError> {
        let max = self.max();
        // A dry run changes nothing, so it may be resent like a read.
        let effect = if request.dry_run {
            Effect::Read
        } else {
            Effect::Write
        };
        self.unary(
            "Failback",
            Route::Leader,
            effect,
            request,
            move |ch, r| async move { coordinator(ch, max).failback(r).await },
        )
        .await
    }

    /// Switches a service's lease between read-write and read-only (graceful degradation);
    /// every reader and watcher sees the mode. Answers with the lease after the change.
    pub async fn set_mode(
        &self,
        service: &str,
        mode: LeaseMode,
        reason: &str,
    ) -> Result<proto::SetModeResponse, ClientError> {
        let max = self.max();
        let req = proto::SetModeRequest {
            service: service.to_string(),
            mode: mode as i32,
            reason: reason.to_string(),
        };
        self.unary(
            "SetMode",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { coordinator(ch, max).set_mode(r).await },
        )
        .await
    }

    /// Pauses (`freeze = true`) or resumes automation for a service. Manual commands
    /// (failover, failback) still work while it is frozen.
    pub async fn freeze(
        &self,
        service: &str,
        freeze: bool,
        reason: &str,
    ) -> Result<proto::FreezeResponse, ClientError> {
        let max = self.max();
        let req = proto::FreezeRequest {
            service: service.to_string(),
            freeze,
            reason: reason.to_string(),
        };
        self.unary(
            "Freeze",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { coordinator(ch, max).freeze(r).await },
        )
        .await
    }

    /// Acknowledges a flap pause of a service: automation resumes.
    pub async fn ack(
        &self,
        service: &str,
        reason: &str,
    ) -> Result<proto::AckResponse, ClientError> {
        let max = self.max();
        let req = proto::AckRequest {
            service: service.to_string(),
            reason: reason.to_string(),
        };
        self.unary(
            "Ack",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { coordinator(ch, max).ack(r).await },
        )
        .await
    }

    /// Approves (`approve = true`) or rejects a run waiting at an approval step; a rejected
    /// run ends. Answers with the run after the decision. The leader may take a while to
    /// commit the decision: give the client a deadline like a failover's.
    pub async fn approve(
        &self,
        run_id: u64,
        approve: bool,
        reason: &str,
    ) -> Result<proto::ApproveResponse, ClientError> {
        let max = self.max();
        let req = proto::ApproveRequest {
            run_id,
            approve,
            reason: reason.to_string(),
        };
        self.unary(
            "Approve",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { coordinator(ch, max).approve(r).await },
        )
        .await
    }

    /// One workflow run, with its steps and phase timestamps.
    pub async fn workflow(&self, run_id: u64) -> Result<proto::Workflow, ClientError> {
        let max = self.max();
        let req = proto::GetWorkflowRequest { run_id };
        // Any node can answer from its applied state; the leader's copy is the freshest.
        self.unary(
            "GetWorkflow",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).get_workflow(r).await },
        )
        .await
    }

    /// Workflow runs, newest first: at most `limit` (0 = the server's default of 50),
    /// optionally of one service.
    pub async fn workflows(
        &self,
        service: Option<&str>,
        limit: u32,
    ) -> Result<proto::ListWorkflowsResponse, ClientError> {
        let max = self.max();
        let req = proto::ListWorkflowsRequest {
            service: service.unwrap_or_default().to_string(),
            limit,
        };
        self.unary(
            "ListWorkflows",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).list_workflows(r).await },
        )
        .await
    }

    /// What automation would do for a service now: the holder, the next action, what blocks
    /// automation, and for every candidate region (in preference order) whether it is
    /// eligible and why not.
    pub async fn plan(&self, service: &str) -> Result<proto::PlanResponse, ClientError> {
        let max = self.max();
        let req = proto::PlanRequest {
            service: service.to_string(),
        };
        // The leader sees the freshest health observations and runs.
        self.unary(
            "Plan",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).plan(r).await },
        )
        .await
    }

    /// A page of the audit trail from `from_seq` (at most `limit` entries, 0 = the server's
    /// default), optionally of one service.
    pub async fn audit(
        &self,
        from_seq: u64,
        limit: u32,
        service: Option<&str>,
    ) -> Result<proto::ListAuditResponse, ClientError> {
        let max = self.max();
        let req = proto::ListAuditRequest {
            from_seq,
            limit,
            service: service.unwrap_or_default().to_string(),
        };
        // Any node can answer; the leader's copy is the freshest.
        self.unary(
            "ListAudit",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { coordinator(ch, max).list_audit(r).await },
        )
        .await
    }

    /// The cluster status as seen by the node that answers.
    pub async fn status(&self) -> Result<proto::ClusterStatusResponse, ClientError> {
        let max = self.max();
        self.unary(
            "ClusterStatus",
            Route::Any,
            Effect::Read,
            proto::ClusterStatusRequest {},
            move |ch, r| async move { admin(ch, max).cluster_status(r).await },
        )
        .await
    }

    /// The status of every configured endpoint, asked concurrently; an unreachable endpoint
    /// gets its error rather than failing the whole call.
    pub async fn cluster_status_all(&self) -> Vec<EndpointStatus> {
        let max = self.max();
        let timeout = self.timeout;
        let calls = self.pool.configured().into_iter().map(|node| async move {
            let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
            req.set_timeout(timeout);
            self.pool.decorate(&mut req, &self.pool.request_id());
            let answer =
                tokio::time::timeout(timeout, admin(node.channel(), max).cluster_status(req)).await;
            let result = match answer {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(match classify(&status) {
                    Failure::Answered | Failure::NotLeader { .. } => ClientError::Rpc {
                        endpoint: node.addr.clone(),
                        status,
                    },
                    Failure::NotSent | Failure::Transport => ClientError::Unavailable {
                        op: "ClusterStatus",
                        waited: timeout,
                        last: format!(
                            "{}: {}",
                            node.addr,
                            explain(detail(&status), self.pool.opts.tls.is_some())
                        ),
                    },
                }),
                Err(_) => Err(ClientError::Unavailable {
                    op: "ClusterStatus",
                    waited: timeout,
                    last: format!("{}: no answer", node.addr),
                }),
            };
            EndpointStatus {
                endpoint: node.addr.clone(),
                result,
            }
        });
        futures::future::join_all(calls).await
    }

    /// Creates or replaces a service definition.
    pub async fn put_service(
        &self,
        spec: proto::ServiceSpec,
        reason: &str,
    ) -> Result<proto::PutServiceResponse, ClientError> {
        let max = self.max();
        let req = proto::PutServiceRequest {
            spec: Some(spec),
            reason: reason.to_string(),
        };
        self.unary(
            "PutService",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { admin(ch, max).put_service(r).await },
        )
        .await
    }

    /// Deletes a service (its lease goes with it).
    pub async fn delete_service(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<proto::DeleteServiceResponse, ClientError> {
        let max = self.max();
        let req = proto::DeleteServiceRequest {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        self.unary(
            "DeleteService",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { admin(ch, max).delete_service(r).await },
        )
        .await
    }

    /// A service's definition and lease.
    pub async fn get_service(&self, name: &str) -> Result<proto::GetServiceResponse, ClientError> {
        let max = self.max();
        let req = proto::GetServiceRequest {
            name: name.to_string(),
        };
        self.unary(
            "GetService",
            Route::Leader,
            Effect::Read,
            req,
            move |ch, r| async move { admin(ch, max).get_service(r).await },
        )
        .await
    }

    /// Adds a node as a learner and, unless `learner_only`, promotes it to voter once it has
    /// caught up.
    pub async fn add_node(
        &self,
        id: u64,
        addr: &str,
        region: &str,
        learner_only: bool,
    ) -> Result<proto::AddNodeResponse, ClientError> {
        let max = self.max();
        let req = proto::AddNodeRequest {
            id,
            addr: addr.to_string(),
            region: region.to_string(),
            learner_only,
        };
        self.unary(
            "AddNode",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { admin(ch, max).add_node(r).await },
        )
        .await
    }

    /// Removes a node from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<proto::RemoveNodeResponse, ClientError> {
        let max = self.max();
        let req = proto::RemoveNodeRequest { id };
        self.unary(
            "RemoveNode",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { admin(ch, max).remove_node(r).await },
        )
        .await
    }

    /// Hands leadership to node `to` (0 = any other voter).
    pub async fn transfer_leadership(
        &self,
        to: u64,
    ) -> Result<proto::TransferLeadershipResponse, ClientError> {
        let max = self.max();
        let req = proto::TransferLeadershipRequest {
            to,
            campaign: false,
        };
        self.unary(
            "TransferLeadership",
            Route::Leader,
            Effect::Write,
            req,
            move |ch, r| async move { admin(ch, max).transfer_leadership(r).await },
        )
        .await
    }

    /// Makes the answering node build a snapshot now.
    pub async fn trigger_snapshot(&self) -> Result<proto::TriggerSnapshotResponse, ClientError> {
        let max = self.max();
        // Building a snapshot twice is harmless, so this retries like a read.
        self.unary(
            "TriggerSnapshot",
            Route::Any,
            Effect::Read,
            proto::TriggerSnapshotRequest {},
            move |ch, r| async move { admin(ch, max).trigger_snapshot(r).await },
        )
        .await
    }

    /// Opens a backup stream (`baton snapshot save`) on the leader, following it like a
    /// linearizable read; the chunks, concatenated, are the backup file and the first one
    /// carries its [`proto::SnapshotInfo`]. The deadline covers opening the stream only: the
    /// caller bounds reading it.
    pub async fn save_snapshot(
        &self,
    ) -> Result<tonic::codec::Streaming<proto::SnapshotChunk>, ClientError> {
        let max = self.max();
        self.unary(
            "SaveSnapshot",
            Route::Leader,
            Effect::Read,
            proto::SaveSnapshotRequest {},
            move |ch, r| async move { admin(ch, max).save_snapshot(r).await },
        )
        .await
    }

    /// Watches `services` (all when empty) from `start_revision` (0 = current state first).
    /// The watcher resumes on another node after a failure, without gap or duplicate.
    pub fn watch(&self, services: Vec<String>, start_revision: u64) -> Watcher {
        self.watch_with(services, start_revision, WatchOptions::default())
    }

    /// [`Client::watch`] with explicit options.
    pub fn watch_with(
        &self,
        services: Vec<String>,
        start_revision: u64,
        options: WatchOptions,
    ) -> Watcher {
        Watcher::new(self.clone(), services, start_revision, options)
    }

    /// Starts a lease session for an agent of `region`: a background task renews the
    /// service's lease with the leader and tracks how long it is certainly valid. Must be
    /// called within a Tokio runtime.
    pub fn keep_alive(
        &self,
        service: &str,
        region: &str,
        agent_id: &str,
        options: LeaseOptions,
    ) -> LeaseHandle {
        LeaseHandle::start(self.clone(), service, region, agent_id, options)
    }

    fn max(&self) -> usize {
        self.pool.opts.max_message_size
    }

    /// Runs one unary call with leader following, failover between endpoints and retries
    /// within the deadline, as `effect` allows.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        route: Route,
        effect: Effect,
        request: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.timeout;
        // One id for every attempt, so the nodes' logs of one call can be correlated.
        let request_id = self.pool.request_id();
        let mut backoff = Backoff::new();
        // Attempts since the last pause: after a whole round of failures (or of hints that
        // lead nowhere, e.g. two nodes naming each other) the client waits a little.
        let mut round = 0usize;
        let mut last = String::from("no attempt was made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Unavailable {
                    op,
                    waited: now - started,
                    last,
                });
            }
            let remaining = deadline - now;
            let attempt_limit = match effect {
                Effect::Read => remaining.min(self.pool.opts.attempt_timeout),
                Effect::Write => remaining,
            };
            let (idx, node) = self.pool.pick(route);
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(attempt_limit);
            self.pool.decorate(&mut req, &request_id);
            let answer = tokio::time::timeout(attempt_limit, call(node.channel(), req)).await;
            match answer {
                Ok(Ok(resp)) => {
                    // A follower that forwarded the call may name the leader on its answer:
                    // go there directly next time.
                    match error::success_hint(resp.metadata()) {
                        Some(leader) if route == Route::Leader && leader != node.addr => {
                            self.pool.not_leader(idx, Some(&leader));
                        }
                        _ => self.pool.succeeded(idx, route),
                    }
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => match classify(&status) {
                    Failure::NotLeader { hint } => {
                        debug!(op, node = %node.addr, ?hint, "not the leader; following");
                        last = format!("{}: {}", node.addr, status.message());
                        self.pool.not_leader(idx, hint.as_deref());
                    }
                    Failure::NotSent => {
                        let why = explain(detail(&status), self.pool.opts.tls.is_some());
                        debug!(op, node = %node.addr, error = %why, "unreachable");
                        last = format!("{}: unreachable: {why}", node.addr);
                        self.pool.failed(idx);
                    }
                    Failure::Transport if effect == Effect::Write => {
                        return Err(ClientError::OutcomeUnknown {
                            op,
                            endpoint: node.addr.clone(),
                            detail: explain(detail(&status), self.pool.opts.tls.is_some()),
                        });
                    }
                    Failure::Transport => {
                        let why = explain(detail(&status), self.pool.opts.tls.is_some());
                        debug!(op, node = %node.addr, error = %why, "transport error");
                        last = format!("{}: {why}", node.addr);
                        self.pool.failed(idx);
                    }
                    Failure::Answered
                        if effect == Effect::Read
                            && matches!(
                                status.code(),
                                Code::Unavailable
                                    | Code::Internal
                                    | Code::Unknown
                                    | Code::DeadlineExceeded
                            ) =>
                    {
                        // No leader or no quorum right now, or a node that is broken (its
                        // Raft stopped, a forward failed): another node, or a moment later,
                        // may do better.
                        debug!(op, node = %node.addr, error = %status.message(), "unavailable");
                        last = format!("{}: {}", node.addr, status.message());
                        self.pool.failed(idx);
                    }
                    Failure::Answered => {
                        return Err(ClientError::Rpc {
                            endpoint: node.addr.clone(),
                            status,
                        })
                    }
                },
                Err(_) if effect == Effect::Write => {
                    return Err(ClientError::OutcomeUnknown {
                        op,
                        endpoint: node.addr.clone(),
                        detail: format!(
                            "no answer within {}",
                            humantime::format_duration(attempt_limit)
                        ),
                    });
                }
                Err(_) => {
                    last = format!(
                        "{}: no answer within {}",
                        node.addr,
                        humantime::format_duration(attempt_limit)
                    );
                    self.pool.failed(idx);
                }
            }
            round += 1;
            if round >= self.pool.len() {
                round = 0;
                let wait = backoff
                    .step()
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Linearizable reads go to the leader; local reads to any node.
fn read_route(consistency: Consistency) -> Route {
    match consistency {
        Consistency::Local => Route::Any,
        Consistency::Linearizable | Consistency::Unspecified => Route::Leader,
    }
}

fn coordinator(ch: Channel, max: usize) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(ch)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

fn admin(ch: Channel, max: usize) -> AdminClient<Channel> {
    AdminClient::new(ch)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

#[cfg(test)]
mod tests;
