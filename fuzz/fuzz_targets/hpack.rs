//! The HPACK decoder on arbitrary header blocks, with the decoded size bounded and the
//! memory it allocates meanwhile too.
#![no_main]

#[path = "common/peak.rs"]
mod peak;

#[global_allocator]
static ALLOC: peak::Counting = peak::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| peak::bounded(|| orchestrator::fuzz::hpack(data)));
