//! `baton snapshot save|restore|inspect`: backups of the replicated state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::Table;
use super::{note, CliError, Ctx, Exit};
use crate::backup::{self, Backup};
use crate::config::NodeConfig;
use crate::raft::{NodeId, NodeInfo};

/// `baton snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent backup of the cluster's state (services, leases, tokens, runs,
    /// audit trail) to FILE, taken by the leader after a read barrier.
    Save(SaveArgs),
    /// Seed the empty data directory of one node of a NEW cluster from a backup (run it for
    /// every node, then start them all with `baton server`).
    Restore(RestoreArgs),
    /// Check a backup file (checksum, version, audit chain) and print what it holds.
    Inspect(InspectArgs),
}

/// `baton snapshot save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write the backup (written to a temporary file, then renamed).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `baton snapshot restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The restored node's config (node.toml): its `data_dir`, `id` and `[[peers]]` (the
    /// voters of the new cluster). Or give --data-dir, --node-id and --members.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["data_dir", "node_id", "members"])]
    pub config: Option<PathBuf>,
    /// The node's data directory: must be absent or empty.
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,
    /// The node's id.
    #[arg(long, value_name = "N", required_unless_present = "config",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,
    /// Every voter of the new cluster, as its `[[peers]]` would list them.
    #[arg(
        long,
        value_name = "ID=HOST:PORT@REGION,...",
        required_unless_present = "config"
    )]
    pub members: Option<String>,
}

/// `baton snapshot inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The backup file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `baton snapshot ...`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: SnapshotCommand) -> Result<Exit, CliError> {
    match cmd {
        SnapshotCommand::Save(a) => save(ctx, a).await,
        SnapshotCommand::Restore(a) => restore(ctx, a),
        SnapshotCommand::Inspect(a) => {
            let b = read_backup(&a.file)?;
            let mut t = summary(&a.file, &b);
            t.push((
                "source_cluster",
                Value::from(b.header.source_cluster.clone()),
            ));
            t.push(("source_members", Value::from(members_text(&b))));
            let mut services = Table::new(&["service", "holder", "token", "state"]);
            for r in b.body.state.services() {
                services.push(vec![
                    Value::from(r.spec.name.clone()),
                    Value::from(r.lease.holder.clone().unwrap_or_default()),
                    Value::from(r.lease.token),
                    Value::from(format!("{:?}", r.lease.state).to_uppercase()),
                ]);
            }
            ctx.print_sections(&[("backup", &record(t)), ("services", &services)])?;
            Ok(Exit::Ok)
        }
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> CliError {
    move |source| CliError::Io { context, source }
}

fn summary(file: &Path, b: &Backup) -> Vec<(&'static str, Value)> {
    vec![
        ("file", Value::from(file.display().to_string())),
        ("revision", Value::from(b.header.revision)),
        ("size", Value::from(b.size)),
        ("sha256", Value::from(b.sha256.clone())),
        ("services", Value::from(b.header.services)),
        ("audit_entries", Value::from(b.header.audit_entries)),
        ("audit_first_seq", Value::from(b.header.audit_first_seq)),
    ]
}

/// One record, printed as `KEY  value` lines.
fn record(fields: Vec<(&'static str, Value)>) -> Table {
    let (columns, row): (Vec<&'static str>, Vec<Value>) = fields.into_iter().unzip();
    Table::record(&columns, row).vertical()
}

fn members_text(b: &Backup) -> String {
    b.header
        .members
        .iter()
        .map(|m| format!("{}={}@{}", m.id, m.addr, m.region))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads and verifies a backup file; the error says what is wrong with it.
fn read_backup(file: &Path) -> Result<Backup, CliError> {
    let bytes = std::fs::read(file).map_err(io_err(format!("reading {}", file.display())))?;
    backup::decode(&bytes).map_err(|e| CliError::CheckFailed(format!("{}: {e}", file.display())))
}

async fn save(ctx: &mut Ctx<'_>, a: SaveArgs) -> Result<Exit, CliError> {
    // A backup of a large state takes a while to stream; --timeout bounds the whole save.
    let client = ctx.client_with_default_timeout(Duration::from_secs(60))?;
    let deadline = client.timeout();
    let fetch = async {
        let mut stream = client.save_snapshot().await?;
        let mut info = None;
        let mut bytes = Vec::new();
        while let Some(chunk) =
            stream
                .message()
                .await
                .map_err(|status| crate::client::ClientError::Rpc {
                    endpoint: client.leader().unwrap_or_default(),
                    status,
                })?
        {
            if chunk.data.len() > backup::MAX_CHUNK_BYTES {
                return Err(CliError::Other(format!(
                    "the node sent a chunk of {} bytes (at most {} expected); is it the same baton release?",
                    chunk.data.len(),
                    backup::MAX_CHUNK_BYTES
                )));
            }
            if let Some(i) = chunk.info {
                info = Some(i);
            }
            let Some(i) = &info else {
                return Err(CliError::Other(
                    "the node's backup stream did not start with its description; is it the same baton release?".into(),
                ));
            };
            if (bytes.len() + chunk.data.len()) as u64 > i.size {
                return Err(CliError::Other(format!(
                    "the node sent more than the {} bytes it announced",
                    i.size
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        Ok::<_, CliError>((info, bytes))
    };
    let (info, bytes) = tokio::time::timeout(deadline, fetch).await.map_err(|_| {
        CliError::Unavailable(format!(
            "the backup was not received within {}; nothing was written (raise --timeout)",
            humantime::format_duration(deadline)
        ))
    })??;
    let info = info.ok_or_else(|| {
        CliError::Other("the node ended the backup stream without sending anything".into())
    })?;
    // End to end: the bytes on disk are exactly what the leader checksummed.
    let b = backup::decode(&bytes).map_err(|e| {
        CliError::Other(format!(
            "the backup received is damaged ({e}); nothing was written, run the command again"
        ))
    })?;
    if b.sha256 != info.sha256 || b.header.revision != info.revision {
        return Err(CliError::Other(
            "the backup received does not match its description; nothing was written, run the command again".into(),
        ));
    }
    write_atomically(&a.file, &bytes)?;
    ctx.print(&record(summary(&a.file, &b)))?;
    Ok(Exit::Ok)
}

/// Writes `bytes` to a temporary file beside `file`, syncs it, renames it over `file` and
/// syncs the directory: `file` is either the old content or the whole new one.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("{} is not a file name", file.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::Io {
            context: format!("writing {}", file.display()),
            source: e,
        });
    }
    Ok(())
}

fn restore(ctx: &mut Ctx<'_>, a: RestoreArgs) -> Result<Exit, CliError> {
    let (data_dir, id, members) = match &a.config {
        Some(path) => {
            let cfg = NodeConfig::load(path)?;
            if cfg.peers.is_empty() {
                return Err(CliError::Usage(format!(
                    "{} lists no [[peers]]: a restored cluster starts with its voters listed; add every node as [[peers]] (or pass --members)",
                    path.display()
                )));
            }
            let members: BTreeMap<NodeId, NodeInfo> = cfg
                .peers
                .iter()
                .map(|p| {
                    (
                        p.id,
                        NodeInfo {
                            addr: p.addr.clone(),
                            region: p.region.clone(),
                        },
                    )
                })
                .collect();
            (cfg.data_dir.clone(), cfg.id, members)
        }
        None => {
            let (Some(dir), Some(id), Some(members)) = (&a.data_dir, a.node_id, &a.members) else {
                return Err(CliError::Usage(
                    "give --config, or all of --data-dir, --node-id and --members".into(),
                ));
            };
            let members = backup::parse_members(members)
                .map_err(|e| CliError::Usage(format!("--members: {e}")))?;
            (dir.clone(), id, members)
        }
    };
    if !members.contains_key(&id) {
        return Err(CliError::Usage(format!(
            "node {id} is not among the members ({}): list every voter, this node included",
            members
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let empty = crate::raft::is_empty_dir(&data_dir)
        .map_err(io_err(format!("reading {}", data_dir.display())))?;
    if !empty {
        return Err(CliError::Other(format!(
            "the data directory {} is not empty: a restore seeds a new node and never overwrites one; \
             move it away or pick an empty directory (nothing was written)",
            data_dir.display()
        )));
    }
    let b = read_backup(&a.file).map_err(|e| match e {
        CliError::CheckFailed(m) => CliError::CheckFailed(format!("{m} (nothing was written)")),
        other => other,
    })?;
    crate::raft::seed_restored(
        &data_dir,
        crate::node::RAFT_DIR,
        &b.body.state,
        &b.body.audit,
        b.header.revision,
        members.clone(),
    )
    .map_err(|e| {
        CliError::Other(format!(
            "seeding {} failed: {e} (the directory was left as it was)",
            data_dir.display()
        ))
    })?;
    let mut t = summary(&a.file, &b);
    t.push(("data_dir", Value::from(data_dir.display().to_string())));
    t.push(("node_id", Value::from(id)));
    t.push((
        "members",
        Value::from(
            members
                .iter()
                .map(|(id, n)| format!("{id}={}@{}", n.addr, n.region))
                .collect::<Vec<_>>()
                .join(","),
        ),
    ));
    ctx.print(&record(t))?;
    note(&format!(
        "restored revision {} into {}: restore every member the same way, then start them with \
         `baton server`; new tokens start above {}",
        b.header.revision,
        data_dir.display(),
        b.header.revision
    ));
    Ok(Exit::Ok)
}
