//! `private_tmp` and `read_only_paths` (docs/hardening.md): the mount plan, prepared in
//! the parent from /proc/self/mountinfo, and the child's steps that carry it out in the
//! service's own mount namespace. Only the child's copy of the mount table changes:
//! propagation is made private first, so nothing done here ever reaches the host. The
//! child makes raw mount(2) calls on prepared strings and allocates nothing.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// One mount the child makes read-only.
#[derive(Debug)]
struct ReadOnly {
    path: CString,
    /// Not a mount point yet: bind it onto itself first (recursively, so that what is
    /// mounted below it comes along and is remounted by the entries that follow).
    bind: bool,
    /// The mount's flags kept on the remount: in a user namespace the kernel refuses
    /// a remount that would clear nosuid, nodev, noexec or an atime flag.
    flags: libc::c_ulong,
}

/// What the child mounts, in order.
#[derive(Debug, Default)]
pub struct Plan {
    tmp: Vec<&'static std::ffi::CStr>,
    read_only: Vec<ReadOnly>,
}

/// The directories `private_tmp` covers, those that exist on this box.
pub fn tmp_dirs() -> Vec<&'static std::ffi::CStr> {
    [c"/tmp", c"/var/tmp"]
        .into_iter()
        .filter(|d| Path::new(d.to_str().unwrap_or("/")).is_dir())
        .collect()
}

/// A mount as mountinfo lists it: where, and its per-mount flags.
struct Mount {
    point: PathBuf,
    flags: libc::c_ulong,
}

fn mounts() -> Result<Vec<Mount>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

fn parse_line(line: &str) -> Option<Mount> {
    let mut f = line.split(' ');
    let point = f.nth(4)?;
    let options = f.next()?;
    let mut flags = 0;
    for o in options.split(',') {
        flags |= match o {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        };
    }
    let point = point
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\");
    Some(Mount {
        point: PathBuf::from(point),
        flags,
    })
}

/// The plan for `private_tmp` and `read_only_paths`. Each path must exist (a missing
/// one is an error: it could be created later, unprotected).
pub fn plan(private_tmp: bool, read_only: &[PathBuf]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    if private_tmp {
        plan.tmp = tmp_dirs();
    }
    if read_only.is_empty() {
        return Ok(plan);
    }
    let table = mounts()?;
    for p in read_only {
        let real = std::fs::canonicalize(p)
            .map_err(|e| format!("read_only_paths {}: {e}", p.display()))?;
        // The mount the path is on: the last listed of the longest matching prefix.
        let on = table
            .iter()
            .filter(|m| real.starts_with(&m.point))
            .max_by_key(|m| m.point.as_os_str().len())
            .ok_or_else(|| format!("read_only_paths {}: not on any mount", p.display()))?;
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("read_only_paths {}: contains a NUL byte", p.display()))
        };
        plan.read_only.push(ReadOnly {
            path: cstr(&real)?,
            bind: on.point != real,
            flags: on.flags,
        });
        for m in table
            .iter()
            .filter(|m| m.point != real && m.point.starts_with(&real))
        {
            plan.read_only.push(ReadOnly {
                path: cstr(&m.point)?,
                bind: false,
                flags: m.flags,
            });
        }
    }
    Ok(plan)
}

/// In the child, in its new mount namespace: private propagation, the tmpfs mounts,
/// then the read-only ones (after the tmpfs, so that `/tmp` listed read-only makes the
/// fresh one read-only).
///
/// # Safety
/// Raw mount(2) calls on the plan's strings only.
pub unsafe fn apply(plan: &Plan) -> bool {
    let none = std::ptr::null::<libc::c_char>();
    if libc::mount(
        none,
        c"/".as_ptr(),
        none,
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) < 0
    {
        return false;
    }
    for dir in &plan.tmp {
        if libc::mount(
            c"tmpfs".as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr().cast(),
        ) < 0
        {
            return false;
        }
    }
    for ro in &plan.read_only {
        if ro.bind
            && libc::mount(
                ro.path.as_ptr(),
                ro.path.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
        {
            return false;
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | ro.flags;
        if libc::mount(none, ro.path.as_ptr(), none, flags, std::ptr::null()) < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_and_flags() {
        let m = parse_line("36 35 98:0 / /mnt/a\\040b rw,nosuid,noatime master:1 - ext3 /dev/x rw")
            .unwrap();
        assert_eq!(m.point, PathBuf::from("/mnt/a b"));
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_NOATIME);
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let e = plan(false, &[PathBuf::from("/no/such/dir")]).unwrap_err();
        assert!(e.contains("/no/such/dir"), "{e}");
    }
}
