//! The agent actor: holds a region's lease with `KeepAlive`, records what it was told and
//! did, and writes to the fenced resource while its lease is valid.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::client::{Client, LeaseHandle, LeaseOptions, LeaseStatus};
use tokio::sync::watch;

use super::fenced::FencedResource;
use super::recording::Ctx;
use crate::history::Event;

/// What an agent has recorded so far about its lease.
#[derive(Default)]
pub(super) struct AgentView {
    /// Token the agent acts with (recorded `promoted`, not yet demoted or fenced).
    acting: Option<u64>,
    /// Last recorded renewal: (token, validity deadline).
    renewed: Option<(u64, Instant)>,
    /// Last token whose revocation was recorded.
    revoke_seen: Option<u64>,
    /// Last token whose demotion was acknowledged.
    acked: Option<u64>,
}

pub(super) struct Agent {
    pub(super) ctx: Arc<Ctx>,
    pub(super) id: String,
    pub(super) region: String,
    pub(super) fence: Arc<FencedResource>,
    pub(super) view: AgentView,
}

impl Agent {
    fn record(&self, make: impl FnOnce(String, String, String) -> Event) {
        self.ctx.history.record(make(
            self.id.clone(),
            self.region.clone(),
            self.ctx.cfg.service.clone(),
        ));
    }

    /// Records what changed in `status`, and acknowledges a revocation (after recording
    /// that the agent stopped acting).
    fn observe(&mut self, status: LeaseStatus, handle: &LeaseHandle) {
        let clock = self.ctx.history.clock();
        match status {
            LeaseStatus::Holding { token, valid_until } => {
                if self.view.acting != Some(token) {
                    if let Some(old) = self.view.acting.take() {
                        self.record(|agent, region, service| Event::SelfFenced {
                            agent,
                            region,
                            service,
                            token: old,
                        });
                    }
                    self.record(|agent, region, service| Event::Promoted {
                        agent,
                        region,
                        service,
                        token,
                    });
                    self.view.acting = Some(token);
                }
                let valid_until = valid_until.into_std();
                if self.view.renewed != Some((token, valid_until)) {
                    self.view.renewed = Some((token, valid_until));
                    // The library's rule: valid until send + ttl·(1−drift) − margin; the
                    // same arithmetic gives back the send time of the acknowledged renewal,
                    // with the TTL the answer carried (the one the validity was computed
                    // with; the configured one only before the first answer).
                    let cfg = &self.ctx.cfg;
                    let ttl_ms = handle.ttl().map_or_else(
                        || self.ctx.ttl_ms.load(Ordering::Relaxed),
                        |t| t.as_millis() as u64,
                    );
                    let span = Duration::from_millis(ttl_ms)
                        .mul_f64(1.0 - cfg.drift)
                        .saturating_sub(cfg.margin);
                    let sent = valid_until.checked_sub(span).unwrap_or(valid_until);
                    self.record(|agent, region, service| Event::Renewed {
                        agent,
                        region,
                        service,
                        token,
                        sent_ns: clock.ns_at(sent),
                        valid_until_ns: clock.ns_at(valid_until),
                        ttl_ms,
                    });
                }
            }
            LeaseStatus::Revoking { token, .. } => {
                if self.view.revoke_seen != Some(token) {
                    self.view.revoke_seen = Some(token);
                    self.record(|agent, region, service| Event::RevokeSeen {
                        agent,
                        region,
                        service,
                        token,
                    });
                }
                if self.view.acting == Some(token) {
                    self.view.acting = None;
                    self.record(|agent, region, service| Event::Demoted {
                        agent,
                        region,
                        service,
                        token,
                    });
                }
                if self.view.acked != Some(token) {
                    self.view.acked = Some(token);
                    handle.ack_demotion();
                }
            }
            LeaseStatus::Lost | LeaseStatus::NotHolder => {
                if let Some(token) = self.view.acting.take() {
                    let before_deadline = self
                        .view
                        .renewed
                        .is_some_and(|(t, v)| t == token && Instant::now() < v);
                    if self.ctx.cfg.auto_ack && before_deadline {
                        // The library acknowledged a revocation by itself.
                        self.record(|agent, region, service| Event::Demoted {
                            agent,
                            region,
                            service,
                            token,
                        });
                    } else {
                        self.record(|agent, region, service| Event::SelfFenced {
                            agent,
                            region,
                            service,
                            token,
                        });
                    }
                }
            }
            LeaseStatus::Pending => {}
        }
    }

    /// Writes to the fenced resource if the lease is valid right now.
    fn maybe_write(&mut self, rx: &watch::Receiver<LeaseStatus>, handle: &LeaseHandle) {
        // Read before the validity check: the write's `checked_ns` is never later than
        // the moment the lease was seen valid.
        let checked_ns = self.ctx.history.now_ns();
        let status = *rx.borrow();
        self.observe(status, handle);
        if let LeaseStatus::Holding { token, valid_until } = status {
            if self.view.acting == Some(token) && tokio::time::Instant::now() < valid_until {
                self.fence.write(
                    &self.id,
                    &self.region,
                    &self.ctx.cfg.service,
                    token,
                    checked_ns,
                );
            }
        }
    }

    pub(super) async fn run(mut self, client: Client, mut stop: watch::Receiver<bool>) {
        let opts = LeaseOptions {
            renew_interval: None,
            drift: self.ctx.cfg.drift,
            margin: self.ctx.cfg.margin,
            auto_ack_demotion: self.ctx.cfg.auto_ack,
        };
        'sessions: while !*stop.borrow() {
            let handle =
                client.keep_alive(&self.ctx.cfg.service, &self.region, &self.id, opts.clone());
            let mut rx = handle.status();
            let mut tick = tokio::time::interval(self.ctx.cfg.fence_period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let write = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break 'sessions,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        false
                    }
                    _ = tick.tick() => true,
                };
                let status = *rx.borrow_and_update();
                self.observe(status, &handle);
                if write {
                    self.maybe_write(&rx, &handle);
                }
            }
            // The session ended (refused by the cluster): whatever it held is not renewed.
            self.observe(LeaseStatus::Lost, &handle);
            drop(handle);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break 'sessions,
            }
        }
    }
}
