//! Fuzz target `apply`: sequences of state-machine commands (bincode, or built from the input) applied to a `State`; every invariant checked after each.
//! The body is `baton::fuzzing::apply`, which its property-test twin in `cargo test` runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::apply(data));
