//! What every RPC checks of its request before it touches the state or Raft.
//!
//! Pure functions of the request (and, for PutService, the node's timing), so the handlers
//! and the fuzz targets (`fuzz/`, and their twins in `cargo test`) run the very same checks.
//! Every refusal is INVALID_ARGUMENT naming the field. RPCs whose requests have nothing
//! to check (`GetWorkflow`, `ClusterStatus`, `RemoveNode`, `TransferLeadership`,
//! `TriggerSnapshot`: any id is well-formed, an unknown one is NOT_FOUND later) have no
//! function here. `Watch` also refuses a start revision too far ahead, which depends on the
//! node's state (`watch::open`).

use tonic::Status;

use super::keepalive::MAX_AGENT_ID;
use super::watch::MAX_WATCHED;
use crate::control::timing::{check_ttl, TimingConfig};
use crate::convert::spec_from_proto;
use crate::proto::{self, Consistency};
use crate::state::limits::{check_len, MAX_ADDR_LEN};
use crate::state::names::{check_name, check_reason, MAX_REASON_LEN};
use crate::state::{LeaseMode, ServiceSpec};

/// Most entries one ListAudit page asks for.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// Entries a ListAudit page has when the request names no limit.
pub const DEFAULT_AUDIT_PAGE: usize = 100;
/// Most runs one ListWorkflows answer has.
pub const MAX_WORKFLOWS_PAGE: usize = 1000;
/// Runs a ListWorkflows answer has when the request names no limit.
pub const DEFAULT_WORKFLOWS_PAGE: usize = 50;

fn invalid(m: String) -> Status {
    Status::invalid_argument(m)
}

/// Whether a read must be linearizable; an unknown consistency value is refused rather
/// than guessed.
pub fn linearizable(c: i32) -> Result<bool, Status> {
    match Consistency::try_from(c) {
        Ok(c) => Ok(c != Consistency::Local),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency {c} is not a known value: use 0 (unspecified: linearizable), 1 (LINEARIZABLE) or 2 (LOCAL)"
        ))),
    }
}

/// `GetPrimary`: returns whether the read is linearizable.
pub fn get_primary(req: &proto::GetPrimaryRequest) -> Result<bool, Status> {
    check_name("service", &req.service).map_err(invalid)?;
    linearizable(req.consistency)
}

/// `ListServices`: returns whether the read is linearizable.
pub fn list_services(req: &proto::ListServicesRequest) -> Result<bool, Status> {
    linearizable(req.consistency)
}

/// `Watch`: the services named (the start revision is checked against the state).
pub fn watch(req: &proto::WatchRequest) -> Result<(), Status> {
    if req.services.len() > MAX_WATCHED {
        return Err(Status::invalid_argument(format!(
            "a watch may name at most {MAX_WATCHED} services (got {}); watch all by naming none",
            req.services.len()
        )));
    }
    for s in &req.services {
        check_name("service", s).map_err(invalid)?;
    }
    Ok(())
}

/// One `KeepAlive` message.
pub fn keep_alive(req: &proto::KeepAliveRequest) -> Result<(), Status> {
    check_name("service", &req.service).map_err(invalid)?;
    check_name("region", &req.region).map_err(invalid)?;
    if req.agent_id.is_empty() || req.agent_id.len() > MAX_AGENT_ID {
        return Err(Status::invalid_argument(format!(
            "agent_id must be 1-{MAX_AGENT_ID} bytes (for example the host name)"
        )));
    }
    Ok(())
}

/// `ValidateToken`: returns whether the read is linearizable.
pub fn validate_token(req: &proto::ValidateTokenRequest) -> Result<bool, Status> {
    check_name("service", &req.service).map_err(invalid)?;
    linearizable(req.consistency)
}

/// A move of the lease by an operator (`Failover` with a target, `Failback` without). A
/// dry run needs no reason, but one given is still bounded.
pub fn operator_move(
    service: &str,
    to: Option<&str>,
    reason: &str,
    dry_run: bool,
) -> Result<(), Status> {
    check_name("service", service).map_err(invalid)?;
    if let Some(to) = to {
        check_name("region", to).map_err(invalid)?;
    }
    if dry_run {
        check_len("reason", reason, MAX_REASON_LEN).map_err(invalid)?;
    } else {
        check_reason(reason).map_err(invalid)?;
    }
    Ok(())
}

/// `Failover`.
pub fn failover(req: &proto::FailoverRequest) -> Result<(), Status> {
    operator_move(&req.service, Some(&req.to_region), &req.reason, req.dry_run)
}

/// `Failback`.
pub fn failback(req: &proto::FailbackRequest) -> Result<(), Status> {
    operator_move(&req.service, None, &req.reason, req.dry_run)
}

/// `ListAudit`: returns the page size.
pub fn list_audit(req: &proto::ListAuditRequest) -> Result<usize, Status> {
    if !req.service.is_empty() {
        check_name("service", &req.service).map_err(invalid)?;
    }
    Ok(match req.limit {
        0 => DEFAULT_AUDIT_PAGE,
        n => (n as usize).min(MAX_AUDIT_PAGE),
    })
}

/// `SetMode`: returns the mode asked for (an unknown or unspecified mode is refused).
pub fn set_mode(req: &proto::SetModeRequest) -> Result<LeaseMode, Status> {
    check_name("service", &req.service).map_err(invalid)?;
    check_reason(&req.reason).map_err(invalid)?;
    match proto::LeaseMode::try_from(req.mode) {
        Ok(proto::LeaseMode::ReadWrite) => Ok(LeaseMode::ReadWrite),
        Ok(proto::LeaseMode::ReadOnly) => Ok(LeaseMode::ReadOnly),
        _ => Err(invalid("mode must be READ_WRITE or READ_ONLY".into())),
    }
}

/// `Freeze`.
pub fn freeze(req: &proto::FreezeRequest) -> Result<(), Status> {
    check_name("service", &req.service).map_err(invalid)?;
    check_reason(&req.reason).map_err(invalid)
}

/// `Ack`.
pub fn ack(req: &proto::AckRequest) -> Result<(), Status> {
    check_name("service", &req.service).map_err(invalid)?;
    check_reason(&req.reason).map_err(invalid)
}

/// `Approve` (the run id is looked up in the state).
pub fn approve(req: &proto::ApproveRequest) -> Result<(), Status> {
    check_reason(&req.reason).map_err(invalid)
}

/// `ListWorkflows`: returns the page size.
pub fn list_workflows(req: &proto::ListWorkflowsRequest) -> Result<usize, Status> {
    if !req.service.is_empty() {
        check_name("service", &req.service).map_err(invalid)?;
    }
    Ok(match req.limit {
        0 => DEFAULT_WORKFLOWS_PAGE,
        n => (n as usize).min(MAX_WORKFLOWS_PAGE),
    })
}

/// `Plan`.
pub fn plan(req: &proto::PlanRequest) -> Result<(), Status> {
    check_name("service", &req.service).map_err(invalid)
}

/// `AddNode`.
pub fn add_node(req: &proto::AddNodeRequest) -> Result<(), Status> {
    if req.id == 0 {
        return Err(Status::invalid_argument(
            "node id must be a positive integer",
        ));
    }
    check_name("region", &req.region).map_err(invalid)?;
    check_len("addr", &req.addr, MAX_ADDR_LEN).map_err(invalid)?;
    if req
        .addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(Status::invalid_argument(format!(
            "{:?} is not host:port",
            req.addr
        )));
    }
    Ok(())
}

/// `PutService`: returns the validated definition (its TTL checked against `timing`).
pub fn put_service(
    req: &proto::PutServiceRequest,
    timing: &TimingConfig,
) -> Result<ServiceSpec, Status> {
    let spec_proto = req
        .spec
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("spec is required"))?;
    let spec = spec_from_proto(spec_proto).map_err(invalid)?;
    check_ttl(&spec, timing).map_err(invalid)?;
    if !req.reason.is_empty() {
        check_reason(&req.reason).map_err(invalid)?;
    }
    Ok(spec)
}

/// `DeleteService`.
pub fn delete_service(req: &proto::DeleteServiceRequest) -> Result<(), Status> {
    check_name("service", &req.name).map_err(invalid)?;
    check_reason(&req.reason).map_err(invalid)
}

/// `GetService`.
pub fn get_service(req: &proto::GetServiceRequest) -> Result<(), Status> {
    check_name("service", &req.name).map_err(invalid)
}
