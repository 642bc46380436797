//! `baton workflows` (runs, newest first) and `baton workflow RUN` (one run: its steps and
//! its phase timeline, with time to detect and time to recover).

use clap::Args;
use serde_json::Value;

use super::output::{millis, timestamp, Table};
use super::{CliError, Ctx, Exit};
use crate::proto;

/// `baton workflows`.
#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    /// Only runs of this service.
    pub service: Option<String>,
    /// Show at most this many runs.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

/// `baton workflow`.
#[derive(Debug, Args)]
pub struct WorkflowArgs {
    /// The run id (`baton workflows` lists them; failover and failback print theirs).
    #[arg(value_name = "RUN")]
    pub run: u64,
}

/// Where a run is: `2/4 fence` while at a step (or stopped there), `done` after the last.
pub fn step_text(w: &proto::Workflow) -> String {
    let total = w.steps.len();
    match w.steps.get(w.current_step as usize) {
        Some(step) => format!("{}/{total} {}", w.current_step as usize + 1, step.kind),
        None if total == 0 => "-".into(),
        None => "done".into(),
    }
}

/// `from→to` of a run (`none` when the lease was vacant).
pub fn move_text(w: &proto::Workflow) -> String {
    let from = if w.from_region.is_empty() {
        "none"
    } else {
        &w.from_region
    };
    format!("{from}→{}", w.to_region)
}

/// `before→after` tokens of a run (`-` for a token not issued yet).
pub fn tokens_text(w: &proto::Workflow) -> String {
    let after = if w.token_after == 0 {
        "-".to_string()
    } else {
        w.token_after.to_string()
    };
    format!("{}→{after}", w.token_before)
}

/// Runs as a table, one per row.
pub fn workflows_table(runs: &[proto::Workflow]) -> Table {
    let mut t = Table::new(&[
        "id",
        "service",
        "kind",
        "trigger",
        "move",
        "state",
        "step",
        "tokens",
        "from",
        "to",
        "token_before",
        "token_after",
        "detected",
        "error",
    ])
    .json_only(&[
        "from",
        "to",
        "token_before",
        "token_after",
        "detected",
        "error",
    ]);
    for w in runs {
        t.push(vec![
            Value::from(w.id),
            Value::from(w.service.clone()),
            Value::from(w.kind.clone()),
            Value::from(w.trigger.clone()),
            Value::from(move_text(w)),
            Value::from(w.state.clone()),
            Value::from(step_text(w)),
            Value::from(tokens_text(w)),
            Value::from(w.from_region.clone()),
            Value::from(w.to_region.clone()),
            Value::from(w.token_before),
            nonzero(w.token_after),
            timestamp(w.detected_unix_ms),
            Value::from(w.error.clone()),
        ]);
    }
    t
}

fn nonzero(v: u64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        Value::from(v)
    }
}

/// `to - from` in ms when both times are set and in order.
fn between(from_ms: i64, to_ms: i64) -> Option<u64> {
    if from_ms <= 0 || to_ms <= 0 || to_ms < from_ms {
        return None;
    }
    u64::try_from(to_ms - from_ms).ok()
}

fn duration(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::from(millis(ms)))
}

/// The phases of a run in order, with their times (0 = not reached).
pub fn phases(w: &proto::Workflow) -> [(&'static str, i64); 6] {
    [
        ("detected", w.detected_unix_ms),
        ("decided", w.decided_unix_ms),
        ("fenced", w.fenced_unix_ms),
        ("granted", w.granted_unix_ms),
        ("verified", w.verified_unix_ms),
        ("finished", w.finished_unix_ms),
    ]
}

/// From the trigger being observed to the run being decided, in ms.
pub fn time_to_detect(w: &proto::Workflow) -> Option<u64> {
    between(w.detected_unix_ms, w.decided_unix_ms)
}

/// From the trigger being observed to the new primary being verified (or granted, for a
/// plan without a verify step), in ms.
pub fn time_to_recover(w: &proto::Workflow) -> Option<u64> {
    let recovered = if w.verified_unix_ms > 0 {
        w.verified_unix_ms
    } else {
        w.granted_unix_ms
    };
    between(w.detected_unix_ms, recovered)
}

/// The phase timeline of runs: each phase reached, when, how long after `detected`, and
/// how long after the previous phase (`took`). The run and kind columns are JSON-only when
/// `one_run`.
pub fn timeline_table(runs: &[&proto::Workflow], one_run: bool) -> Table {
    let mut t = Table::new(&["run", "kind", "phase", "at", "since_detected", "took"]);
    if one_run {
        t = t.json_only(&["run", "kind"]);
    }
    for w in runs {
        let mut previous = 0i64;
        for (phase, at) in phases(w) {
            if at <= 0 {
                continue;
            }
            t.push(vec![
                Value::from(w.id),
                Value::from(w.kind.clone()),
                Value::from(phase),
                timestamp(at),
                duration(between(w.detected_unix_ms, at)),
                duration(between(previous, at)),
            ]);
            previous = at;
        }
    }
    t
}

/// One run's summary as a vertical record.
pub fn run_table(w: &proto::Workflow) -> Table {
    Table::record(
        &[
            "id",
            "service",
            "kind",
            "trigger",
            "from",
            "to",
            "actor",
            "reason",
            "state",
            "step",
            "token_before",
            "token_after",
            "error",
            "time_to_detect",
            "time_to_recover",
        ],
        vec![
            Value::from(w.id),
            Value::from(w.service.clone()),
            Value::from(w.kind.clone()),
            Value::from(w.trigger.clone()),
            Value::from(w.from_region.clone()),
            Value::from(w.to_region.clone()),
            Value::from(w.actor.clone()),
            Value::from(w.reason.clone()),
            Value::from(w.state.clone()),
            Value::from(step_text(w)),
            Value::from(w.token_before),
            nonzero(w.token_after),
            Value::from(w.error.clone()),
            duration(time_to_detect(w)),
            duration(time_to_recover(w)),
        ],
    )
    .vertical()
}

/// The steps of a run: state, attempts, timeout (`none` = no limit), on-failure policy,
/// how long it took, detail.
pub fn steps_table(w: &proto::Workflow) -> Table {
    let mut t = Table::new(&[
        "n",
        "step",
        "state",
        "attempts",
        "timeout",
        "on_failure",
        "took",
        "detail",
        "started",
        "finished",
    ])
    .json_only(&["started", "finished"]);
    for (i, s) in w.steps.iter().enumerate() {
        t.push(vec![
            Value::from(i + 1),
            Value::from(s.kind.clone()),
            Value::from(s.state.clone()),
            Value::from(s.attempts),
            Value::from(if s.timeout_ms == 0 {
                "none".to_string()
            } else {
                millis(s.timeout_ms)
            }),
            Value::from(s.on_failure.clone()),
            duration(between(s.started_unix_ms, s.finished_unix_ms)),
            Value::from(s.detail.clone()),
            timestamp(s.started_unix_ms),
            timestamp(s.finished_unix_ms),
        ]);
    }
    t
}

/// `baton workflows [SERVICE]`.
pub async fn list(ctx: &mut Ctx<'_>, args: WorkflowsArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let resp = client
        .workflows(args.service.as_deref(), args.limit)
        .await?;
    ctx.print(&workflows_table(&resp.workflows))?;
    Ok(Exit::Ok)
}

/// `baton workflow RUN`.
pub async fn show(ctx: &mut Ctx<'_>, args: WorkflowArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let w = client.workflow(args.run).await?;
    let run = run_table(&w);
    let steps = steps_table(&w);
    let timeline = timeline_table(&[&w], true);
    ctx.print_sections(&[("run", &run), ("steps", &steps), ("timeline", &timeline)])?;
    Ok(Exit::Ok)
}
