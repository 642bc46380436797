//! `baton.v1.Coordinator`: reads, token validation, switchover and the audit trail.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    actor, forwarded, principal, redact_run, redact_service, rejection_status, validate, Caller,
    Ctx,
};
use crate::control::moves::{MoveError, MoveRequest, Moves};
use crate::control::{policy, propose};
use crate::convert::{
    audit_to_proto, lease_to_proto, record_to_proto, run_to_proto, validity_to_proto,
};
use crate::proto::{self, coordinator_client::CoordinatorClient, coordinator_server::Coordinator};
use crate::state::{self, Command, Response as StateResponse, RunKind};

/// Returns the leader's answer to `request` when this node does not lead (forwarding once:
/// a forwarded request is served here, whatever this node believes).
macro_rules! forward_unless_leading {
    ($self:ident, $request:ident, $method:ident) => {
        if !$self.ctx.keeper.is_leading() && !Ctx::was_forwarded(&$request) {
            let ch = $self.ctx.leader_channel()?;
            let fwd = forwarded(&$request, $request.get_ref().clone());
            return $self
                .ctx
                .leader_answered(leader_client(ch).$method(fwd).await);
        }
    };
}

/// The Coordinator service of one node.
#[derive(Clone)]
pub struct CoordinatorService {
    ctx: Arc<Ctx>,
}

impl CoordinatorService {
    /// A service over a node's parts.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// The answer to a ListAudit from a seq compacted away: names the oldest seq kept and what
/// to do.
fn audit_compacted(requested: u64, oldest: u64, node: u64) -> Status {
    crate::wire::audit_compacted(
        requested,
        oldest,
        format!(
            "audit entry {requested} has been compacted; the oldest entry kept is {oldest} — \
             read from {oldest} (`baton audit --from {oldest}`); older entries are in the \
             archive segments (audit-archive/ in the data directory) of node {node} and the \
             other nodes that compacted them, or in earlier `baton audit export` files"
        ),
    )
}

/// Most bytes of audit entries in one ListAudit page (at least one entry is always sent):
/// large definitions are copied into `before` and `after`, and a page must stay well under
/// the message limit. The caller continues from `next_seq`.
pub const AUDIT_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The longest prefix of `entries` within [`AUDIT_PAGE_BYTES`] (never empty if `entries`
/// is not).
fn cap_page(mut entries: Vec<state::AuditEntry>) -> Vec<state::AuditEntry> {
    let mut total = 0;
    let keep = entries
        .iter()
        .position(|e| {
            total += e.actor.len()
                + e.action.len()
                + e.service.len()
                + e.reason.len()
                + e.before.len()
                + e.after.len()
                + e.outcome.len()
                + 200;
            total > AUDIT_PAGE_BYTES
        })
        .map_or(entries.len(), |i| i.max(1));
    entries.truncate(keep);
    entries
}

/// A client for forwarding to the leader that accepts answers as large as this node sends.
fn leader_client(ch: tonic::transport::Channel) -> CoordinatorClient<tonic::transport::Channel> {
    CoordinatorClient::new(ch)
        .max_decoding_message_size(crate::wire::MAX_API_MESSAGE)
        .max_encoding_message_size(crate::wire::MAX_API_MESSAGE)
}

/// Candidate regions on the wire; health details only for callers who see internals.
fn candidates_to_proto(
    candidates: Vec<policy::Candidate>,
    internals: bool,
) -> Vec<proto::CandidateEligibility> {
    candidates
        .into_iter()
        .map(|c| proto::CandidateEligibility {
            region: c.region,
            eligible: c.eligible,
            reasons: c.reasons,
            health: if internals {
                c.health.explanation
            } else {
                super::REDACTED.to_string()
            },
        })
        .collect()
}

impl CoordinatorService {
    /// Waits for a linearizable read point, or says where the leader is.
    async fn barrier(&self) -> Result<(), Status> {
        self.ctx
            .reads
            .read_point()
            .await
            .map_err(|e| self.ctx.control_status(e))
    }

    /// Serves a read here — after a linearizable read point when `lin` (a confirmation
    /// round on the leader, the leader's read index on a follower) — or, when this node
    /// cannot get one (UNAVAILABLE: no leader known, or cut off from it), forwards the
    /// request once to the leader and relays its answer.
    async fn read_or_forward<Req, Resp, L, LF, F, FF>(
        &self,
        request: &Request<Req>,
        lin: bool,
        local: L,
        forward: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        L: FnOnce() -> LF,
        LF: std::future::Future<Output = Result<Resp, Status>>,
        F: FnOnce(CoordinatorClient<tonic::transport::Channel>, Request<Req>) -> FF,
        FF: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        if lin {
            if let Err(s) = self.barrier().await {
                if Ctx::was_forwarded(request) || s.code() != tonic::Code::Unavailable {
                    return Err(s);
                }
                let ch = self.ctx.leader_channel().map_err(|_| s)?;
                let fwd = forwarded(request, request.get_ref().clone());
                return self
                    .ctx
                    .leader_answered(forward(leader_client(ch), fwd).await);
            }
            // A follower served it, and still names the leader: a client that needs one
            // (writes, KeepAlive) goes there next, and its reads save the read-index call.
            return self.ctx.leader_answered(local().await.map(Response::new));
        }
        local().await.map(Response::new)
    }

    fn staleness_ms(&self) -> u64 {
        self.ctx.staleness_ms()
    }

    async fn read_primary(
        &self,
        service: &str,
        lin: bool,
    ) -> Result<proto::GetPrimaryResponse, Status> {
        // Before the state lock: the keeper lock is always taken first (never under it).
        let staleness_ms = if lin { 0 } else { self.staleness_ms() };
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        let rec = view.state.service(service).ok_or_else(|| {
            Status::not_found(format!(
                "service {service:?} does not exist; `baton services` lists them"
            ))
        })?;
        Ok(proto::GetPrimaryResponse {
            lease: Some(lease_to_proto(service, &rec.lease)),
            revision: view.state.revision(),
            served_by: self.ctx.id,
            linearizable: lin,
            staleness_ms,
        })
    }

    /// A move of the lease by an operator (switchover or failback): `control::moves` checks
    /// it, starts the run and waits for it; this translates.
    async fn do_move(
        &self,
        req: MoveRequest<'_>,
        who: &Caller,
    ) -> Result<proto::FailoverResponse, Status> {
        let started = Instant::now();
        validate::operator_move(req.service, req.to, req.reason, req.dry_run)?;
        who.check_scope(req.service, req.to)?;
        let done = self
            .moves()
            .run(&req, who.name(), |c| who.stamp(c))
            .await
            .map_err(|e| self.move_status(e))?;
        let pre = done.precheck;
        Ok(proto::FailoverResponse {
            before: Some(lease_to_proto(req.service, &pre.before)),
            after: done.after.map(|l| lease_to_proto(req.service, &l)),
            checks: pre
                .checks
                .into_iter()
                .map(|c| proto::Check {
                    name: c.name.to_string(),
                    passed: c.passed,
                    detail: c.detail,
                })
                .collect(),
            dry_run: req.dry_run,
            fenced_by: done.fenced_by,
            fence_ms: done.fence_ms,
            total_ms: started.elapsed().as_millis() as u64,
            run_id: done.run_id,
            // Moves are for operators, who see health details.
            candidates: candidates_to_proto(pre.candidates, true),
        })
    }

    fn moves(&self) -> Moves {
        Moves {
            id: self.ctx.id,
            raft: self.ctx.raft.clone(),
            shared: self.ctx.shared.clone(),
            keeper: self.ctx.keeper.clone(),
            reads: self.ctx.reads.clone(),
            changes: self.ctx.changes.clone(),
        }
    }

    /// The status a refused or unfinished move answers with.
    fn move_status(&self, e: MoveError) -> Status {
        let text = e.to_string();
        match e {
            MoveError::Control(c) => self.ctx.control_status(c),
            MoveError::Rejected(r) => rejection_status(&r),
            MoveError::NoSuchService(_) => Status::not_found(text),
            MoveError::Unfinished(_) => Status::deadline_exceeded(text),
            MoveError::LeadershipChanged(_) => Status::unavailable(text),
            MoveError::FailbackNever(_)
            | MoveError::NoAllowedRegion
            | MoveError::AlreadyPrimary { .. }
            | MoveError::RunFailed { .. } => Status::failed_precondition(text),
        }
    }

    /// Proposes a simple command on the leader (forwarding once when this node does not lead).
    async fn simple_write(&self, who: &Caller, command: Command) -> Result<StateResponse, Status> {
        who.check_scope(command.service(), None)?;
        let (_, resp) = propose(&self.ctx.raft, who.name(), who.stamp(command))
            .await
            .map_err(|e| self.ctx.control_status(e))?;
        match resp {
            StateResponse::Rejected(r) => Err(rejection_status(&r)),
            other => Ok(other),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn get_primary(
        &self,
        request: Request<proto::GetPrimaryRequest>,
    ) -> Result<Response<proto::GetPrimaryResponse>, Status> {
        let rid = self.ctx.request_id(&request);
        let span = tracing::debug_span!("get_primary", request_id = %rid);
        async {
            let req = request.get_ref();
            let lin = validate::get_primary(req)?;
            self.read_or_forward(
                &request,
                lin,
                || self.read_primary(&req.service, lin),
                |mut c, r| async move { c.get_primary(r).await },
            )
            .await
        }
        .instrument(span)
        .await
    }

    async fn list_services(
        &self,
        request: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::ListServicesResponse>, Status> {
        let req = request.get_ref();
        let lin = validate::list_services(req)?;
        let internals = principal(&request).sees_internals();
        let local = || async {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            Ok(proto::ListServicesResponse {
                services: view
                    .state
                    .services()
                    .map(|r| redact_service(record_to_proto(r), internals))
                    .collect(),
                revision: view.state.revision(),
            })
        };
        self.read_or_forward(&request, lin, local, |mut c, r| async move {
            c.list_services(r).await
        })
        .await
    }

    type WatchStream = BoxStream<proto::WatchResponse>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self
            .ctx
            .watchers
            .admit(crate::connection::ConnInfo::remote_addr(&request))?;
        // Nodes serve Watch through `watch::WatchRoute`, which sends the encoded responses
        // as they are; this path (the generated server alone) decodes them again.
        let stream = super::watch::open(self.ctx.clone(), request.into_inner(), slot)?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.and_then(|e| e.decode())),
        )))
    }

    type KeepAliveStream = BoxStream<proto::KeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<proto::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        if !self.ctx.keeper.is_leading() {
            return Err(self.ctx.not_leader(self.ctx.leader()));
        }
        let who = principal(&request);
        let stream = super::keepalive::open(self.ctx.clone(), who, request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_token(
        &self,
        request: Request<proto::ValidateTokenRequest>,
    ) -> Result<Response<proto::ValidateTokenResponse>, Status> {
        let req = request.get_ref();
        let lin = validate::validate_token(req)?;
        let local = || async {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            // A deleted service's tokens answer SUPERSEDED (from its tombstone), with no lease.
            let validity = view
                .state
                .validate_token(&req.service, req.token)
                .ok_or_else(|| {
                    Status::not_found(format!("service {:?} does not exist", req.service))
                })?;
            let lease = view
                .state
                .service(&req.service)
                .map(|rec| lease_to_proto(&req.service, &rec.lease));
            Ok(proto::ValidateTokenResponse {
                validity: validity_to_proto(Some(validity)) as i32,
                lease,
                revision: view.state.revision(),
            })
        };
        self.read_or_forward(&request, lin, local, |mut c, r| async move {
            c.validate_token(r).await
        })
        .await
    }

    async fn failover(
        &self,
        request: Request<proto::FailoverRequest>,
    ) -> Result<Response<proto::FailoverResponse>, Status> {
        let rid = self.ctx.request_id(&request);
        let who = actor(&request);
        let span = tracing::info_span!("failover", request_id = %rid, actor = %who);
        async {
            let req = request.get_ref();
            forward_unless_leading!(self, request, failover);
            let mv = MoveRequest {
                service: &req.service,
                to: Some(&req.to_region),
                reason: &req.reason,
                expected_token: req.expected_token,
                dry_run: req.dry_run,
                kind: RunKind::Switchover,
            };
            self.do_move(mv, &who).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        let req = request.into_inner();
        let limit = validate::list_audit(&req)?;
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let read = |e: String| Status::internal(format!("reading the audit trail: {e}"));
        let entries = self
            .ctx
            .audit
            .list(req.from_seq, limit, service)
            .map_err(read)?;
        // Checked after the read: a compaction meanwhile may have taken the first entries.
        let oldest = self.ctx.audit.oldest_seq().map_err(read)?;
        if req.from_seq < oldest {
            return Err(audit_compacted(req.from_seq, oldest, self.ctx.id));
        }
        let entries = cap_page(entries);
        // The chain can only be checked on a contiguous page (no service filter).
        let chain_ok = if service.is_none() {
            let prev = match entries.first() {
                Some(first) => self
                    .ctx
                    .audit
                    .hash_before(first.seq)
                    .map_err(|e| Status::internal(format!("reading the audit trail: {e}")))?,
                None => None,
            };
            state::audit::verify(&entries, prev.as_deref()).is_ok()
        } else {
            entries.iter().all(|e| e.compute_hash() == e.hash)
        };
        let next_seq = entries.last().map_or(req.from_seq, |e| e.seq + 1);
        Ok(Response::new(proto::ListAuditResponse {
            entries: entries.iter().map(audit_to_proto).collect(),
            chain_ok,
            next_seq,
        }))
    }

    async fn failback(
        &self,
        request: Request<proto::FailbackRequest>,
    ) -> Result<Response<proto::FailoverResponse>, Status> {
        let who = actor(&request);
        let req = request.get_ref();
        forward_unless_leading!(self, request, failback);
        let mv = MoveRequest {
            service: &req.service,
            to: None,
            reason: &req.reason,
            expected_token: req.expected_token,
            dry_run: req.dry_run,
            kind: RunKind::Failback,
        };
        self.do_move(mv, &who).await.map(Response::new)
    }

    async fn set_mode(
        &self,
        request: Request<proto::SetModeRequest>,
    ) -> Result<Response<proto::SetModeResponse>, Status> {
        let who = actor(&request);
        let req = request.get_ref();
        let mode = validate::set_mode(req)?;
        forward_unless_leading!(self, request, set_mode);
        let resp = self
            .simple_write(
                &who,
                Command::SetMode {
                    service: req.service.clone(),
                    mode,
                    reason: req.reason.clone(),
                },
            )
            .await?;
        let lease = match resp {
            StateResponse::Applied { lease, .. } => lease.map(|l| lease_to_proto(&req.service, &l)),
            _ => None,
        };
        Ok(Response::new(proto::SetModeResponse { lease }))
    }

    async fn freeze(
        &self,
        request: Request<proto::FreezeRequest>,
    ) -> Result<Response<proto::FreezeResponse>, Status> {
        let who = actor(&request);
        let req = request.get_ref();
        validate::freeze(req)?;
        forward_unless_leading!(self, request, freeze);
        self.simple_write(
            &who,
            Command::SetFrozen {
                service: req.service.clone(),
                frozen: req.freeze,
                reason: req.reason.clone(),
            },
        )
        .await?;
        Ok(Response::new(proto::FreezeResponse { frozen: req.freeze }))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let who = actor(&request);
        let req = request.get_ref();
        validate::ack(req)?;
        forward_unless_leading!(self, request, ack);
        self.simple_write(
            &who,
            Command::AckFlap {
                service: req.service.clone(),
                reason: req.reason.clone(),
            },
        )
        .await?;
        Ok(Response::new(proto::AckResponse {}))
    }

    async fn approve(
        &self,
        request: Request<proto::ApproveRequest>,
    ) -> Result<Response<proto::ApproveResponse>, Status> {
        let who = actor(&request);
        let req = request.get_ref();
        validate::approve(req)?;
        forward_unless_leading!(self, request, approve);
        let service = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state
                .run(req.run_id)
                .map(|r| r.service.clone())
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "there is no run {}; `baton workflows` lists them",
                        req.run_id
                    ))
                })?
        };
        self.simple_write(
            &who,
            Command::DecideRun {
                service,
                run: req.run_id,
                approve: req.approve,
                reason: req.reason.clone(),
            },
        )
        .await?;
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(proto::ApproveResponse {
            workflow: view.state.run(req.run_id).map(run_to_proto),
        }))
    }

    async fn get_workflow(
        &self,
        request: Request<proto::GetWorkflowRequest>,
    ) -> Result<Response<proto::Workflow>, Status> {
        let internals = principal(&request).sees_internals();
        let id = request.get_ref().run_id;
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        view.state
            .run(id)
            .map(|r| Response::new(redact_run(run_to_proto(r), internals)))
            .ok_or_else(|| Status::not_found(format!("there is no run {id} (only the last 1000 finished runs are kept; the audit trail has all)")))
    }

    async fn list_workflows(
        &self,
        request: Request<proto::ListWorkflowsRequest>,
    ) -> Result<Response<proto::ListWorkflowsResponse>, Status> {
        let internals = principal(&request).sees_internals();
        let req = request.into_inner();
        let limit = validate::list_workflows(&req)?;
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        let workflows = view
            .state
            .runs()
            .rev()
            .filter(|r| req.service.is_empty() || r.service == req.service)
            .take(limit)
            .map(|r| redact_run(run_to_proto(r), internals))
            .collect();
        Ok(Response::new(proto::ListWorkflowsResponse { workflows }))
    }

    async fn plan(
        &self,
        request: Request<proto::PlanRequest>,
    ) -> Result<Response<proto::PlanResponse>, Status> {
        let internals = principal(&request).sees_internals();
        let req = request.into_inner();
        validate::plan(&req)?;
        let (rec, view) = self
            .moves()
            .plan(&req.service)
            .map_err(|e| self.move_status(e))?;
        Ok(Response::new(proto::PlanResponse {
            service: req.service.clone(),
            holder_region: rec.lease.holder.clone().unwrap_or_default(),
            candidates: candidates_to_proto(view.candidates, internals),
            blockers: view.blockers,
            failover_steps: view.failover_steps.iter().map(|s| s.to_string()).collect(),
            next_action: view.next_action,
        }))
    }
}
