//! Building a service's process (SPEC 4 and 6): exact argv, no shell, a clean
//! environment, stdin on /dev/null, stdout and stderr on pipes, its own session and
//! process group, its cgroups, limits and identity applied, and death with the
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

use crate::config::discovery::ServiceSpec;
use crate::process::sockets::{ChildPart, Passed};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

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
        10 => "pass its sockets",
        _ => "execute",
    }
}

/// Everything the child needs, prepared by the parent. The child reads it and writes
/// only `failed_step`/`failed_errno`.
struct ChildArgs<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cwd: Option<&'a CString>,
    stdio: [RawFd; 3],
    cgroup_fds: &'a [RawFd],
    limits: Rlimits,
    identity: Option<(u32, u32, &'a [libc::gid_t])>,
    /// Sockets to put at fd 3 and up, with `LISTEN_PID` (SPEC 8).
    sockets: ChildPart,
    parent: libc::pid_t,
    fd_limit: libc::c_int,
    /// One past the highest signal number, read before the clone.
    signals: libc::c_int,
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
    if let Some(dir) = &spec.cwd {
        ensure_data_dir(dir, spec).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    }
    let (out_r, out_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let stdio = [dev_null()?, out_w.as_raw_fd(), err_w.as_raw_fd()];
    let cgroup_fds = crate::process::cgroup::raw_fds(cgroup_files);
    // argv[0] comes with the args (the configured path); a spec without any (built by
    // hand, in tests) gets the binary itself.
    let fallback;
    let argv = if spec.args.is_empty() {
        fallback = [spec.binary.to_string_lossy().into_owned()];
        &fallback[..]
    } else {
        &spec.args[..]
    };
    let pid = spawn_with(
        spec,
        spec.binary.as_os_str(),
        argv,
        stdio,
        &cgroup_fds,
        spec.cwd.as_deref(),
        sockets,
    )
    .map_err(|(step, e)| SpawnError {
        busy: step == Step::Exec as u32 && e.raw_os_error() == Some(libc::ETXTBSY),
        message: describe_failure(step, &spec.binary.display().to_string(), e),
    })?;
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
    if step == Step::Exec as u32 {
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
    let mut strings = Vec::with_capacity(args.len() + spec.env.len());
    for a in args {
        strings.push(cstring(OsStr::new(a))?);
    }
    let mut listen = sockets.prepare().map_err(|e| (Step::Sockets as u32, e))?;
    let mut env_strings: Vec<CString> = spec
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
    if let Some(l) = &listen {
        envp.push(l.pid_entry());
    }
    envp.push(std::ptr::null());
    let cwd = cwd.map(|d| cstring(d.as_os_str())).transpose()?;
    let groups: Vec<libc::gid_t> = spec
        .identity
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    let args = ChildArgs {
        program: &program,
        argv: &argv,
        envp: &envp,
        cwd: cwd.as_ref(),
        stdio,
        cgroup_fds,
        limits: Rlimits {
            nofile: spec.limits.nofile,
            nproc: spec.limits.nproc,
            core: spec.limits.core,
        },
        identity: spec
            .identity
            .as_ref()
            .map(|i| (i.uid, i.gid, groups.as_slice())),
        sockets: listen.as_mut().map_or(ChildPart::NONE, |l| l.child_part()),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        fd_limit: fd_scan_limit(),
        signals: libc::SIGRTMAX() + 1,
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
    // SAFETY: child_main only makes async-signal-safe raw calls on `args`, which outlives
    // the child's use of it: CLONE_VFORK suspends us until the child execs or exits.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err((Step::Exec as u32, clone_error));
    }
    let step = args.failed_step.load(Ordering::SeqCst);
    if step != 0 {
        reap(pid);
        let errno = args.failed_errno.load(Ordering::SeqCst);
        return Err((step, io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

/// The child, between clone and exec. See the module comment for its rules.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
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

/// Returns the step that failed; on success execve does not return.
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

    // stdin, stdout, stderr. The daemon keeps 0-2 open (see main), so the sources are
    // all above 2 and no dup2 overwrites another source.
    for (target, &src) in a.stdio.iter().enumerate() {
        if libc::dup2(src, target as libc::c_int) < 0 {
            return Step::Stdio;
        }
    }
    if let Some(dir) = a.cwd {
        if libc::chdir(dir.as_ptr()) < 0 {
            return Step::Chdir;
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
    libc::umask(0o022);
    if !set_limit(libc::RLIMIT_NOFILE, a.limits.nofile)
        || !set_limit(libc::RLIMIT_NPROC, a.limits.nproc)
        || !set_limit(libc::RLIMIT_CORE, a.limits.core)
    {
        return Step::Rlimit;
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
    libc::execve(a.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    Step::Exec
}

/// Creates `data_dir` (0750) if missing, owned by the service's identity. As root, and
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
    let owner = spec.identity.as_ref().map(|id| (id.uid, id.gid));
    crate::process::safe_fs::create_dir_chain(dir, 0o750, owner).map(drop)
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, value: Option<u64>) -> bool {
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
fn fd_scan_limit() -> i32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    n.clamp(256, 65_536) as i32
}

/// Marks every descriptor above 2 close-on-exec, so that exec closes whatever the
/// orchestrator inherited or opened (our own are close-on-exec already).
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

/// Long-lived threads that start many services at once (at start-up and reload), so
/// that a start storm is not serialised behind one thread's clone-and-exec waits.
///
/// The threads never exit: a child's parent-death signal follows the thread that
/// cloned it, so a pool thread must live as long as the orchestrator (they wait on
/// their queue without a timeout, which costs nothing while idle). Any thread of the
/// process may wait for any child, so the usual waiter threads work unchanged.
pub struct Pool {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    results: (
        crossbeam_channel::Sender<Done>,
        crossbeam_channel::Receiver<Done>,
    ),
    size: usize,
}

/// A finished spawn: the job's index and its result.
type Done = (usize, Result<Child, SpawnError>);

struct Job {
    index: usize,
    spec: ServiceSpec,
    cgroup_files: Vec<std::fs::File>,
    sockets: Passed,
}

impl Job {
    fn run(&self) -> Result<Child, SpawnError> {
        spawn(&self.spec, &self.cgroup_files, &self.sockets)
    }
}

impl Pool {
    /// A pool of two threads per CPU (a spawner mostly sleeps while its child execs),
    /// at most 8; none on a single CPU.
    pub fn new() -> Pool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Pool {
            jobs: None,
            results: crossbeam_channel::unbounded(),
            size: if cpus < 2 { 1 } else { (2 * cpus).min(8) },
        }
    }

    /// Queues one spawn (`index` identifies it in `collect`); spawns it right here when
    /// there is no pool. Returns the result only in that case.
    pub fn submit(
        &mut self,
        index: usize,
        spec: ServiceSpec,
        cgroup_files: Vec<std::fs::File>,
        sockets: Passed,
    ) -> Option<Result<Child, SpawnError>> {
        let job = Job {
            index,
            spec,
            cgroup_files,
            sockets,
        };
        let Some(tx) = self.sender() else {
            return Some(job.run());
        };
        match tx.send(job) {
            Ok(()) => None,
            // The workers never exit, so this cannot happen; spawn here if it does.
            Err(crossbeam_channel::SendError(job)) => Some(job.run()),
        }
    }

    /// Waits for `n` queued spawns; their (index, result), in the order they finish.
    pub fn collect(&mut self, n: usize) -> Vec<Done> {
        (0..n).map_while(|_| self.results.1.recv().ok()).collect()
    }

    /// The queue of the pool's threads, started on first use; none without a pool
    /// (one CPU) or when no thread could be started.
    fn sender(&mut self) -> Option<&crossbeam_channel::Sender<Job>> {
        if self.size < 2 {
            return None;
        }
        if self.jobs.is_some() {
            return self.jobs.as_ref();
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut started = 0;
        for i in 0..self.size {
            let (rx, results) = (rx.clone(), self.results.0.clone());
            let thread = std::thread::Builder::new()
                .name(format!("spawner-{i}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    for job in rx {
                        let result = job.run();
                        drop(job.cgroup_files);
                        let _ = results.send((job.index, result));
                    }
                    // Never exit: the children this thread cloned would get their
                    // parent-death signal. Parked, it costs nothing.
                    loop {
                        std::thread::park();
                    }
                });
            if thread.is_ok() {
                started += 1;
            }
        }
        if started > 0 {
            self.jobs = Some(tx);
        }
        self.jobs.as_ref()
    }
}
