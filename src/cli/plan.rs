//! `baton plan`: what automation would do for a service now, and for every candidate
//! region why it is or is not eligible.

use clap::Args;
use serde_json::Value;

use super::output::Table;
use super::{CliError, Ctx, Exit};
use crate::proto;

/// `baton plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The service.
    pub service: String,
}

/// Candidate regions in preference order: whether each is eligible, its health from the
/// vantage regions, and why it is not eligible.
pub fn candidates_table(candidates: &[proto::CandidateEligibility]) -> Table {
    let mut t = Table::new(&["region", "eligible", "health", "reasons"]);
    for c in candidates {
        t.push(vec![
            Value::from(c.region.clone()),
            Value::from(c.eligible),
            Value::from(c.health.clone()),
            Value::from(c.reasons.join("; ")),
        ]);
    }
    t
}

/// Whether the vantage regions judge a candidate down (the policy lists it as unhealthy).
pub fn candidate_down(c: &proto::CandidateEligibility) -> bool {
    c.reasons.iter().any(|r| r.starts_with("unhealthy"))
}

/// The region a failback moves the lease to: the first candidate (in preference order)
/// that is allowed to hold it. `None` when no candidate is allowed.
pub fn preferred_region(candidates: &[proto::CandidateEligibility]) -> Option<&str> {
    candidates
        .iter()
        .find(|c| !c.reasons.iter().any(|r| r.starts_with("not allowed")))
        .map(|c| c.region.as_str())
}

/// The plan's summary as a vertical record.
pub fn summary_table(plan: &proto::PlanResponse) -> Table {
    Table::record(
        &[
            "service",
            "holder",
            "next_action",
            "blockers",
            "failover_plan",
        ],
        vec![
            Value::from(plan.service.clone()),
            Value::from(plan.holder_region.clone()),
            Value::from(plan.next_action.clone()),
            Value::from(plan.blockers.clone()),
            Value::from(plan.failover_steps.join(" -> ")),
        ],
    )
    .vertical()
}

/// `baton plan SERVICE`.
pub async fn run(ctx: &mut Ctx<'_>, args: PlanArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let plan = client.plan(&args.service).await?;
    let summary = summary_table(&plan);
    let candidates = candidates_table(&plan.candidates);
    ctx.print_sections(&[("plan", &summary), ("candidates", &candidates)])?;
    Ok(Exit::Ok)
}
