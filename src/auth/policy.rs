//! The authorization decision, pure: which role each gRPC method needs, who a request's
//! credentials name, and whether that principal may call the method. No I/O, no clocks;
//! [`super::layer`] feeds it what a request carries.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

use super::CertIdentity;
use crate::auth::config::{check_principal, AuthConfig};

/// A role a principal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: primaries, services (health targets redacted), workflows, plans, status.
    Reader,
    /// Reads, and renewing / acknowledging demotion of its own services' and regions' leases.
    Agent,
    /// Reads, and moving leases: failover, failback, freeze, approve, ack, set mode, drills,
    /// and the audit trail.
    Operator,
    /// Everything: service definitions, membership, leadership, snapshots.
    Admin,
}

impl Role {
    /// Name used in configs and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "agent" => Some(Role::Agent),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn grants(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, _)
                | (_, Need::Read)
                | (Role::Agent, Need::Agent)
                | (Role::Operator, Need::Operator)
        )
    }
}

/// What calling a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any role.
    Read,
    /// `agent` (or `admin`).
    Agent,
    /// `operator` (or `admin`).
    Operator,
    /// `admin`.
    Admin,
}

impl Need {
    /// The role to ask for, in messages.
    pub fn role(self) -> &'static str {
        match self {
            Need::Read => "reader",
            Need::Agent => "agent",
            Need::Operator => "operator",
            Need::Admin => "admin",
        }
    }
}

/// Every method of the client API and what it needs. A path not listed here is refused
/// (deny by default): a new RPC stays closed until it is added. The Raft service is not
/// listed: with `[auth]` on, it lives only on the peer listener.
pub const METHODS: &[(&str, Need)] = &[
    ("/baton.v1.Coordinator/GetPrimary", Need::Read),
    ("/baton.v1.Coordinator/ListServices", Need::Read),
    ("/baton.v1.Coordinator/Watch", Need::Read),
    ("/baton.v1.Coordinator/KeepAlive", Need::Agent),
    ("/baton.v1.Coordinator/ValidateToken", Need::Read),
    ("/baton.v1.Coordinator/Failover", Need::Operator),
    // Audit entries carry whole service definitions, health targets included.
    ("/baton.v1.Coordinator/ListAudit", Need::Operator),
    ("/baton.v1.Coordinator/Failback", Need::Operator),
    ("/baton.v1.Coordinator/SetMode", Need::Operator),
    ("/baton.v1.Coordinator/Freeze", Need::Operator),
    ("/baton.v1.Coordinator/Ack", Need::Operator),
    ("/baton.v1.Coordinator/Approve", Need::Operator),
    ("/baton.v1.Coordinator/GetWorkflow", Need::Read),
    ("/baton.v1.Coordinator/ListWorkflows", Need::Read),
    ("/baton.v1.Coordinator/Plan", Need::Read),
    ("/baton.v1.Admin/ClusterStatus", Need::Read),
    ("/baton.v1.Admin/AddNode", Need::Admin),
    ("/baton.v1.Admin/RemoveNode", Need::Admin),
    ("/baton.v1.Admin/TransferLeadership", Need::Admin),
    ("/baton.v1.Admin/PutService", Need::Admin),
    ("/baton.v1.Admin/DeleteService", Need::Admin),
    ("/baton.v1.Admin/GetService", Need::Read),
    ("/baton.v1.Admin/TriggerSnapshot", Need::Admin),
    // A backup is the whole state and audit trail, health targets included.
    ("/baton.v1.Admin/SaveSnapshot", Need::Admin),
];

/// Services any caller may use without credentials: the standard gRPC health service (a
/// Kubernetes gRPC probe cannot send a token) and server reflection (the API's schema, which
/// is public in `proto/`). Neither reads nor changes anything of the cluster.
pub const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `path` is a method of an [`OPEN_PREFIXES`] service.
pub fn is_open(path: &str) -> bool {
    OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Header marking a `TransferLeadership` with `campaign = true`, which a leader handing
/// over sends to the target. Such a request passes without credentials (the leader may be
/// stopping and act for nobody) and its handler serves nothing but the campaign, which
/// starts an election only once the node has heard no leader for an election timeout: no
/// more than it would do by itself.
pub const CAMPAIGN_HEADER: &str = crate::wire::CAMPAIGN_KEY;
/// The method a campaign is sent to.
pub const TRANSFER_PATH: &str = "/baton.v1.Admin/TransferLeadership";

/// The principal of a campaign request: no role at all.
pub fn campaigner(addr: Option<SocketAddr>) -> Principal {
    Principal {
        name: match addr {
            Some(a) => format!("anonymous@{a}"),
            None => "anonymous".into(),
        },
        roles: BTreeSet::new(),
        services: Vec::new(),
        regions: Vec::new(),
        source: Source::Anonymous,
    }
}

/// What `path` needs, or `None` when it is not a method of the client API.
pub fn need(path: &str) -> Option<Need> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, n)| *n)
}

/// Whether `name` is reserved: the coordinator's own actions, anonymous callers and nodes
/// use these names, so no configured or forwarded principal may claim them.
pub fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == crate::state::audit::AUTOMATION
        || lower == "anonymous"
        || lower.starts_with("anonymous@")
        || node_id(&lower).is_some()
}

/// The node id a certificate name `node-<id>` names.
pub fn node_id(name: &str) -> Option<u64> {
    name.strip_prefix("node-")?
        .parse()
        .ok()
        .filter(|id| *id > 0)
}

/// Where a principal's identity came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[auth]` is off: nobody is checked.
    Anonymous,
    /// A bearer token.
    Token,
    /// A client certificate.
    Cert,
    /// Another node, which authenticated the caller and forwarded the request.
    Forwarded {
        /// The forwarding node.
        node: u64,
    },
}

/// The authenticated caller of a request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Recorded as the actor of audit entries.
    pub name: String,
    /// Roles held.
    pub roles: BTreeSet<Role>,
    /// Services it may act on (empty: all).
    pub services: Vec<String>,
    /// Regions it may act for (empty: all).
    pub regions: Vec<String>,
    /// How it was established.
    pub source: Source,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Principal {
    /// The principal of a caller when `[auth]` is off: every role, named by its address.
    pub fn anonymous(addr: Option<SocketAddr>) -> Principal {
        Principal {
            name: match addr {
                Some(a) => format!("anonymous@{a}"),
                None => "anonymous".into(),
            },
            roles: [Role::Reader, Role::Agent, Role::Operator, Role::Admin].into(),
            services: Vec::new(),
            regions: Vec::new(),
            source: Source::Anonymous,
        }
    }

    /// Whether the principal may call something that needs `need`.
    pub fn may(&self, need: Need) -> bool {
        self.roles.iter().any(|r| r.grants(need))
    }

    /// Whether it may see what only operators see (health-check targets and bodies).
    pub fn sees_internals(&self) -> bool {
        self.may(Need::Operator)
    }

    /// Refuses a service or region outside the principal's bindings.
    pub fn check_scope(&self, service: &str, region: Option<&str>) -> Result<(), Status> {
        if !self.services.is_empty() && !self.services.iter().any(|s| s == service) {
            return Err(Status::permission_denied(format!(
                "{} may act only on services {}, not {service:?}; use a credential bound to {service:?}",
                self.name,
                self.services.join(", ")
            )));
        }
        if let Some(region) = region {
            if !self.regions.is_empty() && !self.regions.iter().any(|r| r == region) {
                return Err(Status::permission_denied(format!(
                    "{} may act only for regions {}, not {region:?}; use a credential bound to {region:?}",
                    self.name,
                    self.regions.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Why a request was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials, or credentials that prove nothing: `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// A known principal without the right: `PERMISSION_DENIED`.
    PermissionDenied {
        /// Who asked (None when not even that is known).
        principal: Option<String>,
        /// What to do about it.
        message: String,
    },
}

impl Denial {
    fn denied(principal: Option<&str>, message: String) -> Denial {
        Denial::PermissionDenied {
            principal: principal.map(str::to_string),
            message,
        }
    }

    /// The status to answer.
    pub fn status(&self) -> Status {
        match self {
            Denial::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            Denial::PermissionDenied { message, .. } => Status::permission_denied(message.clone()),
        }
    }
}

/// A principal a forwarding node names in `x-baton-principal*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedClaim {
    /// `x-baton-principal`.
    pub name: String,
    /// `x-baton-principal-roles`, comma-separated.
    pub roles: String,
    /// `x-baton-principal-services`, comma-separated.
    pub services: String,
    /// `x-baton-principal-regions`, comma-separated.
    pub regions: String,
}

/// What a request carries that can identify its caller.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// The `authorization` header, as sent.
    pub authorization: Option<&'a str>,
    /// The verified client certificate's names.
    pub cert: Option<&'a CertIdentity>,
    /// A principal claimed by a forwarding node.
    pub forwarded: Option<ForwardedClaim>,
    /// The caller's address.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Grant {
    name: String,
    roles: BTreeSet<Role>,
    services: Vec<String>,
    regions: Vec<String>,
}

impl Grant {
    fn principal(&self, source: Source) -> Principal {
        Principal {
            name: self.name.clone(),
            roles: self.roles.clone(),
            services: self.services.clone(),
            regions: self.regions.clone(),
            source,
        }
    }
}

/// The principals of `[auth]`, ready to match credentials against.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    enabled: bool,
    tokens: Vec<([u8; 32], Grant)>,
    certs: Vec<Grant>,
}

/// The SHA-256 of a token, as stored in `[[auth.tokens]] sha256`.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Directory {
    /// From a validated `[auth]`.
    pub fn new(cfg: &AuthConfig) -> Directory {
        let grant = |name: &str, roles: &[Role], services: &[String], regions: &[String]| Grant {
            name: name.to_string(),
            roles: roles.iter().copied().collect(),
            services: services.to_vec(),
            regions: regions.to_vec(),
        };
        Directory {
            enabled: cfg.enabled,
            tokens: cfg
                .tokens
                .iter()
                .filter_map(|t| {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(&t.sha256, &mut h).ok()?;
                    Some((h, grant(&t.name, &t.roles, &t.services, &t.regions)))
                })
                .collect(),
            certs: cfg
                .certs
                .iter()
                .map(|c| grant(&c.name, &c.roles, &c.services, &c.regions))
                .collect(),
        }
    }

    /// Whether calls are checked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `name` is a configured principal.
    pub fn knows(&self, name: &str) -> bool {
        self.tokens.iter().any(|(_, g)| g.name == name) || self.certs.iter().any(|g| g.name == name)
    }

    /// The whole decision for a request to `path`: its principal, or why it is refused.
    /// With `[auth]` off nothing is refused, whatever the path (the Raft service is served
    /// on the client port when there is no `peer_listen`, as before authentication).
    pub fn decide(
        &self,
        creds: &Credentials<'_>,
        members: &BTreeSet<u64>,
        path: &str,
    ) -> Result<Principal, Denial> {
        let p = self.authenticate(creds, members)?;
        if self.enabled {
            authorize(&p, path)?;
        }
        Ok(p)
    }

    /// Who the credentials name. `members` are the node ids of the current membership:
    /// only their certificates may vouch for a forwarded principal.
    pub fn authenticate(
        &self,
        creds: &Credentials<'_>,
        members: &BTreeSet<u64>,
    ) -> Result<Principal, Denial> {
        if !self.enabled {
            // Nothing is checked; a follower's forwarded anonymous caller keeps its address
            // (only `anonymous@` names: auth off must not let anyone write another name).
            let forwarded = creds
                .forwarded
                .as_ref()
                .filter(|c| c.name.starts_with("anonymous@") && c.name.len() <= 128);
            let mut p = Principal::anonymous(creds.addr);
            if let Some(c) = forwarded {
                p.name = c.name.clone();
            }
            return Ok(p);
        }
        if let Some(claim) = &creds.forwarded {
            let node = trusted_forwarder(creds.cert, members).ok_or_else(|| {
                Denial::denied(
                    None,
                    "x-baton-principal is accepted only from a current cluster node's certificate; \
                     clients authenticate with a token or their own certificate"
                        .into(),
                )
            })?;
            return claim_principal(claim, node);
        }
        if let Some(header) = creds.authorization {
            let token = header
                .strip_prefix("Bearer ")
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Denial::Unauthenticated(
                        "the authorization header must be `Bearer <token>`; pass --token or BATON_TOKEN"
                            .into(),
                    )
                })?;
            let hash = token_hash(token);
            // Compare against every entry, in constant time, so timing reveals nothing about
            // which (or whether a) stored hash matched how far.
            let mut found: Option<&Grant> = None;
            for (stored, grant) in &self.tokens {
                if bool::from(stored.ct_eq(&hash)) {
                    found = Some(grant);
                }
            }
            return found.map(|g| g.principal(Source::Token)).ok_or_else(|| {
                Denial::Unauthenticated(
                    "the token is not valid for this cluster; check --token / BATON_TOKEN \
                     (an administrator lists its SHA-256 under [[auth.tokens]])"
                        .into(),
                )
            });
        }
        if let Some(cert) = creds.cert {
            let grant = self
                .certs
                .iter()
                .find(|g| cert.names.iter().any(|n| n == &g.name));
            return grant.map(|g| g.principal(Source::Cert)).ok_or_else(|| {
                Denial::denied(
                    cert.names.first().map(String::as_str),
                    format!(
                        "the client certificate ({}) names no principal of [[auth.certs]]; \
                         ask an administrator to list it with its roles",
                        cert.names.join(", ")
                    ),
                )
            });
        }
        Err(Denial::Unauthenticated(
            "no credentials: authentication is required; pass --token (or set BATON_TOKEN) or \
             connect with a client certificate"
                .into(),
        ))
    }
}

/// The member node whose certificate the connection proved, if any: the only callers whose
/// `x-baton-principal` headers are believed.
pub fn trusted_forwarder(cert: Option<&CertIdentity>, members: &BTreeSet<u64>) -> Option<u64> {
    cert?
        .names
        .iter()
        .filter_map(|n| node_id(n))
        .find(|id| members.contains(id))
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn claim_principal(claim: &ForwardedClaim, node: u64) -> Result<Principal, Denial> {
    check_principal(&claim.name).map_err(|m| {
        Denial::denied(
            None,
            format!("node {node} forwarded an invalid principal: {m}"),
        )
    })?;
    let mut roles = BTreeSet::new();
    for r in split(&claim.roles) {
        roles.insert(Role::parse(&r).ok_or_else(|| {
            Denial::denied(
                Some(&claim.name),
                format!("node {node} forwarded an unknown role {r:?}"),
            )
        })?);
    }
    Ok(Principal {
        name: claim.name.clone(),
        roles,
        services: split(&claim.services),
        regions: split(&claim.regions),
        source: Source::Forwarded { node },
    })
}

/// Whether `principal` may call `path`.
pub fn authorize(principal: &Principal, path: &str) -> Result<Need, Denial> {
    let Some(need) = need(path) else {
        return Err(Denial::denied(
            Some(&principal.name),
            format!("{path} is not a method of the client API"),
        ));
    };
    if principal.may(need) {
        return Ok(need);
    }
    let held: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    Err(Denial::denied(
        Some(&principal.name),
        format!(
            "{} (roles: {}) may not call {}: it needs the {} role; ask an administrator",
            principal.name,
            if held.is_empty() {
                "none".into()
            } else {
                held.join(", ")
            },
            path.rsplit('/').next().unwrap_or(path),
            need.role()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::{CertConfig, TokenConfig};

    fn dir() -> Directory {
        let token = |name: &str, tok: &str, roles: Vec<Role>, regions: Vec<&str>| TokenConfig {
            name: name.into(),
            sha256: hex::encode(token_hash(tok)),
            roles,
            services: vec![],
            regions: regions.into_iter().map(String::from).collect(),
        };
        Directory::new(&AuthConfig {
            enabled: true,
            tokens: vec![
                token("reader", "r-tok", vec![Role::Reader], vec![]),
                token("agent-eu", "a-tok", vec![Role::Agent], vec!["eu-west"]),
                token("ops", "o-tok", vec![Role::Operator], vec![]),
                token("root", "x-tok", vec![Role::Admin], vec![]),
            ],
            certs: vec![CertConfig {
                name: "ops.example".into(),
                roles: vec![Role::Operator],
                services: vec!["payments".into()],
                regions: vec![],
            }],
        })
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn auth(d: &Directory, c: Credentials<'_>) -> Result<Principal, Denial> {
        d.authenticate(&c, &BTreeSet::from([1, 2, 3]))
    }

    #[test]
    fn every_method_is_listed_once_and_unknown_paths_are_refused() {
        let mut seen = BTreeSet::new();
        for (p, _) in METHODS {
            assert!(seen.insert(*p), "{p} listed twice");
        }
        assert_eq!(METHODS.len(), 15 + 9, "every Coordinator and Admin method");
        let root = auth(
            &dir(),
            Credentials {
                authorization: Some(&bearer("x-tok")),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(authorize(&root, "/baton.v1.Coordinator/Failover").is_ok());
        for p in [
            "/baton.v1.Raft/Vote",
            "/baton.v1.Coordinator/Nope",
            "/grpc.health.v1.Healthy/Check",
            "",
        ] {
            assert!(
                matches!(authorize(&root, p), Err(Denial::PermissionDenied { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        let d = dir();
        let p = |t: &str| {
            auth(
                &d,
                Credentials {
                    authorization: Some(&bearer(t)),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let (reader, agent, ops, root) = (p("r-tok"), p("a-tok"), p("o-tok"), p("x-tok"));
        for (path, need) in METHODS {
            assert!(authorize(&root, path).is_ok(), "{path}");
            assert_eq!(
                authorize(&reader, path).is_ok(),
                *need == Need::Read,
                "{path}"
            );
            assert_eq!(
                authorize(&agent, path).is_ok(),
                matches!(need, Need::Read | Need::Agent),
                "{path}"
            );
            assert_eq!(
                authorize(&ops, path).is_ok(),
                matches!(need, Need::Read | Need::Operator),
                "{path}"
            );
        }
        let e = authorize(&reader, "/baton.v1.Coordinator/Failover").unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        assert!(
            e.status().message().contains("needs the operator role"),
            "{e:?}"
        );
        assert!(!reader.sees_internals() && !agent.sees_internals());
        assert!(ops.sees_internals() && root.sees_internals());
    }

    #[test]
    fn missing_or_bad_credentials_are_unauthenticated() {
        let d = dir();
        let code = |c: Credentials<'_>| auth(&d, c).unwrap_err().status().code();
        assert_eq!(code(Credentials::default()), tonic::Code::Unauthenticated);
        assert_eq!(
            code(Credentials {
                authorization: Some("Bearer nope"),
                ..Default::default()
            }),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(Credentials {
                authorization: Some("r-tok"),
                ..Default::default()
            }),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(Credentials {
                authorization: Some("Bearer "),
                ..Default::default()
            }),
            tonic::Code::Unauthenticated
        );
        // The hash itself is not a token.
        let h = format!("Bearer {}", hex::encode(token_hash("r-tok")));
        assert_eq!(
            code(Credentials {
                authorization: Some(&h),
                ..Default::default()
            }),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn certificates_map_to_their_principal() {
        let d = dir();
        let id = CertIdentity {
            names: vec!["ops.example".into()],
        };
        let p = auth(
            &d,
            Credentials {
                cert: Some(&id),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((p.name.as_str(), &p.source), ("ops.example", &Source::Cert));
        assert!(p.check_scope("payments", Some("eu-west")).is_ok());
        assert_eq!(
            p.check_scope("orders", None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A certificate of the CA naming nobody configured (e.g. a node's, used as a client).
        let node = CertIdentity {
            names: vec!["node-2".into()],
        };
        let e = auth(
            &d,
            Credentials {
                cert: Some(&node),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn agents_are_bound_to_their_regions() {
        let d = dir();
        let a = auth(
            &d,
            Credentials {
                authorization: Some(&bearer("a-tok")),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(a.check_scope("payments", Some("eu-west")).is_ok());
        let e = a.check_scope("payments", Some("us-east")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("eu-west"), "{}", e.message());
    }

    #[test]
    fn forwarded_principals_are_believed_only_from_member_node_certificates() {
        let d = dir();
        let claim = ForwardedClaim {
            name: "ops.example".into(),
            roles: "operator".into(),
            services: "payments".into(),
            regions: String::new(),
        };
        let with = |names: &[&str]| CertIdentity {
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        let node2 = with(&["node-2"]);
        let p = auth(
            &d,
            Credentials {
                cert: Some(&node2),
                forwarded: Some(claim.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.source, Source::Forwarded { node: 2 });
        assert_eq!(p.roles, BTreeSet::from([Role::Operator]));
        assert_eq!(p.services, vec!["payments".to_string()]);
        // Not a member, a client certificate, no certificate, a token: all refused.
        for cert in [
            Some(with(&["node-9"])),
            Some(with(&["ops.example"])),
            Some(with(&["xnode-2"])),
            None,
        ] {
            let e = auth(
                &d,
                Credentials {
                    cert: cert.as_ref(),
                    forwarded: Some(claim.clone()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert_eq!(e.status().code(), tonic::Code::PermissionDenied, "{cert:?}");
        }
        let e = auth(
            &d,
            Credentials {
                authorization: Some(&bearer("x-tok")),
                forwarded: Some(claim.clone()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        // Even a node may not claim a reserved name or an unknown role.
        for bad in [
            ForwardedClaim {
                name: "automation".into(),
                ..claim.clone()
            },
            ForwardedClaim {
                roles: "root".into(),
                ..claim.clone()
            },
        ] {
            assert!(auth(
                &d,
                Credentials {
                    cert: Some(&node2),
                    forwarded: Some(bad),
                    ..Default::default()
                }
            )
            .is_err());
        }
        assert_eq!(
            trusted_forwarder(Some(&with(&["a", "node-3"])), &BTreeSet::from([3])),
            Some(3)
        );
        assert_eq!(
            trusted_forwarder(Some(&with(&["node-0"])), &BTreeSet::from([0])),
            None
        );
    }

    #[test]
    fn auth_off_lets_everyone_in_as_anonymous_at_their_address() {
        let d = Directory::default();
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let p = d
            .authenticate(
                &Credentials {
                    addr: Some(addr),
                    ..Default::default()
                },
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(p.name, "anonymous@127.0.0.1:4000");
        assert!(METHODS.iter().all(|(m, _)| authorize(&p, m).is_ok()));
        let raft = d.decide(
            &Credentials::default(),
            &BTreeSet::new(),
            "/baton.v1.Raft/AppendEntries",
        );
        assert!(raft.is_ok(), "auth off keeps serving what it served");
        let on = dir();
        let c = Credentials {
            authorization: Some("Bearer x-tok"),
            ..Default::default()
        };
        assert!(on
            .decide(&c, &BTreeSet::new(), "/baton.v1.Raft/AppendEntries")
            .is_err());
        assert!(on
            .decide(&c, &BTreeSet::new(), "/baton.v1.Admin/AddNode")
            .is_ok());
        // A follower's forwarded anonymous caller keeps its address; no other name is taken.
        let fwd = |name: &str| ForwardedClaim {
            name: name.into(),
            ..Default::default()
        };
        let p = d
            .authenticate(
                &Credentials {
                    addr: Some(addr),
                    forwarded: Some(fwd("anonymous@10.0.0.1:5")),
                    ..Default::default()
                },
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(p.name, "anonymous@10.0.0.1:5");
        let p = d
            .authenticate(
                &Credentials {
                    addr: Some(addr),
                    forwarded: Some(fwd("automation")),
                    ..Default::default()
                },
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(p.name, "anonymous@127.0.0.1:4000");
    }

    #[test]
    fn reserved_names() {
        for n in [
            "automation",
            "Automation",
            "anonymous",
            "anonymous@1.2.3.4:5",
            "node-1",
        ] {
            assert!(is_reserved(n), "{n}");
        }
        for n in ["ops", "node", "node-x", "automation-bot"] {
            assert!(!is_reserved(n), "{n}");
        }
    }
}
