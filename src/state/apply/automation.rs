//! What automation decides from: `SetFrozen`, `Observe` and `AckFlap`.

use super::Ctx;
use crate::state::{Event, EventKind, Observation, Rejection, State};

impl State {
    /// Pauses or resumes automation for `service` (a no-op when unchanged).
    pub(super) fn set_frozen(
        &mut self,
        cx: &Ctx,
        service: &str,
        frozen: bool,
        reason: &str,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        if rec.frozen == frozen {
            return Ok(Vec::new());
        }
        rec.frozen = frozen;
        rec.lease.revision = cx.index;
        Ok(vec![cx.event(EventKind::FreezeChanged, rec, reason)])
    }

    /// Records what vantage node `vantage_node` saw of `region`; no event (health is not
    /// part of what watchers follow).
    pub(super) fn observe(
        &mut self,
        service: &str,
        region: &str,
        vantage_node: u64,
        seen: Observation,
    ) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        if !rec.spec.regions.iter().any(|r| r == region) {
            return Err(Rejection::UnknownRegion {
                service: service.to_string(),
                region: region.to_string(),
                candidates: rec.spec.regions.join(", "),
            });
        }
        rec.observations
            .entry(region.to_string())
            .or_default()
            .insert(vantage_node, seen);
        Ok(Vec::new())
    }

    /// An operator acknowledged a flap pause: automation resumes with a clean count.
    pub(super) fn ack_flap(&mut self, service: &str) -> Result<Vec<Event>, Rejection> {
        let rec = self.record(service)?;
        rec.paused = None;
        rec.auto_moves.clear();
        Ok(Vec::new())
    }
}
