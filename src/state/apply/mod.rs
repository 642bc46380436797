//! Applying one command: a short dispatcher over one file per command family.
//!
//! Every family is a set of `impl State` methods beside the others; they share the entry's
//! [`Ctx`] (log index, leader time, actor) and the lease and run primitives of the parent
//! module. Refusals return before changing anything, so a refused command leaves only its
//! audit entry.

mod automation;
mod leases;
mod runs;
mod services;

use super::{Command, Event, EventKind, Observation, Rejection, Request, ServiceRecord, State};

use runs::{RunStart, StepReport};

/// What every command of one entry is applied with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx<'a> {
    /// Log index of the entry: the revision of what it changes, the token of a grant.
    pub index: u64,
    /// Leader's wall clock when it proposed the entry.
    pub at_ms: i64,
    /// Principal that asked.
    pub actor: &'a str,
}

impl Ctx<'_> {
    /// A watch event about `rec` as this entry leaves it.
    fn event(&self, kind: EventKind, rec: &ServiceRecord, reason: &str) -> Event {
        Event {
            kind,
            service: rec.spec.name.clone(),
            revision: self.index,
            lease: rec.lease.clone(),
            reason: reason.to_string(),
            frozen: rec.frozen,
        }
    }
}

impl State {
    /// Applies `req`'s command at `index`: the events it causes, or why it was refused.
    pub(super) fn apply_command(
        &mut self,
        index: u64,
        req: &Request,
    ) -> Result<Vec<Event>, Rejection> {
        let cx = Ctx {
            index,
            at_ms: req.at_ms,
            actor: &req.actor,
        };
        match &req.command {
            Command::PutService { spec, reason } => self.put_service(&cx, spec, reason),
            Command::DeleteService { name, reason } => self.delete_service(&cx, name, reason),
            Command::Revoke {
                service,
                token,
                reason,
            } => self.revoke(&cx, service, *token, reason),
            Command::Grant {
                service,
                region,
                expected_token,
                reason,
            } => self.grant(&cx, service, region, *expected_token, reason),
            Command::Expire {
                service,
                token,
                reason,
            } => self.expire(&cx, service, *token, reason),
            Command::SetMode {
                service,
                mode,
                reason,
            } => self.set_mode(&cx, service, *mode, reason),
            Command::SetFrozen {
                service,
                frozen,
                reason,
            } => self.set_frozen(&cx, service, *frozen, reason),
            Command::Observe {
                service,
                region,
                vantage_node,
                vantage_region,
                healthy,
                reason,
            } => {
                let seen = Observation {
                    vantage_region: vantage_region.clone(),
                    healthy: *healthy,
                    detail: reason.clone(),
                    at_ms: cx.at_ms,
                };
                self.observe(service, region, *vantage_node, seen)
            }
            // Audit-only records: nothing in the state changes.
            Command::Refused { .. } | Command::Cluster { .. } => Ok(Vec::new()),
            Command::AckFlap { service, .. } => self.ack_flap(service),
            Command::StartRun {
                service,
                kind,
                trigger,
                to,
                plan,
                reason,
                detected_ms,
                expected_token,
            } => self.start_run(
                &cx,
                &RunStart {
                    service,
                    kind: *kind,
                    trigger,
                    to,
                    plan,
                    reason,
                    detected_ms: *detected_ms,
                    expected_token: *expected_token,
                },
            ),
            Command::AdvanceRun {
                service,
                run,
                step,
                outcome,
                effect,
                phase,
                reason,
            } => self.advance_run(
                &cx,
                &StepReport {
                    service,
                    run: *run,
                    step: *step,
                    outcome,
                    effect: effect.as_ref(),
                    phase: *phase,
                    reason,
                },
            ),
            Command::DecideRun {
                service,
                run,
                approve,
                reason,
            } => self.decide_run(&cx, service, *run, *approve, reason),
        }
    }
}
