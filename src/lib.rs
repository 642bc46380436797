//! # baton — a failover coordinator
//!
//! A Raft cluster spread over regions holds, for each service, the primary-region lease and
//! its fencing token, and serves it over gRPC.
//!
//! The map of the crate (dependencies point one way, down this list):
//!
//! - [`cli`]: the `baton` command line (talks to a cluster through [`client`]; `server`
//!   and `dev` run [`node`]s; `agent` runs [`agent`]; `bench` runs [`bench`]).
//! - [`agent`]: the region agent: holds a region's lease, runs promote/demote hooks,
//!   fences itself, publishes its role.
//! - [`client`]: the Rust client: finds and follows the leader, reads, watches with
//!   resume, holds a lease for an agent.
//! - [`bench`]: benchmarks that start their own cluster (`baton bench leader-kill`).
//! - [`postgres`]: `baton bench postgres`: a fenced writer against PostgreSQL behind baton
//!   (cluster/postgres/) and its failover/switchover measurements.
//! - [`node`]: one coordinator process: wires config, storage, Raft, the API, the lease
//!   keeper, the controller and the health probes together; its listeners and accept loop.
//! - [`dev`]: `baton dev`, three nodes and the simulated regions (agents, health endpoints)
//!   in one process.
//! - [`wire`]: metadata keys and structured error details both ends of the API share.
//! - [`clock`]: the wall clock leaders stamp commands with.
//! - [`api`]: the gRPC services `baton.v1.Coordinator` and `baton.v1.Admin`.
//! - [`auth`]: who is calling (client certificates, hashed bearer tokens) and which roles
//!   they hold; the method table every RPC is checked against.
//! - [`telemetry`]: Prometheus metrics and the per-RPC metrics layer.
//! - [`control`]: the leader side: batched linearizable reads, the lease keeper
//!   (in-memory renewals, expiry, fencing), the automation policy (pure), operator moves
//!   and the controller that drives workflow runs.
//! - [`health`]: HTTP/TCP/gRPC probes, per-vantage streaks, the majority verdict.
//! - [`http_client`]: the one HTTP/1.1 client (hyper, a connection per request, timeout,
//!   body cap) of health probes, webhook steps and `baton dev outage|heal`.
//! - [`backup`]: the file format of `baton snapshot save` / `restore` (checksummed,
//!   versioned); the restore itself seeds storage through [`raft::seed_restored`].
//! - [`config`]: `node.toml` and service definitions in TOML (`[timing]` and `[auth]` are
//!   parsed by [`control::timing`] and [`auth::config`]).
//! - [`raft`]: openraft wiring: sled storage, the tonic transport and channel pool, the
//!   state machine, leadership transfer.
//! - [`connection`]: what a connection proved (address, verified certificate names).
//! - [`pki`]: certificates for TLS (a CA, node and client certificates) with rcgen.
//! - [`convert`]: `state` <-> `proto` conversions.
//! - [`state`]: the pure replicated model: services, leases, tokens, history, audit,
//!   observations, workflow runs. No I/O, no clocks, no tokio.
//! - [`proto`]: the generated protobuf types and gRPC stubs.

pub mod agent;
pub mod api;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
pub mod convert;
pub mod dev;
pub mod health;
pub mod http_client;
pub mod node;
pub mod pki;
pub mod postgres;
pub mod raft;
pub mod state;
pub mod telemetry;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

/// Generated protobuf types and gRPC stubs of `proto/baton/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("baton.v1");

    /// The encoded `FileDescriptorSet` of `proto/baton/v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/baton_descriptor.bin"));
}
