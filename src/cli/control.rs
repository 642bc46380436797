//! Operator controls of automation: `baton approve|reject RUN`, `baton freeze|unfreeze
//! SERVICE`, `baton ack SERVICE` and `baton set-mode SERVICE read-only|read-write`. Each is
//! one audited write that needs a reason.

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::failover::FAILOVER_TIMEOUT;
use super::output::{lease_row, Table, LEASE_COLUMNS};
use super::workflow::step_text;
use super::{CliError, Ctx, Exit};
use crate::client::LeaseMode;
use crate::proto;

/// `baton approve` and `baton reject`.
#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The run waiting at an approval step (`baton workflows` lists them).
    #[arg(value_name = "RUN")]
    pub run: u64,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `baton freeze`, `baton unfreeze` and `baton ack`.
#[derive(Debug, Args)]
pub struct ServiceReasonArgs {
    /// The service.
    pub service: String,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// The lease mode named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The primary serves reads only (graceful degradation).
    ReadOnly,
    /// The primary serves reads and writes.
    ReadWrite,
}

impl From<ModeArg> for LeaseMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::ReadOnly => LeaseMode::ReadOnly,
            ModeArg::ReadWrite => LeaseMode::ReadWrite,
        }
    }
}

/// `baton set-mode`.
#[derive(Debug, Args)]
pub struct SetModeArgs {
    /// The service.
    pub service: String,
    /// The new mode.
    #[arg(value_enum)]
    pub mode: ModeArg,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// Refuses an empty reason before anything is sent.
fn need_reason(reason: &str, what: &str) -> Result<(), CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage(format!(
            "--reason must say why {what} (it goes into the audit trail)"
        )));
    }
    Ok(())
}

/// A run after an approval or a rejection.
pub fn decision_table(approve: bool, run: u64, workflow: Option<&proto::Workflow>) -> Table {
    let (service, state, step) = match workflow {
        Some(w) => (
            Value::from(w.service.clone()),
            Value::from(w.state.clone()),
            Value::from(step_text(w)),
        ),
        None => (Value::Null, Value::Null, Value::Null),
    };
    Table::record(
        &["run", "decision", "service", "state", "step"],
        vec![
            Value::from(run),
            Value::from(if approve { "approved" } else { "rejected" }),
            service,
            state,
            step,
        ],
    )
}

/// `baton approve RUN` (`approve = true`) or `baton reject RUN`.
pub async fn decide(ctx: &mut Ctx<'_>, args: DecideArgs, approve: bool) -> Result<Exit, CliError> {
    need_reason(
        &args.reason,
        if approve {
            "the run is approved"
        } else {
            "the run is rejected"
        },
    )?;
    // The leader commits the decision before it answers; give it a failover's deadline.
    let client = ctx.client_with_default_timeout(FAILOVER_TIMEOUT)?;
    let resp = client.approve(args.run, approve, &args.reason).await?;
    ctx.print(&decision_table(approve, args.run, resp.workflow.as_ref()))?;
    Ok(Exit::Ok)
}

/// Whether automation of a service is frozen.
pub fn frozen_table(service: &str, frozen: bool) -> Table {
    Table::record(
        &["service", "frozen"],
        vec![Value::from(service), Value::from(frozen)],
    )
}

/// `baton freeze SERVICE` (`freeze = true`) or `baton unfreeze SERVICE`.
pub async fn freeze(
    ctx: &mut Ctx<'_>,
    args: ServiceReasonArgs,
    freeze: bool,
) -> Result<Exit, CliError> {
    need_reason(
        &args.reason,
        if freeze {
            "automation is frozen"
        } else {
            "automation resumes"
        },
    )?;
    let client = ctx.client()?;
    let resp = client.freeze(&args.service, freeze, &args.reason).await?;
    ctx.print(&frozen_table(&args.service, resp.frozen))?;
    Ok(Exit::Ok)
}

/// `baton ack SERVICE`: automation resumes after a flap pause.
pub async fn ack(ctx: &mut Ctx<'_>, args: ServiceReasonArgs) -> Result<Exit, CliError> {
    need_reason(&args.reason, "the flap pause is acknowledged")?;
    let client = ctx.client()?;
    client.ack(&args.service, &args.reason).await?;
    let t = Table::record(
        &["service", "acknowledged"],
        vec![Value::from(args.service), Value::from(true)],
    );
    ctx.print(&t)?;
    Ok(Exit::Ok)
}

/// The lease after a mode change (the service's name alone when the answer has no lease).
pub fn mode_table(service: &str, lease: Option<&proto::Lease>) -> Table {
    let mut row = lease.map(lease_row).unwrap_or_default();
    row.resize(LEASE_COLUMNS.len(), Value::Null);
    if row[0].is_null() || row[0] == "" {
        row[0] = Value::from(service);
    }
    Table::record(&LEASE_COLUMNS, row)
}

/// `baton set-mode SERVICE read-only|read-write`.
pub async fn set_mode(ctx: &mut Ctx<'_>, args: SetModeArgs) -> Result<Exit, CliError> {
    need_reason(&args.reason, "the mode changes")?;
    let client = ctx.client()?;
    let resp = client
        .set_mode(&args.service, args.mode.into(), &args.reason)
        .await?;
    ctx.print(&mode_table(&args.service, resp.lease.as_ref()))?;
    Ok(Exit::Ok)
}
