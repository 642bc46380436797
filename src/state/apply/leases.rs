//! The lease itself: `Revoke`, `Grant`, `Expire` and `SetMode`.

use super::Ctx;
use crate::state::{
    check_token, grant_lease, revoke_lease, Event, EventKind, LeaseMode, LeaseState, Rejection,
    State,
};

impl State {
    /// Held -> Revoking for `token` (a no-op when already revoking).
    pub(super) fn revoke(
        &mut self,
        cx: &Ctx,
        service: &str,
        token: u64,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        if revoke_lease(rec, token, cx.index)? {
            Ok(vec![cx.event(EventKind::Revoking, rec, reason)])
        } else {
            Ok(Vec::new())
        }
    }

    /// Vacant or Revoking -> Held by `region`, with the entry's index as token.
    pub(super) fn grant(
        &mut self,
        cx: &Ctx,
        service: &str,
        region: &str,
        expected_token: u64,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        grant_lease(rec, region, expected_token, cx.index, cx.at_ms)?;
        Ok(vec![cx.event(EventKind::Granted, rec, reason)])
    }

    /// Held or Revoking -> Vacant for `token` (a no-op when already vacant).
    pub(super) fn expire(
        &mut self,
        cx: &Ctx,
        service: &str,
        token: u64,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        check_token(service, token, rec.lease.token)?;
        if rec.lease.state == LeaseState::Vacant {
            return Ok(Vec::new());
        }
        rec.lease.state = LeaseState::Vacant;
        rec.vacated_from = rec.lease.holder.take();
        rec.lease.revision = cx.index;
        rec.vacated_ms = Some(cx.at_ms);
        Ok(vec![cx.event(EventKind::Vacated, rec, reason)])
    }

    /// Read-write <-> read-only (a no-op when unchanged).
    pub(super) fn set_mode(
        &mut self,
        cx: &Ctx,
        service: &str,
        mode: LeaseMode,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        if rec.lease.mode == mode {
            return Ok(Vec::new());
        }
        rec.lease.mode = mode;
        rec.lease.revision = cx.index;
        Ok(vec![cx.event(EventKind::ModeChanged, rec, reason)])
    }
}
