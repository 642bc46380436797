//! `baton admin ...`: membership and maintenance.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::Table;
use super::{endpoint_arg, CliError, Ctx, Exit};
use crate::proto;

/// `baton admin` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add a node: as a learner, then (unless --learner) a voter once it caught up.
    AddNode(AddNodeArgs),
    /// Remove a node from the cluster.
    RemoveNode(RemoveNodeArgs),
    /// Hand leadership to another voter.
    TransferLeader(TransferArgs),
    /// Make the answering node build a snapshot now (and purge its log behind it).
    Snapshot,
}

/// `baton admin add-node`.
#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// The new node's id (unique, non-zero).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// The `host:port` it serves on.
    #[arg(long, value_name = "HOST:PORT", value_parser = endpoint_arg)]
    pub addr: String,
    /// Its region.
    #[arg(long, value_name = "REGION")]
    pub region: String,
    /// Leave it a learner (it replicates but does not vote).
    #[arg(long)]
    pub learner: bool,
}

/// `baton admin remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The node's id.
    #[arg(value_name = "N")]
    pub id: u64,
}

/// `baton admin transfer-leader`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The voter to lead [default: the most up-to-date other voter].
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
}

/// The members of a cluster.
pub fn members_table(members: &[proto::NodeStatus]) -> Table {
    let mut t = Table::new(&["id", "region", "addr", "role", "matched", "reachable"]);
    for m in members {
        t.push(vec![
            Value::from(m.id),
            Value::from(m.region.clone()),
            Value::from(m.addr.clone()),
            Value::from(if m.voter { "voter" } else { "learner" }),
            Value::from(m.matched_index),
            Value::from(m.reachable),
        ]);
    }
    t
}

/// `baton admin ...`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: AdminCommand) -> Result<Exit, CliError> {
    // Adding a voter waits for the node to catch up, which can take a while.
    let client = ctx.client_with_default_timeout(std::time::Duration::from_secs(60))?;
    let table = match cmd {
        AdminCommand::AddNode(a) => {
            let resp = client.add_node(a.id, &a.addr, &a.region, a.learner).await?;
            members_table(&resp.members)
        }
        AdminCommand::RemoveNode(a) => members_table(&client.remove_node(a.id).await?.members),
        AdminCommand::TransferLeader(a) => {
            let resp = client.transfer_leadership(a.to.unwrap_or(0)).await?;
            Table::record(&["leader"], vec![Value::from(resp.leader_id)])
        }
        AdminCommand::Snapshot => {
            let resp = client.trigger_snapshot().await?;
            Table::record(&["snapshot_index"], vec![Value::from(resp.snapshot_index)])
        }
    };
    ctx.print(&table)?;
    Ok(Exit::Ok)
}
