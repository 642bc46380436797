//! Service definitions: create, redefine and delete (`PutService`, `DeleteService`).

use std::collections::BTreeMap;

use super::Ctx;
use crate::state::{
    end_run, revoke_lease, Event, EventKind, Lease, LeaseMode, LeaseState, Rejection, RunState,
    ServiceRecord, ServiceSpec, State,
};

impl State {
    /// Creates `spec`'s service, granted to its first primary, or redefines it.
    pub(super) fn put_service(
        &mut self,
        cx: &Ctx,
        spec: &ServiceSpec,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let (index, at_ms) = (cx.index, cx.at_ms);
        spec.validate().map_err(Rejection::Invalid)?;
        self.check_room(&spec.name).map_err(Rejection::Invalid)?;
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
                // A held (or revoking) lease never gets a shorter TTL: its holder was
                // promised validity under the TTL its renewals were answered with, and
                // every leader measures renewals against this field. A longer TTL is
                // safe at once; a shorter one takes effect from the next grant.
                if rec.lease.state == LeaseState::Vacant || spec.lease_ttl_ms > rec.lease.ttl_ms {
                    rec.lease.ttl_ms = spec.lease_ttl_ms;
                }
                rec.lease.revision = index;
                Ok(vec![cx.event(EventKind::ServicePut, rec, reason)])
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
                    observations: BTreeMap::new(),
                    auto_moves: Vec::new(),
                    paused: None,
                    active_run: None,
                    vacated_ms: None,
                    vacated_from: None,
                };
                let events = vec![
                    cx.event(EventKind::ServicePut, &rec, reason),
                    cx.event(EventKind::Granted, &rec, reason),
                ];
                self.services.insert(spec.name.clone(), rec);
                Ok(events)
            }
        }
    }

    /// Deletes service `name`: at once when its lease is vacant, else once it is fenced.
    pub(super) fn delete_service(
        &mut self,
        cx: &Ctx,
        name: &str,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let (index, at_ms) = (cx.index, cx.at_ms);
        let rec = self.record(name)?;
        // A run in progress cannot finish on a service being deleted: end it now.
        if let Some(run) = rec.active_run.take().and_then(|id| self.runs.get_mut(&id)) {
            end_run(
                run,
                at_ms,
                RunState::Failed,
                format!("service deleted: {reason}"),
            );
        }
        let rec = self.record(name)?;
        match rec.lease.state {
            LeaseState::Held => {
                // Deleting a held lease outright would let a re-created service be
                // granted while the old holder still acts. Fence first, in this same
                // command: the lease goes Revoking now, and the service goes when its
                // holder is fenced (it acknowledges demotion or its TTL runs out; the
                // leader's keeper commits that expiry, on whichever node leads then).
                let token = rec.lease.token;
                revoke_lease(rec, token, index)?;
                let revoking = cx.event(EventKind::Revoking, rec, reason);
                self.deleting.insert(name.to_string(), reason.to_string());
                Ok(vec![revoking])
            }
            LeaseState::Revoking => {
                self.deleting.insert(name.to_string(), reason.to_string());
                Ok(Vec::new())
            }
            LeaseState::Vacant => Ok(self.remove_service(index, at_ms, name, reason)),
        }
    }
}
