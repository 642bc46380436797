//! Leadership transfer as the API and the node's shutdown use it: `raft::transfer` does
//! it; this supplies the node's read barrier and lease budget and translates its errors.

use tonic::Status;

use super::Ctx;
use crate::raft::transfer::{self, Quiet, TransferError};
use crate::raft::NodeId;

/// Moves leadership from this (leader) node to `to` (0 = the most up-to-date other voter).
/// Returns the new leader's id.
pub async fn transfer(ctx: &Ctx, to: NodeId) -> Result<NodeId, Status> {
    let pause = |on: bool| ctx.reads.pause(on);
    let budget = || {
        let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        crate::control::quiet_budget(
            view.state.services().map(|r| &r.lease),
            ctx.timing.drift,
            ctx.timing.margin,
        )
    };
    let quiet = Quiet {
        pause_reads: &pause,
        budget: &budget,
    };
    transfer::transfer(
        &ctx.raft,
        ctx.id,
        &ctx.links,
        ctx.timing.election_timeout_max,
        to,
        quiet,
    )
    .await
    .map_err(status)
}

/// The target's side: campaign once the old leader's lease has run out.
pub async fn campaign(ctx: &Ctx) -> Result<NodeId, Status> {
    transfer::campaign(&ctx.raft, &ctx.contact, ctx.timing.election_timeout_max)
        .await
        .map_err(status)
}

fn status(e: TransferError) -> Status {
    let text = e.to_string();
    match e {
        TransferError::NotAVoter(_) => Status::invalid_argument(text),
        TransferError::NoOtherVoter => Status::failed_precondition(text),
        TransferError::NoAddress(_) | TransferError::Stopped(_) => Status::internal(text),
        TransferError::Unreachable { .. } | TransferError::NotCaughtUp { .. } => {
            Status::unavailable(text)
        }
        TransferError::NotElected { .. } | TransferError::NoNewLeader => {
            Status::deadline_exceeded(text)
        }
        TransferError::Refused(s) => s,
    }
}
