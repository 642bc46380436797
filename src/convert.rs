//! Conversions between the replicated model (`state`) and the wire types (`proto`).

use crate::proto;
use crate::state::{
    self, AuditEntry, Event, EventKind, FailbackMode, HealthCheck, Lease, LeaseMode, LeaseState,
    ServiceRecord, ServiceSpec,
};

/// A lease on the wire.
pub fn lease_to_proto(service: &str, l: &Lease) -> proto::Lease {
    proto::Lease {
        service: service.to_string(),
        holder_region: l.holder.clone().unwrap_or_default(),
        token: l.token,
        revision: l.revision,
        granted_at_unix_ms: l.granted_at_ms,
        ttl_ms: l.ttl_ms,
        state: match l.state {
            LeaseState::Held => proto::LeaseState::Held,
            LeaseState::Revoking => proto::LeaseState::Revoking,
            LeaseState::Vacant => proto::LeaseState::Vacant,
        } as i32,
        mode: mode_to_proto(l.mode) as i32,
    }
}

/// A lease mode on the wire.
pub fn mode_to_proto(m: LeaseMode) -> proto::LeaseMode {
    match m {
        LeaseMode::ReadWrite => proto::LeaseMode::ReadWrite,
        LeaseMode::ReadOnly => proto::LeaseMode::ReadOnly,
    }
}

/// A service definition on the wire.
pub fn spec_to_proto(s: &ServiceSpec) -> proto::ServiceSpec {
    proto::ServiceSpec {
        name: s.name.clone(),
        regions: s.regions.clone(),
        allowed_regions: s.allowed_regions.clone(),
        lease_ttl_ms: s.lease_ttl_ms,
        initial_primary: s.initial_primary.clone().unwrap_or_default(),
        auto_failover: s.auto_failover,
        failback: s.failback.as_str().to_string(),
        failback_stable_ms: s.failback_stable_ms,
        cooldown_ms: s.cooldown_ms,
        flap_limit: s.flap_limit,
        flap_window_ms: s.flap_window_ms,
        plans: s
            .plans
            .iter()
            .map(|(kind, steps)| {
                (
                    kind.clone(),
                    proto::Plan {
                        steps: steps
                            .iter()
                            .map(|st| proto::PlanStep {
                                kind: st.kind.name().to_string(),
                                timeout_ms: st.timeout_ms,
                                on_failure: st.on_failure.describe(),
                                url: match &st.kind {
                                    state::StepKind::Webhook(u) => u.clone(),
                                    _ => String::new(),
                                },
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        health: s
            .health
            .iter()
            .map(|(r, h)| {
                (
                    r.clone(),
                    proto::HealthCheck {
                        kind: h.kind.clone(),
                        target: h.target.clone(),
                        interval_ms: h.interval_ms,
                        timeout_ms: h.timeout_ms,
                        threshold: h.threshold,
                    },
                )
            })
            .collect(),
    }
}

/// A service definition from the wire, validated.
pub fn spec_from_proto(p: &proto::ServiceSpec) -> Result<ServiceSpec, String> {
    let spec = ServiceSpec {
        name: p.name.clone(),
        regions: p.regions.clone(),
        allowed_regions: p.allowed_regions.clone(),
        lease_ttl_ms: p.lease_ttl_ms,
        initial_primary: (!p.initial_primary.is_empty()).then(|| p.initial_primary.clone()),
        auto_failover: p.auto_failover,
        failback: FailbackMode::parse(&p.failback)?,
        failback_stable_ms: p.failback_stable_ms,
        cooldown_ms: p.cooldown_ms,
        flap_limit: p.flap_limit,
        flap_window_ms: p.flap_window_ms,
        plans: p
            .plans
            .iter()
            .map(|(kind, plan)| {
                let steps = plan
                    .steps
                    .iter()
                    .map(|st| {
                        Ok(state::StepSpec {
                            kind: state::StepKind::parse(&st.kind, Some(&st.url))?,
                            timeout_ms: st.timeout_ms,
                            on_failure: state::OnFailure::parse(&st.on_failure)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok((kind.clone(), steps))
            })
            .collect::<Result<_, String>>()?,
        health: p
            .health
            .iter()
            .map(|(r, h)| {
                (
                    r.clone(),
                    HealthCheck {
                        kind: h.kind.clone(),
                        target: h.target.clone(),
                        interval_ms: h.interval_ms,
                        timeout_ms: h.timeout_ms,
                        threshold: h.threshold,
                    },
                )
            })
            .collect(),
    };
    spec.validate()?;
    Ok(spec)
}

/// A service with its lease on the wire.
pub fn record_to_proto(r: &ServiceRecord) -> proto::ServiceStatus {
    proto::ServiceStatus {
        spec: Some(spec_to_proto(&r.spec)),
        lease: Some(lease_to_proto(&r.spec.name, &r.lease)),
        frozen: r.frozen,
        paused_reason: r.paused.clone().unwrap_or_default(),
        active_run: r.active_run.unwrap_or(0),
        observations: r
            .observations
            .iter()
            .flat_map(|(region, by_node)| {
                by_node
                    .iter()
                    .map(move |(node, o)| proto::HealthObservation {
                        region: region.clone(),
                        vantage_node: *node,
                        vantage_region: o.vantage_region.clone(),
                        healthy: o.healthy,
                        detail: o.detail.clone(),
                        at_unix_ms: o.at_ms,
                    })
            })
            .collect(),
    }
}

/// A workflow run on the wire.
pub fn run_to_proto(r: &state::Run) -> proto::Workflow {
    let ms = |v: Option<i64>| v.unwrap_or(0);
    proto::Workflow {
        id: r.id,
        service: r.service.clone(),
        kind: r.kind.as_str().to_string(),
        trigger: r.trigger.describe(),
        from_region: r.from.clone().unwrap_or_default(),
        to_region: r.to.clone(),
        actor: r.actor.clone(),
        reason: r.reason.clone(),
        state: r.state.as_str().to_string(),
        steps: r
            .steps
            .iter()
            .map(|s| proto::WorkflowStep {
                kind: s.spec.kind.name().to_string(),
                state: match s.state {
                    state::StepState::Pending => "pending",
                    state::StepState::Running => "running",
                    state::StepState::Done => "done",
                    state::StepState::Failed => "failed",
                    state::StepState::Skipped => "skipped",
                }
                .to_string(),
                attempts: s.attempts,
                started_unix_ms: ms(s.started_ms),
                finished_unix_ms: ms(s.finished_ms),
                detail: s.detail.clone(),
                timeout_ms: s.spec.timeout_ms,
                on_failure: s.spec.on_failure.describe(),
            })
            .collect(),
        current_step: r.current as u32,
        token_before: r.token_before,
        token_after: r.token_after.unwrap_or(0),
        error: r.error.clone().unwrap_or_default(),
        detected_unix_ms: ms(r.phases.detected_ms),
        decided_unix_ms: ms(r.phases.decided_ms),
        fenced_unix_ms: ms(r.phases.fenced_ms),
        granted_unix_ms: ms(r.phases.granted_ms),
        verified_unix_ms: ms(r.phases.verified_ms),
        finished_unix_ms: ms(r.finished_ms),
    }
}

/// An audit entry on the wire.
pub fn audit_to_proto(e: &AuditEntry) -> proto::AuditEntry {
    proto::AuditEntry {
        seq: e.seq,
        revision: e.revision,
        at_unix_ms: e.at_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        service: e.service.clone(),
        reason: e.reason.clone(),
        before: e.before.clone(),
        after: e.after.clone(),
        outcome: e.outcome.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// An audit entry from the wire (for client-side chain verification).
pub fn audit_from_proto(e: &proto::AuditEntry) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        revision: e.revision,
        at_ms: e.at_unix_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        service: e.service.clone(),
        reason: e.reason.clone(),
        before: e.before.clone(),
        after: e.after.clone(),
        outcome: e.outcome.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// A watch event on the wire.
pub fn event_to_proto(e: &Event) -> proto::WatchEvent {
    proto::WatchEvent {
        kind: match e.kind {
            EventKind::Granted => proto::EventKind::Granted,
            EventKind::Revoking => proto::EventKind::Revoking,
            EventKind::Vacated => proto::EventKind::Vacated,
            EventKind::ModeChanged => proto::EventKind::ModeChanged,
            EventKind::ServicePut => proto::EventKind::ServicePut,
            EventKind::ServiceDeleted => proto::EventKind::ServiceDeleted,
            EventKind::FreezeChanged => proto::EventKind::FreezeChanged,
        } as i32,
        service: e.service.clone(),
        revision: e.revision,
        lease: Some(lease_to_proto(&e.service, &e.lease)),
        reason: e.reason.clone(),
        frozen: e.frozen,
    }
}

/// The current state of a service as a SNAPSHOT watch event.
pub fn snapshot_event(r: &ServiceRecord) -> proto::WatchEvent {
    proto::WatchEvent {
        kind: proto::EventKind::Snapshot as i32,
        service: r.spec.name.clone(),
        revision: r.lease.revision,
        lease: Some(lease_to_proto(&r.spec.name, &r.lease)),
        reason: String::new(),
        frozen: r.frozen,
    }
}

/// Token validity on the wire.
pub fn validity_to_proto(v: Option<state::TokenValidity>) -> proto::TokenValidity {
    match v {
        Some(state::TokenValidity::Current) => proto::TokenValidity::Current,
        Some(state::TokenValidity::Superseded) => proto::TokenValidity::Superseded,
        Some(state::TokenValidity::Unknown) | None => proto::TokenValidity::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let mut s = ServiceSpec::new("payments", &["us-east", "eu-west"]);
        s.health.insert(
            "us-east".into(),
            HealthCheck {
                kind: "tcp".into(),
                target: "127.0.0.1:1".into(),
                interval_ms: 100,
                timeout_ms: 50,
                threshold: 2,
            },
        );
        assert_eq!(spec_from_proto(&spec_to_proto(&s)).unwrap(), s);
    }

    /// A spec with several bad plans is refused naming the same plan every time, on every
    /// node and after any number of round trips (the fuzzer found a HashMap's random order
    /// naming a different one after a round trip).
    #[test]
    fn a_spec_with_several_errors_is_refused_the_same_way_every_time() {
        use prost::Message;
        let mut p = spec_to_proto(&ServiceSpec::new("payments", &["us-east", "eu-west"]));
        for k in ["failover", "failback", "switchover", "drill"] {
            let step = proto::PlanStep {
                kind: format!("no-such-step-{k}"),
                ..Default::default()
            };
            p.plans.insert(k.into(), proto::Plan { steps: vec![step] });
        }
        let first = spec_from_proto(&p).unwrap_err();
        assert!(first.contains("no-such-step-drill"), "{first}");
        for _ in 0..32 {
            p = proto::ServiceSpec::decode(p.encode_to_vec().as_slice()).unwrap();
            assert_eq!(spec_from_proto(&p).unwrap_err(), first);
        }
    }
}
