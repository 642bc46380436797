//! `[auth]` of `node.toml`: who may call the client API, and as what.
//!
//! ```toml
//! [auth]
//! enabled = true
//!
//! [[auth.tokens]]
//! name = "ci"                      # the principal recorded in the audit trail
//! sha256 = "<hex sha256 of the token>"   # `baton auth token ci` prints one
//! roles = ["operator"]
//!
//! [[auth.tokens]]
//! name = "agent-eu"
//! sha256 = "..."
//! roles = ["agent"]
//! services = ["payments"]          # empty: every service
//! regions = ["eu-west"]            # empty: every region
//!
//! [[auth.certs]]
//! name = "ops.example.internal"    # a DNS name or the common name of a client certificate
//! roles = ["admin"]
//! ```
//!
//! Tokens are stored only as their SHA-256, so the config file does not hold a secret.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::policy::{is_reserved, Role};
use crate::state::names::check_name;

/// A wrong `[auth]` field: its dotted name and what to do about it (`config` reports it as
/// a `ConfigError::Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted name of the field.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Authenticate every client call and check its role. Off (the default): anyone who
    /// reaches the client port can do anything (logged loudly at start).
    #[serde(default)]
    pub enabled: bool,
    /// Bearer tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Client certificate identities.
    #[serde(default)]
    pub certs: Vec<CertConfig>,
}

/// One bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal this token authenticates.
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// Roles granted.
    pub roles: Vec<Role>,
    /// Services the principal may act on (empty: all).
    #[serde(default)]
    pub services: Vec<String>,
    /// Regions the principal may act for (empty: all).
    #[serde(default)]
    pub regions: Vec<String>,
}

/// One client certificate identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// A DNS name or the common name of the certificate; also the principal's name.
    pub name: String,
    /// Roles granted.
    pub roles: Vec<Role>,
    /// Services the principal may act on (empty: all).
    #[serde(default)]
    pub services: Vec<String>,
    /// Regions the principal may act for (empty: all).
    #[serde(default)]
    pub regions: Vec<String>,
}

/// Longest principal name accepted.
pub const MAX_PRINCIPAL_LEN: usize = 128;

/// Checks a principal name: printable ASCII without spaces, not a reserved name.
pub fn check_principal(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_LEN {
        return Err(format!("must be 1-{MAX_PRINCIPAL_LEN} characters"));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{name:?} contains {c:?}; use printable ASCII without spaces (e.g. `ci` or `ops.example.internal`)"
        ));
    }
    if is_reserved(name) {
        return Err(format!(
            "{name:?} is reserved (the coordinator's own actions, anonymous callers or nodes use it); pick another name"
        ));
    }
    Ok(())
}

fn check_scope(
    field: &str,
    roles: &[Role],
    services: &[String],
    regions: &[String],
) -> Result<(), FieldError> {
    if roles.is_empty() {
        return Err(FieldError::invalid(
            &format!("{field}.roles"),
            "is empty: give at least one of reader, agent, operator, admin",
        ));
    }
    for s in services {
        check_name("service", s)
            .map_err(|m| FieldError::invalid(&format!("{field}.services"), m))?;
    }
    for r in regions {
        check_name("region", r).map_err(|m| FieldError::invalid(&format!("{field}.regions"), m))?;
    }
    Ok(())
}

impl AuthConfig {
    /// Checks names, hashes and roles; errors name the entry and say how to fix it.
    pub fn validate(&self, has_peer_listener: bool) -> Result<(), FieldError> {
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let field = format!("auth.tokens[{i}]");
            check_principal(&t.name)
                .map_err(|m| FieldError::invalid(&format!("{field}.name"), m))?;
            let hex_ok = t.sha256.len() == 64
                && t.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(FieldError::invalid(
                    &format!("{field}.sha256"),
                    "must be the 64 lowercase hex digits of the token's SHA-256 \
                     (`baton auth token NAME` prints a token and its hash; never put the token itself here)",
                ));
            }
            if !hashes.insert(t.sha256.as_str()) {
                return Err(FieldError::invalid(
                    &format!("{field}.sha256"),
                    "the same token is listed twice: give each principal its own token",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(FieldError::invalid(
                    &format!("{field}.name"),
                    format!("{:?} is listed twice: one entry per principal", t.name),
                ));
            }
            check_scope(&field, &t.roles, &t.services, &t.regions)?;
        }
        for (i, c) in self.certs.iter().enumerate() {
            let field = format!("auth.certs[{i}]");
            check_principal(&c.name)
                .map_err(|m| FieldError::invalid(&format!("{field}.name"), m))?;
            if !names.insert(c.name.as_str()) {
                return Err(FieldError::invalid(
                    &format!("{field}.name"),
                    format!("{:?} is listed twice: one entry per principal", c.name),
                ));
            }
            check_scope(&field, &c.roles, &c.services, &c.regions)?;
        }
        if self.enabled {
            if self.tokens.is_empty() && self.certs.is_empty() {
                return Err(FieldError::invalid(
                    "auth",
                    "enabled with no [[auth.tokens]] or [[auth.certs]]: nobody could call the cluster; \
                     add one (`baton auth token admin` prints a token entry)",
                ));
            }
            if !has_peer_listener {
                return Err(FieldError::invalid(
                    "auth.enabled",
                    "needs `peer_listen`: without it the internal Raft service answers on the client \
                     port, outside every role check; add peer_listen = \"host:port\" and each peer's \
                     peer address under [dial]",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hash.into(),
            roles: vec![Role::Reader],
            services: vec![],
            regions: vec![],
        }
    }

    #[test]
    fn tokens_are_checked() {
        let h = "a".repeat(64);
        let ok = AuthConfig {
            enabled: true,
            tokens: vec![token("ci", &h)],
            certs: vec![],
        };
        assert!(ok.validate(true).is_ok());
        let err = |c: &AuthConfig| c.validate(true).unwrap_err().to_string();
        assert!(ok
            .validate(false)
            .unwrap_err()
            .to_string()
            .contains("peer_listen"));
        let mut bad = ok.clone();
        bad.tokens[0].sha256 = "secret".into();
        assert!(err(&bad).contains("auth.tokens[0].sha256"));
        bad.tokens[0].sha256 = "A".repeat(64);
        assert!(err(&bad).contains("lowercase hex"));
        let mut bad = ok.clone();
        bad.tokens[0].name = "automation".into();
        assert!(err(&bad).contains("reserved"));
        let mut bad = ok.clone();
        bad.tokens[0].name = "two words".into();
        assert!(err(&bad).contains("printable ASCII"));
        let mut bad = ok.clone();
        bad.tokens.push(token("other", &h));
        assert!(err(&bad).contains("listed twice"));
        let mut bad = ok.clone();
        bad.tokens[0].roles.clear();
        assert!(err(&bad).contains("roles"));
        let mut bad = ok.clone();
        bad.tokens[0].regions = vec!["EU".into()];
        assert!(err(&bad).contains("auth.tokens[0].regions"));
        let empty = AuthConfig {
            enabled: true,
            ..Default::default()
        };
        assert!(err(&empty).contains("nobody could call"));
        assert!(AuthConfig::default().validate(false).is_ok());
    }

    #[test]
    fn roles_parse_from_toml() {
        let c: AuthConfig = toml::from_str(&format!(
            "enabled = true\n[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nroles = [\"agent\"]\nregions = [\"eu-west\"]\n",
            "0".repeat(64)
        ))
        .unwrap();
        assert_eq!(c.tokens[0].roles, vec![Role::Agent]);
        let bad: Result<AuthConfig, _> =
            toml::from_str("[[tokens]]\nname = \"a\"\nsha256 = \"\"\nroles = [\"root\"]\n");
        assert!(bad.unwrap_err().to_string().contains("root"));
    }
}
