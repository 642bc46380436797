//! The recorded client calls (`GetPrimary`, `ValidateToken`, `Failover`) and the random
//! pause between them: invoke, call, complete, one history operation each.

use std::time::Duration;

use baton::client::{Client, Consistency};
use baton::proto;
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::sync::watch;

use super::recording::{failover_failure, lease_obs, read_failure, Ctx, Failure, Process};
use crate::history::{Call, Consistency as RecConsistency, LeaseObs, OpResult, Validity};
use crate::nemesis::NodeId;

/// `GetPrimary`, recorded; returns the lease when it succeeded.
pub(super) async fn get_primary(
    ctx: &Ctx,
    client: &Client,
    p: &mut Process,
    node: NodeId,
    consistency: Consistency,
    final_read: bool,
) -> Option<LeaseObs> {
    let rec = match consistency {
        Consistency::Local => RecConsistency::Local,
        _ => RecConsistency::Linearizable,
    };
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::GetPrimary {
            service: ctx.cfg.service.clone(),
            consistency: rec,
            final_read,
        },
    );
    let answer = client.primary(&ctx.cfg.service, consistency).await;
    let result = match answer {
        Ok(r) => match &r.lease {
            Some(l) => Ok(OpResult::GetPrimary {
                lease: lease_obs(l),
                node_revision: r.revision,
                served_by: Some(r.served_by),
                linearizable: r.linearizable,
            }),
            None => Err(Failure::Info("answer without a lease".into())),
        },
        Err(e) => Err(read_failure(&e)),
    };
    let lease = result.as_ref().ok().map(|r| r.lease().clone());
    let info = ctx.complete(id, result);
    p.after(info);
    lease
}

pub(super) async fn validate(
    ctx: &Ctx,
    client: &Client,
    p: &mut Process,
    node: NodeId,
    token: u64,
) {
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::ValidateToken {
            service: ctx.cfg.service.clone(),
            token,
            consistency: RecConsistency::Linearizable,
        },
    );
    let answer = client.validate_token(&ctx.cfg.service, token).await;
    let result = match answer {
        Ok(r) => {
            let validity = match proto::TokenValidity::try_from(r.validity) {
                Ok(proto::TokenValidity::Current) => Some(Validity::Current),
                Ok(proto::TokenValidity::Superseded) => Some(Validity::Superseded),
                Ok(proto::TokenValidity::Unknown) => Some(Validity::Unknown),
                _ => None,
            };
            match (validity, &r.lease) {
                (Some(validity), Some(l)) => Ok(OpResult::ValidateToken {
                    validity,
                    lease: lease_obs(l),
                }),
                _ => Err(Failure::Info(format!(
                    "malformed answer: validity {} lease {:?}",
                    r.validity, r.lease
                ))),
            }
        }
        Err(e) => Err(read_failure(&e)),
    };
    let info = ctx.complete(id, result);
    p.after(info);
}

pub(super) async fn failover(
    ctx: &Ctx,
    client: &Client,
    p: &mut Process,
    node: NodeId,
    to: &str,
    expected: u64,
) {
    let (id, _) = ctx.history.invoke(
        &p.name(),
        Some(node),
        Call::Failover {
            service: ctx.cfg.service.clone(),
            to_region: to.to_string(),
            expected_token: expected,
        },
    );
    let answer = client
        .failover(proto::FailoverRequest {
            service: ctx.cfg.service.clone(),
            to_region: to.to_string(),
            reason: "jepsen switchover".into(),
            expected_token: expected,
            dry_run: false,
        })
        .await;
    let result = match answer {
        Ok(r) => match &r.after {
            Some(l) => Ok(OpResult::Failover {
                lease: lease_obs(l),
                fenced_by: (!r.fenced_by.is_empty()).then(|| r.fenced_by.clone()),
            }),
            None => Err(Failure::Info("answer without the new lease".into())),
        },
        Err(e) => Err(failover_failure(&e)),
    };
    let info = ctx.complete(id, result);
    p.after(info);
}

/// Sleeps for a random time in `range`; false when `stop` turned true first.
pub(super) async fn pause(
    rng: &mut SmallRng,
    range: (Duration, Duration),
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let lo = range.0.as_millis() as u64;
    let hi = (range.1.as_millis() as u64).max(lo);
    let d = Duration::from_millis(rng.random_range(lo..=hi));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => return false,
    }
    !*stop.borrow()
}
