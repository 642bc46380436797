//! Certificates for baton's TLS (rcgen): a CA, node certificates (server and client, named
//! `node-<id>`) and client certificates. Used by `baton cert`, `baton dev --tls` and tests; a
//! leaf module so the dev cluster does not depend on the CLI for them.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A new CA: its certificate and key.
pub fn make_ca(name: &str) -> Result<(Certificate, KeyPair), rcgen::Error> {
    ca_with_key(name, KeyPair::generate()?)
}

/// A certificate named `cn`, valid for `sans`, signed by the CA, usable for TLS server and
/// client authentication (nodes are both).
pub fn make_leaf(
    cn: &str,
    sans: Vec<String>,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    leaf(cn, sans, true, ca, ca_key)
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    server: bool,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params
            .extended_key_usages
            .insert(0, ExtendedKeyUsagePurpose::ServerAuth);
    }
    Ok((params.signed_by(&key, ca, ca_key)?, key))
}

/// Node `id`'s certificate: DNS name `node-<id>` (the identity peers check: a node may only
/// speak for itself), `localhost`, `127.0.0.1` and `extra` host names or addresses; usable
/// as TLS server and client on both listeners.
pub fn make_node(
    id: u64,
    extra: &[String],
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let mut sans = vec![
        format!("node-{id}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    sans.extend(extra.iter().cloned());
    leaf(&format!("node-{id}"), sans, true, ca, ca_key)
}

/// A client certificate for principal `name` (its common name; client auth only, no DNS
/// names, so it can never pass for a node).
pub fn make_client(
    name: &str,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    leaf(name, Vec::new(), false, ca, ca_key)
}

/// A CA certificate named `name` for `key` (a new CA, or the issuer of one loaded from disk).
pub fn ca_with_key(name: &str, key: KeyPair) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok((params.self_signed(&key)?, key))
}
