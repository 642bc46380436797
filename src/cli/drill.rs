//! `baton drill SERVICE --to REGION`: a rehearsed failover. A switchover to REGION, a check
//! of the lease (linearizable) and of REGION's health, then the failback to the preferred
//! region and the same checks; finally the phase timeline of both runs. Every part is
//! reported; the exit code is non-zero when any failed, and the message says which.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::failover::FAILOVER_TIMEOUT;
use super::moves::{failed_checks, holder_text, lease_table, Move};
use super::output::{millis, OutputFormat, Table};
use super::plan::{candidate_down, candidates_table, preferred_region};
use super::workflow::{move_text, time_to_recover, timeline_table};
use super::{confirm, note, CliError, Ctx, Exit};
use crate::client::{Client, ClientError, Consistency};
use crate::proto;
use tonic::Code;

/// `baton drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The service to rehearse a failover of.
    pub service: String,
    /// The region to switch over to (not the preferred region: the failback returns there).
    #[arg(long, value_name = "REGION")]
    pub to: String,
    /// Why (recorded in the audit trail of both runs).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Do not ask for confirmation (it is only asked on a terminal anyway).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// The outcome of one part of a drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What was done or checked (`switchover`, `lease after failback`, ...).
    pub name: String,
    /// `Some(true)` passed, `Some(false)` failed, `None` skipped.
    pub passed: Option<bool>,
    /// What happened.
    pub detail: String,
}

impl Part {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: Some(true),
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: Some(false),
            detail: detail.into(),
        }
    }

    fn skipped(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: None,
            detail: why.into(),
        }
    }
}

/// The parts of a drill: result `pass`, `FAIL` or `skipped`, with what happened.
pub fn parts_table(parts: &[Part]) -> Table {
    let mut t = Table::new(&["part", "result", "detail", "passed"]).json_only(&["passed"]);
    for p in parts {
        t.push(vec![
            Value::from(p.name.clone()),
            Value::from(match p.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "skipped",
            }),
            Value::from(p.detail.clone()),
            p.passed.map_or(Value::Null, Value::from),
        ]);
    }
    t
}

/// The failed parts, by name, for the error message.
pub fn failed_parts(parts: &[Part]) -> Vec<&str> {
    parts
        .iter()
        .filter(|p| p.passed == Some(false))
        .map(|p| p.name.as_str())
        .collect()
}

/// Checks the lease is held by `region` (with `token` when known), reading linearizably.
pub fn lease_part(
    name: &str,
    answer: Result<proto::GetPrimaryResponse, ClientError>,
    region: &str,
    token: Option<u64>,
) -> Part {
    let lease = match answer {
        Ok(resp) => resp.lease.unwrap_or_default(),
        Err(e) => return Part::fail(name, format!("cannot read the lease: {e}")),
    };
    let held = lease.state() == proto::LeaseState::Held;
    let here = lease.holder_region == region;
    let same_token = token.is_none_or(|t| t == lease.token);
    if held && here && same_token {
        Part::pass(
            name,
            format!("{region} holds the lease (token {})", lease.token),
        )
    } else {
        Part::fail(
            name,
            format!(
                "expected {region} to hold the lease{}, found {} in state {}",
                token.map_or(String::new(), |t| format!(" with token {t}")),
                holder_text(Some(&lease)),
                super::output::lease_state(&lease)
            ),
        )
    }
}

/// Checks the vantage regions do not judge `region` down, from a plan.
pub fn health_part(
    name: &str,
    answer: Result<proto::PlanResponse, ClientError>,
    region: &str,
) -> Part {
    let plan = match answer {
        Ok(p) => p,
        Err(e) => return Part::fail(name, format!("cannot read the plan: {e}")),
    };
    match plan.candidates.iter().find(|c| c.region == region) {
        None => Part::fail(name, format!("{region} is not a candidate region")),
        Some(c) if candidate_down(c) => Part::fail(name, format!("{region}: {}", c.health)),
        Some(c) => Part::pass(name, format!("{region}: {}", c.health)),
    }
}

/// A moved lease in words, for a part's detail.
fn moved_text(done: &proto::FailoverResponse, took: Duration) -> String {
    let to = done.after.as_ref().map_or("?".to_string(), |l| {
        format!("{} (token {})", l.holder_region, l.token)
    });
    format!(
        "run {}: {} -> {to}; fenced by {} in {}; took {}",
        done.run_id,
        holder_text(done.before.as_ref()),
        done.fenced_by,
        millis(done.fence_ms),
        humantime::format_duration(Duration::from_millis(took.as_millis() as u64))
    )
}

/// Where a move left the lease.
struct Moved {
    run_id: u64,
    region: String,
    token: u64,
}

/// The drill's state between its parts.
struct Drill<'a> {
    client: &'a Client,
    service: &'a str,
    reason: String,
    parts: Vec<Part>,
    /// The first failed move (its client error keeps its exit code).
    move_error: Option<CliError>,
}

impl Drill<'_> {
    fn record(&mut self, part: Part) {
        let mark = match part.passed {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "skipped",
        };
        note(&format!("drill: {}: {mark}: {}", part.name, part.detail));
        self.parts.push(part);
    }

    /// Carries out a move to `target`; records it as `name`. When the cluster refuses it
    /// because a run of `adopt.0` newer than run `adopt.1` is already in progress (automation
    /// got there first, e.g. an automatic failback), waits for that run and reports it.
    async fn move_(
        &mut self,
        name: &str,
        kind: Move,
        target: &str,
        expected_token: u64,
        adopt: Option<(&str, u64)>,
    ) -> Option<Moved> {
        note(&format!("drill: {name}..."));
        let started = Instant::now();
        let e = match kind
            .call(
                self.client,
                self.service,
                &self.reason,
                expected_token,
                false,
            )
            .await
        {
            Ok(done) => {
                self.record(Part::pass(name, moved_text(&done, started.elapsed())));
                let after = done.after.unwrap_or_default();
                return Some(Moved {
                    run_id: done.run_id,
                    region: if after.holder_region.is_empty() {
                        target.to_string()
                    } else {
                        after.holder_region
                    },
                    token: after.token,
                });
            }
            Err(e) => e,
        };
        if let Some((run_kind, since)) = adopt.filter(|_| e.code() == Code::FailedPrecondition) {
            if let Some(w) = self.adopt(run_kind, since).await {
                let detail = format!(
                    "carried out by automation: run {} ({}): {}, {}; token {} (our request: {e})",
                    w.id,
                    w.trigger,
                    move_text(&w),
                    w.state,
                    w.token_after
                );
                if w.state == "succeeded" {
                    self.record(Part::pass(name, detail));
                    return Some(Moved {
                        run_id: w.id,
                        region: w.to_region,
                        token: w.token_after,
                    });
                }
                self.record(Part::fail(name, format!("{detail}: {}", w.error)));
                if self.move_error.is_none() {
                    self.move_error = Some(CliError::CheckFailed(format!(
                        "drill of {}: the {name} failed: run {} {}",
                        self.service, w.id, w.state
                    )));
                }
                return None;
            }
        }
        self.record(Part::fail(name, e.to_string()));
        if self.move_error.is_none() {
            self.move_error = Some(CliError::ClientAt {
                context: format!("drill of {}: the {name} failed", self.service),
                source: e,
            });
        }
        None
    }

    /// Waits (within the client's deadline) for the newest run of `kind` after run `since`
    /// to finish, and returns it; `None` when there is none or it did not finish in time.
    async fn adopt(&self, kind: &str, since: u64) -> Option<proto::Workflow> {
        let id = self.started_run(kind, since).await?;
        note(&format!(
            "drill: automation is already running {kind} run {id}; waiting for it"
        ));
        let deadline = Instant::now() + self.client.timeout();
        loop {
            if let Ok(w) = self.client.workflow(id).await {
                if w.state != "running" {
                    return Some(w);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Checks the lease and the health of `region` after a move.
    async fn check(&mut self, after: &str, region: &str, token: Option<u64>) {
        let lease = self
            .client
            .primary(self.service, Consistency::Linearizable)
            .await;
        self.record(lease_part(
            &format!("lease after {after}"),
            lease,
            region,
            token,
        ));
        let plan = self.client.plan(self.service).await;
        self.record(health_part(&format!("health after {after}"), plan, region));
    }

    /// The run a failed move may still have started: the newest of `kind` after `since`.
    async fn started_run(&self, kind: &str, since: u64) -> Option<u64> {
        let runs = self.client.workflows(Some(self.service), 5).await.ok()?;
        runs.workflows
            .iter()
            .filter(|w| w.kind == kind && w.id > since)
            .map(|w| w.id)
            .max()
    }
}

/// `baton drill SERVICE --to REGION --reason TEXT`.
pub async fn run(ctx: &mut Ctx<'_>, args: DrillArgs) -> Result<Exit, CliError> {
    if args.reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why the drill runs (it goes into the audit trail)".into(),
        ));
    }
    let client = ctx.client_with_default_timeout(FAILOVER_TIMEOUT)?;
    let format = ctx.format();
    let service = args.service.as_str();
    let reason = format!("drill: {}", args.reason.trim());
    let there = Move::To(args.to.clone());

    // Before anything moves: both runs must be possible.
    let switch_plan = there
        .call(&client, service, &reason, 0, true)
        .await
        .map_err(|source| CliError::ClientAt {
            context: format!("drill of {service}: planning the switchover to {}", args.to),
            source,
        })?;
    let back_plan = Move::Back
        .call(&client, service, &reason, 0, true)
        .await
        .map_err(|source| CliError::ClientAt {
            context: format!("drill of {service}: planning the failback"),
            source,
        })?;
    let preferred = preferred_region(&back_plan.candidates)
        .or_else(|| preferred_region(&switch_plan.candidates))
        .map(str::to_string)
        .ok_or_else(|| {
            CliError::Refused(format!("{service} has no allowed region to fail back to"))
        })?;
    if preferred == args.to {
        return Err(CliError::Usage(format!(
            "{} is the preferred region of {service}, where the failback returns: drill to \
             another region (`baton plan {service}` lists them)",
            args.to
        )));
    }
    let failed = failed_checks(&switch_plan.checks);
    if !failed.is_empty() {
        let before = lease_table(switch_plan.before.as_ref());
        let checks = super::failover::checks_table(&switch_plan.checks);
        let candidates = candidates_table(&switch_plan.candidates);
        ctx.print_sections(&[
            ("before", &before),
            ("checks", &checks),
            ("candidates", &candidates),
        ])?;
        return Err(CliError::Refused(format!(
            "the drill's switchover to {} would be refused: {} did not pass; nothing was changed",
            args.to,
            failed.join(", ")
        )));
    }
    let from = holder_text(switch_plan.before.as_ref());
    if !args.yes
        && !confirm(format!(
            "Drill {service}: move the primary from {from} to {}, then fail back to {preferred}?",
            args.to
        ))
        .await?
    {
        return Err(CliError::Aborted("nothing was changed".into()));
    }
    // Runs started before the drill, to tell ours apart when a move fails without an id.
    let baseline = client
        .workflows(Some(service), 1)
        .await
        .ok()
        .and_then(|r| r.workflows.first().map(|w| w.id))
        .unwrap_or(0);

    let mut drill = Drill {
        client: &client,
        service,
        reason,
        parts: Vec::new(),
        move_error: None,
    };
    let mut run_ids: Vec<(u64, &str)> = Vec::new();
    let expected = switch_plan.before.as_ref().map_or(0, |l| l.token);
    let switched = drill
        .move_(
            &format!("switchover to {}", args.to),
            there,
            &args.to,
            expected,
            None,
        )
        .await;
    match &switched {
        Some(done) => {
            run_ids.push((done.run_id, "switchover"));
            let token = Some(done.token).filter(|t| *t > 0);
            drill.check("switchover", &done.region, token).await;
            let back = drill
                .move_(
                    &format!("failback to {preferred}"),
                    Move::Back,
                    &preferred,
                    done.token,
                    // With failback = auto, automation may fail back first.
                    Some(("failback", done.run_id)),
                )
                .await;
            match back {
                Some(back) => {
                    run_ids.push((back.run_id, "failback"));
                    let token = Some(back.token).filter(|t| *t > 0);
                    drill.check("failback", &back.region, token).await;
                }
                None => {
                    if let Some(id) = drill.started_run("failback", done.run_id).await {
                        run_ids.push((id, "failback"));
                    }
                    for part in ["lease after failback", "health after failback"] {
                        drill.record(Part::skipped(part, "the failback failed"));
                    }
                }
            }
        }
        None => {
            if let Some(id) = drill.started_run("switchover", baseline).await {
                run_ids.push((id, "switchover"));
            }
            for part in [
                "lease after switchover".to_string(),
                "health after switchover".to_string(),
                format!("failback to {preferred}"),
                "lease after failback".to_string(),
                "health after failback".to_string(),
            ] {
                drill.record(Part::skipped(part, "the switchover failed"));
            }
        }
    }

    // The timeline of both runs, from the runs themselves.
    let mut runs = Vec::new();
    for (id, kind) in run_ids.into_iter().filter(|(id, _)| *id != 0) {
        match client.workflow(id).await {
            Ok(w) => {
                let recover = time_to_recover(&w).map_or("-".into(), millis);
                let name = format!("{kind} run {id}");
                let detail = format!("{}; time to recover {recover}", w.state);
                drill.record(if w.state == "succeeded" {
                    Part::pass(name, detail)
                } else {
                    Part::fail(name, detail)
                });
                runs.push(w);
            }
            Err(e) => drill.record(Part::fail(
                format!("{kind} run {id}"),
                format!("cannot read the run: {e}"),
            )),
        }
    }
    let parts = parts_table(&drill.parts);
    let timeline = timeline_table(&runs.iter().collect::<Vec<_>>(), false);
    if format == OutputFormat::Table {
        writeln!(
            ctx.out,
            "Drill of {service}: {from} -> {} -> {preferred}\n",
            args.to
        )?;
    }
    ctx.print_sections(&[("drill", &parts), ("timeline", &timeline)])?;
    if let Some(e) = drill.move_error {
        return Err(e);
    }
    let failed = failed_parts(&drill.parts);
    if failed.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(CliError::CheckFailed(format!(
            "the drill of {service} failed: {}",
            failed.join(", ")
        )))
    }
}
