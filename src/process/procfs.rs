//! Reading /proc: who is in a process group, which processes are our children, and what
//! a group costs in memory and CPU. Read-only; never signals or reaps anything.

use std::collections::HashMap;
use std::fs;

/// Fields of /proc/PID/stat that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub utime: u64,
    pub stime: u64,
    pub rss_pages: u64,
    /// When the process started, in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

/// Parses a /proc/PID/stat line. The command name may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 2..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        pid,
        state: *rest.first()?.as_bytes().first()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        utime: rest.get(11)?.parse().ok()?,
        stime: rest.get(12)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the box, as far as /proc lets us read it.
pub fn all() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Our direct children (from /proc/self/task/*/children, else a scan of /proc).
pub fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let mut found_file = false;
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                found_file = true;
                out.extend(
                    s.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !found_file {
        out = all()
            .into_iter()
            .filter(|s| s.ppid == me)
            .map(|s| s.pid)
            .collect();
    }
    out
}

/// Resident memory and CPU time of a process group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

impl Usage {
    /// Adds one process's resident memory and CPU time.
    fn add(&mut self, s: &Stat) {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        // SAFETY: as above.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.rss_bytes += s.rss_pages * page;
        self.cpu_seconds += (s.utime + s.stime) as f64 / ticks;
    }
}

/// Usage summed by process group, for every group in `pgids`, from one scan of /proc.
pub fn usage_by_group(pgids: &[i32]) -> HashMap<i32, Usage> {
    let mut map: HashMap<i32, Usage> = HashMap::new();
    if pgids.is_empty() {
        return map;
    }
    for s in all() {
        if pgids.contains(&s.pgrp) {
            map.entry(s.pgrp).or_default().add(&s);
        }
    }
    map
}

/// Usage summed over `pids` (a service's cgroup members).
pub fn usage_of(pids: &[i32]) -> Usage {
    let mut u = Usage::default();
    for s in pids.iter().filter_map(|p| stat(*p)) {
        u.add(&s);
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.utime, 7);
        assert_eq!(s.stime, 3);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn reads_self() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.rss_pages > 0);
    }
}
