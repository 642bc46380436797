//! `baton bench compare`: etcd 3.4 and baton side by side on this machine, in the same
//! shapes ([`super::shape::shapes`]), alternating, several runs each; medians and ratios.
//!
//! Both clusters are three processes on 127.0.0.1 and stay up for the whole comparison
//! (an idle cluster costs next to nothing); each shape runs on one, then the other, the
//! order swapping every run, after the machine has gone quiet, so neither system gets the
//! warmer or the quieter machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::etcd::EtcdCluster;
use super::load::BatonCluster;
use super::shape::{median, Measured, Shape};

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Runs of each shape on each system.
    pub runs: usize,
    /// Only the shapes whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// First port of the baton cluster (it uses about 40 from there).
    pub baton_port: u16,
    /// First port of the etcd cluster (it uses about 20 from there).
    pub etcd_port: u16,
    /// Run etcd's side; without it only baton runs (for profiling baton alone).
    pub with_etcd: bool,
    /// Run baton's side.
    pub with_baton: bool,
}

/// One shape's runs on both systems.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub shape: Shape,
    pub etcd: Vec<Measured>,
    pub baton: Vec<Measured>,
}

/// Resident memory of every node after the load, in bytes.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub etcd: Vec<u64>,
    pub baton: Vec<u64>,
}

/// Everything `compare` measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    pub memory: Memory,
    pub runs: usize,
}

/// The figure a shape is judged by, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Operations per second: higher is better.
    Rate,
    /// p99 latency: lower is better.
    P99,
}

impl Figure {
    /// What `shape` is judged by.
    pub fn of(shape: &Shape) -> Figure {
        match shape {
            Shape::Read { .. } | Shape::KeepAlive { interval: None, .. } => Figure::Rate,
            Shape::KeepAlive { .. } | Shape::Watch { .. } => Figure::P99,
        }
    }

    /// The figure of one run.
    pub fn value(self, m: &Measured) -> f64 {
        match self {
            Figure::Rate => m.rate(),
            Figure::P99 => m.p99_us as f64 / 1000.0,
        }
    }
}

impl Row {
    /// Median of the judged figure over the runs of one system.
    pub fn median(&self, of_baton: bool) -> f64 {
        let f = Figure::of(&self.shape);
        let runs = if of_baton { &self.baton } else { &self.etcd };
        // Medians of f64 through a fixed-point detour (values are rates or milliseconds).
        median(runs.iter().map(|m| (f.value(m) * 1000.0) as u64).collect()) as f64 / 1000.0
    }

    /// How much better baton is: rate ratio baton/etcd, or latency ratio etcd/baton.
    pub fn advantage(&self) -> f64 {
        let (b, e) = (self.median(true), self.median(false));
        let r = match Figure::of(&self.shape) {
            Figure::Rate => b / e,
            Figure::P99 => e / b,
        };
        if r.is_finite() {
            r
        } else {
            0.0
        }
    }

    /// Failed streams or watchers over baton's runs.
    pub fn baton_failed(&self) -> u64 {
        self.baton.iter().map(|m| m.failed).sum()
    }

    /// The target for this shape, and whether baton met it.
    pub fn target(&self) -> (String, bool) {
        let adv = self.advantage();
        match self.shape {
            Shape::Read {
                kind: super::shape::ReadKind::Local,
                ..
            } => ("≥ 3× etcd serializable".into(), adv >= 3.0),
            Shape::Read { .. } | Shape::KeepAlive { interval: None, .. } => {
                ("≥ 2× etcd".into(), adv >= 2.0)
            }
            Shape::KeepAlive { .. } => (
                "p99 ≤ 10 ms, no failed stream".into(),
                self.median(true) <= 10.0 && self.baton_failed() == 0,
            ),
            Shape::Watch { .. } => (
                "p99 ≤ ½ etcd, no missed event".into(),
                adv >= 2.0 && self.baton_failed() == 0,
            ),
        }
    }
}

/// Resident set size of a process, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Busy CPU time of the whole machine so far, in clock ticks.
fn busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system irq softirq steal
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum())
}

/// Waits (up to 60 s) until the machine uses less than a third of a core over a second:
/// the previous run's tail (compaction, freed memory, a slow watcher) must not land on the
/// next one.
async fn wait_quiet() {
    // Linux reports /proc/stat in USER_HZ, 100 on every supported architecture.
    const TICKS_PER_SEC: f64 = 100.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(b0) = busy_ticks() else { return };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(b1) = busy_ticks() else { return };
        if (b1.saturating_sub(b0) as f64) / TICKS_PER_SEC < 0.33 {
            return;
        }
    }
}

/// Starts both clusters, runs every selected shape `runs` times on each, alternating, and
/// reads every node's RSS at the end. `progress` is told of each run as it finishes.
pub async fn compare(
    exe: &Path,
    opts: &CompareOptions,
    mut progress: impl FnMut(&str),
) -> Result<Report, String> {
    let shapes: Vec<(&'static str, Shape)> = super::shape::shapes()
        .into_iter()
        .filter(|(n, _)| opts.only.is_empty() || opts.only.iter().any(|o| n.contains(o.as_str())))
        .collect();
    if shapes.is_empty() {
        return Err(format!(
            "no shape matches {:?}; the shapes are {}",
            opts.only,
            super::shape::shapes()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    progress("starting etcd (3 members) and baton (3 nodes) on 127.0.0.1");
    let etcd = match opts.with_etcd {
        true => Some(EtcdCluster::start(&opts.etcd, dir.path(), opts.etcd_port).await?),
        false => None,
    };
    let baton = match opts.with_baton {
        true => Some(BatonCluster::start(exe, opts.baton_port).await?),
        false => None,
    };
    let mut rows: Vec<Row> = shapes
        .iter()
        .map(|(name, shape)| Row {
            name,
            shape: *shape,
            etcd: Vec::new(),
            baton: Vec::new(),
        })
        .collect();
    for run in 0..opts.runs {
        for row in &mut rows {
            let timing = row.shape.timing();
            // Odd runs start with baton, even ones with etcd.
            for baton_turn in [run % 2 == 1, run % 2 == 0] {
                let system = if baton_turn { "baton" } else { "etcd" };
                let once = || async {
                    wait_quiet().await;
                    match (baton_turn, &baton, &etcd) {
                        (true, Some(b), _) => Some(super::load::run(b, &row.shape, timing).await),
                        (false, _, Some(e)) => Some(super::etcd::run(e, &row.shape, timing).await),
                        _ => None,
                    }
                };
                let m = match once().await {
                    None => continue,
                    Some(Ok(m)) => m,
                    // One retry: a run that could not even start (a shed burst of opens, a
                    // leader change) says nothing about the shape, but twice is a finding.
                    Some(Err(e)) => {
                        progress(&format!(
                            "run {} {} on {system} failed ({e}); running it again",
                            run + 1,
                            row.name
                        ));
                        once()
                            .await
                            .unwrap_or_else(|| Err("skipped".into()))
                            .map_err(|e| {
                                format!("{} on {system}, run {} (twice): {e}", row.name, run + 1)
                            })?
                    }
                };
                progress(&format!(
                    "run {}/{} {:<22} {:<5} {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms errors {} failed {}",
                    run + 1,
                    opts.runs,
                    row.name,
                    system,
                    m.rate(),
                    m.p50_us as f64 / 1000.0,
                    m.p99_us as f64 / 1000.0,
                    m.errors,
                    m.failed,
                ));
                if baton_turn {
                    row.baton.push(m);
                } else {
                    row.etcd.push(m);
                }
            }
        }
    }
    // After the load, once the machine is quiet: what each node holds on to.
    wait_quiet().await;
    let memory = Memory {
        etcd: etcd.iter().flat_map(|e| e.pids()).filter_map(rss).collect(),
        baton: baton
            .iter()
            .flat_map(|b| b.pids())
            .filter_map(rss)
            .collect(),
    };
    Ok(Report {
        rows,
        memory,
        runs: opts.runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shape::{ReadKind, Target};

    fn run(rate_ops: u64, p99_us: u64, failed: u64) -> Measured {
        Measured {
            ops: rate_ops,
            secs: 1.0,
            p99_us,
            failed,
            ..Measured::default()
        }
    }

    #[test]
    fn rates_are_judged_higher_better_and_latencies_lower_better() {
        let read = Row {
            name: "read",
            shape: Shape::Read {
                kind: ReadKind::Local,
                conc: 64,
                conns: 3,
                target: Target::All,
            },
            etcd: vec![run(10_000, 0, 0), run(9_000, 0, 0), run(50_000, 0, 0)],
            baton: vec![run(31_000, 0, 0), run(29_000, 0, 0), run(1, 0, 0)],
        };
        // Medians: etcd 10,000/s, baton 29,000/s: 2.9×, short of 3×.
        assert!((read.advantage() - 2.9).abs() < 1e-9);
        assert!(!read.target().1);
        let watch = Row {
            name: "watch",
            shape: Shape::Watch {
                watchers: 10,
                conns: 1,
                rounds: 1,
                gap: Duration::from_secs(1),
            },
            etcd: vec![run(0, 8_000, 0)],
            baton: vec![run(0, 3_000, 0)],
        };
        assert!(watch.target().1);
        let missed = Row {
            baton: vec![run(0, 3_000, 1)],
            ..watch
        };
        assert!(!missed.target().1, "a missed event fails the target");
    }
}
