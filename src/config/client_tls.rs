//! The client listener's TLS (`[client_tls]` in `node.toml`).
//!
//! `cert` and `key` are the node's server identity on its client address (also presented
//! when it forwards requests to the leader's client address). With `ca`, clients are asked
//! for a certificate signed by it: `client_auth = "required"` (the default with `ca`)
//! refuses those without one, `"optional"` lets them in unauthenticated. Files are reloaded
//! on change and on SIGHUP.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, NodeConfig};

/// Whether the client listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates (no `ca`).
    None,
    /// A client certificate is checked when sent; clients without one get in.
    Optional,
    /// Every client must present a certificate of `ca`.
    Required,
}

/// TLS on the client listener: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// This node's certificate on the client address: valid for the host names or IP
    /// addresses clients dial (and, to forward to other nodes, usable for client auth).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to; absent: none asked for.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// `"required"` (default with `ca`) or `"optional"`; needs `ca`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

impl ClientTlsConfig {
    /// The effective client authentication.
    pub fn client_auth(&self) -> ClientAuth {
        match (&self.ca, self.client_auth) {
            (None, _) => ClientAuth::None,
            (Some(_), None) => ClientAuth::Required,
            (Some(_), Some(a)) => a,
        }
    }
}

/// Checks `[client_tls]`.
pub(super) fn validate(cfg: &NodeConfig) -> Result<(), ConfigError> {
    let Some(tls) = &cfg.client_tls else {
        return Ok(());
    };
    if cfg.peer_listen.is_none() {
        // Raft would share the client listener, where peers dial without a client identity.
        return Err(ConfigError::invalid(
            "client_tls",
            "needs `peer_listen`: with TLS on the client address, Raft must have its own \
             listener; add peer_listen = \"host:port\" (and [peer_tls], [dial])",
        ));
    }
    let files = [("cert", Some(&tls.cert)), ("key", Some(&tls.key))];
    for (field, path) in files.into_iter().chain([("ca", tls.ca.as_ref())]) {
        if path.is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::invalid(
                &format!("client_tls.{field}"),
                "is empty: name a PEM file (`baton cert` makes a dev CA and certificates)",
            ));
        }
    }
    match (&tls.ca, tls.client_auth) {
        (None, Some(ClientAuth::Required | ClientAuth::Optional)) => Err(ConfigError::invalid(
            "client_tls.client_auth",
            "needs `ca`: client certificates are verified against it; add \
             ca = \"<the CA that signs client certificates>\"",
        )),
        (Some(_), Some(ClientAuth::None)) => Err(ConfigError::invalid(
            "client_tls.client_auth",
            "\"none\" with `ca` set: use \"required\" or \"optional\", or remove `ca`",
        )),
        // Forwarding to the leader's client address verifies it against a CA.
        (None, _) if cfg.peer_tls.is_none() => Err(ConfigError::invalid(
            "client_tls.ca",
            "missing: nodes forward requests to the leader's client address and verify its \
             certificate against `ca` (or [peer_tls] ca); add ca = \"ca.pem\"",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        id = 1
        region = "us-east"
        listen = "127.0.0.1:7101"
        peer_listen = "127.0.0.1:7201"
        data_dir = "/tmp/x"
    "#;

    fn check(tables: &str) -> Result<NodeConfig, String> {
        let cfg: NodeConfig =
            toml::from_str(&format!("{BASE}\n{tables}")).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn client_auth_defaults_to_required_with_a_ca() {
        let cfg =
            check("[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nca = \"ca.pem\"\n").unwrap();
        assert_eq!(cfg.client_tls.unwrap().client_auth(), ClientAuth::Required);
        let cfg = check(
            "[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nca = \"ca.pem\"\nclient_auth = \"optional\"\n",
        )
        .unwrap();
        assert_eq!(cfg.client_tls.unwrap().client_auth(), ClientAuth::Optional);
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            check("[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nclient_auth = \"required\"\n")
                .unwrap_err();
        assert!(e.starts_with("client_tls.client_auth: needs `ca`"), "{e}");
        let e = check("[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\n").unwrap_err();
        assert!(e.starts_with("client_tls.ca: missing"), "{e}");
        let cfg: NodeConfig = toml::from_str(&format!(
            "{}\n[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nca = \"c\"\n",
            BASE.replace("peer_listen = \"127.0.0.1:7201\"", "")
        ))
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with("client_tls: needs `peer_listen`"), "{e}");
        let e = check("[client_tls]\ncert = \"\"\nkey = \"n.key\"\nca = \"c\"\n").unwrap_err();
        assert!(e.starts_with("client_tls.cert: is empty"), "{e}");
        let e = check("[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nca = \"c\"\nclient_auth = \"sometimes\"\n")
            .unwrap_err();
        assert!(e.contains("client_auth"), "{e}");
        let e =
            check("[client_tls]\ncert = \"n.pem\"\nkey = \"n.key\"\ncacert = \"c\"\n").unwrap_err();
        assert!(e.contains("cacert"), "{e}");
    }
}
