//! Building a service's process (docs/lifecycle.md, docs/hardening.md): exact argv, no
//! shell, a clean environment, stdin on /dev/null, stdout and stderr on pipes, its own
//! session and process group, its cgroups, limits and identity applied, and death with the
//! orchestrator.
//!
//! Why not `std::process::Command`: with a `pre_exec` hook it must `fork()`, and fork
//! copies the page tables of a process that owns a thread (and a stack) per output
//! stream: at 500 services a spawn took 14 ms, almost all of it in dup_mmap and
//! copy-on-write faults. Here the child is made with `clone(CLONE_VM | CLONE_VFORK)`,
//! as posix_spawn does: it borrows our memory until it execs, and the cost of a spawn
//! no longer grows with the orchestrator.
//!
//! That makes the child code stricter than a signal handler. It runs on a borrowed
//! stack in *our* address space, with our thread's TLS: everything is computed before
//! the clone, the child only makes raw system calls, allocates nothing, takes no lock,
//! and reports failure through the shared `ChildArgs` (step and errno) before `_exit`.
//! Identity changes use the raw syscalls: glibc's setuid() would broadcast the change
//! to every thread of the process it believes it is in, that is, to ours. Signals are
//! blocked around the clone so no handler of ours ever runs in the child, which resets
//! every disposition to the default and starts with an empty mask.
//!
//! Hardening (docs/hardening.md, `process::hardening`) is prepared before the clone like
//! the rest; the order of the child's steps, and why, is written in `child_setup`. The one
//! exception to CLONE_VFORK is `private_users`: the parent must write the new
//! namespace's id maps while the child waits on a pipe, which a suspended parent cannot
//! do. That child still shares our memory (CLONE_VM: a fork-style copy costs the page
//! tables of the whole orchestrator, 0.5 ms here and growing with it), so while it runs
//! the parent thread follows the child's rules in spirit: it touches nothing the child
//! reads, keeps the stack and `ChildArgs` alive until the child has exec'd or died
//! (a close-on-exec pipe tells), and if one of its own steps fails it kills and reaps
//! the child before anything is freed. The two share the thread's `errno`; only a
//! failing call writes it, and a failure on either side ends the spawn.

use crate::config::discovery::ServiceSpec;
use crate::process::hardening;
use crate::process::sockets::{ChildPart, Passed};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

mod child;
mod signal;

pub use signal::{reap, reap_pidfd, signal_group, signal_pidfd};

pub(crate) use child::write_pid;
use child::{child_main, fd_scan_limit, WATCHDOG_PID};

/// A process that exec'd successfully.
pub struct Child {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Resource limits to apply in the child, resolved before the clone.
#[derive(Clone, Copy)]
struct Rlimits {
    nofile: Option<u64>,
    nproc: Option<u64>,
    core: Option<u64>,
}

/// The stack the child runs on until exec. 64 KiB is ample for the raw calls it makes.
const CHILD_STACK: usize = 64 * 1024;

/// What the child did last before failing (0: nothing failed).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Step {
    Stdio = 1,
    Chdir,
    Setsid,
    Cgroup,
    Rlimit,
    Identity,
    NoNewPrivs,
    DeathSignal,
    Exec,
    Prepare,
    Namespaces,
    UserNamespace,
    Mounts,
    Loopback,
    Priority,
    Capabilities,
    SyscallFilter,
    Sockets,
}

fn step_name(step: u32) -> &'static str {
    match step {
        1 => "set up stdin/stdout/stderr",
        2 => "enter data_dir",
        3 => "start a session",
        4 => "join the service's cgroup",
        5 => "set resource limits",
        6 => "switch user/group",
        7 => "set no_new_privs",
        8 => "set the parent-death signal",
        10 => "prepare its hardening",
        11 => "create its namespaces",
        12 => "enter its user namespace",
        13 => "set up its mounts (private_tmp, read_only_paths)",
        14 => "bring up loopback in its network namespace",
        15 => "set nice/io priority",
        16 => "set its capabilities",
        17 => "install its syscall filter",
        18 => "pass its sockets",
        _ => "execute",
    }
}

/// Everything the child needs, prepared by the parent. The child reads it and writes
/// only `failed_step`/`failed_errno`.
struct ChildArgs<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// `WATCHDOG_PID=` followed by room for the digits, written by the child (its pid
    /// is known only there); an entry of `envp`.
    watchdog_pid: Option<*mut u8>,
    cwd: Option<&'a CString>,
    stdio: [RawFd; 3],
    cgroup_fds: &'a [RawFd],
    limits: Rlimits,
    identity: Option<(u32, u32, &'a [libc::gid_t])>,
    /// Sockets to put at fd 3 and up, with `LISTEN_PID` (docs/sockets-and-upgrades.md).
    sockets: ChildPart,
    parent: libc::pid_t,
    fd_limit: libc::c_int,
    /// One past the highest signal number, read before the clone.
    signals: libc::c_int,
    hardening: &'a hardening::Prepared,
    /// `private_users`: the pipe the child waits on for the parent's id maps (read
    /// end, and our write end, which it closes first). -1 otherwise.
    wait_fds: [RawFd; 2],
    failed_step: AtomicU32,
    failed_errno: AtomicI32,
}

/// Why a spawn failed: what to report, and whether the same spawn may work in a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnError {
    pub message: String,
    /// exec failed with ETXTBSY: the binary is open for writing somewhere (being copied
    /// into place, or a descriptor to it inherited across a fork elsewhere), which
    /// usually ends within moments.
    pub busy: bool,
}

impl From<String> for SpawnError {
    fn from(message: String) -> SpawnError {
        SpawnError {
            message,
            busy: false,
        }
    }
}

/// Spawns one run of `spec`. The error is for `last_error`: it names the OS error.
/// `cgroup_files` are open `cgroup.procs` files the child joins before anything else;
/// `sockets` are the service's bound sockets, passed as fd 3 and up.
pub fn spawn(
    spec: &ServiceSpec,
    cgroup_files: &[std::fs::File],
    sockets: &Passed,
) -> Result<Child, SpawnError> {
    hardening::host_id_can_execute(&spec.process.hardening, &spec.process.binary)?;
    if let Some(dir) = &spec.process.cwd {
        hardening::host_id_can_enter(&spec.process.hardening, dir)?;
        ensure_data_dir(dir, spec).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    }
    let (out_r, out_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let stdio = [null_stdin()?, out_w.as_raw_fd(), err_w.as_raw_fd()];
    let cgroup_fds = crate::process::cgroup::raw_fds(cgroup_files);
    // argv[0] comes with the args (the configured path); a spec without any (built by
    // hand, in tests) gets the binary itself.
    let fallback;
    let argv = if spec.process.argv.is_empty() {
        fallback = [spec.process.binary.to_string_lossy().into_owned()];
        &fallback[..]
    } else {
        &spec.process.argv[..]
    };
    let started = std::time::Instant::now();
    let pid = spawn_with(
        spec,
        spec.process.binary.as_os_str(),
        argv,
        stdio,
        &cgroup_fds,
        spec.process.cwd.as_deref(),
        sockets,
    )
    .map_err(|(step, e)| SpawnError {
        busy: step == Step::Exec as u32 && e.raw_os_error() == Some(libc::ETXTBSY),
        message: describe_failure(step, &spec.process.binary.display().to_string(), e),
    })?;
    // `make bench` reads this line to time a spawn (with and without hardening).
    log::debug!(
        "{}: spawned pid {pid} in {} us",
        spec.name,
        started.elapsed().as_micros()
    );
    // The write ends now belong to the child; ours close here.
    drop((out_w, err_w));
    Ok(Child {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}

/// Spawns an `exec` health check for `spec`: the service's environment, directory,
/// identity and (through `cgroup_files`) cgroup, its own process group, output
/// discarded. Returns the pid; the caller waits for it like for a run.
pub fn spawn_probe(
    spec: &ServiceSpec,
    argv: &[String],
    cgroup_files: &[std::fs::File],
) -> Result<i32, String> {
    let program = argv.first().ok_or("health_check.command is empty")?;
    let null = dev_null()?;
    let cwd = spec
        .process
        .cwd
        .as_deref()
        .filter(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let resolved = search_path(program, spec).ok_or_else(|| {
        format!("cannot execute health check {program}: not found in the service's PATH")
    })?;
    let cgroup_fds = crate::process::cgroup::raw_fds(cgroup_files);
    // argv[0] as written in the command, as execvp would pass it.
    spawn_with(
        spec,
        resolved.as_os_str(),
        argv,
        [null; 3],
        &cgroup_fds,
        Some(cwd),
        &Passed::default(),
    )
    .map_err(|(step, e)| describe_failure(step, &format!("health check {program}"), e))
}

/// `program` as given when it names a path, else the first executable of that name in
/// the service's PATH (as execvp would find it; done here because the child cannot).
fn search_path(program: &str, spec: &ServiceSpec) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Some(program.into());
    }
    let path = spec
        .process
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| crate::config::discovery::binary_problem(p).is_none())
}

fn describe_failure(step: u32, what: &str, e: io::Error) -> String {
    if step == Step::Prepare as u32 {
        format!("cannot start {what}: {e}")
    } else if step == Step::Exec as u32 {
        format!("cannot execute {what}: {e}")
    } else {
        format!("cannot start {what}: cannot {}: {e}", step_name(step))
    }
}

/// A shared read-only /dev/null for every child's stdin, opened once.
fn dev_null() -> Result<RawFd, String> {
    static NULL: OnceLock<Option<OwnedFd>> = OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ok()
            .map(OwnedFd::from)
    })
    .as_ref()
    .map(|f| f.as_raw_fd())
    .ok_or_else(|| "cannot open /dev/null".to_string())
}

/// What a service reads as stdin: /dev/null, or where there is none (PID 1 in a root
/// that holds nothing but the orchestrator and its services, docs/unattended.md) the read
/// end of an empty pipe whose write end is closed, which reads as end-of-file just the
/// same.
fn null_stdin() -> Result<RawFd, String> {
    static EMPTY: OnceLock<Option<OwnedFd>> = OnceLock::new();
    dev_null().or_else(|e| {
        EMPTY
            .get_or_init(|| pipe().ok().map(|(r, _w)| r))
            .as_ref()
            .map(|f| f.as_raw_fd())
            .ok_or(e)
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: &OsStr) -> Result<CString, (u32, io::Error)> {
    CString::new(s.as_bytes()).map_err(|_| {
        (
            Step::Exec as u32,
            io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })
}

/// Prepares everything, clones the child and waits for it to exec (or fail): execve
/// opens `program` and passes `args` as the whole argv, argv[0] included. On failure,
/// returns the step that failed and its OS error, with the child reaped.
fn spawn_with(
    spec: &ServiceSpec,
    program: &OsStr,
    args: &[String],
    stdio: [RawFd; 3],
    cgroup_fds: &[RawFd],
    cwd: Option<&Path>,
    sockets: &Passed,
) -> Result<i32, (u32, io::Error)> {
    let program = cstring(program)?;
    let mut strings = Vec::with_capacity(args.len() + spec.process.env.len());
    for a in args {
        strings.push(cstring(OsStr::new(a))?);
    }
    let mut listen = sockets.prepare().map_err(|e| (Step::Sockets as u32, e))?;
    let mut env_strings: Vec<CString> = spec
        .process
        .env
        .iter()
        .filter(|(k, _)| listen.is_none() || !k.starts_with("LISTEN_"))
        .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
        .collect::<Result<_, _>>()?;
    if let Some(l) = &listen {
        env_strings.extend(l.env.iter().cloned());
    }
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(args.len() + 1);
    argv.extend(strings.iter().map(|s| s.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_strings.iter().map(|s| s.as_ptr()).collect();
    // Zeroed room for 10 digits and the NUL after the name.
    let mut watchdog_pid = spec.process.watchdog.map(|_| {
        let mut b = WATCHDOG_PID.to_vec();
        b.resize(WATCHDOG_PID.len() + 11, 0);
        b
    });
    if let Some(b) = &mut watchdog_pid {
        envp.push(b.as_ptr() as *const libc::c_char);
    }
    if let Some(l) = &listen {
        envp.push(l.pid_entry());
    }
    envp.push(std::ptr::null());
    let cwd = cwd.map(|d| cstring(d.as_os_str())).transpose()?;
    let groups: Vec<libc::gid_t> = spec
        .process
        .identity
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    let prepared = hardening::prepare(&spec.process.hardening, spec.process.identity.as_ref())
        .map_err(|e| (Step::Prepare as u32, io::Error::other(e)))?;
    // Without CLONE_VFORK for private_users only; see the module comment.
    let released = prepared.parent_acts();
    let (wait_pipe, exec_pipe) = if released {
        let p = |_| pipe().map_err(|e| (Step::Namespaces as u32, e));
        (Some(p(())?), Some(p(())?))
    } else {
        (None, None)
    };
    let raw = |p: &Option<(OwnedFd, OwnedFd)>, i: usize| {
        p.as_ref().map_or(-1, |(r, w)| [r, w][i].as_raw_fd())
    };
    let args = ChildArgs {
        program: &program,
        argv: &argv,
        envp: &envp,
        watchdog_pid: watchdog_pid.as_mut().map(|b| b.as_mut_ptr()),
        cwd: cwd.as_ref(),
        stdio,
        // A child in its own user namespace is moved into its cgroups by the parent
        // (the kernel may judge the child's own write by its new credentials).
        cgroup_fds: if released { &[] } else { cgroup_fds },
        limits: Rlimits {
            nofile: spec.process.limits.nofile,
            nproc: spec.process.limits.nproc,
            core: spec.process.limits.core,
        },
        // A root service with a host id becomes root of its user namespace, which is
        // that id on the host: until it switches, the child is still the host's root
        // (unmapped inside, but the owner of every root-owned file). Its supplementary
        // groups, the daemon's, go too.
        identity: match spec.process.hardening.host_id {
            Some(_) => Some((0, 0, &[][..])),
            None => spec
                .process
                .identity
                .as_ref()
                .map(|i| (i.uid, i.gid, groups.as_slice())),
        },
        sockets: listen.as_mut().map_or(ChildPart::NONE, |l| l.child_part()),
        parent: nix::unistd::getpid().as_raw(),
        fd_limit: fd_scan_limit(),
        signals: libc::SIGRTMAX() + 1,
        hardening: &prepared,
        wait_fds: [raw(&wait_pipe, 0), raw(&wait_pipe, 1)],
        failed_step: AtomicU32::new(0),
        failed_errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack grows down on every Linux target we build for; the top is
    // 16-byte aligned as the ABI requires.
    let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) } as usize & !15;

    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers. Blocking every signal means no handler of ours can
    // run in the child before it has reset them all.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let share = if released {
        libc::CLONE_VM
    } else {
        libc::CLONE_VM | libc::CLONE_VFORK
    };
    // SAFETY: child_main only makes async-signal-safe raw calls on `args`, which outlives
    // the child's use of it: CLONE_VFORK suspends us until the child execs or exits;
    // without it, `release_child` waits for that (or kills and the caller reaps).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            share | prepared.clone_flags | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    let outcome = if pid < 0 {
        let step = if prepared.clone_flags != 0 {
            Step::Namespaces
        } else {
            Step::Exec
        };
        Err((step as u32, clone_error))
    } else if let (Some((_, wait_w)), Some((exec_r, exec_w))) = (wait_pipe, exec_pipe) {
        // The child holds its own copy of the write end until exec or exit.
        drop(exec_w);
        release_child(pid, &prepared, cgroup_fds, wait_w, exec_r)
    } else {
        Ok(())
    };
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if let Err((step, e)) = outcome {
        // Reaped before the stack goes: a killed child may still be running on it.
        if pid > 0 {
            reap(pid);
        }
        return Err((step, e));
    }
    drop(stack);
    let step = args.failed_step.load(Ordering::SeqCst);
    if step != 0 {
        reap(pid);
        let errno = args.failed_errno.load(Ordering::SeqCst);
        return Err((step, io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

/// The parent's part for a child it does not wait for with CLONE_VFORK: the id maps,
/// the priorities and the cgroups, then the go-ahead, then the wait for its exec or
/// exit (the close-on-exec pipe reaches EOF then; `failed_step` says which). On any
/// failure here the child is killed (the caller reaps it before freeing its stack).
fn release_child(
    pid: i32,
    prepared: &hardening::Prepared,
    cgroup_fds: &[RawFd],
    wait_w: OwnedFd,
    exec_r: OwnedFd,
) -> Result<(), (u32, io::Error)> {
    let kill = |step: Step, e: io::Error| {
        // SAFETY: kill on a child of ours that is not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        (step as u32, e)
    };
    prepared
        .parent_step(pid)
        .map_err(|e| kill(Step::UserNamespace, io::Error::other(e)))?;
    // The child is in its own user namespace already: moved into its cgroups from
    // here, where the write is judged by our credentials.
    let text = pid.to_string();
    for fd in cgroup_fds {
        // SAFETY: a valid buffer on a descriptor the caller keeps open.
        if unsafe { libc::write(*fd, text.as_ptr().cast(), text.len()) } < 0 {
            return Err(kill(Step::Cgroup, io::Error::last_os_error()));
        }
    }
    // SAFETY: one byte from a valid buffer.
    if unsafe { libc::write(wait_w.as_raw_fd(), b"1".as_ptr().cast(), 1) } != 1 {
        return Err(kill(Step::UserNamespace, io::Error::last_os_error()));
    }
    drop(wait_w);
    // EOF once the child has exec'd or exited; only then may its stack go. Signals
    // are blocked here (see spawn_with), so nothing should interrupt the read; any
    // other outcome kills the child, which the caller reaps before freeing anything.
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(exec_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        match n {
            0 => return Ok(()),
            1 => continue,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(kill(Step::Exec, io::Error::last_os_error())),
        }
    }
}

/// Creates `data_dir` (0750) if missing, owned by the service's identity (or, for a
/// root service under `private_users`, by its host id). As root, and
/// often inside a directory the service's user owns: every component is created and
/// opened relative to its parent, a symlink is followed only where it stands in a
/// directory that passes StrictModes, and the new directory is handed over with
/// `fchown` on its descriptor (`safe_fs::create_dir_chain`), so a link the user planted
/// cannot make root create or chown anything elsewhere. One that exists already is left
/// as it is (nothing is done as root there).
fn ensure_data_dir(dir: &Path, spec: &ServiceSpec) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let owner = match spec.process.hardening.host_id {
        Some(Ok(host)) => Some((host, host)),
        // Checked before (`host_id_can_execute`); never create it as root's here.
        Some(Err(ref e)) => return Err(io::Error::other(e.clone())),
        None => spec.process.identity.as_ref().map(|id| (id.uid, id.gid)),
    };
    crate::common::safe_fs::create_dir_chain(dir, 0o750, owner).map(drop)
}
/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if they were closed), so
/// that no pipe or socket of ours is ever given one of those numbers. Call first thing.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any number is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // open() returns the lowest free number: this one.
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
