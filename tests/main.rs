//! Integration tests against real `baton` processes on 127.0.0.1 (one test binary).
//!
//! `autotests = false` in Cargo.toml: a new `tests/*.rs` file runs only once it is listed
//! below as a module.

mod support;

mod agent;
mod auth;
mod automation;
mod backup;
mod bad_input;
mod cli;
mod dev;
mod disk;
mod lease_safety;
mod lifecycle;
mod limits;
mod load;
mod membership;
mod ops;
mod postgres;
mod runbook;
mod security;
mod status_page;
mod switchover;
mod tls;
mod watch;
