//! `pid_file` (docs/lifecycle.md), for a service that daemonizes itself: reading the file
//! its launcher wrote, and deciding whether the pid in it is a live process of that
//! service. The file is the service's (in a directory it may own): it is opened as a
//! regular file only, never through a symlink at its last component, without blocking,
//! and only its first line is read; the pid is believed only if the process is in the
//! service's cgroup, or (without cgroups) descends from the run's launcher and is no
//! other service's (`Lineage`).

use crate::process::{procfs, safe_fs};
use std::io::Read;
use std::path::Path;

/// How much of the file is read: the pid is its first line (as systemd's `PIDFile=`
/// reads it); what follows, PostgreSQL's `postmaster.pid` has a data directory, a port,
/// a socket directory and more there, is no concern of ours.
const FIRST_LINE_MAX: u64 = 64;

/// The first line of `head`, without surrounding blanks.
fn first_line(head: &[u8]) -> String {
    let end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end]).trim().to_string()
}

/// Whose process the pid must be.
pub enum Owner<'a> {
    /// The service's cgroup members.
    Cgroup(&'a [i32]),
    /// Without a cgroup: what descends from this run's launcher.
    Lineage(Lineage<'a>),
}

/// Without cgroups, a process of this run is one in the launcher's session or process
/// group (each run starts in its own session, whose id is the launcher's pid), or an
/// orphan reparented to us (the daemon that left the session, its parent gone) that
/// started no earlier than the launcher; and never a process of another service. The
/// same set is what a stop signals and waits for while the pid file is awaited.
pub struct Lineage<'a> {
    /// This run's launcher, kept unreaped so that its pid is not reused meanwhile.
    launcher: i32,
    /// When the launcher started (clock ticks since boot); `None` if it is gone.
    since: Option<u64>,
    /// What is another service's: its runs' and launchers' pids, the sessions and
    /// groups of their processes, the members of their cgroups, and our other
    /// children (checks, helpers). A process whose pid, group or session is one of
    /// these is never this run's.
    others: &'a [i32],
    /// When the other services' launchers without a cgroup started: an orphan that
    /// started after one of them too may be its daemon as well as ours.
    rivals: Vec<u64>,
}

impl<'a> Lineage<'a> {
    pub fn new(launcher: i32, others: &'a [i32]) -> Lineage<'a> {
        let since = procfs::stat(launcher).map(|l| l.start_ticks);
        Lineage {
            launcher,
            since,
            others,
            rivals: Vec::new(),
        }
    }

    /// For a stop: `launchers`, the other services' launchers without a cgroup. An
    /// orphan that started after one of them as well as after ours cannot be told
    /// apart, and is left alone (a stop never reaches another service's process).
    pub fn without_rivals(mut self, launchers: &[i32]) -> Self {
        self.rivals = launchers
            .iter()
            .filter_map(|l| procfs::stat(*l))
            .map(|l| l.start_ticks)
            .collect();
        self
    }

    pub fn owns(&self, p: &procfs::Stat) -> bool {
        let other = |id: i32| self.others.contains(&id);
        if p.pid <= 1 || other(p.pid) || other(p.pgrp) || other(p.session) {
            return false;
        }
        if p.session == self.launcher || p.pgrp == self.launcher {
            return true;
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        p.ppid == me && self.since.is_some_and(|t| p.start_ticks >= t)
    }

    /// The live processes of this run, from one scan of /proc.
    pub fn members(&self) -> Vec<i32> {
        let rival = |p: &procfs::Stat| {
            p.session != self.launcher
                && p.pgrp != self.launcher
                && self.rivals.iter().any(|t| p.start_ticks >= *t)
        };
        procfs::all()
            .into_iter()
            .filter(|p| p.state != b'Z' && self.owns(p) && !rival(p))
            .map(|p| p.pid)
            .collect()
    }
}

/// The pid `path` names, if it is a live process of the service, with when it started
/// (clock ticks since boot: a pidfd opened later is that process's if the pid still
/// started then).
pub fn main_process(path: &Path, owner: Owner) -> Result<(i32, u64), String> {
    let shown = path.display();
    let (mut f, _) =
        safe_fs::open_regular(path, false).map_err(|e| format!("pid file {shown}: {e}"))?;
    let mut head = Vec::new();
    (&mut f)
        .take(FIRST_LINE_MAX)
        .read_to_end(&mut head)
        .map_err(|e| format!("pid file {shown}: {e}"))?;
    let line = first_line(&head);
    let pid: i32 = line
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("pid file {shown} holds no pid: {line:?}"))?;
    let alive = procfs::stat(pid).filter(|s| s.state != b'Z');
    let Some(stat) = alive else {
        return Err(format!("pid file {shown} is stale: no process {pid}"));
    };
    let ours = match owner {
        Owner::Cgroup(members) => members.contains(&pid),
        Owner::Lineage(lineage) => lineage.owns(&stat),
    };
    if !ours {
        return Err(format!(
            "pid file {shown} names process {pid}, which is not the service's"
        ));
    }
    Ok((pid, stat.start_ticks))
}

#[cfg(test)]
mod tests {
    use super::{first_line, main_process, Owner};

    #[test]
    fn the_pid_is_the_first_line_and_the_rest_is_ignored() {
        assert_eq!(first_line(b"4242\n"), "4242");
        assert_eq!(first_line(b" 4242 "), "4242");
        let postmaster =
            b"4242\n/var/lib/postgresql/16/main\n1733550000\n5432\n/var/run/postgresql\n";
        assert_eq!(first_line(postmaster), "4242");
        assert_eq!(first_line(b"\n4242\n"), "");
        assert_eq!(first_line(b""), "");
    }

    #[test]
    fn a_postmaster_pid_file_names_its_first_line() {
        let me = std::process::id() as i32;
        let dir = std::env::temp_dir().join(format!("orch-pidfile-{me}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("postmaster.pid");
        // PostgreSQL's layout: the pid, then the data directory, start time, port,
        // socket directory, listen address, shared memory key and status.
        let postmaster = format!(
            "{me}\n/var/lib/postgresql/16/main\n1733550000\n5432\n/var/run/postgresql\n\
             *\n  5432001         0\nready   \n"
        );
        std::fs::write(&path, &postmaster).unwrap();
        assert_eq!(
            main_process(&path, Owner::Cgroup(&[me])).map(|(p, _)| p),
            Ok(me)
        );
        // The other half: the same file names no process of the service's.
        let e = main_process(&path, Owner::Cgroup(&[])).unwrap_err();
        assert!(
            e.contains(&format!("names process {me}, which is not")),
            "{e}"
        );
        // A pid on the second line only is no pid.
        std::fs::write(&path, format!("\n{postmaster}")).unwrap();
        let e = main_process(&path, Owner::Cgroup(&[me])).unwrap_err();
        assert!(e.contains("holds no pid: \"\""), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
