//! The gRPC check's HTTP/2 answer reader on arbitrary server bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator::fuzz::http2_answer(data));
