//! Discovery (docs/configuration.md) and the plan: the services found in `services_dir`
//! merged with the configured ones into fully resolved `ServiceSpec`s (argv, environment,
//! identity).
//!
//! Everything a spawn needs is computed here, once, so that the spawn path does no lookups
//! and a reload can compare old and new specs field by field. Nothing here starts a
//! process; a plan that cannot be built is a configuration error.

use crate::common::safe_fs::{self, Verdicts};
use crate::config::layers::Kind;
use crate::config::{
    parse_signal, valid_service_name, Config, HealthCheck, Limits, RestartPolicy, ServiceConfig,
    Settings, SocketConfig,
};
use build::{base_environment, build_spec, resolve_identity};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A user and group to switch to before exec, resolved at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<PathBuf>,
}

/// Why a service cannot be spawned as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryProblem {
    Missing,
    NotExecutable,
    /// Fails StrictModes while we run as root (it or a directory above it is owned by
    /// another user, or writable by group or others): they could swap what runs.
    /// Refused under `strict_modes`.
    Untrusted(crate::common::safe_fs::Untrusted),
    /// Its sidecar cannot be used: the error, with `file:line:column` where it has one.
    /// Not a binary's problem, but the same consequence: it cannot run as planned.
    Sidecar(String),
}

/// What shapes a service's process: everything the child is given. A reload that
/// changes any of it restarts the service (docs/lifecycle.md), so the struct is compared
/// whole: a field added here can never be forgotten by the reload diff.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// What execve opens: the configured path with a symlink resolved (once, at plan
    /// time, so that what runs changes only with a reload).
    pub binary: PathBuf,
    /// The whole argv, argv[0] included: the binary's path as configured, never the
    /// resolved one (docs/lifecycle.md), since multi-call binaries (BusyBox applets,
    /// redis-server) choose what they are from argv[0]. An empty list runs `binary`
    /// with itself as argv[0].
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub identity: Option<Identity>,
    pub memory_limit_mib: u64,
    pub limits: Limits,
    pub sockets: Vec<SocketConfig>,
    /// For a service that daemonizes itself: where it writes its main process's pid.
    pub pid_file: Option<PathBuf>,
    /// `ready: "notify"`: starting until `READY=1` on the notify socket.
    pub ready_notify: bool,
    /// `watchdog_ms`: the longest silence between keep-alives once running.
    pub watchdog: Option<Duration>,
    /// docs/hardening.md: applied in the child before exec, or the start fails.
    pub hardening: super::hardening::Hardening,
}

/// A service's restart delays as configured; `supervise::backoff` turns them into the
/// delay before each restart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub jitter: f64,
}

/// One service, resolved: the plan's unit and what the supervisor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub configured: bool,
    pub enabled: bool,
    /// Started by `run` and `reload` without being asked.
    pub autostart: bool,
    pub binary_problem: Option<BinaryProblem>,
    /// Everything the process is given; a change restarts it on reload.
    pub process: ProcessSpec,
    /// How long a new binary must run (and be ready) before an upgrade keeps it.
    pub upgrade_grace_ms: u64,
    pub policy: RestartPolicy,
    pub max_restart_attempts: u32,
    pub backoff: Backoff,
    pub reset_after: Duration,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub depends_on: Vec<String>,
    pub health_check: Option<HealthCheck>,
    /// How often a service left `failed` by its restart attempts is tried again.
    pub retry_failed: Option<Duration>,
}

impl ServiceSpec {
    /// True when `other` would run a different process (docs/lifecycle.md: binary, args,
    /// environment, data_dir, identity, limits, sockets, ready, watchdog_ms, pid_file;
    /// docs/hardening.md: every hardening key), so a reload must restart it.
    pub fn process_differs(&self, other: &ServiceSpec) -> bool {
        self.process != other.process
    }

    pub fn binary_error(&self) -> Option<String> {
        self.binary_problem.as_ref().map(|p| match p {
            BinaryProblem::Missing => {
                format!(
                    "service binary not found: {}",
                    self.process.binary.display()
                )
            }
            BinaryProblem::NotExecutable => {
                format!(
                    "service binary is not executable: {}",
                    self.process.binary.display()
                )
            }
            BinaryProblem::Untrusted(u) => format!(
                "service binary refused: {u} (strict_modes: {})",
                safe_fs::RULE
            ),
            BinaryProblem::Sidecar(e) => e.clone(),
        })
    }
}

/// A message discovery wants logged (or printed by `check` and `discover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: log::Level,
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub services: BTreeMap<String, ServiceSpec>,
    pub notices: Vec<Notice>,
}

/// A binary found in `services_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub binary: PathBuf,
}

/// Scans `dir` for `NAME/NAME` executables. Problems become notices; a missing
/// directory is a warning, not an error, so that a box whose services directory is
/// re-created later keeps its configured services.
pub fn discover(dir: &Path, notices: &mut Vec<Notice>) -> Vec<Found> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            notices.push(Notice {
                level: log::Level::Warn,
                msg: format!("services directory {}: {e}", dir.display()),
            });
            return out;
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            notices.push(Notice {
                level: log::Level::Warn,
                msg: format!("skipping {}: name is not UTF-8", entry.path().display()),
            });
            continue;
        };
        let path = entry.path();
        // The directory entry's type spares a stat; a symlink is followed as before.
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => path.is_dir(),
        };
        if !is_dir {
            continue;
        }
        if !valid_service_name(&name) {
            notices.push(Notice {
                level: log::Level::Warn,
                msg: format!(
                    "skipping {}: invalid service name (use 1-64 characters of A-Z a-z 0-9 . _ -, not starting with `.`)",
                    path.display()
                ),
            });
            continue;
        }
        let binary = path.join(&name);
        match binary_problem(&binary) {
            None => out.push(Found { name, binary }),
            Some(BinaryProblem::Missing) => notices.push(Notice {
                level: log::Level::Debug,
                msg: format!("skipping {}: no executable {name} in it", path.display()),
            }),
            Some(BinaryProblem::NotExecutable) => notices.push(Notice {
                level: log::Level::Warn,
                msg: format!("{} is not executable: skipped", binary.display()),
            }),
            Some(BinaryProblem::Untrusted(_) | BinaryProblem::Sidecar(_)) => {}
        }
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `None` when `path` is (or links to) a regular file we may execute.
pub fn binary_problem(path: &Path) -> Option<BinaryProblem> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {
            let executable = CString::new(path.as_os_str().as_encoded_bytes())
                .map(|c| {
                    // SAFETY: c is a valid NUL-terminated string for the call's duration.
                    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
                })
                .unwrap_or(false);
            if executable {
                None
            } else {
                Some(BinaryProblem::NotExecutable)
            }
        }
        Ok(_) => Some(BinaryProblem::NotExecutable),
        Err(_) => Some(BinaryProblem::Missing),
    }
}

/// The binary's problem, including (as root, under `strict_modes`) failing sshd's
/// StrictModes rule (`safe_fs::untrusted`).
pub fn check_binary(path: &Path, strict: bool) -> Option<BinaryProblem> {
    check_binary_with(path, strict, &mut Verdicts::default())
}

/// `check_binary`, with the directories judged for StrictModes remembered in `seen`:
/// a plan's binaries share most of their ancestors.
fn check_binary_with(path: &Path, strict: bool, seen: &mut Verdicts) -> Option<BinaryProblem> {
    binary_problem(path).or_else(|| {
        let root = nix::unistd::geteuid().is_root();
        if !(strict && root) {
            return None;
        }
        safe_fs::untrusted_with(path, seen).map(BinaryProblem::Untrusted)
    })
}

/// Gives each root service with `private_users` its host id (`hardening::host_ids`):
/// skipping ids an account on this box has, and keeping the one its existing
/// `data_dir` belongs to. Accounts that cannot be read leave the service with the
/// reason instead of an id: its start fails.
fn assign_host_ids(services: &mut BTreeMap<String, ServiceSpec>) {
    use std::os::unix::fs::MetadataExt;
    let mut wanted = Vec::new();
    for (name, spec) in services.iter() {
        let p = &spec.process;
        if super::hardening::needs_host_id(&p.hardening, p.identity.as_ref()) {
            // Ours only when its uid and gid are one id, as created, and only root
            // could have made it there (StrictModes on the directory above): another
            // service's id must not plant a directory to be given its own id.
            let claim = p.cwd.as_ref().and_then(|dir| {
                let m = std::fs::metadata(dir).ok()?;
                let parent = dir.parent()?;
                (m.is_dir() && m.uid() == m.gid() && safe_fs::untrusted(parent).is_none())
                    .then(|| m.uid())
            });
            wanted.push((name.clone(), claim));
        }
    }
    let named: Vec<(&str, Option<u32>)> = wanted.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let ids = super::hardening::host_ids(&named, super::accounts::id_in_use);
    for ((name, _), id) in wanted.iter().zip(ids) {
        if let Some(spec) = services.get_mut(name) {
            spec.process.hardening.host_id = Some(id);
        }
    }
}

/// Builds the plan from a loaded config: discovery merged with the `services` section.
/// Errors (unknown users, unknown dependencies, cycles) are configuration errors.
pub fn plan(cfg: &Config) -> Result<Plan, Vec<String>> {
    let s = &cfg.settings;
    let mut notices = Vec::new();
    let found = discover(&s.services_dir, &mut notices);
    let label = cfg
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(defaults)".to_string());
    let env_base = base_environment();
    let mut errors = Vec::new();
    let mut services = BTreeMap::new();
    let mut verdicts = Verdicts::default();

    let unconfigured = ServiceConfig::default();
    // Built by insertion: collecting into an ordered set would link a sort just for this.
    let mut names = BTreeSet::new();
    names.extend(cfg.services.keys().map(String::as_str));
    names.extend(found.iter().map(|f| f.name.as_str()));
    for name in names {
        let configured = cfg.sources.is_configured(name);
        let svc = cfg.services.get(name).unwrap_or(&unconfigured);
        let broken = cfg.sources.broken(name);
        // A sidecar alone names a service only with its binary: `binary_path`, or
        // NAME/NAME found.
        if !configured
            && broken.is_none()
            && svc.binary_path.is_none()
            && !found.iter().any(|f| f.name == name)
        {
            continue;
        }
        let configured_path = svc
            .binary_path
            .clone()
            .unwrap_or_else(|| s.services_dir.join(name).join(name));
        // A symlink is resolved once, here: what runs changes only with a reload. The
        // child still gets the configured path as argv[0] (see ServiceSpec::args).
        let mut binary = configured_path.clone();
        if std::fs::symlink_metadata(&binary).is_ok_and(|m| m.file_type().is_symlink()) {
            if let Ok(target) = std::fs::canonicalize(&binary) {
                notices.push(Notice {
                    level: log::Level::Info,
                    msg: format!(
                        "{name}: {} is a symlink to {}",
                        binary.display(),
                        target.display()
                    ),
                });
                binary = target;
            }
        }
        let mut problem = match broken {
            Some(e) => Some(BinaryProblem::Sidecar(e.clone())),
            None => check_binary_with(&binary, s.strict_modes, &mut verdicts),
        };
        if let Some(BinaryProblem::Untrusted(u)) = &problem {
            notices.push(Notice {
                level: log::Level::Warn,
                msg: format!("{name}: refusing {}: {u}", binary.display()),
            });
        }
        let identity = match resolve_identity(svc) {
            Ok(id) => id,
            Err(e) => {
                // A sidecar's account that does not exist fails its service only.
                match from_sidecar(cfg, name, &["user", "group"]) {
                    Some(file) => problem = Some(BinaryProblem::Sidecar(format!("{file}: {e}"))),
                    None => errors.push(format!("{label}: services.{name}: {e}")),
                }
                None
            }
        };
        for w in super::hardening::warnings(svc) {
            notices.push(Notice {
                level: log::Level::Warn,
                msg: format!("{name}: {w}"),
            });
        }
        let spec = build_spec(
            name,
            configured,
            svc,
            s,
            &configured_path,
            binary,
            problem,
            identity,
            &env_base,
        );
        services.insert(name.to_string(), spec);
    }
    assign_host_ids(&mut services);
    if s.log_dir.is_some() && services.contains_key("orchestrator") {
        errors.push(format!(
            "{label}: services.orchestrator: with log_dir set, a service cannot be named `orchestrator` (log_dir/orchestrator.log is the orchestrator's own log)"
        ));
    }
    let mut unknown_deps = Vec::new();
    for (name, spec) in &services {
        for dep in &spec.depends_on {
            if !services.contains_key(dep) {
                let msg = format!("services.{name}.depends_on: unknown service `{dep}`");
                match from_sidecar(cfg, name, &["depends_on"]) {
                    Some(file) => unknown_deps.push((name.clone(), format!("{file}: {msg}"))),
                    None => errors.push(format!("{label}: {msg}")),
                }
            }
        }
    }
    // A sidecar's unknown dependency fails its service only, which then waits for
    // nothing.
    for (name, why) in unknown_deps {
        if let Some(spec) = services.get_mut(&name) {
            spec.depends_on.clear();
            spec.binary_problem = Some(BinaryProblem::Sidecar(why));
        }
    }
    for (name, spec) in &services {
        if let Some(BinaryProblem::Sidecar(why)) = &spec.binary_problem {
            notices.push(Notice {
                level: log::Level::Error,
                msg: format!("{name}: {why}"),
            });
        }
    }
    if let Some(cycle) = find_cycle(&services) {
        errors.push(format!(
            "{label}: depends_on: dependency cycle: {}",
            cycle.join(" -> ")
        ));
    }
    if let Some(w) = &s.watchdog {
        for c in &w.critical {
            if !services.contains_key(c) {
                errors.push(format!(
                    "{label}: orchestrator.watchdog.critical: unknown service `{c}`"
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(Plan { services, notices })
    } else {
        Err(errors.into_iter().map(crate::config::one_line).collect())
    }
}

/// The sidecar that set one of `keys` of service `name`, if one did.
fn from_sidecar(cfg: &Config, name: &str, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| cfg.sources.origin(name, k))
        .find(|o| o.kind == Kind::Sidecar)
        .map(|o| o.path.display().to_string())
}

/// The first `depends_on` cycle, as the names along it with the first repeated at the end.
/// A depth-first search with its own stack: a chain of dependencies is as long as the
/// file makes it, and recursion would overflow the thread's stack on a long one.
fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for root in services.keys() {
        // The path from `root`: each name with the index of its next dependency to visit.
        let mut path: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        let mut on_path: BTreeSet<&str> = BTreeSet::new();
        on_path.insert(root.as_str());
        while let Some(&(name, next)) = path.last() {
            if done.contains(name) {
                on_path.remove(name);
                path.pop();
                continue;
            }
            let deps = services.get(name).map_or(&[][..], |s| &s.depends_on[..]);
            let Some(dep) = deps.get(next).map(String::as_str) else {
                done.insert(name);
                on_path.remove(name);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            if on_path.contains(dep) {
                let start = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|(n, _)| n.to_string()).collect();
                cycle.push(dep.to_string());
                return Some(cycle);
            }
            if !done.contains(dep) {
                on_path.insert(dep);
                path.push((dep, 0));
            }
        }
    }
    None
}

/// A plain spec for unit tests elsewhere: `/bin/true`, configured, every default.
#[cfg(test)]
pub fn test_spec(name: &str) -> ServiceSpec {
    build_spec(
        name,
        true,
        &ServiceConfig::default(),
        &Settings::default(),
        Path::new("/bin/true"),
        PathBuf::from("/bin/true"),
        None,
        None,
        &base_environment(),
    )
}

mod build;
#[cfg(test)]
mod tests;
