//! The per-run waiter thread: blocks in waitid() until the run's main process exits and
//! reports it to the main loop. It observes the exit with WNOWAIT and does not reap: the
//! main loop reaps when it is done signalling the group, so the pid (and the process group
//! id) cannot be reused while anyone may still send it a signal.

use crate::output::reader::Drain;
use crate::supervise::event::Event;
use crate::supervise::state::Exit;
use crossbeam_channel::Sender;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

const WAITER_STACK: usize = 64 * 1024;

/// How long a reported exit waits for the run's output to be drained: a descendant may
/// keep the pipes open for ever, and the run must still end.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the waiter of `pid`. With `drain` (a run's two output readers), the exit is
/// reported once both have read to the end of their pipe, or after `DRAIN_BOUND`: a
/// run's own last lines come before its `exited` record. With `pidfd` (a daemon named
/// by a pid file), the process is waited for through it, whoever its parent is.
pub fn spawn_waiter(
    pid: i32,
    gen: u64,
    service: Arc<str>,
    tx: Sender<Event>,
    drain: Option<Arc<Drain>>,
    pidfd: Option<Arc<OwnedFd>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .stack_size(WAITER_STACK)
        .spawn(move || {
            let exit = wait_exit(pid, pidfd.as_deref());
            if let Some(d) = drain {
                d.wait(2, DRAIN_BOUND);
            }
            // The main loop may be gone during process exit; nothing to do then.
            let _ = tx.send(Event::Exited {
                service,
                gen,
                pid,
                exit,
            });
        })
        .map(|_| ())
}

/// A pidfd for `pid`, if this kernel has them and the process exists.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: fd was just opened and is owned here alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until `pid` (or the process `pidfd` refers to) has exited, without reaping
/// it. A process that is not our child (a daemon named by a pid file whose own parent
/// lives on) is watched through a pidfd; its status is its parent's to read, so it is
/// `Exit::Unknown` unless it was reparented to us before it exited.
pub fn wait_exit(pid: i32, pidfd: Option<&OwnedFd>) -> Exit {
    let mut opened: Option<OwnedFd>;
    let mut fd = pidfd.map(AsRawFd::as_raw_fd);
    // waitid on a pidfd (Linux 5.4), so that a pid reused meanwhile is never waited
    // for; by pid where the kernel cannot.
    let mut by_fd = fd.is_some();
    let mut watched = false;
    loop {
        let (idtype, id) = match fd.filter(|_| by_fd) {
            Some(fd) => (libc::P_PIDFD, fd as libc::id_t),
            None => (libc::P_PID, pid as libc::id_t),
        };
        let once = if watched { libc::WNOHANG } else { 0 };
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid, writable siginfo_t.
        let r =
            unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | libc::WNOWAIT | once) };
        let err = io::Error::last_os_error();
        if r < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if r < 0 && by_fd && err.raw_os_error() == Some(libc::EINVAL) {
            by_fd = false;
            continue;
        }
        // SAFETY: reading the pid of a siginfo waitid filled (0 if nothing was found).
        if r == 0 && unsafe { info.si_pid() } != 0 {
            // SAFETY: waitid filled info for a child state change.
            let (code, status) = unsafe { (info.si_code, info.si_status()) };
            match code {
                libc::CLD_EXITED => return Exit::Code(status),
                libc::CLD_KILLED | libc::CLD_DUMPED => return Exit::Signal(status),
                // Stopped/continued are not requested (no WSTOPPED/WCONTINUED).
                _ => continue,
            }
        }
        // ECHILD: not our child. A run we spawned always is, until the loop reaps it;
        // a daemon named by a pid file may have a parent of its own still alive.
        if watched || err.raw_os_error() != Some(libc::ECHILD) {
            return Exit::Unknown;
        }
        if fd.is_none() {
            opened = pidfd_open(pid);
            fd = opened.as_ref().map(AsRawFd::as_raw_fd);
            by_fd = fd.is_some();
        }
        match fd {
            Some(fd) if wait_readable(fd) => watched = true,
            _ => return Exit::Unknown,
        }
    }
}

/// Blocks until the pidfd turns readable (its process has exited); false if it cannot
/// be watched.
fn wait_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: p is one valid pollfd; a pidfd turns readable when the process exits.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 {
            return true;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}
