//! `baton status`: every endpoint's view of the cluster, like `etcdctl endpoint status`.

use std::collections::HashMap;

use serde_json::Value;

use super::output::{lease_row, print_sections, Table};
use super::{CliError, Ctx, Exit};
use crate::client::{ClientError, Consistency, EndpointStatus};
use crate::proto;

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

/// One row per service: its lease, what holds automation back, and the run in progress
/// (kind, trigger, target and current step, from `runs`).
pub fn services_overview(
    resp: &proto::ListServicesResponse,
    runs: &HashMap<u64, proto::Workflow>,
) -> Table {
    let mut t = Table::new(&[
        "service",
        "primary",
        "token",
        "state",
        "mode",
        "automation",
        "run",
    ]);
    for s in &resp.services {
        let lease = s.lease.as_ref().map(lease_row).unwrap_or_default();
        let cell = |i: usize| lease.get(i).cloned().unwrap_or(Value::Null);
        let name = s
            .spec
            .as_ref()
            .map(|sp| sp.name.clone())
            .unwrap_or_default();
        let automation = if !s.paused_reason.is_empty() {
            format!("PAUSED: {}", s.paused_reason)
        } else if s.frozen {
            "frozen".into()
        } else if s.spec.as_ref().is_some_and(|sp| sp.auto_failover) {
            "on".into()
        } else {
            "off".into()
        };
        let run = match (s.active_run, runs.get(&s.active_run)) {
            (0, _) => Value::Null,
            (id, Some(w)) => {
                let step = w
                    .steps
                    .get(w.current_step as usize)
                    .map_or("-", |st| st.kind.as_str());
                Value::from(format!(
                    "#{id} {} to {} ({}), step {step}",
                    w.kind, w.to_region, w.trigger
                ))
            }
            (id, None) => Value::from(format!("#{id}")),
        };
        t.push(vec![
            Value::from(name),
            cell(1),
            cell(2),
            cell(3),
            cell(4),
            Value::from(automation),
            run,
        ]);
    }
    t
}

/// One row per service and candidate region: the latest verdicts of the vantage nodes
/// (`healthy/reporting`), and which region is primary.
pub fn regions_table(resp: &proto::ListServicesResponse) -> Table {
    let mut t = Table::new(&["service", "region", "primary", "health", "vantages"]);
    for s in &resp.services {
        let Some(spec) = &s.spec else { continue };
        let holder = s
            .lease
            .as_ref()
            .filter(|l| l.state() != proto::LeaseState::Vacant)
            .map(|l| l.holder_region.as_str());
        for region in &spec.regions {
            let seen: Vec<&proto::HealthObservation> = s
                .observations
                .iter()
                .filter(|o| &o.region == region)
                .collect();
            let healthy = seen.iter().filter(|o| o.healthy).count();
            let health = if !spec.health.contains_key(region) {
                "no check"
            } else if seen.is_empty() {
                "unknown"
            } else if healthy * 2 > seen.len() {
                "healthy"
            } else {
                "UNHEALTHY"
            };
            let vantages: Vec<String> = seen
                .iter()
                .map(|o| {
                    format!(
                        "{}:{}",
                        o.vantage_region,
                        if o.healthy { "ok" } else { "down" }
                    )
                })
                .collect();
            t.push(vec![
                Value::from(spec.name.clone()),
                Value::from(region.clone()),
                Value::from(holder == Some(region.as_str())),
                Value::from(health),
                if seen.is_empty() {
                    Value::Null
                } else {
                    Value::from(format!("{healthy}/{} {}", seen.len(), vantages.join(" ")))
                },
            ]);
        }
    }
    t
}

/// `baton status`: the nodes, then (when a node can answer) every service with its primary
/// and run in progress, and each region's health from every vantage — one screen for
/// triage.
pub async fn run(ctx: &mut Ctx<'_>) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let statuses = client.cluster_status_all().await;
    let nodes = table(&statuses);
    if statuses.iter().all(|s| s.result.is_err()) {
        ctx.print(&nodes)?;
        return Err(CliError::Unavailable(format!(
            "no endpoint answered ({})",
            client.endpoints().join(", ")
        )));
    }
    // Without a quorum the linearizable list fails: fall back to a node's local view, and
    // say so, since that is when triage matters most.
    let (services, note) = match client.list_services(Consistency::Linearizable).await {
        Ok(r) => (Some(r), None),
        Err(e) => match client.list_services(Consistency::Local).await {
            Ok(r) => (
                Some(r),
                Some(format!(
                    "services read locally (possibly stale): no linearizable read ({e})"
                )),
            ),
            Err(_) => (None, Some(format!("services unavailable: {e}"))),
        },
    };
    let mut runs = HashMap::new();
    if let Some(r) = &services {
        for s in r.services.iter().filter(|s| s.active_run != 0) {
            if let Ok(w) = client.workflow(s.active_run).await {
                runs.insert(s.active_run, w);
            }
        }
    }
    let empty = proto::ListServicesResponse::default();
    let r = services.as_ref().unwrap_or(&empty);
    let overview = services_overview(r, &runs);
    let regions = regions_table(r);
    let format = ctx.format();
    print_sections(
        ctx.out,
        format,
        &[
            ("nodes", &nodes),
            ("services", &overview),
            ("regions", &regions),
        ],
    )?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    Ok(Exit::Ok)
}
