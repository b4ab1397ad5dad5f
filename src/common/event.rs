//! The one enum that travels on the main loop's channel. Every thread that has news for
//! the supervisor (waiters and the signal forwarder, probes, control connections, the
//! loop's own off-loop work) sends one of these; only the main loop receives them.
//!
//! It lives on the ground floor because threads of every layer send it. What only a
//! layer above can name (a control request with its reply channel, the end of an
//! `upgrade`'s file work) travels as `Above(A)`: `A` is defined up there, in
//! `supervise::event`, and this file names no type of any other layer. The layers in
//! between only pass `A` through, generically.

use super::state::Exit;
use std::sync::Arc;

pub enum Event<A> {
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
    /// News whose type belongs to a layer above this one.
    Above(A),
}
