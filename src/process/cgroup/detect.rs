//! Finding where service cgroups can go, once at start-up: the mounted hierarchies
//! (/proc/self/mountinfo), the orchestrator's own cgroup on each (/proc/self/cgroup),
//! which of them this process can write to, and on v2 the controllers its children may
//! use. The result is a `Cgroups`; nothing else here is kept.

use super::*;

/// A mounted hierarchy as /proc/self/mountinfo describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    pub(super) point: PathBuf,
    pub(super) version: Version,
    /// v1: the controllers bound to it (and `name=...`).
    pub(super) options: Vec<String>,
}

pub(super) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _source, superopts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let version = match fstype {
            Some("cgroup2") => Version::V2,
            Some("cgroup") => Version::V1,
            _ => continue,
        };
        out.push(Mount {
            point: PathBuf::from(unescape_mount(point)),
            version,
            options: superopts.split(',').map(String::from).collect(),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub(super) fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Our own cgroup path: the v2 one (`0::/path`) and each v1 controller's.
pub(super) fn parse_self_cgroup(text: &str) -> (Option<String>, BTreeMap<String, String>) {
    let mut v2 = None;
    let mut v1 = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else {
            for c in ctrls.split(',') {
                v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    (v2, v1)
}

/// A stable id for this instance's cgroups: FNV-1a of the control socket path.
pub fn instance_id(socket: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("orchestrator-{h:016x}")
}

pub(super) fn join_cgroup_path(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/'))
}

/// True if we may create `base` (or it exists): its parent is a cgroup we can write to.
/// Nothing is created here; `prepare` creates directories when a service needs them.
pub(super) fn usable(base: &Path) -> bool {
    let Some(parent) = base.parent() else {
        return false;
    };
    if !parent.join("cgroup.procs").exists() {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

impl Cgroups {
    /// Looks at the mounted hierarchies and keeps those we can write to. On cgroup v2
    /// this sets up the base cgroup and enables the controllers services will use.
    pub fn detect(socket: &Path) -> Cgroups {
        Cgroups::look(socket, true)
    }

    /// `detect` without touching cgroupfs (for `check`): v2 controllers are reported as
    /// the parent offers them, which is what `detect` would try to enable.
    pub fn inspect(socket: &Path) -> Cgroups {
        Cgroups::look(socket, false)
    }

    fn look(socket: &Path, set_up: bool) -> Cgroups {
        let (Ok(mountinfo), Ok(own)) = (
            fs::read_to_string("/proc/self/mountinfo"),
            fs::read_to_string("/proc/self/cgroup"),
        ) else {
            return Cgroups::default();
        };
        let mounts = parse_mountinfo(&mountinfo);
        Cgroups::from_system(&mounts, &own, &instance_id(socket), set_up)
    }

    pub(super) fn from_system(mounts: &[Mount], own: &str, id: &str, set_up: bool) -> Cgroups {
        let (own_v2, own_v1) = parse_self_cgroup(own);
        let mut cg = Cgroups::default();
        let v2 = mounts
            .iter()
            .find(|m| m.version == Version::V2)
            .and_then(|m| {
                let parent = join_cgroup_path(&m.point, own_v2.as_deref()?);
                let h = Hierarchy {
                    version: Version::V2,
                    base: parent.join(id),
                };
                usable(&h.base).then_some((h, parent))
            });
        if let Some((h, parent)) = &v2 {
            cg.tracker = Some(h.clone());
            cg.tracker_proc = own_v2.as_deref().map(|own| proc_key(None, own, id));
            let enabled = if set_up {
                enable_v2_controllers(parent, &h.base)
            } else {
                offered_v2_controllers(parent)
            };
            for c in enabled {
                match c {
                    "memory" => cg.memory = Some(h.clone()),
                    "cpu" => cg.cpu = Some(h.clone()),
                    "pids" => cg.pids = Some(h.clone()),
                    "io" => cg.io = weight_file(h).map(|f| (h.clone(), f)),
                    _ => {}
                }
            }
        }
        let v1 = |controller: &str| -> Option<Hierarchy> {
            let m = mounts
                .iter()
                .find(|m| m.version == Version::V1 && m.options.iter().any(|o| o == controller))?;
            let own = own_v1.get(controller)?;
            let h = Hierarchy {
                version: Version::V1,
                base: join_cgroup_path(&m.point, own).join(id),
            };
            usable(&h.base).then_some(h)
        };
        if cg.memory.is_none() {
            cg.memory = v1("memory");
        }
        if cg.cpu.is_none() {
            cg.cpu = v1("cpu");
        }
        if cg.pids.is_none() {
            cg.pids = v1("pids");
        }
        if cg.io.is_none() {
            cg.io = v1("blkio").and_then(|h| weight_file(&h).map(|f| (h, f)));
        }
        if cg.tracker.is_none() {
            // The first of these we can use (pids and memory as found above).
            for c in ["pids", "name=systemd", "memory", "freezer"] {
                if let (Some(h), Some(own)) = (v1(c), own_v1.get(c)) {
                    cg.tracker = Some(h);
                    cg.tracker_proc = Some(proc_key(Some(c), own, id));
                    break;
                }
            }
        }
        cg
    }
}

/// Which of memory, cpu and pids `parent` offers its children.
pub(super) fn offered_v2_controllers(parent: &Path) -> Vec<&'static str> {
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect()
}

/// Enables memory, cpu and pids for the children of `parent` and `base`, as far as the
/// kernel lets us; returns the controllers usable in service cgroups.
pub(super) fn enable_v2_controllers(parent: &Path, base: &Path) -> Vec<&'static str> {
    let offered = offered_v2_controllers(parent);
    let mut usable = Vec::new();
    if offered.is_empty() || fs::create_dir_all(base).is_err() {
        return usable;
    }
    for c in offered {
        let on = |dir: &Path| {
            fs::read_to_string(dir.join("cgroup.subtree_control"))
                .is_ok_and(|s| s.split_whitespace().any(|a| a == c))
                || fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.subtree_control"))
                    .and_then(|mut f| f.write_all(format!("+{c}").as_bytes()))
                    .is_ok()
        };
        if on(parent) && on(base) {
            usable.push(c);
        }
    }
    usable
}
