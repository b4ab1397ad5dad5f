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
