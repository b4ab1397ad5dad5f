//! What the chaos run sees of processes: one /proc scan that says, for every live
//! process, which service it belongs to (its cgroup under the daemon's, or its command
//! line naming a service's program), its group, its parent and whether it is a zombie.
//! It reads only; it never signals.

use std::path::Path;

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub zombie: bool,
    /// The service it belongs to, if any.
    pub owner: Option<String>,
    /// `/bin/sh PROGRAM` with no `child` argument: a service's main script (or a fork
    /// of it that has not exec'd yet), not one of the children it starts.
    pub main_mode: bool,
    pub start_time: u64,
}

/// Every process on the box, attributed to the sandbox's services. `progs` is the
/// directory holding the services' programs, `cgroup_id` the daemon's cgroup name.
pub fn scan(progs: &Path, cgroup_id: &str) -> Vec<Proc> {
    let prefix = format!("{}/", progs.display());
    let cg_marker = format!("/{cgroup_id}/");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if f.len() < 20 {
            continue;
        }
        let zombie = f[0] == "Z";
        let ppid = f[1].parse().unwrap_or(0);
        let pgid = f[2].parse().unwrap_or(0);
        let start_time = f[19].parse().unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let by_cmdline = args
            .iter()
            .take(2)
            .find_map(|a| a.strip_prefix(&prefix).map(String::from));
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let by_cgroup = cgroup.lines().find_map(|l| {
            let rest = &l[l.find(&cg_marker)? + cg_marker.len()..];
            Some(rest.split('/').next().unwrap_or(rest).to_string())
        });
        let main_mode = by_cmdline.is_some()
            && args.first().is_some_and(|a| a == "/bin/sh")
            && args.get(2).is_none_or(|a| a != "child");
        out.push(Proc {
            pid,
            ppid,
            pgid,
            zombie,
            owner: by_cgroup.or(by_cmdline),
            main_mode,
            start_time,
        });
    }
    out
}

/// Whether `pid` runs `/bin/sh PROGRAM` (the configured program of its service).
/// None when it is gone or a zombie (it just exited; its status is about to change).
pub fn runs_program(pid: i64, program: &Path) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 2..].split_whitespace().next()?;
    if state == "Z" {
        return None;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    Some(
        args.get(1)
            .is_some_and(|a| *a == program.as_os_str().as_encoded_bytes()),
    )
}

/// Open descriptors and threads of `pid`.
pub fn fds_and_threads(pid: i32) -> (usize, usize) {
    let count = |d: String| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}
