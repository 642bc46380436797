//! Leadership transfer. openraft 0.9 has no transfer command, so the leader goes quiet
//! (stops heartbeats and, through [`Quiet::pause_reads`], the quorum rounds of linearizable
//! reads, which would refresh the followers' leader lease) and asks the target to campaign
//! once the other voters' leader lease has run out.

use std::time::{Duration, Instant};

use tonic::Request;

use super::{ChannelPool, LeaderContact, NodeId, Raft};
use crate::proto::{admin_client::AdminClient, TransferLeadershipRequest};

/// What a transfer needs from the rest of the node.
pub struct Quiet<'a> {
    /// Stops (`true`) and restarts (`false`) this leader's read quorum rounds.
    pub pause_reads: &'a (dyn Fn(bool) + Send + Sync),
    /// How long the leader may answer no renewal without a holder's validity running out
    /// (`None` when nothing is held); asked once the target has caught up.
    pub budget: &'a (dyn Fn() -> Option<Duration> + Send + Sync),
}

/// Why a transfer did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransferError {
    /// The target named is not a voter.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// This is the only voter.
    #[error("there is no other voter to transfer leadership to")]
    NoOtherVoter,
    /// The membership has no address for the target.
    #[error("node {0} has no address")]
    NoAddress(NodeId),
    /// The target cannot be dialled.
    #[error("cannot reach node {node}: {reason}")]
    Unreachable {
        /// The target.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// The target's log is behind; nothing was changed.
    #[error(
        "node {node} has not caught up with the leader's log within {within}; nothing was \
         changed — retry once it has"
    )]
    NotCaughtUp {
        /// The target.
        node: NodeId,
        /// How long this waited.
        within: String,
    },
    /// The target did not win in time; this node leads on.
    #[error(
        "node {node} did not win an election within {within} (bounded by the shortest lease \
         TTL, so holders keep renewing); this node leads on"
    )]
    NotElected {
        /// The target.
        node: NodeId,
        /// How long this waited.
        within: String,
    },
    /// The target refused the campaign.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// Raft stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// The campaigning node saw no new leader in time.
    #[error("no new leader was elected in time")]
    NoNewLeader,
}

/// Moves leadership from this (leader) node `me` to `to` (0 = the most up-to-date other
/// voter), dialling the target's client listener through `links`. Returns the new leader.
pub async fn transfer(
    raft: &Raft,
    me: NodeId,
    links: &ChannelPool,
    election_max: Duration,
    to: NodeId,
    quiet: Quiet<'_>,
) -> Result<NodeId, TransferError> {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let matched = m.replication.clone().unwrap_or_default();
    let target = if to != 0 {
        if !membership.voter_ids().any(|v| v == to) {
            return Err(TransferError::NotAVoter(to));
        }
        if to == me {
            return Ok(me);
        }
        to
    } else {
        membership
            .voter_ids()
            .filter(|v| *v != me)
            .max_by_key(|v| matched.get(v).copied().flatten().map_or(0, |l| l.index))
            .ok_or(TransferError::NoOtherVoter)?
    };
    let node = membership
        .get_node(&target)
        .cloned()
        .ok_or(TransferError::NoAddress(target))?;
    let channel = links
        .node(target, &node.addr)
        .map_err(|e| TransferError::Unreachable {
            node: target,
            reason: e.to_string(),
        })?;
    // Going quiet for a target that cannot win (its log is behind, so voters refuse it)
    // would only stop renewals: first wait, answering everything as usual, until it has
    // caught up with this leader's log.
    let caught_up = raft
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
        return Err(TransferError::NotCaughtUp {
            node: target,
            within: humantime::format_duration(election_max * 6).to_string(),
        });
    }
    // While quiet, no renewal is answered: never stay quiet longer than the shortest held
    // lease can go without one, or the transfer itself would make holders fence themselves.
    let limit = (quiet.budget)().map_or(election_max * 6, |b| b.min(election_max * 6));
    tracing::info!(
        target,
        limit_ms = limit.as_millis() as u64,
        "transferring leadership: going quiet so node {target} can win an election"
    );
    (quiet.pause_reads)(true);
    raft.runtime_config().heartbeat(false);
    let mut req = Request::new(TransferLeadershipRequest {
        to: target,
        campaign: true,
    });
    req.metadata_mut().insert(
        crate::wire::FORWARDED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    // Lets the call through the target's auth layer without credentials: a campaign only
    // starts an election once the node has heard no leader for an election timeout.
    req.metadata_mut().insert(
        crate::wire::CAMPAIGN_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let result =
        tokio::time::timeout(limit, AdminClient::new(channel).transfer_leadership(req)).await;
    raft.runtime_config().heartbeat(true);
    (quiet.pause_reads)(false);
    match result {
        Ok(Ok(r)) => Ok(r.into_inner().leader_id),
        Ok(Err(s)) => Err(TransferError::Refused(s)),
        Err(_) => Err(TransferError::NotElected {
            node: target,
            within: humantime::format_duration(limit).to_string(),
        }),
    }
}

/// The target's side: once no leader has been heard from (`contact`) for an election
/// timeout, start an election; repeat until some node leads.
pub async fn campaign(
    raft: &Raft,
    contact: &LeaderContact,
    election_max: Duration,
) -> Result<NodeId, TransferError> {
    let deadline = Instant::now() + election_max * 5;
    let start_term = raft.metrics().borrow().current_term;
    while Instant::now() < deadline {
        let quiet = contact
            .age_ms()
            .is_none_or(|a| Duration::from_millis(a) > election_max);
        if quiet {
            raft.trigger()
                .elect()
                .await
                .map_err(|e| TransferError::Stopped(e.to_string()))?;
            let waited = raft
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
    Err(TransferError::NoNewLeader)
}
