//! The hardening keys of a service (docs/hardening.md) as the configuration reads them:
//! checked (unknown capabilities and system calls, ranges), resolved into `Hardening`
//! (the capability numbers, the system call filter for this architecture, the I/O
//! class), and the host ids of root services with `private_users`. What the child
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
    /// (uid and gid) root inside maps to, or why none could be chosen (the start then
    /// fails with it: root inside is never root outside). Set by the plan
    /// (`assign_host_ids`), which sees every service.
    pub host_id: Option<Result<u32, String>>,
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

/// The host ids of the root services with `private_users`, `wanted` in name order,
/// each with the id its existing `data_dir` belongs to, if any. The same at every
/// start, whatever services are added or removed, as far as the range allows:
///
/// - A service whose `data_dir` belongs to an id of the range keeps that id (the
///   directory is the record of what it was given; taking another would leave the
///   service outside its own data).
/// - Every other service starts at an id derived from its name (FNV-1a) and takes the
///   next free one up on a clash (wrapping within `HOST_IDS`), all services moving up
///   one step per round: a service on its first choice is never pushed off it by
///   another's search, only by a service with the same first choice and an earlier
///   name.
///
/// `in_use` says whether an account has an id; its error (the accounts cannot be read)
/// is that service's answer, as is a range with nothing free: an id nobody can vouch
/// for is never given, nor is root's in its place.
pub fn host_ids(
    wanted: &[(&str, Option<u32>)],
    in_use: impl Fn(u32) -> Result<bool, String>,
) -> Vec<Result<u32, String>> {
    let (first, n) = (*HOST_IDS.start(), HOST_IDS.end() - HOST_IDS.start() + 1);
    let mut out: Vec<Option<Result<u32, String>>> = vec![None; wanted.len()];
    let mut given = std::collections::BTreeSet::new();
    let mut take = |slot: &mut Option<Result<u32, String>>, id: u32| {
        if given.contains(&id) {
            return;
        }
        match in_use(id) {
            Err(e) => *slot = Some(Err(format!("cannot choose a host id: {e}"))),
            Ok(true) => {}
            Ok(false) => {
                given.insert(id);
                *slot = Some(Ok(id));
            }
        }
    };
    for ((_, claim), slot) in wanted.iter().zip(&mut out) {
        if let Some(id) = claim.filter(|id| HOST_IDS.contains(id)) {
            take(slot, id);
        }
    }
    for step in 0..n {
        let mut open = false;
        for ((name, _), slot) in wanted.iter().zip(&mut out) {
            if slot.is_none() {
                open = true;
                take(slot, first + (name_hash(name) % n + step) % n);
            }
        }
        if !open {
            break;
        }
    }
    out.into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                Err(format!(
                    "no free host id: every one of {}-{} is an account's or another service's",
                    HOST_IDS.start(),
                    HOST_IDS.end()
                ))
            })
        })
        .collect()
}

/// FNV-1a of a service name: where its host id search starts.
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one id of a lone service `name`.
    fn host_id(name: &str, in_use: impl Fn(u32) -> Result<bool, String>) -> Result<u32, String> {
        host_ids(&[(name, None)], in_use).remove(0)
    }

    /// The id after `id` in the range, wrapping.
    fn up(id: u32) -> u32 {
        if id == *HOST_IDS.end() {
            *HOST_IDS.start()
        } else {
            id + 1
        }
    }

    /// A name whose first choice is `id`, and that sorts after `after`, found by search.
    fn named_for(id: u32, after: &str) -> String {
        let n = HOST_IDS.end() - HOST_IDS.start() + 1;
        (0..)
            .map(|i| format!("{after}-{i}"))
            .find(|name| HOST_IDS.start() + name_hash(name) % n == id)
            .unwrap_or_default()
    }

    #[test]
    fn host_ids_are_stable_in_range_and_skip_taken_ones() {
        let free = |_| Ok(false);
        let a = host_id("web", free).unwrap();
        assert!(HOST_IDS.contains(&a));
        assert_eq!(host_id("web", free), Ok(a), "the same at every start");
        assert_ne!(host_id("db", free), Ok(a));
        assert_eq!(host_id("web", |id| Ok(id == a)), Ok(up(a)));
    }

    #[test]
    fn a_service_keeps_its_host_id_when_others_come_and_go() {
        let free = |_| Ok(false);
        let late = "web".to_string();
        let x = host_id(&late, free).unwrap();
        let early = named_for(x, "ahead");
        assert!(early < late);
        // A clash: the earlier name keeps the first choice, the other the next one up.
        let both = host_ids(&[(&early, None), (&late, None)], free);
        assert_eq!(both, [Ok(x), Ok(up(x))]);
        // The id its data_dir belongs to is its record: a newcomer with the same first
        // choice and an earlier name does not take it.
        let both = host_ids(&[(&early, None), (&late, Some(x))], free);
        assert_eq!(both, [Ok(up(x)), Ok(x)]);
        // Another's search never pushes a service off its first choice: `next`, whose
        // first choice is where the clash's loser would go, keeps it; the loser goes on.
        let next = named_for(up(x), &late);
        assert!(
            late < next,
            "next sorts last, so name order alone would lose"
        );
        let three = host_ids(&[(&early, None), (&late, None), (&next, None)], free);
        assert_eq!(three, [Ok(x), Ok(up(up(x))), Ok(up(x))]);
        // A claim outside the range, or an account's, is not taken.
        assert_eq!(host_ids(&[(&late, Some(0))], free), [Ok(x)]);
        let taken = |id| Ok(id == 61_300);
        assert_eq!(
            host_ids(&[(&late, Some(61_300))], taken),
            [host_id(&late, taken)]
        );
    }

    #[test]
    fn no_host_id_is_given_when_the_accounts_cannot_be_read_or_all_are_taken() {
        let e = host_id("web", |_| {
            Err("cannot read /etc/passwd: Permission denied".into())
        });
        assert_eq!(
            e,
            Err("cannot choose a host id: cannot read /etc/passwd: Permission denied".into())
        );
        // An error after some taken ids is still an error, not the next id.
        let a = host_id("web", |_| Ok(false)).unwrap();
        let e = host_id("web", |id| match id == a {
            true => Ok(true),
            false => Err("cannot look up uid: EIO".into()),
        });
        assert!(e.is_err(), "{e:?}");
        let e = host_id("web", |_| Ok(true)).unwrap_err();
        assert!(e.starts_with("no free host id"), "{e}");
    }
}
