//! Nemesis schedules (pure): which fault, on what, when, for how long — generated from a
//! seed so a failing run replays exactly — and the partition maths that turns a partition
//! kind into the set of directed links to cut.
//!
//! Targets that only exist at run time ("the leader", "the primary region") stay symbolic
//! in the schedule and are resolved by the executor when the step starts; everything else
//! (which node, which minority, the ring order, offsets and rates) is drawn here, from the
//! seed.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A coordinator node id (1-based, as in the cluster config).
pub type NodeId = u64;

/// A cut directed link: bytes from `.0` to `.1` are not delivered.
pub type Cut = (NodeId, NodeId);

/// Fault families, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Network partitions through the proxy.
    Partition,
    /// `kill -9` and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// libfaketime offsets and rates.
    Clock,
    /// Full or read-only data directory (root only).
    Disk,
    /// Faults aimed at the real `baton agent` processes and their lease: one agent cut from
    /// the leader only, an agent paused until the leader's deadline, a held lease's TTL
    /// changed.
    Agents,
}

impl Family {
    /// Every family, in the order `all` cycles through them.
    pub const ALL: [Family; 6] = [
        Family::Partition,
        Family::Kill,
        Family::Pause,
        Family::Clock,
        Family::Disk,
        Family::Agents,
    ];

    /// Name as used in the history and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Family::Partition => "partition",
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Clock => "clock",
            Family::Disk => "disk",
            Family::Agents => "agents",
        }
    }

    /// Parses a `--nemesis` value: a family name, `all`, `none`, or a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Family>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(Family::ALL),
                "none" => {}
                _ => out.push(
                    Family::ALL
                        .into_iter()
                        .find(|f| f.name() == part)
                        .ok_or_else(|| {
                            format!(
                                "unknown nemesis {part:?}: expected one of partition, kill, \
                                 pause, clock, disk, agents, all, none"
                            )
                        })?,
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to partition the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartitionKind {
    /// One node cut off from all others, both directions.
    IsolateNode {
        /// The node.
        node: NodeId,
    },
    /// One node hears nobody but can still send (asymmetric: a classic Raft trap).
    IsolateInbound {
        /// The node.
        node: NodeId,
    },
    /// A minority cut off from the majority.
    MajorityMinority {
        /// The minority side.
        minority: Vec<NodeId>,
    },
    /// Every node sees a majority, but no two see the same one (Jepsen's
    /// majorities-ring; with 3 nodes, the "bridge").
    MajoritiesRing {
        /// Ring order.
        ring: Vec<NodeId>,
    },
    /// The current leader cut off (resolved when the step starts).
    IsolateLeader,
    /// The nodes of the region that currently holds the primary lease (and, in phase 2,
    /// that region's agents) cut off.
    IsolatePrimaryRegion,
}

/// Which processes to kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KillTarget {
    /// One node.
    One {
        /// The node.
        node: NodeId,
    },
    /// A minority.
    Minority {
        /// The nodes.
        nodes: Vec<NodeId>,
    },
    /// The current leader.
    Leader,
    /// Every node (then all restart: durability of acknowledged writes).
    All,
}

/// Which process to pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PauseTarget {
    /// One node.
    One {
        /// The node.
        node: NodeId,
    },
    /// The current leader; the step's duration is longer than the lease TTL so that a
    /// resumed old leader finds the world moved on.
    Leader,
}

/// A clock fault on one node (libfaketime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClockFault {
    /// Jump the node's clock by `offset_ms` (may be negative).
    Offset {
        /// The node.
        node: NodeId,
        /// Offset, milliseconds.
        offset_ms: i64,
    },
    /// Run the node's clock at `rate` times real speed.
    Rate {
        /// The node.
        node: NodeId,
        /// Speed factor.
        rate: f64,
    },
}

/// A disk fault on one node (needs root; the executor logs a skip otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskFault {
    /// The data directory's filesystem is full.
    Full {
        /// The node.
        node: NodeId,
    },
    /// The data directory is remounted read-only.
    ReadOnly {
        /// The node.
        node: NodeId,
    },
}

/// Which region's real agent an agent fault aims at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentTarget {
    /// The region holding the lease when the step starts (resolved at run time).
    Holder,
    /// A fixed region (index into the run's regions).
    Region {
        /// Region index.
        region: usize,
    },
}

/// A fault on the real agents or their lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentFault {
    /// The agent's links to the current leader (only) hold their bytes; for a second
    /// around the heal the leader's peer links get `heal_latency_ms` more latency each
    /// way, which widens the window between a decision and its commit.
    CutFromLeader {
        /// Whose agent.
        target: AgentTarget,
        /// Extra one-way latency on the leader's peer links around the heal.
        heal_latency_ms: u64,
    },
    /// SIGSTOP the agent right after it saw a renewal acknowledged; SIGCONT at the leader's
    /// deadline for that renewal (`sent + TTL·(1+drift) + margin`, counted from the send:
    /// the agent's next renewal needs the same one-way trip the last one had) plus
    /// `offset_ms`.
    PauseAtDeadline {
        /// Whose agent.
        target: AgentTarget,
        /// Offset of the resume from the leader's deadline (may be negative).
        offset_ms: i64,
    },
    /// Admin `PutService` with the lease TTL set to `ttl_ms` while the lease is held; the
    /// heal puts the run's TTL back. With `cut_holder`, the change is made right after the
    /// holder's real agent saw a renewal, and the holder region's agents are then cut from
    /// the leader: a holder that keeps the old TTL's validity while the leader counts with
    /// the new one is a second primary as soon as the lease moves.
    ChangeTtl {
        /// The TTL during the fault.
        ttl_ms: u64,
        /// Cut the holder region's agents from the leader after the change.
        cut_holder: bool,
    },
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Fault {
    /// A partition.
    Partition {
        /// Which one.
        partition: PartitionKind,
    },
    /// Kill -9, restart when the step ends.
    Kill {
        /// Whom.
        target: KillTarget,
    },
    /// SIGSTOP, SIGCONT when the step ends.
    Pause {
        /// Whom.
        target: PauseTarget,
    },
    /// Clock fault, reset when the step ends.
    Clock {
        /// Which one.
        clock: ClockFault,
    },
    /// Disk fault, repaired when the step ends.
    Disk {
        /// Which one.
        disk: DiskFault,
    },
    /// A fault on the real agents or their lease, undone when the step ends.
    Agents {
        /// Which one.
        agents: AgentFault,
    },
}

impl Fault {
    /// Whether applying the fault needs root (the executor logs a skip otherwise): disk
    /// faults need a small tmpfs or loop mount.
    pub fn needs_root(&self) -> bool {
        matches!(self, Fault::Disk { .. })
    }

    /// The `detail` to record in `nemesis_start` / `nemesis_stop`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The fault's family.
    pub fn family(&self) -> Family {
        match self {
            Fault::Partition { .. } => Family::Partition,
            Fault::Kill { .. } => Family::Kill,
            Fault::Pause { .. } => Family::Pause,
            Fault::Clock { .. } => Family::Clock,
            Fault::Disk { .. } => Family::Disk,
            Fault::Agents { .. } => Family::Agents,
        }
    }
}

/// One step of a schedule: `fault` starts `at_ms` after the fault phase began and is healed
/// `duration_ms` later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Start, ms since the start of the fault phase.
    pub at_ms: u64,
    /// How long the fault lasts.
    pub duration_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// A whole schedule. Faults never overlap: each is healed before the next starts, so a
/// failure can be attributed to one fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Seed it was generated from.
    pub seed: u64,
    /// Length of the fault phase.
    pub time_limit_ms: u64,
    /// Number of nodes.
    pub nodes: u32,
    /// Steps, in time order.
    pub steps: Vec<Step>,
}

/// Parameters of schedule generation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u32,
    /// Length of the fault phase.
    pub time_limit: Duration,
    /// Lease TTL (pauses of the leader last longer than this).
    pub lease_ttl: Duration,
    /// Families to draw from (empty = no faults).
    pub families: Vec<Family>,
    /// Quiet time before the first fault (let the cluster settle and clients start).
    pub warmup: Duration,
    /// Shortest and longest fault.
    pub fault_duration: (Duration, Duration),
    /// Shortest and longest healthy interval between faults.
    pub quiet: (Duration, Duration),
}

impl ScheduleConfig {
    /// Sensible defaults for `nodes` nodes, `families` and a time limit.
    pub fn new(nodes: u32, families: Vec<Family>, time_limit: Duration) -> Self {
        Self {
            nodes,
            time_limit,
            lease_ttl: Duration::from_secs(5),
            families,
            warmup: Duration::from_secs(5),
            fault_duration: (Duration::from_secs(3), Duration::from_secs(15)),
            quiet: (Duration::from_secs(3), Duration::from_secs(10)),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn range_ms(rng: &mut SmallRng, (lo, hi): (Duration, Duration)) -> u64 {
    let (lo, hi) = (ms(lo), ms(hi).max(ms(lo)));
    rng.random_range(lo..=hi)
}

/// Generates the schedule for `seed`: the same seed and config always give the same
/// schedule (SmallRng's algorithm is fixed for a given `rand` version, which the lock file
/// pins).
pub fn generate(seed: u64, cfg: &ScheduleConfig) -> Schedule {
    let mut rng = SmallRng::seed_from_u64(seed);
    let limit = ms(cfg.time_limit);
    let mut steps = Vec::new();
    let mut t = ms(cfg.warmup);
    let min_fault = ms(cfg.fault_duration.0).max(1);
    while !cfg.families.is_empty() && t + min_fault <= limit {
        let family = cfg.families[rng.random_range(0..cfg.families.len())];
        let (fault, mut duration) = draw_fault(&mut rng, family, cfg);
        duration = duration.min(limit - t);
        steps.push(Step {
            at_ms: t,
            duration_ms: duration,
            fault,
        });
        t += duration + range_ms(&mut rng, cfg.quiet);
    }
    Schedule {
        seed,
        time_limit_ms: limit,
        nodes: cfg.nodes,
        steps,
    }
}

fn pick_nodes(rng: &mut SmallRng, n: u32, k: usize) -> Vec<NodeId> {
    let mut all: Vec<NodeId> = (1..=n as NodeId).collect();
    all.shuffle(rng);
    all.truncate(k);
    all.sort_unstable();
    all
}

fn draw_fault(rng: &mut SmallRng, family: Family, cfg: &ScheduleConfig) -> (Fault, u64) {
    let n = cfg.nodes.max(1);
    let node = rng.random_range(1..=n as NodeId);
    let minority = (n as usize - 1) / 2;
    let duration = range_ms(rng, cfg.fault_duration);
    let ttl = ms(cfg.lease_ttl).max(1);
    match family {
        Family::Partition => {
            let partition = match rng.random_range(0..6) {
                0 => PartitionKind::IsolateNode { node },
                1 => PartitionKind::IsolateInbound { node },
                2 => PartitionKind::MajorityMinority {
                    minority: pick_nodes(rng, n, minority.max(1)),
                },
                3 => {
                    let mut ring: Vec<NodeId> = (1..=n as NodeId).collect();
                    ring.shuffle(rng);
                    PartitionKind::MajoritiesRing { ring }
                }
                4 => PartitionKind::IsolateLeader,
                _ => PartitionKind::IsolatePrimaryRegion,
            };
            (Fault::Partition { partition }, duration)
        }
        Family::Kill => {
            let target = match rng.random_range(0..4) {
                0 => KillTarget::One { node },
                1 => KillTarget::Minority {
                    nodes: pick_nodes(rng, n, minority.max(1)),
                },
                2 => KillTarget::Leader,
                _ => KillTarget::All,
            };
            (Fault::Kill { target }, duration)
        }
        Family::Pause => {
            if rng.random_bool(0.5) {
                // Longer than the TTL: the paused leader's holders must have been fenced by
                // the time it wakes up, and it must not act on its stale view.
                let d = rng.random_range(ttl * 3 / 2..=ttl * 3);
                (
                    Fault::Pause {
                        target: PauseTarget::Leader,
                    },
                    d,
                )
            } else {
                (
                    Fault::Pause {
                        target: PauseTarget::One { node },
                    },
                    duration,
                )
            }
        }
        Family::Clock => {
            let clock = if rng.random_bool(0.5) {
                let magnitude = rng.random_range(ttl / 2..=ttl * 3) as i64;
                let sign = if rng.random_bool(0.5) { 1 } else { -1 };
                ClockFault::Offset {
                    node,
                    offset_ms: sign * magnitude,
                }
            } else {
                let rates = [0.5, 0.8, 1.25, 2.0];
                ClockFault::Rate {
                    node,
                    rate: rates[rng.random_range(0..rates.len())],
                }
            };
            (Fault::Clock { clock }, duration)
        }
        Family::Disk => {
            let disk = if rng.random_bool(0.5) {
                DiskFault::Full { node }
            } else {
                DiskFault::ReadOnly { node }
            };
            (Fault::Disk { disk }, duration)
        }
        Family::Agents => {
            // Mostly the holder's agent: that is where a second primary can appear.
            let target = if rng.random_bool(0.75) {
                AgentTarget::Holder
            } else {
                AgentTarget::Region {
                    region: rng.random_range(0..3),
                }
            };
            match rng.random_range(0..5) {
                0 | 1 => (
                    Fault::Agents {
                        agents: AgentFault::CutFromLeader {
                            target,
                            heal_latency_ms: 150,
                        },
                    },
                    duration.min(8_000),
                ),
                2 | 3 => (
                    Fault::Agents {
                        agents: AgentFault::PauseAtDeadline {
                            target,
                            // Mostly just after the deadline: the leader decides an expiry
                            // at its first tick (heartbeat/2 = 75 ms) past the deadline
                            // and applies it a commit later; a renewal that lands in
                            // between is the race of issue 7 (1).
                            offset_ms: rng.random_range(-20..=130),
                        },
                    },
                    // Room for waiting out one renew interval (TTL/3) and the pause itself
                    // (about TTL·(1+drift) + margin).
                    ttl * 2,
                ),
                _ => (
                    Fault::Agents {
                        agents: AgentFault::ChangeTtl {
                            ttl_ms: (ttl / 2).max(1),
                            cut_holder: rng.random_bool(0.5),
                        },
                    },
                    duration,
                ),
            }
        }
    }
}

/// Both directions of every link between different groups.
pub fn cuts_between(groups: &[Vec<NodeId>]) -> BTreeSet<Cut> {
    let mut cuts = BTreeSet::new();
    for (i, a) in groups.iter().enumerate() {
        for (j, b) in groups.iter().enumerate() {
            if i == j {
                continue;
            }
            for &x in a {
                for &y in b {
                    if x != y {
                        cuts.insert((x, y));
                    }
                }
            }
        }
    }
    cuts
}

/// `nodes` split into `group` and the rest, cut apart.
pub fn isolate_group(nodes: &[NodeId], group: &[NodeId]) -> BTreeSet<Cut> {
    let rest: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| !group.contains(n))
        .collect();
    cuts_between(&[group.to_vec(), rest])
}

/// Every link into `node` (it can send, but hears nobody).
pub fn isolate_inbound(nodes: &[NodeId], node: NodeId) -> BTreeSet<Cut> {
    nodes
        .iter()
        .filter(|&&x| x != node)
        .map(|&x| (x, node))
        .collect()
}

/// Jepsen's majorities ring: with the nodes in ring order, each keeps the links to its
/// nearest `d` neighbours on each side, `d` the smallest that makes `2d + 1` a majority;
/// every other link is cut. Each node then sees a majority and no two nodes see the same
/// set. With 3 nodes that would cut nothing, so the ring's first and last node are cut
/// apart instead (the "bridge": the middle node sees both halves).
pub fn majorities_ring(ring: &[NodeId]) -> BTreeSet<Cut> {
    let n = ring.len();
    let majority = n / 2 + 1;
    let d = majority / 2; // smallest d with 2d + 1 >= majority
    let mut cuts = BTreeSet::new();
    for i in 0..n {
        for j in 0..n {
            let dist = (i as isize - j as isize).unsigned_abs();
            let dist = dist.min(n - dist);
            if i != j && dist > d {
                cuts.insert((ring[i], ring[j]));
            }
        }
    }
    if cuts.is_empty() && n >= 3 {
        cuts.insert((ring[0], ring[n - 1]));
        cuts.insert((ring[n - 1], ring[0]));
    }
    cuts
}

/// The links to cut for `kind` among `nodes`, given the current leader and the nodes of the
/// region holding the primary lease (both known only at run time). `None` when a symbolic
/// target cannot be resolved (no leader known).
pub fn partition_cuts(
    kind: &PartitionKind,
    nodes: &[NodeId],
    leader: Option<NodeId>,
    primary_region_nodes: &[NodeId],
) -> Option<BTreeSet<Cut>> {
    Some(match kind {
        PartitionKind::IsolateNode { node } => isolate_group(nodes, &[*node]),
        PartitionKind::IsolateInbound { node } => isolate_inbound(nodes, *node),
        PartitionKind::MajorityMinority { minority } => isolate_group(nodes, minority),
        PartitionKind::MajoritiesRing { ring } => majorities_ring(ring),
        PartitionKind::IsolateLeader => isolate_group(nodes, &[leader?]),
        PartitionKind::IsolatePrimaryRegion => {
            if primary_region_nodes.is_empty() {
                return None;
            }
            isolate_group(nodes, primary_region_nodes)
        }
    })
}

/// The nodes `node` can talk to both ways under `cuts` (itself included).
pub fn sees(nodes: &[NodeId], cuts: &BTreeSet<Cut>, node: NodeId) -> BTreeSet<NodeId> {
    nodes
        .iter()
        .copied()
        .filter(|&x| x == node || (!cuts.contains(&(node, x)) && !cuts.contains(&(x, node))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).collect()
    }

    #[test]
    fn same_seed_same_schedule_and_different_seed_differs() {
        let cfg = ScheduleConfig::new(5, Family::ALL.to_vec(), Duration::from_secs(600));
        let a = generate(42, &cfg);
        let b = generate(42, &cfg);
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_ne!(a.steps, generate(43, &cfg).steps);
        assert!(a.steps.len() > 10);
    }

    #[test]
    fn schedule_stays_within_limit_and_faults_do_not_overlap() {
        for seed in 0..50 {
            let cfg = ScheduleConfig::new(3, Family::ALL.to_vec(), Duration::from_secs(120));
            let s = generate(seed, &cfg);
            let mut end = 0;
            for st in &s.steps {
                assert!(st.at_ms >= end, "overlap in seed {seed}");
                end = st.at_ms + st.duration_ms;
                assert!(end <= s.time_limit_ms);
                assert!(st.at_ms >= 5_000);
            }
        }
    }

    #[test]
    fn family_selection_is_respected() {
        let cfg = ScheduleConfig::new(3, vec![Family::Kill], Duration::from_secs(300));
        let s = generate(7, &cfg);
        assert!(!s.steps.is_empty());
        assert!(s.steps.iter().all(|st| st.fault.family() == Family::Kill));
        let none = ScheduleConfig::new(3, vec![], Duration::from_secs(300));
        assert!(generate(7, &none).steps.is_empty());
    }

    #[test]
    fn leader_pauses_outlast_the_lease_ttl() {
        let cfg = ScheduleConfig::new(3, vec![Family::Pause], Duration::from_secs(3_000));
        let s = generate(1, &cfg);
        let leader: Vec<_> = s
            .steps
            .iter()
            .filter(|st| {
                st.fault
                    == Fault::Pause {
                        target: PauseTarget::Leader,
                    }
            })
            .collect();
        assert!(!leader.is_empty());
        assert!(leader.iter().all(|st| st.duration_ms > 5_000));
    }

    #[test]
    fn agent_faults_are_seeded_and_cover_every_kind() {
        let mut cfg = ScheduleConfig::new(3, vec![Family::Agents], Duration::from_secs(600));
        cfg.lease_ttl = Duration::from_secs(2);
        let s = generate(5, &cfg);
        assert_eq!(s, generate(5, &cfg));
        assert_ne!(s.steps, generate(6, &cfg).steps);
        let mut kinds = BTreeSet::new();
        for st in &s.steps {
            let Fault::Agents { agents } = &st.fault else {
                panic!("not an agent fault: {:?}", st.fault);
            };
            match agents {
                AgentFault::CutFromLeader {
                    heal_latency_ms, ..
                } => {
                    kinds.insert("cut");
                    assert_eq!(*heal_latency_ms, 150);
                    assert!(st.duration_ms <= 8_000);
                }
                AgentFault::PauseAtDeadline { offset_ms, .. } => {
                    kinds.insert("pause");
                    assert!((-20..=130).contains(offset_ms));
                    // Long enough to wait for a renewal and then the deadline.
                    assert!(st.duration_ms >= 2_000 / 3 + 2_100 + 50 + 130);
                }
                AgentFault::ChangeTtl { ttl_ms, .. } => {
                    kinds.insert("ttl");
                    assert_eq!(*ttl_ms, 1_000);
                }
            }
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        let d = s.steps[0].fault.detail();
        assert_eq!(d["family"], "agents");
        assert!(d["agents"]["kind"].is_string());
        assert_eq!(Family::parse_list("agents").unwrap(), vec![Family::Agents]);
    }

    #[test]
    fn only_disk_faults_need_root_and_details_name_the_family() {
        let disk = Fault::Disk {
            disk: DiskFault::Full { node: 1 },
        };
        assert!(disk.needs_root());
        let kill = Fault::Kill {
            target: KillTarget::All,
        };
        assert!(!kill.needs_root());
        assert_eq!(kill.detail()["family"], "kill");
        assert_eq!(kill.detail()["target"]["kind"], "all");
    }

    #[test]
    fn parse_family_lists() {
        assert_eq!(Family::parse_list("all").unwrap(), Family::ALL.to_vec());
        assert_eq!(
            Family::parse_list("kill,partition").unwrap(),
            vec![Family::Partition, Family::Kill]
        );
        assert!(Family::parse_list("none").unwrap().is_empty());
        assert!(Family::parse_list("meteor").is_err());
    }

    #[test]
    fn isolating_a_node_cuts_exactly_its_links() {
        let nodes = ids(5);
        let cuts = isolate_group(&nodes, &[3]);
        assert_eq!(cuts.len(), 8);
        assert_eq!(sees(&nodes, &cuts, 3), BTreeSet::from([3]));
        for n in [1, 2, 4, 5] {
            assert_eq!(sees(&nodes, &cuts, n), BTreeSet::from([1, 2, 4, 5]));
        }
    }

    #[test]
    fn inbound_isolation_is_one_directional() {
        let nodes = ids(3);
        let cuts = isolate_inbound(&nodes, 2);
        assert_eq!(cuts, BTreeSet::from([(1, 2), (3, 2)]));
        assert!(!cuts.contains(&(2, 1)));
    }

    #[test]
    fn majority_minority_splits_cleanly() {
        let nodes = ids(5);
        let cuts = isolate_group(&nodes, &[1, 4]);
        assert_eq!(cuts.len(), 2 * 2 * 3);
        assert_eq!(sees(&nodes, &cuts, 1), BTreeSet::from([1, 4]));
        assert_eq!(sees(&nodes, &cuts, 2), BTreeSet::from([2, 3, 5]));
    }

    #[test]
    fn majorities_ring_gives_every_node_a_different_majority() {
        for n in 3..=7u64 {
            let nodes = ids(n);
            let mut ring = nodes.clone();
            ring.rotate_left(1);
            ring.swap(0, 1);
            let cuts = majorities_ring(&ring);
            assert!(!cuts.is_empty(), "n={n}");
            let views: Vec<BTreeSet<NodeId>> =
                nodes.iter().map(|&x| sees(&nodes, &cuts, x)).collect();
            for v in &views {
                assert!(v.len() > n as usize / 2, "n={n}: {v:?} is not a majority");
            }
            let distinct: BTreeSet<_> = views.iter().collect();
            if n >= 4 {
                assert_eq!(distinct.len(), n as usize, "n={n}: views repeat");
            } else {
                assert_eq!(distinct.len(), 3);
            }
            // No node sees everyone except in the 3-node bridge.
            let full = views.iter().filter(|v| v.len() == n as usize).count();
            assert_eq!(full, if n == 3 { 1 } else { 0 }, "n={n}");
            // Links are cut symmetrically.
            assert!(cuts.iter().all(|&(a, b)| cuts.contains(&(b, a))));
        }
    }

    #[test]
    fn symbolic_targets_resolve_at_run_time() {
        let nodes = ids(3);
        let k = PartitionKind::IsolateLeader;
        assert_eq!(partition_cuts(&k, &nodes, None, &[]), None);
        assert_eq!(
            partition_cuts(&k, &nodes, Some(2), &[]),
            Some(isolate_group(&nodes, &[2]))
        );
        let p = PartitionKind::IsolatePrimaryRegion;
        assert_eq!(
            partition_cuts(&p, &nodes, Some(2), &[3]),
            Some(isolate_group(&nodes, &[3]))
        );
    }
}
