//! The thin async driver: feeds the [`AgentCore`] with lease status changes, its own
//! validity timer, hook completions and shutdown, and carries out its actions.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};

use super::hook::run_hook_until;
use super::machine::{Action, AgentCore, AgentState, Hook, HookKind, HookOutcome};
use super::AgentError;
use crate::client::{ClientError, LeaseHandle, LeaseStatus};

/// What the driver needs of a lease session; [`LeaseHandle`] in production, a channel
/// the test controls in tests.
pub(crate) trait LeaseSession {
    /// Status changes.
    fn status(&self) -> watch::Receiver<LeaseStatus>;
    /// Acknowledges the demotion of the lease being revoked.
    fn ack_demotion(&self);
    /// Why the session ended by itself.
    fn end_error(&self) -> impl Future<Output = ClientError> + Send;
    /// Stops renewing.
    fn close(self) -> impl Future<Output = ()> + Send;
}

impl LeaseSession for LeaseHandle {
    fn status(&self) -> watch::Receiver<LeaseStatus> {
        LeaseHandle::status(self)
    }

    fn ack_demotion(&self) {
        LeaseHandle::ack_demotion(self)
    }

    async fn end_error(&self) -> ClientError {
        // The session has ended, so this returns at once with the recorded cause.
        match self.held().await {
            Err(e) => e,
            Ok(_) => ClientError::Closed,
        }
    }

    async fn close(self) {
        LeaseHandle::close(self).await
    }
}

/// The hook commands.
#[derive(Debug, Clone)]
pub(crate) struct HookCommands {
    /// `sh -c` command run on promotion.
    pub on_promote: Option<String>,
    /// `sh -c` command run on demotion.
    pub on_demote: Option<String>,
    /// Time the promote hook may run before it is killed.
    pub promote_timeout: Duration,
    /// Time the demote hook may run before it is killed (demotion starts this long before
    /// the lease's validity ends).
    pub demote_timeout: Duration,
}

impl HookCommands {
    /// Starts `hook`; firing the returned sender kills it (it then ends as cancelled).
    fn start(&self, hook: Hook) -> (BoxFuture<'static, HookOutcome>, oneshot::Sender<()>) {
        let (command, timeout) = match hook.kind {
            HookKind::Promote => (self.on_promote.clone(), self.promote_timeout),
            HookKind::Demote => (self.on_demote.clone(), self.demote_timeout),
        };
        let (cancel, cancelled) = oneshot::channel::<()>();
        let fut = async move {
            // A dropped sender is no cancel: only an explicit send kills the hook.
            let cancelled = async move {
                if cancelled.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            match command {
                Some(c) => run_hook_until(&c, &hook, timeout, cancelled).await,
                // The core does not ask for hooks that are not configured; if it did,
                // there is nothing to run.
                None => HookOutcome::Succeeded,
            }
        }
        .boxed();
        (fut, cancel)
    }
}

enum Event {
    Shutdown,
    Status { ended: bool },
    HookDone(HookOutcome),
    Tick,
}

async fn wait_hook(hook: &mut Option<BoxFuture<'static, HookOutcome>>) -> HookOutcome {
    match hook {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Acknowledges the demotion of `token`, unless the session is no longer revoking that
/// token (it may have moved on since the core decided): the session's ack is not
/// token-specific, and must never demote a newer grant.
fn ack<S: LeaseSession>(session: &S, status: &watch::Receiver<LeaseStatus>, token: u64) {
    let current = *status.borrow();
    match current {
        LeaseStatus::Revoking { token: t, .. } if t == token => {
            info!(token, "acknowledging the demotion to the coordinator");
            session.ack_demotion();
        }
        other => {
            warn!(token, status = ?other, "not acknowledging the demotion: the lease moved on");
        }
    }
}

/// Runs the agent until `shutdown` resolves (then demotes the service if it is primary,
/// waits for that hook and closes the session) or the session ends by itself (refused by
/// the cluster: then the service is demoted too and the session's error returned).
pub(crate) async fn drive<S: LeaseSession>(
    session: S,
    mut core: AgentCore,
    hooks: &HookCommands,
    publish: &watch::Sender<AgentState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut status = session.status();
    let mut hook: Option<BoxFuture<'static, HookOutcome>> = None;
    let mut cancel: Option<oneshot::Sender<()>> = None;
    let mut stopping = false;
    let mut ended = false;
    let first = *status.borrow_and_update();
    let mut actions = core.on_status(first, Instant::now());
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Publish(state) => {
                    // Every renewal moves `valid_until`; only role changes are news.
                    if state.role != publish.borrow().role {
                        info!(role = state.role.as_str(), token = ?state.token, "published role changed");
                    }
                    publish.send_replace(state);
                }
                Action::RunHook(h) => {
                    let (fut, c) = hooks.start(h);
                    hook = Some(fut);
                    cancel = Some(c);
                }
                Action::CancelHook => {
                    if let Some(c) = cancel.take() {
                        let _ = c.send(());
                    }
                }
                Action::Ack { token } => ack(&session, &status, token),
            }
        }
        if (stopping || ended) && core.is_idle() {
            break;
        }
        let deadline = core.deadline();
        let event = tokio::select! {
            () = &mut shutdown, if !stopping => Event::Shutdown,
            changed = status.changed(), if !ended => Event::Status { ended: changed.is_err() },
            outcome = wait_hook(&mut hook) => Event::HookDone(outcome),
            () = sleep_until_opt(deadline) => Event::Tick,
        };
        let now = Instant::now();
        actions = match event {
            Event::Shutdown => {
                info!("agent stopping: demoting the service if it is primary");
                stopping = true;
                core.on_shutdown(now)
            }
            Event::Status { ended: e } => {
                ended |= e;
                // After the session ended this is its last status (Lost).
                let s = *status.borrow_and_update();
                core.on_status(s, now)
            }
            Event::HookDone(outcome) => {
                hook = None;
                cancel = None;
                core.on_hook_done(&outcome, now)
            }
            Event::Tick => core.on_tick(now),
        };
    }
    if ended {
        return Err(AgentError::Session(session.end_error().await));
    }
    session.close().await;
    Ok(())
}
