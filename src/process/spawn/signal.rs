//! Signalling and reaping a child the spawn made: to its process group (a daemon named
//! by a pid file that leads none gets the signal alone), through its pidfd where one is
//! held, and reaping without ever waiting for a process that is not ours.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Sends `sig` to process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return; // Never signal our own group, or every process.
    }
    // SAFETY: killpg and kill have no memory preconditions.
    unsafe {
        // A daemon named by a pid file may not lead a group of its own: then the
        // signal goes to it alone.
        if libc::killpg(pgid, sig) != 0 {
            libc::kill(pgid, sig);
        }
    }
}

/// Sends `sig` to a daemon named by a pid file through its pidfd (it may not be our
/// child, so its pid could be reused once it exits), and to its group if it leads one:
/// while it lives its pid is its own, and once it is gone, only while no process has
/// taken the number (a group with members left keeps it from reuse).
pub fn signal_pidfd(fd: &OwnedFd, pgid: i32, sig: i32) {
    // SAFETY: pidfd_send_signal takes a descriptor we own, a signal and no info.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    if pgid > 1 && (sent || crate::process::procfs::stat(pgid).is_none()) {
        // SAFETY: killpg has no memory preconditions.
        unsafe { libc::killpg(pgid, sig) };
    }
}

/// Reaps the process `fd` refers to if it is our child and has exited; never blocks.
pub fn reap_pidfd(fd: &OwnedFd) {
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid, writable siginfo_t; WNOHANG never blocks.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Reaps `pid`, which the waiter has seen exit (so this does not block for long).
pub fn reap(pid: i32) {
    if pid <= 0 {
        return; // Not one process: waitpid would take any child's status.
    }
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}
