//! `syscall_filter` (SPEC 13): systemd's syscall groups, resolved to this
//! architecture's numbers, and the classic BPF program that denies them, written by
//! hand. The program is built in the parent; the child only installs it (`install`),
//! the last thing before exec. Nothing here allocates in the child.

use libc::sock_filter;

/// The groups as systemd defines them (`syscall_filter_sets` in systemd's
/// src/shared/seccomp-util.c), the deny-list ones: a group that most services need
/// (@basic-io, @file-system, @default, @system-service) is left out, since denying it
/// would only break the service. A nested group is written `@name`, as there. Names
/// this architecture does not have are skipped, as systemd does.
#[rustfmt::skip]
pub const GROUPS: &[(&str, &[&str])] = &[
    ("@aio", &["io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
               "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup"]),
    ("@chown", &["chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32"]),
    ("@clock", &["adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime",
                 "clock_settime64", "settimeofday", "stime"]),
    ("@cpu-emulation", &["modify_ldt", "subpage_prot", "switch_endian", "vm86", "vm86old"]),
    ("@debug", &["lookup_dcookie", "perf_event_open", "pidfd_getfd", "ptrace", "rtas",
                 "sys_debug_setcontext"]),
    ("@ipc", &["ipc", "memfd_create", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
               "mq_timedsend", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "pipe", "pipe2",
               "process_vm_readv", "process_vm_writev", "semctl", "semget", "semop", "semtimedop",
               "shmat", "shmctl", "shmdt", "shmget"]),
    ("@keyring", &["add_key", "keyctl", "request_key"]),
    ("@memlock", &["mlock", "mlock2", "mlockall", "munlock", "munlockall"]),
    ("@module", &["delete_module", "finit_module", "init_module"]),
    ("@mount", &["chroot", "fsconfig", "fsmount", "fsopen", "fspick", "mount", "move_mount",
                 "open_tree", "pivot_root", "umount", "umount2"]),
    ("@network-io", &["accept", "accept4", "bind", "connect", "getpeername", "getsockname",
                      "getsockopt", "listen", "recv", "recvfrom", "recvmmsg", "recvmsg", "send",
                      "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket",
                      "socketcall", "socketpair"]),
    ("@obsolete", &["_sysctl", "afs_syscall", "bdflush", "break", "create_module", "ftime",
                    "get_kernel_syms", "getpmsg", "gtty", "idle", "lock", "mpx", "prof",
                    "profil", "putpmsg", "query_module", "security", "sgetmask", "ssetmask",
                    "stty", "sysfs", "tuxcall", "ulimit", "uselib", "ustat", "vserver"]),
    ("@pkey", &["pkey_alloc", "pkey_free", "pkey_mprotect"]),
    ("@privileged", &["@chown", "@clock", "@module", "@raw-io", "@reboot", "@swap", "_sysctl",
                      "acct", "bpf", "capset", "chroot", "fanotify_init", "fanotify_mark",
                      "nfsservctl", "open_by_handle_at", "pivot_root", "quotactl",
                      "setdomainname", "setfsuid", "setfsuid32", "setgroups", "setgroups32",
                      "sethostname", "setresuid", "setresuid32", "setreuid", "setreuid32",
                      "setuid", "setuid32", "vhangup"]),
    ("@raw-io", &["ioperm", "iopl", "pciconfig_iobase", "pciconfig_read", "pciconfig_write"]),
    ("@reboot", &["kexec_file_load", "kexec_load", "reboot"]),
    ("@resources", &["ioprio_set", "mbind", "migrate_pages", "move_pages", "nice",
                     "sched_setaffinity", "sched_setattr", "sched_setparam",
                     "sched_setscheduler", "set_mempolicy", "setpriority", "setrlimit"]),
    ("@setuid", &["setgid", "setgid32", "setgroups", "setgroups32", "setregid", "setregid32",
                  "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
                  "setreuid32", "setuid", "setuid32"]),
    ("@swap", &["swapoff", "swapon"]),
    ("@sync", &["fdatasync", "fsync", "msync", "sync", "sync_file_range", "sync_file_range2",
                "syncfs"]),
    ("@timer", &["alarm", "getitimer", "setitimer", "timer_create", "timer_delete",
                 "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create",
                 "timerfd_gettime", "timerfd_settime", "times"]),
];

/// Every syscall this architecture has that a group names, plus single ones services
/// are often denied, with their numbers (libc's `SYS_*`).
macro_rules! numbers {
    ($($sys:ident)*) => {
        const NUMBERS: &[(&str, libc::c_long)] = &[$((stringify!($sys), libc::$sys)),*];
    };
}

#[cfg(target_arch = "x86_64")]
numbers! {
    SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit
    SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup
    SYS_chown SYS_fchown SYS_fchownat SYS_lchown
    SYS_adjtimex SYS_clock_adjtime SYS_clock_settime SYS_settimeofday
    SYS_modify_ldt
    SYS_lookup_dcookie SYS_perf_event_open SYS_pidfd_getfd SYS_ptrace
    SYS_memfd_create SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
    SYS_mq_timedsend SYS_mq_unlink SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_pipe SYS_pipe2
    SYS_process_vm_readv SYS_process_vm_writev SYS_semctl SYS_semget SYS_semop SYS_semtimedop
    SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget
    SYS_add_key SYS_keyctl SYS_request_key
    SYS_mlock SYS_mlock2 SYS_mlockall SYS_munlock SYS_munlockall
    SYS_delete_module SYS_finit_module SYS_init_module
    SYS_chroot SYS_fsconfig SYS_fsmount SYS_fsopen SYS_fspick SYS_mount SYS_move_mount
    SYS_open_tree SYS_pivot_root SYS_umount2
    SYS_accept SYS_accept4 SYS_bind SYS_connect SYS_getpeername SYS_getsockname SYS_getsockopt
    SYS_listen SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_setsockopt SYS_shutdown SYS_socket SYS_socketpair
    SYS__sysctl SYS_afs_syscall SYS_getpmsg
    SYS_putpmsg SYS_security SYS_sysfs SYS_tuxcall SYS_uselib SYS_ustat
    SYS_vserver
    SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect
    SYS_acct SYS_bpf SYS_capset SYS_fanotify_init SYS_fanotify_mark SYS_nfsservctl
    SYS_open_by_handle_at SYS_quotactl SYS_setdomainname SYS_setfsuid SYS_setgroups
    SYS_sethostname SYS_setresuid SYS_setreuid SYS_setuid SYS_vhangup
    SYS_ioperm SYS_iopl
    SYS_kexec_file_load SYS_kexec_load SYS_reboot
    SYS_ioprio_set SYS_mbind SYS_migrate_pages SYS_move_pages SYS_sched_setaffinity
    SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_set_mempolicy
    SYS_setpriority SYS_setrlimit
    SYS_setgid SYS_setregid SYS_setresgid
    SYS_swapoff SYS_swapon
    SYS_fdatasync SYS_fsync SYS_msync SYS_sync SYS_sync_file_range SYS_syncfs
    SYS_alarm SYS_getitimer SYS_setitimer SYS_timer_create SYS_timer_delete SYS_timer_getoverrun
    SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
    SYS_timerfd_settime SYS_times
    SYS_unshare SYS_setns SYS_personality SYS_userfaultfd SYS_kcmp SYS_execve SYS_execveat
    SYS_clone SYS_clone3 SYS_fork SYS_vfork SYS_kill SYS_tkill SYS_tgkill SYS_prctl
    SYS_seccomp SYS_ioctl SYS_chmod SYS_fchmod SYS_fchmodat SYS_mknod SYS_mknodat
}

#[cfg(target_arch = "aarch64")]
numbers! {
    SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit
    SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup
    SYS_fchown SYS_fchownat
    SYS_adjtimex SYS_clock_adjtime SYS_clock_settime SYS_settimeofday
    SYS_lookup_dcookie SYS_perf_event_open SYS_pidfd_getfd SYS_ptrace
    SYS_memfd_create SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
    SYS_mq_timedsend SYS_mq_unlink SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_pipe2
    SYS_process_vm_readv SYS_process_vm_writev SYS_semctl SYS_semget SYS_semop SYS_semtimedop
    SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget
    SYS_add_key SYS_keyctl SYS_request_key
    SYS_mlock SYS_mlock2 SYS_mlockall SYS_munlock SYS_munlockall
    SYS_delete_module SYS_finit_module SYS_init_module
    SYS_chroot SYS_fsconfig SYS_fsmount SYS_fsopen SYS_fspick SYS_mount SYS_move_mount
    SYS_open_tree SYS_pivot_root SYS_umount2
    SYS_accept SYS_accept4 SYS_bind SYS_connect SYS_getpeername SYS_getsockname SYS_getsockopt
    SYS_listen SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_setsockopt SYS_shutdown SYS_socket SYS_socketpair
    SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect
    SYS_acct SYS_bpf SYS_capset SYS_fanotify_init SYS_fanotify_mark SYS_nfsservctl
    SYS_open_by_handle_at SYS_quotactl SYS_setdomainname SYS_setfsuid SYS_setgroups
    SYS_sethostname SYS_setresuid SYS_setreuid SYS_setuid SYS_vhangup
    SYS_kexec_file_load SYS_kexec_load SYS_reboot
    SYS_ioprio_set SYS_mbind SYS_migrate_pages SYS_move_pages SYS_sched_setaffinity
    SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_set_mempolicy
    SYS_setpriority SYS_setrlimit
    SYS_setgid SYS_setregid SYS_setresgid
    SYS_swapoff SYS_swapon
    SYS_fdatasync SYS_fsync SYS_msync SYS_sync SYS_sync_file_range SYS_syncfs
    SYS_getitimer SYS_setitimer SYS_timer_create SYS_timer_delete SYS_timer_getoverrun
    SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
    SYS_timerfd_settime SYS_times
    SYS_unshare SYS_setns SYS_personality SYS_userfaultfd SYS_kcmp SYS_execve SYS_execveat
    SYS_clone SYS_clone3 SYS_kill SYS_tkill SYS_tgkill SYS_prctl
    SYS_seccomp SYS_ioctl SYS_fchmod SYS_fchmodat SYS_mknodat
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NUMBERS: &[(&str, libc::c_long)] = &[];

/// `seccomp_data.arch` of the architecture we are built for; `None` where the filter
/// is not supported (a configured filter then fails the start).
pub const ARCH: Option<(u32, &str)> = if cfg!(target_arch = "x86_64") {
    Some((0xC000_003E, "x86_64"))
} else if cfg!(target_arch = "aarch64") {
    Some((0xC000_00B7, "aarch64"))
} else {
    None
};

fn number(name: &str) -> Option<u32> {
    NUMBERS
        .iter()
        .find(|(sys, _)| sys.strip_prefix("SYS_") == Some(name))
        .map(|(_, n)| *n as u32)
}

fn group(name: &str) -> Option<&'static [&'static str]> {
    GROUPS.iter().find(|(g, _)| *g == name).map(|(_, m)| *m)
}

/// Whether `entry` (`@group` or a syscall name) is known on some architecture.
pub fn known(entry: &str) -> bool {
    group(entry).is_some()
        || number(entry).is_some()
        || GROUPS.iter().any(|(_, m)| m.contains(&entry))
}

/// Every name a config may use, for suggestions.
pub fn names() -> impl Iterator<Item = &'static str> {
    GROUPS
        .iter()
        .map(|(g, _)| *g)
        .chain(NUMBERS.iter().map(|(s, _)| &s[4..]))
}

/// The numbers `entries` deny on this architecture, sorted, without repeats.
pub fn resolve(entries: &[String]) -> Vec<u32> {
    fn add(entry: &str, out: &mut Vec<u32>, depth: u8) {
        match group(entry) {
            Some(members) if depth < 4 => {
                for m in members {
                    add(m, out, depth + 1);
                }
            }
            Some(_) => {}
            None => out.extend(number(entry)),
        }
    }
    let mut out = Vec::new();
    for e in entries {
        add(e, &mut out, 0);
    }
    out.sort_unstable();
    out.dedup();
    out
}

const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// x32 system calls arrive with the x86_64 arch value and this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: another architecture's calls (and x32's) get `deny`, each of `denied`
/// gets `deny`, everything else is allowed. Each denied number is a compare followed
/// by its own return, so no jump ever needs to reach further than one instruction
/// (classic BPF jumps are 8 bits); the numbers are sorted, and everything below the
/// smallest is allowed after one compare (read and write are 0 and 1 on x86_64).
pub fn program(arch: u32, denied: &[u32], kill: bool) -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let deny = if kill {
        libc::SECCOMP_RET_KILL_PROCESS
    } else {
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32
    };
    let allow = libc::SECCOMP_RET_ALLOW;
    let mut p = Vec::with_capacity(10 + 2 * denied.len());
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH));
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0));
    p.push(stmt(BPF_RET | BPF_K, deny));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR));
    if cfg!(target_arch = "x86_64") {
        p.push(jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1));
        p.push(stmt(BPF_RET | BPF_K, deny));
    }
    if let Some(first) = denied.first() {
        p.push(jump(BPF_JMP | BPF_JGE | BPF_K, *first, 1, 0));
        p.push(stmt(BPF_RET | BPF_K, allow));
    }
    for nr in denied {
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr, 0, 1));
        p.push(stmt(BPF_RET | BPF_K, deny));
    }
    p.push(stmt(BPF_RET | BPF_K, allow));
    p
}

/// Whether this kernel can filter (and, for `kill`, kill the whole process). Asked
/// once per answer: it cannot change while we run.
pub fn supported(kill: bool) -> Result<(), String> {
    static ANSWERS: [std::sync::OnceLock<Result<(), String>>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    ANSWERS[usize::from(kill)]
        .get_or_init(|| ask_kernel(kill))
        .clone()
}

fn ask_kernel(kill: bool) -> Result<(), String> {
    if ARCH.is_none() {
        return Err("seccomp filters are not supported on this architecture".into());
    }
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err("this kernel has no seccomp (CONFIG_SECCOMP_FILTER)".into());
    }
    if kill {
        let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
        // SAFETY: a valid pointer to a u32, as SECCOMP_GET_ACTION_AVAIL expects.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &action as *const u32,
            )
        };
        if r < 0 {
            return Err("this kernel cannot kill a process from a seccomp filter (4.14+)".into());
        }
    }
    Ok(())
}

/// In the child, last before exec: installs `filter`. No allocation.
///
/// # Safety
/// `filter` must stay alive for the call (the kernel copies it).
pub unsafe fn install(filter: &[sock_filter]) -> bool {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        0,
        &prog as *const libc::sock_fprog,
    ) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_to_this_architecture() {
        let n = resolve(&["@mount".into(), "@swap".into(), "ptrace".into()]);
        assert!(n.contains(&(libc::SYS_mount as u32)));
        assert!(n.contains(&(libc::SYS_swapon as u32)));
        assert!(n.contains(&(libc::SYS_ptrace as u32)));
        assert!(!n.contains(&(libc::SYS_read as u32)));
        assert!(n.windows(2).all(|w| w[0] < w[1]));
        // Nested groups.
        assert!(resolve(&["@privileged".into()]).contains(&(libc::SYS_reboot as u32)));
    }

    #[test]
    fn every_group_member_is_known() {
        assert!(known("@obsolete") && known("vm86") && known("mount"));
        assert!(!known("@nope") && !known("mountt"));
        for (_, members) in GROUPS {
            for m in *members {
                assert!(!m.starts_with('@') || group(m).is_some(), "{m}");
            }
        }
    }

    #[test]
    fn program_checks_the_architecture_first_and_ends_allowing() {
        let p = program(0xC000_003E, &[165, 167], false);
        assert_eq!(p[0].k, SECCOMP_DATA_ARCH);
        assert_eq!(p[1].k, 0xC000_003E);
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
        let denies = p
            .iter()
            .filter(|i| i.k == libc::SECCOMP_RET_ERRNO | 1)
            .count();
        assert!(denies >= 3);
    }
}
