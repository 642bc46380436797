//! `baton cert`: a development certificate authority with node and client certificates
//! (rcgen), for `[peer_tls]`, `[client_tls]` and clients. Keys are written mode 0600. For
//! production, use your own PKI; these certificates are for trying TLS out and for tests.
//!
//! `baton cert --out DIR` makes a new CA (and node and client certificates);
//! `baton cert client NAME --out DIR` and `baton cert node ID --out DIR` issue more from the
//! CA already in DIR.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{Certificate, KeyPair};

use super::{CliError, Ctx, Exit};
pub use crate::pki::{ca_with_key, make_ca, make_client, make_leaf, make_node};

/// `baton cert`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertArgs {
    /// Issue more certificates from the CA in --out instead of making a new CA.
    #[command(subcommand)]
    pub issue: Option<IssueCommand>,
    /// Directory to write `ca.pem`, `ca.key`, `node-<id>.pem/.key` and `client-<name>.pem/.key`
    /// into (created if missing; existing files are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
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

/// `baton cert client|node`: more certificates from an existing CA.
#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// Client certificates for named principals (`baton cert client alice --out DIR`): the
    /// name is the certificate's common name, which the cluster sees as the caller.
    Client {
        /// Principal names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Directory holding `ca.pem` and `ca.key` (made by `baton cert --out DIR`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Node certificates (`node-<id>`, usable on the client and the peer listener).
    Node {
        /// Node ids.
        #[arg(required = true, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        ids: Vec<u64>,
        /// Extra host names or IP addresses the certificates are valid for.
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
        /// Directory holding `ca.pem` and `ca.key` (made by `baton cert --out DIR`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// What went wrong making a certificate, said plainly.
fn cert_err(what: &str, e: rcgen::Error) -> CliError {
    CliError::Other(format!("making {what}: {e}"))
}

/// Checks a principal name for a client certificate.
fn check_client_name(name: &str) -> Result<(), CliError> {
    crate::state::names::check_name("client", name).map_err(CliError::Other)?;
    if name.starts_with("node-") {
        return Err(CliError::Other(format!(
            "client name {name:?}: `node-` names are reserved for nodes; choose another"
        )));
    }
    Ok(())
}

/// The CA in `dir` (`ca.pem`, `ca.key`), to sign more certificates with. The issuer is
/// rebuilt from the key and the CA's common name, which is all `baton cert` puts in a CA.
pub fn load_ca(dir: &Path) -> Result<(Certificate, KeyPair), CliError> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|source| CliError::Io {
            context: format!(
                "reading {} (make a CA first: `baton cert --out {}`)",
                dir.join(f).display(),
                dir.display()
            ),
            source,
        })
    };
    let key = KeyPair::from_pem(&read("ca.key")?)
        .map_err(|e| CliError::Other(format!("{}: {e}", dir.join("ca.key").display())))?;
    let pem = read("ca.pem")?;
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CliError::Other(format!("{}: {e}", dir.join("ca.pem").display())))?
    };
    let cn = crate::node::tls::common_name_of(&der).ok_or_else(|| {
        CliError::Other(format!(
            "{}: no common name: not a CA made by `baton cert`",
            dir.join("ca.pem").display()
        ))
    })?;
    ca_with_key(&cn, key).map_err(|e| cert_err("the CA issuer", e))
}

/// Writes a certificate and its key as `<stem>.pem` and `<stem>.key` in `dir`.
fn write_pair(dir: &Path, stem: &str, cert: &Certificate, key: &KeyPair) -> Result<(), CliError> {
    write_new(&dir.join(format!("{stem}.pem")), &cert.pem(), false)?;
    write_new(&dir.join(format!("{stem}.key")), &key.serialize_pem(), true)
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

fn print(ctx: &mut Ctx<'_>, line: String) -> Result<(), CliError> {
    writeln!(ctx.out, "{line}").map_err(|source| CliError::Io {
        context: "writing the summary".into(),
        source,
    })
}

/// Issues certificates from the CA already in the directory.
fn issue(ctx: &mut Ctx<'_>, cmd: IssueCommand) -> Result<Exit, CliError> {
    let (dir, made) = match cmd {
        IssueCommand::Client { names, out } => {
            for n in &names {
                check_client_name(n)?;
            }
            let (ca, ca_key) = load_ca(&out)?;
            let mut made = Vec::new();
            for name in &names {
                let (cert, key) = make_client(name, &ca, &ca_key)
                    .map_err(|e| cert_err(&format!("client {name}'s certificate"), e))?;
                write_pair(&out, &format!("client-{name}"), &cert, &key)?;
                made.push(format!("client-{name}.pem"));
            }
            (out, made)
        }
        IssueCommand::Node { ids, san, out } => {
            let (ca, ca_key) = load_ca(&out)?;
            let mut made = Vec::new();
            for id in ids {
                let (cert, key) = make_node(id, &san, &ca, &ca_key)
                    .map_err(|e| cert_err(&format!("node {id}'s certificate"), e))?;
                write_pair(&out, &format!("node-{id}"), &cert, &key)?;
                made.push(format!("node-{id}.pem"));
            }
            (out, made)
        }
    };
    print(
        ctx,
        format!(
            "wrote {} (keys alongside, mode 0600) in {}",
            made.join(", "),
            dir.display()
        ),
    )?;
    Ok(Exit::Ok)
}

/// Writes a CA, node and client certificates under `args.out`.
pub fn run(ctx: &mut Ctx<'_>, args: CertArgs) -> Result<Exit, CliError> {
    if let Some(cmd) = args.issue {
        return issue(ctx, cmd);
    }
    let Some(dir) = &args.out else {
        return Err(CliError::Usage(
            "--out DIR is required: the directory to write the CA and certificates into".into(),
        ));
    };
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
    for name in &args.client {
        check_client_name(name)?;
    }
    for id in 1..=args.nodes {
        let (cert, key) = make_node(id, &args.san, &ca, &ca_key)
            .map_err(|e| cert_err(&format!("node {id}'s certificate"), e))?;
        write_pair(dir, &format!("node-{id}"), &cert, &key)?;
        made.push(format!("node-{id}.pem"));
    }
    for name in &args.client {
        let (cert, key) = make_client(name, &ca, &ca_key)
            .map_err(|e| cert_err(&format!("client {name}'s certificate"), e))?;
        write_pair(dir, &format!("client-{name}"), &cert, &key)?;
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
        "node N's node.toml: [peer_tls] and [client_tls] ca = \"ca.pem\", cert = \"node-N.pem\", key = \"node-N.key\" (paths under {}); clients: --cacert ca.pem --cert client-NAME.pem --key client-NAME.key; more: `baton cert client NAME --out {}`",
        dir.display(),
        dir.display()
    )
    .map_err(io)?;
    Ok(Exit::Ok)
}
