//! The hardening keys of a service (docs/hardening.md) as the configuration reads them:
//! checked (unknown capabilities and system calls, ranges), resolved into `Hardening`
//! (the capability numbers, the system call filter for this architecture, the I/O
//! class), and the host id a root service with `private_users` gets. What the child
//! does with them is `process::hardening`'s.

use super::discovery::Identity;
use super::{capabilities, syscalls};
use super::{FilterAction, IoClass, ServiceConfig};
use std::path::PathBuf;

/// The hardening keys of one service, validated and resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardening {
    /// Capability numbers to keep; `None` leaves capabilities as they are.
    pub capabilities: Option<Vec<u32>>,
    /// `syscall_filter` and `syscall_allow` as written.
    pub syscall_filter: Option<Vec<String>>,
    pub syscall_allow: Option<Vec<String>>,
    /// What they make the filter do on this architecture, resolved once; `None`: no
    /// filter.
    pub filter: Option<syscalls::Rule>,
    pub filter_kill: bool,
    pub private_network: bool,
    pub private_tmp: bool,
    pub read_only_paths: Vec<PathBuf>,
    pub private_users: bool,
    /// `private_users` for a service whose user is root: the one unprivileged host id
    /// (uid and gid) root inside maps to. Set by the plan (`assign_host_ids`), which
    /// sees every service.
    pub host_id: Option<u32>,
    pub nice: Option<i32>,
    pub io: Option<(IoClass, u8)>,
    pub io_weight: Option<u32>,
}

/// Checks the hardening keys of `svc`; `err(key, message)` for each problem.
pub fn validate(svc: &ServiceConfig, err: &mut dyn FnMut(&str, String)) {
    for name in svc.capabilities.iter().flatten() {
        if capabilities::number(name).is_none() {
            let hint = super::nearest(name, capabilities::NAMES.iter().copied())
                .map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
            err("capabilities", format!("unknown capability `{name}`{hint}"));
        }
    }
    for (key, list) in [
        ("syscall_filter", &svc.syscall_filter),
        ("syscall_allow", &svc.syscall_allow),
    ] {
        for entry in list.iter().flatten() {
            if !syscalls::known(entry) {
                let hint = super::nearest(entry, syscalls::names())
                    .map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
                err(key, format!("unknown system call or group `{entry}`{hint}"));
            }
        }
    }
    for p in &svc.read_only_paths {
        if !p.is_absolute() {
            err(
                "read_only_paths",
                format!("`{}` is not an absolute path", p.display()),
            );
        }
    }
    if let Some(n) = svc.nice.filter(|n| !(-20..=19).contains(n)) {
        err("nice", format!("must be between -20 and 19, not {n}"));
    }
    if let Some(p) = svc.io_priority.filter(|p| *p > 7) {
        err("io_priority", format!("must be between 0 and 7, not {p}"));
    }
    if let Some(w) = svc.io_weight.filter(|w| !(1..=10_000).contains(w)) {
        err("io_weight", format!("must be between 1 and 10000, not {w}"));
    }
}

/// What is accepted but worth a warning in `svc`'s hardening keys (logged at start
/// and reload, printed by `check`).
pub fn warnings(svc: &ServiceConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(IoClass::Idle), Some(p)) = (svc.io_class, svc.io_priority) {
        out.push(format!(
            "io_priority {p} is ignored: the idle class has no priority levels"
        ));
    }
    out
}

/// The hardening of a validated `svc`.
pub fn resolve(svc: &ServiceConfig) -> Hardening {
    let io = match (svc.io_class, svc.io_priority) {
        (None, None) => None,
        (class, level) => Some((
            class.unwrap_or(IoClass::BestEffort),
            // The idle class has no levels: a level given with it is ignored (and
            // warned about, see `warnings`), as ionice does.
            if class == Some(IoClass::Idle) {
                0
            } else {
                level.unwrap_or(4)
            },
        )),
    };
    Hardening {
        capabilities: svc.capabilities.as_ref().map(|names| {
            let mut n: Vec<u32> = names
                .iter()
                .filter_map(|c| capabilities::number(c))
                .collect();
            n.sort_unstable();
            n.dedup();
            n
        }),
        syscall_filter: svc.syscall_filter.clone(),
        syscall_allow: svc.syscall_allow.clone(),
        filter: filter_rule(svc),
        filter_kill: svc.syscall_filter_action == FilterAction::Kill,
        private_network: svc.private_network,
        private_tmp: svc.private_tmp,
        read_only_paths: svc.read_only_paths.clone(),
        private_users: svc.private_users,
        host_id: None,
        nice: svc.nice,
        io,
        io_weight: svc.io_weight,
    }
}

/// The host ids a root service with `private_users` may get, as systemd's
/// `DynamicUser=` range.
pub const HOST_IDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// The host id for service `name`: derived from the name (FNV-1a), so the same at
/// every start, or the next one up (wrapping within `HOST_IDS`) that `taken` does not
/// claim.
pub fn host_id(name: &str, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let (first, n) = (*HOST_IDS.start(), HOST_IDS.end() - HOST_IDS.start() + 1);
    (0..n)
        .map(|i| first + (h % n + i) % n)
        .find(|id| !taken(*id))
}

/// Whether a service running as `identity` needs a host id of its own under
/// `private_users`: its user is root, and so is the daemon (only root may map another
/// id; an unprivileged daemon maps itself, as before).
pub fn needs_host_id(h: &Hardening, identity: Option<&Identity>) -> bool {
    h.private_users && identity.is_none_or(|id| id.uid == 0) && nix::unistd::geteuid().is_root()
}

/// The filter `syscall_allow` and `syscall_filter` ask for: an allow list of the
/// listed calls and `@default` (always added, as systemd does) less the denied ones
/// (deny wins), or a deny list alone.
fn filter_rule(svc: &ServiceConfig) -> Option<syscalls::Rule> {
    let denied = syscalls::resolve(svc.syscall_filter.as_deref().unwrap_or_default());
    match &svc.syscall_allow {
        Some(allow) => {
            let mut entries: Vec<&str> = allow.iter().map(String::as_str).collect();
            entries.push("@default");
            Some(syscalls::Rule::Allow(
                syscalls::resolve(&entries).without(&denied),
            ))
        }
        None => svc
            .syscall_filter
            .as_ref()
            .map(|_| syscalls::Rule::Deny(denied)),
    }
}

impl Hardening {
    /// True when nothing is asked for (the spawn path then prepares nothing).
    pub fn is_off(&self) -> bool {
        *self == Hardening::default()
    }
}
