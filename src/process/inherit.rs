//! Descriptors that cross `upgrade-self`'s exec (docs/unattended.md): everything the
//! daemon opens is close-on-exec, so the old image clears the flag on exactly what it
//! hands over, and the new image takes each one back by number and sets the flag again.
//! Nothing else is ever left open across an exec.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Leaves `fd` open across the coming exec.
pub fn clear_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor number; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
}

/// Closes `fd` at exec again (after a failed exec, or once taken over).
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Takes over descriptor `fd`, handed over by the previous image to this one alone:
/// `None` if nothing is open under that number.
pub fn adopt(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD on an arbitrary number only reports whether it is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    set_cloexec(fd);
    // SAFETY: open, and handed to us alone (see above); nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
