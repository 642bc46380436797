//! The load shapes `baton bench compare` runs against baton and etcd alike, and what one
//! run of a shape measured. Each system has its own runner (`bench::etcd`, `bench::load`);
//! both take a [`Shape`] and give a [`Measured`], so the table compares like with like.

use std::time::Duration;

/// Which members a shape's connections go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Connection i goes to member i mod 3.
    All,
    /// Every connection goes to the Raft leader.
    Leader,
}

/// Read consistency, in each system's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// baton: LINEARIZABLE GetPrimary; etcd: a default (linearizable) Range.
    Linearizable,
    /// baton: LOCAL GetPrimary; etcd: a serializable Range.
    Local,
}

/// One load shape. Every field is part of the comparison: both runners honour all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `conc` readers in a closed loop (next request when the answer arrives), spread
    /// round-robin over `conns` HTTP/2 connections. One key / one service.
    Read {
        kind: ReadKind,
        conc: usize,
        conns: usize,
        target: Target,
    },
    /// `streams` KeepAlive streams spread over `conns` connections to the leader (baton's
    /// agents renew with the leader, a follower refuses; etcd's followers would only relay,
    /// so both go to the leader). `interval: None` is a closed loop
    /// (the next renewal when the answer arrives); `Some(i)` renews every `i` per stream,
    /// starts staggered over the first interval. baton: every stream is its own agent id of
    /// the holding region of one service; etcd: every stream has its own lease.
    KeepAlive {
        streams: usize,
        conns: usize,
        interval: Option<Duration>,
    },
    /// `watchers` watches of one key / one service over `conns` connections to all members,
    /// then `rounds` writes `gap` apart that each produce one event. Latency is from the
    /// write's send to each watcher's receipt.
    Watch {
        watchers: usize,
        conns: usize,
        rounds: usize,
        gap: Duration,
    },
}

/// How long a closed-loop or paced shape runs. A watch shape ignores it (it has rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Load runs but is not measured.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
}

impl Shape {
    /// The timing the etcd peer's methodology uses for this shape: 1 s + 8 s, and
    /// 2 s + 10 s for paced KeepAlive.
    pub fn timing(&self) -> Timing {
        match self {
            Shape::KeepAlive {
                interval: Some(_), ..
            } => Timing {
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(10),
            },
            _ => Timing {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(8),
            },
        }
    }
}

/// What one run of a shape measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// Operations completed in the measured window (watch: events received).
    pub ops: u64,
    /// Length of the measured window in seconds.
    pub secs: f64,
    /// Requests that failed in the measured window.
    pub errors: u64,
    /// Streams (KeepAlive) or watchers that failed or missed an event: they count whole.
    pub failed: u64,
    /// Latency percentiles in microseconds. Watch: the median over rounds of each round's
    /// percentile (the etcd peer's methodology).
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Measured {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Figures from every latency of the window (microseconds, any order).
    pub fn from_latencies(mut lat_us: Vec<u64>, secs: f64, errors: u64, failed: u64) -> Measured {
        lat_us.sort_unstable();
        Measured {
            ops: lat_us.len() as u64,
            secs,
            errors,
            failed,
            p50_us: pct(&lat_us, 50.0),
            p99_us: pct(&lat_us, 99.0),
            max_us: lat_us.last().copied().unwrap_or(0),
        }
    }

    /// Watch figures: per round, the latencies of every watcher's receipt; each percentile
    /// is the median over rounds of that round's percentile. `ops` counts every receipt.
    pub fn from_rounds(rounds: Vec<Vec<u64>>, errors: u64, failed: u64) -> Measured {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut max = Vec::new();
        let mut ops = 0;
        for mut r in rounds {
            r.sort_unstable();
            ops += r.len() as u64;
            p50.push(pct(&r, 50.0));
            p99.push(pct(&r, 99.0));
            max.push(r.last().copied().unwrap_or(0));
        }
        Measured {
            ops,
            secs: 0.0,
            errors,
            failed,
            p50_us: median(p50),
            p99_us: median(p99),
            max_us: median(max),
        }
    }
}

/// p-th percentile (0-100) of sorted values, nearest rank; 0 when empty.
pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median of values (the lower one of an even count); 0 when empty.
pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        0
    } else {
        v[(v.len() - 1) / 2]
    }
}

/// The shapes of the comparison, named as the etcd peer names them.
pub fn shapes() -> Vec<(&'static str, Shape)> {
    let read = |kind, conns, target| Shape::Read {
        kind,
        conc: 64,
        conns,
        target,
    };
    vec![
        (
            "read-lin-c64-all",
            read(ReadKind::Linearizable, 3, Target::All),
        ),
        (
            "read-lin-c64-leader",
            read(ReadKind::Linearizable, 1, Target::Leader),
        ),
        ("read-local-c64-all", read(ReadKind::Local, 3, Target::All)),
        (
            "keepalive-64-closed",
            Shape::KeepAlive {
                streams: 64,
                conns: 3,
                interval: None,
            },
        ),
        (
            "keepalive-10k-1hz",
            Shape::KeepAlive {
                streams: 10_000,
                conns: 100,
                interval: Some(Duration::from_secs(1)),
            },
        ),
        (
            "watch-1k",
            Shape::Watch {
                watchers: 1_000,
                conns: 30,
                rounds: 5,
                gap: Duration::from_secs(1),
            },
        ),
        (
            "watch-10k",
            Shape::Watch {
                watchers: 10_000,
                conns: 100,
                rounds: 5,
                gap: Duration::from_secs(1),
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_rounds_are_medians_of_each_round() {
        let m = Measured::from_rounds(vec![vec![1, 2, 3], vec![10, 20, 30], vec![5, 6, 7]], 0, 0);
        assert_eq!(m.ops, 9);
        assert_eq!((m.p50_us, m.max_us), (6, 7));
        let l = Measured::from_latencies(vec![3, 1, 2, 100], 2.0, 1, 0);
        assert_eq!((l.ops, l.p50_us, l.max_us, l.rate()), (4, 3, 100, 2.0));
    }
}
