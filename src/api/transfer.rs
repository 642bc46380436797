//! Leadership transfer. openraft 0.9 has no transfer command, so the leader goes quiet
//! (stops heartbeats and pauses linearizable reads, whose quorum rounds would refresh the
//! followers' leader lease) and asks the target to campaign once the other voters' leader
//! lease has run out.

use std::time::{Duration, Instant};

use tonic::{Request, Status};

use super::{Ctx, FORWARDED_HEADER};
use crate::proto::{admin_client::AdminClient, TransferLeadershipRequest};
use crate::raft::NodeId;

/// Moves leadership from this (leader) node to `to` (0 = the most up-to-date other voter).
/// Returns the new leader's id.
pub async fn transfer(ctx: &Ctx, to: NodeId) -> Result<NodeId, Status> {
    let m = ctx.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let matched = m.replication.clone().unwrap_or_default();
    let target = if to != 0 {
        if !membership.voter_ids().any(|v| v == to) {
            return Err(Status::invalid_argument(format!(
                "node {to} is not a voter"
            )));
        }
        if to == ctx.id {
            return Ok(ctx.id);
        }
        to
    } else {
        membership
            .voter_ids()
            .filter(|v| *v != ctx.id)
            .max_by_key(|v| matched.get(v).copied().flatten().map_or(0, |l| l.index))
            .ok_or_else(|| {
                Status::failed_precondition("there is no other voter to transfer leadership to")
            })?
    };
    let node = membership
        .get_node(&target)
        .cloned()
        .ok_or_else(|| Status::internal(format!("node {target} has no address")))?;
    let channel = ctx
        .links
        .node(target, &node.addr)
        .map_err(|e| Status::unavailable(format!("cannot reach node {target}: {e}")))?;
    let election_max = ctx.timing.election_timeout_max;
    // Going quiet for a target that cannot win (its log is behind, so voters refuse it)
    // would only stop renewals: first wait, answering everything as usual, until it has
    // caught up with this leader's log.
    let caught_up = ctx
        .raft
        .wait(Some(election_max * 6))
        .metrics(
            |m| {
                let last = m.last_log_index.unwrap_or(0);
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&target))
                    .and_then(|l| l.as_ref())
                    .is_some_and(|l| l.index >= last)
            },
            "transfer target caught up",
        )
        .await;
    if caught_up.is_err() {
        return Err(Status::unavailable(format!(
            "node {target} has not caught up with the leader's log within {}; nothing was \
             changed — retry once it has",
            humantime::format_duration(election_max * 6)
        )));
    }
    // While quiet, no renewal is answered: never stay quiet longer than the shortest held
    // lease can go without one, or the transfer itself would make holders fence themselves.
    let budget = {
        let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        crate::control::quiet_budget(
            view.state.services().map(|r| &r.lease),
            ctx.timing.drift,
            ctx.timing.margin,
        )
    };
    let limit = budget.map_or(election_max * 6, |b| b.min(election_max * 6));
    tracing::info!(
        target,
        limit_ms = limit.as_millis() as u64,
        "transferring leadership: going quiet so node {target} can win an election"
    );
    ctx.reads.pause(true);
    ctx.raft.runtime_config().heartbeat(false);
    let mut req = Request::new(TransferLeadershipRequest {
        to: target,
        campaign: true,
    });
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    // Lets the call through the target's auth layer without credentials: a campaign only
    // starts an election once the node has heard no leader for an election timeout.
    req.metadata_mut().insert(
        crate::auth::policy::CAMPAIGN_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let result =
        tokio::time::timeout(limit, AdminClient::new(channel).transfer_leadership(req)).await;
    ctx.raft.runtime_config().heartbeat(true);
    ctx.reads.pause(false);
    match result {
        Ok(Ok(r)) => Ok(r.into_inner().leader_id),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "node {target} did not win an election within {} (bounded by the shortest lease \
             TTL, so holders keep renewing); this node leads on",
            humantime::format_duration(limit)
        ))),
    }
}

/// The target's side: once no leader has been heard from for an election timeout, start an
/// election; repeat until some node leads.
pub async fn campaign(ctx: &Ctx) -> Result<NodeId, Status> {
    let election_max = ctx.timing.election_timeout_max;
    let deadline = Instant::now() + election_max * 5;
    let start_term = ctx.raft.metrics().borrow().current_term;
    while Instant::now() < deadline {
        let quiet = ctx
            .contact
            .age_ms()
            .is_none_or(|a| Duration::from_millis(a) > election_max);
        if quiet {
            ctx.raft
                .trigger()
                .elect()
                .await
                .map_err(|e| Status::internal(format!("raft stopped: {e}")))?;
            let waited = ctx
                .raft
                .wait(Some(election_max))
                .metrics(
                    |m| m.current_term > start_term && m.current_leader.is_some(),
                    "new leader",
                )
                .await;
            if let Ok(m) = waited {
                if let Some(l) = m.current_leader {
                    return Ok(l);
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Err(Status::deadline_exceeded(
        "no new leader was elected in time",
    ))
}
