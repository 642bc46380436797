//! TLS for both listeners and for the node's own dials.
//!
//! Inbound, the client listener (`[client_tls]`) and the peer listener (`[peer_tls]`) each
//! have a [`ServerTls`]: a rustls server config built from PEM files and swapped in place
//! when the files change (polled every [`RELOAD_POLL`]) or on SIGHUP, so certificates
//! rotate without a restart. A bad new file is logged loudly and the config loaded before
//! stays in use. When to reload is decided by the sans-IO [`ReloadCore`].
//!
//! Outbound, peers are dialled with the `[peer_tls]` identity and CA, and other nodes'
//! client ports (request forwarding) with the `[client_tls]` identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::NodeError;
use crate::config::{ClientAuth, ClientTlsConfig as ClientTlsSection, PeerTlsConfig};

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The PEM files of one listener and whether it asks for client certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The config table, for messages (`client_tls`, `peer_tls`).
    pub label: &'static str,
    /// CA that client certificates must chain to; `None`: no client certificates asked.
    pub ca: Option<PathBuf>,
    /// The server certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Whether a client certificate is required (with `ca`).
    pub client_auth: ClientAuth,
}

impl TlsFiles {
    /// The peer listener: mutual TLS, always.
    pub fn peer(cfg: &PeerTlsConfig) -> Self {
        Self {
            label: "peer_tls",
            ca: Some(cfg.ca.clone()),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            client_auth: ClientAuth::Required,
        }
    }

    /// The client listener.
    pub fn client(cfg: &ClientTlsSection) -> Self {
        Self {
            label: "client_tls",
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            client_auth: cfg.client_auth(),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        self.ca
            .iter()
            .map(PathBuf::as_path)
            .chain([self.cert.as_path(), self.key.as_path()])
    }

    /// Modification time and length of each file (`None` when unreadable).
    pub fn stamp(&self) -> Stamp {
        self.paths()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

fn read_pem(label: &str, field: &str, path: &Path, block: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "{label}.{field}: cannot read {}: {e} (`baton cert` makes a dev CA and node certificates)",
            path.display()
        )
    })?;
    // Catch a swapped or wrong file here, with its name, rather than at the first handshake.
    if !String::from_utf8_lossy(&text).contains(block) {
        return Err(format!(
            "{label}.{field}: {} holds no PEM {block} block: is it the right file?",
            path.display()
        ));
    }
    Ok(text)
}

fn certs(label: &str, field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(label, field, path, "CERTIFICATE")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{label}.{field}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{label}.{field}: {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls server config of `files`; errors name the field and file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let label = files.label;
    let chain = certs(label, "cert", &files.cert)?;
    let key_pem = read_pem(label, "key", &files.key, "PRIVATE KEY")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{label}.key: {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{label}: {e}"))?;
    let builder = match (&files.ca, files.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(label, "ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{label}.ca: {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{label}.ca: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{label}: {e}: check that cert ({}) and key ({}) belong together",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC is HTTP/2 only; tonic clients offer `h2`.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's TLS config, replaced in place when its files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// File stamps taken just before the first load.
    initial: Stamp,
    /// The identity this node dials others with from the same files, renewed with them.
    dial: std::sync::Mutex<Option<DialReload>>,
}

/// How a reload also renews the identity a node presents when it dials (a rotation must
/// reach outbound connections too, or peers that trust only the new CA refuse them).
pub struct DialReload {
    /// Builds the client config from the files as they are now.
    pub build: Box<dyn Fn() -> Result<ClientTlsConfig, String> + Send + Sync>,
    /// Puts it in use (the pool's next connections use it).
    pub apply: Box<dyn Fn(ClientTlsConfig) + Send + Sync>,
}

impl ServerTls {
    /// Loads `files`; a problem stops the node at start, named.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, NodeError> {
        let initial = files.stamp();
        let config = server_config(&files).map_err(NodeError::Other)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
            initial,
            dial: std::sync::Mutex::new(None),
        }))
    }

    /// Renews `dial` whenever these files are reloaded.
    pub fn also_dial(&self, dial: DialReload) {
        *self
            .dial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dial);
    }

    /// The config new connections are accepted with.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; on success new connections, accepted and dialled, use them.
    /// Both configs are built before either is used: a bad file changes neither.
    fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.files)?;
        let dial = self
            .dial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outbound = dial.as_ref().map(|d| (d.build)()).transpose()?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        if let (Some(d), Some(tls)) = (dial.as_ref(), outbound) {
            (d.apply)(tls);
        }
        Ok(())
    }
}

/// Modification time and length of each file of a listener, in a fixed order.
pub type Stamp = Vec<Option<(SystemTime, u64)>>;

/// When to reload a listener's certificate files (sans-IO: fed with what each poll saw).
///
/// A poll triggers a reload when the files differ from those loaded and are unchanged
/// since the previous poll: a rotation writing the certificate and then the key is picked
/// up whole, not half-written. A state that failed to load is not tried again (nor logged
/// again) until the files change once more. A signal always reloads.
#[derive(Debug, Clone)]
pub struct ReloadCore {
    loaded: Stamp,
    last_seen: Stamp,
    failed: Option<Stamp>,
}

impl ReloadCore {
    /// The files as they were when loaded.
    pub fn new(loaded: Stamp) -> Self {
        Self {
            last_seen: loaded.clone(),
            loaded,
            failed: None,
        }
    }

    /// A poll saw `now`; true: reload.
    pub fn poll(&mut self, now: &Stamp) -> bool {
        let settled = *now == self.last_seen;
        self.last_seen = now.clone();
        settled && *now != self.loaded && self.failed.as_ref() != Some(now)
    }

    /// A reload of the files as stamped `now` succeeded (`ok`) or failed.
    pub fn done(&mut self, now: Stamp, ok: bool) {
        if ok {
            self.loaded = now;
            self.failed = None;
        } else {
            self.failed = Some(now);
        }
    }
}

/// Resolves on the next SIGHUP (never, where signals cannot be caught).
async fn hangup(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                *sig = None;
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Reloads `sources` on SIGHUP and when their files change, until `stop`.
pub fn spawn_reloader(sources: Vec<Arc<ServerTls>>, mut stop: watch::Receiver<bool>) {
    if sources.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut sig = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot catch SIGHUP ({e}): certificates reload on file change only"
                );
                None
            }
        };
        let mut cores: Vec<ReloadCore> = sources
            .iter()
            .map(|s| ReloadCore::new(s.initial.clone()))
            .collect();
        let mut every = tokio::time::interval(RELOAD_POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = every.tick() => false,
                _ = hangup(&mut sig) => true,
            };
            for (src, core) in sources.iter().zip(cores.iter_mut()) {
                let now = src.files.stamp();
                if !forced && !core.poll(&now) {
                    continue;
                }
                let label = src.files.label;
                let cause = if forced { "SIGHUP" } else { "file change" };
                match src.reload() {
                    Ok(()) => {
                        tracing::info!(
                            cert = %src.files.cert.display(),
                            "{label}: certificates reloaded on {cause}; new connections (accepted and dialled) use them"
                        );
                        core.done(now, true);
                    }
                    Err(e) => {
                        tracing::error!(
                            "{label}: RELOAD FAILED ({cause}), still serving the certificates \
                             loaded before: {e}"
                        );
                        core.done(now, false);
                    }
                }
            }
        }
    });
}

/// Builds a tonic client TLS config with `ca` as the only root and `identity` (cert, key)
/// presented; checked once so a bad file is named at start.
fn dial_config(
    label: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, NodeError> {
    let ca_pem = read_pem(label, "ca", ca, "CERTIFICATE").map_err(NodeError::Other)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            read_pem(label, "cert", cert, "CERTIFICATE").map_err(NodeError::Other)?,
            read_pem(label, "key", key, "PRIVATE KEY").map_err(NodeError::Other)?,
        ));
    }
    Endpoint::from_static("https://localhost")
        .tls_config(tls.clone())
        .map_err(|e| NodeError::Other(format!("{label}: {e}: check ca, cert and key")))?;
    Ok(tls)
}

/// How this node dials its peers' peer listeners (`[peer_tls]`).
pub fn peer_dial(cfg: &PeerTlsConfig) -> Result<ClientTlsConfig, NodeError> {
    dial_config("peer_tls", &cfg.ca, Some((&cfg.cert, &cfg.key)))
}

/// How this node dials other nodes' client listeners (forwarding to the leader): with its
/// `[client_tls]` certificate, trusting `client_tls.ca`, else the `[peer_tls]` CA.
pub fn client_dial(
    client: &ClientTlsSection,
    peer: Option<&PeerTlsConfig>,
) -> Result<ClientTlsConfig, NodeError> {
    let ca = client
        .ca
        .as_deref()
        .or(peer.map(|p| p.ca.as_path()))
        .ok_or_else(|| {
            NodeError::Other(
                "client_tls: set `ca`: nodes forward requests to the leader's client port and \
                 verify its certificate against this CA"
                    .into(),
            )
        })?;
    dial_config("client_tls", ca, Some((&client.cert, &client.key)))
}

/// The names a certificate carries: its DNS subject alternative names, then its subject
/// common name. Unparseable certificates carry none.
pub fn cert_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = ee.valid_dns_names().map(str::to_string).collect();
    if let Some(cn) = common_name(ee.subject()) {
        if !names.contains(&cn) {
            names.push(cn);
        }
    }
    names
}

/// The subject common name of a certificate, if it has one.
pub fn common_name_of(cert: &CertificateDer<'_>) -> Option<String> {
    common_name(webpki::EndEntityCert::try_from(cert).ok()?.subject())
}

/// One DER tag-length-value: (tag, contents, rest).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The first common name (OID 2.5.4.3) of a DER `Name`'s contents.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    while let Some((_, mut set, rest)) = tlv(name) {
        name = rest;
        while let Some((_, atv, more)) = tlv(set) {
            set = more;
            let Some((0x06, oid, value)) = tlv(atv) else {
                continue;
            };
            if oid != CN {
                continue;
            }
            // UTF8String, PrintableString, IA5String, T61String.
            if let Some((0x0c | 0x13 | 0x16 | 0x14, text, _)) = tlv(value) {
                return std::str::from_utf8(text).ok().map(str::to_string);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<PathBuf>, cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles {
            label: "peer_tls",
            ca,
            cert,
            key,
            client_auth: ClientAuth::Required,
        }
    }

    #[test]
    fn missing_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let absent = dir.path().join("absent.pem");
        let e = server_config(&files(Some(junk.clone()), absent, junk.clone())).unwrap_err();
        assert!(e.starts_with("peer_tls.cert: cannot read"), "{e}");
        assert!(e.contains("baton cert"), "{e}");
        let e = server_config(&files(None, junk.clone(), junk.clone())).unwrap_err();
        assert!(
            e.starts_with("peer_tls.cert:") && e.contains("no PEM CERTIFICATE"),
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
        let e = server_config(&files(Some(cert.clone()), cert, bad_key)).unwrap_err();
        assert!(e.starts_with("peer_tls"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = crate::pki::make_ca("t").unwrap();
        let (a, _) = crate::pki::make_leaf("a", vec!["a".into()], &ca, &ca_key).unwrap();
        let (_, b_key) = crate::pki::make_leaf("b", vec!["b".into()], &ca, &ca_key).unwrap();
        let (cert, key) = (dir.path().join("a.pem"), dir.path().join("b.key"));
        std::fs::write(&cert, a.pem()).unwrap();
        std::fs::write(&key, b_key.serialize_pem()).unwrap();
        let e = server_config(&files(None, cert, key)).unwrap_err();
        assert!(e.contains("belong together"), "{e}");
    }

    #[test]
    fn names_are_the_dns_sans_then_the_common_name() {
        let (ca, ca_key) = crate::pki::make_ca("t").unwrap();
        let (c, _) = crate::pki::make_leaf(
            "client-alice",
            vec!["alice".into(), "127.0.0.1".into()],
            &ca,
            &ca_key,
        )
        .unwrap();
        assert_eq!(cert_names(c.der()), vec!["alice", "client-alice"]);
        let (n, _) = crate::pki::make_leaf("node-1", vec!["node-1".into()], &ca, &ca_key).unwrap();
        assert_eq!(cert_names(n.der()), vec!["node-1"]);
        assert!(cert_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    fn stamp(n: u64) -> Stamp {
        vec![Some((SystemTime::UNIX_EPOCH + Duration::from_secs(n), n))]
    }

    #[test]
    fn a_change_reloads_once_it_has_settled() {
        let mut core = ReloadCore::new(stamp(1));
        assert!(!core.poll(&stamp(1)), "unchanged files");
        // Changed: wait one poll for the rotation to finish writing.
        assert!(!core.poll(&stamp(2)));
        // Changed again while writing (the key after the certificate).
        assert!(!core.poll(&stamp(3)));
        assert!(core.poll(&stamp(3)), "settled");
        core.done(stamp(3), true);
        assert!(!core.poll(&stamp(3)), "loaded already");
    }

    #[test]
    fn a_bad_state_is_tried_once_until_the_files_change_again() {
        let mut core = ReloadCore::new(stamp(1));
        assert!(!core.poll(&stamp(2)));
        assert!(core.poll(&stamp(2)));
        core.done(stamp(2), false);
        assert!(!core.poll(&stamp(2)), "the same bad files again");
        assert!(!core.poll(&stamp(2)));
        assert!(!core.poll(&stamp(4)));
        assert!(core.poll(&stamp(4)), "fixed files");
        core.done(stamp(4), true);
        // Rolled back to files equal to the first ones: a change like any other.
        assert!(!core.poll(&stamp(1)));
        assert!(core.poll(&stamp(1)));
    }

    #[test]
    fn a_vanished_file_is_a_change_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(None, dir.path().join("c.pem"), dir.path().join("k.pem"));
        assert_eq!(f.stamp(), vec![None, None]);
        assert!(ServerTls::load(f).is_err());
    }
}
