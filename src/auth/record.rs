//! Writing audit-only entries (refused calls, membership, leadership and snapshot
//! operations) through Raft from any node: proposed here when this node leads, else
//! forwarded to the leader over the peer transport.
//!
//! Refused calls are rate-limited by [`RefusalBudget`] (a token bucket, sans-IO) so a flood
//! of refused requests cannot flood the replicated log; what is dropped is counted and the
//! count rides on the next recorded refusal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::control::propose;
use crate::raft::network::Peers;
use crate::raft::Raft;
use crate::state::{Command, Request};

/// Refusals recorded in a burst.
pub const REFUSAL_BURST: u32 = 20;
/// Refusals recorded per second once the burst is spent.
pub const REFUSALS_PER_SECOND: u32 = 2;

/// The rate limit on recorded refusals: a token bucket with [`REFUSAL_BURST`] tokens
/// refilled at [`REFUSALS_PER_SECOND`], counting what it turns away.
#[derive(Debug)]
pub struct RefusalBudget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

impl RefusalBudget {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: None,
            dropped: 0,
        }
    }

    /// Whether a refusal at `now` may be recorded: `Some(n)` with the number dropped since
    /// the last recorded one (then reset), `None` when it is dropped (and counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }

    /// Counts a refusal that was admitted but could not be queued.
    pub fn lost(&mut self, n: u64) {
        self.dropped += n;
    }
}

/// Attempts to write one record before it is given up (about 10 s).
const WRITE_ATTEMPTS: u64 = 25;

/// Writes audit-only commands from any node, in the background.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(String, Command)>,
    /// Refusals of callers that proved no identity, and of authenticated principals, have
    /// separate budgets: an anonymous flood cannot hide a known principal's attempts.
    anonymous: Arc<Mutex<RefusalBudget>>,
    known: Arc<Mutex<RefusalBudget>>,
}

impl Recorder {
    /// Starts the writer task of a node.
    pub fn start(raft: Raft, peers: Peers) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<(String, Command)>(256);
        tokio::spawn(async move {
            while let Some((actor, command)) = rx.recv().await {
                // A record written right after a leadership change finds no leader for a
                // moment: retry for a few election timeouts before giving up.
                let mut last = String::new();
                let mut written = false;
                for attempt in 0..WRITE_ATTEMPTS {
                    match write(&raft, &peers, &actor, command.clone()).await {
                        Ok(()) => {
                            written = true;
                            break;
                        }
                        Err(e) => last = e,
                    }
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(5))).await;
                }
                if !written {
                    tracing::warn!(
                        actor,
                        action = command.action(),
                        "audit record not written: {last}"
                    );
                }
            }
        });
        let budget = || {
            Arc::new(Mutex::new(RefusalBudget::new(
                REFUSAL_BURST,
                REFUSALS_PER_SECOND,
            )))
        };
        Recorder {
            tx,
            anonymous: budget(),
            known: budget(),
        }
    }

    /// A recorder that writes nothing (for in-process tests of the API).
    pub fn disabled() -> Recorder {
        let (tx, _) = mpsc::channel(1);
        let budget = || Arc::new(Mutex::new(RefusalBudget::new(0, 0)));
        Recorder {
            tx,
            anonymous: budget(),
            known: budget(),
        }
    }

    /// Queues an audit-only entry; never waits (a full queue drops it, logged).
    pub fn record(&self, actor: &str, command: Command) {
        if self.tx.try_send((actor.to_string(), command)).is_err() {
            tracing::warn!(actor, "audit record dropped: the writer queue is full");
        }
    }

    /// Records a refused call, within the rate limit. `known`: the actor is a principal
    /// that authenticated (else an `anonymous@addr` caller).
    pub fn refused(&self, actor: &str, known: bool, method: &str, reason: &str) {
        let budget = if known { &self.known } else { &self.anonymous };
        let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dropped) = budget.admit(Instant::now()) else {
            return;
        };
        let method: String = method.chars().take(200).collect();
        // The audit entry's reason names the method: the trail shows what was attempted.
        let command = Command::Refused {
            reason: format!("{method}: {}", reason.chars().take(500).collect::<String>()),
            method,
            dropped,
        };
        if self.tx.try_send((actor.to_string(), command)).is_err() {
            budget.lost(dropped + 1);
        }
    }
}

async fn write(raft: &Raft, peers: &Peers, actor: &str, command: Command) -> Result<(), String> {
    let (leader, node) = {
        let m = raft.metrics().borrow().clone();
        let leader = m.current_leader;
        let node = leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        (leader, node)
    };
    if leader == Some(peers.me()) {
        return propose(raft, actor, command)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let (Some(id), Some(node)) = (leader, node) else {
        return Err("no leader known".into());
    };
    let req = Request {
        at_ms: crate::clock::wall_clock_ms(),
        actor: actor.to_string(),
        command,
    };
    tokio::time::timeout(Duration::from_secs(10), peers.forward_to(id, &node, &req))
        .await
        .map_err(|_| "forwarding to the leader timed out".to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(3, 2);
        let got: Vec<_> = (0..10).map(|_| b.admit(t0)).collect();
        assert_eq!(&got[..3], &[Some(0), Some(0), Some(0)]);
        assert!(got[3..].iter().all(Option::is_none));
        // Half a second later one token is back; it carries the 7 dropped.
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), Some(7));
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), None);
        // A long quiet period refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        let got: Vec<_> = (0..4).map(|_| b.admit(later)).collect();
        assert_eq!(got, vec![Some(1), Some(0), Some(0), None]);
        b.lost(5);
        assert_eq!(b.admit(later + Duration::from_secs(1)), Some(6));
    }
}
