//! The reaper: which children are ours to wait for, and the orphans that are not.
//!
//! Its rule: a pid is forgotten once it is reaped, so nothing asks to signal it again
//! (its number may be another process's by then); the orphan reaper never takes a pid
//! that is ours (a run, a `pid_file` launcher, an exec probe, a helper), so no waiter
//! ever loses its status. Every pid the supervisor spawns is claimed here before
//! anything can reap it, and released here when it is reaped.
use crate::process::{helper, procfs};
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// How soon an orphan reaping pass held back by a helper's spawn comes again.
const ORPHANS_RETRY: Duration = Duration::from_millis(10);

pub(super) struct Reaper {
    /// Pids spawned and not yet reaped: the orphan reaper must leave them alone.
    unreaped: HashSet<i32>,
    /// Of those, the `pid_file` launchers: without a cgroup, a signal to one goes to
    /// what descends from it (`execute.rs`), as a daemon leaves its group.
    launchers: HashSet<i32>,
    /// Reap orphaned descendants on SIGCHLD (PID 1, `subreaper`, or a `pid_file`
    /// service, whose daemon must be reparented to us).
    on_sigchld: bool,
    /// Subreaper since a reload, without SIGCHLD registered: orphans are reaped when a
    /// run of ours exits instead.
    on_exit: bool,
    /// An orphan reaping pass held back by a helper's spawn is due again then.
    retry_at: Option<Instant>,
    /// Process groups with live members, scanned at most once per loop iteration.
    live_groups: Option<HashSet<i32>>,
}

impl Reaper {
    pub(super) fn new(reap_orphans: bool) -> Reaper {
        Reaper {
            unreaped: HashSet::new(),
            launchers: HashSet::new(),
            on_sigchld: reap_orphans,
            on_exit: false,
            retry_at: None,
            live_groups: None,
        }
    }

    /// `pid` was spawned by us (a run, a probe, a daemon named by a pid file): ours
    /// to reap, never the orphan reaper's.
    pub(super) fn claim(&mut self, pid: i32) {
        self.unreaped.insert(pid);
    }

    /// `pid` is a `pid_file` run's launcher: claimed, and kept unreaped while its
    /// file is awaited.
    pub(super) fn claim_launcher(&mut self, pid: i32) {
        self.claim(pid);
        self.launchers.insert(pid);
    }

    /// `pid` is reaped (or about to be, by the caller): forgotten, so that it is never
    /// signalled or reaped again. Whether it was ours until now.
    pub(super) fn reaped(&mut self, pid: i32) -> bool {
        self.launchers.remove(&pid);
        self.unreaped.remove(&pid)
    }

    /// Whether `pid` is ours and not reaped yet: only then may it be signalled by pid.
    #[cfg(test)]
    fn is_unreaped(&self, pid: i32) -> bool {
        self.unreaped.contains(&pid)
    }

    pub(super) fn is_launcher(&self, pid: i32) -> bool {
        self.launchers.contains(&pid)
    }

    /// Every pid claimed and not reaped, in no order.
    pub(super) fn unreaped(&self) -> impl Iterator<Item = i32> + '_ {
        self.unreaped.iter().copied()
    }

    /// After an exec of ourselves: the pids the old image had not reaped, and the
    /// launchers among the runs it carried.
    pub(super) fn adopt(&mut self, unreaped: HashSet<i32>, launchers: HashSet<i32>) {
        self.unreaped = unreaped;
        self.launchers = launchers;
    }

    pub(super) fn reaps_orphans(&self) -> bool {
        self.on_sigchld
    }

    /// Orphans are reaped whenever a run of ours exits (subreaper since a reload).
    pub(super) fn reaps_on_exit(&self) -> bool {
        self.on_exit
    }

    /// A reload brought the first `pid_file` service: become a subreaper now, so that
    /// its daemon is reparented to us. (SIGCHLD was not registered at start-up: orphans
    /// are then reaped whenever a run of ours exits.)
    pub(super) fn become_subreaper(&mut self) {
        // SAFETY: prctl with these arguments has no memory preconditions.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
            self.on_sigchld = true;
            self.on_exit = true;
        } else {
            log::error!(
                "cannot become a subreaper for pid_file services: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Of `children`, those the orphan reaper may wait for: neither claimed nor a
    /// helper another thread waits for.
    fn orphans<'a>(
        &'a self,
        children: impl IntoIterator<Item = i32> + 'a,
        helpers: &'a BTreeSet<i32>,
    ) -> impl Iterator<Item = i32> + 'a {
        children
            .into_iter()
            .filter(move |p| !self.unreaped.contains(p) && !helpers.contains(p))
    }

    /// Reaps children that are not ours to wait for: orphans handed to us as PID 1 or
    /// subreaper. Managed pids (runs, exec probes, daemons named by pid files) and the
    /// helpers other threads wait for (the checks of a new binary) are skipped, so no
    /// waiter ever loses its status. Bound: one /proc/self/task/*/children read and one
    /// WNOHANG wait per child; never a wait for a helper's spawn.
    pub(super) fn reap_orphans(&mut self) {
        if !self.on_sigchld {
            return;
        }
        let pass = helper::excluding(|helpers| {
            for pid in self.orphans(procfs::children(), helpers) {
                let mut status = 0;
                // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
                unsafe {
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        });
        // A helper is being spawned: its child cannot be told from an orphan until it
        // is registered, so the pass comes again shortly (a deadline only while a
        // spawn is under way, never while idle).
        self.retry_at = match pass {
            Some(()) => None,
            None => Some(Instant::now() + ORPHANS_RETRY),
        };
    }

    /// When a held-back orphan pass is due.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub(super) fn retry(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.reap_orphans();
        }
    }

    /// A new loop iteration: process states may have changed since the last scan.
    pub(super) fn new_iteration(&mut self) {
        self.live_groups = None;
    }

    /// Whether group `pgid` has live members, from a /proc scan shared by every check
    /// of this loop iteration.
    pub(super) fn group_alive(&mut self, pgid: i32) -> bool {
        self.group_alive_in(pgid, || {
            procfs::all()
                .into_iter()
                .filter(|s| s.state != b'Z')
                .map(|s| s.pgrp)
                .collect()
        })
    }

    fn group_alive_in(&mut self, pgid: i32, scan: impl FnOnce() -> HashSet<i32>) -> bool {
        self.live_groups.get_or_insert_with(scan).contains(&pgid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_claimed_is_never_reaped_as_an_orphan() {
        let mut r = Reaper::new(true);
        r.claim(10); // a run
        r.claim_launcher(11); // a pid_file launcher, exited, awaited
        r.claim(12); // an exec probe
        let helpers = BTreeSet::from([13]); // a helper another thread waits for
        let orphans: Vec<i32> = r.orphans([10, 11, 12, 13, 14, 15], &helpers).collect();
        assert_eq!(orphans, [14, 15]);
    }

    #[test]
    fn a_reaped_pid_is_forgotten_and_not_signalled() {
        let mut r = Reaper::new(true);
        r.claim_launcher(20);
        assert!(r.is_unreaped(20) && r.is_launcher(20));
        assert!(r.reaped(20));
        assert!(!r.is_unreaped(20), "a reaped pid may not be signalled");
        assert!(!r.is_launcher(20), "nor signalled as a launcher's lineage");
        // A second exit of the same pid (a stale waiter) reaps nothing.
        assert!(!r.reaped(20));
        // Once reaped, its number is anyone's: the orphan reaper may take it.
        let none = BTreeSet::new();
        assert_eq!(r.orphans([20], &none).collect::<Vec<_>>(), [20]);
    }

    #[test]
    fn live_groups_are_scanned_once_per_iteration() {
        let mut r = Reaper::new(false);
        let mut scans = 0;
        let mut scan = |groups: &[i32]| {
            scans += 1;
            groups.iter().copied().collect::<HashSet<i32>>()
        };
        assert!(r.group_alive_in(7, || scan(&[7])));
        assert!(r.group_alive_in(7, || scan(&[])));
        assert!(!r.group_alive_in(8, || scan(&[8])));
        r.new_iteration();
        assert!(r.group_alive_in(8, || scan(&[8])));
        assert_eq!(scans, 2);
    }

    #[test]
    fn adoption_replaces_what_is_ours() {
        let mut r = Reaper::new(false);
        r.claim(1);
        r.adopt(HashSet::from([30, 31]), HashSet::from([31]));
        assert!(!r.is_unreaped(1));
        assert!(r.is_unreaped(30) && r.is_launcher(31) && !r.is_launcher(30));
        let mut all: Vec<i32> = r.unreaped().collect();
        all.sort_unstable();
        assert_eq!(all, [30, 31]);
    }

    #[test]
    fn no_orphan_pass_unless_reaping_orphans() {
        let mut r = Reaper::new(false);
        assert!(!r.reaps_orphans() && !r.reaps_on_exit());
        r.reap_orphans();
        assert_eq!(r.retry_at(), None);
    }
}
