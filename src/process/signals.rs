//! Signal handling: one handler, installed through signal-hook's registry at start-up
//! for every catchable signal, before any other thread exists; a self-pipe; and one
//! thread that turns each delivery into an `Event::Signal` for the main loop or a log
//! line. The handler only records the signal and its sender and writes to the pipe;
//! every decision is made on the thread or in the main loop.
//!
//! No stray signal ends the daemon, since its death would take every service with it:
//! - SIGTERM, SIGINT, SIGQUIT (and SIGPWR as PID 1) shut down, SIGHUP reloads, SIGUSR1
//!   reopens the log files, SIGCHLD reaps orphans (only when we reap them; otherwise it
//!   keeps its default so that nothing changes how children are waited for);
//! - SIGPIPE, SIGWINCH, SIGURG and SIGCONT are left alone: their dispositions already
//!   ignore them (SIGPIPE is ignored by the Rust runtime), and nobody needs to hear of
//!   them;
//! - a fault the kernel raises (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS,
//!   SIGABRT, also from our own `abort`) keeps its default action: carrying on after
//!   one is worse than dying. The same signal sent by another process (`si_code <= 0`)
//!   is only a message: logged and ignored;
//! - every other one (SIGUSR2, SIGALRM, SIGTSTP, SIGTTIN, SIGTTOU, SIGXCPU, real-time
//!   signals, ...) is logged, at most once a second per signal, and ignored.

use crate::common::event::Event;
use crossbeam_channel::Sender;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Signals the kernel raises for a fault of ours.
const FAULTS: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
];

/// Ignored by their default disposition, and not worth a line.
const SILENT: [i32; 4] = [libc::SIGPIPE, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT];

/// Blocked on every thread but the signals thread, which alone takes them.
///
/// SIGTTIN and SIGTTOU: a background daemon's write to (or read from) a terminal then
/// goes through instead of raising SIGTTOU (SIGTTIN) and being restarted after our
/// handler, over and over; sent by someone, they are logged like any stray signal.
///
/// The fault signals: one that another process sends can then only interrupt the
/// signals thread. On another thread it could land inside std's thread start-up, which
/// holds the lock that std's own SIGSEGV/SIGBUS handler (run before ours) takes: that
/// thread would spin forever, and every thread started after it. A fault the kernel
/// raises on a thread that blocks it still ends the process with the fault's default
/// action, as it must.
const ROUTED: [i32; 9] = [
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
];

/// The highest signal number the pending set covers.
const MAX_SIG: usize = 64;

/// One bit per signal that came since the thread last looked.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Per signal, the pid of the process that sent it last (0: the kernel).
static SENDER: [AtomicI32; MAX_SIG + 1] = [const { AtomicI32::new(0) }; MAX_SIG + 1];
/// The self-pipe's write end (non-blocking), or -1 before `register`.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// Our handler as installed for each fault signal, put back after a handler that
/// runs before ours (std's stack-overflow handler, for SIGSEGV and SIGBUS) has reset
/// the signal to its default.
static FAULT_ACTIONS: OnceLock<[(i32, libc::sigaction); 7]> = OnceLock::new();

/// The read end of the self-pipe.
pub struct Signals {
    pipe: File,
}

/// Every catchable signal we install the handler for.
fn handled(reap_orphans: bool) -> impl Iterator<Item = i32> {
    (1..=libc::SIGRTMAX()).filter(move |&sig| {
        let reserved = sig > libc::SIGSYS && sig < libc::SIGRTMIN();
        !reserved
            && sig != libc::SIGKILL
            && sig != libc::SIGSTOP
            && !SILENT.contains(&sig)
            && (sig != libc::SIGCHLD || reap_orphans)
    })
}

/// Installs the handler. Call before any other thread exists. SIGCHLD is handled only
/// when orphans are to be reaped (PID 1 or subreaper); otherwise child exits wake nobody
/// but their own waiter.
pub fn register(reap_orphans: bool) -> io::Result<Signals> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both; the read end is owned here, the write end lives as
    // long as the process (the handler may write to it at any time).
    let pipe = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: fcntl on a descriptor we own: a full pipe must never block the handler.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
    WAKE.store(fds[1], Ordering::Relaxed);
    for sig in handled(reap_orphans) {
        // SAFETY: `on_signal` is async-signal-safe (atomics, write, sigaction, raise);
        // SIGSEGV, SIGILL and SIGFPE are registered knowingly: see `on_signal`.
        unsafe { signal_hook_registry::register_unchecked(sig, on_signal) }?;
    }
    let mut actions = [(0, no_action()); 7];
    for (slot, sig) in actions.iter_mut().zip(FAULTS) {
        // SAFETY: reads and rewrites the action just installed for `sig`: the same
        // handler, on the alternate stack std sets up per thread, so that a stack
        // overflow still gets std's message instead of a silent death.
        unsafe {
            let mut act = no_action();
            libc::sigaction(sig, std::ptr::null(), &mut act);
            act.sa_flags |= libc::SA_ONSTACK;
            libc::sigaction(sig, &act, std::ptr::null_mut());
            *slot = (sig, act);
        }
    }
    let _ = FAULT_ACTIONS.set(actions);
    Ok(Signals { pipe })
}

fn no_action() -> libc::sigaction {
    // SAFETY: sigaction is plain data for which all zeroes is a valid (default) value.
    unsafe { std::mem::zeroed() }
}

/// The handler, for every signal (async-signal-safe: no allocation, no lock).
fn on_signal(info: &libc::siginfo_t) {
    let sig = info.si_signo;
    // getpid(2), which is async-signal-safe.
    let me = std::process::id() as i32;
    // si_pid is meaningful for a signal a process sent (si_code <= 0).
    // SAFETY: reading the union as the kernel filled it for this si_code.
    let sender = if info.si_code <= 0 {
        unsafe { info.si_pid() }
    } else {
        0
    };
    if FAULTS.contains(&sig) {
        if sender == 0 || sender == me {
            // A real fault: the default action, raised again; it is blocked while we
            // run and takes effect as we return (a faulting instruction faults again
            // anyway).
            // SAFETY: signal and raise are async-signal-safe.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            return;
        }
        if let Some((_, act)) = FAULT_ACTIONS
            .get()
            .and_then(|a| a.iter().find(|(s, _)| *s == sig))
        {
            // SAFETY: puts back the action read at registration; async-signal-safe.
            unsafe { libc::sigaction(sig, act, std::ptr::null_mut()) };
        }
    }
    let Ok(n) = usize::try_from(sig) else {
        return;
    };
    if n == 0 || n > MAX_SIG {
        return;
    }
    SENDER[n].store(sender, Ordering::Relaxed);
    PENDING.fetch_or(1 << (n - 1), Ordering::AcqRel);
    let fd = WAKE.load(Ordering::Relaxed);
    // SAFETY: write of one byte from a local to our own pipe; a full pipe (EAGAIN)
    // already holds a wake-up.
    unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
}

/// What the main loop acts on; everything else that reaches the thread is logged.
fn for_the_loop(sig: i32, pid1: bool) -> bool {
    matches!(
        sig,
        libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP | libc::SIGUSR1 | libc::SIGCHLD
    ) || (sig == libc::SIGPWR && pid1)
}

/// `SIGUSR2`, `SIGRTMIN+3`, or the number.
pub fn name(sig: i32) -> String {
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

/// At most one line a second per signal, so that a flood cannot fill the log.
#[derive(Default)]
struct Throttle {
    last: Vec<(i32, Instant)>,
}

impl Throttle {
    fn allow(&mut self, sig: i32, now: Instant) -> bool {
        match self.last.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, at)) if now.duration_since(*at) < Duration::from_secs(1) => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                self.last.push((sig, now));
                true
            }
        }
    }
}

fn log_ignored(sig: i32, sender: i32) {
    let from = match sender {
        0 => String::new(),
        pid => format!(" from pid {pid}"),
    };
    if FAULTS.contains(&sig) {
        log::warn!(
            "{}{from} ignored: sent by another process, not a fault of ours",
            name(sig)
        );
    } else {
        log::warn!("{}{from} ignored", name(sig));
    }
}

pub fn forward<A: Send + 'static>(mut signals: Signals, tx: Sender<Event<A>>) -> io::Result<()> {
    let pid1 = std::process::id() == 1;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            set_mask(libc::SIG_UNBLOCK, &ROUTED);
            let mut throttle = Throttle::default();
            let mut buf = [0u8; 64];
            loop {
                match signals.pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
                let pending = PENDING.swap(0, Ordering::AcqRel);
                for n in (1..=MAX_SIG).filter(|n| pending & (1 << (n - 1)) != 0) {
                    let sig = n as i32;
                    if for_the_loop(sig, pid1) {
                        if tx.send(Event::Signal(sig)).is_err() {
                            return;
                        }
                    } else if throttle.allow(sig, Instant::now()) {
                        log_ignored(sig, SENDER[n].load(Ordering::Relaxed));
                    }
                }
            }
        })
        .map(|_| ())
}

fn set_of(sigs: impl IntoIterator<Item = i32>) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn set_mask(how: libc::c_int, sigs: &[i32]) {
    let set = set_of(sigs.iter().copied());
    // SAFETY: set is valid; no old mask is asked for.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// Blocks the handled signals on this thread (before `upgrade-self`'s exec: the mask
/// and what is pending survive it, so a signal that comes before the new image has
/// its handlers waits for them instead of taking the default action). The old mask.
pub fn block_handled() -> libc::sigset_t {
    let set = set_of(handled(true));
    // SAFETY: both sets are valid; pthread_sigmask writes only `old`.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

pub fn restore_mask(old: &libc::sigset_t) {
    // SAFETY: old is a valid set; no old mask is asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Unblocks the handled signals once their handlers are in place (after a handover,
/// the ones that came during the exec are delivered now), but the ones only the
/// signals thread takes (`ROUTED`). Call before any other thread exists, so that every
/// thread inherits this mask.
pub fn unblock_handled() {
    let set = set_of(handled(true).filter(|s| !ROUTED.contains(s)));
    // SAFETY: set is valid; no old mask is asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    set_mask(libc::SIG_BLOCK, &ROUTED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Runs `fault_child` in a process of its own (this test binary again) in `mode`.
    fn child(mode: &str) -> std::process::Child {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::signals::tests::fault_child",
                "--ignored",
            ])
            .args(["--test-threads=1", "--nocapture"])
            .env("FAULT_CHILD", mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn wait(c: &mut std::process::Child) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = c.kill();
                panic!("the child neither died nor finished");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's side: with the handler installed, either fault for real (`kernel`),
    /// or wait to be sent SIGSEGV (`sent`) and exit 0 once it was seen and survived.
    #[test]
    #[ignore = "run by the fault tests in a process of its own"]
    fn fault_child() {
        let Ok(mode) = std::env::var("FAULT_CHILD") else {
            return;
        };
        let _signals = register(false).unwrap();
        if mode == "kernel" {
            // SAFETY: a fresh page nobody may touch; the write faults (SEGV_ACCERR).
            unsafe {
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(page, libc::MAP_FAILED);
                std::ptr::write_volatile(page.cast::<u8>(), 1);
            }
            return;
        }
        println!("ready");
        let bit = 1 << (libc::SIGSEGV - 1);
        let end = Instant::now() + Duration::from_secs(10);
        // Twice: after the first, std's handler (which runs first) has reset SIGSEGV.
        for _ in 0..2 {
            while PENDING.fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
                assert!(Instant::now() < end, "no SIGSEGV came");
                std::thread::sleep(Duration::from_millis(5));
            }
            println!("survived");
        }
        std::process::exit(0);
    }

    #[test]
    fn a_fault_the_kernel_raises_keeps_its_default_action() {
        let mut c = child("kernel");
        let st = wait(&mut c);
        assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    }

    #[test]
    fn a_fault_signal_another_process_sends_is_survived() {
        use std::io::BufRead;
        let mut c = child("sent");
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert_ne!(
                out.read_line(&mut line).unwrap(),
                0,
                "the child ended early"
            );
        }
        for _ in 0..2 {
            // SAFETY: kill has no memory preconditions; the child is ours, not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGSEGV) };
            line.clear();
            while !line.contains("survived") {
                line.clear();
                assert_ne!(out.read_line(&mut line).unwrap(), 0, "the child died");
            }
        }
        let st = wait(&mut c);
        assert!(st.success(), "{st:?}");
    }

    #[test]
    fn a_signal_is_logged_at_most_once_a_second() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert!(t.allow(libc::SIGUSR2, t0));
        assert!(!t.allow(libc::SIGUSR2, t0 + Duration::from_millis(999)));
        assert!(
            t.allow(libc::SIGALRM, t0 + Duration::from_millis(10)),
            "per signal"
        );
        assert!(t.allow(libc::SIGUSR2, t0 + Duration::from_millis(1000)));
        assert!(!t.allow(libc::SIGUSR2, t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn every_catchable_signal_is_handled_but_the_silent_ones() {
        let all: Vec<i32> = handled(true).collect();
        for sig in [
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGXCPU,
            libc::SIGPWR,
            libc::SIGSEGV,
            libc::SIGABRT,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(all.contains(&sig), "{}", name(sig));
        }
        for sig in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGPIPE,
            libc::SIGCONT,
            32,
            33,
        ] {
            assert!(!all.contains(&sig), "{sig}");
        }
        assert!(!handled(false).any(|s| s == libc::SIGCHLD));
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        assert_eq!(name(libc::SIGUSR2), "SIGUSR2");
        assert!(for_the_loop(libc::SIGPWR, true) && !for_the_loop(libc::SIGPWR, false));
    }
}
