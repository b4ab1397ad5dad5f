//! A wake-up descriptor: an eventfd that threads blocked in poll() on a descriptor of
//! their own watch too, so that one write reaches every one of them at once and none
//! needs a timeout. `upgrade-self` uses two: `handover()`, for the output and notify
//! readers (`output::handover`, `health::notify`), and one for the control socket's
//! accept thread (`control::pause`). A `Wake` carries no data: what the wake-up means
//! is kept beside it by its owner, or by a `Flag`.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A wake-up with its meaning: a flag raised and lowered with the descriptor, so that
/// a woken thread can tell whether it was asked for (and a thread about to wait can
/// see that it already was).
pub struct Flag {
    wake: Wake,
    up: AtomicBool,
}

impl Flag {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The descriptor to poll beside one's own.
    pub fn fd(&self) -> RawFd {
        self.wake.fd()
    }

    /// Sets the flag, then wakes every waiter: a waiter woken sees it set.
    pub fn raise(&self) {
        self.up.store(true, Ordering::Release);
        self.wake.raise();
    }

    /// Makes the descriptor unreadable, then clears the flag.
    pub fn lower(&self) {
        self.wake.clear();
        self.up.store(false, Ordering::Release);
    }
}

/// Raised while `upgrade-self` asks every output reader and the notify reader to stop
/// for the handover to the new image (`output::handover`).
pub fn handover() -> &'static Flag {
    static HANDOVER: OnceLock<Flag> = OnceLock::new();
    HANDOVER.get_or_init(|| Flag {
        wake: Wake::new(),
        up: AtomicBool::new(false),
    })
}

/// Raised until cleared. Lives as long as the process (it sits in a static).
///
/// Three raw calls rather than nix's `EventFd`: the same calls, and the wrapper costs
/// some 300 bytes of a binary kept under a size budget.
pub struct Wake(RawFd);

impl Wake {
    /// Without a descriptor (none could be made), `fd` is -1, which poll ignores: the
    /// waiters then see only their own descriptor.
    pub fn new() -> Wake {
        // SAFETY: eventfd has no memory preconditions.
        Wake(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
    }

    pub fn fd(&self) -> RawFd {
        self.0
    }

    /// Makes the descriptor readable, for every waiter.
    pub fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd (or fails on -1).
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }

    /// Makes it unreadable again.
    pub fn clear(&self) {
        let mut drained: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from the non-blocking eventfd.
        unsafe { libc::read(self.0, (&mut drained as *mut u64).cast(), 8) };
    }
}

/// Blocks in poll() until `fd` is readable (or closed, or in error) or `wake` is
/// raised: (fd ready, wake raised). EINTR is waited through; another error is returned.
pub fn wait(fd: RawFd, wake: RawFd) -> io::Result<(bool, bool)> {
    let mut pfds = [fd, wake].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: pfds is a valid array of two pollfds for the duration of the call.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) } >= 0 {
            return Ok((pfds[0].revents != 0, pfds[1].revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
