//! The one enum that travels on the main loop's channel. Every thread that has news for
//! the supervisor (waiters, the signal forwarder, control connections) sends one of these;
//! only the main loop receives them.

use crate::control::socket::{Reply, Request};
use crate::supervise::state::Exit;
use crossbeam_channel::Sender;
use std::sync::Arc;

pub enum Event {
    /// A run's main process exited (observed, not yet reaped).
    Exited {
        service: Arc<str>,
        gen: u64,
        pid: i32,
        exit: Exit,
    },
    /// A tcp/http health check finished (from the probe pool).
    Probe {
        service: Arc<str>,
        gen: u64,
        result: Result<(), String>,
    },
    /// A service's notify slot changed (READY, STATUS, WATCHDOG=trigger); at most one
    /// in flight per service (see `health::notify`).
    Notify { service: Arc<str> },
    /// A signal arrived (forwarded from the self-pipe).
    Signal(i32),
    /// A control-socket request; the answer goes to the sender.
    Control(Request, Sender<Reply>),
    /// The file work of an `upgrade` or `rollback` is done (off the loop: copying and
    /// hashing a binary takes as long as the binary is large).
    Installed(crate::supervise::upgrading::Installed),
    /// `upgrade-self`'s checks of the new binary are done (off the loop: it runs it).
    SelfChecked(crate::supervise::reexec::SelfChecked),
}
