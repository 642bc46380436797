//! Configuration files: a node's `node.toml` and declarative service definitions.
//!
//! Every duration accepts humantime strings (`750ms`, `2s`, `1m 30s`). Unknown keys are
//! refused so a typo does not silently fall back to a default; errors name the field.

mod client_tls;
pub mod limits;
mod peer;
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

// `[auth]` is parsed by the auth layer's own types.
pub use crate::auth::config::{check_principal, AuthConfig, CertConfig, TokenConfig};
pub use client_tls::{ClientAuth, ClientTlsConfig};
pub use limits::LimitsConfig;
pub use peer::PeerTlsConfig;
pub use service::{HealthConfig, ServiceConfig, ServiceFile};

use crate::state::names::check_name;

/// A configuration problem, said so that a person can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML does not parse or has a wrong field.
    #[error("{path}: {message}")]
    Parse {
        /// The file that does not parse.
        path: PathBuf,
        /// toml's message, which names the field and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted name of the field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Node id (unique, non-zero).
    pub id: u64,
    /// `host:port` the node serves on.
    pub addr: String,
    /// Its region.
    pub region: String,
}

// `[timing]` and the TTL rule live with the lease rules they parameterize.
pub use crate::control::timing::{check_ttl, TimingConfig};

/// Longest duration any `[timing]` value may be.
pub const MAX_TIMING: Duration = Duration::from_secs(3600);

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_behind_snapshot: u64,
    /// Revisions kept for watch resume.
    pub watch_history: usize,
    /// Audit entries kept on the node (and sent in snapshots) behind the newest, counted at
    /// each snapshot: older ones are compacted away, leaving a checkpoint (seq and hash of
    /// the last one dropped) the kept chain links to. Between snapshots up to
    /// `snapshot_every` more accumulate.
    pub audit_retention: u64,
    /// Archive compacted audit entries to checksummed segment files in
    /// `<data_dir>/raft/audit-archive/` instead of dropping them.
    pub audit_archive: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            watch_history: crate::state::history::DEFAULT_HISTORY,
            audit_retention: crate::raft::store::DEFAULT_AUDIT_RETENTION,
            audit_archive: true,
        }
    }
}

/// A node's configuration (`baton server --config node.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster name: nodes of another cluster are refused.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// This node's id (non-zero, unique in the cluster).
    pub id: u64,
    /// This node's region.
    pub region: String,
    /// Address to listen on for the public API (and Raft when `peer_listen` is absent).
    pub listen: String,
    /// Address to listen on for the internal Raft transport only (see `config::peer`).
    /// Absent: Raft is served on `listen` too, to anyone who reaches it (logged loudly).
    #[serde(default)]
    pub peer_listen: Option<String>,
    /// Mutual TLS on the peer listener and for dials to peers (needs `peer_listen`).
    #[serde(default)]
    pub peer_tls: Option<PeerTlsConfig>,
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); none when
    /// unset. For the monitoring network only: it needs no credentials.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// TLS on the client listener (see `config::client_tls`); absent: plaintext.
    #[serde(default)]
    pub client_tls: Option<ClientTlsConfig>,
    /// Address other nodes and clients use to reach this node (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where the Raft log, snapshots and audit trail live.
    pub data_dir: PathBuf,
    /// The initial voters (including this node). Empty: this node waits to be added.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Per-peer dial address overrides (node id → `host:port`), e.g. through a proxy.
    #[serde(default)]
    pub dial: BTreeMap<String, String>,
    /// `[timing]`: heartbeat, election timeouts, drift and margin (see `control::timing`).
    #[serde(default)]
    pub timing: TimingConfig,
    /// `[storage]`: snapshot cadence and watch history.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Connection and stream limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Who may call the client API (see `config::auth`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Services created when the cluster is first initialised.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

fn default_cluster() -> String {
    "baton".to_string()
}

impl NodeConfig {
    /// Reads and validates a node config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The address peers and clients reach this node at.
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Dial address for a peer, honouring `dial` overrides.
    pub fn dial_override(&self, id: u64) -> Option<&str> {
        self.dial.get(&id.to_string()).map(String::as_str)
    }

    /// Checks ranges and consistency; errors name the field and say how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::invalid("id", "must be a positive integer"));
        }
        check_name("cluster", &self.cluster).map_err(|m| ConfigError::invalid("cluster", m))?;
        check_name("region", &self.region).map_err(|m| ConfigError::invalid("region", m))?;
        check_addr(&self.listen).map_err(|m| ConfigError::invalid("listen", m))?;
        if let Some(a) = &self.advertise {
            check_addr(a).map_err(|m| ConfigError::invalid("advertise", m))?;
        }
        let t = &self.timing;
        // Bounded first: the checks below multiply these, and the node adds them to
        // instants, which panics past the clock's range (a config must never crash a node).
        for (field, d) in [
            ("timing.heartbeat", t.heartbeat),
            ("timing.election_timeout_min", t.election_timeout_min),
            ("timing.election_timeout_max", t.election_timeout_max),
            (
                "timing.install_snapshot_timeout",
                t.install_snapshot_timeout,
            ),
            ("timing.margin", t.margin),
        ] {
            if d > MAX_TIMING {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{} is too long; the limit is {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_TIMING)
                    ),
                ));
            }
        }
        if t.heartbeat.is_zero() {
            return Err(ConfigError::invalid(
                "timing.heartbeat",
                "must be above zero",
            ));
        }
        if t.election_timeout_min < t.heartbeat * 3 {
            return Err(ConfigError::invalid(
                "timing.election_timeout_min",
                format!(
                    "{} is less than three heartbeats ({}): raise it or lower timing.heartbeat",
                    humantime::format_duration(t.election_timeout_min),
                    humantime::format_duration(t.heartbeat * 3)
                ),
            ));
        }
        if t.election_timeout_max <= t.election_timeout_min {
            return Err(ConfigError::invalid(
                "timing.election_timeout_max",
                "must be greater than timing.election_timeout_min",
            ));
        }
        if !(0.0..0.5).contains(&t.drift) {
            return Err(ConfigError::invalid(
                "timing.drift",
                "must be in [0, 0.5): it is a fraction (0.05 = 5%)",
            ));
        }
        if self.storage.snapshot_every == 0 {
            return Err(ConfigError::invalid(
                "storage.snapshot_every",
                "must be above zero",
            ));
        }
        if self.storage.audit_retention == 0 {
            return Err(ConfigError::invalid(
                "storage.audit_retention",
                "must be at least 1: the kept trail links to the checkpoint through its first entry",
            ));
        }
        if self.storage.watch_history == 0 {
            return Err(ConfigError::invalid(
                "storage.watch_history",
                "must be above zero",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = |name: &str| format!("peers[{i}].{name}");
            if p.id == 0 {
                return Err(ConfigError::invalid(&f("id"), "must be a positive integer"));
            }
            if !seen.insert(p.id) {
                return Err(ConfigError::invalid(
                    &f("id"),
                    format!("node {} is listed twice", p.id),
                ));
            }
            check_addr(&p.addr).map_err(|m| ConfigError::invalid(&f("addr"), m))?;
            check_name("region", &p.region).map_err(|m| ConfigError::invalid(&f("region"), m))?;
        }
        if !self.peers.is_empty() && !seen.contains(&self.id) {
            return Err(ConfigError::invalid(
                "peers",
                format!(
                    "this node (id {}) must be listed among the initial peers",
                    self.id
                ),
            ));
        }
        for (k, v) in &self.dial {
            if k.parse::<u64>().is_err() {
                return Err(ConfigError::invalid(
                    &format!("dial.{k}"),
                    "keys are node ids (integers)",
                ));
            }
            check_addr(v).map_err(|m| ConfigError::invalid(&format!("dial.{k}"), m))?;
        }
        peer::validate(self)?;
        client_tls::validate(self)?;
        self.limits
            .check()
            .map_err(|(field, m)| ConfigError::invalid(&format!("limits.{field}"), m))?;
        self.auth
            .validate(self.peer_listen.is_some())
            .map_err(|e| ConfigError::invalid(&e.field, e.message))?;
        for (i, s) in self.services.iter().enumerate() {
            let spec = s
                .to_spec()
                .map_err(|m| ConfigError::invalid(&format!("services[{i}]"), m))?;
            check_ttl(&spec, t)
                .map_err(|m| ConfigError::invalid(&format!("services[{i}].lease_ttl"), m))?;
        }
        Ok(())
    }
}

pub(crate) fn check_addr(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{addr:?} is not host:port (for example 127.0.0.1:7101)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, String> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const BASE: &str = r#"
        id = 1
        region = "us-east"
        listen = "127.0.0.1:7101"
        data_dir = "/tmp/x"
        [[peers]]
        id = 1
        addr = "127.0.0.1:7101"
        region = "us-east"
    "#;

    #[test]
    fn a_minimal_config_loads_with_defaults() {
        let cfg = parse(BASE).unwrap();
        assert_eq!(cfg.cluster, "baton");
        assert_eq!(cfg.timing, TimingConfig::default());
    }

    /// Found by the `config` fuzz target: `heartbeat * 3` overflowed and validation panicked.
    #[test]
    fn a_huge_timing_value_is_refused_not_a_panic() {
        let e = parse(&format!(
            "{BASE}\n[timing]\nheartbeat = \"6148914691236517206s\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("timing.heartbeat") && e.contains("limit is 1h"),
            "{e}"
        );
        for field in ["election_timeout_max", "install_snapshot_timeout", "margin"] {
            let e = parse(&format!(
                "{BASE}\n[timing]\n{field} = \"18446744073709551615s\"\n"
            ))
            .unwrap_err();
            assert!(e.contains(field) && e.contains("limit is 1h"), "{e}");
        }
        let timing = TimingConfig {
            heartbeat: Duration::MAX,
            ..TimingConfig::default()
        };
        let spec = crate::state::ServiceSpec::new("payments", &["us-east"]);
        assert!(check_ttl(&spec, &timing)
            .unwrap_err()
            .contains("three heartbeats"));
    }

    #[test]
    fn durations_take_humantime() {
        let cfg = parse(&format!(
            "{BASE}\n[timing]\nheartbeat = \"50ms\"\nelection_timeout_min = \"300ms\"\nelection_timeout_max = \"1s\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.timing.heartbeat, Duration::from_millis(50));
        assert_eq!(cfg.timing.election_timeout_max, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            parse(&BASE.replace("id = 1\n        region", "id = 0\n        region")).unwrap_err();
        assert!(e.starts_with("id:"), "{e}");
        let e = parse(&format!("{BASE}\n[timing]\nheartbeat = \"soon\"\n")).unwrap_err();
        assert!(e.contains("heartbeat"), "{e}");
        let e = parse(&format!(
            "{BASE}\n[timing]\nelection_timeout_min = \"100ms\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("timing.election_timeout_min"), "{e}");
        let e = parse(&format!("{BASE}\nlisten_addr = \"x\"\n")).unwrap_err();
        assert!(e.contains("listen_addr"), "{e}");
        let e = parse(&BASE.replace("127.0.0.1:7101\"\n        data", "nowhere\"\n        data"))
            .unwrap_err();
        assert!(e.starts_with("listen:"), "{e}");
    }

    #[test]
    fn the_example_cluster_configs_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster");
        let mut n = 0;
        for dir in ["three-region", "five-node"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert_eq!(n, 8);
    }

    #[test]
    fn a_service_ttl_below_the_election_timeout_is_refused() {
        let t = TimingConfig::default();
        let mut spec = crate::state::ServiceSpec::new("payments", &["us-east"]);
        spec.lease_ttl_ms = t.election_timeout_min.as_millis() as u64 - 1;
        let e = check_ttl(&spec, &t).unwrap_err();
        assert!(e.contains("election timeout"), "{e}");
        spec.lease_ttl_ms += 1;
        assert_eq!(check_ttl(&spec, &t), Ok(()));
    }

    #[test]
    fn a_service_ttl_below_three_heartbeats_is_refused() {
        let e = parse(&format!(
            "{BASE}\n[[services]]\nname = \"payments\"\nregions = [\"us-east\"]\nlease_ttl = \"200ms\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("three heartbeats"), "{e}");
    }
}
