//! The gRPC check's HTTP/2 answer reader on arbitrary server bytes, with the memory it
//! allocates per answer bounded.
#![no_main]

#[path = "common/peak.rs"]
mod peak;

#[global_allocator]
static ALLOC: peak::Counting = peak::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| peak::bounded(|| orchestrator::fuzz::http2_answer(data)));
