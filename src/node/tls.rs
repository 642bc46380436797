//! Mutual TLS between nodes (`[peer_tls]`): the peer listener's server config, which
//! requires a client certificate signed by the cluster CA, and the client config this node
//! dials its peers with (its own certificate, the same CA as the only root).

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use super::NodeError;
use crate::config::PeerTlsConfig;

/// The loaded `[peer_tls]`.
pub(super) struct PeerTls {
    /// For the peer listener.
    pub server: ServerTlsConfig,
    /// For dialling peers.
    pub client: ClientTlsConfig,
}

fn read_pem(field: &str, path: &std::path::Path, block: &str) -> Result<Vec<u8>, NodeError> {
    let text = std::fs::read(path).map_err(|e| {
        NodeError::Other(format!(
            "peer_tls.{field}: cannot read {}: {e} (`baton cert` makes a dev CA and node certificates)",
            path.display()
        ))
    })?;
    // Catch a swapped or wrong file here, with its name, rather than at the first handshake.
    if !String::from_utf8_lossy(&text).contains(block) {
        return Err(NodeError::Other(format!(
            "peer_tls.{field}: {} holds no PEM {block} block: is it the right file?",
            path.display()
        )));
    }
    Ok(text)
}

/// Reads the CA, certificate and key of `cfg` and builds both sides' TLS configs.
pub(super) fn load(cfg: &PeerTlsConfig) -> Result<PeerTls, NodeError> {
    let ca = Certificate::from_pem(read_pem("ca", &cfg.ca, "CERTIFICATE")?);
    let identity = Identity::from_pem(
        read_pem("cert", &cfg.cert, "CERTIFICATE")?,
        read_pem("key", &cfg.key, "PRIVATE KEY")?,
    );
    let server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone());
    let client = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
    // Build both once now so a bad key or certificate stops the node at start, named.
    tonic::transport::Server::builder()
        .tls_config(server.clone())
        .map_err(|e| {
            NodeError::Other(format!(
                "peer_tls: {e}: check cert and key ({} and {})",
                cfg.cert.display(),
                cfg.key.display()
            ))
        })?;
    Endpoint::from_static("https://localhost")
        .tls_config(client.clone())
        .map_err(|e| NodeError::Other(format!("peer_tls: {e}: check ca, cert and key")))?;
    Ok(PeerTls { server, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cfg: &PeerTlsConfig) -> String {
        match load(cfg) {
            Ok(_) => panic!("loaded {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let cfg = PeerTlsConfig {
            ca: dir.path().join("absent.pem"),
            cert: junk.clone(),
            key: junk.clone(),
        };
        let e = err(&cfg);
        assert!(e.starts_with("peer_tls.ca: cannot read"), "{e}");
        assert!(e.contains("baton cert"), "{e}");
        let e = err(&PeerTlsConfig {
            ca: junk.clone(),
            ..cfg.clone()
        });
        assert!(
            e.starts_with("peer_tls.ca:") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let bad_key = dir.path().join("key.pem");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = err(&PeerTlsConfig {
            ca: cert.clone(),
            cert,
            key: bad_key,
        });
        assert!(e.starts_with("peer_tls"), "{e}");
    }
}
