//! A service's output cut into lines and formatted, on arbitrary bytes and line limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator::fuzz::log_lines(data));
