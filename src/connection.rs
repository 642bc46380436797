//! What a connection to one of baton's listeners proved about its caller: its address and,
//! over TLS with a client certificate, the verified chain and the names it carries. Set by
//! the accept loop (`node::conn`) on every request; read by `auth`, `api` and `raft`. A leaf
//! module, so none of them depends on the node for it.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// What a connection proved, set on every request it carries (read it with [`ConnInfo::of`]).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate chain (TLS with a client certificate only).
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The names of that certificate.
    identity: Option<CertIdentity>,
}

impl ConnInfo {
    /// The info of a TLS connection from `remote` that verified `certs` (leaf first).
    pub fn verified(
        remote: SocketAddr,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        identity: Option<CertIdentity>,
    ) -> Self {
        ConnInfo {
            remote: Some(remote),
            certs,
            identity,
        }
    }

    /// The info of a plaintext connection from `remote`.
    pub fn plain(remote: SocketAddr) -> Self {
        ConnInfo {
            remote: Some(remote),
            ..ConnInfo::default()
        }
    }

    /// The connection info of a request served by a baton listener.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&ConnInfo> {
        req.extensions().get::<ConnInfo>()
    }

    /// The caller's address: from a baton listener, else tonic's own connect info.
    pub fn remote_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
        Self::of(req)
            .and_then(|c| c.remote)
            .or_else(|| req.remote_addr())
    }

    /// The client certificate chain the TLS handshake verified, leaf first.
    pub fn peer_certs(&self) -> Option<&[CertificateDer<'static>]> {
        self.certs.as_deref().map(Vec::as_slice)
    }

    /// The names of the verified client certificate.
    pub fn identity(&self) -> Option<&CertIdentity> {
        self.identity.as_ref()
    }
}

/// The names a verified client certificate carries (its DNS subject alternative names and
/// its subject common name), found by the listener's TLS acceptor ([`ConnInfo`]).
/// Absent on plaintext connections and when the client sent no certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// DNS SANs, then the common name (if any), as written in the certificate.
    pub names: Vec<String>,
}

impl CertIdentity {
    /// The certificate's identity from a request's extensions, if the connection proved one.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&CertIdentity> {
        // Set directly only by in-process callers (tests); requests from the network carry
        // it in their connection's info.
        req.extensions()
            .get::<CertIdentity>()
            .or_else(|| ConnInfo::of(req).and_then(ConnInfo::identity))
    }
}
