//! `baton primary`, `baton services`, `baton validate`: reads.

use clap::Args;
use serde_json::Value;

use super::output::{lease_row, millis, Table, LEASE_COLUMNS};
use super::{CliError, Ctx, Exit};
use crate::client::Consistency;
use crate::proto;

/// `baton primary`.
#[derive(Debug, Args)]
pub struct PrimaryArgs {
    /// The service.
    pub service: String,
    /// Answer from the first reachable node's applied state instead of confirming with a
    /// quorum (works without a leader; may be stale, and says by how much).
    #[arg(long)]
    pub local: bool,
}

/// `baton services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Answer from the first reachable node's applied state (may be stale).
    #[arg(long)]
    pub local: bool,
}

/// `baton validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The service.
    pub service: String,
    /// The fencing token to check.
    pub token: u64,
}

fn consistency(local: bool) -> Consistency {
    if local {
        Consistency::Local
    } else {
        Consistency::Linearizable
    }
}

/// The table of a GetPrimary answer.
pub fn primary_table(resp: &proto::GetPrimaryResponse) -> Table {
    let mut columns = LEASE_COLUMNS.to_vec();
    columns.extend(["served_by", "linearizable", "staleness"]);
    let mut row = resp.lease.as_ref().map(lease_row).unwrap_or_default();
    row.resize(LEASE_COLUMNS.len(), Value::Null);
    row.push(Value::from(resp.served_by));
    row.push(Value::from(resp.linearizable));
    row.push(if resp.linearizable {
        Value::Null
    } else {
        Value::from(millis(resp.staleness_ms))
    });
    Table::record(&columns, row)
}

/// `baton primary SERVICE`.
pub async fn primary(ctx: &mut Ctx<'_>, args: PrimaryArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let resp = client
        .primary(&args.service, consistency(args.local))
        .await?;
    ctx.print(&primary_table(&resp))?;
    Ok(Exit::Ok)
}

/// Short name of a token validity.
pub fn validity_name(v: proto::TokenValidity) -> &'static str {
    match v {
        proto::TokenValidity::Current => "current",
        proto::TokenValidity::Superseded => "superseded",
        proto::TokenValidity::Unknown => "unknown",
        proto::TokenValidity::Unspecified => "unspecified",
    }
}

/// `baton validate SERVICE TOKEN`: exit 0 when current, 5 otherwise.
pub async fn validate(ctx: &mut Ctx<'_>, args: ValidateArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let resp = client.validate_token(&args.service, args.token).await?;
    let validity = resp.validity();
    let (current, primary) = match &resp.lease {
        Some(l) => (
            Value::from(l.token),
            lease_row(l).get(1).cloned().unwrap_or(Value::Null),
        ),
        None => (Value::Null, Value::Null),
    };
    let t = Table::record(
        &[
            "service",
            "token",
            "validity",
            "current_token",
            "primary",
            "revision",
        ],
        vec![
            Value::from(args.service.clone()),
            Value::from(args.token),
            Value::from(validity_name(validity)),
            current,
            primary,
            Value::from(resp.revision),
        ],
    );
    ctx.print(&t)?;
    Ok(if validity == proto::TokenValidity::Current {
        Exit::Ok
    } else {
        Exit::CheckFailed
    })
}
