//! `baton failback` and `baton failover --dry-run`: a move of the primary explained before
//! it happens (the lease, the checks, every candidate region's eligibility), confirmed on a
//! terminal, then carried out as a workflow run whose id is printed.

use clap::Args;
use serde_json::Value;

use super::failover::{checks_table, FailoverArgs, FAILOVER_TIMEOUT};
use super::output::{lease_row, millis, OutputFormat, Table, LEASE_COLUMNS};
use super::plan::{candidates_table, preferred_region};
use super::{confirm, CliError, Ctx, Exit};
use crate::client::{Client, ClientError};
use crate::proto;

/// `baton failback`.
#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// The service whose primary moves back to its preferred region.
    pub service: String,
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

/// Which move: a switchover to a named region, or a failback to the preferred one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// `Failover` RPC to this region.
    To(String),
    /// `Failback` RPC (the server picks the preferred allowed region).
    Back,
}

impl Move {
    /// Asks the cluster to carry out (or, with `dry_run`, to explain) the move.
    pub async fn call(
        &self,
        client: &Client,
        service: &str,
        reason: &str,
        expected_token: u64,
        dry_run: bool,
    ) -> Result<proto::FailoverResponse, ClientError> {
        match self {
            Move::To(region) => {
                client
                    .failover(proto::FailoverRequest {
                        service: service.to_string(),
                        to_region: region.clone(),
                        reason: reason.to_string(),
                        expected_token,
                        dry_run,
                    })
                    .await
            }
            Move::Back => {
                client
                    .failback(proto::FailbackRequest {
                        service: service.to_string(),
                        reason: reason.to_string(),
                        expected_token,
                        dry_run,
                    })
                    .await
            }
        }
    }

    /// Where the primary goes, for people: the region, or the preferred region as far as
    /// the candidates of a plan tell.
    pub fn target(&self, candidates: &[proto::CandidateEligibility]) -> String {
        match self {
            Move::To(region) => region.clone(),
            Move::Back => match preferred_region(candidates) {
                Some(r) => format!("its preferred region {r}"),
                None => "its preferred region".into(),
            },
        }
    }
}

/// A lease as a record (JSON: an object, or null when absent).
pub fn lease_table(lease: Option<&proto::Lease>) -> Table {
    match lease {
        Some(l) => Table::record(&LEASE_COLUMNS, lease_row(l)),
        None => Table::new(&LEASE_COLUMNS).as_record(),
    }
}

/// The checks that did not pass, as `name (detail)`.
pub fn failed_checks(checks: &[proto::Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect()
}

/// Who holds the lease before a move, for people.
pub fn holder_text(lease: Option<&proto::Lease>) -> String {
    lease
        .filter(|l| !l.holder_region.is_empty() && l.state() != proto::LeaseState::Vacant)
        .map_or("nobody (the lease is vacant)".to_string(), |l| {
            format!("{} (token {})", l.holder_region, l.token)
        })
}

/// The outcome of a move: how the old holder was fenced, how long it took, the run.
pub fn result_table(done: &proto::FailoverResponse) -> Table {
    Table::record(
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
    )
}

/// `baton failover SERVICE --to REGION --reason TEXT [--dry-run]`.
pub async fn failover(ctx: &mut Ctx<'_>, args: FailoverArgs) -> Result<Exit, CliError> {
    let flow = Flow {
        service: args.service,
        reason: args.reason,
        expected_token: args.expected_token,
        dry_run: args.dry_run,
        yes: args.yes,
        kind: Move::To(args.to),
    };
    flow.run(ctx).await
}

/// `baton failback SERVICE --reason TEXT`.
pub async fn failback(ctx: &mut Ctx<'_>, args: FailbackArgs) -> Result<Exit, CliError> {
    let flow = Flow {
        service: args.service,
        reason: args.reason,
        expected_token: args.expected_token,
        dry_run: args.dry_run,
        yes: args.yes,
        kind: Move::Back,
    };
    flow.run(ctx).await
}

/// One move as the operator asked for it.
struct Flow {
    service: String,
    reason: String,
    expected_token: Option<u64>,
    dry_run: bool,
    yes: bool,
    kind: Move,
}

impl Flow {
    /// Dry run first; stop there, or on a failed check; confirm; move; print the outcome.
    async fn run(self, ctx: &mut Ctx<'_>) -> Result<Exit, CliError> {
        if self.reason.trim().is_empty() {
            return Err(CliError::Usage(
                "--reason must say why the primary moves (it goes into the audit trail)".into(),
            ));
        }
        let client = ctx.client_with_default_timeout(FAILOVER_TIMEOUT)?;
        let format = ctx.format();
        let expected = self.expected_token.unwrap_or(0);
        let plan = self
            .kind
            .call(&client, &self.service, &self.reason, expected, true)
            .await?;
        let target = self.kind.target(&plan.candidates);
        let failed = failed_checks(&plan.checks);
        // JSON prints one document: the plan for a dry run (or a refused plan), else the
        // result at the end.
        if format != OutputFormat::Json || self.dry_run || !failed.is_empty() {
            if format == OutputFormat::Table {
                writeln!(
                    ctx.out,
                    "Plan: move the primary of {} to {target}\n",
                    self.service
                )?;
            }
            let before = lease_table(plan.before.as_ref());
            let checks = checks_table(&plan.checks);
            let candidates = candidates_table(&plan.candidates);
            ctx.print_sections(&[
                ("before", &before),
                ("checks", &checks),
                ("candidates", &candidates),
            ])?;
        }
        if !failed.is_empty() {
            let what = match self.kind {
                Move::To(_) => "failover",
                Move::Back => "failback",
            };
            let message = format!(
                "the {what} would be refused: {} did not pass",
                failed.join(", ")
            );
            return if self.dry_run {
                // A dry run answered its question: say so with the check-failed code.
                writeln!(ctx.out)?;
                Err(CliError::CheckFailed(message))
            } else {
                Err(CliError::Refused(message))
            };
        }
        if self.dry_run {
            return Ok(Exit::Ok);
        }
        let from = holder_text(plan.before.as_ref());
        if !self.yes
            && !confirm(format!(
                "Move the primary of {} from {from} to {target}?",
                self.service
            ))
            .await?
        {
            return Err(CliError::Aborted("nothing was changed".into()));
        }
        let expected = self
            .expected_token
            .or_else(|| plan.before.as_ref().map(|l| l.token))
            .unwrap_or(0);
        let done = self
            .kind
            .call(&client, &self.service, &self.reason, expected, false)
            .await?;
        if format == OutputFormat::Table {
            writeln!(ctx.out)?;
        }
        let before = lease_table(done.before.as_ref());
        let after = lease_table(done.after.as_ref());
        let result = result_table(&done);
        let checks = checks_table(&done.checks);
        let candidates = candidates_table(&done.candidates);
        let mut sections = vec![("before", &before), ("after", &after), ("result", &result)];
        if format == OutputFormat::Json {
            sections.push(("checks", &checks));
            sections.push(("candidates", &candidates));
        }
        ctx.print_sections(&sections)?;
        if format == OutputFormat::Table && done.run_id != 0 {
            writeln!(ctx.out, "\nrun {0}: `baton workflow {0}`", done.run_id)?;
        }
        Ok(Exit::Ok)
    }
}
