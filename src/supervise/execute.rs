//! Carrying out what a service's machine asked for: signals to a run's group (and the
//! members of its cgroup that left the group), group checks, reaping, removal, probes,
//! event records, and giving a finished service's cgroup back. The decisions were made
//! by the machine; this file only acts, each call bounded (a signal, a few cgroupfs
//! reads and writes, a /proc scan shared by every check of one loop iteration).

use super::janitor;
use super::machine::{self, Action};
use super::state::State;
use super::supervisor::Supervisor;
use crate::process::{helper, pidfile, procfs, spawn};
use std::sync::Arc;
use std::time::Instant;

impl Supervisor {
    pub(super) fn execute(&mut self, name: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Spawn => {
                    let event = if self.held.starting() {
                        self.clone_early(name)
                    } else {
                        self.spawn(name)
                    };
                    if let Some(result) = event {
                        self.queue(name, result);
                    }
                    self.held.spawned();
                }
                Action::Signal { pgid, sig } => self.signal(name, pgid, sig),
                Action::CheckGroup(pgid) => {
                    let event = if self.group_alive(name, pgid) {
                        machine::Event::GroupAlive
                    } else {
                        machine::Event::GroupEmpty
                    };
                    self.queue(name, event);
                }
                Action::Probe { gen } => self.start_probe(name, gen),
                Action::ReadPidFile { gen } => {
                    let event = self.read_pid_file(name, gen);
                    self.queue(name, event);
                }
                Action::Reap(pid) => {
                    self.reap(name, pid);
                    self.reaper.reaped(pid);
                    if let Some(n) = &self.notify {
                        n.forget(pid);
                    }
                    self.mark_state_dirty();
                }
                Action::Remove => {
                    if let Some(e) = self.services.remove(name) {
                        self.retire_cgroup(name, e.cgroup_dirs);
                    }
                }
                Action::Log {
                    level,
                    event,
                    pid,
                    msg,
                } => self.event(level, name, pid, event, msg),
            }
        }
        // A service that is done (stopped or failed, nothing pending) gives its cgroup
        // back, whichever path brought it there.
        if let Some(e) = self.services.get_mut(name) {
            if !e.cgroup_dirs.is_empty()
                && !e.svc.is_active()
                && matches!(e.svc.state(), State::Stopped | State::Failed)
            {
                let dirs = std::mem::take(&mut e.cgroup_dirs);
                self.retire_cgroup(name, dirs);
            }
        }
    }

    /// `sig` to the group, and to members of the cgroup that left the group
    /// (setsid, double fork); without a cgroup, to a launcher's lineage.
    pub(super) fn signal(&mut self, name: &str, pgid: i32, sig: i32) {
        match self.daemon_pidfd(name, pgid) {
            Some(fd) => spawn::signal_pidfd(&fd, pgid, sig),
            None => spawn::signal_group(pgid, sig),
        }
        self.kill_probe(name);
        let members = match self.lineage(name, pgid) {
            Some(lineage) => lineage,
            None if sig == libc::SIGKILL => {
                self.cgroups.kill(name);
                return;
            }
            None => self.cgroups.members(name),
        };
        for pid in members {
            if procfs::stat(pid).is_some_and(|s| s.pgrp != pgid) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// The pidfd of `name`'s daemon if `pid` is it.
    fn daemon_pidfd(&self, name: &str, pid: i32) -> Option<Arc<std::os::fd::OwnedFd>> {
        let (daemon, fd) = self.services.get(name)?.daemon.as_ref()?;
        (*daemon == pid).then(|| fd.clone())
    }

    /// Reaps `pid`, which its waiter saw exit: a daemon named by a pid file through its
    /// pidfd (never waiting: it may not be our child, and its pid may be another's by
    /// now), anything else by pid.
    pub(super) fn reap(&mut self, name: &str, pid: i32) {
        match self.daemon_pidfd(name, pid) {
            Some(fd) => {
                spawn::reap_pidfd(&fd);
                if let Some(e) = self.services.get_mut(name) {
                    e.daemon = None;
                }
            }
            None => spawn::reap(pid),
        }
    }

    /// Without a cgroup, what descends from `pgid` if it is a `pid_file` launcher: its
    /// daemon may have left its session and group (setsid) and been reparented to us,
    /// so the group alone would miss it. One /proc scan.
    fn lineage(&self, name: &str, pgid: i32) -> Option<Vec<i32>> {
        let e = self.services.get(name)?;
        if !e.cgroup_dirs.is_empty() || !self.reaper.is_launcher(pgid) {
            return None;
        }
        let others = self.others_than(name, pgid);
        let rivals: Vec<i32> = self
            .services
            .values()
            .filter(|o| *o.name != *name && o.cgroup_dirs.is_empty())
            .filter_map(|o| o.svc.launcher())
            .collect();
        let lineage = pidfile::Lineage::new(pgid, &others).without_rivals(&rivals);
        Some(lineage.members())
    }

    /// What a `pid_file` run of `name` (launched as `launcher`) must never take for its
    /// own: every other service's run and launcher, with the session and group of its
    /// main process and its cgroup's members, and our other children (checks, the
    /// helpers of `upgrade-self`). Bound: a /proc read per service, a cgroupfs read per
    /// service with a cgroup.
    pub(super) fn others_than(&self, name: &str, launcher: i32) -> Vec<i32> {
        let mut others: Vec<i32> = self.reaper.unreaped().filter(|p| *p != launcher).collect();
        for o in self.services.values().filter(|o| *o.name != *name) {
            if let Some(pid) = o.svc.pid().or(o.svc.awaited_launcher()) {
                others.push(pid);
                if let Some(s) = procfs::stat(pid) {
                    others.extend([s.pgrp, s.session]);
                }
            }
            if !o.cgroup_dirs.is_empty() {
                others.extend(self.cgroups.members(&o.name));
            }
        }
        others.extend(helper::pids());
        // Never this run's own session and group (a process of another service in
        // them would be odd, and must not hide the run from its own stop).
        others.retain(|p| *p > 1 && *p != launcher);
        others
    }

    /// Whether anything of a stopping service is left: its cgroup's members where it has
    /// one (a superset of its process group), without one what descends from a
    /// `pid_file` launcher, else the live members of its group, from a /proc scan
    /// shared by every check of this loop iteration.
    fn group_alive(&mut self, name: &str, pgid: i32) -> bool {
        if self
            .services
            .get(name)
            .is_some_and(|e| !e.cgroup_dirs.is_empty())
        {
            return !self.cgroups.members(name).is_empty();
        }
        if let Some(lineage) = self.lineage(name, pgid) {
            return !lineage.is_empty();
        }
        self.reaper.group_alive(pgid)
    }

    /// Removes a done service's cgroups: rmdir is one syscall each; a cgroup that still
    /// has members is killed and its removal left to the janitor, never waited for here.
    pub(super) fn retire_cgroup(&mut self, name: &str, dirs: Vec<std::path::PathBuf>) {
        let busy = self.cgroups.try_remove(&dirs);
        if !busy.is_empty() {
            self.cgroups.kill(name);
            self.janitor.keep(name, busy, Instant::now());
        }
    }

    /// At exit: the cgroups still busy (a run's members were killed and have not all
    /// finished exiting, e.g. after a stop that ended in SIGKILL) are waited for, a
    /// moment each (`Cgroups::remove`: at most 2 s), so that none is left behind.
    pub(super) fn remove_busy_cgroups_now(&mut self) {
        for b in self.janitor.drain() {
            self.cgroups.remove(&b.service, &b.dirs);
        }
    }

    pub(super) fn retry_busy_cgroups(&mut self, now: Instant) {
        let services = &self.services;
        // A service started again meanwhile uses its cgroup again.
        let reused = |name: &str| {
            services
                .get(name)
                .is_some_and(|e| !e.cgroup_dirs.is_empty())
        };
        let cgroups = &self.cgroups;
        for name in self
            .janitor
            .retry(now, reused, |dirs| cgroups.try_remove(dirs))
        {
            log::warn!(
                "{name}: cgroup still has members after {} ms; left in place",
                janitor::RETRY.as_millis() * u128::from(janitor::TRIES)
            );
        }
    }
}
