//! Hardening a service (docs/hardening.md): the keys resolved from the config, everything
//! the child will need prepared before the clone (`prepare`: namespace flags, uid/gid map
//! text, the mount plan, the capability sets, the BPF program), the parent's part for
//! `private_users`, the child's small steps, and what `check` and `status` say about
//! each key on this box.
//!
//! The order of the child's steps is spawn.rs's (`child_setup`); this module never
//! decides it. Nothing here may allocate, lock or log in the child: the `unsafe fn`s
//! meant for the child say so, and only make raw system calls on prepared data.

pub mod caps;
pub mod describe;
pub mod mounts;
pub mod seccomp;

use crate::config::discovery::Identity;
use crate::config::{FilterAction, IoClass, ServiceConfig};
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
    pub filter: Option<seccomp::Rule>,
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
        if caps::number(name).is_none() {
            let hint = crate::config::nearest(name, caps::NAMES.iter().copied())
                .map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
            err("capabilities", format!("unknown capability `{name}`{hint}"));
        }
    }
    for (key, list) in [
        ("syscall_filter", &svc.syscall_filter),
        ("syscall_allow", &svc.syscall_allow),
    ] {
        for entry in list.iter().flatten() {
            if !seccomp::known(entry) {
                let hint = crate::config::nearest(entry, seccomp::names())
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
            let mut n: Vec<u32> = names.iter().filter_map(|c| caps::number(c)).collect();
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
    // SAFETY: geteuid has no preconditions.
    h.private_users && identity.is_none_or(|id| id.uid == 0) && unsafe { libc::geteuid() } == 0
}

/// The filter `syscall_allow` and `syscall_filter` ask for: an allow list of the
/// listed calls and `@default` (always added, as systemd does) less the denied ones
/// (deny wins), or a deny list alone.
fn filter_rule(svc: &ServiceConfig) -> Option<seccomp::Rule> {
    let denied = seccomp::resolve(svc.syscall_filter.as_deref().unwrap_or_default());
    match &svc.syscall_allow {
        Some(allow) => {
            let mut entries: Vec<&str> = allow.iter().map(String::as_str).collect();
            entries.push("@default");
            Some(seccomp::Rule::Allow(
                seccomp::resolve(&entries).without(&denied),
            ))
        }
        None => svc
            .syscall_filter
            .as_ref()
            .map(|_| seccomp::Rule::Deny(denied)),
    }
}

impl Hardening {
    /// True when nothing is asked for (the spawn path then prepares nothing).
    pub fn is_off(&self) -> bool {
        *self == Hardening::default()
    }

    fn ioprio(&self) -> Option<i32> {
        self.io.map(|(class, level)| {
            let class = match class {
                IoClass::Realtime => 1,
                IoClass::BestEffort => 2,
                IoClass::Idle => 3,
            };
            (class << 13) | i32::from(level)
        })
    }
}

/// Everything the child needs for `Hardening`, built before the clone.
#[derive(Debug, Default)]
pub struct Prepared {
    /// CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET as asked: the kernel creates the user
    /// namespace first, so the others belong to it.
    pub clone_flags: libc::c_int,
    /// `private_users`: what the parent writes into /proc/PID/ while the child waits.
    pub id_maps: Option<IdMaps>,
    pub mounts: Option<mounts::Plan>,
    pub loopback: bool,
    pub nice: Option<i32>,
    pub ioprio: Option<i32>,
    /// The parent sets the priorities (see `child_sets_priority`).
    priority_by_parent: bool,
    pub caps: Option<caps::Plan>,
    pub filter: Option<Vec<libc::sock_filter>>,
}

/// The id maps of a new user namespace.
#[derive(Debug)]
pub struct IdMaps {
    uid_map: String,
    gid_map: String,
    /// Write "deny" to setgroups first: required of a writer without CAP_SETGID, and
    /// done whenever the child will not call setgroups (no `user`).
    deny_setgroups: bool,
}

/// Prepares `h` for one spawn of a service running as `identity`. An error is a key
/// that cannot be applied here; the start then fails with it.
pub fn prepare(h: &Hardening, identity: Option<&Identity>) -> Result<Prepared, String> {
    let mut p = Prepared {
        nice: h.nice,
        ioprio: h.ioprio(),
        loopback: h.private_network,
        ..Prepared::default()
    };
    if h.is_off() {
        return Ok(p);
    }
    if h.private_users {
        p.clone_flags |= libc::CLONE_NEWUSER;
        p.id_maps = Some(match &h.host_id {
            // setgroups stays allowed (we write the maps as root): the child drops the
            // daemon's supplementary groups with it before it switches to root inside.
            Some(Ok(host)) => IdMaps {
                uid_map: format!("0 {host} 1\n"),
                gid_map: format!("0 {host} 1\n"),
                deny_setgroups: false,
            },
            Some(Err(e)) => return Err(format!("private_users: {e}")),
            // Mapping root to itself would give the service the host's root: never.
            None if needs_host_id(h, identity) => {
                return Err("private_users: no host id was chosen for this root service".into())
            }
            None => id_maps(identity),
        });
        // Raising priority needs CAP_SYS_NICE (or CAP_SYS_ADMIN) toward the host,
        // which a child in its own user namespace no longer has; lowering it does not.
        // The child starts at this thread's nice value.
        // SAFETY: getpriority has no memory preconditions.
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let realtime = matches!(h.io, Some((IoClass::Realtime, _)));
        p.priority_by_parent = h.nice.is_some_and(|n| n < current) || realtime;
    }
    if h.private_tmp || !h.read_only_paths.is_empty() {
        p.clone_flags |= libc::CLONE_NEWNS;
        p.mounts = Some(mounts::plan(h.private_tmp, &h.read_only_paths)?);
    }
    if h.private_network {
        p.clone_flags |= libc::CLONE_NEWNET;
    }
    if let Some(keep) = &h.capabilities {
        let last_cap = caps::last_cap().ok_or("capabilities: cannot read cap_last_cap")?;
        if let Some(c) = keep.iter().find(|c| **c > last_cap) {
            return Err(format!(
                "capabilities: {} is not known to this kernel",
                caps::NAMES[*c as usize]
            ));
        }
        p.caps = Some(caps::Plan {
            keep: keep.iter().fold(0, |m, c| m | 1 << c),
            last_cap,
            ambient: identity.is_some_and(|id| id.uid != 0),
        });
    }
    if let Some(rule) = &h.filter {
        let key = if h.syscall_allow.is_some() {
            "syscall_allow"
        } else {
            "syscall_filter"
        };
        seccomp::supported(h.filter_kill).map_err(|e| format!("{key}: {e}"))?;
        let (arch, _) = seccomp::ARCH.ok_or(format!("{key}: unsupported architecture"))?;
        p.filter = Some(seccomp::program(arch, rule, h.filter_kill));
    }
    Ok(p)
}

/// The service's user mapped to itself (and, with a `user`, its groups), every other
/// id left unmapped, which the kernel shows as nobody. (A root service with a host id
/// gets `0 HOST 1` instead; see `prepare`.)
fn id_maps(identity: Option<&Identity>) -> IdMaps {
    // SAFETY: these getters have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    match identity {
        Some(id) if euid == 0 => {
            let mut gids = id.groups.clone();
            gids.push(id.gid);
            gids.sort_unstable();
            gids.dedup();
            IdMaps {
                uid_map: format!("{0} {0} 1\n", id.uid),
                gid_map: gids.iter().map(|g| format!("{g} {g} 1\n")).collect(),
                deny_setgroups: false,
            }
        }
        _ => IdMaps {
            uid_map: format!("{euid} {euid} 1\n"),
            gid_map: format!("{egid} {egid} 1\n"),
            deny_setgroups: true,
        },
    }
}

/// For a root service under `private_users`: whether its host id may execute
/// `binary` (by the file's mode; directories on the way are not judged), or why not.
pub fn host_id_can_execute(h: &Hardening, binary: &std::path::Path) -> Result<(), String> {
    let Some(host) = host_of(h)? else {
        return Ok(());
    };
    let m = std::fs::metadata(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    if may_search(host, &m) {
        return Ok(());
    }
    Err(format!(
        "private_users: host uid {host} cannot execute {} ({}); make it executable by others",
        binary.display(),
        mode_and_owner(&m)
    ))
}

/// For a root service under `private_users`: whether its host id may enter its
/// existing `data_dir` (by the mode, as above), or why not. A missing one is created
/// as the id's; an existing one is never handed over, since its files may be meant to
/// keep their owners (say, one the service wrote as the host's root before it had
/// `private_users`): the reason says how to do it.
pub fn host_id_can_enter(h: &Hardening, dir: &std::path::Path) -> Result<(), String> {
    let Some(host) = host_of(h)? else {
        return Ok(());
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && !may_search(host, &m) => Err(format!(
            "private_users: host uid {host} cannot enter data_dir {0} ({1}); hand it over with `chown -R {host}:{host} {0}`",
            dir.display(),
            mode_and_owner(&m)
        )),
        _ => Ok(()),
    }
}

/// The host id, `None` for a service without one, or why it has none.
fn host_of(h: &Hardening) -> Result<Option<u32>, String> {
    match &h.host_id {
        None => Ok(None),
        Some(Err(e)) => Err(format!("private_users: {e}")),
        Some(Ok(host)) => Ok(Some(*host)),
    }
}

/// Whether `host` (as uid and gid, no other groups) has the x bit of a file with `m`.
fn may_search(host: u32, m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let bit = if m.uid() == host {
        0o100
    } else if m.gid() == host {
        0o010
    } else {
        0o001
    };
    m.mode() & bit != 0
}

fn mode_and_owner(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "mode {:04o}, owner {}:{}",
        m.mode() & 0o7777,
        m.uid(),
        m.gid()
    )
}

impl Prepared {
    /// True when the parent must act between the clone and the child's first step
    /// (write the id maps), so the child cannot share our memory and stop us as a
    /// vfork child does.
    pub fn parent_acts(&self) -> bool {
        self.id_maps.is_some()
    }

    /// The parent's part for `private_users`, while the child waits: the id maps, and
    /// the priorities when they are raised (the child, in its new user namespace, has
    /// no CAP_SYS_NICE or CAP_SYS_ADMIN toward the host to do it).
    pub fn parent_step(&self, pid: i32) -> Result<(), String> {
        if let Some(m) = &self.id_maps {
            let write = |file: &str, text: &str| {
                let path = format!("/proc/{pid}/{file}");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
                    .map_err(|e| format!("private_users: cannot write {path}: {e}"))
            };
            write("uid_map", &m.uid_map)?;
            if m.deny_setgroups {
                write("setgroups", "deny")?;
            }
            write("gid_map", &m.gid_map)?;
        }
        if self.child_sets_priority() {
            return Ok(());
        }
        // SAFETY: plain syscalls on a pid we just created and have not reaped.
        unsafe { set_priority(pid, self.nice, self.ioprio) }
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "cannot set nice/io priority: {}",
                    std::io::Error::last_os_error()
                )
            })
    }

    /// Whether the child sets its priority itself: always, but for a raise in a user
    /// namespace of its own. (The child does it after its mounts: a parent setting a
    /// lower priority first would slow its whole set-up down.)
    pub fn child_sets_priority(&self) -> bool {
        !self.priority_by_parent
    }
}

/// setpriority and ioprio_set on `pid` (0: the caller). Async-signal-safe.
///
/// # Safety
/// Raw syscalls only.
pub unsafe fn set_priority(pid: i32, nice: Option<i32>, ioprio: Option<i32>) -> bool {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    if let Some(n) = nice {
        if libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, n) < 0 {
            return false;
        }
    }
    if let Some(p) = ioprio {
        if libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, pid, p) < 0 {
            return false;
        }
    }
    true
}

/// In the child, in its new network namespace: brings loopback up (it starts down).
///
/// # Safety
/// Raw socket, ioctl and close on stack data only.
pub unsafe fn loopback_up() -> bool {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return false;
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    let ok = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) == 0;
    let errno = *libc::__errno_location();
    libc::close(fd);
    *libc::__errno_location() = errno;
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: &str) -> ServiceConfig {
        serde_json::from_str(json).unwrap()
    }

    fn problems(json: &str) -> Vec<String> {
        let mut out = Vec::new();
        validate(&svc(json), &mut |k, m| out.push(format!("{k}: {m}")));
        out
    }

    #[test]
    fn validation_names_the_key_and_suggests() {
        assert!(problems(r#"{"capabilities": ["CAP_NET_BIND_SERVICE"], "nice": 19}"#).is_empty());
        let p = problems(r#"{"capabilities": ["CAP_NET_BIND_SERVIC"]}"#);
        assert!(
            p[0].contains("did you mean `CAP_NET_BIND_SERVICE`"),
            "{p:?}"
        );
        let p = problems(r#"{"syscall_filter": ["@mout"]}"#);
        assert!(p[0].contains("did you mean `@mount`"), "{p:?}");
        let p = problems(r#"{"syscall_allow": ["@system-servic", "read"]}"#);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("syscall_allow: "), "{p:?}");
        assert!(p[0].contains("did you mean `@system-service`"), "{p:?}");
        assert_eq!(
            problems(r#"{"nice": 20, "io_priority": 8, "io_weight": 0}"#).len(),
            3
        );
        assert_eq!(problems(r#"{"read_only_paths": ["etc"]}"#).len(), 1);
        // The idle class has no levels: warned about, not refused.
        let idle = r#"{"io_class": "idle", "io_priority": 2}"#;
        assert!(problems(idle).is_empty());
        assert!(warnings(&svc(idle))[0].contains("idle class has no priority levels"));
        assert_eq!(resolve(&svc(idle)).ioprio(), Some(3 << 13));
        assert!(warnings(&svc(r#"{"io_class": "idle"}"#)).is_empty());
    }

    #[test]
    fn the_allow_list_adds_default_and_loses_what_syscall_filter_denies() {
        use seccomp::{resolve as calls, Rule};
        let h = resolve(&svc(r#"{"syscall_allow": []}"#));
        assert_eq!(h.filter, Some(Rule::Allow(calls(&["@default"]))));
        let h = resolve(&svc(
            r#"{"syscall_allow": ["@system-service"], "syscall_filter": ["@chown", "ioctl"]}"#,
        ));
        let Some(Rule::Allow(allowed)) = h.filter else {
            panic!("{:?}", h.filter)
        };
        let expected = calls(&["@system-service"]).without(&calls(&["@chown", "ioctl"]));
        assert_eq!(allowed, expected);
        assert!(allowed.contains(libc::SYS_read as u32));
        assert!(
            !allowed.contains(libc::SYS_ioctl as u32) && !allowed.contains(libc::SYS_fchown as u32)
        );
        let h = resolve(&svc(r#"{"syscall_filter": ["@mount"]}"#));
        assert_eq!(h.filter, Some(Rule::Deny(calls(&["@mount"]))));
        assert_eq!(resolve(&svc("{}")).filter, None);
    }

    #[test]
    fn io_priority_defaults_and_encoding() {
        let h = resolve(&svc(r#"{"io_priority": 6}"#));
        assert_eq!(h.ioprio(), Some(2 << 13 | 6));
        let h = resolve(&svc(r#"{"io_class": "idle"}"#));
        assert_eq!(h.ioprio(), Some(3 << 13));
        assert_eq!(resolve(&svc("{}")).ioprio(), None);
        assert!(resolve(&svc("{}")).is_off());
    }

    #[test]
    fn id_maps_map_the_user_and_its_groups_to_themselves() {
        let id = Identity {
            user: Some("svc".into()),
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
            home: None,
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let m = id_maps(Some(&id));
            assert_eq!(m.uid_map, "1000 1000 1\n");
            assert_eq!(m.gid_map, "27 27 1\n100 100 1\n");
            assert!(!m.deny_setgroups);
        }
        let m = id_maps(None);
        assert!(m.deny_setgroups, "nobody calls setgroups: deny it");
    }

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

    #[test]
    fn a_root_service_without_a_host_id_is_refused_never_mapped_to_root() {
        let h = Hardening {
            private_users: true,
            host_id: Some(Err(
                "cannot choose a host id: cannot read /etc/passwd: EIO".into()
            )),
            ..Hardening::default()
        };
        let e = prepare(&h, None).unwrap_err();
        assert!(e.contains("cannot read /etc/passwd"), "{e}");
        assert!(host_id_can_execute(&h, std::path::Path::new("/bin/sh")).is_err());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let h = Hardening { host_id: None, ..h };
            let e = prepare(&h, None).unwrap_err();
            assert!(e.contains("no host id"), "{e}");
        }
    }

    #[test]
    fn a_root_service_with_a_host_id_maps_only_root_to_it() {
        let h = Hardening {
            private_users: true,
            host_id: Some(Ok(61_200)),
            ..Hardening::default()
        };
        let p = prepare(&h, None).unwrap();
        let m = p.id_maps.unwrap();
        assert_eq!(
            (m.uid_map.as_str(), m.gid_map.as_str()),
            ("0 61200 1\n", "0 61200 1\n")
        );
        assert!(
            !m.deny_setgroups,
            "the child drops the daemon's groups with setgroups"
        );
    }

    #[test]
    fn nothing_is_prepared_when_everything_is_off() {
        let p = prepare(&Hardening::default(), None).unwrap();
        assert_eq!(p.clone_flags, 0);
        assert!(p.filter.is_none() && p.caps.is_none() && !p.parent_acts());
    }
}
