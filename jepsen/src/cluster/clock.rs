//! The clock libfaketime runs a node on, and the setting written to the node's faketime
//! file to change it without ever turning the clock back.

/// Upper bound (seconds) on the lag between spawning a node and libfaketime initialising
/// in it (see [`FakeClock::change`]).
const START_SLACK_S: f64 = 0.25;

/// A node's clock as libfaketime is told to run it: `fake = real + offset +
/// (rate - 1) * (now - process start)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct FakeClock {
    offset_s: f64,
    rate: f64,
}

impl FakeClock {
    pub(super) const REAL: FakeClock = FakeClock {
        offset_s: 0.0,
        rate: 1.0,
    };

    /// How far ahead of real time the clock is `elapsed_s` after the process started.
    fn ahead_at(&self, elapsed_s: f64) -> f64 {
        self.offset_s + (self.rate - 1.0) * elapsed_s
    }

    /// The setting that keeps the clock continuous at `elapsed_s`, then jumps it by
    /// `jump_s` and runs it at `rate` from there.
    ///
    /// libfaketime measures its rate from when it initialised in the process, a little
    /// after the harness's `started`; by that lag, a faster rate would pull the clock
    /// *back* at the change. A small forward jump ([`START_SLACK_S`] per unit of rate
    /// increase) covers the lag, so the clock never runs backwards.
    pub(super) fn change(&self, elapsed_s: f64, jump_s: f64, rate: f64) -> FakeClock {
        let slack = (rate - self.rate).max(0.0) * START_SLACK_S;
        let ahead = self.ahead_at(elapsed_s) + jump_s + slack;
        FakeClock {
            offset_s: ahead - (rate - 1.0) * elapsed_s,
            rate,
        }
    }

    /// libfaketime's `FAKETIME` syntax: `+1.500000 x2`.
    pub(super) fn spec(&self) -> String {
        let sign = if self.offset_s < 0.0 { '-' } else { '+' };
        format!("{sign}{:.6} x{}", self.offset_s.abs(), self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_changes_are_continuous_apart_from_the_jump() {
        let c = FakeClock::REAL;
        // At 10 s, run at double speed: only the start slack as a jump.
        let fast = c.change(10.0, 0.0, 2.0);
        assert!((fast.ahead_at(10.0) - START_SLACK_S).abs() < 1e-9);
        // 5 s later the clock is 5 s (plus slack) ahead; healing keeps it there.
        assert!((fast.ahead_at(15.0) - 5.0 - START_SLACK_S).abs() < 1e-9);
        let healed = fast.change(15.0, 0.0, 1.0);
        assert!((healed.ahead_at(15.0) - fast.ahead_at(15.0)).abs() < 1e-9);
        assert!((healed.ahead_at(100.0) - healed.ahead_at(15.0)).abs() < 1e-9);
        // A forward jump of 3 s.
        let jumped = healed.change(20.0, 3.0, 1.0);
        assert!((jumped.ahead_at(20.0) - healed.ahead_at(20.0) - 3.0).abs() < 1e-9);
        // Even if libfaketime started its rate clock up to the slack later than we think,
        // a rate increase never moves the clock back.
        for lag in [0.0, 0.1, START_SLACK_S] {
            let before = healed.ahead_at(30.0 - lag) + (30.0 - lag);
            let after = {
                let f = healed.change(30.0, 0.0, 2.0);
                f.offset_s + f.rate * (30.0 - lag)
            };
            assert!(after >= before - 1e-9, "lag {lag}: {before} -> {after}");
        }
        assert_eq!(FakeClock::REAL.spec(), "+0.000000 x1");
        assert_eq!(
            FakeClock {
                offset_s: -1.5,
                rate: 0.5
            }
            .spec(),
            "-1.500000 x0.5"
        );
    }
}
