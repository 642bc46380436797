//! `Watch`: the current state (or the history from a revision), then every change, in
//! revision order, with no gap and no duplicate. Any node serves it from its applied state.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Ctx;
use crate::convert::{event_to_proto, snapshot_event};
use crate::proto;
use crate::raft::Change;
use crate::state::{Compacted, Event, State};

/// Most services one watch may name.
pub const MAX_WATCHED: usize = 1024;
/// Responses buffered per watch stream for a client that reads slower than changes come.
/// A watcher this far behind is ended with an error telling it where to resume (as etcd
/// cancels slow watchers), so it never holds more than this.
pub const WATCH_BUFFER: usize = 256;
/// Most watch streams open at once on one connection.
pub const MAX_WATCHERS_PER_CONNECTION: usize = 256;
/// Most watch streams open at once from one client address.
pub const MAX_WATCHERS_PER_CALLER: usize = 1024;

/// Counts of open watch streams, per connection and per caller address.
#[derive(Debug, Default, Clone)]
pub struct Watchers {
    counts: Arc<Mutex<Counts>>,
}

/// Open watches per connection and per caller address.
type Counts = (HashMap<SocketAddr, usize>, HashMap<IpAddr, usize>);

/// A watch stream's place in [`Watchers`]; released when dropped.
pub struct WatchSlot {
    watchers: Watchers,
    peer: Option<SocketAddr>,
}

impl Watchers {
    /// Admits one more watch from `peer`, or says which limit it hit.
    pub fn admit(&self, peer: Option<SocketAddr>) -> Result<WatchSlot, Status> {
        if let Some(peer) = peer {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let on_conn = c.0.get(&peer).copied().unwrap_or(0);
            let from_caller = c.1.get(&peer.ip()).copied().unwrap_or(0);
            if on_conn >= MAX_WATCHERS_PER_CONNECTION {
                return Err(Status::resource_exhausted(format!(
                    "this connection has {on_conn} open watches; the limit is \
                     {MAX_WATCHERS_PER_CONNECTION} per connection — watch several services in \
                     one stream, or close unused watches"
                )));
            }
            if from_caller >= MAX_WATCHERS_PER_CALLER {
                return Err(Status::resource_exhausted(format!(
                    "{} has {from_caller} open watches; the limit is {MAX_WATCHERS_PER_CALLER} \
                     per caller — watch several services in one stream, or close unused watches",
                    peer.ip()
                )));
            }
            *c.0.entry(peer).or_default() += 1;
            *c.1.entry(peer.ip()).or_default() += 1;
        }
        Ok(WatchSlot {
            watchers: self.clone(),
            peer,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut c = self
            .watchers
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dec = |n: &mut usize| {
            *n = n.saturating_sub(1);
            *n == 0
        };
        if c.0.get_mut(&peer).is_some_and(dec) {
            c.0.remove(&peer);
        }
        if c.1.get_mut(&peer.ip()).is_some_and(dec) {
            c.1.remove(&peer.ip());
        }
    }
}

/// Queues `r` unless the client has fallen [`WATCH_BUFFER`] responses behind; then queues
/// the error that ends the stream (the last slot is kept for it) and returns false.
fn offer(tx: &mpsc::Sender<Result<proto::WatchResponse, Status>>, r: proto::WatchResponse) -> bool {
    if tx.capacity() > 1 {
        return tx.try_send(Ok(r)).is_ok();
    }
    let _ = tx.try_send(Err(Status::resource_exhausted(format!(
        "this watch fell more than {WATCH_BUFFER} responses behind and was ended; resume it \
         from your last received revision + 1 (revision {} was not delivered)",
        r.revision
    ))));
    false
}

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
    slot: WatchSlot,
) -> Result<impl Stream<Item = Result<proto::WatchResponse, Status>>, Status> {
    super::validate::watch(&req)?;
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
    // One more than the buffer: the last slot carries the error that ends a slow watch.
    let (tx, out) = mpsc::channel::<Result<proto::WatchResponse, Status>>(WATCH_BUFFER + 1);
    let progress = (req.progress_interval_ms > 0)
        .then(|| Duration::from_millis(req.progress_interval_ms.max(10)));
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let _slot = slot;
        // The first answer may be large (every service): it is sent whatever the buffer.
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
                    // Progress vouches for "nothing changed up to `cursor`": only true while
                    // this node is current.
                    if !sent_since_tick && ctx.is_current() {
                        let p = proto::WatchResponse { revision: cursor, events: vec![], progress: true, served_by: ctx.id };
                        if !offer(&tx, p) {
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
                        if !offer(&tx, r) {
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
