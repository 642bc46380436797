//! `baton services`: every service with its primary and what holds automation back
//! (frozen, paused by the flap limit, a run in progress).

use serde_json::Value;

use super::output::{lease_row, Table, LEASE_COLUMNS};
use super::read::ServicesArgs;
use super::{CliError, Ctx, Exit};
use crate::client::Consistency;
use crate::proto;

/// The columns after the lease's.
const EXTRA: [&str; 5] = ["regions", "auto_failover", "frozen", "paused", "run"];

/// The table of a ListServices answer: the lease, the candidate regions, whether automatic
/// failover is on, and — when set — frozen, the flap pause's reason and the run in progress.
pub fn services_table(resp: &proto::ListServicesResponse) -> Table {
    let columns: Vec<&'static str> = LEASE_COLUMNS.iter().chain(EXTRA.iter()).copied().collect();
    let mut t = Table::new(&columns);
    for s in &resp.services {
        let mut row = s.lease.as_ref().map(lease_row).unwrap_or_default();
        row.resize(LEASE_COLUMNS.len(), Value::Null);
        match &s.spec {
            Some(spec) => {
                if row[0].is_null() || row[0] == "" {
                    row[0] = Value::from(spec.name.clone());
                }
                row.push(Value::from(spec.regions.clone()));
                row.push(Value::from(spec.auto_failover));
            }
            None => row.extend([Value::Null, Value::Null]),
        }
        row.push(Value::from(s.frozen));
        row.push(if s.paused_reason.is_empty() {
            Value::Null
        } else {
            Value::from(s.paused_reason.clone())
        });
        row.push(if s.active_run == 0 {
            Value::Null
        } else {
            Value::from(s.active_run)
        });
        t.push(row);
    }
    t
}

/// `baton services`.
pub async fn run(ctx: &mut Ctx<'_>, args: ServicesArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let consistency = if args.local {
        Consistency::Local
    } else {
        Consistency::Linearizable
    };
    let resp = client.list_services(consistency).await?;
    ctx.print(&services_table(&resp))?;
    Ok(Exit::Ok)
}
