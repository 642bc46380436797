//! Service definitions (failover groups) and their policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::limits::{
    check_len, check_spec_size, MAX_PLAN_STEPS, MAX_TARGET_LEN, MAX_URL_LEN, MIN_PROBE_INTERVAL_MS,
};
use super::names::check_name;
use super::workflow::{OnFailure, StepKind, StepSpec};

/// Smallest lease TTL the state machine accepts; the node also requires three heartbeats.
pub const MIN_TTL_MS: u64 = 100;
/// Largest lease TTL: a day. Longer leases make an outage wait too long.
pub const MAX_TTL_MS: u64 = 86_400_000;
/// Most candidate regions a service may list.
pub const MAX_REGIONS: usize = 32;

/// When the lease returns to the preferred region after a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FailbackMode {
    /// Automatically, once the preferred region has been healthy for the stable window.
    Auto,
    /// Only when an operator asks.
    #[default]
    Manual,
    /// Never, not even on request through the failback command.
    Never,
}

impl FailbackMode {
    /// Parses `auto`, `manual` or `never` (empty = manual).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "" | "manual" => Ok(Self::Manual),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "failback mode {other:?} is not one of auto, manual, never"
            )),
        }
    }

    /// The name used in configs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
            Self::Never => "never",
        }
    }
}

/// A health check of one region's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `http`, `tcp` or `grpc`.
    pub kind: String,
    /// URL (http) or host:port (tcp, grpc).
    pub target: String,
    /// Time between probes.
    pub interval_ms: u64,
    /// Time a probe may take.
    pub timeout_ms: u64,
    /// Consecutive failures before a vantage calls the region failing.
    pub threshold: u32,
}

/// A failover group's definition: candidate regions and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service's name (a DNS label).
    pub name: String,
    /// Candidate regions in preference order.
    pub regions: Vec<String>,
    /// Regions allowed to hold the lease; empty means every candidate.
    pub allowed_regions: Vec<String>,
    /// Lease time-to-live.
    pub lease_ttl_ms: u64,
    /// Region granted the lease at creation; `None` = first allowed candidate.
    pub initial_primary: Option<String>,
    /// Whether automation may move the lease.
    pub auto_failover: bool,
    /// Failback policy.
    pub failback: FailbackMode,
    /// How long the preferred region must be healthy before an automatic failback.
    pub failback_stable_ms: u64,
    /// Minimum time between automatic moves.
    pub cooldown_ms: u64,
    /// Automatic moves within `flap_window_ms` that pause automation (0 = no limit).
    pub flap_limit: u32,
    /// Window of the flap limit.
    pub flap_window_ms: u64,
    /// Health check per region.
    pub health: BTreeMap<String, HealthCheck>,
    /// Per-kind plans (`failover`, `switchover`, `failback`) replacing the default ones.
    pub plans: BTreeMap<String, Vec<StepSpec>>,
}

/// Checks a plan: known kind, one fence before exactly one grant, webhooks with http URLs.
pub fn validate_plan(kind: &str, steps: &[StepSpec]) -> Result<(), String> {
    if !["failover", "switchover", "failback"].contains(&kind) {
        return Err(format!(
            "plan {kind:?} is not one of failover, switchover, failback"
        ));
    }
    if steps.len() > MAX_PLAN_STEPS {
        return Err(format!(
            "plan {kind:?} has {} steps; the limit is {MAX_PLAN_STEPS}",
            steps.len()
        ));
    }
    let pos = |k: &StepKind| steps.iter().position(|s| &s.kind == k);
    let grants = steps.iter().filter(|s| s.kind == StepKind::Grant).count();
    let fences = steps.iter().filter(|s| s.kind == StepKind::Fence).count();
    if grants != 1 || fences != 1 {
        return Err(format!(
            "plan {kind:?} needs exactly one fence and one grant step"
        ));
    }
    if pos(&StepKind::Fence) > pos(&StepKind::Grant) {
        return Err(format!(
            "plan {kind:?}: fence must come before grant (never two holders)"
        ));
    }
    let grant = pos(&StepKind::Grant).unwrap_or(steps.len());
    if let Some(i) = steps
        .iter()
        .skip(grant + 1)
        .position(|s| s.on_failure == OnFailure::Rollback)
    {
        return Err(format!(
            "plan {kind:?}: step {} ({}) comes after the grant and cannot roll back (giving the \
             lease back would need the new holder fenced first); use abort: a lease its new \
             holder never renews expires and automation moves it on",
            grant + 2 + i,
            steps[grant + 1 + i].kind.name()
        ));
    }
    for s in steps {
        if let StepKind::Webhook(url) = &s.kind {
            check_len(&format!("plan {kind:?}: webhook URL"), url, MAX_URL_LEN)?;
            if !url.starts_with("http://") {
                return Err(format!(
                    "plan {kind:?}: webhook URL {url:?} must start with http://"
                ));
            }
        }
    }
    Ok(())
}

impl ServiceSpec {
    /// A spec with default policy for the given regions (first = preferred).
    pub fn new(name: &str, regions: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            allowed_regions: Vec::new(),
            lease_ttl_ms: 5_000,
            initial_primary: None,
            auto_failover: true,
            failback: FailbackMode::Manual,
            failback_stable_ms: 60_000,
            cooldown_ms: 60_000,
            flap_limit: 3,
            flap_window_ms: 600_000,
            health: BTreeMap::new(),
            plans: BTreeMap::new(),
        }
    }

    /// Whether `region` may hold this service's lease.
    pub fn is_allowed(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == region)
            && (self.allowed_regions.is_empty() || self.allowed_regions.iter().any(|r| r == region))
    }

    /// The region that gets the lease when the service is created.
    pub fn first_primary(&self) -> Option<&str> {
        match &self.initial_primary {
            Some(r) => Some(r.as_str()),
            None => self
                .regions
                .iter()
                .find(|r| self.is_allowed(r))
                .map(|r| r.as_str()),
        }
    }

    /// Checks the spec; the error says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        check_name("service", &self.name)?;
        if self.regions.is_empty() {
            return Err(format!(
                "service {:?} lists no regions: give candidate regions in preference order",
                self.name
            ));
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(format!(
                "service {:?} lists {} regions; the limit is {MAX_REGIONS}",
                self.name,
                self.regions.len()
            ));
        }
        for (i, r) in self.regions.iter().enumerate() {
            check_name("region", r)?;
            if self.regions[..i].contains(r) {
                return Err(format!(
                    "region {r:?} is listed twice in service {:?}",
                    self.name
                ));
            }
        }
        for r in &self.allowed_regions {
            check_name("region", r)?;
            if !self.regions.contains(r) {
                return Err(format!(
                    "allowed region {r:?} is not a candidate region of {:?}; add it to regions first",
                    self.name
                ));
            }
        }
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&self.lease_ttl_ms) {
            return Err(format!(
                "lease TTL {} ms is out of range: use {MIN_TTL_MS} ms to {MAX_TTL_MS} ms",
                self.lease_ttl_ms
            ));
        }
        match self.first_primary() {
            None => {
                return Err(format!(
                    "service {:?} has no allowed candidate region to start on",
                    self.name
                ))
            }
            Some(p) if !self.is_allowed(p) => {
                return Err(format!(
                    "initial primary {p:?} is not an allowed candidate region of {:?}",
                    self.name
                ))
            }
            Some(_) => {}
        }
        if self.flap_limit > 0 && self.flap_window_ms == 0 {
            return Err("flap_limit needs a non-zero flap_window".into());
        }
        for (kind, steps) in &self.plans {
            validate_plan(kind, steps)?;
        }
        for (region, check) in &self.health {
            if !self.regions.contains(region) {
                return Err(format!(
                    "health check for {region:?}, which is not a candidate region of {:?}",
                    self.name
                ));
            }
            if !["http", "tcp", "grpc"].contains(&check.kind.as_str()) {
                return Err(format!(
                    "health check kind {:?} for {region:?} is not one of http, tcp, grpc",
                    check.kind
                ));
            }
            if check.target.is_empty() {
                return Err(format!("health check for {region:?} has no target"));
            }
            check_len(
                &format!("health check target for {region:?}"),
                &check.target,
                MAX_TARGET_LEN,
            )?;
            if check.interval_ms == 0 || check.timeout_ms == 0 || check.threshold == 0 {
                return Err(format!(
                    "health check for {region:?} needs a non-zero interval, timeout and threshold"
                ));
            }
            if check.interval_ms < MIN_PROBE_INTERVAL_MS {
                return Err(format!(
                    "health check for {region:?}: interval {} ms is below the minimum of \
                     {MIN_PROBE_INTERVAL_MS} ms",
                    check.interval_ms
                ));
            }
        }
        check_spec_size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::workflow::{default_plan, OnFailure};
    use super::*;

    #[test]
    fn validate_explains_bad_specs() {
        let ok = ServiceSpec::new("payments", &["us-east", "eu-west"]);
        assert!(ok.validate().is_ok());
        assert_eq!(ok.first_primary(), Some("us-east"));

        let mut s = ok.clone();
        s.regions.clear();
        assert!(s.validate().unwrap_err().contains("no regions"));

        let mut s = ok.clone();
        s.regions.push("us-east".into());
        assert!(s.validate().unwrap_err().contains("twice"));

        let mut s = ok.clone();
        s.allowed_regions = vec!["ap-south".into()];
        assert!(s.validate().unwrap_err().contains("not a candidate"));

        let mut s = ok.clone();
        s.lease_ttl_ms = 10;
        assert!(s.validate().unwrap_err().contains("out of range"));

        let mut s = ok.clone();
        s.initial_primary = Some("eu-west".into());
        s.allowed_regions = vec!["us-east".into()];
        assert!(s.validate().unwrap_err().contains("not an allowed"));

        let mut s = ok.clone();
        s.allowed_regions = vec!["eu-west".into()];
        assert_eq!(s.first_primary(), Some("eu-west"));

        let check = |target: String, interval_ms: u64| HealthCheck {
            kind: "http".into(),
            target,
            interval_ms,
            timeout_ms: 50,
            threshold: 1,
        };
        let mut s = ok.clone();
        s.health.insert(
            "us-east".into(),
            check("x".repeat(MAX_TARGET_LEN + 1), 1000),
        );
        let e = s.validate().unwrap_err();
        assert!(e.contains("target") && e.contains("limit is 512"), "{e}");

        let mut s = ok.clone();
        s.health.insert("us-east".into(), check("h:1".into(), 10));
        assert!(s.validate().unwrap_err().contains("minimum of 100 ms"));

        let mut s = ok.clone();
        let mut plan = default_plan(super::super::workflow::RunKind::Switchover);
        plan.insert(
            0,
            StepSpec {
                kind: StepKind::Webhook(format!("http://{}", "u".repeat(MAX_URL_LEN))),
                timeout_ms: 0,
                on_failure: OnFailure::Abort,
            },
        );
        s.plans.insert("switchover".into(), plan);
        assert!(s.validate().unwrap_err().contains("webhook URL"));

        // Every plan full of long (each allowed) webhook URLs: the whole spec is too big.
        let mut s = ok;
        for kind in ["failover", "switchover", "failback"] {
            let mut plan = default_plan(super::super::workflow::RunKind::Switchover);
            while plan.len() < MAX_PLAN_STEPS {
                plan.insert(
                    0,
                    StepSpec {
                        kind: StepKind::Webhook(format!("http://{}", "u".repeat(1000))),
                        timeout_ms: 0,
                        on_failure: OnFailure::Abort,
                    },
                );
            }
            s.plans.insert(kind.into(), plan);
        }
        let e = s.validate().unwrap_err();
        assert!(e.contains("limit is 32768"), "{e}");
    }
}
