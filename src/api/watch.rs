//! `Watch`: the current state (or the history from a revision), then every change, in
//! revision order, with no gap and no duplicate. Any node serves it from its applied state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
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

/// Counts of open watch streams, per connection and per caller address; and the responses
/// of the last revisions, shared by every watcher they go to.
#[derive(Debug, Default, Clone)]
pub struct Watchers {
    counts: Arc<Mutex<Counts>>,
    trimmer: super::trim::Trimmer,
    recent: Arc<Mutex<Recent>>,
}

/// The unfiltered responses of the last revisions, by revision.
type Recent = VecDeque<(u64, Arc<proto::WatchResponse>)>;

/// Revisions whose unfiltered response is kept for sharing: watchers handle a revision at
/// about the same time, so a few cover every one that is not far behind.
const SHARED_REVISIONS: usize = 16;

/// Open watches per connection, per caller address and in all.
#[derive(Debug, Default)]
struct Counts {
    per_conn: HashMap<SocketAddr, usize>,
    per_caller: HashMap<IpAddr, usize>,
    open: usize,
    trim: super::trim::TrimCore,
}

/// A watch stream's place in [`Watchers`]; released when dropped.
pub struct WatchSlot {
    watchers: Watchers,
    peer: Option<SocketAddr>,
}

impl Watchers {
    /// Watch streams open now (from callers with an address).
    pub fn open(&self) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.per_conn.values().sum()
    }

    /// The response carrying every event of `revision`, built once and shared (a lagging
    /// watcher queues a pointer, not a copy).
    fn shared(&self, served_by: u64, revision: u64, events: &[Event]) -> Arc<proto::WatchResponse> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, r)) = recent.iter().find(|(rev, _)| *rev == revision) {
            return r.clone();
        }
        let r = Arc::new(proto::WatchResponse {
            revision,
            events: events.iter().map(event_to_proto).collect(),
            progress: false,
            served_by,
        });
        if recent.len() >= SHARED_REVISIONS {
            recent.pop_front();
        }
        recent.push_back((revision, r.clone()));
        r
    }

    /// Admits one more watch from `peer`, or says which limit it hit.
    pub fn admit(&self, peer: Option<SocketAddr>) -> Result<WatchSlot, Status> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peer {
            let on_conn = c.per_conn.get(&peer).copied().unwrap_or(0);
            let from_caller = c.per_caller.get(&peer.ip()).copied().unwrap_or(0);
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
            *c.per_conn.entry(peer).or_default() += 1;
            *c.per_caller.entry(peer.ip()).or_default() += 1;
        }
        c.open += 1;
        let open = c.open;
        c.trim.opened(open);
        Ok(WatchSlot {
            watchers: self.clone(),
            peer,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut c = self
            .watchers
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.open = c.open.saturating_sub(1);
        let open = c.open;
        // After a burst of watchers closes, give their memory back to the OS.
        if c.trim.closed(open) {
            self.watchers.trimmer.poke();
        }
        let Some(peer) = self.peer else { return };
        let dec = |n: &mut usize| {
            *n = n.saturating_sub(1);
            *n == 0
        };
        if c.per_conn.get_mut(&peer).is_some_and(dec) {
            c.per_conn.remove(&peer);
        }
        if c.per_caller.get_mut(&peer.ip()).is_some_and(dec) {
            c.per_caller.remove(&peer.ip());
        }
    }
}

/// What a watch stream's buffer holds: small, so a full buffer of a lagging watcher is a
/// few KiB of pointers to responses shared with the other watchers.
enum Out {
    Response(Arc<proto::WatchResponse>),
    End(Box<Status>),
}

/// Queues `r` unless the client has fallen [`WATCH_BUFFER`] responses behind; then queues
/// the error that ends the stream (the last slot is kept for it) and returns false.
fn offer(tx: &mpsc::Sender<Out>, r: Arc<proto::WatchResponse>) -> bool {
    if tx.capacity() > 1 {
        return tx.try_send(Out::Response(r)).is_ok();
    }
    let _ = tx.try_send(Out::End(Box::new(Status::resource_exhausted(format!(
        "this watch fell more than {WATCH_BUFFER} responses behind and was ended; resume it \
         from your last received revision + 1 (revision {} was not delivered)",
        r.revision
    )))));
    false
}

/// The stream tonic sends: one response per poll, then `Pending` (waking at once). tonic
/// otherwise encodes every queued response into one chunk of up to 32 KiB, which HTTP/2
/// then holds for a client that does not read; this way it holds one response, and the
/// rest stay shared in the buffer until the client makes room.
struct Paced {
    rx: mpsc::Receiver<Out>,
    yielded: bool,
    /// Held as long as tonic holds the stream: a watcher that was cut off still counts,
    /// and still holds memory, until its client reads the error or goes away.
    _slot: WatchSlot,
}

impl Stream for Paced {
    type Item = Result<proto::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.yielded {
            self.yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Out::Response(r))) => {
                self.yielded = true;
                Poll::Ready(Some(Ok(Arc::unwrap_or_clone(r))))
            }
            Poll::Ready(Some(Out::End(s))) => Poll::Ready(Some(Err(*s))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How far past this node's applied revision a watch may start: a client resuming on a
/// node that lags a little waits for it, a revision far in the future is a mistake.
pub const MAX_WATCH_AHEAD: u64 = 100_000;

fn compacted(c: Compacted) -> Status {
    crate::wire::compacted(
        c.requested,
        c.oldest,
        format!(
            "revision {} has been compacted; the oldest revision available is {} — \
             restart the watch from 0 (current state) or from {}",
            c.requested, c.oldest, c.oldest
        ),
    )
}

struct Filter(Option<BTreeSet<String>>);

impl Filter {
    fn wants(&self, service: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.contains(service))
    }

    /// The response for a live revision: the shared one when this watch wants all of it.
    fn live(
        &self,
        ctx: &Ctx,
        revision: u64,
        events: &[Event],
    ) -> Option<Arc<proto::WatchResponse>> {
        if events.is_empty() {
            return None;
        }
        if events.iter().all(|e| self.wants(&e.service)) {
            return Some(ctx.watchers.shared(ctx.id, revision, events));
        }
        self.response(ctx, revision, events).map(Arc::new)
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
    let (tx, out) = mpsc::channel::<Out>(WATCH_BUFFER + 1);
    let progress = (req.progress_interval_ms > 0)
        .then(|| Duration::from_millis(req.progress_interval_ms.max(10)));
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        // The first answer may be large (every service): it is sent whatever the buffer.
        for r in first {
            if tx.send(Out::Response(Arc::new(r))).await.is_err() {
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
                        if !offer(&tx, Arc::new(p)) {
                            return;
                        }
                    }
                    sent_since_tick = false;
                    continue;
                }
                m = rx.recv() => m,
            };
            let batch: Result<Vec<Arc<proto::WatchResponse>>, Status> = match msg {
                Ok(Change::Events { revision, events }) => {
                    if revision <= cursor {
                        continue;
                    }
                    cursor = revision;
                    if revision < floor {
                        continue;
                    }
                    Ok(filter.live(&ctx, revision, &events).into_iter().collect())
                }
                // Missed broadcasts, or the state was replaced by a snapshot: re-read.
                Ok(Change::Reset { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                    replay(&ctx, &view.state, &filter, (cursor + 1).max(floor)).map(|(out, c)| {
                        cursor = c;
                        out.into_iter().map(Arc::new).collect()
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
                    let _ = tx.send(Out::End(Box::new(status))).await;
                    return;
                }
            }
        }
    });
    Ok(Paced {
        rx: out,
        yielded: false,
        _slot: slot,
    })
}
