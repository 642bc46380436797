//! The switchover actor: a linearizable read, then a `Failover` guarded by the read's token
//! to another region.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton::client::{Client, Consistency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::calls::{failover, get_primary, pause};
use super::recording::{Ctx, Process};
use crate::cluster::REGIONS;
use crate::nemesis::NodeId;

pub(super) async fn switchover(
    ctx: Arc<Ctx>,
    node: NodeId,
    client: Client,
    failover_client: Client,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Process::new("switchover");
    loop {
        if !pause(&mut rng, ctx.cfg.switchover_pause, &mut stop).await {
            break;
        }
        if ctx.hold_switchovers.load(Ordering::Relaxed) {
            continue;
        }
        let Some(lease) = get_primary(
            &ctx,
            &client,
            &mut p,
            node,
            Consistency::Linearizable,
            false,
        )
        .await
        else {
            continue;
        };
        let others: Vec<&str> = REGIONS
            .iter()
            .copied()
            .filter(|r| Some(*r) != lease.region.as_deref())
            .collect();
        // Now and then ask for the region that already holds the lease: the cluster must
        // refuse (FAILED_PRECONDITION, recorded as fail) and change nothing.
        let to = match &lease.region {
            Some(holder) if rng.random_bool(0.05) => holder.clone(),
            _ => others[rng.random_range(0..others.len())].to_string(),
        };
        failover(&ctx, &failover_client, &mut p, node, &to, lease.token).await;
    }
}
