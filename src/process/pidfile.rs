//! `pid_file` (SPEC 4), for a service that daemonizes itself: reading the file its
//! launcher wrote, and deciding whether the pid in it is a live process of that
//! service. The file is the service's (in a directory it may own): it is opened as a
//! regular file only, never through a symlink at its last component, without blocking,
//! and at most a few bytes are read; the pid is believed only if the process is in the
//! service's cgroup, or (without cgroups) is our own child: the daemon is reparented to
//! us as subreaper once its launcher has exited.

use crate::process::{procfs, safe_fs};
use std::io::Read;
use std::path::Path;

/// The pid `path` names, if it is a live process of the service: `members` are the
/// service's cgroup members (`None` without a cgroup).
pub fn main_process(path: &Path, members: Option<&[i32]>) -> Result<i32, String> {
    let shown = path.display();
    let (mut f, _) =
        safe_fs::open_regular(path, false).map_err(|e| format!("pid file {shown}: {e}"))?;
    let mut text = String::new();
    (&mut f)
        .take(32)
        .read_to_string(&mut text)
        .map_err(|e| format!("pid file {shown}: {e}"))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("pid file {shown} holds no pid: {:?}", text.trim()))?;
    let alive = procfs::stat(pid).filter(|s| s.state != b'Z');
    let Some(stat) = alive else {
        return Err(format!("pid file {shown} is stale: no process {pid}"));
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let ours = match members {
        Some(m) => m.contains(&pid),
        None => stat.ppid == me,
    };
    if !ours {
        return Err(format!(
            "pid file {shown} names process {pid}, which is not the service's"
        ));
    }
    Ok(pid)
}
