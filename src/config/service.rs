//! Service definitions in TOML (`baton service apply FILE`, and `[[services]]` in node.toml).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::state::{FailbackMode, HealthCheck, OnFailure, ServiceSpec, StepKind, StepSpec};

/// A health check as written in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `http`, `tcp` or `grpc`.
    pub kind: String,
    /// URL or host:port.
    pub target: String,
    /// Time between probes.
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// Probe timeout.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive failures before the region is failing from this vantage.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_threshold() -> u32 {
    3
}

/// A service as written in TOML; durations are humantime strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Candidate regions in preference order.
    pub regions: Vec<String>,
    /// Regions allowed to hold the lease (default: all candidates).
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Lease time-to-live.
    #[serde(with = "humantime_serde", default = "default_ttl")]
    pub lease_ttl: Duration,
    /// Region that starts as primary (default: the first allowed candidate).
    #[serde(default)]
    pub initial_primary: Option<String>,
    /// Whether automation may move the lease.
    #[serde(default = "default_true")]
    pub auto_failover: bool,
    /// `auto`, `manual` or `never`.
    #[serde(default = "default_failback")]
    pub failback: String,
    /// Healthy time before an automatic failback.
    #[serde(with = "humantime_serde", default = "default_stable")]
    pub failback_stable: Duration,
    /// Minimum time between automatic moves.
    #[serde(with = "humantime_serde", default = "default_cooldown")]
    pub cooldown: Duration,
    /// Automatic moves within `flap_window` that pause automation (0 = off).
    #[serde(default = "default_flap_limit")]
    pub flap_limit: u32,
    /// Window of the flap limit.
    #[serde(with = "humantime_serde", default = "default_flap_window")]
    pub flap_window: Duration,
    /// Health check per region.
    #[serde(default)]
    pub health: BTreeMap<String, HealthConfig>,
    /// Plans per run kind (`failover`, `switchover`, `failback`) replacing the defaults.
    #[serde(default)]
    pub plans: BTreeMap<String, Vec<StepConfig>>,
}

/// One step of a plan as written in TOML: `{ step = "approval", timeout = "10m" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// precheck, fence, grant, webhook, wait-healthy, approval, approval-by-another, verify.
    pub step: String,
    /// How long it may take (absent = no limit).
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    /// abort (default), rollback, retry(N).
    #[serde(default)]
    pub on_failure: String,
    /// For webhook steps.
    #[serde(default)]
    pub url: Option<String>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
fn default_failback() -> String {
    "manual".into()
}
fn default_stable() -> Duration {
    Duration::from_secs(60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn default_flap_limit() -> u32 {
    3
}
fn default_flap_window() -> Duration {
    Duration::from_secs(600)
}

impl ServiceConfig {
    /// Converts to the replicated definition, validating it.
    pub fn to_spec(&self) -> Result<ServiceSpec, String> {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let mut plans = BTreeMap::new();
        for (kind, steps) in &self.plans {
            let steps = steps
                .iter()
                .map(|st| {
                    Ok(StepSpec {
                        kind: StepKind::parse(&st.step, st.url.as_deref())?,
                        timeout_ms: st.timeout.map_or(0, ms),
                        on_failure: OnFailure::parse(&st.on_failure)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("plans.{kind}: {e}"))?;
            plans.insert(kind.clone(), steps);
        }
        let spec = ServiceSpec {
            plans,
            name: self.name.clone(),
            regions: self.regions.clone(),
            allowed_regions: self.allowed_regions.clone(),
            lease_ttl_ms: ms(self.lease_ttl),
            initial_primary: self.initial_primary.clone(),
            auto_failover: self.auto_failover,
            failback: FailbackMode::parse(&self.failback)?,
            failback_stable_ms: ms(self.failback_stable),
            cooldown_ms: ms(self.cooldown),
            flap_limit: self.flap_limit,
            flap_window_ms: ms(self.flap_window),
            health: self
                .health
                .iter()
                .map(|(region, h)| {
                    (
                        region.clone(),
                        HealthCheck {
                            kind: h.kind.clone(),
                            target: h.target.clone(),
                            interval_ms: ms(h.interval),
                            timeout_ms: ms(h.timeout),
                            threshold: h.threshold,
                        },
                    )
                })
                .collect(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// A file of service definitions: `[[services]]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// The services.
    pub services: Vec<ServiceConfig>,
}

impl ServiceFile {
    /// Reads and validates a service file.
    pub fn load(path: &Path) -> Result<Vec<ServiceSpec>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ServiceFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.to_spec()
                    .map_err(|m| ConfigError::invalid(&format!("services[{i}] ({})", s.name), m))
            })
            .collect()
    }
}
