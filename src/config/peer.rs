//! The peer (Raft) listener of `node.toml`: `peer_listen` and `[peer_tls]`.
//!
//! With `peer_listen`, the internal Raft service leaves the client address; peers then
//! reach each other at the addresses under `[dial]` (each peer's `peer_listen`). With
//! `[peer_tls]`, the peer listener accepts only mutual TLS from certificates of the cluster
//! CA, and this node dials its peers with its own certificate.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_addr, ConfigError, NodeConfig};

/// Mutual TLS between nodes: PEM files, read at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// The cluster CA: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (signed by `ca`), presented to peers both ways. It must carry
    /// the DNS name `node-<id>` (peers accept Raft messages only from the node it names) and
    /// the host name or IP address peers dial it at.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Checks `peer_listen`, `peer_tls` and that every initial peer can be dialled at its peer
/// address.
pub(super) fn validate(cfg: &NodeConfig) -> Result<(), ConfigError> {
    let Some(peer_listen) = &cfg.peer_listen else {
        if cfg.peer_tls.is_some() {
            return Err(ConfigError::invalid(
                "peer_tls",
                "needs `peer_listen`: TLS protects the separate peer listener; add \
                 peer_listen = \"host:port\" (and each peer's peer address under [dial])",
            ));
        }
        return Ok(());
    };
    check_addr(peer_listen).map_err(|m| ConfigError::invalid("peer_listen", m))?;
    if peer_listen == &cfg.listen {
        return Err(ConfigError::invalid(
            "peer_listen",
            "must differ from `listen`: the peer listener is a separate port",
        ));
    }
    for p in cfg.peers.iter().filter(|p| p.id != cfg.id) {
        if cfg.dial_override(p.id).is_none() {
            return Err(ConfigError::invalid(
                &format!("dial.\"{}\"", p.id),
                format!(
                    "missing: with `peer_listen` set, Raft goes to each peer's peer address; \
                     add [dial] \"{}\" = \"<node {}'s peer_listen host:port>\"",
                    p.id, p.id
                ),
            ));
        }
    }
    if let Some(tls) = &cfg.peer_tls {
        for (field, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    &format!("peer_tls.{field}"),
                    "is empty: name a PEM file (`baton cert` makes a dev CA and certificates)",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        id = 1
        region = "us-east"
        listen = "127.0.0.1:7101"
        data_dir = "/tmp/x"
        [[peers]]
        id = 1
        addr = "127.0.0.1:7101"
        region = "us-east"
        [[peers]]
        id = 2
        addr = "127.0.0.1:7102"
        region = "eu-west"
    "#;

    fn check(top: &str, tables: &str) -> Result<NodeConfig, String> {
        let cfg: NodeConfig =
            toml::from_str(&format!("{top}\n{BASE}\n{tables}")).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn peer_listen_needs_a_dial_address_for_every_peer() {
        check("", "").unwrap();
        let e = check("peer_listen = \"127.0.0.1:7201\"", "").unwrap_err();
        assert!(e.starts_with("dial.\"2\": missing"), "{e}");
        check(
            "peer_listen = \"127.0.0.1:7201\"",
            "[dial]\n\"2\" = \"127.0.0.1:7202\"\n",
        )
        .unwrap();
        let e = check("peer_listen = \"127.0.0.1:7101\"", "").unwrap_err();
        assert!(e.starts_with("peer_listen: must differ"), "{e}");
        let e = check("peer_listen = \"nowhere\"", "").unwrap_err();
        assert!(e.starts_with("peer_listen:"), "{e}");
    }

    #[test]
    fn peer_tls_needs_peer_listen() {
        let tls = "[peer_tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let e = check("", tls).unwrap_err();
        assert!(e.starts_with("peer_tls: needs `peer_listen`"), "{e}");
        let cfg = check(
            "peer_listen = \"127.0.0.1:7201\"",
            &format!("[dial]\n\"2\" = \"127.0.0.1:7202\"\n{tls}"),
        )
        .unwrap();
        assert_eq!(cfg.peer_tls.unwrap().ca, PathBuf::from("ca.pem"));
    }
}
