//! Children the daemon runs for itself off the main loop (the checks of a new binary
//! before `upgrade-self`), each waited for by the thread that started it. As PID 1 or
//! subreaper the loop's orphan reaper waits for every child it does not know; it must
//! know these, or it takes their exit status and their own waiter gets ECHILD.
//!
//! The lock is never held across the spawn (a fork and the wait for exec, which can
//! stall on a slow file system): the reaper takes it on every SIGCHLD, and must never
//! wait for a helper's exec. Instead a spawn is announced under the lock before the
//! fork, and its pid registered under the lock after it; while one is announced and
//! not registered, the reaper cannot tell that child from an orphan and skips its pass,
//! to try again a moment later (`excluding` says so).

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Registry {
    /// The helpers' pids, until they are dropped.
    pids: BTreeSet<i32>,
    /// Spawns under way: their child may exist, its pid not yet in `pids`.
    spawning: usize,
}

static HELPERS: Mutex<Registry> = Mutex::new(Registry {
    pids: BTreeSet::new(),
    spawning: 0,
});

fn helpers() -> MutexGuard<'static, Registry> {
    // The registry stays consistent whatever a panicking holder did: counts, inserts
    // and removes only.
    HELPERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child of ours that the orphan reaper leaves to its waiter until it is dropped.
pub struct Helper {
    pub child: Child,
}

impl Helper {
    /// `cmd.spawn()`, announced before the fork and registered right after it, the lock
    /// held for neither.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Helper> {
        helpers().spawning += 1;
        let child = cmd.spawn();
        let mut set = helpers();
        set.spawning -= 1;
        let child = child?;
        set.pids.insert(child.id() as i32);
        Ok(Helper { child })
    }
}

impl Drop for Helper {
    /// Once its waiter reaped it (or gave up on it: the reaper takes it from here).
    fn drop(&mut self) {
        helpers().pids.remove(&(self.child.id() as i32));
    }
}

/// The helpers' pids now.
pub fn pids() -> Vec<i32> {
    helpers().pids.iter().copied().collect()
}

/// Runs `pass` with the helpers' pids, which it must not wait for; no helper is
/// registered meanwhile. `None` (and `pass` not run) while a helper is being spawned:
/// its child may exist unregistered, so the caller tries again shortly.
pub fn excluding<R>(pass: impl FnOnce(&BTreeSet<i32>) -> R) -> Option<R> {
    let set = helpers();
    (set.spawning == 0).then(|| pass(&set.pids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// The registry is one for the whole process: these tests take turns.
    static TURN: Mutex<()> = Mutex::new(());

    #[test]
    fn a_helper_is_excluded_until_dropped() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let h = Helper::spawn(Command::new("true").stdin(std::process::Stdio::null()))
            .expect("spawn true");
        let pid = h.child.id() as i32;
        assert_eq!(excluding(|s| s.contains(&pid)), Some(true));
        let mut h = h;
        assert!(h.child.wait().is_ok());
        drop(h);
        assert_eq!(excluding(|s| s.contains(&pid)), Some(false));
    }

    /// A spawn whose child has not exec'd yet (here: held before exec until the test
    /// lets it go) never holds up the reaper: it is told to try again instead.
    #[test]
    fn a_stalled_spawn_does_not_block_the_reaper() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = || {
            let mut fds = [0; 2];
            // SAFETY: fds is a valid two-int array; both ends are owned from here on.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: just opened, owned here alone.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let ((hold_r, hold_w), (ready_r, ready_w)) = (pipe(), pipe());
        let hold_w = Arc::new(hold_w);
        let spawned = Arc::new(AtomicBool::new(false));
        let (in_child, done) = ((hold_r.as_raw_fd(), ready_w.as_raw_fd()), spawned.clone());
        let spawner = std::thread::spawn(move || {
            let mut cmd = Command::new("true");
            // SAFETY: raw syscalls only, no allocation: the child says it is there,
            // then waits before exec until the test lets it go.
            unsafe {
                cmd.pre_exec(move || {
                    let mut b = 0u8;
                    libc::write(in_child.1, b"1".as_ptr().cast(), 1);
                    libc::read(in_child.0, (&mut b as *mut u8).cast(), 1);
                    Ok(())
                });
            }
            let ok = Helper::spawn(&mut cmd).map(|mut h| {
                done.store(true, Ordering::SeqCst);
                h.child.wait().is_ok()
            });
            assert!(matches!(ok, Ok(true)), "{ok:?}");
        });
        let release = |w: &OwnedFd| {
            // SAFETY: one byte to our own pipe.
            unsafe { libc::write(w.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        };
        // Should the reaper wait for the spawn after all, the child is let go in the
        // end, so that the test fails instead of hanging.
        let late = hold_w.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            release(&late);
        });
        let mut b = 0u8;
        // SAFETY: reads one byte into b: the child exists and has not exec'd.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        assert_eq!(n, 1);
        let during = excluding(|_| ());
        let blocked = spawned.load(Ordering::SeqCst);
        release(&hold_w);
        assert!(spawner.join().is_ok());
        assert!(!blocked, "the reaper's pass waited for the helper's exec");
        assert_eq!(
            during, None,
            "told to try again while the spawn is under way"
        );
        assert_eq!(excluding(|_| ()), Some(()));
    }
}
