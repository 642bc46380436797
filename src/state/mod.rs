//! The replicated model, pure and deterministic: `apply(state, index, request)`.
//!
//! No I/O, no clocks, no tokio. Time enters only as [`Request::at_ms`], stamped by the
//! leader, so every replica computes the same state from the same log.
//!
//! Invariants, checked by the tests beside this module:
//! - a lease is granted only from Vacant, or from Revoking (the leader fenced the old
//!   holder first); a Held lease is never handed to another region in one step, so there is
//!   never more than one holder;
//! - the fencing token of a grant is the log index of its entry, so tokens strictly increase
//!   per service and globally and are never reused;
//! - `revision` is the log index of the last entry that changed a service;
//! - every command leaves exactly one audit entry, chained by hash to the one before.

pub mod audit;
pub mod command;
pub mod history;
pub mod lease;
pub mod names;
pub mod service;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use audit::{AuditEntry, AuditHead};
pub use command::{Command, Rejection, Request, Response};
pub use history::{Compacted, Event, EventKind, History};
pub use lease::{Lease, LeaseMode, LeaseState};
pub use service::{FailbackMode, HealthCheck, ServiceSpec};

/// A service with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Definition and policy.
    pub spec: ServiceSpec,
    /// The lease.
    pub lease: Lease,
    /// Every token ever granted for this service, ascending (for `ValidateToken`).
    pub tokens: Vec<u64>,
    /// Automation paused (maintenance).
    pub frozen: bool,
}

/// How a token relates to a service's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenValidity {
    /// The current token of a held lease.
    Current,
    /// Issued, but replaced or revoked since.
    Superseded,
    /// Never issued for this service.
    Unknown,
}

/// The outcome of applying one entry: the answer, the watch events, the audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What the proposer is told.
    pub response: Response,
    /// Changes for watchers (empty when nothing changed).
    pub events: Vec<Event>,
    /// The audit entry this command left.
    pub audit: AuditEntry,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    services: BTreeMap<String, ServiceRecord>,
    revision: u64,
    history: History,
    audit: AuditHead,
}

impl Default for State {
    fn default() -> Self {
        Self::new(history::DEFAULT_HISTORY)
    }
}

impl State {
    /// An empty state that keeps `history_limit` revisions for watch resume.
    pub fn new(history_limit: usize) -> Self {
        Self {
            services: BTreeMap::new(),
            revision: 0,
            history: History::new(history_limit),
            audit: AuditHead::default(),
        }
    }

    /// Revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.get(name)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The change history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The end of the audit chain.
    pub fn audit_head(&self) -> &AuditHead {
        &self.audit
    }

    /// How `token` relates to `service`'s lease; `None` if the service does not exist.
    pub fn validate_token(&self, service: &str, token: u64) -> Option<TokenValidity> {
        let rec = self.services.get(service)?;
        if rec.tokens.binary_search(&token).is_err() {
            return Some(TokenValidity::Unknown);
        }
        if token == rec.lease.token && rec.lease.state == LeaseState::Held {
            Some(TokenValidity::Current)
        } else {
            Some(TokenValidity::Superseded)
        }
    }

    /// Applies the entry at log `index`. Deterministic: same state, index and request give
    /// the same result on every replica.
    pub fn apply(&mut self, index: u64, req: &Request) -> Applied {
        let service = req.command.service().to_string();
        let before = self.services.get(&service).cloned();
        let result = self.apply_command(index, req);
        let (response, events, outcome) = match result {
            Ok(events) => {
                let lease = self.services.get(&service).map(|r| r.lease.clone());
                (
                    Response::Applied {
                        revision: index,
                        lease,
                    },
                    events,
                    "ok".to_string(),
                )
            }
            Err(rej) => {
                let outcome = format!("rejected: {rej}");
                (Response::Rejected(rej), Vec::new(), outcome)
            }
        };
        if !events.is_empty() {
            self.revision = index;
            self.history.push(index, events.clone());
        }
        let after = self.services.get(&service).cloned();
        let audit = self.append_audit(index, req, before.as_ref(), after.as_ref(), outcome);
        Applied {
            response,
            events,
            audit,
        }
    }

    fn append_audit(
        &mut self,
        index: u64,
        req: &Request,
        before: Option<&ServiceRecord>,
        after: Option<&ServiceRecord>,
        outcome: String,
    ) -> AuditEntry {
        let json = |r: Option<&ServiceRecord>| match r {
            Some(r) => serde_json::json!({ "lease": r.lease, "frozen": r.frozen, "spec": r.spec })
                .to_string(),
            None => "null".to_string(),
        };
        let mut entry = AuditEntry {
            seq: self.audit.next_seq,
            revision: index,
            at_ms: req.at_ms,
            actor: req.actor.clone(),
            action: req.command.action().to_string(),
            service: req.command.service().to_string(),
            reason: req.command.reason().to_string(),
            before: json(before),
            after: json(after),
            outcome,
            prev_hash: self.audit.last_hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        self.audit.next_seq += 1;
        self.audit.last_hash = entry.hash.clone();
        entry
    }

    fn record(&mut self, name: &str) -> Result<&mut ServiceRecord, Rejection> {
        self.services
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownService(name.to_string()))
    }

    fn apply_command(&mut self, index: u64, req: &Request) -> Result<Vec<Event>, Rejection> {
        let at_ms = req.at_ms;
        let event = |kind, rec: &ServiceRecord, reason: &str| Event {
            kind,
            service: rec.spec.name.clone(),
            revision: index,
            lease: rec.lease.clone(),
            reason: reason.to_string(),
            frozen: rec.frozen,
        };
        match &req.command {
            Command::PutService { spec, reason } => {
                spec.validate().map_err(Rejection::Invalid)?;
                match self.services.get_mut(&spec.name) {
                    Some(rec) => {
                        if let Some(holder) = &rec.lease.holder {
                            if !spec.is_allowed(holder) {
                                return Err(Rejection::WrongState(format!(
                                    "region {holder:?} holds {:?} and would no longer be allowed: fail over first",
                                    spec.name
                                )));
                            }
                        }
                        if rec.spec == *spec {
                            return Ok(Vec::new());
                        }
                        rec.spec = spec.clone();
                        rec.lease.ttl_ms = spec.lease_ttl_ms;
                        rec.lease.revision = index;
                        Ok(vec![event(EventKind::ServicePut, rec, reason)])
                    }
                    None => {
                        let first = spec
                            .first_primary()
                            .ok_or_else(|| Rejection::Invalid("no allowed region".into()))?
                            .to_string();
                        let rec = ServiceRecord {
                            lease: Lease {
                                holder: Some(first),
                                token: index,
                                revision: index,
                                granted_at_ms: at_ms,
                                ttl_ms: spec.lease_ttl_ms,
                                state: LeaseState::Held,
                                mode: LeaseMode::ReadWrite,
                            },
                            spec: spec.clone(),
                            tokens: vec![index],
                            frozen: false,
                        };
                        let events = vec![
                            event(EventKind::ServicePut, &rec, reason),
                            event(EventKind::Granted, &rec, reason),
                        ];
                        self.services.insert(spec.name.clone(), rec);
                        Ok(events)
                    }
                }
            }
            Command::DeleteService { name, reason } => {
                let held = self.record(name)?.lease.state == LeaseState::Held;
                if held {
                    // Deleting a held lease would let a re-created service be granted while
                    // the old holder still acts: revoke and fence first.
                    return Err(Rejection::WrongState(format!(
                        "service {name:?} is held: revoke the lease (and fence its holder) before deleting it"
                    )));
                }
                let mut rec = self
                    .services
                    .remove(name)
                    .ok_or_else(|| Rejection::UnknownService(name.clone()))?;
                rec.lease.holder = None;
                rec.lease.state = LeaseState::Vacant;
                rec.lease.revision = index;
                Ok(vec![event(EventKind::ServiceDeleted, &rec, reason)])
            }
            Command::Revoke {
                service,
                token,
                reason,
            } => {
                let rec = self.record(service)?;
                check_token(service, *token, rec.lease.token)?;
                match rec.lease.state {
                    LeaseState::Held => {
                        rec.lease.state = LeaseState::Revoking;
                        rec.lease.revision = index;
                        Ok(vec![event(EventKind::Revoking, rec, reason)])
                    }
                    LeaseState::Revoking => Ok(Vec::new()),
                    LeaseState::Vacant => Err(Rejection::WrongState(format!(
                        "service {service:?} has no holder to revoke"
                    ))),
                }
            }
            Command::Grant {
                service,
                region,
                expected_token,
                reason,
            } => {
                let rec = self.record(service)?;
                check_region(&rec.spec, region)?;
                check_token(service, *expected_token, rec.lease.token)?;
                if rec.lease.state == LeaseState::Held {
                    return Err(Rejection::WrongState(format!(
                        "service {service:?} is held by {:?}: revoke it before granting it elsewhere",
                        rec.lease.holder.as_deref().unwrap_or("")
                    )));
                }
                rec.lease = Lease {
                    holder: Some(region.clone()),
                    token: index,
                    revision: index,
                    granted_at_ms: at_ms,
                    ttl_ms: rec.spec.lease_ttl_ms,
                    state: LeaseState::Held,
                    mode: rec.lease.mode,
                };
                rec.tokens.push(index);
                Ok(vec![event(EventKind::Granted, rec, reason)])
            }
            Command::Expire {
                service,
                token,
                reason,
            } => {
                let rec = self.record(service)?;
                check_token(service, *token, rec.lease.token)?;
                if rec.lease.state == LeaseState::Vacant {
                    return Ok(Vec::new());
                }
                rec.lease.state = LeaseState::Vacant;
                rec.lease.holder = None;
                rec.lease.revision = index;
                Ok(vec![event(EventKind::Vacated, rec, reason)])
            }
            Command::SetMode {
                service,
                mode,
                reason,
            } => {
                let rec = self.record(service)?;
                if rec.lease.mode == *mode {
                    return Ok(Vec::new());
                }
                rec.lease.mode = *mode;
                rec.lease.revision = index;
                Ok(vec![event(EventKind::ModeChanged, rec, reason)])
            }
            Command::SetFrozen {
                service,
                frozen,
                reason,
            } => {
                let rec = self.record(service)?;
                if rec.frozen == *frozen {
                    return Ok(Vec::new());
                }
                rec.frozen = *frozen;
                rec.lease.revision = index;
                Ok(vec![event(EventKind::FreezeChanged, rec, reason)])
            }
        }
    }
}

fn check_token(service: &str, expected: u64, actual: u64) -> Result<(), Rejection> {
    if expected != actual {
        return Err(Rejection::TokenMismatch {
            service: service.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Whether `region` may take `spec`'s lease, with an explanation when not.
pub fn check_region(spec: &ServiceSpec, region: &str) -> Result<(), Rejection> {
    if !spec.regions.iter().any(|r| r == region) {
        return Err(Rejection::UnknownRegion {
            service: spec.name.clone(),
            region: region.to_string(),
            candidates: spec.regions.join(", "),
        });
    }
    if !spec.is_allowed(region) {
        return Err(Rejection::NotAllowed {
            service: spec.name.clone(),
            region: region.to_string(),
            allowed: spec.allowed_regions.join(", "),
        });
    }
    Ok(())
}
