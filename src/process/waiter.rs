//! The per-run waiter thread: blocks in waitid() until the run's main process exits and
//! reports it to the main loop. It observes the exit with WNOWAIT and does not reap: the
//! main loop reaps when it is done signalling the group, so the pid (and the process group
//! id) cannot be reused while anyone may still send it a signal.

use crate::output::reader::Drain;
use crate::supervise::event::Event;
use crate::supervise::state::Exit;
use crossbeam_channel::Sender;
use std::io;
use std::sync::Arc;

const WAITER_STACK: usize = 64 * 1024;

/// How long a reported exit waits for the run's output to be drained: a descendant may
/// keep the pipes open for ever, and the run must still end.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the waiter of `pid`. With `drain` (a run's two output readers), the exit is
/// reported once both have read to the end of their pipe, or after `DRAIN_BOUND`: a
/// run's own last lines come before its `exited` record.
pub fn spawn_waiter(
    pid: i32,
    gen: u64,
    service: Arc<str>,
    tx: Sender<Event>,
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
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid, writable siginfo_t.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // ECHILD: not our child any more. Cannot happen while the main loop is the
            // only reaper; report a failure rather than hang.
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
