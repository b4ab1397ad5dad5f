//! The per-run waiter thread: blocks in waitid() until the run's main process exits and
//! reports it to the main loop. It observes the exit with WNOWAIT and does not reap: the
//! main loop reaps when it is done signalling the group, so the pid (and the process group
//! id) cannot be reused while anyone may still send it a signal.

use crate::common::event::Event;
use crate::common::state::Exit;
use crossbeam_channel::Sender;
use std::io;
use std::sync::{Arc, Mutex};

const WAITER_STACK: usize = 64 * 1024;

/// How many of a run's readers have reached the end of their pipe. The waiter waits
/// on it (bounded) before it reports the exit, so that a run's own lines come before
/// its `exited` record (docs/logs.md).
#[derive(Default)]
pub struct Drain {
    done: Mutex<u8>,
    cond: std::sync::Condvar,
}

impl Drain {
    pub fn finished(&self) {
        if let Ok(mut d) = self.done.lock() {
            *d += 1;
            self.cond.notify_all();
        }
    }

    /// Waits until `readers` have finished, or `bound` has passed (a descendant may keep
    /// a pipe open for ever).
    pub fn wait(&self, readers: u8, bound: std::time::Duration) {
        let Ok(guard) = self.done.lock() else { return };
        let _ = self.cond.wait_timeout_while(guard, bound, |d| *d < readers);
    }
}

/// How long a reported exit waits for the run's output to be drained: a descendant may
/// keep the pipes open for ever, and the run must still end.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the waiter of `pid`. With `drain` (a run's two output readers), the exit is
/// reported once both have read to the end of their pipe, or after `DRAIN_BOUND`: a
/// run's own last lines come before its `exited` record.
pub fn spawn_waiter<A: Send + 'static>(
    pid: i32,
    gen: u64,
    service: Arc<str>,
    tx: Sender<Event<A>>,
    drain: Option<Arc<Drain>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .stack_size(WAITER_STACK)
        .spawn(move || {
            let exit = wait_exit(pid);
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

/// Blocks until `pid` has exited, without reaping it.
pub fn wait_exit(pid: i32) -> Exit {
    let mut not_ours = false;
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid, writable siginfo_t.
        let once = if not_ours { libc::WNOHANG } else { 0 };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | once,
            )
        };
        let err = io::Error::last_os_error();
        if r < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // SAFETY: reading the pid of a siginfo waitid filled (0 if nothing was found).
        if r < 0 || (not_ours && unsafe { info.si_pid() } == 0) {
            // ECHILD: not our child. A run we spawned always is, until the loop reaps
            // it; a daemon named by a pid file may have a parent of its own still
            // alive. Its exit is seen through a pidfd all the same (no status: that is
            // its parent's to read, unless it was reparented to us meanwhile).
            if err.raw_os_error() == Some(libc::ECHILD) && !not_ours && wait_pidfd(pid) {
                not_ours = true;
                continue;
            }
            return Exit::Code(255);
        }
        // SAFETY: waitid filled info for a child state change.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        return match code {
            libc::CLD_EXITED => Exit::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => Exit::Signal(status),
            // Stopped/continued are not requested (no WSTOPPED/WCONTINUED).
            _ => continue,
        };
    }
}

/// Blocks until `pid`, not our child, has exited; false if that cannot be watched
/// (no pidfd on this kernel, or the process is gone already).
fn wait_pidfd(pid: i32) -> bool {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just opened and is owned here alone.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    // A pidfd turns readable when the process exits.
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut p, PollTimeout::NONE) {
            Ok(n) if n > 0 => return true,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}
