//! The one place every client API request passes through: a tower layer over the client
//! server that authenticates the caller, checks the method against [`super::policy::METHODS`]
//! and puts the [`Principal`] in the request's extensions for the handlers. Refused calls
//! of operator and admin methods are audited (rate-limited) through [`Recorder`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{ready, Either, Ready};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::policy::{
    campaigner, Credentials, Denial, Directory, ForwardedClaim, Need, Principal, CAMPAIGN_HEADER,
    TRANSFER_PATH,
};
use super::record::Recorder;
use super::CertIdentity;
use crate::auth::config::AuthConfig;
use crate::raft::Raft;

/// `authorization: Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = crate::wire::AUTHORIZATION_KEY;
/// The principal a forwarding node vouches for (believed only from a member node's cert).
pub const PRINCIPAL_HEADER: &str = crate::wire::PRINCIPAL_KEY;
/// Its roles, comma-separated.
pub const PRINCIPAL_ROLES_HEADER: &str = crate::wire::PRINCIPAL_ROLES_KEY;
/// Its bound services, comma-separated.
pub const PRINCIPAL_SERVICES_HEADER: &str = crate::wire::PRINCIPAL_SERVICES_KEY;
/// Its bound regions, comma-separated.
pub const PRINCIPAL_REGIONS_HEADER: &str = crate::wire::PRINCIPAL_REGIONS_KEY;

/// What a node authenticates against.
pub struct Authority {
    dir: Directory,
    members: Box<dyn Fn() -> BTreeSet<u64> + Send + Sync>,
    recorder: Recorder,
}

impl Authority {
    /// From `[auth]`; `raft` tells the current members (whose node certificates may vouch
    /// for forwarded principals), `recorder` audits refusals.
    pub fn new(cfg: &AuthConfig, raft: Raft, recorder: Recorder) -> Arc<Authority> {
        let members = move || {
            let m = raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        Self::with_members(cfg, Box::new(members), recorder)
    }

    /// Like [`Authority::new`], with the current members told by `members`.
    pub fn with_members(
        cfg: &AuthConfig,
        members: Box<dyn Fn() -> BTreeSet<u64> + Send + Sync>,
        recorder: Recorder,
    ) -> Arc<Authority> {
        if cfg.enabled {
            tracing::info!(
                tokens = cfg.tokens.len(),
                certs = cfg.certs.len(),
                "authentication on: every client call needs a token or certificate with the right role"
            );
        } else {
            tracing::warn!(
                "INSECURE: [auth] is off — anyone who reaches the client port can do anything \
                 (move leases, change services and membership); enable [auth] outside of trials"
            );
        }
        Arc::new(Authority {
            dir: Directory::new(cfg),
            members,
            recorder,
        })
    }

    /// Authenticates and authorizes a request: its principal, or the status to answer.
    pub fn check<B>(&self, req: &mut http::Request<B>) -> Result<Principal, tonic::Status> {
        let path = req.uri().path().to_string();
        let addr = req
            .extensions()
            .get::<crate::connection::ConnInfo>()
            .and_then(|c| c.remote)
            .or_else(|| {
                req.extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr)
            })
            .or_else(|| {
                req.extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
            });
        let cert = cert_identity(req);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let forwarded = header(PRINCIPAL_HEADER).map(|name| ForwardedClaim {
            name,
            roles: header(PRINCIPAL_ROLES_HEADER).unwrap_or_default(),
            services: header(PRINCIPAL_SERVICES_HEADER).unwrap_or_default(),
            regions: header(PRINCIPAL_REGIONS_HEADER).unwrap_or_default(),
        });
        if path == TRANSFER_PATH && req.headers().contains_key(CAMPAIGN_HEADER) {
            return Ok(campaigner(addr));
        }
        let authorization = header(AUTHORIZATION_HEADER);
        let creds = Credentials {
            authorization: authorization.as_deref(),
            cert: cert.as_ref(),
            forwarded,
            addr,
        };
        let members = if creds.forwarded.is_some() && self.dir.enabled() {
            (self.members)()
        } else {
            BTreeSet::new()
        };
        let decided = self.dir.decide(&creds, &members, &path);
        match decided {
            Ok(p) => Ok(p),
            Err(denial) => {
                let audited = matches!(
                    super::policy::need(&path),
                    Some(Need::Operator | Need::Admin)
                );
                let known = match &denial {
                    // A principal that authenticated: recorded by its name.
                    Denial::PermissionDenied {
                        principal: Some(p), ..
                    } if self.principal_known(p) => Some(p.clone()),
                    _ => None,
                };
                let who = known
                    .clone()
                    .unwrap_or_else(|| Principal::anonymous(addr).name);
                let status = denial.status();
                tracing::info!(method = %path, caller = %who, code = ?status.code(), "refused: {}", status.message());
                if audited {
                    self.recorder.refused(
                        &who,
                        known.is_some(),
                        &path,
                        &format!("{:?}: {}", status.code(), status.message()),
                    );
                }
                Err(status)
            }
        }
    }

    fn principal_known(&self, name: &str) -> bool {
        // Only names the directory vouches for (a token or cert entry) are recorded as the
        // actor; anything a caller merely claimed is recorded under its address.
        self.dir.knows(name)
    }
}

/// The verified client certificate's names, read the way handlers read them.
fn cert_identity<B>(req: &mut http::Request<B>) -> Option<CertIdentity> {
    let ext = std::mem::take(req.extensions_mut());
    let probe = tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), ext, ());
    let id = CertIdentity::of(&probe).cloned();
    let (_, ext, ()) = probe.into_parts();
    *req.extensions_mut() = ext;
    id
}

/// The layer to put over the client server.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authority>,
}

impl AuthLayer {
    /// A layer checking every request against `auth`.
    pub fn new(auth: Arc<Authority>) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the client server.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authority>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // Probes and reflection need no credentials (and get no principal: they touch no
        // handler that asks for one).
        if super::policy::is_open(req.uri().path()) {
            return Either::Right(self.inner.call(req));
        }
        match self.auth.check(&mut req) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Either::Right(self.inner.call(req))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::{CertConfig, TokenConfig};
    use crate::auth::policy::{token_hash, Role, Source};

    fn authority() -> Arc<Authority> {
        let cfg = AuthConfig {
            enabled: true,
            tokens: vec![TokenConfig {
                name: "ci".into(),
                sha256: hex::encode(token_hash("tok")),
                roles: vec![Role::Operator],
                services: vec![],
                regions: vec![],
            }],
            certs: vec![CertConfig {
                name: "ops.example".into(),
                roles: vec![Role::Admin],
                services: vec![],
                regions: vec![],
            }],
        };
        Authority::with_members(
            &cfg,
            Box::new(|| BTreeSet::from([1, 2, 3])),
            Recorder::disabled(),
        )
    }

    fn request(path: &str, headers: &[(&str, &str)], cert: Option<&[&str]>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(format!("http://x{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        if let Some(names) = cert {
            r.extensions_mut().insert(CertIdentity {
                names: names.iter().map(|s| s.to_string()).collect(),
            });
        }
        r
    }

    #[test]
    fn the_layer_reads_tokens_certificates_and_forwarded_principals() {
        let a = authority();
        let add = "/baton.v1.Admin/AddNode";
        // A token; the request keeps its extensions (the certificate identity stays).
        let mut r = request(
            "/baton.v1.Coordinator/Freeze",
            &[("authorization", "Bearer tok")],
            Some(&["x"]),
        );
        let p = a.check(&mut r).unwrap();
        assert_eq!((p.name.as_str(), &p.source), ("ci", &Source::Token));
        assert!(r.extensions().get::<CertIdentity>().is_some());
        assert_eq!(
            a.check(&mut request(add, &[("authorization", "Bearer tok")], None))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        // A client certificate, as the TLS listener would set it.
        let p = a
            .check(&mut request(add, &[], Some(&["ops.example"])))
            .unwrap();
        assert_eq!((p.name.as_str(), &p.source), ("ops.example", &Source::Cert));
        // A principal forwarded by node 2 (its certificate), and the same headers from a client.
        let fwd = [
            ("x-baton-principal", "ops.example"),
            ("x-baton-principal-roles", "admin"),
        ];
        let p = a.check(&mut request(add, &fwd, Some(&["node-2"]))).unwrap();
        assert_eq!(p.source, Source::Forwarded { node: 2 });
        let e = a
            .check(&mut request(add, &fwd, Some(&["ops.example"])))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = a
            .check(&mut request(add, &fwd, Some(&["node-7"])))
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "node 7 is not a member"
        );
        assert_eq!(
            a.check(&mut request(add, &[], None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // A campaign passes with no role; nothing else does without credentials.
        let campaign = [(crate::auth::policy::CAMPAIGN_HEADER, "1")];
        let p = a
            .check(&mut request(
                crate::auth::policy::TRANSFER_PATH,
                &campaign,
                None,
            ))
            .unwrap();
        assert!(p.roles.is_empty());
        assert!(a.check(&mut request(add, &campaign, None)).is_err());
    }
}
