//! Limits on what a client can make the cluster store and replicate.
//!
//! Every entry crosses the network to every node within one heartbeat (openraft 0.9 bounds
//! each AppendEntries by `heartbeat_interval`), is copied into the audit trail (before and
//! after) and into every snapshot, so sizes are bounded where a request enters, with an
//! error that names the field and the limit. The defaults keep the worst case small:
//! [`MAX_SERVICES`] specs of [`MAX_SPEC_BYTES`] make a 32 MiB state and ListServices answer,
//! under the 64 MiB message limit.

use super::command::Request;
use super::service::ServiceSpec;

/// Most services a cluster holds.
pub const MAX_SERVICES: usize = 1000;
/// Most deleted services whose tokens are remembered (for `ValidateToken`); the one
/// deleted longest ago is forgotten first.
pub const MAX_TOMBSTONES: usize = 10_000;
/// Largest encoded service definition (bincode), in bytes.
pub const MAX_SPEC_BYTES: usize = 32 * 1024;
/// Largest encoded Raft command (bincode), in bytes: a spec plus its reason and envelope.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest health-check target (URL or host:port).
pub const MAX_TARGET_LEN: usize = 512;
/// Longest webhook URL in a plan.
pub const MAX_URL_LEN: usize = 1024;
/// Longest node address (`host:port`) a membership change may carry.
pub const MAX_ADDR_LEN: usize = 255;
/// Most steps in one plan.
pub const MAX_PLAN_STEPS: usize = 16;
/// Shortest health probe interval: faster probing floods the log with observations.
pub const MIN_PROBE_INTERVAL_MS: u64 = 100;

/// Checks that `value` is at most `limit` bytes long; the error names `field`.
pub fn check_len(field: &str, value: &str, limit: usize) -> Result<(), String> {
    if value.len() > limit {
        return Err(format!(
            "{field} is {} bytes long; the limit is {limit}",
            value.len()
        ));
    }
    Ok(())
}

/// Checks the encoded size of a service definition.
pub fn check_spec_size(spec: &ServiceSpec) -> Result<(), String> {
    let size = bincode::serialized_size(spec).map_err(|e| format!("encoding the spec: {e}"))?;
    if size > MAX_SPEC_BYTES as u64 {
        return Err(format!(
            "service {:?}: the definition encodes to {size} bytes; the limit is {MAX_SPEC_BYTES} \
             (shorten targets, URLs or plans)",
            spec.name
        ));
    }
    Ok(())
}

/// Checks the encoded size of a Raft command before it is proposed.
pub fn check_command_size(req: &Request) -> Result<(), String> {
    let size = bincode::serialized_size(req).map_err(|e| format!("encoding the command: {e}"))?;
    if size > MAX_COMMAND_BYTES as u64 {
        return Err(format!(
            "the {} command encodes to {size} bytes; the limit is {MAX_COMMAND_BYTES} \
             (shorten its reason or definition)",
            req.command.action()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_name_the_field_and_the_limit() {
        assert!(check_len("reason", "ok", 4).is_ok());
        let e = check_len("health target", "12345", 4).unwrap_err();
        assert!(
            e.contains("health target") && e.contains("limit is 4"),
            "{e}"
        );
    }
}
