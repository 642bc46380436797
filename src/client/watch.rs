//! A watch that survives node loss: it reconnects to another endpoint and resumes from
//! the revision after the last one it delivered, dropping anything already seen.

use std::time::Duration;

use futures::Stream;
use tonic::{Code, Streaming};
use tracing::{debug, warn};

use super::endpoint::{Backoff, Route};
use super::error::{classify, compacted_oldest, detail, Failure};
use super::{coordinator, Client, ClientError};
use crate::proto::{WatchRequest, WatchResponse};

/// How a watch behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Ask the node for a progress message this often when idle (`None` = never). Progress
    /// lets a resumed watch skip revisions that did not touch the watched services.
    pub progress_interval: Option<Duration>,
    /// Reconnect elsewhere when nothing (not even progress) arrived for this long (`None` =
    /// rely on HTTP/2 pings only). Nodes send progress only while they know they are
    /// current, so this is what leaves a node that is alive but cut off from the cluster;
    /// keep it a few times above `progress_interval`. Default: 5 s.
    pub idle_timeout: Option<Duration>,
    /// Give up with [`ClientError::Unavailable`] when no node could be watched for this
    /// long (`None` = keep trying forever).
    pub give_up_after: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            progress_interval: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(5)),
            give_up_after: None,
        }
    }
}

/// Where a watch is: the next revision it wants. Pure, so the no-gap/no-duplicate rule is
/// testable without a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The next revision to deliver; 0 = nothing seen yet and a snapshot is wanted.
    next: u64,
}

impl Cursor {
    pub(crate) fn new(start_revision: u64) -> Self {
        Self {
            next: start_revision,
        }
    }

    /// `start_revision` of the next (re)connection.
    pub(crate) fn resume_from(&self) -> u64 {
        self.next
    }

    /// The last revision delivered (or covered by progress); 0 when none.
    pub(crate) fn last_seen(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Whether `resp` is new and must be delivered; advances the cursor when it is.
    ///
    /// Anything at or below the last revision seen is a duplicate from a resumed stream.
    /// A progress message advances the cursor (the node promises every watched change up
    /// to it was sent) but is ignored before the first snapshot, which it would otherwise
    /// make the watcher skip.
    pub(crate) fn admit(&mut self, resp: &WatchResponse) -> bool {
        if resp.progress {
            if self.next == 0 || resp.revision < self.next {
                return false;
            }
        } else if self.next != 0 && resp.revision < self.next {
            return false;
        }
        self.next = resp.revision.saturating_add(1);
        true
    }
}

/// A watch stream and the node serving it.
#[derive(Debug)]
struct OpenStream {
    /// Pool index of the node.
    idx: usize,
    /// Its address.
    addr: String,
    stream: Streaming<WatchResponse>,
}

/// A resumable watch. Call [`Watcher::next`] in a loop, or turn it into a
/// [`futures::Stream`] with [`Watcher::into_stream`].
///
/// Every item is either a set of events of one revision (revisions strictly increase, with
/// no gap and no duplicate across reconnections) or a progress message (`progress = true`)
/// that advanced [`Watcher::last_revision`]. Errors are terminal: after one, `next` returns
/// `None`.
#[derive(Debug)]
pub struct Watcher {
    client: Client,
    services: Vec<String>,
    options: WatchOptions,
    cursor: Cursor,
    /// The open stream.
    stream: Option<OpenStream>,
    backoff: Backoff,
    /// Connection attempts that failed in a row (a whole round of them is worth a warning).
    failures: usize,
    done: bool,
}

impl Watcher {
    pub(crate) fn new(
        client: Client,
        services: Vec<String>,
        start_revision: u64,
        options: WatchOptions,
    ) -> Self {
        Self {
            client,
            services,
            options,
            cursor: Cursor::new(start_revision),
            stream: None,
            backoff: Backoff::new(),
            failures: 0,
            done: false,
        }
    }

    /// The last revision delivered (or confirmed by a progress message); 0 when none. A
    /// new watch from `last_revision() + 1` continues exactly where this one stands.
    pub fn last_revision(&self) -> u64 {
        self.cursor.last_seen()
    }

    /// The next response, reconnecting as needed; `None` after a terminal error.
    ///
    /// Cancel-safe: dropping the future loses at most a connection attempt, never a
    /// delivered revision.
    pub async fn next(&mut self) -> Option<Result<WatchResponse, ClientError>> {
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                if self.failures >= self.client.pool.len() {
                    // A whole round of nodes failed: wait before the next round, or give up.
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if let Some(limit) = self.options.give_up_after {
                        if since.elapsed() >= limit {
                            self.done = true;
                            return Some(Err(ClientError::Unavailable {
                                op: "Watch",
                                waited: since.elapsed(),
                                last: "no node could be watched".into(),
                            }));
                        }
                    }
                    tokio::time::sleep(self.backoff.step()).await;
                }
                match self.connect().await {
                    Ok(s) => self.stream = Some(s),
                    Err(Some(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Err(None) => continue,
                }
            }
            let Some(open) = self.stream.as_mut() else {
                continue;
            };
            let message = match self.options.idle_timeout {
                Some(t) => match tokio::time::timeout(t, open.stream.message()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.stream_failed("nothing arrived within the idle timeout");
                        continue;
                    }
                },
                None => open.stream.message().await,
            };
            match message {
                Ok(Some(resp)) => {
                    self.failures = 0;
                    self.backoff.reset();
                    down_since = None;
                    if self.cursor.admit(&resp) {
                        return Some(Ok(resp));
                    }
                }
                Ok(None) => self.stream_failed("the node ended the stream"),
                Err(status) => {
                    if let Some(oldest) = compacted_oldest(&status) {
                        self.done = true;
                        return Some(Err(ClientError::Compacted {
                            requested: self.cursor.resume_from(),
                            oldest,
                        }));
                    }
                    self.stream_failed(&detail(&status));
                }
            }
        }
    }

    /// The watcher as a stream of responses.
    pub fn into_stream(self) -> impl Stream<Item = Result<WatchResponse, ClientError>> {
        futures::stream::unfold(self, |mut w| async move { w.next().await.map(|r| (r, w)) })
    }

    /// Counts a failure: quietly while other nodes remain to be tried, with a warning once
    /// every node failed in a row.
    fn note_failure(&mut self, addr: &str, why: &str) {
        self.failures += 1;
        if self.failures >= self.client.pool.len() {
            warn!(
                node = addr,
                error = why,
                "watch failed on every node; retrying"
            );
        } else {
            debug!(
                node = addr,
                error = why,
                "watch failed; trying another node"
            );
        }
    }

    /// The open stream broke: leave its node and resume elsewhere.
    fn stream_failed(&mut self, why: &str) {
        if let Some(open) = self.stream.take() {
            self.client.pool.failed(open.idx);
            self.note_failure(&open.addr, why);
        }
    }

    /// Opens a stream at the cursor on the preferred node. `Err(None)`: try again later;
    /// `Err(Some(e))`: a terminal answer (compacted, unknown service, bad request).
    async fn connect(&mut self) -> Result<OpenStream, Option<ClientError>> {
        let pool = self.client.pool.clone();
        let (idx, node) = pool.pick(Route::Any);
        let req = WatchRequest {
            services: self.services.clone(),
            start_revision: self.cursor.resume_from(),
            progress_interval_ms: self
                .options
                .progress_interval
                .map_or(0, |d| d.as_millis().clamp(1, u64::MAX as u128) as u64),
        };
        let mut request = tonic::Request::new(req);
        pool.decorate(&mut request, &pool.request_id());
        // No grpc-timeout on a stream (it would cut it); only opening it is bounded.
        let open_limit = pool
            .opts
            .connect_timeout
            .saturating_add(pool.opts.attempt_timeout);
        let opened = tokio::time::timeout(
            open_limit,
            coordinator(node.channel(), pool.opts.max_message_size).watch(request),
        )
        .await;
        match opened {
            Ok(Ok(resp)) => {
                pool.succeeded(idx, Route::Any);
                debug!(node = %node.addr, from = self.cursor.resume_from(), "watching");
                Ok(OpenStream {
                    idx,
                    addr: node.addr.clone(),
                    stream: resp.into_inner(),
                })
            }
            Ok(Err(status)) => {
                if let Some(oldest) = compacted_oldest(&status) {
                    return Err(Some(ClientError::Compacted {
                        requested: self.cursor.resume_from(),
                        oldest,
                    }));
                }
                let terminal = matches!(classify(&status), Failure::Answered)
                    && !matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                            | Code::Aborted
                            | Code::ResourceExhausted
                    );
                if terminal {
                    return Err(Some(ClientError::Rpc {
                        endpoint: node.addr.clone(),
                        status,
                    }));
                }
                self.note_failure(&node.addr, &detail(&status));
                pool.failed(idx);
                Err(None)
            }
            Err(_) => {
                self.note_failure(&node.addr, "no answer");
                pool.failed(idx);
                Err(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(revision: u64) -> WatchResponse {
        WatchResponse {
            revision,
            events: vec![],
            progress: false,
            served_by: 1,
        }
    }

    fn progress(revision: u64) -> WatchResponse {
        WatchResponse {
            progress: true,
            ..events(revision)
        }
    }

    /// Feeds responses through a cursor; returns the delivered revisions.
    fn deliver(start: u64, feed: &[WatchResponse]) -> (Vec<u64>, Cursor) {
        let mut c = Cursor::new(start);
        let got = feed
            .iter()
            .filter(|r| c.admit(r))
            .map(|r| r.revision)
            .collect();
        (got, c)
    }

    #[test]
    fn resumed_stream_duplicates_are_dropped() {
        // First node sends the snapshot at 10 and changes 11, 12; the resumed stream (asked
        // from 13) replays 12 again and continues.
        let (got, c) = deliver(
            0,
            &[events(10), events(11), events(12), events(12), events(13)],
        );
        assert_eq!(got, vec![10, 11, 12, 13]);
        assert_eq!(c.resume_from(), 14);
        assert_eq!(c.last_seen(), 13);
    }

    #[test]
    fn a_start_revision_drops_older_revisions() {
        let (got, c) = deliver(5, &[events(4), events(5), events(7)]);
        assert_eq!(got, vec![5, 7]);
        assert_eq!(c.resume_from(), 8);
    }

    #[test]
    fn before_anything_is_seen_the_resume_point_is_the_start() {
        assert_eq!(Cursor::new(0).resume_from(), 0, "snapshot again");
        assert_eq!(Cursor::new(42).resume_from(), 42);
        assert_eq!(Cursor::new(0).last_seen(), 0);
    }

    #[test]
    fn progress_advances_the_resume_point() {
        let (got, c) = deliver(0, &[events(3), progress(9), progress(8), events(9)]);
        assert_eq!(
            got,
            vec![3, 9],
            "progress 9 is delivered; a stale progress and rev 9 are not"
        );
        assert_eq!(c.resume_from(), 10);
    }

    #[test]
    fn progress_before_the_snapshot_is_ignored() {
        let (got, c) = deliver(0, &[progress(7), events(7)]);
        assert_eq!(got, vec![7]);
        assert_eq!(c.resume_from(), 8);
    }
}
