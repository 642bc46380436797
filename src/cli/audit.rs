//! `baton audit` (read the trail) and `baton audit verify` (check its hash chain here).

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::{timestamp, OutputFormat, Table};
use super::{note, CliError, Ctx, Exit};
use crate::convert::audit_from_proto;
use crate::proto;
use crate::state::audit::verify;

/// Entries asked for per page.
const PAGE: u32 = 500;

/// `baton audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `verify` checks the hash chain of the whole trail.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only entries about this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// First sequence number to show.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub from: u64,
    /// Show at most this many entries.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `baton audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Read the whole trail page by page and verify its hash chain on this machine (exit
    /// code 5 when it is broken).
    Verify,
}

/// The audit entries as a table; before/after documents and hashes in JSON only.
pub fn entries_table(entries: &[proto::AuditEntry]) -> Table {
    let mut t = Table::new(&[
        "seq",
        "time",
        "actor",
        "action",
        "service",
        "reason",
        "outcome",
        "revision",
        "before",
        "after",
        "prev_hash",
        "hash",
    ])
    .json_only(&["revision", "before", "after", "prev_hash", "hash"]);
    let doc = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(s).unwrap_or_else(|_| Value::from(s))
        }
    };
    for e in entries {
        t.push(vec![
            Value::from(e.seq),
            timestamp(e.at_unix_ms),
            Value::from(e.actor.clone()),
            Value::from(e.action.clone()),
            Value::from(e.service.clone()),
            Value::from(e.reason.clone()),
            Value::from(e.outcome.clone()),
            Value::from(e.revision),
            doc(&e.before),
            doc(&e.after),
            Value::from(e.prev_hash.clone()),
            Value::from(e.hash.clone()),
        ]);
    }
    t
}

/// `baton audit [...]` and `baton audit verify`.
pub async fn run(ctx: &mut Ctx<'_>, args: AuditArgs) -> Result<Exit, CliError> {
    match args.command {
        Some(AuditCommand::Verify) => verify_chain(ctx).await,
        None => list(ctx, args).await,
    }
}

async fn list(ctx: &mut Ctx<'_>, args: AuditArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let mut entries = Vec::new();
    let mut from = args.from;
    let mut chain_ok = true;
    let mut more = false;
    while (entries.len() as u64) < u64::from(args.limit) {
        let want = (args.limit - entries.len() as u32).min(PAGE);
        let page = client.audit(from, want, args.service.as_deref()).await?;
        chain_ok &= page.chain_ok;
        let Some(last) = page.entries.last() else {
            break;
        };
        let next = page.next_seq.max(last.seq + 1);
        let full = page.entries.len() as u32 >= want;
        entries.extend(page.entries);
        from = next;
        more = full;
        if !full {
            break;
        }
    }
    ctx.print(&entries_table(&entries))?;
    if ctx.format() == OutputFormat::Table {
        if more {
            note(&format!("(more entries: baton audit --from {from})"));
        }
        if !chain_ok {
            note(
                "warning: the node reports that the hash chain of these entries does not verify; run `baton audit verify`",
            );
        }
    }
    Ok(Exit::Ok)
}

async fn verify_chain(ctx: &mut Ctx<'_>) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let mut from = 0u64;
    let mut prev_hash: Option<String> = None;
    let mut count = 0u64;
    loop {
        let page = client.audit(from, PAGE, None).await?;
        if page.entries.is_empty() {
            break;
        }
        let entries: Vec<_> = page.entries.iter().map(audit_from_proto).collect();
        if entries[0].seq != from {
            return Err(CliError::CheckFailed(format!(
                "audit chain broken: expected entry {from} next, the cluster returned {}",
                entries[0].seq
            )));
        }
        verify(&entries, prev_hash.as_deref())
            .map_err(|e| CliError::CheckFailed(format!("audit chain broken: {e}")))?;
        count += entries.len() as u64;
        let last = &entries[entries.len() - 1];
        prev_hash = Some(last.hash.clone());
        from = last.seq + 1;
    }
    let t = Table::record(
        &["entries", "last_seq", "head_hash", "chain"],
        vec![
            Value::from(count),
            if count == 0 {
                Value::Null
            } else {
                Value::from(from - 1)
            },
            prev_hash.map_or(Value::Null, Value::from),
            Value::from("ok"),
        ],
    );
    ctx.print(&t)?;
    Ok(Exit::Ok)
}
