//! Fuzz target `spec`: a protobuf `ServiceSpec` decoded, converted and validated: what is accepted is within the limits.
//! The body is `baton::fuzzing::spec`, which its property-test twin in `cargo test` runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::spec(data));
