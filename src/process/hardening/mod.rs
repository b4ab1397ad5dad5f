//! Hardening a service (docs/hardening.md): from the keys as the config resolved them
//! (`config::hardening`), everything the child will need prepared before the clone
//! (`prepare`: namespace flags, uid/gid map text, the mount plan, the capability sets,
//! the BPF program), the parent's part for `private_users`, the child's small steps,
//! and what `check` and `status` say about each key on this box.
//!
//! The order of the child's steps is spawn.rs's (`child_setup`); this module never
//! decides it. Nothing here may allocate, lock or log in the child: the `unsafe fn`s
//! meant for the child say so, and only make raw system calls on prepared data.

pub mod caps;
pub mod describe;
pub mod mounts;
pub mod seccomp;

use crate::config::discovery::Identity;
use crate::config::hardening::needs_host_id;
pub use crate::config::hardening::Hardening;
use crate::config::IoClass;

impl Hardening {
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
    let (euid, egid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
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
    use crate::config::hardening::*;
    use crate::config::ServiceConfig;

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
        if nix::unistd::geteuid().is_root() {
            let m = id_maps(Some(&id));
            assert_eq!(m.uid_map, "1000 1000 1\n");
            assert_eq!(m.gid_map, "27 27 1\n100 100 1\n");
            assert!(!m.deny_setgroups);
        }
        let m = id_maps(None);
        assert!(m.deny_setgroups, "nobody calls setgroups: deny it");
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
        if nix::unistd::geteuid().is_root() {
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
