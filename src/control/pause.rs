//! Holding the control socket's accept thread off its listener while `upgrade-self`
//! hands over (docs/unattended.md): a client that connects then waits in the listener's
//! backlog for the new image, instead of being accepted by the old one and cut off by its
//! exec. The accept thread waits in poll() on the listener and on one eventfd; `hold` makes
//! the eventfd readable and waits until the thread is off the listener. This file never
//! accepts, reads or closes a connection.

use crate::process::wake::{self, Wake};
use std::os::fd::RawFd;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Shared {
    /// Raised while a hold is asked for.
    wake: Wake,
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Default)]
struct State {
    asked: bool,
    held: bool,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        wake: Wake::new(),
        state: Mutex::default(),
        cond: Condvar::new(),
    })
}

/// The accept thread, before each accept: returns once `listener` has a connection
/// waiting, staying off it while a hold is asked for.
pub fn wait_listener(listener: RawFd) {
    let s = shared();
    loop {
        if let Ok(mut st) = s.state.lock() {
            if st.asked {
                st.held = true;
                s.cond.notify_all();
                while st.asked {
                    st = match s.cond.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
                st.held = false;
            }
        }
        match wake::wait(listener, s.wake.fd()) {
            Err(_) => return, // accept() reports what is wrong.
            Ok((true, false)) => return,
            Ok(_) => {}
        }
        // The wake descriptor (a hold asked for, or one just released): look again.
    }
}

/// A hold on the accept thread, released when dropped (a handover called off, or an
/// exec that failed).
pub struct Held(());

impl Drop for Held {
    fn drop(&mut self) {
        let s = shared();
        if let Ok(mut st) = s.state.lock() {
            s.wake.clear();
            st.asked = false;
            s.cond.notify_all();
        }
    }
}

/// Asks the accept thread off the listener and waits (at most `bound`) until it is.
/// Past the bound the hold stays asked for and the thread takes it at its next turn.
pub fn hold(bound: Duration) -> Held {
    let s = shared();
    let end = Instant::now() + bound;
    if let Ok(mut st) = s.state.lock() {
        st.asked = true;
        s.wake.raise();
        while !st.held {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match s.cond.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(_) => break,
            };
        }
    }
    Held(())
}
