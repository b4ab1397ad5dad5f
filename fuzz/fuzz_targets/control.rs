//! The control socket's request parser on arbitrary request lines.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator::fuzz::control_request(data));
