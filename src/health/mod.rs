//! Health probes: every coordinator node is a vantage point in its region and probes every
//! region's endpoint of every service.
//!
//! The pieces, from the wire up:
//!
//! - [`probe`]: one probe of one [`HealthCheck`](crate::state::HealthCheck) — TCP connect,
//!   HTTP/1.1 GET (status and optional body match), gRPC `grpc.health.v1.Health/Check` —
//!   bounded by the check's timeout.
//! - [`streak`] (pure): per (service, region) consecutive-result counters with hysteresis;
//!   turns probe results into an [`Observation`] only when this vantage's verdict changes.
//! - [`verdict`] (pure): from the latest observation of every vantage node, whether a region
//!   is down for a service — only when a majority of vantage *regions* see it failing, so one
//!   partitioned node can never fail a region over.
//! - [`runner`]: the per-node task that runs every check at its interval, feeds the streak
//!   tracker and hands observation changes to the caller, who commits them through Raft.
//!
//! Only observation *changes* are meant to be replicated; individual probe results stay local.

pub mod probe;
pub mod runner;
pub mod streak;
pub mod verdict;

pub use probe::{probe_check, validate_check, NetProber, ProbeOutcome, ProbeTarget, Prober};
pub use runner::{CheckSet, ProbeRunner, Verdicts};
pub use streak::{Observation, StreakTracker};
pub use verdict::{decide, RegionVerdict, VantageView};
