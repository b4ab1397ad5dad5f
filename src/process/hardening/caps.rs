//! `capabilities` (docs/hardening.md): the child's steps that limit
//! the bounding, permitted, effective and inheritable sets to the listed ones, and raise
//! them as ambient capabilities for a service with `user`. Raw syscalls only; nothing
//! here allocates in the child.

pub use crate::config::capabilities::NAMES;

/// The highest capability this kernel knows, from /proc/sys/kernel/cap_last_cap.
pub fn last_cap() -> Option<u32> {
    static LAST: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// What the child does, prepared by the parent.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Bit per capability to keep.
    pub keep: u64,
    pub last_cap: u32,
    /// The service switches to a `user`: keep the permitted set across the switch
    /// (PR_SET_KEEPCAPS) and raise the kept ones as ambient capabilities, the only
    /// way a non-root process keeps capabilities across exec without file caps.
    pub ambient: bool,
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// In the child, before the identity switch: keep the permitted set across it.
///
/// # Safety
/// Raw prctl only.
pub unsafe fn before_identity(plan: &Plan) -> bool {
    !plan.ambient || libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0
}

/// In the child, after the identity switch: the bounding set is cut to `keep`, then
/// permitted, effective and inheritable are set to `keep` (a root service execs with
/// permitted = inheritable | bounding, so both must be cut), then, for a `user`
/// service, each kept one is raised as ambient. Fails (errno set) if a listed
/// capability is not ours to give.
///
/// # Safety
/// Raw syscalls on stack data only.
pub unsafe fn apply(plan: &Plan) -> bool {
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) < 0 {
        return false;
    }
    // After a uid switch the effective set is empty; dropping from the bounding set
    // needs CAP_SETPCAP in it.
    for d in &mut data {
        d.effective = d.permitted;
    }
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
        return false;
    }
    for cap in 0..=plan.last_cap.min(63) {
        if plan.keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
            return false;
        }
    }
    let (low, high) = (plan.keep as u32, (plan.keep >> 32) as u32);
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
        return false;
    }
    if plan.ambient {
        for cap in 0..=plan.last_cap.min(63) {
            if plan.keep & (1 << cap) != 0
                && libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0
            {
                return false;
            }
        }
    }
    true
}
