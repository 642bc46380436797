//! Fuzz target `config`: node.toml parsing and validation, and service-definition files (`src/config/`).
//! The body is `baton::fuzzing::config`, which its property-test twin in `cargo test` runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::config(data));
