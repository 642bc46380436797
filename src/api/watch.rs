//! `Watch`: the current state (or the history from a revision), then every change, in
//! revision order, with no gap and no duplicate. Any node serves it from its applied state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Ctx;
use crate::convert::{event_to_proto, snapshot_event};
use crate::proto;
use crate::raft::Change;
use crate::state::names::check_name;
use crate::state::{Compacted, Event, State};

/// Most services one watch may name.
pub const MAX_WATCHED: usize = 1024;
/// How far past this node's applied revision a watch may start: a client resuming on a
/// node that lags a little waits for it, a revision far in the future is a mistake.
pub const MAX_WATCH_AHEAD: u64 = 100_000;

fn compacted(c: Compacted) -> Status {
    Status::failed_precondition(format!(
        "revision {} has been compacted; the oldest revision available is {} — \
         restart the watch from 0 (current state) or from {}",
        c.requested, c.oldest, c.oldest
    ))
}

struct Filter(Option<BTreeSet<String>>);

impl Filter {
    fn wants(&self, service: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.contains(service))
    }

    fn response(&self, ctx: &Ctx, revision: u64, events: &[Event]) -> Option<proto::WatchResponse> {
        let events: Vec<_> = events
            .iter()
            .filter(|e| self.wants(&e.service))
            .map(event_to_proto)
            .collect();
        (!events.is_empty()).then_some(proto::WatchResponse {
            revision,
            events,
            progress: false,
            served_by: ctx.id,
        })
    }
}

/// Revisions `>= from` from the history, as responses, and the new cursor.
fn replay(
    ctx: &Ctx,
    state: &State,
    filter: &Filter,
    from: u64,
) -> Result<(Vec<proto::WatchResponse>, u64), Status> {
    let entries = state.history().since(from).map_err(compacted)?;
    let out = entries
        .iter()
        .filter_map(|(rev, events)| filter.response(ctx, *rev, events))
        .collect();
    // The cursor is what this node has applied, even when `from` is ahead of it, so
    // progress messages never claim a revision that does not exist yet.
    Ok((out, state.revision()))
}

/// Opens a watch stream.
pub fn open(
    ctx: Arc<Ctx>,
    req: proto::WatchRequest,
) -> Result<impl Stream<Item = Result<proto::WatchResponse, Status>>, Status> {
    if req.services.len() > MAX_WATCHED {
        return Err(Status::invalid_argument(format!(
            "a watch may name at most {MAX_WATCHED} services (got {}); watch all by naming none",
            req.services.len()
        )));
    }
    for s in &req.services {
        check_name("service", s).map_err(Status::invalid_argument)?;
    }
    let filter = Filter((!req.services.is_empty()).then(|| req.services.iter().cloned().collect()));
    // Subscribe before reading the state so no change falls between the two.
    let mut rx = ctx.changes.subscribe();
    let (first, mut cursor) = {
        let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
        let state = &view.state;
        if req.start_revision == 0 {
            let events = state
                .services()
                .filter(|r| filter.wants(&r.spec.name))
                .map(snapshot_event)
                .collect();
            let resp = proto::WatchResponse {
                revision: state.revision(),
                events,
                progress: false,
                served_by: ctx.id,
            };
            (vec![resp], state.revision())
        } else {
            let ahead = req.start_revision.saturating_sub(state.revision());
            if ahead > MAX_WATCH_AHEAD {
                return Err(Status::out_of_range(format!(
                    "start revision {} is in the future: this node is at revision {} — resume \
                     from your last received revision + 1, or from 0 for the current state",
                    req.start_revision,
                    state.revision()
                )));
            }
            replay(&ctx, state, &filter, req.start_revision)?
        }
    };
    // Revisions below this were not asked for (a start ahead of this node).
    let floor = req.start_revision;
    let (tx, out) = mpsc::channel::<Result<proto::WatchResponse, Status>>(256);
    let progress = (req.progress_interval_ms > 0)
        .then(|| Duration::from_millis(req.progress_interval_ms.max(10)));
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        for r in first {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
        let mut ticker = progress.map(|p| {
            let mut t = tokio::time::interval(p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut sent_since_tick = true;
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let msg = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
                _ = tick => {
                    if !sent_since_tick {
                        let p = proto::WatchResponse { revision: cursor, events: vec![], progress: true, served_by: ctx.id };
                        if tx.send(Ok(p)).await.is_err() {
                            return;
                        }
                    }
                    sent_since_tick = false;
                    continue;
                }
                m = rx.recv() => m,
            };
            let batch: Result<Vec<proto::WatchResponse>, Status> = match msg {
                Ok(Change::Events { revision, events }) => {
                    if revision <= cursor {
                        continue;
                    }
                    cursor = revision;
                    if revision < floor {
                        continue;
                    }
                    Ok(filter
                        .response(&ctx, revision, &events)
                        .into_iter()
                        .collect())
                }
                // Missed broadcasts, or the state was replaced by a snapshot: re-read.
                Ok(Change::Reset { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                    replay(&ctx, &view.state, &filter, (cursor + 1).max(floor)).map(|(out, c)| {
                        cursor = c;
                        out
                    })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match batch {
                Ok(responses) => {
                    for r in responses {
                        sent_since_tick = true;
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(out))
}
