//! `KeepAlive`: agents of the holding region renew the lease and acknowledge demotion.
//!
//! Each renewal is answered only after a read barrier that started after it arrived, so a
//! RENEWED answer proves this node led when the renewal was received: a deposed leader that
//! does not know it yet cannot extend a lease the new leader has already counted out.
//!
//! Changes are also pushed: the moment a revocation of the lease held by the stream's region
//! is applied, the stream gets an unsolicited REVOKE (seq 0), so a planned switchover does
//! not wait for the holder's next renewal (a third of the TTL) to start its demotion; the
//! moment the region is granted the lease, it gets an unsolicited UNSPECIFIED carrying the
//! new lease, which means "renew now" (validity only ever comes from a renewal's send time).
//! A push carries only a committed fact, and the demotion ack it leads to counts under the
//! same rules as any other (for its token, on this stream, after `on_demote` succeeded).

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
use crate::raft::Change;
use crate::state::{EventKind, LeaseState};

pub use crate::wire::MAX_AGENT_ID;

/// KeepAlive streams open now (for metrics).
pub static OPEN_STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one open stream until dropped.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
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
    let mut changes = ctx.changes.subscribe();
    tokio::spawn(async move {
        let _open = OpenStream::new();
        // The (service, region) this stream renews for, once a renewal was answered.
        let mut renewing: Option<(String, String)> = None;
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => return,
                m = incoming.message() => m,
                c = changes.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = c {
                        return;
                    }
                    if let (Ok(Change::Events { events, .. }), Some((service, region))) =
                        (c, renewing.as_ref())
                    {
                        for e in events.iter().filter(|e| {
                            &e.service == service && e.lease.holder.as_ref() == Some(region)
                        }) {
                            let status = match (e.kind, e.lease.state) {
                                (EventKind::Revoking, LeaseState::Revoking) => {
                                    KeepAliveStatus::Revoke
                                }
                                // "Renew now": a grant's validity must come from a renewal.
                                (EventKind::Granted, LeaseState::Held) => {
                                    KeepAliveStatus::Unspecified
                                }
                                _ => continue,
                            };
                            let push = proto::KeepAliveResponse {
                                seq: 0,
                                status: status as i32,
                                lease: Some(lease_to_proto(service, &e.lease)),
                                leader_id: ctx.id,
                            };
                            // A full buffer means answers are queued anyway: the next one
                            // carries the revocation.
                            let _ = tx.try_send(Ok(push));
                        }
                    }
                    // A lagging subscriber only misses pushes; renewals still tell.
                    continue;
                }
            };
            let req = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return,
            };
            let received = Instant::now();
            let answer = async {
                super::validate::keep_alive(&req)?;
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
                Ok::<_, Status>((status, lease))
            }
            .await
            .map(|(status, lease)| {
                renewing = Some((req.service.clone(), req.region.clone()));
                (status, lease)
            })
            .map(|(status, lease)| proto::KeepAliveResponse {
                seq: req.seq,
                status: status as i32,
                lease,
                leader_id: ctx.id,
            });
            let stop = answer.is_err();
            if tx.send(answer).await.is_err() || stop {
                return;
            }
        }
    });
    ReceiverStream::new(out)
}
