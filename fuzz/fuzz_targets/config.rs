//! The configuration file's parser and validator on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator::fuzz::config(data));
