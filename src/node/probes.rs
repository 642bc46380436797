//! Wires the health probes of one node (one vantage point) to the replicated state: the
//! checks come from the applied service definitions; verdict changes are committed as
//! `Observe` commands (through the leader), retried until they stick.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::control::{propose, wall_clock_ms};
use crate::health::runner::{CheckSet, ProbeRunner, Verdicts};
use crate::health::streak::Observation;
use crate::raft::network::Peers;
use crate::raft::{Changes, NodeId, Raft, SharedState};
use crate::state::{audit::AUTOMATION, Command, Request, Response};

fn check_set(shared: &SharedState) -> CheckSet {
    let view = shared.read().unwrap_or_else(|e| e.into_inner());
    view.state
        .services()
        .flat_map(|r| {
            r.spec
                .health
                .iter()
                .map(|(region, check)| (r.spec.name.clone(), region.clone(), check.clone()))
        })
        .collect()
}

/// Starts this node's probes and the committer of their verdicts.
// Each argument is a distinct handle the probe loops own; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn start(
    id: NodeId,
    region: &str,
    raft: Raft,
    shared: SharedState,
    changes: Changes,
    peers: Peers,
    shutdown: watch::Receiver<bool>,
    tasks: &tokio_util::task::TaskTracker,
) {
    let mut runner = ProbeRunner::new(id, region);
    {
        // What this node already committed is its starting verdict: no second commit.
        let view = shared.read().unwrap_or_else(|e| e.into_inner());
        for rec in view.state.services() {
            for (probed, by_node) in &rec.observations {
                if let Some(o) = by_node.get(&id) {
                    runner.seed(&rec.spec.name, probed, o.healthy, &o.detail);
                }
            }
        }
    }
    let verdicts = runner.verdicts();
    let (checks_tx, checks_rx) = watch::channel(check_set(&shared));
    let (obs_tx, obs_rx) = mpsc::channel(256);
    runner.spawn(checks_rx, obs_tx, shutdown.clone());

    // Follow service definitions.
    let mut rx = changes.subscribe();
    let mut stop = shutdown.clone();
    let shared_for_checks = shared.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                r = rx.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { return },
            }
            let set = check_set(&shared_for_checks);
            checks_tx.send_if_modified(|cur| {
                if *cur != set {
                    *cur = set;
                    true
                } else {
                    false
                }
            });
        }
    });

    tasks.spawn(commit_loop(
        id, raft, shared, peers, obs_rx, verdicts, shutdown,
    ));
}

async fn commit_loop(
    id: NodeId,
    raft: Raft,
    shared: SharedState,
    peers: Peers,
    mut obs_rx: mpsc::Receiver<Observation>,
    verdicts: watch::Receiver<Verdicts>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A commit can be lost (election, no quorum): every second, re-commit any verdict the
    // replicated state does not show yet.
    let mut reconcile = tokio::time::interval(Duration::from_secs(1));
    loop {
        let pending: Vec<Observation> = tokio::select! {
            _ = shutdown.changed() => return,
            o = obs_rx.recv() => match o {
                Some(o) => vec![o],
                None => return,
            },
            _ = reconcile.tick() => {
                let current = verdicts.borrow().clone();
                let view = shared.read().unwrap_or_else(|e| e.into_inner());
                current
                    .into_values()
                    .filter(|o| {
                        let committed = view
                            .state
                            .service(&o.service)
                            .and_then(|r| r.observations.get(&o.region))
                            .and_then(|m| m.get(&id))
                            .map(|c| c.healthy);
                        view.state.service(&o.service).is_some() && committed != Some(o.healthy)
                    })
                    .collect()
            }
        };
        for o in pending {
            if let Err(e) = commit(id, &raft, &peers, &o).await {
                tracing::debug!(service = %o.service, region = %o.region, "observation not committed yet: {e}");
            }
        }
    }
}

async fn commit(id: NodeId, raft: &Raft, peers: &Peers, o: &Observation) -> Result<(), String> {
    let command = Command::Observe {
        service: o.service.clone(),
        region: o.region.clone(),
        vantage_node: o.vantage_node,
        vantage_region: o.vantage_region.clone(),
        healthy: o.healthy,
        reason: o.detail.clone(),
    };
    let m = raft.metrics().borrow().clone();
    let leader = m.current_leader.ok_or("no leader")?;
    let resp = if leader == id {
        propose(raft, AUTOMATION, command)
            .await
            .map(|(_, r)| r)
            .map_err(|e| e.to_string())?
    } else {
        let node = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or("leader has no address")?;
        let req = Request {
            at_ms: wall_clock_ms(),
            actor: AUTOMATION.into(),
            command,
        };
        peers
            .forward_to(leader, &node, &req)
            .await
            .map_err(|e| e.to_string())?
    };
    match resp {
        Response::Rejected(r) => Err(r.to_string()),
        _ => Ok(()),
    }
}
