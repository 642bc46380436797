//! `baton status`: every endpoint's view of the cluster, like `etcdctl endpoint status`.

use serde_json::Value;

use super::output::Table;
use super::{CliError, Ctx, Exit};
use crate::client::{ClientError, EndpointStatus};

const COLUMNS: [&str; 10] = [
    "endpoint", "id", "region", "role", "term", "commit", "applied", "leader", "members", "error",
];

/// The status table of the endpoints' answers.
pub fn table(statuses: &[EndpointStatus]) -> Table {
    let mut t = Table::new(&COLUMNS);
    for s in statuses {
        match &s.result {
            Ok(r) => {
                let role = if r.leader_id != 0 && r.leader_id == r.node_id {
                    "leader".to_string()
                } else if r.state.is_empty() {
                    "unknown".to_string()
                } else {
                    r.state.to_ascii_lowercase()
                };
                let leader = if r.leader_id == 0 {
                    Value::Null
                } else if r.leader_addr.is_empty() {
                    Value::from(r.leader_id.to_string())
                } else {
                    Value::from(format!("{} ({})", r.leader_id, r.leader_addr))
                };
                let voters = r.members.iter().filter(|m| m.voter).count();
                let learners = r.members.len() - voters;
                let members = if learners == 0 {
                    format!("{voters} voters")
                } else {
                    format!("{voters} voters, {learners} learners")
                };
                t.push(vec![
                    Value::from(s.endpoint.clone()),
                    Value::from(r.node_id),
                    Value::from(r.region.clone()),
                    Value::from(role),
                    Value::from(r.term),
                    Value::from(r.commit_index),
                    Value::from(r.applied_index),
                    leader,
                    Value::from(members),
                    Value::Null,
                ]);
            }
            Err(e) => {
                let mut row = vec![Value::from(s.endpoint.clone())];
                row.resize(COLUMNS.len() - 1, Value::Null);
                row.push(Value::from(short_error(e)));
                t.push(row);
            }
        }
    }
    t
}

fn short_error(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable { last, .. } => format!("unreachable: {last}"),
        other => other.to_string(),
    }
}

/// `baton status`.
pub async fn run(ctx: &mut Ctx<'_>) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let statuses = client.cluster_status_all().await;
    ctx.print(&table(&statuses))?;
    if statuses.iter().all(|s| s.result.is_err()) {
        return Err(CliError::Unavailable(format!(
            "no endpoint answered ({})",
            client.endpoints().join(", ")
        )));
    }
    Ok(Exit::Ok)
}
