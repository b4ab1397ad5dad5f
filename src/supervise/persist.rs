//! `state_dir` (docs/unattended.md, and the crash clean-up): what must outlive the
//! orchestrator process. One file, `state.json`, holds each service's restart count and
//! run history and, for every live run, its process group and the start time of the
//! group's leader.
//!
//! It is written whole (temporary file, fsync, rename, fsync of the directory), so a
//! crash or a power cut leaves the old file or the new one, never half of one; at most
//! once a second, so a restart storm does not wear out a flash disk; and by the log
//! writer thread (which does the daemon's file I/O), so a slow fsync never holds up the
//! main loop. A successor started after a crash first kills the recorded groups that
//! are still the ones it recorded (same boot, and the pid numbers not reused since),
//! then carries the counts and the history on.
//!
//! The file decides what root kills, so it is trusted no further than its directory:
//! `state_dir` and every directory above it must pass StrictModes (`safe_fs`), every
//! file in it is reached through the directory's descriptor and never through a
//! symlink (`state.json.tmp` is created afresh with `O_EXCL`), and even then a recorded
//! group is only killed process by process, each one proven ours: still in the recorded
//! group, started no earlier than its leader, and carrying the environment this
//! daemon gives the service (`ours`). A forged file naming some other group, even
//! with its leader's true start time, kills nothing: nobody outside our services runs
//! with exactly that environment.

use crate::common::safe_fs::{self, Dir};
use crate::process::procfs;
use crate::supervise::state::HistoryEntry;
use serde_json::Value;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// The shortest time between two writes of the file.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);
const FILE: &str = "state.json";
/// A state file is at most this large; anything bigger is not one of ours.
const MAX_FILE: u64 = 4 << 20;

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
    dir: Dir,
    boot_id: String,
}

impl StateDir {
    /// Creates the directory (0700) if needed, and refuses one that fails StrictModes:
    /// whoever can write `state.json` chooses what root kills at start-up.
    pub fn open(dir: &Path) -> Result<StateDir, String> {
        let d = Dir::create(dir, 0o700).map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
        if let Some(u) = safe_fs::untrusted(dir) {
            return Err(format!("state_dir refused: {u} ({})", safe_fs::RULE));
        }
        Ok(StateDir {
            dir: d,
            boot_id: boot_id(),
        })
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What a predecessor saved. A file that cannot be read or parsed is reported and
    /// set aside as `state.json.bad` (so it is neither lost nor tried again).
    pub fn load(&self) -> Option<Saved> {
        let path = self.path().join(FILE);
        let text = match self.dir.read(FILE, MAX_FILE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => Err(e.to_string()),
            Ok(t) => String::from_utf8(t).map_err(|e| e.to_string()),
        };
        let parsed = text.and_then(|t| {
            let v = serde_json::from_str::<Value>(&t).map_err(|e| e.to_string())?;
            from_json(&v).ok_or_else(|| "not a state file".to_string())
        });
        let bad = format!("{FILE}.bad");
        parsed
            .map_err(|e| {
                log::warn!(
                    "{}: {e}; starting without saved state (the file is kept as {bad})",
                    path.display(),
                );
                let _ = self.dir.rename(FILE, &bad);
            })
            .ok()
    }

    /// `save`, with a failure logged.
    pub fn save_logged(&self, saved: &Saved) {
        if let Err(e) = self.save(saved) {
            log::error!(
                "state_dir {}: cannot write {FILE}: {e}",
                self.path().display()
            );
        }
    }

    /// Writes `saved` whole: a fresh temporary file (never through a symlink), fsync,
    /// rename, fsync of the directory.
    pub fn save(&self, saved: &Saved) -> io::Result<()> {
        self.write_file(FILE, &to_text(saved))
    }

    /// Writes `name` whole, as `save` does (other records than the state file: the
    /// version history and upgrades under way).
    pub fn write_file(&self, name: &str, text: &str) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        let mut f = self.dir.create_new(&tmp, 0o600)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        self.dir.rename(&tmp, name)?;
        self.dir.sync()
    }

    /// `name`'s text, if it is a readable regular file of at most `MAX_FILE` bytes.
    pub fn read_file(&self, name: &str) -> Option<String> {
        let bytes = self.dir.read(name, MAX_FILE).ok()?;
        String::from_utf8(bytes).ok()
    }

    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        self.dir.unlink(name).and_then(|()| self.dir.sync())
    }

    pub fn names(&self) -> Vec<String> {
        self.dir.names()
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
                "{sep}[{},{},{},{}]",
                h.started_ms,
                opt(h.exited_ms.map(|v| v.to_string())),
                opt(h.exit_code.map(|v| v.to_string())),
                opt(h.reason.as_deref().map(str_json))
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
                    // Written since reasons were kept: an older file has three fields.
                    reason: h.get(3).and_then(Value::as_str).map(str::to_string),
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
/// the recorded group is gone and a new one took the number); of these, only those for
/// which `ours(service, pid)` holds (see `carries_env`).
pub fn surviving_members(
    saved: &Saved,
    boot_id: &str,
    procs: &[procfs::Stat],
    ours: &dyn Fn(&str, i32) -> bool,
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
            .filter(|p| ours(name, p.pid))
            .map(|p| p.pid)
            .collect();
        if !members.is_empty() {
            out.push((name.clone(), g.pgid, members));
        }
    }
    out
}

/// True when process `pid` was started with every variable of `env` (what this daemon
/// gives the service: the fixed set of docs/lifecycle.md plus the service's `environment`).
/// /proc/PID/environ is the block the process was started with, which a local user
/// cannot give to a process they do not own; no process outside our services carries
/// this exact set.
pub fn carries_env(pid: i32, env: &[(String, String)]) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let vars: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    !env.is_empty()
        && env.iter().all(|(k, v)| {
            let want = format!("{k}={v}");
            vars.contains(&want.as_bytes())
        })
}

/// The environment the plan gives a service, by name.
pub type EnvOf<'a> = dyn Fn(&str) -> Option<Vec<(String, String)>> + 'a;

/// Sends SIGKILL to `pid` only if it is still the process that started at
/// `start_ticks` (through a pidfd, so a pid reused in between is never hit).
fn kill_exact(pid: i32, start_ticks: u64) -> bool {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return false;
    }
    let same = procfs::stat(pid).is_some_and(|s| s.start_ticks == start_ticks);
    let sent = same
        // SAFETY: fd is the pidfd opened above; no siginfo is passed.
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(fd) };
    sent
}

/// Kills what is left of the recorded groups (see `surviving_members`), process by
/// process; `env_of(service)` is the environment this daemon's plan gives it (`None`:
/// no longer a service, so nothing can be proven ours). Twice, for children forked in
/// between. Returns how many processes were killed.
pub fn kill_survivors(saved: &Saved, boot_id: &str, env_of: &EnvOf) -> usize {
    let ours = |name: &str, pid: i32| env_of(name).is_some_and(|env| carries_env(pid, &env));
    let mut killed = 0;
    for _ in 0..2 {
        let procs = procfs::all();
        let found = surviving_members(saved, boot_id, &procs, &ours);
        if found.is_empty() {
            break;
        }
        for (name, pgid, members) in found {
            log::warn!(
                "{name}: killing process group {pgid} left by a previous instance ({} processes)",
                members.len()
            );
            for pid in members {
                let ticks = procs.iter().find(|p| p.pid == pid).map(|p| p.start_ticks);
                if ticks.is_some_and(|t| kill_exact(pid, t)) {
                    killed += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
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
            session: pgrp,
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
        let all = |_: &str, _: i32| true;
        let got = surviving_members(&s, "b1", &procs, &all);
        assert_eq!(
            got,
            vec![
                ("a".to_string(), 100, vec![100, 101]),
                ("c".to_string(), 300, vec![301]),
            ]
        );
        assert!(
            surviving_members(&s, "b2", &procs, &all).is_empty(),
            "rebooted"
        );
        assert!(surviving_members(&s, "", &procs, &all).is_empty());
        // Members not proven ours are left alone.
        let only_101 = |_: &str, pid: i32| pid == 101;
        assert_eq!(
            surviving_members(&s, "b1", &procs, &only_101),
            vec![("a".to_string(), 100, vec![101])]
        );
    }

    #[test]
    fn a_member_older_than_the_leader_is_not_one_of_ours() {
        let procs = [proc(301, 300, 100)];
        let s = saved("b", &[("c", 300, 650)]);
        assert!(surviving_members(&s, "b", &procs, &|_, _| true).is_empty());
    }

    fn test_dir(tag: &str) -> std::path::PathBuf {
        // Not under /tmp, which StrictModes refuses.
        crate::common::safe_fs::trusted_test_base()
            .join(format!("orch-state-{}-{tag}", std::process::id()))
    }

    #[test]
    fn a_forged_state_file_kills_no_unrelated_group() {
        use std::os::unix::process::CommandExt;
        // An unrelated process group (as root: an unrelated root process group), named
        // with its leader's true start time, as an attacker could read it from /proc.
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = victim.id() as i32;
        let forged = Saved {
            boot_id: boot_id(),
            services: vec![(
                "web".into(),
                SavedService {
                    group: Group::of(pid),
                    ..SavedService::default()
                },
            )],
        };
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("HOME".to_string(), "/".to_string()),
        ];
        let killed = kill_survivors(&forged, &boot_id(), &|_| Some(env.clone()));
        assert_eq!(killed, 0);
        assert!(
            victim.try_wait().unwrap().is_none(),
            "the victim still runs"
        );
        // With the environment the service really has, it is one of ours: killed.
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert_eq!(
            kill_survivors(&forged, &boot_id(), &|_| Some(env.clone())),
            1
        );
        assert!(victim.wait().is_ok());
    }

    #[test]
    fn refuses_a_directory_others_control_and_never_follows_tmp_links() {
        let dir = test_dir("links");
        let _ = fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).unwrap();
        let victim = test_dir("victim");
        fs::write(&victim, "root only\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("state.json.tmp")).unwrap();
        sd.save(&Saved::default()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root only\n");
        let _ = fs::remove_file(&victim);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open(&dir).err().unwrap();
        assert!(err.contains("writable by others"), "{err}");
        // Below the sticky /tmp: root's own directory passes, one of nobody's does not.
        let tmp = std::env::temp_dir().join(format!("orch-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        assert!(
            StateDir::open(&tmp).is_ok(),
            "root's own directory under /tmp"
        );
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&tmp, Some(65534), None).unwrap();
            let err = StateDir::open(&tmp).err().unwrap();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn saves_whole_and_reads_back() {
        let dir = test_dir("save");
        let _ = fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).unwrap();
        assert_eq!(sd.load(), None);
        let mut s = saved(sd.boot_id(), &[("a", 10, 20)]);
        s.services[0].1.restarts = 7;
        s.services[0].1.history = vec![
            HistoryEntry {
                started_ms: 1,
                exited_ms: Some(2),
                exit_code: Some(3),
                reason: Some("exited with code 3 \"quoted\"".into()),
            },
            HistoryEntry {
                started_ms: 4,
                exited_ms: None,
                exit_code: None,
                reason: None,
            },
        ];
        sd.save(&s).unwrap();
        assert_eq!(sd.load(), Some(s.clone()));
        // A file written before reasons were kept reads back with none.
        let old = format!(
            "{{\"boot_id\":\"{}\",\"services\":{{\"a\":{{\"restarts\":7,\"history\":[[1,2,3]],\"group\":null}}}}}}\n",
            sd.boot_id()
        );
        fs::write(dir.join(FILE), old).unwrap();
        let back = sd.load().expect("an older file is read");
        assert_eq!(back.services[0].1.history[0].reason, None);
        assert_eq!(back.services[0].1.history[0].exit_code, Some(3));
        fs::write(dir.join(FILE), "{not json").unwrap();
        assert_eq!(sd.load(), None);
        assert!(dir.join("state.json.bad").exists());
        assert!(!dir.join(FILE).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
