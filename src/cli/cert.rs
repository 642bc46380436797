//! `baton cert`: a development certificate authority with node and client certificates
//! (rcgen), for `[peer_tls]` and clients. Keys are written mode 0600. For production, use
//! your own PKI; these certificates are for trying TLS out and for tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::{CliError, Ctx, Exit};

/// `baton cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory to write `ca.pem`, `ca.key`, `node-<id>.pem/.key` and `client-<name>.pem/.key`
    /// into (created if missing; existing files are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Node certificates for ids 1..=N (usable as TLS server and client between peers),
    /// each naming its node as DNS name `node-<id>`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub nodes: u64,
    /// Extra host names or IP addresses every node certificate is valid for (besides
    /// localhost and 127.0.0.1), e.g. `--san baton-1.us-east.example.internal`.
    #[arg(long, value_name = "NAME")]
    pub san: Vec<String>,
    /// Client certificates to make, by name (e.g. `--client ops`).
    #[arg(long, value_name = "NAME")]
    pub client: Vec<String>,
}

/// What went wrong making a certificate, said plainly.
fn cert_err(what: &str, e: rcgen::Error) -> CliError {
    CliError::Other(format!("making {what}: {e}"))
}

/// A new CA: its certificate and key.
pub fn make_ca(name: &str) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
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

/// A certificate named `cn`, valid for `sans`, signed by the CA, usable for TLS server and
/// client authentication (nodes are both).
pub fn make_leaf(
    cn: &str,
    sans: Vec<String>,
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
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok((params.signed_by(&key, ca, ca_key)?, key))
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Other(format!(
                "{} exists: not overwriting it; remove it or choose another --out",
                path.display()
            ))
        } else {
            io(e)
        }
    })?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// Writes a CA, node and client certificates under `args.out`.
pub fn run(ctx: &mut Ctx<'_>, args: CertArgs) -> Result<Exit, CliError> {
    let dir = &args.out;
    std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    // Refuse before writing anything if the CA is there: a half-replaced set is worse.
    for f in ["ca.pem", "ca.key"] {
        if dir.join(f).exists() {
            return Err(CliError::Other(format!(
                "{} exists: not overwriting the CA; remove it or choose another --out",
                dir.join(f).display()
            )));
        }
    }
    let (ca, ca_key) = make_ca("baton dev CA").map_err(|e| cert_err("the CA", e))?;
    write_new(&dir.join("ca.pem"), &ca.pem(), false)?;
    write_new(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let mut made = vec!["ca.pem".to_string()];
    for id in 1..=args.nodes {
        // `node-<id>` is the identity peers check (a node may only speak for itself).
        let mut sans = vec![
            format!("node-{id}"),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        sans.extend(args.san.iter().cloned());
        let (cert, key) = make_leaf(&format!("node-{id}"), sans, &ca, &ca_key)
            .map_err(|e| cert_err(&format!("node {id}'s certificate"), e))?;
        write_new(&dir.join(format!("node-{id}.pem")), &cert.pem(), false)?;
        write_new(
            &dir.join(format!("node-{id}.key")),
            &key.serialize_pem(),
            true,
        )?;
        made.push(format!("node-{id}.pem"));
    }
    for name in &args.client {
        crate::state::names::check_name("client", name).map_err(CliError::Other)?;
        let (cert, key) = make_leaf(&format!("client-{name}"), vec![], &ca, &ca_key)
            .map_err(|e| cert_err(&format!("client {name}'s certificate"), e))?;
        write_new(&dir.join(format!("client-{name}.pem")), &cert.pem(), false)?;
        write_new(
            &dir.join(format!("client-{name}.key")),
            &key.serialize_pem(),
            true,
        )?;
        made.push(format!("client-{name}.pem"));
    }
    let io = |source| CliError::Io {
        context: "writing the summary".into(),
        source,
    };
    writeln!(
        ctx.out,
        "wrote {} (keys alongside, mode 0600) in {}",
        made.join(", "),
        dir.display()
    )
    .map_err(io)?;
    writeln!(
        ctx.out,
        "node N's node.toml: [peer_tls] ca = \"ca.pem\", cert = \"node-N.pem\", key = \"node-N.key\" (paths under {})",
        dir.display()
    )
    .map_err(io)?;
    Ok(Exit::Ok)
}
