//! Who is calling: the identity a connection proved (a verified client certificate) and,
//! built on it and on bearer tokens, the principal and roles every RPC is checked against.
//!
//! - [`policy`]: pure: the method table, roles, credentials -> principal, the trust rule
//!   for forwarded principals.
//! - [`layer`]: the tower layer over the client server that applies it to every request.
//! - [`record`]: audit-only entries (refusals, rate-limited; cluster operations) through Raft.

pub mod layer;
pub mod policy;
pub mod record;

pub use layer::{AuthLayer, Authority};
pub use policy::{Principal, Role};
pub use record::Recorder;

/// The names a verified client certificate carries (its DNS subject alternative names and
/// its subject common name), found by the listener's TLS acceptor (`node::conn::ConnInfo`).
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
        req.extensions().get::<CertIdentity>().or_else(|| {
            crate::node::conn::ConnInfo::of(req).and_then(crate::node::conn::ConnInfo::identity)
        })
    }
}
