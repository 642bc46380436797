//! `baton.v1.Coordinator`: reads, token validation, switchover and the audit trail.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{actor, forwarded, rejection_status, Ctx};
use crate::control::{propose, ControlError, FenceOutcome};
use crate::convert::{audit_to_proto, lease_to_proto, record_to_proto, validity_to_proto};
use crate::proto::{
    self, coordinator_client::CoordinatorClient, coordinator_server::Coordinator, Consistency,
};
use crate::state::names::{check_name, check_reason};
use crate::state::{self, Command, LeaseState, Response as StateResponse};

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

fn invalid(m: String) -> Status {
    Status::invalid_argument(m)
}

fn linearizable(c: i32) -> bool {
    Consistency::try_from(c).unwrap_or(Consistency::Unspecified) != Consistency::Local
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
        if self.ctx.keeper.is_leading() {
            return 0;
        }
        self.ctx.contact.age_ms().unwrap_or(u64::MAX)
    }

    async fn read_primary(
        &self,
        service: &str,
        lin: bool,
    ) -> Result<proto::GetPrimaryResponse, Status> {
        if lin {
            self.barrier().await?;
        }
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
            staleness_ms: if lin { 0 } else { self.staleness_ms() },
        })
    }

    async fn do_failover(
        &self,
        req: &proto::FailoverRequest,
        who: &str,
    ) -> Result<proto::FailoverResponse, Status> {
        let started = Instant::now();
        check_name("service", &req.service).map_err(invalid)?;
        check_name("region", &req.to_region).map_err(invalid)?;
        if !req.dry_run {
            check_reason(&req.reason).map_err(invalid)?;
        }
        self.barrier().await?;
        let (spec, before) = {
            let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
            let rec = view.state.service(&req.service).ok_or_else(|| {
                Status::not_found(format!(
                    "service {:?} does not exist; `baton services` lists them",
                    req.service
                ))
            })?;
            (rec.spec.clone(), rec.lease.clone())
        };
        let mut checks = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            checks.push(proto::Check {
                name: name.to_string(),
                passed,
                detail,
            });
            passed
        };
        let region_ok = match state::check_region(&spec, &req.to_region) {
            Ok(()) => check(
                "target-allowed",
                true,
                format!("{} is an allowed candidate", req.to_region),
            ),
            Err(e) => {
                let _ = check("target-allowed", false, e.to_string());
                if !req.dry_run {
                    return Err(rejection_status(&e));
                }
                false
            }
        };
        let already = before.primary() == Some(req.to_region.as_str());
        let not_primary = check(
            "target-not-primary",
            !already,
            if already {
                format!(
                    "{} already holds the lease (token {})",
                    req.to_region, before.token
                )
            } else {
                format!(
                    "current holder: {}",
                    before.holder.as_deref().unwrap_or("none")
                )
            },
        );
        let token_ok = req.expected_token == 0 || req.expected_token == before.token;
        check(
            "expected-token",
            token_ok,
            if req.expected_token == 0 {
                "not checked (no expected token given)".to_string()
            } else if token_ok {
                format!("current token is {}", before.token)
            } else {
                format!(
                    "current token is {}, not {}",
                    before.token, req.expected_token
                )
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
            LeaseState::Revoking => format!(
                "token {} is already being revoked; wait for demotion acks or the TTL",
                before.token
            ),
            LeaseState::Vacant => "lease is vacant: nothing to fence".to_string(),
        };
        check(
            "plan",
            true,
            format!("{fence_plan}; then grant {} a new token", req.to_region),
        );
        let all_pass = region_ok && not_primary && token_ok;
        if req.dry_run {
            return Ok(proto::FailoverResponse {
                before: Some(lease_to_proto(&req.service, &before)),
                after: None,
                checks,
                dry_run: true,
                fenced_by: "none".into(),
                fence_ms: 0,
                total_ms: started.elapsed().as_millis() as u64,
            });
        }
        if already {
            return Err(Status::failed_precondition(format!(
                "{} is already primary for {} (token {}); nothing to do",
                req.to_region, req.service, before.token
            )));
        }
        if !token_ok {
            return Err(rejection_status(&state::Rejection::TokenMismatch {
                service: req.service.clone(),
                expected: req.expected_token,
                actual: before.token,
            }));
        }
        debug_assert!(all_pass);
        let _guard = self
            .ctx
            .keeper
            .begin_switchover(&req.service)
            .map_err(|e| self.ctx.control_status(e))?;
        let token = before.token;
        if before.state == LeaseState::Held {
            let (_, resp) = propose(
                &self.ctx.raft,
                who,
                Command::Revoke {
                    service: req.service.clone(),
                    token,
                    reason: req.reason.clone(),
                },
            )
            .await
            .map_err(|e| self.ctx.control_status(e))?;
            if let StateResponse::Rejected(r) = resp {
                return Err(rejection_status(&r));
            }
        }
        let fence_started = Instant::now();
        let fenced_by = if before.state == LeaseState::Vacant {
            FenceOutcome::Vacant
        } else {
            self.ctx
                .keeper
                .wait_fenced(&req.service, token)
                .await
                .map_err(|e| match e {
                    ControlError::LeadershipLost(_) => Status::unavailable(format!(
                        "leadership changed while fencing {}: the lease (token {token}) is revoked and no \
                         region holds it; run the failover again",
                        req.service
                    )),
                    other => self.ctx.control_status(other),
                })?
        };
        let fence_ms = fence_started.elapsed().as_millis() as u64;
        let (_, resp) = propose(
            &self.ctx.raft,
            who,
            Command::Grant {
                service: req.service.clone(),
                region: req.to_region.clone(),
                expected_token: token,
                reason: req.reason.clone(),
            },
        )
        .await
        .map_err(|e| self.ctx.control_status(e))?;
        let after = match resp {
            StateResponse::Applied { lease: Some(l), .. } => l,
            StateResponse::Rejected(r) => return Err(rejection_status(&r)),
            other => {
                return Err(Status::internal(format!(
                    "unexpected answer to a grant: {other:?}"
                )))
            }
        };
        tracing::info!(service = %req.service, to = %req.to_region, token = after.token,
            fenced_by = fenced_by.as_str(), fence_ms, "switchover complete");
        Ok(proto::FailoverResponse {
            before: Some(lease_to_proto(&req.service, &before)),
            after: Some(lease_to_proto(&req.service, &after)),
            checks,
            dry_run: false,
            fenced_by: fenced_by.as_str().to_string(),
            fence_ms,
            total_ms: started.elapsed().as_millis() as u64,
        })
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
            check_name("service", &req.service).map_err(invalid)?;
            let lin = linearizable(req.consistency);
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
                    CoordinatorClient::new(ch).get_primary(fwd).await
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
        let lin = linearizable(req.consistency);
        if lin {
            if let Err(s) = self.barrier().await {
                if Ctx::was_forwarded(&request) || s.code() != tonic::Code::Unavailable {
                    return Err(s);
                }
                let ch = self.ctx.leader_channel().map_err(|_| s)?;
                return CoordinatorClient::new(ch)
                    .list_services(forwarded(&request, req.clone()))
                    .await;
            }
        }
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(proto::ListServicesResponse {
            services: view.state.services().map(record_to_proto).collect(),
            revision: view.state.revision(),
        }))
    }

    type WatchStream = BoxStream<proto::WatchResponse>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = super::watch::open(self.ctx.clone(), request.into_inner())?;
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
        let stream = super::keepalive::open(self.ctx.clone(), request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_token(
        &self,
        request: Request<proto::ValidateTokenRequest>,
    ) -> Result<Response<proto::ValidateTokenResponse>, Status> {
        let req = request.get_ref();
        check_name("service", &req.service).map_err(invalid)?;
        let lin = linearizable(req.consistency);
        if lin {
            if let Err(s) = self.barrier().await {
                if Ctx::was_forwarded(&request) || s.code() != tonic::Code::Unavailable {
                    return Err(s);
                }
                let ch = self.ctx.leader_channel().map_err(|_| s)?;
                return CoordinatorClient::new(ch)
                    .validate_token(forwarded(&request, req.clone()))
                    .await;
            }
        }
        let view = self.ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        let rec = view.state.service(&req.service).ok_or_else(|| {
            Status::not_found(format!("service {:?} does not exist", req.service))
        })?;
        Ok(Response::new(proto::ValidateTokenResponse {
            validity: validity_to_proto(view.state.validate_token(&req.service, req.token)) as i32,
            lease: Some(lease_to_proto(&req.service, &rec.lease)),
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
            if !self.ctx.keeper.is_leading() && !Ctx::was_forwarded(&request) {
                let ch = self.ctx.leader_channel()?;
                return CoordinatorClient::new(ch)
                    .failover(forwarded(&request, req.clone()))
                    .await;
            }
            self.do_failover(req, &who).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        let req = request.into_inner();
        if !req.service.is_empty() {
            check_name("service", &req.service).map_err(invalid)?;
        }
        let limit = match req.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let entries = self
            .ctx
            .audit
            .list(req.from_seq, limit, service)
            .map_err(|e| Status::internal(format!("reading the audit trail: {e}")))?;
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
}
