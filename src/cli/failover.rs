//! `baton failover`: its arguments and the checks table; the flow (plan, confirm, move,
//! before and after, like patronictl) is shared with failback in `moves`.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::output::Table;
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
