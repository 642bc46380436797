//! Who is calling: the identity a connection proved (a verified client certificate) and,
//! built on it and on bearer tokens, the principal and roles every RPC is checked against.

/// The names a verified client certificate carries (its DNS subject alternative names and
/// its subject common name), set by the client listener's TLS acceptor as a request
/// extension. Absent on plaintext connections and when the client sent no certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// DNS SANs, then the common name (if any), as written in the certificate.
    pub names: Vec<String>,
}

impl CertIdentity {
    /// The certificate's identity from a request's extensions, if the connection proved one.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&CertIdentity> {
        req.extensions().get::<CertIdentity>()
    }
}
