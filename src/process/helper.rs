//! Children the daemon runs for itself off the main loop (the checks of a new binary
//! before `upgrade-self`), each waited for by the thread that started it. As PID 1 or
//! subreaper the loop's orphan reaper waits for every child it does not know; it must
//! know these, or it takes their exit status and their own waiter gets ECHILD. So a
//! helper's pid is registered under the lock the reaper holds for its pass, before the
//! reaper can see the child, and forgotten only once the helper is done with.

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};

static HELPERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn helpers() -> MutexGuard<'static, BTreeSet<i32>> {
    // The set stays consistent whatever a panicking holder did: inserts and removes only.
    HELPERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child of ours that the orphan reaper leaves to its waiter until it is dropped.
pub struct Helper {
    pub child: Child,
}

impl Helper {
    /// `cmd.spawn()`, the pid registered before any reaper pass can see the child.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Helper> {
        let mut set = helpers();
        let child = cmd.spawn()?;
        set.insert(child.id() as i32);
        Ok(Helper { child })
    }
}

impl Drop for Helper {
    /// Once its waiter reaped it (or gave up on it: the reaper takes it from here).
    fn drop(&mut self) {
        helpers().remove(&(self.child.id() as i32));
    }
}

/// The helpers' pids now.
pub fn pids() -> Vec<i32> {
    helpers().iter().copied().collect()
}

/// Runs `pass` with the helpers' pids, which it must not wait for; no helper is started
/// meanwhile.
pub fn excluding<R>(pass: impl FnOnce(&BTreeSet<i32>) -> R) -> R {
    pass(&helpers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_excluded_until_dropped() {
        let h = Helper::spawn(Command::new("true").stdin(std::process::Stdio::null()))
            .expect("spawn true");
        let pid = h.child.id() as i32;
        assert!(excluding(|s| s.contains(&pid)));
        let mut h = h;
        assert!(h.child.wait().is_ok());
        drop(h);
        assert!(!excluding(|s| s.contains(&pid)));
    }
}
