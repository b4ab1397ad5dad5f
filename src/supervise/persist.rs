//! `state_dir` (SPEC 11; issue 4's crash clean-up): what must outlive the orchestrator
//! process. One file, `state.json`, holds each service's restart count and run history
//! and, for every live run, its process group and the start time of the group's leader.
//!
//! It is written whole (temporary file, fsync, rename, fsync of the directory), so a
//! crash or a power cut leaves the old file or the new one, never half of one; at most
//! once a second, so a restart storm does not wear out a flash disk; and by the log
//! writer thread (which does the daemon's file I/O), so a slow fsync never holds up the
//! main loop. A successor started after a crash first kills the recorded groups that
//! are still the ones it recorded (same boot, and the pid numbers not reused since),
//! then carries the counts and the history on.

use crate::process::procfs;
use crate::supervise::state::HistoryEntry;
use serde_json::Value;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest time between two writes of the file.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);
const FILE: &str = "state.json";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    /// /proc/sys/kernel/random/boot_id when written: recorded groups mean nothing after
    /// a reboot.
    pub boot_id: String,
    /// By service name.
    pub services: Vec<(String, SavedService)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SavedService {
    pub restarts: u64,
    pub history: Vec<HistoryEntry>,
    /// The live run's process group, if there was one.
    pub group: Option<Group>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub pgid: i32,
    /// The leader's start time (field 22 of /proc/PID/stat, clock ticks since boot).
    pub start_ticks: u64,
}

impl Group {
    /// The group led by `pid`, as /proc shows it now.
    pub fn of(pid: i32) -> Option<Group> {
        procfs::stat(pid).map(|s| Group {
            pgid: pid,
            start_ticks: s.start_ticks,
        })
    }
}

pub struct StateDir {
    dir: PathBuf,
    boot_id: String,
}

impl StateDir {
    /// Creates the directory (0700) if needed.
    pub fn open(dir: &Path) -> Result<StateDir, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            boot_id: boot_id(),
        })
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// What a predecessor saved. A file that cannot be read or parsed is reported and
    /// set aside as `state.json.bad` (so it is neither lost nor tried again).
    pub fn load(&self) -> Option<Saved> {
        let path = self.dir.join(FILE);
        let text = match fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => Err(e.to_string()),
            Ok(t) => Ok(t),
        };
        let parsed = text.and_then(|t| {
            let v = serde_json::from_str::<Value>(&t).map_err(|e| e.to_string())?;
            from_json(&v).ok_or_else(|| "not a state file".to_string())
        });
        parsed
            .map_err(|e| {
                let bad = self.dir.join(format!("{FILE}.bad"));
                log::warn!(
                    "{}: {e}; starting without saved state (the file is kept as {})",
                    path.display(),
                    bad.display()
                );
                let _ = fs::rename(&path, &bad);
            })
            .ok()
    }

    /// `save`, with a failure logged.
    pub fn save_logged(&self, saved: &Saved) {
        if let Err(e) = self.save(saved) {
            log::error!("state_dir {}: cannot write {FILE}: {e}", self.dir.display());
        }
    }

    /// Writes `saved` whole: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, saved: &Saved) -> io::Result<()> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let text = to_text(saved);
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.dir.join(FILE))?;
        fs::File::open(&self.dir)?.sync_all()
    }
}

// The file is written by hand and read through serde_json::Value, which the binary has
// anyway: derived (de)serializers, or building a Value, would cost more code than this.
fn to_text(saved: &Saved) -> String {
    use std::fmt::Write as _;
    let str_json = |s: &str| Value::String(s.to_string()).to_string();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "null".to_string());
    let mut out = format!("{{\"boot_id\":{},\"services\":{{", str_json(&saved.boot_id));
    for (i, (name, s)) in saved.services.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}{}:{{\"restarts\":{},\"history\":[",
            str_json(name),
            s.restarts
        );
        for (j, h) in s.history.iter().enumerate() {
            let sep = if j == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}[{},{},{}]",
                h.started_ms,
                opt(h.exited_ms.map(|v| v.to_string())),
                opt(h.exit_code.map(|v| v.to_string()))
            );
        }
        let group = s
            .group
            .map(|g| format!("{{\"pgid\":{},\"start_ticks\":{}}}", g.pgid, g.start_ticks));
        let _ = write!(out, "],\"group\":{}}}", opt(group));
    }
    out.push_str("}}\n");
    out
}

fn from_json(v: &Value) -> Option<Saved> {
    let mut saved = Saved {
        boot_id: v.get("boot_id")?.as_str()?.to_string(),
        services: Vec::new(),
    };
    for (name, s) in v.get("services")?.as_object()? {
        let history = s
            .get("history")?
            .as_array()?
            .iter()
            .map(|h| {
                Some(HistoryEntry {
                    started_ms: h.get(0)?.as_u64()?,
                    exited_ms: h.get(1)?.as_u64(),
                    exit_code: h.get(2)?.as_i64().and_then(|c| i32::try_from(c).ok()),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let group = match s.get("group") {
            Some(Value::Null) | None => None,
            Some(g) => Some(Group {
                pgid: i32::try_from(g.get("pgid")?.as_i64()?).ok()?,
                start_ticks: g.get("start_ticks")?.as_u64()?,
            }),
        };
        let restarts = s.get("restarts")?.as_u64()?;
        saved.services.push((
            name.clone(),
            SavedService {
                restarts,
                history,
                group,
            },
        ));
    }
    Some(saved)
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The processes of each recorded group that are still that group: same boot, and the
/// group's leader either gone or the very process recorded (a pid number is not reused
/// while a group of that number has members, so a leader with another start time means
/// the recorded group is gone and a new one took the number).
pub fn surviving_members(
    saved: &Saved,
    boot_id: &str,
    procs: &[procfs::Stat],
) -> Vec<(String, i32, Vec<i32>)> {
    if saved.boot_id.is_empty() || saved.boot_id != boot_id {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (name, s) in &saved.services {
        let Some(g) = s.group else { continue };
        if g.pgid <= 1 {
            continue;
        }
        let leader = procs.iter().find(|p| p.pid == g.pgid);
        if leader.is_some_and(|l| l.start_ticks != g.start_ticks) {
            continue;
        }
        let members: Vec<i32> = procs
            .iter()
            .filter(|p| p.pgrp == g.pgid && p.state != b'Z' && p.start_ticks >= g.start_ticks)
            .map(|p| p.pid)
            .collect();
        if !members.is_empty() {
            out.push((name.clone(), g.pgid, members));
        }
    }
    out
}

/// Kills what is left of the recorded groups (see `surviving_members`). Returns how
/// many processes were killed.
pub fn kill_survivors(saved: &Saved, boot_id: &str) -> usize {
    let procs = procfs::all();
    let mut killed = 0;
    for (name, pgid, members) in surviving_members(saved, boot_id, &procs) {
        log::warn!(
            "{name}: killing process group {pgid} left by a previous instance ({} processes)",
            members.len()
        );
        // SAFETY: killpg has no memory preconditions; pgid > 1 was checked.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        killed += members.len();
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, pgrp: i32, start_ticks: u64) -> procfs::Stat {
        procfs::Stat {
            pid,
            state: b'S',
            ppid: 1,
            pgrp,
            utime: 0,
            stime: 0,
            rss_pages: 0,
            start_ticks,
        }
    }

    fn saved(boot: &str, groups: &[(&str, i32, u64)]) -> Saved {
        Saved {
            boot_id: boot.into(),
            services: groups
                .iter()
                .map(|(n, pgid, t)| {
                    (
                        n.to_string(),
                        SavedService {
                            group: Some(Group {
                                pgid: *pgid,
                                start_ticks: *t,
                            }),
                            ..SavedService::default()
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn only_the_recorded_groups_of_this_boot_are_survivors() {
        let procs = [
            proc(100, 100, 500), // recorded leader, alive
            proc(101, 100, 510), // its child, same group
            proc(200, 200, 900), // pid 200 reused by a new group leader
            proc(301, 300, 700), // group 300: leader gone, a member left
            proc(400, 400, 50),  // unrelated
        ];
        let s = saved("b1", &[("a", 100, 500), ("b", 200, 600), ("c", 300, 650)]);
        let got = surviving_members(&s, "b1", &procs);
        assert_eq!(
            got,
            vec![
                ("a".to_string(), 100, vec![100, 101]),
                ("c".to_string(), 300, vec![301]),
            ]
        );
        assert!(surviving_members(&s, "b2", &procs).is_empty(), "rebooted");
        assert!(surviving_members(&s, "", &procs).is_empty());
    }

    #[test]
    fn a_member_older_than_the_leader_is_not_one_of_ours() {
        let procs = [proc(301, 300, 100)];
        let s = saved("b", &[("c", 300, 650)]);
        assert!(surviving_members(&s, "b", &procs).is_empty());
    }

    #[test]
    fn saves_whole_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("orch-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).unwrap();
        assert_eq!(sd.load(), None);
        let mut s = saved(sd.boot_id(), &[("a", 10, 20)]);
        s.services[0].1.restarts = 7;
        s.services[0].1.history = vec![HistoryEntry {
            started_ms: 1,
            exited_ms: Some(2),
            exit_code: Some(3),
        }];
        sd.save(&s).unwrap();
        assert_eq!(sd.load(), Some(s));
        fs::write(dir.join(FILE), "{not json").unwrap();
        assert_eq!(sd.load(), None);
        assert!(dir.join("state.json.bad").exists());
        assert!(!dir.join(FILE).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
