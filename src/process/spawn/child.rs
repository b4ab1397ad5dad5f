//! The child between clone and exec: stricter than a signal handler (see `spawn.rs`):
//! it runs on a borrowed stack in our address space, makes only raw system calls on
//! data prepared before the clone, allocates nothing, takes no lock, and reports a
//! failure through `ChildArgs` before `_exit`. Nothing here runs in the parent but
//! `fd_scan_limit`, computed before the clone.

use super::*;

/// The child, between clone and exec. See the module comment for its rules.
pub(super) extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the &ChildArgs the parent passed, alive while the parent waits.
    let a = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: only raw calls on prepared data, as child_setup documents.
    let step = unsafe { child_setup(a) };
    // Reached only when something failed (exec does not return on success).
    // SAFETY: __errno_location is valid for the thread whose stack we borrowed.
    let errno = unsafe { *libc::__errno_location() };
    a.failed_errno.store(errno, Ordering::SeqCst);
    a.failed_step.store(step as u32, Ordering::SeqCst);
    // SAFETY: _exit ends this child only (it is its own thread group).
    unsafe { libc::_exit(127) }
}

pub(super) const WATCHDOG_PID: &[u8] = b"WATCHDOG_PID=";

/// Writes `pid` in decimal at `at`, then a NUL; `at` has room for 10 digits and the
/// NUL (the `WATCHDOG_PID=` and `LISTEN_PID=` slots of the child's environment). No
/// allocation: it runs in the child before exec.
///
/// # Safety
///
/// `at` must be valid for writes of 11 bytes, and nothing else may read or write
/// those bytes during the call.
pub(crate) unsafe fn write_pid(at: *mut u8, pid: u32) {
    let mut digits = [0u8; 10];
    let (mut n, mut v) = (0, pid);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        *at.add(i) = digits[n - 1 - i];
    }
    *at.add(n) = 0;
}

/// Returns the step that failed; on success execve does not return.
///
/// The order, and why:
/// 1. Signals back to their defaults, so no handler of ours runs here.
/// 2. `private_users`: wait for the parent to write the id maps. The namespaces were
///    made by the clone itself, user namespace first, so the mount and network ones
///    belong to it; until the maps exist no id switch inside can work.
/// 3. stdio, session, cgroups (as root: nothing the service starts escapes them).
/// 4. Mounts, in the new mount namespace: propagation private first (MS_REC |
///    MS_PRIVATE, so nothing leaks back to the host), tmpfs on /tmp and /var/tmp, then
///    the read-only bind remounts. Loopback up in the new network namespace. Both need
///    the privileges the identity switch takes away.
/// 5. data_dir: after the mounts, since a directory entered before them would keep
///    the old ones (a writable /tmp, a writable read-only path).
/// 6. umask, rlimits, nice and io priority (a negative nice or the realtime class
///    needs root, so before the switch).
/// 7. Identity (PR_SET_KEEPCAPS first when capabilities must survive it), then
///    capabilities: bounding set cut, sets limited, ambient ones raised.
/// 8. no_new_privs, the parent-death signal (after every credential change, which
///    clears it), descriptors closed on exec.
/// 9. The syscall filter, last: everything above may use calls it denies.
///
/// # Safety
///
/// Only in the clone's child, between the clone and exec, on the borrowed stack: it
/// changes the whole process's signal dispositions, mounts, identity and descriptors,
/// and `a` (prepared by the parent before the clone, not freed until the child has
/// exec'd or reported) must hold valid, NUL-terminated pointers for exec.
unsafe fn child_setup(a: &ChildArgs) -> Step {
    // Default dispositions for every signal (ignored ones included: SIGPIPE is ignored
    // by the Rust runtime, others may have been by whoever started us), then an empty
    // mask. Signals the C library reserves are refused by sigaction; that is fine.
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..a.signals {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    let h = a.hardening;

    if a.wait_fds[0] >= 0 {
        // Our copy of the write end goes first, so that a parent that gives up (and
        // closes its own) ends this read with EOF instead of leaving us waiting.
        libc::close(a.wait_fds[1]);
        let mut go = 0u8;
        if libc::read(a.wait_fds[0], (&mut go as *mut u8).cast(), 1) != 1 {
            return Step::UserNamespace;
        }
    }
    // stdin, stdout, stderr. The daemon keeps 0-2 open (see main), so the sources are
    // all above 2 and no dup2 overwrites another source.
    for (target, &src) in a.stdio.iter().enumerate() {
        if libc::dup2(src, target as libc::c_int) < 0 {
            return Step::Stdio;
        }
    }
    // Its own session, hence its own process group: signals to the group reach the
    // service and its children, and never the orchestrator.
    if libc::setsid() < 0 {
        return Step::Setsid;
    }
    // Into the service's cgroups before exec and before dropping privileges: nothing
    // it starts can escape them.
    if !crate::process::cgroup::join(a.cgroup_fds) {
        return Step::Cgroup;
    }
    if let Some(plan) = &h.mounts {
        // SAFETY: raw mount(2) calls on the prepared plan.
        if !hardening::mounts::apply(plan) {
            return Step::Mounts;
        }
    }
    // SAFETY: raw socket/ioctl/close on stack data.
    if h.loopback && !hardening::loopback_up() {
        return Step::Loopback;
    }
    if let Some(dir) = a.cwd {
        if libc::chdir(dir.as_ptr()) < 0 {
            return Step::Chdir;
        }
    }
    libc::umask(0o022);
    if !set_limit(libc::RLIMIT_NOFILE, a.limits.nofile)
        || !set_limit(libc::RLIMIT_NPROC, a.limits.nproc)
        || !set_limit(libc::RLIMIT_CORE, a.limits.core)
    {
        return Step::Rlimit;
    }
    // SAFETY: raw setpriority/ioprio_set on ourselves.
    if h.child_sets_priority() && !hardening::set_priority(0, h.nice, h.ioprio) {
        return Step::Priority;
    }
    if let Some(plan) = &h.caps {
        // SAFETY: raw prctl.
        if a.identity.is_some() && !hardening::caps::before_identity(plan) {
            return Step::Capabilities;
        }
    }
    if let Some((uid, gid, groups)) = a.identity {
        // Raw syscalls: the glibc wrappers would apply the change to every thread of
        // the process they believe they run in, which is ours.
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
        {
            return Step::Identity;
        }
    }
    if let Some(plan) = &h.caps {
        // SAFETY: raw capget/capset/prctl on stack data.
        if !hardening::caps::apply(plan) {
            return Step::Capabilities;
        }
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        return Step::NoNewPrivs;
    }
    // After the identity switch, which clears it. It follows the thread that cloned:
    // spawns happen only on the main thread, which lives as long as the orchestrator.
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
        return Step::DeathSignal;
    }
    if libc::getppid() != a.parent {
        // The orchestrator died before the line above took effect.
        libc::_exit(1);
    }
    close_inherited_fds(a.fd_limit);
    if !a.sockets.apply() {
        return Step::Sockets;
    }
    if let Some(buf) = a.watchdog_pid {
        write_pid(
            buf.add(WATCHDOG_PID.len()),
            libc::syscall(libc::SYS_getpid) as u32,
        );
    }
    if let Some(filter) = &h.filter {
        // SAFETY: the prepared program, alive for the call; no_new_privs is set.
        if !hardening::seccomp::install(filter) {
            return Step::SyscallFilter;
        }
    }
    libc::execve(a.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    Step::Exec
}

/// setrlimit's resource argument: glibc has a type of its own, musl a plain int.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// Sets both limits of `resource` to `value` (nothing for `None`).
///
/// # Safety
///
/// Only in the child before exec (the limits are the whole process's); `resource`
/// must be a valid `RLIMIT_*`.
unsafe fn set_limit(resource: Resource, value: Option<u64>) -> bool {
    match value {
        Some(v) => {
            let lim = libc::rlimit {
                rlim_cur: v as libc::rlim_t,
                rlim_max: v as libc::rlim_t,
            };
            libc::setrlimit(resource, &lim) == 0
        }
        None => true,
    }
}

/// Highest descriptor to mark close-on-exec when close_range() is unavailable.
pub(super) fn fd_scan_limit() -> i32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    n.clamp(256, 65_536) as i32
}

/// Marks every descriptor above 2 close-on-exec, so that exec closes whatever the
/// orchestrator inherited or opened (our own are close-on-exec already).
///
/// # Safety
///
/// Only in the child before exec: in the orchestrator it would change every
/// descriptor of every thread. `limit` bounds the fallback scan.
unsafe fn close_inherited_fds(limit: i32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let r = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    if r == 0 {
        return;
    }
    for fd in 3..limit {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}
