//! What `check` and `status --json` say about each hardening key on this box: its
//! value and how it is applied, or why it cannot be (the start would then fail). Reads
//! /proc and asks the kernel harmless questions only; never applies anything.

use super::{caps, mounts, seccomp, Hardening};
use crate::config::discovery::ServiceSpec;
use crate::config::IoClass;
use crate::process::cgroup::Cgroups;

/// Every hardening key, in the config reference's order.
pub const KEYS: [&str; 12] = [
    "capabilities",
    "syscall_filter",
    "syscall_allow",
    "syscall_filter_action",
    "private_network",
    "private_tmp",
    "read_only_paths",
    "private_users",
    "nice",
    "io_class",
    "io_priority",
    "io_weight",
];

/// One key: its value, and how it is applied here (`None`: the key is off).
pub struct Line {
    pub key: &'static str,
    pub value: String,
    pub how: Option<String>,
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cannot(reason: impl std::fmt::Display) -> String {
    format!("cannot be applied: {reason}; the start fails")
}

/// A namespace of `kind` can be created for this service, or why not.
fn namespace(kind: &str, h: &Hardening) -> Result<(), String> {
    if !std::path::Path::new(&format!("/proc/self/ns/{kind}")).exists() {
        return Err(format!("this kernel has no {kind} namespaces"));
    }
    if kind == "user" {
        let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if max == Some(0) {
            return Err("user namespaces are disabled (user.max_user_namespaces = 0)".into());
        }
    } else if !h.private_users && !root() {
        return Err("creating it needs root (or private_users)".into());
    }
    Ok(())
}

fn ns_how(kind: &str, h: &Hardening, what: &str) -> String {
    match namespace(kind, h) {
        Ok(()) => what.to_string(),
        Err(e) => cannot(e),
    }
}

/// Every key of `spec`, for `check` (lines) and `status` (`hardening`).
pub fn lines(spec: &ServiceSpec, cgroups: &Cgroups) -> Vec<Line> {
    let h = &spec.process.hardening;
    let user = spec.process.identity.as_ref().filter(|id| id.uid != 0);
    let mut out = Vec::with_capacity(KEYS.len());
    let mut push = |key, value: String, how: Option<String>| out.push(Line { key, value, how });

    let cap_names = |c: &[u32]| -> String {
        let n: Vec<&str> = c.iter().map(|c| caps::NAMES[*c as usize]).collect();
        format!("[{}]", n.join(", "))
    };
    push(
        "capabilities",
        h.capabilities.as_deref().map_or("null".into(), cap_names),
        h.capabilities.as_ref().map(|keep| {
            let last = caps::last_cap();
            match keep.iter().find(|c| last.is_some_and(|l| **c > l)) {
                Some(c) => cannot(format!(
                    "{} is not known to this kernel",
                    caps::NAMES[*c as usize]
                )),
                None if !root() && !h.private_users => {
                    cannot("dropping capabilities needs root (or private_users)")
                }
                None if user.is_some() => "every other capability dropped from the bounding set; these kept as ambient capabilities across the switch to `user`".into(),
                None => "every other capability dropped from the bounding, permitted and inheritable sets".into(),
            }
        }),
    );
    let arch = seccomp::ARCH.map_or("?", |a| a.1);
    let list = |l: &Option<Vec<String>>| {
        l.as_ref()
            .map_or("null".into(), |f| format!("[{}]", f.join(", ")))
    };
    let how = |what: String| match seccomp::supported(h.filter_kill) {
        Err(e) => cannot(e),
        Ok(()) => what,
    };
    let denied = seccomp::resolve(h.syscall_filter.as_deref().unwrap_or_default());
    push(
        "syscall_filter",
        list(&h.syscall_filter),
        h.syscall_filter.as_ref().map(|_| match h.filter {
            Some(seccomp::Rule::Allow(_)) => how(format!(
                "{} system calls of {arch} removed from syscall_allow's",
                denied.count()
            )),
            _ => how(format!(
                "seccomp filter denying {} system calls of {arch}; other architectures' calls denied too",
                denied.count()
            )),
        }),
    );
    push(
        "syscall_allow",
        list(&h.syscall_allow),
        match h.filter {
            Some(seccomp::Rule::Allow(allowed)) => Some(how(format!(
                "seccomp filter allowing {} system calls of {arch} (@default included), denying every other (ENOSYS for calls newer than this build); other architectures' calls denied too",
                allowed.count()
            ))),
            _ => None,
        },
    );
    let filter = h.filter.as_ref();
    push(
        "syscall_filter_action",
        if h.filter_kill { "kill" } else { "errno" }.into(),
        filter.map(|_| {
            if h.filter_kill {
                "a denied call kills the process (SIGSYS)".into()
            } else {
                "a denied call fails with EPERM".into()
            }
        }),
    );
    push(
        "private_network",
        h.private_network.to_string(),
        h.private_network
            .then(|| ns_how("net", h, "new network namespace, only loopback (up)")),
    );
    push(
        "private_tmp",
        h.private_tmp.to_string(),
        h.private_tmp.then(|| {
            let tmp: Vec<String> = mounts::tmp_dirs()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            ns_how(
                "mnt",
                h,
                &format!("new mount namespace, fresh tmpfs on {}", tmp.join(" and ")),
            )
        }),
    );
    let ro = &h.read_only_paths;
    push(
        "read_only_paths",
        format!(
            "[{}]",
            ro.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (!ro.is_empty()).then(|| match mounts::plan(false, ro) {
            Err(e) => cannot(e),
            Ok(_) => ns_how(
                "mnt",
                h,
                "read-only bind mounts (and every mount below them) in a new mount namespace",
            ),
        }),
    );
    push(
        "private_users",
        h.private_users.to_string(),
        h.private_users.then(|| {
            if let Some(Err(e)) = &h.host_id {
                return cannot(e);
            }
            if let Some(Ok(host)) = h.host_id {
                return ns_how(
                    "user",
                    h,
                    &format!("new user namespace: root inside is host uid/gid {host} (unprivileged), no other id mapped"),
                );
            }
            let who = spec.process.identity.as_ref().map_or_else(
                // SAFETY: geteuid has no preconditions.
                || format!("uid {}", unsafe { libc::geteuid() }),
                |id| format!("uid {} (and its groups)", id.uid),
            );
            ns_how(
                "user",
                h,
                &format!("new user namespace: {who} mapped to itself, every other id to nobody"),
            )
        }),
    );
    push(
        "nice",
        h.nice.map_or("null".into(), |n| n.to_string()),
        h.nice.map(|n| {
            if n < 0 && !root() {
                cannot("a negative nice needs root")
            } else {
                "setpriority before exec".into()
            }
        }),
    );
    let class = |c: IoClass| match c {
        IoClass::Realtime => "realtime",
        IoClass::BestEffort => "best-effort",
        IoClass::Idle => "idle",
    };
    push(
        "io_class",
        h.io.map_or("null".into(), |(c, _)| class(c).into()),
        h.io.map(|(c, _)| {
            if c == IoClass::Realtime && !root() {
                cannot("the realtime class needs root")
            } else {
                "ioprio_set before exec".into()
            }
        }),
    );
    push(
        "io_priority",
        h.io.map_or("null".into(), |(_, l)| l.to_string()),
        h.io.map(|_| "ioprio_set before exec".into()),
    );
    push(
        "io_weight",
        h.io_weight.map_or("null".into(), |w| w.to_string()),
        h.io_weight.map(|w| cgroups.describe_io(w)),
    );
    out
}

/// `status --json`'s `hardening`: every key, with `"off"` or how it is applied.
pub fn json(spec: &ServiceSpec, cgroups: &Cgroups) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for l in lines(spec, cgroups) {
        m.insert(
            l.key.into(),
            serde_json::Value::String(l.how.unwrap_or_else(|| "off".into())),
        );
    }
    serde_json::Value::Object(m)
}
