//! The watcher actor: one per node, recording every watch event, progress notification,
//! error and resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton::client::{Client, ClientError, WatchOptions};
use tokio::sync::watch;

use super::recording::{describe, lease_obs, watch_kind, Ctx};
use crate::history::{Event, WatchKind};
use crate::nemesis::NodeId;

/// Highest revision a watcher was sent or told about (events or progress).
pub(super) type Position = Arc<AtomicU64>;

pub(super) async fn watcher(
    ctx: Arc<Ctx>,
    name: String,
    node: NodeId,
    client: Client,
    position: Position,
    mut stop: watch::Receiver<bool>,
) {
    let services = vec![ctx.cfg.service.clone()];
    let opts = WatchOptions {
        progress_interval: Some(Duration::from_secs(1)),
        idle_timeout: Some(Duration::from_secs(5)),
        give_up_after: None,
    };
    let h = &ctx.history;
    h.record(Event::WatchStarted {
        watcher: name.clone(),
        node,
        services: services.clone(),
        start_revision: 0,
    });
    let mut w = client.watch_with(services.clone(), 0, opts.clone());
    // The client resumes by itself on another node without telling; a response from
    // another node than the previous one shows that it did, and from where.
    let mut last_served: Option<u64> = None;
    loop {
        let before = w.last_revision();
        let item = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            item = w.next() => item,
        };
        match item {
            Some(Ok(resp)) => {
                let served = resp.served_by;
                if last_served.is_some_and(|n| n != served) && before > 0 {
                    h.record(Event::WatchResumed {
                        watcher: name.clone(),
                        node: served,
                        from_revision: before + 1,
                    });
                }
                last_served = Some(served);
                if resp.progress {
                    h.record(Event::WatchProgress {
                        watcher: name.clone(),
                        node: served,
                        revision: resp.revision,
                    });
                    position.fetch_max(resp.revision, Ordering::Relaxed);
                    continue;
                }
                let mut snapshot = false;
                for ev in &resp.events {
                    let Some(kind) = watch_kind(ev.kind) else {
                        continue;
                    };
                    let Some(lease) = ev.lease.as_ref() else {
                        continue;
                    };
                    snapshot |= kind == WatchKind::Snapshot;
                    h.record(Event::WatchEvent {
                        watcher: name.clone(),
                        node: served,
                        service: ev.service.clone(),
                        revision: ev.revision,
                        kind,
                        lease: lease_obs(lease),
                    });
                    position.fetch_max(ev.revision, Ordering::Relaxed);
                }
                if snapshot {
                    // Where the stream starts: every change up to here is in the snapshot.
                    h.record(Event::WatchProgress {
                        watcher: name.clone(),
                        node: served,
                        revision: resp.revision,
                    });
                    position.fetch_max(resp.revision, Ordering::Relaxed);
                }
            }
            other => {
                let (error, compacted) = match &other {
                    Some(Err(e)) => (describe(e), matches!(e, ClientError::Compacted { .. })),
                    _ => ("watch ended".to_string(), false),
                };
                h.record(Event::WatchError {
                    watcher: name.clone(),
                    node,
                    error,
                    compacted,
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let last = w.last_revision();
                last_served = None;
                if compacted || last == 0 {
                    h.record(Event::WatchStarted {
                        watcher: name.clone(),
                        node,
                        services: services.clone(),
                        start_revision: 0,
                    });
                    w = client.watch_with(services.clone(), 0, opts.clone());
                } else {
                    h.record(Event::WatchResumed {
                        watcher: name.clone(),
                        node,
                        from_revision: last + 1,
                    });
                    w = client.watch_with(services.clone(), last + 1, opts.clone());
                }
            }
        }
    }
}
