//! `baton service apply|get|delete`: service definitions.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::{lease_mode, lease_state, millis, Table};
use super::{CliError, Ctx, Exit};
use crate::config::ServiceFile;
use crate::convert::spec_to_proto;
use crate::proto;

/// `baton service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create or update every service of a TOML file (`[[services]]` tables).
    Apply(ApplyArgs),
    /// Show a service's definition and lease.
    Get(GetArgs),
    /// Delete a service (refused while a region holds its lease).
    Delete(DeleteArgs),
}

/// `baton service apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The TOML file.
    pub file: PathBuf,
    /// Why (recorded in the audit trail) [default: "baton service apply FILE"].
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `baton service get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The service.
    pub name: String,
}

/// `baton service delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The service.
    pub name: String,
    /// Why (recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `baton service ...`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: ServiceCommand) -> Result<Exit, CliError> {
    match cmd {
        ServiceCommand::Apply(a) => apply(ctx, a).await,
        ServiceCommand::Get(a) => get(ctx, a).await,
        ServiceCommand::Delete(a) => delete(ctx, a).await,
    }
}

async fn apply(ctx: &mut Ctx<'_>, args: ApplyArgs) -> Result<Exit, CliError> {
    let specs = ServiceFile::load(&args.file)?;
    let reason = args
        .reason
        .unwrap_or_else(|| format!("baton service apply {}", args.file.display()));
    let client = ctx.client()?;
    let mut t = Table::new(&["service", "revision", "primary", "token"]);
    let mut failure = None;
    for spec in &specs {
        match client.put_service(spec_to_proto(spec), &reason).await {
            Ok(resp) => {
                let lease = resp.service.and_then(|s| s.lease).unwrap_or_default();
                t.push(vec![
                    Value::from(spec.name.clone()),
                    Value::from(resp.revision),
                    Value::from(lease.holder_region),
                    Value::from(lease.token),
                ]);
            }
            Err(source) => {
                failure = Some(CliError::ClientAt {
                    context: format!(
                        "applying service {:?} ({} of {} applied before it)",
                        spec.name,
                        t.rows().len(),
                        specs.len()
                    ),
                    source,
                });
                break;
            }
        }
    }
    // What was applied is printed even when a later service failed.
    ctx.print(&t)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(Exit::Ok),
    }
}

/// A service's definition and lease as one vertical record.
pub fn service_table(s: &proto::ServiceStatus) -> Table {
    let spec = s.spec.clone().unwrap_or_default();
    let lease = s.lease.clone().unwrap_or_default();
    let health: serde_json::Map<String, Value> = spec
        .health
        .iter()
        .map(|(region, h)| {
            (
                region.clone(),
                serde_json::json!({
                    "kind": h.kind,
                    "target": h.target,
                    "interval": millis(h.interval_ms),
                    "timeout": millis(h.timeout_ms),
                    "threshold": h.threshold,
                }),
            )
        })
        .collect();
    let health_text: Vec<String> = spec
        .health
        .iter()
        .map(|(r, h)| format!("{r}: {} {}", h.kind, h.target))
        .collect();
    Table::record(
        &[
            "service",
            "primary",
            "token",
            "state",
            "mode",
            "revision",
            "frozen",
            "regions",
            "allowed_regions",
            "lease_ttl",
            "auto_failover",
            "failback",
            "failback_stable",
            "cooldown",
            "flap_limit",
            "flap_window",
            "health",
            "health_checks",
        ],
        vec![
            Value::from(spec.name.clone()),
            Value::from(lease.holder_region.clone()),
            Value::from(lease.token),
            Value::from(lease_state(&lease)),
            Value::from(lease_mode(&lease)),
            Value::from(lease.revision),
            Value::from(s.frozen),
            Value::from(spec.regions.clone()),
            Value::from(spec.allowed_regions.clone()),
            Value::from(millis(spec.lease_ttl_ms)),
            Value::from(spec.auto_failover),
            Value::from(spec.failback.clone()),
            Value::from(millis(spec.failback_stable_ms)),
            Value::from(millis(spec.cooldown_ms)),
            Value::from(spec.flap_limit),
            Value::from(millis(spec.flap_window_ms)),
            Value::from(health_text),
            Value::Object(health),
        ],
    )
    .vertical()
    .json_only(&["health_checks"])
}

async fn get(ctx: &mut Ctx<'_>, args: GetArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let resp = client.get_service(&args.name).await?;
    let status = resp.service.unwrap_or_default();
    ctx.print(&service_table(&status))?;
    Ok(Exit::Ok)
}

async fn delete(ctx: &mut Ctx<'_>, args: DeleteArgs) -> Result<Exit, CliError> {
    if args.reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why the service is deleted (it goes into the audit trail)".into(),
        ));
    }
    let client = ctx.client()?;
    let resp = client.delete_service(&args.name, &args.reason).await?;
    let t = Table::record(
        &["service", "deleted_at_revision", "pending"],
        vec![
            Value::from(args.name.clone()),
            Value::from(resp.revision),
            Value::from(resp.pending),
        ],
    );
    ctx.print(&t)?;
    if resp.pending {
        eprintln!(
            "{}'s lease is revoking: the service is removed once its holder acknowledges demotion or its TTL runs out",
            args.name
        );
    }
    Ok(Exit::Ok)
}
