//! Signal handling: signal-hook's self-pipe, registered once at start-up for every signal
//! we handle, and one thread that turns each delivery into an `Event::Signal`. The
//! handler itself only writes to the pipe; all decisions happen in the main loop.

use crate::supervise::event::Event;
use crossbeam_channel::Sender;
use signal_hook::iterator::Signals;
use std::io;

/// Registers the handlers. Call before any other thread exists. SIGCHLD is handled only
/// when orphans are to be reaped (PID 1 or subreaper); otherwise child exits wake nobody
/// but their own waiter.
pub fn register(reap_orphans: bool) -> io::Result<Signals> {
    // SIGPWR: init's "power is failing" (BusyBox init, sysvinit's powerfail), a clean
    // shutdown like SIGTERM. PID 1 ignores every signal it has no handler for.
    let mut sigs = vec![
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPWR,
    ];
    if reap_orphans {
        sigs.push(libc::SIGCHLD);
    }
    Signals::new(&sigs)
}

pub fn forward(mut signals: Signals, tx: Sender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// Every signal `register` may take.
const HANDLED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGPWR,
    libc::SIGCHLD,
];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals on this thread (before `upgrade-self`'s exec: the mask
/// and what is pending survive it, so a signal that comes before the new image has
/// its handlers waits for them instead of taking the default action). The old mask.
pub fn block_handled() -> libc::sigset_t {
    let set = handled_set();
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
/// the ones that came during the exec are delivered now). Call before any other thread
/// exists, so that every thread inherits the open mask.
pub fn unblock_handled() {
    let set = handled_set();
    // SAFETY: set is valid; no old mask is asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}
