//! The reader actor: one per node, linearizable and local `GetPrimary` and
//! `ValidateToken` of tokens seen so far.

use std::sync::Arc;

use baton::client::{Client, Consistency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::calls::{get_primary, pause, validate};
use super::recording::{Ctx, Process};
use crate::nemesis::NodeId;

pub(super) async fn reader(
    ctx: Arc<Ctx>,
    name: String,
    node: NodeId,
    client: Client,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Process::new(&name);
    while !*stop.borrow() {
        let roll = rng.random_range(0..100);
        if roll < 55 {
            get_primary(
                &ctx,
                &client,
                &mut p,
                node,
                Consistency::Linearizable,
                false,
            )
            .await;
        } else if roll < 80 {
            get_primary(&ctx, &client, &mut p, node, Consistency::Local, false).await;
        } else {
            let token = {
                let t = ctx.tokens.lock().map(|t| t.clone()).unwrap_or_default();
                let v: Vec<u64> = t.into_iter().collect();
                match v.len() {
                    0 => None,
                    n if rng.random_bool(0.5) => Some(v[n - 1]),
                    n => Some(v[rng.random_range(0..n)]),
                }
            };
            match token {
                Some(t) => validate(&ctx, &client, &mut p, node, t).await,
                None => {
                    get_primary(
                        &ctx,
                        &client,
                        &mut p,
                        node,
                        Consistency::Linearizable,
                        false,
                    )
                    .await;
                }
            }
        }
        if !pause(&mut rng, ctx.cfg.read_pause, &mut stop).await {
            break;
        }
    }
}
