//! Building a service's process (SPEC 4 and 6): exact argv, no shell, a clean
//! environment, stdin on /dev/null, stdout and stderr on pipes, its own session and
//! process group, limits and identity applied, and death with the orchestrator.
//!
//! Everything is computed before fork. The `pre_exec` closure runs between fork and exec
//! in a copy of a multi-threaded process, so it is held to the rules of a signal
//! handler: raw syscalls only, no allocation, no locks, no logging, no panics.

use crate::discovery::ServiceSpec;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A process that exec'd successfully.
pub struct Child {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Resource limits to apply in the child, resolved before fork.
#[derive(Clone, Copy)]
struct Rlimits {
    nofile: Option<u64>,
    nproc: Option<u64>,
    core: Option<u64>,
}

/// Spawns one run of `spec`. The error is for `last_error`: it names the OS error.
/// `cgroup_fds` are open `cgroup.procs` files the child joins before anything else.
pub fn spawn(spec: &ServiceSpec, cgroup_fds: &[std::os::fd::RawFd]) -> Result<Child, String> {
    if let Some(dir) = &spec.cwd {
        ensure_data_dir(dir, spec).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    }
    let mut cmd = command(spec, &spec.binary, &spec.args, cgroup_fds);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot execute {}: {e}", spec.binary.display()))?;
    let pid = child.id() as i32;
    let (Some(out), Some(err)) = (child.stdout, child.stderr) else {
        // Cannot happen: both were requested as pipes.
        return Err("internal error: child pipes missing".into());
    };
    // The std Child is dropped without waiting: the waiter thread and the main loop own
    // this pid from here on.
    Ok(Child {
        pid,
        stdout: out.into(),
        stderr: err.into(),
    })
}

/// Spawns an `exec` health check for `spec`: the service's environment, directory and
/// identity, its own process group, output discarded, not in the service's cgroup.
/// Returns the pid; the caller waits for it like for a run.
pub fn spawn_probe(spec: &ServiceSpec, argv: &[String]) -> Result<i32, String> {
    let (program, args) = argv.split_first().ok_or("health_check.command is empty")?;
    let mut cmd = command(spec, std::path::Path::new(program), args, &[]);
    if spec.cwd.as_ref().is_some_and(|d| !d.is_dir()) {
        cmd.current_dir("/");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot execute health check {program}: {e}"))?;
    Ok(child.id() as i32)
}

/// The one place a service's processes are built: exact argv, the planned environment,
/// stdin on /dev/null, and the `pre_exec` below.
fn command(
    spec: &ServiceSpec,
    program: &std::path::Path,
    args: &[String],
    cgroup_fds: &[std::os::fd::RawFd],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let limits = Rlimits {
        nofile: spec.limits.nofile,
        nproc: spec.limits.nproc,
        core: spec.limits.core,
    };
    // The groups list is allocated here, before fork; the child only reads it.
    let identity = spec
        .identity
        .as_ref()
        .map(|id| (id.uid, id.gid, id.groups.clone()));
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let fd_limit = fd_scan_limit();
    let cgroup_fds = cgroup_fds.to_vec();

    // SAFETY: the closure only makes async-signal-safe syscalls on data computed above;
    // it allocates nothing, takes no lock and cannot panic.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session, hence its own process group: signals to the group reach
            // the service and its children, and never the orchestrator.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Into the service's cgroups before exec (and before dropping privileges):
            // nothing it starts can escape them.
            crate::cgroup::join(&cgroup_fds)?;
            // A known umask, whatever the orchestrator was started with.
            libc::umask(0o022);
            set_limit(libc::RLIMIT_NOFILE, limits.nofile)?;
            set_limit(libc::RLIMIT_NPROC, limits.nproc)?;
            set_limit(libc::RLIMIT_CORE, limits.core)?;
            if let Some((uid, gid, groups)) = &identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // After the identity switch, which clears it. It follows the thread that
            // forked: spawns happen only on the main thread, which lives as long as the
            // orchestrator does.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The orchestrator died before the line above took effect.
                libc::_exit(1);
            }
            close_inherited_fds(fd_limit);
            Ok(())
        });
    }
    cmd
}

/// Creates `data_dir` (0750) if missing, owned by the service's identity.
fn ensure_data_dir(dir: &std::path::Path, spec: &ServiceSpec) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    if let Some(id) = &spec.identity {
        std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid))?;
    }
    Ok(())
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, value: Option<u64>) -> io::Result<()> {
    if let Some(v) = value {
        let lim = libc::rlimit {
            rlim_cur: v as libc::rlim_t,
            rlim_max: v as libc::rlim_t,
        };
        if libc::setrlimit(resource, &lim) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Highest descriptor to mark close-on-exec when close_range() is unavailable.
fn fd_scan_limit() -> i32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    n.clamp(256, 65_536) as i32
}

/// Marks every descriptor above 2 close-on-exec, so that exec closes whatever the
/// orchestrator inherited or opened (std's own pipes are already close-on-exec, and its
/// error-reporting pipe must stay open until exec, so marking beats closing).
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

/// Sends `sig` to process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return; // Never signal our own group, or every process.
    }
    // SAFETY: killpg has no memory preconditions.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// Reaps `pid`, which the waiter has seen exit (so this does not block for long).
pub fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}
