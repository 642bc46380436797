//! `baton.v1.Coordinator`: reads, token validation, switchover and the audit trail.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    actor, forwarded, principal, redact_run, redact_service, rejection_status, validate, Caller,
    Ctx,
};
use crate::control::controller::voters;
use crate::control::{policy, propose, wall_clock_ms};
use crate::convert::{
    audit_to_proto, lease_to_proto, record_to_proto, run_to_proto, validity_to_proto,
};
use crate::proto::{self, coordinator_client::CoordinatorClient, coordinator_server::Coordinator};
use crate::state::{
    self, plan_for, Command, FailbackMode, LeaseState, Response as StateResponse, RunKind,
    RunState, StepKind, Trigger,
};

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
        .max_decoding_message_size(crate::node::MAX_API_MESSAGE)
        .max_encoding_message_size(crate::node::MAX_API_MESSAGE)
}

impl CoordinatorService {
    /// Waits for a linearizable read point, or says where the leader is.
    async fn barrier(&self) -> Result<(), Status> {
        self.ctx
            .reads
            .linearize()
            .await
            .map_err(|e| self.ctx.control_status(e))
    }

    fn staleness_ms(&self) -> u64 {
        self.ctx.staleness_ms()
    }

    async fn read_primary(
        &self,
        service: &str,
        lin: bool,
    ) -> Result<proto::GetPrimaryResponse, Status> {
        if lin {
            self.barrier().await?;
        }
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

    /// A move of the lease by an operator (switchover or failback), carried out as a
    /// workflow run that the controller drives; returns when the run ends.
    #[allow(clippy::too_many_arguments)]
    async fn do_move(
        &self,
        service: &str,
        to: Option<&str>,
        reason: &str,
        expected_token: u64,
        dry_run: bool,
        kind: RunKind,
        who: &Caller,
    ) -> Result<proto::FailoverResponse, Status> {
        let started = Instant::now();
        validate::operator_move(service, to, reason, dry_run)?;
        who.check_scope(service, to)?;
        self.barrier().await?;
        let rec = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state.service(service).cloned().ok_or_else(|| {
                Status::not_found(format!(
                    "service {service:?} does not exist; `baton services` lists them"
                ))
            })?
        };
        let (spec, before) = (rec.spec.clone(), rec.lease.clone());
        if kind == RunKind::Failback && spec.failback == FailbackMode::Never {
            return Err(Status::failed_precondition(format!(
                "failback is `never` for {service:?}: use `baton failover` to move it explicitly"
            )));
        }
        let to = match to {
            Some(t) => t.to_string(),
            None => spec
                .regions
                .iter()
                .find(|r| spec.is_allowed(r))
                .cloned()
                .ok_or_else(|| Status::failed_precondition("the service has no allowed region"))?,
        };
        let voters = voters(&self.ctx.raft);
        let candidates: Vec<proto::CandidateEligibility> = policy::candidates(&rec, &voters)
            .into_iter()
            .map(|c| proto::CandidateEligibility {
                region: c.region,
                eligible: c.eligible,
                reasons: c.reasons,
                health: c.health.explanation,
            })
            .collect();
        let mut checks = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            checks.push(proto::Check {
                name: name.to_string(),
                passed,
                detail,
            });
            passed
        };
        let region_ok = match state::check_region(&spec, &to) {
            Ok(()) => check(
                "target-allowed",
                true,
                format!("{to} is an allowed candidate"),
            ),
            Err(e) => {
                let _ = check("target-allowed", false, e.to_string());
                if !dry_run {
                    return Err(rejection_status(&e));
                }
                false
            }
        };
        let health = policy::region_health(&rec, &to, &voters);
        check(
            "target-healthy",
            health.health != policy::Health::Down,
            format!("{to}: {}", health.explanation),
        );
        let already = before.primary() == Some(to.as_str());
        check(
            "target-not-primary",
            !already,
            if already {
                format!("{to} already holds the lease (token {})", before.token)
            } else {
                format!(
                    "current holder: {}",
                    before.holder.as_deref().unwrap_or("none")
                )
            },
        );
        let token_ok = expected_token == 0 || expected_token == before.token;
        check(
            "expected-token",
            token_ok,
            if expected_token == 0 {
                "not checked (no expected token given)".to_string()
            } else if token_ok {
                format!("current token is {}", before.token)
            } else {
                format!("current token is {}, not {expected_token}", before.token)
            },
        );
        let idle = rec.active_run.is_none();
        check(
            "no-run-in-progress",
            idle,
            match rec.active_run {
                Some(r) => format!("run {r} is in progress"),
                None => "no run in progress".into(),
            },
        );
        check(
            "quorum",
            true,
            format!("leader {} confirmed with a quorum", self.ctx.id),
        );
        let fence_plan = match before.state {
            LeaseState::Held => format!(
                "revoke token {} from {}; wait for its agents' demotion acks or its TTL ({} ms + drift + margin)",
                before.token,
                before.holder.as_deref().unwrap_or(""),
                before.ttl_ms
            ),
            LeaseState::Revoking => format!("token {} is already being revoked; wait for acks or the TTL", before.token),
            LeaseState::Vacant => "lease is vacant: nothing to fence".to_string(),
        };
        let plan = plan_for(&spec, kind);
        let steps: Vec<&str> = plan.iter().map(|s| s.kind.name()).collect();
        check(
            "plan",
            true,
            format!(
                "{} run: {}; {fence_plan}; then grant {to} a new token",
                kind.as_str(),
                steps.join(" -> ")
            ),
        );
        let _ = region_ok;
        let response = |after: Option<proto::Lease>,
                        fenced_by: String,
                        fence_ms: u64,
                        run_id: u64,
                        checks,
                        candidates| {
            proto::FailoverResponse {
                before: Some(lease_to_proto(service, &before)),
                after,
                checks,
                dry_run,
                fenced_by,
                fence_ms,
                total_ms: started.elapsed().as_millis() as u64,
                run_id,
                candidates,
            }
        };
        if dry_run {
            return Ok(response(None, "none".into(), 0, 0, checks, candidates));
        }
        if already {
            return Err(Status::failed_precondition(format!(
                "{to} is already primary for {service} (token {}); nothing to do",
                before.token
            )));
        }
        if !token_ok {
            return Err(rejection_status(&state::Rejection::TokenMismatch {
                service: service.to_string(),
                expected: expected_token,
                actual: before.token,
            }));
        }
        let mut changes = self.ctx.changes.subscribe();
        let (run_id, resp) = propose(
            &self.ctx.raft,
            who.name(),
            who.stamp(Command::StartRun {
                service: service.to_string(),
                kind,
                trigger: Trigger::Operator,
                to: to.clone(),
                plan,
                reason: reason.to_string(),
                detected_ms: wall_clock_ms(),
                // The check above read the state before this entry: repeat it atomically.
                expected_token: (expected_token != 0).then_some(expected_token),
            }),
        )
        .await
        .map_err(|e| self.ctx.control_status(e))?;
        if let StateResponse::Rejected(r) = resp {
            return Err(rejection_status(&r));
        }
        // Wait for the controller to carry the run out (it survives a leader change; this
        // call does not, and then says so).
        let deadline = Instant::now()
            + Duration::from_millis(before.ttl_ms.saturating_mul(3))
            + Duration::from_secs(60);
        let run = loop {
            let run = {
                let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                view.state.run(run_id).cloned()
            };
            if let Some(run) = run {
                if run.state.is_final() {
                    break run;
                }
            }
            if Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "run {run_id} has not finished yet; follow it with `baton workflow {run_id}`"
                )));
            }
            if !self.ctx.keeper.is_leading() {
                return Err(Status::unavailable(format!(
                    "leadership changed during run {run_id}; the new leader resumes it — follow it with `baton workflow {run_id}`"
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        };
        if run.state != RunState::Succeeded {
            let failed_step = run
                .steps
                .get(run.current)
                .map_or("?", |s| s.spec.kind.name());
            return Err(Status::failed_precondition(format!(
                "run {run_id} {} at step {failed_step}: {}",
                run.state.as_str(),
                run.error.as_deref().unwrap_or("no detail")
            )));
        }
        let after = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state
                .service(service)
                .map(|r| lease_to_proto(service, &r.lease))
        };
        let fence = run.steps.iter().find(|s| s.spec.kind == StepKind::Fence);
        let fenced_by = fence.map_or("none".to_string(), |s| s.detail.clone());
        let fence_ms = fence
            .and_then(|s| Some((s.finished_ms? - s.started_ms?).max(0) as u64))
            .unwrap_or(0);
        tracing::info!(%service, %to, run = run_id, fenced_by = %fenced_by, fence_ms, "{} complete", kind.as_str());
        Ok(response(
            after, fenced_by, fence_ms, run_id, checks, candidates,
        ))
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
            match self.read_primary(&req.service, lin).await {
                Err(s)
                    if lin
                        && s.code() == tonic::Code::Unavailable
                        && !Ctx::was_forwarded(&request) =>
                {
                    let ch = match self.ctx.leader_channel() {
                        Ok(ch) => ch,
                        Err(_) => return Err(s),
                    };
                    let fwd = forwarded(&request, req.clone());
                    self.ctx
                        .leader_answered(leader_client(ch).get_primary(fwd).await)
                }
                other => other.map(Response::new),
            }
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
        if lin {
            if let Err(s) = self.barrier().await {
                if Ctx::was_forwarded(&request) || s.code() != tonic::Code::Unavailable {
                    return Err(s);
                }
                let ch = self.ctx.leader_channel().map_err(|_| s)?;
                return self.ctx.leader_answered(
                    leader_client(ch)
                        .list_services(forwarded(&request, *req))
                        .await,
                );
            }
        }
        let internals = principal(&request).sees_internals();
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(proto::ListServicesResponse {
            services: view
                .state
                .services()
                .map(|r| redact_service(record_to_proto(r), internals))
                .collect(),
            revision: view.state.revision(),
        }))
    }

    type WatchStream = BoxStream<proto::WatchResponse>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self
            .ctx
            .watchers
            .admit(crate::node::conn::ConnInfo::remote_addr(&request))?;
        let stream = super::watch::open(self.ctx.clone(), request.into_inner(), slot)?;
        Ok(Response::new(Box::pin(stream)))
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
        if lin {
            if let Err(s) = self.barrier().await {
                if Ctx::was_forwarded(&request) || s.code() != tonic::Code::Unavailable {
                    return Err(s);
                }
                let ch = self.ctx.leader_channel().map_err(|_| s)?;
                return self.ctx.leader_answered(
                    leader_client(ch)
                        .validate_token(forwarded(&request, req.clone()))
                        .await,
                );
            }
        }
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
        Ok(Response::new(proto::ValidateTokenResponse {
            validity: validity_to_proto(Some(validity)) as i32,
            lease,
            revision: view.state.revision(),
        }))
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
            self.do_move(
                &req.service,
                Some(&req.to_region),
                &req.reason,
                req.expected_token,
                req.dry_run,
                RunKind::Switchover,
                &who,
            )
            .await
            .map(Response::new)
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
        let entries = self
            .ctx
            .audit
            .list(req.from_seq, limit, service)
            .map_err(|e| Status::internal(format!("reading the audit trail: {e}")))?;
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
        self.do_move(
            &req.service,
            None,
            &req.reason,
            req.expected_token,
            req.dry_run,
            RunKind::Failback,
            &who,
        )
        .await
        .map(Response::new)
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
        let rec = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state.service(&req.service).cloned().ok_or_else(|| {
                Status::not_found(format!("service {:?} does not exist", req.service))
            })?
        };
        let voters = voters(&self.ctx.raft);
        let now = wall_clock_ms();
        let live = self
            .ctx
            .keeper
            .live_regions(&req.service, Duration::from_millis(rec.lease.ttl_ms));
        let next_action = match policy::decide(&rec, &voters, &live, now) {
            policy::Decision::Wait(why) => format!("nothing: {why}"),
            policy::Decision::Start {
                kind, to, reason, ..
            } => format!("start a {} run to {to}: {reason}", kind.as_str()),
        };
        Ok(Response::new(proto::PlanResponse {
            service: req.service.clone(),
            holder_region: rec.lease.holder.clone().unwrap_or_default(),
            candidates: policy::candidates(&rec, &voters)
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
                .collect(),
            blockers: policy::blockers(&rec, now),
            failover_steps: plan_for(&rec.spec, RunKind::Failover)
                .iter()
                .map(|s| s.kind.name().to_string())
                .collect(),
            next_action,
        }))
    }
}
