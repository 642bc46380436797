//! `Watch`: the current state (or the history from a revision), then every change, in
//! revision order, with no gap and no duplicate. Any node serves it from its applied state.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tokio::sync::{broadcast, Notify};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
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

/// Counts of open watch streams, per connection and per caller address; and the fan-out
/// that hands every applied change to every open stream.
#[derive(Debug, Default, Clone)]
pub struct Watchers {
    counts: Arc<Mutex<Counts>>,
    trimmer: super::trim::Trimmer,
    hub: Arc<Mutex<Hub>>,
}

/// Open watches per connection, per caller address and in all.
#[derive(Debug, Default)]
struct Counts {
    per_conn: HashMap<SocketAddr, usize>,
    per_caller: HashMap<IpAddr, usize>,
    open: usize,
    trim: super::trim::TrimCore,
}

/// The open streams of this node. One task ([`fan_out`]) takes every applied change from
/// the broadcast and queues it on each stream itself: one wake-up per change instead of
/// one task per watcher, and one encoding of a revision for every stream that wants all
/// of it.
#[derive(Default)]
struct Hub {
    /// By connection, so the streams of one connection are woken one after the other and
    /// its HTTP/2 task can write their frames together.
    subs: BTreeMap<SubKey, Arc<Sub>>,
    next_id: u64,
    /// The fan-out task runs (it stops when the node shuts down or the broadcast closes).
    running: bool,
    /// Wakes [`idle`], a task that does nothing: see [`Paced`].
    nudge: Arc<Notify>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subs", &self.subs.len())
            .field("running", &self.running)
            .finish()
    }
}

/// A stream's connection (when known) and a number unique on this node.
type SubKey = (Option<SocketAddr>, u64);

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

/// A `WatchResponse` already encoded. A revision every stream wants whole is encoded once
/// and the bytes are shared: a lagging watcher queues a pointer, not a copy, and no stream
/// clones or encodes it again.
#[derive(Debug, Clone)]
pub struct Encoded(Bytes);

impl Encoded {
    fn of(r: &proto::WatchResponse) -> Self {
        Encoded(Bytes::from(r.encode_to_vec()))
    }

    /// The response these bytes encode.
    pub fn decode(&self) -> Result<proto::WatchResponse, Status> {
        proto::WatchResponse::decode(self.0.clone())
            .map_err(|e| Status::internal(format!("re-reading a watch response: {e}")))
    }
}

/// What a watch stream's buffer holds: small, so a full buffer of a lagging watcher is a
/// few KiB of pointers to responses shared with the other watchers.
enum Out {
    /// The current state or the requested history: sent whatever the buffer.
    First(Encoded),
    /// A live change or a progress message: counts toward [`WATCH_BUFFER`].
    Live(Encoded),
    End(Box<Status>),
}

/// One open stream as the fan-out sees it.
struct Sub {
    filter: Filter,
    /// Revisions below this were not asked for (a start ahead of this node).
    floor: u64,
    state: Mutex<SubState>,
}

struct SubState {
    /// The last revision this stream has seen (sent or filtered out).
    cursor: u64,
    queue: VecDeque<Out>,
    /// `Live` responses in `queue`.
    live: usize,
    /// Nothing more will be queued: cut off, failed, or the node stops.
    ended: bool,
    sent_since_tick: bool,
    /// The stream's task, waiting for a response.
    waker: Option<Waker>,
}

impl Sub {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SubState {
    /// Queues `r` unless the client has fallen [`WATCH_BUFFER`] responses behind; then
    /// queues the error that ends the stream instead.
    fn offer(&mut self, r: Encoded, revision: u64) {
        if self.ended {
            return;
        }
        if self.live < WATCH_BUFFER {
            self.queue.push_back(Out::Live(r));
            self.live += 1;
            return;
        }
        self.end(Status::resource_exhausted(format!(
            "this watch fell more than {WATCH_BUFFER} responses behind and was ended; resume it \
             from your last received revision + 1 (revision {revision} was not delivered)"
        )));
    }

    fn end(&mut self, status: Status) {
        if !self.ended {
            self.queue.push_back(Out::End(Box::new(status)));
            self.ended = true;
        }
    }

    /// The waker to call once the lock is released, if something was queued for a stream
    /// that waits.
    fn wake(&mut self) -> Option<Waker> {
        if self.queue.is_empty() && !self.ended {
            return None;
        }
        self.waker.take()
    }
}

/// The stream tonic sends: one response per poll, then `Pending`. tonic otherwise encodes
/// every queued response into one chunk of up to 32 KiB, which HTTP/2 then holds for a
/// client that does not read; this way it holds one response, and the rest stay shared in
/// the buffer until the client makes room.
struct Paced {
    sub: Arc<Sub>,
    key: SubKey,
    hub: Arc<Mutex<Hub>>,
    nudge: Arc<Notify>,
    yielded: bool,
    /// Held as long as tonic holds the stream: a watcher that was cut off still counts,
    /// and still holds memory, until its client reads the error or goes away.
    _slot: WatchSlot,
}

impl Stream for Paced {
    type Item = Result<Encoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let sub = self.sub.clone();
        let mut s = sub.lock();
        if self.yielded {
            self.yielded = false;
            if s.queue.is_empty() && !s.ended {
                // Nothing more yet: sleep until the fan-out queues something.
                store_waker(&mut s.waker, cx);
                // The response just handed over woke the connection's task, which tokio
                // would run next (the task woken last runs first) to write that one frame
                // alone: one write(2) per watcher. Waking a task that does nothing takes
                // that place, so the connection runs after the other streams the fan-out
                // woke and writes all their frames at once.
                drop(s);
                self.nudge.notify_one();
            } else {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        match s.queue.pop_front() {
            Some(Out::First(r)) => {
                self.yielded = true;
                Poll::Ready(Some(Ok(r)))
            }
            Some(Out::Live(r)) => {
                s.live -= 1;
                self.yielded = true;
                Poll::Ready(Some(Ok(r)))
            }
            Some(Out::End(status)) => Poll::Ready(Some(Err(*status))),
            None if s.ended => Poll::Ready(None),
            None => {
                store_waker(&mut s.waker, cx);
                Poll::Pending
            }
        }
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.subs.remove(&self.key);
        drop(hub);
        // What is still queued goes now, not when the last reference does.
        let mut s = self.sub.lock();
        s.queue.clear();
        s.ended = true;
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

    fn response(&self, id: u64, revision: u64, events: &[Event]) -> Option<proto::WatchResponse> {
        let events: Vec<_> = events
            .iter()
            .filter(|e| self.wants(&e.service))
            .map(event_to_proto)
            .collect();
        (!events.is_empty()).then_some(proto::WatchResponse {
            revision,
            events,
            progress: false,
            served_by: id,
        })
    }
}

/// Revisions `>= from` from the history, as responses, and the new cursor.
fn replay(
    id: u64,
    state: &State,
    filter: &Filter,
    from: u64,
) -> Result<(Vec<(u64, Encoded)>, u64), Status> {
    let entries = state.history().since(from).map_err(compacted)?;
    let out = entries
        .iter()
        .filter_map(|(rev, events)| {
            filter
                .response(id, *rev, events)
                .map(|r| (*rev, Encoded::of(&r)))
        })
        .collect();
    // The cursor is what this node has applied, even when `from` is ahead of it, so
    // progress messages never claim a revision that does not exist yet.
    Ok((out, state.revision()))
}

/// The response of a live revision for every stream that wants all of it, encoded on first
/// use.
struct Whole<'a> {
    id: u64,
    revision: u64,
    events: &'a [Event],
    encoded: Option<Encoded>,
}

impl Whole<'_> {
    fn get(&mut self) -> Encoded {
        let (id, revision, events) = (self.id, self.revision, self.events);
        self.encoded
            .get_or_insert_with(|| {
                Encoded::of(&proto::WatchResponse {
                    revision,
                    events: events.iter().map(event_to_proto).collect(),
                    progress: false,
                    served_by: id,
                })
            })
            .clone()
    }
}

impl Sub {
    /// Queues what this stream wants of a live revision.
    fn live(&self, whole: &mut Whole<'_>) -> Option<Waker> {
        let mut s = self.lock();
        let revision = whole.revision;
        if s.ended || revision <= s.cursor {
            return None;
        }
        s.cursor = revision;
        if revision < self.floor || whole.events.is_empty() {
            return None;
        }
        let r = if whole.events.iter().all(|e| self.filter.wants(&e.service)) {
            whole.get()
        } else {
            Encoded::of(&self.filter.response(whole.id, revision, whole.events)?)
        };
        s.sent_since_tick = true;
        s.offer(r, revision);
        s.wake()
    }

    /// Queues what this stream missed, from the history (after a lag or a snapshot).
    fn catch_up(&self, id: u64, state: &State) -> Option<Waker> {
        let mut s = self.lock();
        if s.ended {
            return None;
        }
        match replay(id, state, &self.filter, (s.cursor + 1).max(self.floor)) {
            Ok((out, cursor)) => {
                s.cursor = cursor;
                for (rev, r) in out {
                    s.sent_since_tick = true;
                    s.offer(r, rev);
                }
            }
            Err(status) => s.end(status),
        }
        s.wake()
    }

    /// Ends the stream once the client has what is queued (the node stops).
    fn finish(&self) -> Option<Waker> {
        let mut s = self.lock();
        s.ended = true;
        s.wake()
    }
}

/// Hands every change this node applies to every open stream, until the node stops.
async fn fan_out(
    ctx: Weak<Ctx>,
    hub: Arc<Mutex<Hub>>,
    mut rx: broadcast::Receiver<Change>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let lock = || hub.lock().unwrap_or_else(|e| e.into_inner());
    let mut wake = Vec::new();
    loop {
        let msg = if *shutdown.borrow() {
            None
        } else {
            tokio::select! {
                _ = shutdown.changed() => None,
                m = rx.recv() => Some(m),
            }
        };
        let Some(ctx) = ctx.upgrade() else { break };
        let id = ctx.id;
        {
            let hub = lock();
            match msg {
                Some(Ok(Change::Events { revision, events })) => {
                    let mut whole = Whole {
                        id,
                        revision,
                        events: &events,
                        encoded: None,
                    };
                    wake.extend(hub.subs.values().filter_map(|s| s.live(&mut whole)));
                }
                // Missed broadcasts, or the state was replaced by a snapshot: re-read.
                Some(Ok(Change::Reset { .. }))
                | Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let view = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                    wake.extend(
                        hub.subs
                            .values()
                            .filter_map(|s| s.catch_up(id, &view.state)),
                    );
                }
                Some(Err(broadcast::error::RecvError::Closed)) | None => break,
            }
        }
        // Woken outside the locks, so the streams' tasks do not wait on them.
        for w in wake.drain(..) {
            w.wake();
        }
    }
    let mut hub = lock();
    hub.running = false;
    let ended: Vec<_> = hub.subs.values().filter_map(|s| s.finish()).collect();
    drop(hub);
    for w in ended {
        w.wake();
    }
}

/// Does nothing each time it is woken, until the node stops (see [`Paced`]).
async fn idle(nudge: Arc<Notify>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        tokio::select! {
            _ = nudge.notified() => {}
            r = shutdown.changed() => if r.is_err() { return },
        }
    }
}

/// Sends a progress message every `every` while the stream is idle, until it ends.
async fn progress(ctx: Weak<Ctx>, sub: Weak<Sub>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (Some(ctx), Some(sub)) = (ctx.upgrade(), sub.upgrade()) else {
            return;
        };
        let mut s = sub.lock();
        if s.ended {
            return;
        }
        // Progress vouches for "nothing changed up to `cursor`": only true while this
        // node is current.
        if !s.sent_since_tick && ctx.is_current() {
            let cursor = s.cursor;
            let p = proto::WatchResponse {
                revision: cursor,
                events: vec![],
                progress: true,
                served_by: ctx.id,
            };
            s.offer(Encoded::of(&p), cursor);
        }
        s.sent_since_tick = false;
        let waker = s.wake();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Opens a watch stream.
pub fn open(
    ctx: Arc<Ctx>,
    req: proto::WatchRequest,
    slot: WatchSlot,
) -> Result<impl Stream<Item = Result<Encoded, Status>>, Status> {
    subscribe(ctx, req, slot)
}

fn subscribe(ctx: Arc<Ctx>, req: proto::WatchRequest, slot: WatchSlot) -> Result<Paced, Status> {
    super::validate::watch(&req)?;
    let filter = Filter((!req.services.is_empty()).then(|| req.services.iter().cloned().collect()));
    let hub = ctx.watchers.hub.clone();
    let mut h = hub.lock().unwrap_or_else(|e| e.into_inner());
    // The fan-out subscribes before the state is read below, so no change falls between
    // the two: older revisions it still holds are skipped by the cursor.
    if !h.running {
        h.running = true;
        tokio::spawn(idle(h.nudge.clone(), ctx.shutdown.clone()));
        tokio::spawn(fan_out(
            Arc::downgrade(&ctx),
            hub.clone(),
            ctx.changes.subscribe(),
            ctx.shutdown.clone(),
        ));
    }
    let (first, cursor) = {
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
            (vec![Encoded::of(&resp)], state.revision())
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
            let (out, cursor) = replay(ctx.id, state, &filter, req.start_revision)?;
            (out.into_iter().map(|(_, r)| r).collect(), cursor)
        }
    };
    // Registered while the fan-out cannot run: it sees this stream from its next change on.
    let sub = Arc::new(Sub {
        filter,
        floor: req.start_revision,
        state: Mutex::new(SubState {
            cursor,
            queue: first.into_iter().map(Out::First).collect(),
            live: 0,
            ended: *ctx.shutdown.borrow(),
            sent_since_tick: true,
            waker: None,
        }),
    });
    let key = (slot.peer, h.next_id);
    h.next_id += 1;
    h.subs.insert(key, sub.clone());
    if req.progress_interval_ms > 0 {
        let every = Duration::from_millis(req.progress_interval_ms.max(10));
        tokio::spawn(progress(Arc::downgrade(&ctx), Arc::downgrade(&sub), every));
    }
    let nudge = h.nudge.clone();
    drop(h);
    Ok(Paced {
        sub,
        key,
        hub,
        nudge,
        yielded: false,
        _slot: slot,
    })
}

/// The gRPC path of `Watch`, served by [`WatchRoute`].
pub const WATCH_PATH: &str = "/baton.v1.Coordinator/Watch";

/// Codec of `Watch`: requests are decoded as usual, responses arrive encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

/// Writes the bytes of an [`Encoded`] response.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchEncoder;

/// Decodes a `WatchRequest`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchDecoder;

/// tonic's encode buffer per stream: one response at a time goes through it, so the 8 KiB
/// default would be mostly idle memory for every open watch.
const ENCODE_BUFFER: usize = 512;
/// tonic's default; [`Paced`] hands it one response at a time anyway.
const YIELD_THRESHOLD: usize = 32 * 1024;

impl Codec for WatchCodec {
    type Encode = Encoded;
    type Decode = proto::WatchRequest;
    type Encoder = WatchEncoder;
    type Decoder = WatchDecoder;

    fn encoder(&mut self) -> WatchEncoder {
        WatchEncoder
    }

    fn decoder(&mut self) -> WatchDecoder {
        WatchDecoder
    }
}

impl Encoder for WatchEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

impl Decoder for WatchDecoder {
    type Item = proto::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<proto::WatchRequest>, Status> {
        proto::WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The Coordinator service with `Watch` answered by [`WatchCodec`] (responses encoded once
/// and shared); every other method goes to `inner`, the generated server.
#[derive(Clone)]
pub struct WatchRoute<S> {
    inner: S,
    ctx: Arc<Ctx>,
    max_request: usize,
    max_response: usize,
}

impl<S> WatchRoute<S> {
    /// Wraps the Coordinator server `inner`, with its message size limits.
    pub fn new(inner: S, ctx: Arc<Ctx>, max_request: usize, max_response: usize) -> Self {
        Self {
            inner,
            ctx,
            max_request,
            max_response,
        }
    }
}

impl<S: NamedService> NamedService for WatchRoute<S> {
    const NAME: &'static str = S::NAME;
}

/// `Watch` as tonic's server-streaming handler sees it.
struct WatchMethod(Arc<Ctx>);

impl tower_service::Service<tonic::Request<proto::WatchRequest>> for WatchMethod {
    type Response = tonic::Response<Paced>;
    type Error = Status;
    type Future = std::future::Ready<Result<tonic::Response<Paced>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<proto::WatchRequest>) -> Self::Future {
        let ctx = self.0.clone();
        std::future::ready((|| {
            let slot = ctx
                .watchers
                .admit(crate::connection::ConnInfo::remote_addr(&request))?;
            subscribe(ctx, request.into_inner(), slot).map(tonic::Response::new)
        })())
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for WatchRoute<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return Box::pin(self.inner.call(req));
        }
        let method = WatchMethod(self.ctx.clone());
        let (max_request, max_response) = (self.max_request, self.max_response);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec)
                .apply_max_message_size_config(Some(max_request), Some(max_response));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    fn encoded(revision: u64) -> Encoded {
        Encoded::of(&proto::WatchResponse {
            revision,
            events: vec![],
            progress: true,
            served_by: 1,
        })
    }

    fn paced(first: usize) -> Paced {
        let watchers = Watchers::default();
        let sub = Arc::new(Sub {
            filter: Filter(None),
            floor: 0,
            state: Mutex::new(SubState {
                cursor: 0,
                queue: (0..first as u64).map(|r| Out::First(encoded(r))).collect(),
                live: 0,
                ended: false,
                sent_since_tick: true,
                waker: None,
            }),
        });
        let slot = watchers.admit(None).unwrap();
        watchers
            .hub
            .lock()
            .unwrap()
            .subs
            .insert((None, 0), sub.clone());
        Paced {
            sub,
            key: (None, 0),
            hub: watchers.hub.clone(),
            nudge: Arc::new(Notify::new()),
            yielded: false,
            _slot: slot,
        }
    }

    fn poll(p: &mut Paced) -> Poll<Option<Result<Encoded, Status>>> {
        Pin::new(p).poll_next(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn one_response_per_poll_then_the_end() {
        let mut p = paced(2);
        p.sub.finish();
        assert!(matches!(poll(&mut p), Poll::Ready(Some(Ok(_)))));
        assert!(
            poll(&mut p).is_pending(),
            "a poll after a response sends nothing"
        );
        assert!(matches!(poll(&mut p), Poll::Ready(Some(Ok(_)))));
        assert!(poll(&mut p).is_pending());
        assert!(matches!(poll(&mut p), Poll::Ready(None)));
    }

    #[test]
    fn a_watcher_a_buffer_behind_gets_the_resume_error_and_nothing_more() {
        // The first batch, however long, does not count toward the buffer.
        let mut p = paced(WATCH_BUFFER * 2);
        {
            let mut s = p.sub.lock();
            for r in 0..WATCH_BUFFER as u64 + 5 {
                s.offer(encoded(r), r);
            }
            assert!(s.ended);
            assert_eq!(s.live, WATCH_BUFFER);
            assert_eq!(s.queue.len(), WATCH_BUFFER * 3 + 1);
        }
        let mut got = 0;
        let err = loop {
            match poll(&mut p) {
                Poll::Ready(Some(Ok(_))) => got += 1,
                Poll::Ready(Some(Err(e))) => break e,
                Poll::Ready(None) => panic!("ended without the error"),
                Poll::Pending => {}
            }
        };
        assert_eq!(got, WATCH_BUFFER * 3);
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err
            .message()
            .contains(&format!("revision {}", WATCH_BUFFER)));
        assert!(matches!(poll(&mut p), Poll::Ready(None)));
    }

    #[test]
    fn a_closed_stream_leaves_the_fan_out() {
        let p = paced(1);
        let hub = p.hub.clone();
        assert_eq!(hub.lock().unwrap().subs.len(), 1);
        drop(p);
        assert!(hub.lock().unwrap().subs.is_empty());
    }
}
