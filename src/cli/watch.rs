//! `baton watch`: one line per event until Ctrl-C.

use clap::Args;
use serde_json::Value;

use super::output::{cell_text, lease_mode, lease_state, OutputFormat};
use super::{CliError, Ctx, Exit};
use crate::proto::{self, WatchResponse};

/// `baton watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Services to watch (default: every service).
    pub services: Vec<String>,
    /// Replay every change from this revision, then follow (default: print the current
    /// state first, then follow).
    #[arg(long, value_name = "REV")]
    pub from: Option<u64>,
    /// Also print progress notifications (the node's applied revision when idle).
    #[arg(long)]
    pub progress: bool,
}

const COLUMNS: [&str; 8] = [
    "revision", "kind", "service", "primary", "token", "state", "mode", "reason",
];
/// Column widths of the table format: a stream cannot be measured before printing.
const WIDTHS: [usize; 7] = [9, 15, 16, 10, 8, 9, 10];

/// `granted`-style name of an event kind (`EVENT_KIND_MODE_CHANGED` -> `mode-changed`),
/// derived from the proto name so kinds added later print too.
pub fn kind_name(kind: proto::EventKind) -> String {
    kind.as_str_name()
        .trim_start_matches("EVENT_KIND_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The rows of one response: one per event (one for a progress message).
pub fn rows(resp: &WatchResponse) -> Vec<Vec<Value>> {
    if resp.progress {
        return vec![vec![Value::from(resp.revision), Value::from("progress")]];
    }
    resp.events
        .iter()
        .map(|e| {
            let lease = e.lease.clone().unwrap_or_default();
            let primary =
                if lease.holder_region.is_empty() || lease.state() == proto::LeaseState::Vacant {
                    Value::Null
                } else {
                    Value::from(lease.holder_region.clone())
                };
            vec![
                Value::from(resp.revision),
                Value::from(kind_name(e.kind())),
                Value::from(e.service.clone()),
                primary,
                Value::from(lease.token),
                Value::from(lease_state(&lease)),
                Value::from(lease_mode(&lease)),
                Value::from(e.reason.clone()),
            ]
        })
        .collect()
}

/// One line of a row in `format`.
pub fn line(format: OutputFormat, row: &[Value]) -> String {
    match format {
        OutputFormat::Json => {
            let map: serde_json::Map<String, Value> = COLUMNS
                .iter()
                .zip(row)
                .map(|(c, v)| (c.to_string(), v.clone()))
                .collect();
            Value::Object(map).to_string()
        }
        OutputFormat::Simple => row.iter().map(cell_text).collect::<Vec<_>>().join(", "),
        OutputFormat::Table => {
            let mut s = String::new();
            for (i, v) in row.iter().enumerate() {
                let text = cell_text(v);
                match WIDTHS.get(i) {
                    Some(w) => s.push_str(&format!("{text:<w$}  ")),
                    None => s.push_str(&text),
                }
            }
            s.trim_end().to_string()
        }
    }
}

fn header() -> Vec<Value> {
    COLUMNS
        .iter()
        .map(|c| Value::from(c.to_uppercase()))
        .collect()
}

/// `baton watch [SERVICE...] [--from REV]`.
pub async fn run(ctx: &mut Ctx<'_>, args: WatchArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let format = ctx.format();
    let mut watcher = client.watch(args.services, args.from.unwrap_or(0));
    if format == OutputFormat::Table {
        writeln!(ctx.out, "{}", line(format, &header()))?;
        ctx.out.flush()?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            _ = &mut ctrl_c => return Ok(Exit::Ok),
            item = watcher.next() => item,
        };
        let resp = match item {
            None => return Ok(Exit::Ok),
            Some(r) => r?,
        };
        if resp.progress && !args.progress {
            continue;
        }
        for row in rows(&resp) {
            writeln!(ctx.out, "{}", line(format, &row))?;
        }
        // Each event is printed as it happens, even into a pipe.
        ctx.out.flush()?;
    }
}
