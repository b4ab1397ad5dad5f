//! A counting global allocator for the fuzz targets: what the parser under test really
//! allocates while it reads one input, not only the size of what it hands back. A
//! decoder that keeps its output small but grows a buffer, a table or a copy along the
//! way is caught here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The most one input may make a target hold at once, on top of what was held before.
pub const BOUND: usize = 1024 * 1024;

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters
// only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for alloc.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks may be live at once while the contents move.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

/// Runs `f` on one input and fails the input if the memory held at any moment during
/// it rose more than `BOUND` above what was held when it began.
pub fn bounded(f: impl FnOnce()) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    let peak = PEAK.load(Relaxed) - base;
    assert!(
        peak <= BOUND,
        "one input made the target hold {peak} bytes at once (bound {BOUND})"
    );
}
