//! The keeper's decisions, without I/O: time and events in, answers out.
//!
//! [`KeeperCore`] holds what the leader knows about renewals (on its monotonic clock) and
//! decides three things: whether a renewal may be answered RENEWED, whether a lease is due
//! to expire, and whether a revoked holder is fenced. The async [`super::Keeper`] feeds it
//! leadership changes, renewals, loop ticks and the lease as the state holds it, under one
//! lock, so every race between them can be replayed here with made-up instants.
//!
//! The rules it enforces (the timing argument is in the module docs of [`super`]):
//!
//! - A renewal is answered RENEWED only while this node leads and the lease is held by the
//!   renewing region — and never once this leader *decided* to expire that token: the
//!   decision and the refusal of later renewals happen under the same lock, so no renewal
//!   can slip between the decision and the committed `Expire` (etcd's lessor makes a
//!   renewal of a lease being revoked fail the same way).
//! - Each accepted renewal is remembered with the deadline it implies under the TTL that the
//!   answer carries, so a later TTL change cannot shorten what was promised.
//! - A demotion acknowledgement counts only for the token it names, only from the stream
//!   that holds the agent's session (the one whose renewal this leader last accepted), and
//!   agents are told apart by region *and* id, so an ack on someone else's behalf, a stale
//!   ack for an older token, or a message claiming another region changes nothing.
//! - Until this leader has led for a whole TTL (plus drift and margin), renewals accepted by
//!   earlier leaders may still be valid: it waits them out before it expires or fences.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::state::{Lease, LeaseState};

/// Timing the keeper works with.
#[derive(Debug, Clone)]
pub struct KeeperTiming {
    /// Assumed worst clock-rate difference (0.05 = 5%).
    pub drift: f64,
    /// Extra wait past a TTL.
    pub margin: Duration,
    /// Loop period.
    pub tick: Duration,
    /// A loop gap (or a leadership confirmation) longer than this is a stall: every lease
    /// counts as renewed afterwards, since renewals may have queued unanswered meanwhile.
    pub stall: Duration,
}

impl KeeperTiming {
    /// How long after accepting a renewal under `ttl` the leader waits before it treats the
    /// lease as gone: `ttl·(1+drift) + margin`.
    pub fn wait(&self, ttl: Duration) -> Duration {
        let drift = if self.drift.is_finite() {
            self.drift.clamp(0.0, 1.0)
        } else {
            1.0
        };
        ttl.mul_f64(1.0 + drift).saturating_add(self.margin)
    }
}

/// Agents of one service tracked at most; a renewal from a new agent beyond this is refused.
pub const MAX_AGENTS_PER_SERVICE: usize = 256;

/// What a renewal attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The region holds the lease with this token; the renewal was recorded.
    Renewed {
        /// Current token.
        token: u64,
    },
    /// The lease is being revoked (or this leader decided it expired): demote.
    Revoke {
        /// Token being revoked.
        token: u64,
    },
    /// The region does not hold the lease.
    NotHolder,
    /// No such service.
    UnknownService,
    /// This node does not lead (any more): ask the leader.
    NotLeader,
    /// Too many agents renew this service; the renewal was not recorded.
    TooManyAgents,
}

/// How the old holder was fenced before a new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Every agent that might still consider the lease valid acknowledged demotion.
    DemotionAck,
    /// The TTL (plus drift and margin) ran out since the last renewal the leader accepted.
    TtlExpired,
    /// The lease was already vacant.
    Vacant,
}

impl FenceOutcome {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceOutcome::DemotionAck => "demotion-ack",
            FenceOutcome::TtlExpired => "ttl-expired",
            FenceOutcome::Vacant => "vacant",
        }
    }
}

/// Why a lease is due to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// No renewal within the TTL.
    Expired,
    /// Revoked, every agent acknowledged, and nobody was granted it.
    Acknowledged,
}

/// One renewal message as the keeper sees it.
#[derive(Debug, Clone)]
pub struct RenewalMsg<'a> {
    /// Service renewed.
    pub service: &'a str,
    /// Region the agent claims.
    pub region: &'a str,
    /// The agent's id.
    pub agent_id: &'a str,
    /// The KeepAlive stream it came on (unique per stream for this process).
    pub stream: u64,
    /// When it arrived (before the read barrier).
    pub received: Instant,
    /// The agent says it stopped acting as primary for `token`.
    pub demoted: bool,
    /// The token the agent speaks of (0: none yet).
    pub token: u64,
}

#[derive(Debug, Clone)]
struct Agent {
    /// When its last message arrived (any answer).
    seen_at: Instant,
    /// Receipt time of the last renewal answered RENEWED.
    renewed_at: Option<Instant>,
    /// Until when, on this clock, a renewal answered RENEWED may keep the holder acting.
    until: Option<Instant>,
    /// The stream of the last renewal answered RENEWED: only it may acknowledge demotion.
    stream: u64,
    /// Token whose revocation this agent acknowledged.
    demoted: Option<u64>,
}

/// service -> (region, agent id) -> agent.
type Agents = HashMap<String, HashMap<(String, String), Agent>>;

/// The keeper's state and rules. Every method takes `now` from the caller.
#[derive(Debug)]
pub struct KeeperCore {
    timing: KeeperTiming,
    /// Term in which this node leads; None when it does not.
    term: Option<u64>,
    /// When leadership began (or the last stall ended).
    since: Instant,
    agents: Agents,
    /// Services with an operator switchover in progress (their fencing is the move's).
    in_flight: BTreeSet<String>,
    /// service -> (token, when this leader first saw it): a fresh grant counts as renewed
    /// when it is first seen, so it is not expired against renewals of an older lease.
    first_seen: HashMap<String, (u64, Instant)>,
    /// service -> token this leader decided to expire; renewals of it are refused from the
    /// decision on. Never undone while leading: the decision may already be in the log.
    expiring: HashMap<String, u64>,
}

impl KeeperCore {
    /// A core that does not lead yet.
    pub fn new(timing: KeeperTiming, now: Instant) -> Self {
        Self {
            timing,
            term: None,
            since: now,
            agents: HashMap::new(),
            in_flight: BTreeSet::new(),
            first_seen: HashMap::new(),
            expiring: HashMap::new(),
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> &KeeperTiming {
        &self.timing
    }

    /// Term in which this node leads.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Per service, how long ago this leader last answered a renewal RENEWED (any agent).
    pub fn renewal_ages(&self, now: Instant) -> Vec<(String, Duration)> {
        if self.term.is_none() {
            return Vec::new();
        }
        self.agents
            .iter()
            .filter_map(|(service, agents)| {
                let last = agents.values().filter_map(|a| a.renewed_at).max()?;
                Some((service.clone(), now.saturating_duration_since(last)))
            })
            .collect()
    }

    /// Leadership as Raft reports it. Returns true when the keeper's view changed (callers
    /// wake whoever waits on fencing). A new term forgets everything: renewals accepted in
    /// an earlier term (by anyone) are covered by counting every lease as renewed now.
    pub fn on_leadership(&mut self, leading_term: Option<u64>, now: Instant) -> bool {
        match (leading_term, self.term) {
            (Some(t), Some(current)) if t == current => false,
            (Some(t), _) => {
                self.term = Some(t);
                self.since = now;
                self.forget();
                true
            }
            (None, Some(_)) => {
                self.term = None;
                self.forget();
                true
            }
            (None, None) => false,
        }
    }

    fn forget(&mut self) {
        self.agents.clear();
        self.first_seen.clear();
        self.expiring.clear();
    }

    /// The keeper could not act for a while (its loop, or Raft, stalled): renewals may have
    /// queued unanswered, so every lease counts as renewed now.
    pub fn on_stall(&mut self, now: Instant) {
        if self.term.is_some() {
            self.since = self.since.max(now);
        }
    }

    /// When this leader first saw `token` for `service` (now, if never).
    fn baseline(&mut self, service: &str, token: u64, now: Instant) -> Instant {
        match self.first_seen.get(service) {
            Some((t, at)) if *t == token => *at,
            _ => {
                self.first_seen.insert(service.to_string(), (token, now));
                now
            }
        }
    }

    /// Handles a renewal; `lease` is the service's lease as the state holds it now (`None`:
    /// no such service). The answer must carry this same `lease`.
    pub fn renew(&mut self, msg: &RenewalMsg<'_>, lease: Option<&Lease>, now: Instant) -> Renewal {
        if self.term.is_none() {
            return Renewal::NotLeader;
        }
        let Some(lease) = lease else {
            return Renewal::UnknownService;
        };
        if lease.state != LeaseState::Vacant {
            // The first sight of a token, whichever path sees it first.
            self.baseline(msg.service, lease.token, now);
        }
        let agents = self.agents.entry(msg.service.to_string()).or_default();
        let key = (msg.region.to_string(), msg.agent_id.to_string());
        if !agents.contains_key(&key) {
            if agents.len() >= MAX_AGENTS_PER_SERVICE {
                prune(agents, now);
            }
            if agents.len() >= MAX_AGENTS_PER_SERVICE {
                return Renewal::TooManyAgents;
            }
        }
        let agent = agents.entry(key).or_insert_with(|| Agent {
            seen_at: msg.received,
            renewed_at: None,
            until: None,
            stream: msg.stream,
            demoted: None,
        });
        agent.seen_at = agent.seen_at.max(msg.received);
        if lease.holder.as_deref() != Some(msg.region) {
            return Renewal::NotHolder;
        }
        match lease.state {
            LeaseState::Held if self.expiring.get(msg.service) == Some(&lease.token) => {
                Renewal::Revoke { token: lease.token }
            }
            LeaseState::Held => {
                let until = msg.received + self.timing.wait(ttl_of(lease));
                agent.renewed_at = Some(
                    agent
                        .renewed_at
                        .map_or(msg.received, |t| t.max(msg.received)),
                );
                agent.until = Some(agent.until.map_or(until, |u| u.max(until)));
                agent.stream = msg.stream;
                agent.demoted = None;
                Renewal::Renewed { token: lease.token }
            }
            LeaseState::Revoking => {
                if msg.demoted && msg.token == lease.token && agent.stream == msg.stream {
                    agent.demoted = Some(lease.token);
                }
                Renewal::Revoke { token: lease.token }
            }
            LeaseState::Vacant => Renewal::NotHolder,
        }
    }

    /// Marks `service` as being switched over by an operator move; false if one already is.
    pub fn begin_switchover(&mut self, service: &str) -> bool {
        self.in_flight.insert(service.to_string())
    }

    /// Clears the mark of [`KeeperCore::begin_switchover`].
    pub fn end_switchover(&mut self, service: &str) {
        self.in_flight.remove(service);
    }

    /// The latest moment, on this clock, at which the holder of `lease` may still consider
    /// it valid.
    fn holder_deadline(&mut self, service: &str, lease: &Lease, now: Instant) -> Instant {
        let region = lease.holder.as_deref().unwrap_or_default();
        let wait = self.timing.wait(ttl_of(lease));
        let mut last = self.since.max(self.baseline(service, lease.token, now)) + wait;
        if let Some(agents) = self.agents.get(service) {
            for ((r, _), a) in agents.iter() {
                if r == region {
                    if let Some(u) = a.until {
                        last = last.max(u);
                    }
                }
            }
        }
        last
    }

    /// Whether the revoked holder of `service` (lease `lease`, token `token`) is fenced now,
    /// and how; `Ok(None)` while it may still act, `Err(())` when this node does not lead.
    pub fn fence_status(
        &mut self,
        service: &str,
        token: u64,
        lease: Option<&Lease>,
        now: Instant,
    ) -> Result<Option<FenceOutcome>, NotLeading> {
        let Some(lease) = lease else {
            return Ok(Some(FenceOutcome::Vacant));
        };
        if lease.token != token || lease.state == LeaseState::Vacant || lease.holder.is_none() {
            return Ok(Some(FenceOutcome::Vacant));
        }
        if self.term.is_none() {
            return Err(NotLeading);
        }
        if now >= self.holder_deadline(service, lease, now) {
            return Ok(Some(FenceOutcome::TtlExpired));
        }
        if lease.state != LeaseState::Revoking {
            return Ok(None);
        }
        Ok(match self.acks(service, lease, now) {
            Acks::NoneCanAct => Some(FenceOutcome::TtlExpired),
            Acks::AllAcked => Some(FenceOutcome::DemotionAck),
            Acks::Waiting => None,
        })
    }

    /// Where the acknowledgements of the holding region's agents stand — judged only once no
    /// renewal accepted by an earlier leader can still be valid.
    fn acks(&self, service: &str, lease: &Lease, now: Instant) -> Acks {
        let wait = self.timing.wait(ttl_of(lease));
        if now < self.since + wait {
            return Acks::Waiting;
        }
        let region = lease.holder.as_deref().unwrap_or_default();
        let mut live = self
            .agents
            .get(service)
            .into_iter()
            .flatten()
            .filter(|((r, _), a)| r == region && a.until.is_some_and(|u| now < u))
            .peekable();
        if live.peek().is_none() {
            // Every renewal's TTL ran out: nobody can act, whether or not anyone acked.
            return Acks::NoneCanAct;
        }
        if live.all(|(_, a)| a.demoted == Some(lease.token)) {
            Acks::AllAcked
        } else {
            Acks::Waiting
        }
    }

    /// Whether `lease` of `service` is due to end now. `run_active`: a workflow run is in
    /// progress (it fences a revoked lease itself; a held lease whose holder died still
    /// expires, or an approval-gated run would keep a dead primary forever).
    pub fn due(
        &mut self,
        service: &str,
        lease: &Lease,
        run_active: bool,
        now: Instant,
    ) -> Option<Due> {
        if self.term.is_none() || self.in_flight.contains(service) || lease.holder.is_none() {
            return None;
        }
        match lease.state {
            LeaseState::Vacant => None,
            LeaseState::Revoking if run_active => None,
            LeaseState::Held | LeaseState::Revoking => {
                if now >= self.holder_deadline(service, lease, now) {
                    return Some(Due::Expired);
                }
                if lease.state != LeaseState::Revoking {
                    return None;
                }
                match self.acks(service, lease, now) {
                    Acks::NoneCanAct => Some(Due::Expired),
                    Acks::AllAcked => Some(Due::Acknowledged),
                    Acks::Waiting => None,
                }
            }
        }
    }

    /// Decides to expire `lease` of `service` if it is still due: from here on renewals of
    /// its token are refused. Returns the reason when the caller must commit the expiry.
    pub fn decide_expiry(
        &mut self,
        service: &str,
        lease: &Lease,
        run_active: bool,
        now: Instant,
    ) -> Option<Due> {
        let due = self.due(service, lease, run_active, now)?;
        self.expiring.insert(service.to_string(), lease.token);
        Some(due)
    }

    /// Regions of `service` with an agent heard from within `within`.
    pub fn live_regions(&self, service: &str, within: Duration, now: Instant) -> BTreeSet<String> {
        self.agents
            .get(service)
            .map(|agents| {
                agents
                    .iter()
                    .filter(|(_, a)| now.saturating_duration_since(a.seen_at) < within)
                    .map(|((r, _), _)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an agent of `region` renewed `service`'s lease with token `token` since this
    /// leader first saw that token (the new holder took the lease up).
    pub fn holder_renewed(
        &mut self,
        service: &str,
        region: &str,
        token: u64,
        now: Instant,
    ) -> bool {
        let since = self.baseline(service, token, now);
        self.agents.get(service).is_some_and(|agents| {
            agents.iter().any(|((r, _), a)| {
                r == region && a.demoted.is_none() && a.renewed_at.is_some_and(|t| t >= since)
            })
        })
    }

    /// Forgets agents that can no longer matter: not heard from for a while and whose last
    /// accepted renewal can no longer be valid.
    pub fn prune(&mut self, now: Instant) {
        for agents in self.agents.values_mut() {
            prune(agents, now);
        }
        self.agents.retain(|_, a| !a.is_empty());
    }

    /// Agents tracked for `service` (for tests and status).
    pub fn agent_count(&self, service: &str) -> usize {
        self.agents.get(service).map_or(0, HashMap::len)
    }
}

/// Not the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLeading;

/// Where a revoked holder's acknowledgements stand.
enum Acks {
    /// No agent of the region holds a renewal that is still valid.
    NoneCanAct,
    /// Every agent that may still act acknowledged its demotion.
    AllAcked,
    /// Someone may still act, or it is too early to tell.
    Waiting,
}

/// An agent silent this long (and with no renewal that may still be valid) is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

fn prune(agents: &mut HashMap<(String, String), Agent>, now: Instant) {
    agents.retain(|_, a| {
        a.until.is_some_and(|u| now < u) || now.saturating_duration_since(a.seen_at) < FORGET_AFTER
    });
}

fn ttl_of(lease: &Lease) -> Duration {
    Duration::from_millis(lease.ttl_ms)
}
