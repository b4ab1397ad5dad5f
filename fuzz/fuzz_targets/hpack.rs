//! The HPACK decoder on arbitrary header blocks, with the decoded size bounded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator::fuzz::hpack(data));
