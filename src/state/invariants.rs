//! The invariants of the module documentation, checked on one step of [`State::apply`].
//!
//! For the fuzz targets (`fuzz/`, built with the `fuzzing` feature) and the property tests:
//! a child module of `state`, so it sees the private parts (deletions, tombstones, runs) a
//! public accessor would not show.

use super::{Applied, EventKind, LeaseState, Request, Response, State};

/// Checks one step: `before` became `after` by applying `req` at log `index`, answering
/// `applied`. `index` must be above every index applied before (as Raft guarantees).
/// The error says which invariant broke.
pub fn check_step(
    before: &State,
    index: u64,
    req: &Request,
    applied: &Applied,
    after: &State,
) -> Result<(), String> {
    check_audit(before, index, applied, after)?;
    check_response(before, index, req, applied, after)?;
    check_leases(before, index, applied, after)?;
    check_state(after)
}

fn fail(what: String) -> Result<(), String> {
    Err(what)
}

/// Every command leaves exactly one audit entry, chained to the one before.
fn check_audit(before: &State, index: u64, a: &Applied, after: &State) -> Result<(), String> {
    let e = &a.audit;
    if e.seq != before.audit.next_seq || after.audit.next_seq != before.audit.next_seq + 1 {
        return fail(format!(
            "audit seq {} (head {} -> {})",
            e.seq, before.audit.next_seq, after.audit.next_seq
        ));
    }
    if e.prev_hash != before.audit.last_hash || e.hash != after.audit.last_hash {
        return fail("audit entry not chained to the head".into());
    }
    if e.hash != e.compute_hash() || e.revision != index {
        return fail(format!("audit entry {} hash or revision wrong", e.seq));
    }
    Ok(())
}

/// A refusal changes nothing but the audit trail; only a change moves the revision, to
/// the entry's index; events concern the command's service.
fn check_response(
    before: &State,
    index: u64,
    req: &Request,
    a: &Applied,
    after: &State,
) -> Result<(), String> {
    match &a.response {
        Response::Rejected(r) => {
            let mut same = after.clone();
            same.audit = before.audit.clone();
            if !a.events.is_empty() || same != *before {
                return fail(format!("refused ({r}) but changed the state"));
            }
            if !a.audit.outcome.starts_with("rejected: ") {
                return fail(format!("refusal audited as {:?}", a.audit.outcome));
            }
        }
        Response::Applied { revision, lease } => {
            let now = after.services.get(req.command.service()).map(|r| &r.lease);
            if *revision != index || lease.as_ref() != now {
                return fail(format!(
                    "applied at {revision}, not {index}, or stale lease"
                ));
            }
        }
        Response::Internal => return fail("Internal from apply".into()),
    }
    if a.events.is_empty() {
        if after.revision != before.revision {
            return fail("the revision moved without an event".into());
        }
    } else {
        if after.revision != index {
            return fail(format!(
                "revision {} after a change at {index}",
                after.revision
            ));
        }
        for e in &a.events {
            if e.revision != index || e.lease.revision != index {
                return fail(format!("event {:?} at revision {}", e.kind, e.revision));
            }
            if e.service != req.command.service() {
                return fail(format!("event for {:?}", e.service));
            }
        }
    }
    Ok(())
}

/// One holder at most; a held lease never changes hands or token without a grant from
/// Revoking or Vacant; tokens are grant indexes, strictly increasing, never reused; a held
/// lease's TTL never shrinks; a service only disappears by a delete event.
fn check_leases(before: &State, index: u64, a: &Applied, after: &State) -> Result<(), String> {
    let max_before = before
        .services
        .values()
        .flat_map(|r| r.tokens.last())
        .chain(before.tombstones.values().flat_map(|t| t.last()))
        .copied()
        .max()
        .unwrap_or(0);
    for e in a.events.iter().filter(|e| e.kind == EventKind::Granted) {
        if e.lease.token != index || e.lease.state != LeaseState::Held || index <= max_before {
            return fail(format!(
                "grant of token {} at index {index} (highest token before: {max_before})",
                e.lease.token
            ));
        }
    }
    let granted = |name: &str| {
        a.events
            .iter()
            .any(|e| e.kind == EventKind::Granted && e.service == name)
    };
    for (name, rec) in &after.services {
        let l = &rec.lease;
        let Some(prev) = before.services.get(name).map(|r| &r.lease) else {
            if !granted(name) {
                return fail(format!("{name} created without a grant"));
            }
            continue;
        };
        if prev.token != l.token && !granted(name) {
            return fail(format!("token of {name} changed without a grant"));
        }
        if granted(name) && prev.state == LeaseState::Held {
            return fail(format!("held lease of {name} granted again in one step"));
        }
        let unchanged = (&prev.holder, prev.token) == (&l.holder, l.token);
        if prev.state == LeaseState::Held && l.state == LeaseState::Held && !unchanged {
            return fail(format!("held lease of {name} replaced in one step"));
        }
        if prev.state == LeaseState::Revoking && l.state == LeaseState::Revoking && !unchanged {
            return fail(format!("revoking lease of {name} changed holder"));
        }
        let live = |s| s != LeaseState::Vacant;
        if live(prev.state) && live(l.state) && prev.token == l.token && l.ttl_ms < prev.ttl_ms {
            return fail(format!(
                "TTL of the held lease of {name} shortened from {} to {} ms",
                prev.ttl_ms, l.ttl_ms
            ));
        }
    }
    for name in before.services.keys() {
        if !after.services.contains_key(name) {
            let deleted = a.events.iter().find(|e| {
                e.kind == EventKind::ServiceDeleted
                    && &e.service == name
                    && e.lease.state == LeaseState::Vacant
                    && e.lease.holder.is_none()
            });
            if deleted.is_none() {
                return fail(format!("{name} vanished without a delete event"));
            }
        }
    }
    Ok(())
}

/// What holds of any state, whatever led to it.
fn check_state(s: &State) -> Result<(), String> {
    for (name, rec) in &s.services {
        let l = &rec.lease;
        if rec.spec.name != *name {
            return fail(format!("{name} stored under another name"));
        }
        if l.holder.is_some() != (l.state != LeaseState::Vacant) {
            return fail(format!(
                "{name}: holder {:?} in state {:?}",
                l.holder, l.state
            ));
        }
        if !rec.tokens.windows(2).all(|w| w[0] < w[1]) {
            return fail(format!("{name}: tokens not increasing {:?}", rec.tokens));
        }
        if rec.tokens.last().copied().unwrap_or(0) != l.token {
            return fail(format!(
                "{name}: lease token {} not the last granted",
                l.token
            ));
        }
        if let Some(holder) = &l.holder {
            if !rec.spec.regions.contains(holder) {
                return fail(format!("{name} held by {holder:?}, not a candidate"));
            }
        }
        if let Some(id) = rec.active_run {
            let ok = s
                .runs
                .get(&id)
                .is_some_and(|r| !r.state.is_final() && r.service == *name);
            if !ok {
                return fail(format!(
                    "{name}: active run {id} is not a running run of it"
                ));
            }
        }
    }
    for run in s.runs.values().filter(|r| !r.state.is_final()) {
        let active = s.services.get(&run.service).and_then(|r| r.active_run);
        if active != Some(run.id) {
            return fail(format!(
                "run {} runs but is not its service's active run",
                run.id
            ));
        }
        if run.current >= run.steps.len() {
            return fail(format!("run {} runs past its last step", run.id));
        }
    }
    for name in s.deleting.keys() {
        let revoking = s
            .services
            .get(name)
            .is_some_and(|r| r.lease.state == LeaseState::Revoking);
        if !revoking {
            return fail(format!(
                "{name} is being deleted but its lease is not revoking"
            ));
        }
    }
    for (name, tokens) in &s.tombstones {
        if !tokens.windows(2).all(|w| w[0] < w[1]) {
            return fail(format!("tombstone of {name}: tokens not increasing"));
        }
    }
    let history = s
        .history
        .since(s.history.oldest_available())
        .map_err(|e| e.to_string())?;
    if !history.windows(2).all(|w| w[0].0 < w[1].0) {
        return fail("history revisions not increasing".into());
    }
    if history.last().is_some_and(|(rev, _)| *rev != s.revision) {
        return fail("the newest history revision is not the state's".into());
    }
    Ok(())
}
