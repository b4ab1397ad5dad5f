//! Per-service cgroups (docs/hardening.md): finding a writable hierarchy for each job,
//! creating one cgroup per service, writing its limits, and using it to find and kill
//! every process of a service, including those that left its process group (setsid, double
//! fork).
//!
//! Layouts differ by box: pure v2 (controllers in the unified tree), pure v1 (one mount
//! per controller), and hybrid (v1 controllers beside an empty v2 tree, common on
//! embedded kernels). Each job takes the best place it can get: membership tracking
//! prefers v2 (cgroup.kill, populated), limits go wherever their controller is usable.
//! Without a usable hierarchy services still run; `check` and `status` say so.
//!
//! Service cgroups live under `<own cgroup>/orchestrator-<id>/NAME`, where `<id>` is
//! derived from the control socket path: two instances never share one, and a restart
//! after a crash finds its predecessor's cgroups and kills what is left in them.
//!
//! This module only touches cgroupfs files; it never forks or reaps.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One place where service cgroups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// `<mount><own path>/orchestrator-<id>`.
    pub base: PathBuf,
}

impl Hierarchy {
    fn dir(&self, service: &str) -> PathBuf {
        self.base.join(service)
    }
}

/// What this box offers, decided once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// Where membership is tracked (and every process of a service found).
    pub tracker: Option<Hierarchy>,
    pub memory: Option<Hierarchy>,
    pub cpu: Option<Hierarchy>,
    pub pids: Option<Hierarchy>,
    /// Where `io_weight` goes, and the file that takes it there.
    pub io: Option<(Hierarchy, &'static str)>,
    /// How `/proc/PID/cgroup` shows the tracker, for telling whose a process is.
    pub tracker_proc: Option<ProcKey>,
}

/// The tracker as `/proc/PID/cgroup` shows it: the line of its hierarchy and the path
/// of this instance's cgroup on it. A process is service NAME's when that line's path
/// is `base/NAME` or below it, and only then: the same names anywhere else (another
/// hierarchy, or a cgroup a user made elsewhere) mean nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcKey {
    /// v1: a controller (or `name=...`) of the line; `None` for the v2 line (`0::`).
    pub controller: Option<String>,
    /// `/<own path>/orchestrator-<id>`, as the daemon reads its own cgroup.
    pub base: String,
}

impl ProcKey {
    /// The service that `text` (a `/proc/PID/cgroup`) puts the process in.
    pub fn owner<'a>(&self, text: &'a str) -> Option<&'a str> {
        let path = text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match &self.controller {
                None => id == "0" && ctrls.is_empty(),
                Some(c) => ctrls.split(',').any(|x| x == c),
            };
            ours.then_some(path)
        })?;
        let rest = path.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let name = rest.split('/').next()?;
        (!name.is_empty()).then_some(name)
    }
}

fn proc_key(controller: Option<&str>, own: &str, id: &str) -> ProcKey {
    ProcKey {
        controller: controller.map(str::to_string),
        base: format!("{}/{id}", own.trim_end_matches('/')),
    }
}

/// The controllers a service's limits need, each with the config key it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    /// The config key this controller enforces.
    pub fn key(self) -> &'static str {
        match self {
            Controller::Memory => "memory_limit",
            Controller::Cpu => "cpu_percent",
            Controller::Pids => "pids_max",
        }
    }
}

/// The limits a service's cgroup enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_mib: u64,
    pub cpu_percent: Option<u32>,
    pub pids_max: Option<u64>,
    pub io_weight: Option<u32>,
}

impl CgroupLimits {
    /// The limits `spec` asks of its cgroup.
    pub fn of(spec: &crate::config::discovery::ServiceSpec) -> CgroupLimits {
        CgroupLimits {
            memory_mib: spec.process.memory_limit_mib,
            cpu_percent: spec.process.limits.cpu_percent,
            pids_max: spec.process.limits.pids_max,
            io_weight: spec.process.hardening.io_weight,
        }
    }
}

/// The file that sets a cgroup's I/O weight, by preference: the weight files exist only
/// where the kernel has a scheduler or controller that honours them.
fn weight_file(h: &Hierarchy) -> Option<&'static str> {
    let names: &[&'static str] = match h.version {
        Version::V2 => &["io.weight", "io.bfq.weight"],
        Version::V1 => &["blkio.weight", "blkio.bfq.weight"],
    };
    let dirs = [Some(h.base.as_path()), h.base.parent()];
    names
        .iter()
        .find(|n| dirs.iter().flatten().any(|d| d.join(n).exists()))
        .copied()
}

/// `io_weight` (1-10000, default 100) as v1's blkio weight (10-1000, default 500),
/// scaled as systemd does so that the defaults match: x5, clamped.
pub fn blkio_weight(io_weight: u32) -> u32 {
    io_weight.saturating_mul(5).clamp(10, 1000)
}

impl Cgroups {
    /// Every distinct hierarchy in use.
    fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut out: Vec<&Hierarchy> = Vec::new();
        for h in [&self.tracker, &self.memory, &self.cpu, &self.pids]
            .into_iter()
            .flatten()
            .chain(self.io.as_ref().map(|(h, _)| h))
        {
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }

    pub fn available(&self) -> bool {
        self.tracker.is_some()
    }

    /// The cgroup directories of `service`, one per hierarchy (tracker first).
    pub fn dirs(&self, service: &str) -> Vec<PathBuf> {
        self.hierarchies().iter().map(|h| h.dir(service)).collect()
    }

    /// How many processes of `service` the kernel's OOM killer has killed: the
    /// `oom_kill` count of its memory cgroup (`memory.events` on v2,
    /// `memory.oom_control` on v1 since Linux 4.13). None where none can be read (no
    /// memory cgroup for it, an older kernel).
    pub fn oom_kills(&self, service: &str) -> Option<u64> {
        let (h, file) = self.oom_source()?;
        let text = fs::read_to_string(h.dir(service).join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    fn oom_source(&self) -> Option<(&Hierarchy, &'static str)> {
        match (&self.memory, &self.tracker) {
            (Some(h), _) if h.version == Version::V1 => Some((h, "memory.oom_control")),
            (Some(h), _) => Some((h, "memory.events")),
            (None, Some(t)) if t.version == Version::V2 => Some((t, "memory.events")),
            _ => None,
        }
    }

    /// Whether an OOM kill of a service (with or without a memory limit) can be told
    /// from another SIGKILL, for `check`: where from, or why not.
    pub fn oom_detection(&self, memory_limited: bool) -> Result<String, String> {
        let (h, file) = self
            .oom_source()
            .ok_or("no memory cgroup hierarchy is writable here")?;
        if h.version == Version::V1 && !memory_limited {
            return Err("without memory_limit the service has no memory cgroup".into());
        }
        // The service's cgroup may not exist yet: its nearest existing ancestor has
        // the same files.
        let probe = h
            .dir("")
            .ancestors()
            .map(|d| d.join(file))
            .find(|f| f.exists());
        match probe.and_then(|f| fs::read_to_string(&f).ok().map(|t| (f, t))) {
            Some((f, t)) if t.lines().any(|l| l.starts_with("oom_kill ")) => {
                Ok(format!("its oom_kill count in {}", f.display()))
            }
            Some((f, _)) => Err(format!(
                "{} has no oom_kill count (Linux 4.13 and later)",
                f.display()
            )),
            None => Err(format!("no {file} to read")),
        }
    }

    pub fn tracker_dir(&self, service: &str) -> Option<PathBuf> {
        self.tracker.as_ref().map(|h| h.dir(service))
    }

    /// Creates the service's cgroups, writes its limits, and opens their `cgroup.procs`
    /// so that the child can join them between fork and exec. Errors name the file.
    /// Returns the open files and the directories the service now has.
    pub fn prepare(
        &self,
        service: &str,
        limits: CgroupLimits,
    ) -> Result<(Vec<fs::File>, Vec<PathBuf>), String> {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        // The tracking cgroup always; a controller's only when a limit needs it (each
        // cgroup costs the kernel time and memory, and 500 services add up).
        let mut needed: Vec<&Hierarchy> = Vec::new();
        let wanted = [
            (self.tracker.as_ref(), true),
            (self.memory.as_ref(), limits.memory_mib > 0),
            (self.cpu.as_ref(), limits.cpu_percent.is_some()),
            (self.pids.as_ref(), limits.pids_max.is_some()),
            (self.io.as_ref().map(|(h, _)| h), limits.io_weight.is_some()),
        ];
        for (h, want) in wanted {
            if let Some(h) = h.filter(|_| want) {
                if !needed.contains(&h) {
                    needed.push(h);
                }
            }
        }
        for h in needed {
            let dir = h.dir(service);
            fs::create_dir_all(&dir).map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
            let procs = dir.join("cgroup.procs");
            dirs.push(dir.clone());
            files.push(
                fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| format!("cgroup {}: {e}", procs.display()))?,
            );
        }
        self.write_limits(service, limits)?;
        Ok((files, dirs))
    }

    /// Creates the tracking cgroups of `services` on a thread of its own, ahead of
    /// `prepare`: making a cgroup is the dearest part of preparing a spawn, and at
    /// start-up this thread makes them while the loop clones. What it has not made yet
    /// when `prepare` comes is made there; errors are left for `prepare` to meet and
    /// report. The caller joins the thread before any service's cgroup may be removed.
    pub fn create_ahead(&self, services: Vec<String>) -> Option<std::thread::JoinHandle<()>> {
        let h = self.tracker.clone().filter(|_| services.len() > 1)?;
        std::thread::Builder::new()
            .name("cgroups-ahead".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for s in services {
                    let _ = fs::create_dir(h.dir(&s));
                }
            })
            .ok()
    }

    fn write_limits(&self, service: &str, l: CgroupLimits) -> Result<(), String> {
        let write = |h: &Hierarchy, file: &str, value: String| -> Result<(), String> {
            let path = h.dir(service).join(file);
            fs::write(&path, value).map_err(|e| format!("cgroup {}: {e}", path.display()))
        };
        // A hierarchy shared with the tracker (v2) must be told "no limit" explicitly;
        // one that only serves this limit is not even created without it.
        let shared = |h: &Option<Hierarchy>| h.is_some() && *h == self.tracker;
        if let Some(h) = self
            .memory
            .as_ref()
            .filter(|_| l.memory_mib > 0 || shared(&self.memory))
        {
            let bytes = l.memory_mib.saturating_mul(1024 * 1024);
            match (h.version, l.memory_mib) {
                (Version::V2, 0) => write(h, "memory.max", "max".into())?,
                (Version::V2, _) => write(h, "memory.max", bytes.to_string())?,
                (Version::V1, 0) => write(h, "memory.limit_in_bytes", "-1".into())?,
                (Version::V1, _) => write(h, "memory.limit_in_bytes", bytes.to_string())?,
            }
        }
        if let Some(h) = self
            .cpu
            .as_ref()
            .filter(|_| l.cpu_percent.is_some() || shared(&self.cpu))
        {
            const PERIOD: u64 = 100_000;
            let quota = l.cpu_percent.map(|p| u64::from(p) * PERIOD / 100);
            match (h.version, quota) {
                (Version::V2, Some(q)) => write(h, "cpu.max", format!("{q} {PERIOD}"))?,
                (Version::V2, None) => write(h, "cpu.max", format!("max {PERIOD}"))?,
                (Version::V1, q) => {
                    write(h, "cpu.cfs_period_us", PERIOD.to_string())?;
                    let q = q.map_or("-1".to_string(), |q| q.to_string());
                    write(h, "cpu.cfs_quota_us", q)?;
                }
            }
        }
        if let Some(h) = self
            .pids
            .as_ref()
            .filter(|_| l.pids_max.is_some() || shared(&self.pids))
        {
            let v = l.pids_max.map_or("max".to_string(), |p| p.to_string());
            write(h, "pids.max", v)?;
        }
        if let Some((h, file)) = &self.io {
            let shared = Some(h) == self.tracker.as_ref();
            match (l.io_weight, h.version) {
                (Some(w), Version::V2) => write(h, file, w.to_string())?,
                (Some(w), Version::V1) => write(h, file, blkio_weight(w).to_string())?,
                (None, Version::V2) if shared => write(h, file, "100".into())?,
                (None, _) => {}
            }
        }
        Ok(())
    }

    /// Pids in the service's tracking cgroup.
    pub fn members(&self, service: &str) -> Vec<i32> {
        let Some(dir) = self.tracker_dir(service) else {
            return Vec::new();
        };
        read_pids(&dir.join("cgroup.procs"))
    }

    /// Sends `sig` to every process in the service's cgroup.
    pub fn signal(&self, service: &str, sig: i32) {
        for pid in self.members(service) {
            if pid > 1 {
                // SAFETY: kill has no memory preconditions.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
        }
    }

    /// SIGKILLs everything in the service's cgroup (cgroup.kill where the kernel has it;
    /// else pid by pid, a few rounds to catch processes forked meanwhile).
    pub fn kill(&self, service: &str) {
        let Some(dir) = self.tracker_dir(service) else {
            return;
        };
        let kill_file = dir.join("cgroup.kill");
        if self
            .tracker
            .as_ref()
            .is_some_and(|h| h.version == Version::V2)
            && fs::write(&kill_file, "1").is_ok()
        {
            return;
        }
        for _ in 0..10 {
            let pids = self.members(service);
            if pids.is_empty() {
                return;
            }
            self.signal(service, libc::SIGKILL);
        }
    }

    /// Removes what it can of `dirs` without waiting: rmdir only. Returns the ones that
    /// still have members (EBUSY); the others are gone (or were never there).
    pub fn try_remove(&self, dirs: &[PathBuf]) -> Vec<PathBuf> {
        dirs.iter()
            .filter(|d| fs::remove_dir(d).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY)))
            .cloned()
            .collect()
    }

    /// Kills what is left and removes the service's cgroups. Waits (briefly) for the
    /// processes to be gone, since a cgroup with members cannot be removed.
    pub fn remove(&self, service: &str, dirs: &[PathBuf]) {
        // Usually everything is gone already (the stop waited for it) and rmdir just
        // succeeds; only a busy cgroup is killed and waited for.
        let busy = |dir: &PathBuf| {
            fs::remove_dir(dir).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
        };
        let left: Vec<&PathBuf> = dirs.iter().filter(|d| busy(d)).collect();
        if left.is_empty() {
            return;
        }
        self.kill(service);
        let end = Instant::now() + Duration::from_secs(2);
        while !self.members(service).is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        for dir in left {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Finds service cgroups a crashed predecessor (same socket) left behind, kills what
    /// is still in them and removes them. Returns how many processes were killed.
    pub fn clean_up_predecessor(&self) -> usize {
        let mut killed = 0;
        for h in self.hierarchies() {
            let Ok(entries) = fs::read_dir(&h.base) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if !path.is_dir() {
                    continue;
                }
                let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                    continue;
                };
                if Some(h) == self.tracker.as_ref() {
                    killed += self.members(&name).len();
                }
                self.remove(&name, &self.dirs(&name));
            }
        }
        killed
    }

    /// Removes this instance's base cgroups (at exit, once every service is gone).
    pub fn remove_all(&self) {
        for h in self.hierarchies() {
            if let Ok(entries) = fs::read_dir(&h.base) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            let _ = fs::remove_dir(&h.base);
        }
    }

    /// Each limit `spec` sets: its name, its value as configured, and how it is
    /// enforced here ("setrlimit", or what `describe` says).
    pub fn enforcement(
        &self,
        spec: &crate::config::discovery::ServiceSpec,
    ) -> Vec<(&'static str, String, String)> {
        let l = &spec.process.limits;
        let mut out = Vec::new();
        for (name, v) in [("nofile", l.nofile), ("nproc", l.nproc), ("core", l.core)] {
            if let Some(v) = v {
                out.push((name, v.to_string(), "setrlimit".to_string()));
            }
        }
        let cgroup_limits = [
            (
                Controller::Memory,
                (spec.process.memory_limit_mib > 0)
                    .then(|| format!("{} MiB", spec.process.memory_limit_mib)),
            ),
            (Controller::Cpu, l.cpu_percent.map(|c| c.to_string())),
            (Controller::Pids, l.pids_max.map(|p| p.to_string())),
        ];
        for (controller, value) in cgroup_limits {
            if let Some(value) = value {
                out.push((controller.key(), value, self.describe(controller)));
            }
        }
        out
    }

    /// How `io_weight` is enforced here, for `check` and `status`.
    pub fn describe_io(&self, weight: u32) -> String {
        match &self.io {
            Some((h, file)) if h.version == Version::V2 => {
                format!("cgroup v2 {file} {weight} in {}", h.base.display())
            }
            Some((h, file)) => format!(
                "cgroup v1 {file} {} in {}",
                blkio_weight(weight),
                h.base.display()
            ),
            None => "not enforced: no writable cgroup hierarchy has an I/O weight".to_string(),
        }
    }

    /// How a controller's limit is enforced here, for `check` and `status`.
    pub fn describe(&self, what: Controller) -> String {
        let (h, file) = match what {
            Controller::Memory => (&self.memory, ["memory.max", "memory.limit_in_bytes"]),
            Controller::Cpu => (&self.cpu, ["cpu.max", "cpu.cfs_quota_us"]),
            Controller::Pids => (&self.pids, ["pids.max", "pids.max"]),
        };
        match h {
            Some(h) if h.version == Version::V2 => {
                format!("cgroup v2 {} in {}", file[0], h.base.display())
            }
            Some(h) => format!("cgroup v1 {} in {}", file[1], h.base.display()),
            None => "not enforced: no writable cgroup hierarchy has the controller".to_string(),
        }
    }
}

fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Raw descriptors of the opened `cgroup.procs` files, for the child to write to.
pub fn raw_fds(files: &[fs::File]) -> Vec<RawFd> {
    files.iter().map(AsRawFd::as_raw_fd).collect()
}

/// In the child between clone and exec: joins every cgroup whose `cgroup.procs` is
/// open on `fds` ("0" means the writing process). Async-signal-safe; on failure errno
/// says why.
///
/// # Safety
/// Only raw write(2) calls on descriptors the caller keeps open.
pub unsafe fn join(fds: &[RawFd]) -> bool {
    fds.iter()
        .all(|fd| libc::write(*fd, b"0".as_ptr().cast(), 1) == 1)
}

mod detect;
#[cfg(test)]
mod tests;
