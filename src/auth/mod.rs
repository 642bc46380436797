//! Who is calling: the identity a connection proved (a verified client certificate) and,
//! built on it and on bearer tokens, the principal and roles every RPC is checked against.
//!
//! - [`policy`]: pure: the method table, roles, credentials -> principal, the trust rule
//!   for forwarded principals.
//! - [`layer`]: the tower layer over the client server that applies it to every request.
//! - [`record`]: audit-only entries (refusals, rate-limited; cluster operations) through Raft.

pub mod config;
pub mod layer;
pub mod policy;
pub mod record;

pub use layer::{AuthLayer, Authority};
pub use policy::{Principal, Role};
pub use record::Recorder;

pub use crate::connection::CertIdentity;
