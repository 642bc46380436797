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

/// The first page from `from`; when the entries there were compacted away and `skip` is
/// set, the first page from the oldest entry kept instead, with that seq.
async fn first_page(
    client: &crate::client::Client,
    from: u64,
    want: u32,
    service: Option<&str>,
    skip: bool,
) -> Result<(proto::ListAuditResponse, Option<u64>), CliError> {
    match client.audit(from, want, service).await {
        Ok(page) => Ok((page, None)),
        Err(e) => match e.status().and_then(crate::wire::oldest_audit_seq) {
            Some(oldest) if skip && oldest > from => {
                Ok((client.audit(oldest, want, service).await?, Some(oldest)))
            }
            _ => Err(e.into()),
        },
    }
}

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
    /// Read the whole trail page by page (or an export with --file) and verify its hash
    /// chain on this machine; names the first bad entry (exit code 5 when it is broken).
    Verify(VerifyArgs),
    /// Write the whole trail the cluster keeps to FILE as JSON lines, one entry per line
    /// with its `prev_hash` and `hash`, for archiving; `baton audit verify --file FILE`
    /// checks it.
    Export(ExportArgs),
}

/// `baton audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify this export (JSON lines from `baton audit export`) instead of the cluster's
    /// trail.
    #[arg(long, value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
}

/// `baton audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// File to write (replaced; `-` for standard output).
    pub file: std::path::PathBuf,
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
        Some(AuditCommand::Verify(VerifyArgs { file: None })) => verify_chain(ctx).await,
        Some(AuditCommand::Verify(VerifyArgs { file: Some(f) })) => verify_file(ctx, &f),
        Some(AuditCommand::Export(a)) => export(ctx, &a.file).await,
        None => list(ctx, args).await,
    }
}

async fn list(ctx: &mut Ctx<'_>, args: AuditArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let mut entries = Vec::new();
    let mut from = args.from;
    let mut chain_ok = true;
    let mut more = false;
    let mut compacted = None;
    while (entries.len() as u64) < u64::from(args.limit) {
        let want = (args.limit - entries.len() as u32).min(PAGE);
        // Without --from (0), start at the oldest entry the cluster still keeps.
        let page = if entries.is_empty() {
            let (page, skipped) =
                first_page(&client, from, want, args.service.as_deref(), args.from == 0).await?;
            compacted = skipped;
            page
        } else {
            client.audit(from, want, args.service.as_deref()).await?
        };
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
        if let Some(oldest) = compacted {
            note(&format!(
                "(entries before {oldest} were compacted away; see `audit_retention` in the README)"
            ));
        }
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
    let (first, skipped) = first_page(&client, 0, PAGE, None, true).await?;
    let mut first = Some(first);
    let mut from = skipped.unwrap_or(0);
    // A compacted trail is verified from its checkpoint: the first kept entry's link.
    let mut prev_hash: Option<String> = None;
    let mut anchor = None;
    let mut count = 0u64;
    loop {
        let page = match first.take() {
            Some(p) => p,
            None => client.audit(from, PAGE, None).await?,
        };
        if page.entries.is_empty() {
            break;
        }
        if skipped.is_some() && anchor.is_none() {
            anchor = Some(page.entries[0].prev_hash.clone());
            prev_hash = anchor.clone();
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
        &[
            "entries",
            "first_seq",
            "last_seq",
            "checkpoint_hash",
            "head_hash",
            "chain",
        ],
        vec![
            Value::from(count),
            Value::from(skipped.unwrap_or(0)),
            if count == 0 {
                Value::Null
            } else {
                Value::from(from - 1)
            },
            anchor.map_or(Value::Null, Value::from),
            prev_hash.map_or(Value::Null, Value::from),
            Value::from("ok"),
        ],
    );
    ctx.print(&t)?;
    if let (Some(oldest), OutputFormat::Table) = (skipped, ctx.format()) {
        note(&format!(
            "entries before {oldest} were compacted away: the chain was verified from the \
             checkpoint (the hash of entry {}) to the head",
            oldest - 1
        ));
    }
    Ok(Exit::Ok)
}

/// Every entry of the cluster's trail, in order, page by page.
async fn fetch_all(ctx: &Ctx<'_>) -> Result<Vec<crate::state::AuditEntry>, CliError> {
    let client = ctx.client()?;
    let (first, skipped) = first_page(&client, 0, PAGE, None, true).await?;
    let mut first = Some(first);
    let mut from = skipped.unwrap_or(0);
    let mut all = Vec::new();
    loop {
        let page = match first.take() {
            Some(p) => p,
            None => client.audit(from, PAGE, None).await?,
        };
        let Some(last) = page.entries.last() else {
            break;
        };
        from = last.seq + 1;
        all.extend(page.entries.iter().map(audit_from_proto));
    }
    Ok(all)
}

async fn export(ctx: &mut Ctx<'_>, file: &std::path::Path) -> Result<Exit, CliError> {
    let entries = fetch_all(ctx).await?;
    let mut text = String::new();
    for e in &entries {
        let line = serde_json::to_string(e)
            .map_err(|e| CliError::Other(format!("encoding an audit entry: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    let io = |source| CliError::Io {
        context: format!("writing {}", file.display()),
        source,
    };
    if file.as_os_str() == "-" {
        ctx.out.write_all(text.as_bytes()).map_err(io)?;
        return Ok(Exit::Ok);
    }
    std::fs::write(file, text).map_err(io)?;
    // Said on stderr: stdout stays clean for scripts.
    note(&format!(
        "wrote {} audit entries to {}; check it with `baton audit verify --file {}`",
        entries.len(),
        file.display(),
        file.display()
    ));
    Ok(Exit::Ok)
}

/// Parses an export: one JSON entry per line (blank lines ignored); a bad line is named.
pub fn parse_export(text: &str) -> Result<Vec<crate::state::AuditEntry>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("line {} is not an audit entry: {e}", i + 1))
        })
        .collect()
}

fn verify_file(ctx: &mut Ctx<'_>, file: &std::path::Path) -> Result<Exit, CliError> {
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Io {
        context: format!("reading {}", file.display()),
        source,
    })?;
    let entries = parse_export(&text)
        .map_err(|m| CliError::CheckFailed(format!("{}: {m}", file.display())))?;
    // An export of the whole trail starts at entry 0 (linked to the genesis hash); a
    // partial one is checked from its first entry on.
    let prev = match entries.first() {
        Some(e) if e.seq != 0 => Some(e.prev_hash.as_str()),
        _ => None,
    };
    verify(&entries, prev).map_err(|e| {
        CliError::CheckFailed(format!("{}: audit chain broken: {e}", file.display()))
    })?;
    let t = Table::record(
        &["entries", "last_seq", "head_hash", "chain"],
        vec![
            Value::from(entries.len()),
            entries.last().map_or(Value::Null, |e| Value::from(e.seq)),
            entries
                .last()
                .map_or(Value::Null, |e| Value::from(e.hash.clone())),
            Value::from("ok"),
        ],
    );
    ctx.print(&t)?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::audit::GENESIS;
    use crate::state::AuditEntry;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|seq| {
                let mut e = AuditEntry {
                    seq,
                    revision: seq + 1,
                    at_ms: 1,
                    actor: "ops".into(),
                    action: "set-frozen".into(),
                    service: "payments".into(),
                    reason: "r".into(),
                    before: "null".into(),
                    after: "null".into(),
                    outcome: "ok".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_export_round_trips_and_a_tampered_line_is_named() {
        let entries = chain(4);
        let text: String = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        let back = parse_export(&text).unwrap();
        assert_eq!(back, entries);
        assert!(verify(&back, None).is_ok());
        let tampered = text.replacen("\"actor\":\"ops\"", "\"actor\":\"automation\"", 3);
        let tampered = tampered.replacen("\"actor\":\"automation\"", "\"actor\":\"ops\"", 2);
        let err = verify(&parse_export(&tampered).unwrap(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "audit entry 2 was altered: its hash does not match its contents"
        );
        assert!(parse_export("{\n").unwrap_err().contains("line 1"));
    }
}
