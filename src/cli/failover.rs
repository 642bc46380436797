//! `baton failover`: a planned switchover, shown before and after (like patronictl).

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::output::{lease_row, millis, OutputFormat, Table, LEASE_COLUMNS};
use super::{confirm, CliError, Ctx, Exit};
use crate::proto;

/// Default deadline of a failover: it may wait out the old holder's TTL.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// `baton failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The service whose primary moves.
    pub service: String,
    /// The region that becomes primary.
    #[arg(long, value_name = "REGION")]
    pub to: String,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Refuse unless the current fencing token is N (default: the token shown in the plan,
    /// so nothing that changed after you looked is moved).
    #[arg(long, value_name = "N")]
    pub expected_token: Option<u64>,
    /// Show the plan and which checks pass; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (it is only asked on a terminal anyway).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// A lease as a record (JSON: an object, or null when absent).
fn lease_table(lease: Option<&proto::Lease>) -> Table {
    match lease {
        Some(l) => Table::record(&LEASE_COLUMNS, lease_row(l)),
        None => Table::new(&LEASE_COLUMNS).as_record(),
    }
}

/// The checks of a plan.
pub fn checks_table(checks: &[proto::Check]) -> Table {
    let mut t = Table::new(&["check", "result", "detail", "passed"]).json_only(&["passed"]);
    for c in checks {
        t.push(vec![
            Value::from(c.name.clone()),
            Value::from(if c.passed { "pass" } else { "FAIL" }),
            Value::from(c.detail.clone()),
            Value::from(c.passed),
        ]);
    }
    t
}

fn failed_checks(checks: &[proto::Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect()
}

/// `baton failover SERVICE --to REGION --reason TEXT`.
pub async fn run(ctx: &mut Ctx<'_>, args: FailoverArgs) -> Result<Exit, CliError> {
    if args.reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why the primary moves (it goes into the audit trail)".into(),
        ));
    }
    let client = ctx.client_with_default_timeout(FAILOVER_TIMEOUT)?;
    let format = ctx.format();
    let request = proto::FailoverRequest {
        service: args.service.clone(),
        to_region: args.to.clone(),
        reason: args.reason.clone(),
        expected_token: args.expected_token.unwrap_or(0),
        dry_run: true,
    };
    let plan = client.failover(request.clone()).await?;
    let before = lease_table(plan.before.as_ref());
    let checks = checks_table(&plan.checks);
    let failed = failed_checks(&plan.checks);
    // JSON prints one document: the plan for a dry run (or a refused plan), else the
    // result at the end.
    if format != OutputFormat::Json || args.dry_run || !failed.is_empty() {
        if format == OutputFormat::Table {
            writeln!(
                ctx.out,
                "Plan: move the primary of {} to {}\n",
                args.service, args.to
            )?;
        }
        ctx.print_sections(&[("before", &before), ("checks", &checks)])?;
    }
    if !failed.is_empty() {
        let message = format!(
            "the failover would be refused: {} did not pass",
            failed.join(", ")
        );
        return if args.dry_run {
            // A dry run answered its question: say so with the check-failed code.
            writeln!(ctx.out)?;
            Err(CliError::CheckFailed(message))
        } else {
            Err(CliError::Refused(message))
        };
    }
    if args.dry_run {
        return Ok(Exit::Ok);
    }
    let from = plan
        .before
        .as_ref()
        .filter(|l| !l.holder_region.is_empty() && l.state() != proto::LeaseState::Vacant)
        .map_or("nobody (the lease is vacant)".to_string(), |l| {
            format!("{} (token {})", l.holder_region, l.token)
        });
    if !args.yes
        && !confirm(format!(
            "Move the primary of {} from {from} to {}?",
            args.service, args.to
        ))
        .await?
    {
        return Err(CliError::Aborted("nothing was changed".into()));
    }
    let expected = args
        .expected_token
        .or_else(|| plan.before.as_ref().map(|l| l.token))
        .unwrap_or(0);
    let done = client
        .failover(proto::FailoverRequest {
            dry_run: false,
            expected_token: expected,
            ..request
        })
        .await?;
    let after = lease_table(done.after.as_ref());
    let result = Table::record(
        &["fenced_by", "fence", "total", "run"],
        vec![
            Value::from(done.fenced_by.clone()),
            Value::from(millis(done.fence_ms)),
            Value::from(millis(done.total_ms)),
            if done.run_id == 0 {
                Value::Null
            } else {
                Value::from(done.run_id)
            },
        ],
    );
    if format == OutputFormat::Table {
        writeln!(ctx.out)?;
    }
    let before = lease_table(done.before.as_ref());
    let checks = checks_table(&done.checks);
    let mut sections = vec![("before", &before), ("after", &after), ("result", &result)];
    if format == OutputFormat::Json {
        sections.push(("checks", &checks));
    }
    ctx.print_sections(&sections)?;
    Ok(Exit::Ok)
}
