//! `KeepAlive`: agents of the holding region renew the lease and acknowledge demotion.
//!
//! Each renewal is answered only after a read barrier that started after it arrived, so a
//! RENEWED answer proves this node led when the renewal was received: a deposed leader that
//! does not know it yet cannot extend a lease the new leader has already counted out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Ctx;
use crate::auth::Principal;
use crate::control::keeper::MAX_AGENTS_PER_SERVICE;
use crate::control::{ControlError, Renewal, RenewalMsg};
use crate::convert::lease_to_proto;
use crate::proto::{self, KeepAliveStatus};
use crate::state::names::check_name;

/// Longest agent id accepted.
pub const MAX_AGENT_ID: usize = 128;

fn check(req: &proto::KeepAliveRequest) -> Result<(), Status> {
    check_name("service", &req.service).map_err(Status::invalid_argument)?;
    check_name("region", &req.region).map_err(Status::invalid_argument)?;
    if req.agent_id.is_empty() || req.agent_id.len() > MAX_AGENT_ID {
        return Err(Status::invalid_argument(format!(
            "agent_id must be 1-{MAX_AGENT_ID} bytes (for example the host name)"
        )));
    }
    Ok(())
}

/// Numbers KeepAlive streams: a demotion ack counts only on the stream that holds the
/// agent's session.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// Serves one agent's keepalive stream.
pub fn open(
    ctx: Arc<Ctx>,
    who: Principal,
    mut incoming: Streaming<proto::KeepAliveRequest>,
) -> impl Stream<Item = Result<proto::KeepAliveResponse, Status>> {
    let (tx, out) = mpsc::channel(16);
    let mut shutdown = ctx.shutdown.clone();
    let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => return,
                m = incoming.message() => m,
            };
            let req = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return,
            };
            let received = Instant::now();
            let answer = async {
                check(&req)?;
                // An agent renews and acknowledges only its own services' and regions'
                // leases: one region's credential cannot keep (or fence) another's holder.
                who.check_scope(&req.service, Some(&req.region))?;
                ctx.reads
                    .linearize()
                    .await
                    .map_err(|e| ctx.control_status(e))?;
                let (renewal, lease) = ctx.keeper.renew(&RenewalMsg {
                    service: &req.service,
                    region: &req.region,
                    agent_id: &req.agent_id,
                    stream,
                    received,
                    demoted: req.demoted,
                    token: req.token,
                });
                let status = match renewal {
                    Renewal::Renewed { .. } => KeepAliveStatus::Renewed,
                    Renewal::Revoke { .. } => KeepAliveStatus::Revoke,
                    Renewal::NotHolder => KeepAliveStatus::NotHolder,
                    Renewal::UnknownService => {
                        return Err(Status::not_found(format!(
                            "service {:?} does not exist",
                            req.service
                        )))
                    }
                    // Leadership moved after the barrier: the agent retries with the leader.
                    Renewal::NotLeader => {
                        return Err(ctx.control_status(ControlError::NotLeader(None)))
                    }
                    Renewal::TooManyAgents => {
                        return Err(Status::resource_exhausted(format!(
                            "service {:?} already has {MAX_AGENTS_PER_SERVICE} agents renewing; \
                             stop unused agents (idle ones are forgotten after a minute)",
                            req.service
                        )))
                    }
                };
                // The lease the renewal was judged against: its TTL is the one promised.
                let lease = lease.map(|l| lease_to_proto(&req.service, &l));
                Ok(proto::KeepAliveResponse {
                    seq: req.seq,
                    status: status as i32,
                    lease,
                    leader_id: ctx.id,
                })
            }
            .await;
            let stop = answer.is_err();
            if tx.send(answer).await.is_err() || stop {
                return;
            }
        }
    });
    ReceiverStream::new(out)
}
