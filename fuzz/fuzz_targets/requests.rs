//! Fuzz target `requests`: every RPC's request decoded and validated as its handler does (`src/api/validate.rs`).
//! The body is `baton::fuzzing::requests`, which its property-test twin in `cargo test` runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::requests(data));
