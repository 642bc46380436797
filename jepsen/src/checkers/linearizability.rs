//! Linearizability of each service's lease register.
//!
//! # The model
//!
//! The register of one service holds `(holder region, token, state)` plus the revision of
//! its last change. Client operations act on it:
//!
//! - an `ok` linearizable `get_primary` (or `validate_token`) *reads* the lease it returned;
//! - a `failover(to, expected_token)` is a compare-and-set: it applies only when the
//!   current token equals `expected_token` (0 = no check) and leaves `Held(to, t')` with a
//!   fresh token `t'` greater than every token and revision before it (tokens are the log
//!   index of the granting entry). A failover whose answer is the lease `to` already held,
//!   unchanged, is a no-op;
//! - a failover with an unknown outcome (`info`, or no completion) may take effect at any
//!   single point after its invocation, or never; if it does, the token it granted is
//!   unknown until a later operation reveals it;
//! - `fail` operations had no effect and unknown reads constrain nothing: both are ignored.
//!
//! **Hidden steps.** The cluster also changes the register without any client operation:
//! the lease keeper revokes (`Held → Revoking`) and expires (`Held/Revoking → Vacant`)
//! leases, and mode or definition changes bump the revision without changing the content.
//! With automation on, it also grants the lease to other regions. We never enumerate these
//! steps; instead, when an operation observes a lease, it may be reached from the current
//! state through any sequence of legal hidden steps:
//!
//! - same token: the state only moves forward (`Held → Revoking → Vacant`), the holder
//!   stays the same while not vacant, and the revision does not decrease (an equal revision
//!   means an identical lease);
//! - a greater token: only when automation is on (otherwise a new token needs a client
//!   failover, which must itself be linearized), and only above the current revision;
//! - a smaller token, or a smaller revision: never.
//!
//! Deferring hidden steps to the moment an operation first reveals them is sound because
//! they commute with everything before: they change neither tokens nor holders that an
//! earlier operation could have depended on (revoke/expire keep the token, which is all a
//! failover's compare-and-set looks at), and a hidden grant (automation) is only allowed
//! where it explains an observed greater token. It is complete for the same reason: any
//! legal interleaving with hidden steps maps to one where each hidden step sits just before
//! the operation that reveals it. What this model cannot catch by design: a failover that
//! reported `fail` but took effect later is indistinguishable from a hidden grant when
//! automation is on (with automation off, it is caught: nothing else explains the token).
//!
//! # The search
//!
//! Wing & Gong's search, in the just-in-time form of Lowe and of Knossos' `linear`
//! algorithm: the history is swept in time order (at equal times invocations come before
//! completions, which treats such operations as concurrent: never a false alarm). A
//! *configuration* is `(register state, ok operations linearized but not yet completed,
//! unknown-outcome failovers still able to take effect)`. At each completion, every
//! configuration must linearize the completing operation, possibly after some other
//! pending ones; configurations that cannot are dropped, and when none is left the history
//! is not linearizable. This is the frontier prune: a completed operation is linearized
//! before anything invoked after its completion. Configurations are memoised in hash sets
//! (visited set per completion; the surviving set is deduplicated), unknown failovers
//! whose compare-and-set can no longer match are dropped, and reads that observe exactly
//! the current state are linearized greedily (doing so never removes an option, and it
//! keeps many concurrent identical reads from multiplying configurations). Services are
//! independent registers, so each is checked alone (P-compositionality).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::json;

use super::{cap, CheckConfig, Verdict};
use crate::history::{Call, History, LeaseStateRec, OpResult, Operation, Outcome};

/// Checker name in reports.
pub const NAME: &str = "linearizability";

type RegionId = u32;

/// What an operation observed (regions interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Obs {
    region: Option<RegionId>,
    token: u64,
    state: LeaseStateRec,
    revision: u64,
}

/// The register's state as far as the search knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reg {
    /// Nothing known yet (before the first observation): anything may come next.
    Unknown,
    /// Exactly this lease (revision 0 = not known).
    Known(Obs),
    /// An unknown-outcome failover granted `region` a token greater than `above`, not yet
    /// revealed.
    Granted { region: RegionId, above: u64 },
}

#[derive(Debug, Clone)]
enum Kind {
    Read(Obs),
    Failover {
        to: RegionId,
        expected: u64,
        result: Option<Obs>,
    },
}

#[derive(Debug, Clone)]
struct LinOp {
    /// Index into the service's operations (for reports).
    op: usize,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Config {
    state: Reg,
    /// Ok operations linearized but not completed yet, sorted.
    lin: Vec<u32>,
    /// Unknown-outcome failovers that may still take effect, sorted.
    avail: Vec<u32>,
}

struct Model {
    automation: bool,
}

impl Model {
    /// Can `s` turn into the observed lease by hidden steps alone?
    fn reach(&self, s: &Reg, o: &Obs) -> bool {
        match *s {
            Reg::Unknown => true,
            Reg::Known(k) => {
                if k.revision > 0 && o.revision > 0 {
                    if o.revision < k.revision {
                        return false;
                    }
                    if o.revision == k.revision {
                        return (k.region, k.token, k.state) == (o.region, o.token, o.state);
                    }
                }
                if o.token < k.token {
                    false
                } else if o.token == k.token {
                    o.state.rank() >= k.state.rank()
                        && (o.state == LeaseStateRec::Vacant || o.region == k.region)
                } else {
                    // A new token nobody asked for: only automation grants on its own, and
                    // its grant entry comes after everything already applied.
                    self.automation && o.token > k.revision
                }
            }
            Reg::Granted { region, above } => {
                o.token > above
                    && (self.automation
                        || o.state == LeaseStateRec::Vacant
                        || o.region == Some(region))
            }
        }
    }

    /// Lower bound (exclusive) of any token granted from `s`.
    fn bound(s: &Reg) -> u64 {
        match *s {
            Reg::Unknown => 0,
            Reg::Known(k) => k.token.max(k.revision),
            Reg::Granted { above, .. } => above,
        }
    }

    /// Can a failover's compare-and-set on `expected` succeed from `s`?
    fn pre(&self, s: &Reg, expected: u64) -> bool {
        if expected == 0 {
            return true;
        }
        match *s {
            Reg::Unknown => true,
            Reg::Known(k) => {
                k.token == expected || (self.automation && expected > k.token.max(k.revision))
            }
            Reg::Granted { above, .. } => expected > above,
        }
    }

    /// Can an unknown-outcome failover on `expected` ever succeed from `s` or later?
    /// Tokens only grow, so once the token passed `expected` it never will.
    fn alive(s: &Reg, expected: u64) -> bool {
        if expected == 0 {
            return true;
        }
        match *s {
            Reg::Unknown => true,
            Reg::Known(k) => k.token == expected || expected > k.token.max(k.revision),
            Reg::Granted { above, .. } => expected > above,
        }
    }

    /// The state after linearizing `op` in `s`, if it can be linearized there.
    fn step(&self, s: &Reg, op: &Kind) -> Option<Reg> {
        match op {
            Kind::Read(o) => self.reach(s, o).then_some(Reg::Known(*o)),
            Kind::Failover {
                to,
                expected,
                result: Some(o),
            } => {
                if o.region != Some(*to) {
                    // "Succeeded" but the lease is elsewhere: no linearization explains it.
                    return None;
                }
                // A no-op: `to` already held the lease with the token the client expected,
                // and the answer is that lease.
                let noop = o.state == LeaseStateRec::Held
                    && (*expected == 0 || *expected == o.token)
                    && self.reach(s, o);
                if noop {
                    return Some(Reg::Known(*o));
                }
                if !self.pre(s, *expected) {
                    return None;
                }
                (o.token > Self::bound(s).max(*expected)).then_some(Reg::Known(*o))
            }
            Kind::Failover {
                to,
                expected,
                result: None,
            } => self.pre(s, *expected).then_some(Reg::Granted {
                region: *to,
                above: Self::bound(s).max(*expected),
            }),
        }
    }
}

/// Interns region names so states are small and hash fast.
#[derive(Default)]
struct Regions {
    ids: HashMap<String, RegionId>,
    names: Vec<String>,
}

impl Regions {
    fn id(&mut self, name: &str) -> RegionId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as RegionId;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        id
    }

    fn obs(&mut self, l: &crate::history::LeaseObs) -> Obs {
        Obs {
            region: l.region.as_deref().map(|r| self.id(r)),
            token: l.token,
            state: l.state,
            revision: l.revision,
        }
    }

    fn render(&self, s: &Reg) -> serde_json::Value {
        let name = |r: Option<RegionId>| r.map(|r| self.names[r as usize].clone());
        match s {
            Reg::Unknown => json!("unknown"),
            Reg::Known(o) => json!({
                "region": name(o.region),
                "token": o.token,
                "state": o.state,
                "revision": o.revision,
            }),
            Reg::Granted { region, above } => json!({
                "granted_to": name(Some(*region)),
                "token_above": above,
                "by": "unknown-outcome failover",
            }),
        }
    }
}

/// Checks every service's register; see the module documentation.
pub fn check(h: &History, cfg: &CheckConfig) -> Verdict {
    let ops = h.operations();
    let mut by_service: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &ops {
        by_service.entry(op.call.service()).or_default().push(op);
    }
    let model = Model {
        automation: cfg.automation,
    };
    let mut checked = 0;
    let mut anomalies = Vec::new();
    for (service, ops) in by_service {
        let (n, mut a) = check_service(service, &ops, &model, cfg);
        checked += n;
        anomalies.append(&mut a);
    }
    Verdict::new(NAME, checked, anomalies)
}

/// Turns a service's operations into register operations (dropping what constrains
/// nothing) with their invocation and completion times.
fn register_ops(ops: &[&Operation], regions: &mut Regions) -> Vec<(LinOp, u64, Option<u64>)> {
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let kind = match (&op.call, &op.outcome) {
            (Call::GetPrimary { .. } | Call::ValidateToken { .. }, Outcome::Ok(r))
                if op.call.is_linearizable() =>
            {
                match r {
                    OpResult::GetPrimary { lease, .. } | OpResult::ValidateToken { lease, .. } => {
                        Kind::Read(regions.obs(lease))
                    }
                    // A read answered with a failover result: malformed, not a read.
                    OpResult::Failover { .. } => continue,
                }
            }
            (
                Call::Failover {
                    to_region,
                    expected_token,
                    ..
                },
                outcome,
            ) => {
                let result = match outcome {
                    Outcome::Ok(r) => Some(regions.obs(r.lease())),
                    Outcome::Info(_) | Outcome::Pending => None,
                    Outcome::Fail(_) => continue,
                };
                Kind::Failover {
                    to: regions.id(to_region),
                    expected: *expected_token,
                    result,
                }
            }
            _ => continue,
        };
        let complete = match (&kind, op.complete_ns) {
            (Kind::Failover { result: None, .. }, _) => None,
            (_, c) => c,
        };
        out.push((LinOp { op: i, kind }, op.invoke_ns, complete));
    }
    out
}

fn insert_sorted(v: &[u32], x: u32) -> Vec<u32> {
    let mut out = v.to_vec();
    if let Err(p) = out.binary_search(&x) {
        out.insert(p, x);
    }
    out
}

/// Canonical form: drops unknown failovers that can no longer match and greedily
/// linearizes pending reads that observe exactly the current state.
fn canonical(
    mut c: Config,
    model: &Model,
    lops: &[LinOp],
    pending: &BTreeSet<u32>,
    except: Option<u32>,
) -> Config {
    c.avail.retain(|&p| match lops[p as usize].kind {
        Kind::Failover { expected, .. } => Model::alive(&c.state, expected),
        Kind::Read(_) => false,
    });
    if let Reg::Known(k) = c.state {
        for &p in pending {
            if Some(p) == except || c.lin.binary_search(&p).is_ok() {
                continue;
            }
            if let Kind::Read(o) = &lops[p as usize].kind {
                if *o == k && model.reach(&c.state, o) {
                    c.lin = insert_sorted(&c.lin, p);
                }
            }
        }
    }
    c
}

fn check_service(
    service: &str,
    ops: &[&Operation],
    model: &Model,
    cfg: &CheckConfig,
) -> (usize, Vec<serde_json::Value>) {
    let mut regions = Regions::default();
    let rops = register_ops(ops, &mut regions);
    let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(rops.len() * 2);
    for (i, (_, inv, comp)) in rops.iter().enumerate() {
        events.push((*inv, 0, i as u32));
        if let Some(c) = comp {
            events.push((*c, 1, i as u32));
        }
    }
    events.sort_unstable();
    let lops: Vec<LinOp> = rops.into_iter().map(|(l, _, _)| l).collect();

    let fresh = |avail: Vec<u32>| Config {
        state: Reg::Unknown,
        lin: Vec::new(),
        avail,
    };
    let mut configs: HashSet<Config> = HashSet::from([fresh(Vec::new())]);
    let mut pending: BTreeSet<u32> = BTreeSet::new();
    let mut anomalies = Vec::new();
    let mut last_ok: Vec<u32> = Vec::new();

    for &(t, what, i) in &events {
        let is_unknown = matches!(lops[i as usize].kind, Kind::Failover { result: None, .. });
        if what == 0 {
            if is_unknown {
                configs = configs
                    .into_iter()
                    .map(|mut c| {
                        c.avail = insert_sorted(&c.avail, i);
                        canonical(c, model, &lops, &pending, None)
                    })
                    .collect();
            } else {
                pending.insert(i);
                let single = BTreeSet::from([i]);
                configs = configs
                    .into_iter()
                    .map(|c| canonical(c, model, &lops, &single, None))
                    .collect();
            }
            continue;
        }
        // Completion of an ok operation: every surviving configuration linearizes it.
        let mut next: HashSet<Config> = HashSet::new();
        let mut visited: HashSet<Config> = HashSet::new();
        let mut over_budget = false;
        for c in configs.iter() {
            if let Ok(p) = c.lin.binary_search(&i) {
                let mut c = c.clone();
                c.lin.remove(p);
                next.insert(c);
                continue;
            }
            if !visited.insert(c.clone()) {
                continue;
            }
            let mut stack = vec![c.clone()];
            while let Some(x) = stack.pop() {
                if visited.len() + next.len() > cfg.max_configs {
                    over_budget = true;
                    break;
                }
                for &p in &pending {
                    if x.lin.binary_search(&p).is_ok() {
                        continue;
                    }
                    let Some(ns) = model.step(&x.state, &lops[p as usize].kind) else {
                        continue;
                    };
                    if p == i {
                        let y = Config {
                            state: ns,
                            lin: x.lin.clone(),
                            avail: x.avail.clone(),
                        };
                        next.insert(canonical(y, model, &lops, &pending, Some(i)));
                    } else {
                        let y = Config {
                            state: ns,
                            lin: insert_sorted(&x.lin, p),
                            avail: x.avail.clone(),
                        };
                        let y = canonical(y, model, &lops, &pending, Some(i));
                        if visited.insert(y.clone()) {
                            stack.push(y);
                        }
                    }
                }
                for (k, &p) in x.avail.iter().enumerate() {
                    let Some(ns) = model.step(&x.state, &lops[p as usize].kind) else {
                        continue;
                    };
                    let mut avail = x.avail.clone();
                    avail.remove(k);
                    let y = Config {
                        state: ns,
                        lin: x.lin.clone(),
                        avail,
                    };
                    let y = canonical(y, model, &lops, &pending, Some(i));
                    if visited.insert(y.clone()) {
                        stack.push(y);
                    }
                }
            }
            if over_budget {
                break;
            }
        }
        pending.remove(&i);
        let op = ops[lops[i as usize].op];
        if over_budget || next.is_empty() {
            let states: Vec<serde_json::Value> = configs
                .iter()
                .take(5)
                .map(|c| regions.render(&c.state))
                .collect();
            let concurrent: Vec<u64> = pending
                .iter()
                .map(|&p| ops[lops[p as usize].op].id)
                .collect();
            let recent: Vec<serde_json::Value> = last_ok
                .iter()
                .rev()
                .take(3)
                .map(|&p| ops[lops[p as usize].op].describe())
                .collect();
            let kind = if over_budget {
                "search-budget-exceeded"
            } else {
                "nonlinearizable"
            };
            anomalies.push(json!({
                "kind": kind,
                "service": service,
                "at_ns": t,
                "op": op.describe(),
                "possible_states_before": states,
                "states_considered": configs.len(),
                "concurrent_ops": concurrent,
                "recent_ok_ops": recent,
            }));
            // Keep checking the rest from "anything is possible": sound (it only loses
            // constraints) and it lets one run report more than its first problem.
            let avail: BTreeSet<u32> = configs.iter().flat_map(|c| c.avail.clone()).collect();
            configs = HashSet::from([fresh(avail.into_iter().collect())]);
        } else {
            configs = next;
        }
        last_ok.push(i);
        if last_ok.len() > 8 {
            last_ok.remove(0);
        }
    }
    (lops.len(), cap(anomalies, cfg.max_anomalies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::*;

    fn run(h: &H) -> Verdict {
        check(&h.history(), &CheckConfig::default())
    }

    fn run_auto(h: &H) -> Verdict {
        let cfg = CheckConfig {
            automation: true,
            ..CheckConfig::default()
        };
        check(&h.history(), &cfg)
    }

    #[test]
    fn sequential_reads_and_failovers_are_linearizable() {
        let mut h = H::new();
        h.read("c1", 0, 10, "s", held("us", 5, 5));
        h.failover("c1", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read("c2", 40, 50, "s", held("eu", 9, 9));
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 3);
    }

    #[test]
    fn stale_read_after_acknowledged_failover_fails() {
        let mut h = H::new();
        h.read("c1", 0, 10, "s", held("us", 5, 5));
        h.failover("c1", 20, 30, "s", "eu", 5, held("eu", 9, 9));
        h.read("c2", 40, 50, "s", held("us", 5, 5));
        let v = run(&h);
        assert!(!v.valid);
        assert_eq!(v.kinds(), vec!["nonlinearizable"]);
        assert_eq!(v.anomalies[0]["op"]["id"], 3);
    }

    #[test]
    fn concurrent_read_may_see_old_new_or_revoking() {
        for seen in [held("us", 5, 5), revoking("us", 5, 7), held("eu", 9, 9)] {
            let mut h = H::new();
            h.read("c1", 0, 10, "s", held("us", 5, 5));
            h.failover("c1", 20, 100, "s", "eu", 5, held("eu", 9, 9));
            h.read("c2", 30, 40, "s", seen.clone());
            h.read("c2", 110, 120, "s", held("eu", 9, 9));
            let v = run(&h);
            assert!(v.valid, "{seen:?}: {:?}", v.anomalies);
        }
    }

    #[test]
    fn reads_cannot_go_back_in_real_time_even_when_concurrent_with_a_write() {
        let mut h = H::new();
        h.read("c1", 0, 10, "s", held("us", 5, 5));
        h.failover("c1", 20, 100, "s", "eu", 5, held("eu", 9, 9));
        h.read("c2", 30, 40, "s", held("eu", 9, 9));
        h.read("c3", 50, 60, "s", held("us", 5, 5));
        assert!(!run(&h).valid);
    }

    #[test]
    fn two_failovers_cannot_both_win_the_same_compare_and_set() {
        // Concurrent, both acknowledged, both expecting token 5.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover("c1", 10, 50, "s", "eu", 5, held("eu", 9, 9));
        h.failover("c2", 10, 50, "s", "ap", 5, held("ap", 12, 12));
        assert!(!run(&h).valid);
        // Sequential: the second expects a stale token.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover("c1", 10, 20, "s", "eu", 5, held("eu", 9, 9));
        h.failover("c2", 30, 40, "s", "ap", 5, held("ap", 12, 12));
        assert!(!run(&h).valid);
    }

    #[test]
    fn unknown_failover_may_happen_later_or_never() {
        // Revealed after its invocation by a read: fine.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        h.read("c2", 100, 110, "s", held("us", 5, 5));
        h.read("c2", 200, 210, "s", held("eu", 40, 40));
        assert!(run(&h).valid);
        // Never happened: also fine.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        h.read("c2", 200, 210, "s", held("us", 5, 5));
        assert!(run(&h).valid);
    }

    #[test]
    fn unknown_failover_cannot_take_effect_before_its_invocation_or_be_undone() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.read("c0", 6, 8, "s", held("eu", 40, 40));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        assert!(
            !run(&h).valid,
            "new token seen before the failover was invoked"
        );
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        h.read("c2", 30, 40, "s", held("eu", 40, 40));
        h.read("c2", 50, 60, "s", held("us", 5, 5));
        assert!(!run(&h).valid, "granted then undone");
    }

    #[test]
    fn read_invoked_before_a_write_may_linearize_before_it_though_it_completes_after() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.read("c2", 12, 30, "s", held("us", 5, 5));
        h.failover("c1", 10, 20, "s", "eu", 5, held("eu", 9, 9));
        h.read("c3", 15, 40, "s", held("eu", 9, 9));
        assert!(run(&h).valid);
        // But not one invoked after the write completed.
        h.read("c4", 25, 45, "s", held("us", 5, 5));
        assert!(!run(&h).valid);
    }

    #[test]
    fn unknown_failover_token_can_be_revealed_by_a_later_compare_and_set() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        h.failover("c2", 30, 40, "s", "ap", 40, held("ap", 50, 50));
        h.read("c0", 50, 55, "s", held("ap", 50, 50));
        assert!(run(&h).valid);
        // Without the unknown failover, expecting token 40 cannot succeed.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover("c2", 30, 40, "s", "ap", 40, held("ap", 50, 50));
        assert!(!run(&h).valid);
    }

    #[test]
    fn unknown_failover_grants_only_its_target_region() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.failover_info("c1", 10, 20, "s", "eu", 5);
        h.read("c2", 30, 40, "s", held("ap", 40, 40));
        assert!(!run(&h).valid);
    }

    #[test]
    fn expiry_is_a_hidden_step_but_unrevoking_is_not() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.read("c0", 10, 15, "s", vacant(5, 8));
        assert!(run(&h).valid);
        let mut h = H::new();
        h.read("c0", 0, 5, "s", revoking("us", 5, 7));
        h.read("c0", 10, 15, "s", held("us", 5, 9));
        assert!(!run(&h).valid);
    }

    #[test]
    fn new_token_without_a_failover_needs_automation() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.read("c0", 10, 15, "s", held("eu", 9, 9));
        assert!(!run(&h).valid);
        assert!(run_auto(&h).valid);
        // Even automation grants above the current revision only.
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 20));
        h.read("c0", 10, 15, "s", held("eu", 9, 21));
        assert!(!run_auto(&h).valid);
    }

    #[test]
    fn same_revision_must_mean_same_lease() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 7));
        h.read("c0", 10, 15, "s", revoking("us", 5, 7));
        assert!(!run(&h).valid);
    }

    #[test]
    fn failover_token_must_exceed_the_revision_it_follows() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 30));
        h.failover("c1", 10, 20, "s", "eu", 5, held("eu", 20, 20));
        assert!(!run(&h).valid);
    }

    #[test]
    fn failover_to_the_current_holder_may_be_a_no_op() {
        let mut h = H::new();
        h.failover("c1", 0, 10, "s", "us", 5, held("us", 5, 6));
        h.read("c0", 20, 25, "s", held("us", 5, 6));
        assert!(run(&h).valid);
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("eu", 9, 9));
        h.failover("c1", 10, 20, "s", "us", 9, held("us", 9, 9));
        assert!(!run(&h).valid, "a no-op cannot move the lease");
    }

    #[test]
    fn failed_operations_are_ignored_and_services_are_independent() {
        let mut h = H::new();
        h.read("c0", 0, 5, "a", held("us", 5, 5));
        h.read("c0", 6, 7, "b", held("eu", 6, 6));
        h.read_fail("c1", 8, 9, "a");
        h.read("c0", 10, 15, "a", held("us", 5, 5));
        assert!(run(&h).valid);
    }

    #[test]
    fn reports_more_than_the_first_problem() {
        let mut h = H::new();
        h.read("c0", 0, 5, "s", held("us", 5, 5));
        h.read("c0", 10, 15, "s", held("us", 3, 3));
        h.read("c0", 20, 25, "s", held("us", 5, 5));
        h.read("c0", 30, 35, "s", held("us", 3, 3));
        assert_eq!(run(&h).anomalies.len(), 2);
    }

    #[test]
    fn long_concurrent_history_is_checked_quickly() {
        // 8 clients, 40k operations; every sixth round one client fails over to the next
        // region while the other seven read concurrently (and may see either lease).
        fn next_region(cur: &str) -> &'static str {
            match cur {
                "us" => "eu",
                "eu" => "ap",
                _ => "us",
            }
        }
        let mut h = H::new();
        let mut token = 1u64;
        let mut region = "us";
        let mut t = 0u64;
        for round in 0..5_000u64 {
            let failover_round = round % 6 == 5;
            for c in 0..8u64 {
                let p = format!("c{c}");
                if c == 0 && failover_round {
                    let (to, new) = (next_region(region), token + 3);
                    h.failover(&p, t, t + 30, "s", to, token, held(to, new, new));
                } else {
                    h.read(&p, t + c, t + 10 + c, "s", held(region, token, token));
                }
            }
            if failover_round {
                token += 3;
                region = next_region(region);
            }
            t += 40;
        }
        let v = run(&h);
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 40_000);
    }
}
