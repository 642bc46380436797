//! The leader-only controller: turns triggers (lease expiry, health verdicts, the failback
//! window, operator commands) into workflow runs and drives each run's steps.
//!
//! Every decision and step outcome is committed through Raft before it counts, so a new
//! leader picks a run up at the step the old one reached. A step's effect (revoke, grant)
//! is committed in the same entry as the step's outcome and is refused if the step was
//! already recorded: no effect is applied twice. Each service is driven by at most one task
//! at a time; a pass over all services runs on every tick and on every applied change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::keeper::Keeper;
use super::policy::{self, Decision, Health};
use super::{propose, wall_clock_ms, ControlError};
use crate::http_client;
use crate::raft::{Changes, NodeId, Raft, SharedState};
use crate::state::{
    audit::AUTOMATION, check_region, plan_for, Command, Effect, LeaseState, OnFailure, PhaseMark,
    Response, Run, ServiceRecord, StepKind, StepOutcome, StepState,
};

/// The controller of one node (active only while the node leads).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    shared: SharedState,
    keeper: Keeper,
    /// Services a task is working on now.
    busy: Mutex<BTreeSet<String>>,
}

impl Controller {
    /// Starts the controller loop; it acts only while `keeper` says this node leads.
    pub fn start(
        raft: Raft,
        shared: SharedState,
        keeper: Keeper,
        changes: Changes,
        tick: Duration,
        shutdown: watch::Receiver<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let c = Controller {
            inner: Arc::new(Inner {
                raft,
                shared,
                keeper,
                busy: Mutex::new(BTreeSet::new()),
            }),
        };
        tasks.spawn(c.clone().run(changes, tick, shutdown));
        c
    }

    async fn run(self, changes: Changes, tick: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut rx = changes.subscribe();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
                _ = self.inner.keeper.changed() => {}
                r = rx.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
            }
            if self.inner.keeper.is_leading() {
                self.pass();
            }
        }
    }

    /// One look at every service: start what must start, drive what runs.
    fn pass(&self) {
        let now = wall_clock_ms();
        let voters = crate::raft::voters(&self.inner.raft);
        let work: Vec<(ServiceRecord, Option<Run>)> = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            view.state
                .services()
                .map(|r| {
                    (
                        r.clone(),
                        r.active_run.and_then(|id| view.state.run(id).cloned()),
                    )
                })
                .collect()
        };
        for (rec, run) in work {
            let live = self.live(&rec);
            if run.is_none()
                && matches!(policy::decide(&rec, &voters, &live, now), Decision::Wait(_))
            {
                continue;
            }
            let name = rec.spec.name.clone();
            {
                let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
                if !busy.insert(name.clone()) {
                    continue;
                }
            }
            let this = self.clone();
            let voters = voters.clone();
            tokio::spawn(async move {
                // Keep acting on this service while each action makes progress, so a run's
                // steps follow each other without waiting for the next tick.
                for _ in 0..32 {
                    match this.act(&name, &voters).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(service = %name, "controller: {e}");
                            break;
                        }
                    }
                }
                this.inner
                    .busy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            });
        }
    }

    /// One action for a service: start a run, or advance its run. Ok(true) if something
    /// was committed.
    async fn act(
        &self,
        name: &str,
        voters: &BTreeMap<NodeId, String>,
    ) -> Result<bool, ControlError> {
        if !self.inner.keeper.is_leading() {
            return Ok(false);
        }
        let (rec, run) = {
            let view = self.inner.shared.read().unwrap_or_else(|e| e.into_inner());
            match view.state.service(name) {
                Some(r) => (
                    r.clone(),
                    r.active_run.and_then(|id| view.state.run(id).cloned()),
                ),
                None => return Ok(false),
            }
        };
        match run {
            Some(run) => self.drive(rec, run, voters).await,
            None => match policy::decide(&rec, voters, &self.live(&rec), wall_clock_ms()) {
                Decision::Wait(_) => Ok(false),
                Decision::Start {
                    kind,
                    trigger,
                    to,
                    reason,
                    detected_ms,
                } => {
                    let resp = self
                        .commit(Command::StartRun {
                            service: name.to_string(),
                            kind,
                            trigger,
                            to,
                            plan: plan_for(&rec.spec, kind),
                            reason,
                            detected_ms,
                            expected_token: Some(rec.lease.token),
                        })
                        .await?;
                    Ok(!matches!(resp, Response::Rejected(_)))
                }
            },
        }
    }

    /// Regions with an agent heard from within the lease's TTL.
    fn live(&self, rec: &ServiceRecord) -> std::collections::BTreeSet<String> {
        self.inner
            .keeper
            .live_regions(&rec.spec.name, Duration::from_millis(rec.lease.ttl_ms))
    }

    async fn commit(&self, cmd: Command) -> Result<Response, ControlError> {
        let what = cmd.action();
        let service = cmd.service().to_string();
        let (_, resp) = propose(&self.inner.raft, AUTOMATION, cmd).await?;
        if let Response::Rejected(r) = &resp {
            tracing::info!(%service, "controller: {what} refused: {r}");
        }
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        run: &Run,
        outcome: StepOutcome,
        effect: Option<Effect>,
        phase: Option<PhaseMark>,
        reason: String,
    ) -> Result<bool, ControlError> {
        self.commit(Command::AdvanceRun {
            service: run.service.clone(),
            run: run.id,
            step: run.current,
            outcome,
            effect,
            phase,
            reason,
        })
        .await
        .map(|r| !matches!(r, Response::Rejected(_)))
    }

    /// Takes one action for the run's current step (or none while it waits).
    async fn drive(
        &self,
        rec: ServiceRecord,
        run: Run,
        voters: &BTreeMap<NodeId, String>,
    ) -> Result<bool, ControlError> {
        let Some(step) = run.current_step().cloned() else {
            return Ok(false);
        };
        let lease = rec.lease.clone();
        let now = wall_clock_ms();
        if step.state == StepState::Pending {
            let effect = match step.spec.kind {
                StepKind::Fence
                    if lease.state == LeaseState::Held && lease.token == run.token_before =>
                {
                    Some(Effect::Revoke { token: lease.token })
                }
                _ => None,
            };
            let what = match &effect {
                Some(_) => format!(
                    "revoking token {} from {}",
                    lease.token,
                    lease.holder.as_deref().unwrap_or("")
                ),
                None => format!("{} started", step.spec.kind.name()),
            };
            return self
                .advance(&run, StepOutcome::Started, effect, None, what)
                .await;
        }
        // Running: timed out?
        if let Some(started) = step.started_ms {
            let limit = step.spec.effective_timeout_ms();
            if limit > 0 && now > started.saturating_add(limit.min(i64::MAX as u64) as i64) {
                let why = format!("{} timed out after {} ms", step.spec.kind.name(), limit);
                return self
                    .fail(&rec, &run, step.spec.on_failure, why, voters)
                    .await;
            }
        }
        match &step.spec.kind {
            StepKind::Precheck => {
                let mut problems = Vec::new();
                if let Err(e) = check_region(&rec.spec, &run.to) {
                    problems.push(e.to_string());
                }
                let h = policy::region_health(&rec, &run.to, voters);
                if h.health == Health::Down {
                    problems.push(format!("{} is {}", run.to, h.explanation));
                }
                if lease.token != run.token_before {
                    problems.push(format!(
                        "the lease moved on (token {} -> {})",
                        run.token_before, lease.token
                    ));
                }
                if problems.is_empty() {
                    let detail = format!("{} allowed; health: {}", run.to, h.explanation);
                    self.advance(&run, StepOutcome::Done, None, None, detail)
                        .await
                } else {
                    self.fail(
                        &rec,
                        &run,
                        step.spec.on_failure,
                        problems.join("; "),
                        voters,
                    )
                    .await
                }
            }
            StepKind::Fence => {
                if lease.token != run.token_before {
                    // Someone else changed the lease: this run's view is stale.
                    let why = format!(
                        "the lease moved on (token {} -> {})",
                        run.token_before, lease.token
                    );
                    return self
                        .fail(&rec, &run, step.spec.on_failure, why, voters)
                        .await;
                }
                if lease.state == LeaseState::Vacant {
                    return self
                        .advance(
                            &run,
                            StepOutcome::Done,
                            None,
                            Some(PhaseMark::Fenced),
                            "vacant".into(),
                        )
                        .await;
                }
                if lease.state == LeaseState::Held {
                    // Revoked in an entry this run did not record (should not happen): revoke now.
                    return self
                        .advance(
                            &run,
                            StepOutcome::Started,
                            Some(Effect::Revoke { token: lease.token }),
                            None,
                            "revoking".into(),
                        )
                        .await;
                }
                match self.inner.keeper.fence_status(&run.service, lease.token)? {
                    Some(how) => {
                        self.advance(
                            &run,
                            StepOutcome::Done,
                            None,
                            Some(PhaseMark::Fenced),
                            how.as_str().to_string(),
                        )
                        .await
                    }
                    None => Ok(false),
                }
            }
            StepKind::Grant => {
                if lease.state == LeaseState::Held {
                    let why = format!(
                        "{} holds the lease: it was not fenced",
                        lease.holder.as_deref().unwrap_or("")
                    );
                    return self
                        .fail(&rec, &run, step.spec.on_failure, why, voters)
                        .await;
                }
                let effect = Effect::Grant {
                    expected_token: lease.token,
                };
                self.advance(
                    &run,
                    StepOutcome::Done,
                    Some(effect),
                    Some(PhaseMark::Granted),
                    format!("granted {}", run.to),
                )
                .await
            }
            StepKind::WaitHealthy => {
                let h = policy::region_health(&rec, &run.to, voters);
                let healthy = match h.health {
                    Health::Healthy => true,
                    Health::Unknown => !rec.spec.health.contains_key(&run.to),
                    Health::Down => false,
                };
                if healthy {
                    self.advance(&run, StepOutcome::Done, None, None, h.explanation)
                        .await
                } else {
                    Ok(false)
                }
            }
            StepKind::Webhook(url) => {
                let body = serde_json::json!({
                    "run": run.id, "service": run.service, "kind": run.kind.as_str(),
                    "from": run.from, "to": run.to, "token_before": run.token_before,
                    "trigger": run.trigger.describe(), "reason": run.reason,
                })
                .to_string();
                let timeout = Duration::from_millis(step.spec.timeout_ms.clamp(1, 10_000));
                match post_json(url, &body, timeout).await {
                    Ok(status) => {
                        self.advance(
                            &run,
                            StepOutcome::Done,
                            None,
                            None,
                            format!("HTTP {status}"),
                        )
                        .await
                    }
                    Err(e) => {
                        self.fail(
                            &rec,
                            &run,
                            step.spec.on_failure,
                            format!("webhook {url}: {e}"),
                            voters,
                        )
                        .await
                    }
                }
            }
            StepKind::Approval | StepKind::ApprovalByAnother => Ok(false),
            StepKind::Verify => {
                let held = lease.state == LeaseState::Held
                    && lease.holder.as_deref() == Some(run.to.as_str())
                    && Some(lease.token) == run.token_after;
                if !held {
                    let why = format!("{} does not hold the lease it was granted", run.to);
                    return self
                        .fail(&rec, &run, step.spec.on_failure, why, voters)
                        .await;
                }
                let renewed = self
                    .inner
                    .keeper
                    .holder_renewed(&run.service, &run.to, lease.token);
                let healthy =
                    policy::region_health(&rec, &run.to, voters).health == Health::Healthy;
                if renewed || healthy {
                    let how = if renewed {
                        "an agent of the new holder renewed"
                    } else {
                        "the new holder is healthy"
                    };
                    self.advance(
                        &run,
                        StepOutcome::Done,
                        None,
                        Some(PhaseMark::Verified),
                        how.into(),
                    )
                    .await
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Records a step failure; with `rollback`, gives the lease back where that is safe.
    async fn fail(
        &self,
        rec: &ServiceRecord,
        run: &Run,
        policy: OnFailure,
        why: String,
        voters: &BTreeMap<NodeId, String>,
    ) -> Result<bool, ControlError> {
        let mut effect = None;
        if policy == OnFailure::Rollback {
            // Safe only when nobody holds the lease (the old holder was fenced, the target was
            // not granted) and the old holder's region is not down.
            if let Some(from) = &run.from {
                let from_ok = policy::region_health(rec, from, voters).health != Health::Down;
                // Only the lease this run revoked may go back: a lease another change moved on
                // may still be acted on by someone else.
                let ours = rec.lease.token == run.token_before;
                if ours
                    && rec.lease.state != LeaseState::Held
                    && from_ok
                    && rec.spec.is_allowed(from)
                {
                    effect = Some(Effect::GrantBack {
                        expected_token: rec.lease.token,
                    });
                }
            }
        }
        self.advance(run, StepOutcome::Failed, effect, None, why)
            .await
    }
}

/// POSTs `body` as JSON to an `http://host:port/path` URL; Ok(status) on 2xx. Only the
/// status is read: a webhook's answer body means nothing to the run.
pub async fn post_json(url: &str, body: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// webhooks are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let request = http_client::request(
        hyper::Method::POST,
        authority,
        path,
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "baton"),
        ],
        body.to_string(),
    )?;
    let answer = http_client::fetch(&addr, request, timeout, 0, |_, _| true)
        .await
        .map_err(|e| match e {
            http_client::Error::Connect(e) => format!("connect {addr}: {e}"),
            http_client::Error::Timeout => {
                format!("timeout after {}", humantime::format_duration(timeout))
            }
            http_client::Error::Exchange { error, .. } if error.is_parse() => {
                "no HTTP status in the answer".to_string()
            }
            e => e.to_string(),
        })?;
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        Ok(status)
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answers one connection with `reply` (none: stays silent) and hands back the request
    /// as read in one read.
    async fn hook(reply: Option<&'static [u8]>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            match reply {
                Some(r) => {
                    let _ = conn.write_all(r).await;
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (url, task)
    }

    #[tokio::test]
    async fn post_json_sends_the_body_and_reads_only_the_status() {
        // The body is never read: a server that keeps the connection open does not stall.
        let (url, task) = hook(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
        let r = post_json(&url, "{\"run\":1}", Duration::from_secs(2)).await;
        assert_eq!(r, Ok(204));
        let request = task.await.unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nContent-Type: application/json\r\n"));
        assert!(request.contains("\r\nUser-Agent: baton\r\n"));
        assert!(request.ends_with("\r\n\r\n{\"run\":1}"), "{request}");
    }

    #[tokio::test]
    async fn post_json_explains_failures() {
        let (url, _t) = hook(Some(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")).await;
        let r = post_json(&url, "{}", Duration::from_secs(2)).await;
        assert_eq!(r, Err("HTTP 500".to_string()));

        let (url, _t) = hook(Some(b"SSH-2.0-OpenSSH\r\n")).await;
        let r = post_json(&url, "{}", Duration::from_secs(2)).await;
        assert_eq!(r, Err("no HTTP status in the answer".to_string()));

        let (url, _t) = hook(None).await;
        let r = post_json(&url, "{}", Duration::from_millis(200)).await;
        assert_eq!(r, Err("timeout after 200ms".to_string()));

        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = post_json(
            &format!("http://127.0.0.1:{port}/"),
            "{}",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            r.as_ref()
                .is_err_and(|e| e.starts_with(&format!("connect 127.0.0.1:{port}: "))),
            "{r:?}"
        );

        let r = post_json("https://h/x", "{}", Duration::from_secs(1)).await;
        assert!(r.is_err_and(|e| e.contains("only http://")));
    }
}
