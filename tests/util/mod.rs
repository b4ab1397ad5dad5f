//! The integration-test toolkit: a sandbox directory with fixture services, a handle on
//! the real `orchestrator` binary that kills it and every process it started when
//! dropped (even when the test fails), a client runner, and deadline waits.

#![allow(dead_code)]

pub mod packages;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
/// Generous: these are deadlines for things that normally take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where sandboxes go: under the target directory, not /tmp, because as root
/// Whether the tests run as root (the tests that need it skip, saying why, if not).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// strict_modes refuses a config, a binary or a state_dir below a directory others can
/// write to (sticky or not). A clone that itself sits below such a directory (a
/// checkout under /tmp) gets a root-owned place of its own instead.
fn sandbox_base() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let root = is_root();
    let open_to_others = target
        .ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .any(|m| m.mode() & 0o022 != 0 || (m.uid() != 0 && root));
    if !(root && open_to_others) {
        return target;
    }
    let base = PathBuf::from("/var/lib/orchestrator-tests");
    std::fs::create_dir_all(&base).expect("create /var/lib/orchestrator-tests");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod /var/lib/orchestrator-tests");
    base
}

/// Copies a program a test will run. `cp` writes the copy, in a process of its own: a
/// descriptor this process held open for writing would be inherited, between fork and
/// exec, by whatever child another test thread spawns at that moment, and an exec of
/// the file meanwhile fails with ETXTBSY ("Text file busy").
pub fn copy_executable(from: impl AsRef<Path>, to: impl AsRef<Path>) {
    let (from, to) = (from.as_ref(), to.as_ref());
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// A temporary directory holding a config, a services dir and whatever a test writes.
pub struct Sandbox {
    pub dir: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Sandbox {
    pub fn new() -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Fixed width, so no sandbox's path is a prefix of another's: guards find
        // their processes by path and must never match a neighbour's.
        let dir = sandbox_base().join(format!("orch-test-{}-{n:05}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// Lets another user enter the sandbox and the services written so far: adds 0755
    /// to their directories' modes (never takes a bit away: a test may have opened one
    /// wider).
    pub fn open_to_other_users(&self) {
        let services = std::fs::read_dir(self.path("services"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir());
        let dirs = [self.dir.clone(), self.path("services")];
        for dir in dirs.into_iter().chain(services) {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        }
    }

    /// A copy of the orchestrator binary that another user can run, in the opened
    /// sandbox: the build's own binary may sit in a clone under a directory only its
    /// owner can enter (`/root`, a 0700 `mktemp -d`).
    pub fn binary_for_other_users(&self) -> PathBuf {
        self.open_to_other_users();
        let bin = self.path("bin/orchestrator");
        if !bin.exists() {
            std::fs::create_dir_all(self.path("bin")).unwrap();
            std::fs::set_permissions(self.path("bin"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let tmp = bin.with_extension("tmp");
            copy_executable(BIN, &tmp);
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &bin).unwrap();
        }
        bin
    }

    /// Writes `services/NAME/NAME` as a /bin/sh script with `body`.
    pub fn service(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.dir.join("services").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        self.script(&path, body);
        path
    }

    pub fn script(&self, path: &Path, body: &str) {
        // Write to a temporary name and rename, so a running service is never replaced
        // mid-read (and ETXTBSY cannot occur).
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Writes orchestrator.json with the socket and fast test defaults merged under
    /// `orchestrator`, and `services` as given.
    pub fn config(&self, orchestrator: Value, services: Value) -> PathBuf {
        let mut o = serde_json::json!({
            "control_socket": self.socket(),
            "initial_backoff_ms": 50,
            "max_backoff_ms": 200,
            "backoff_jitter": 0.0,
            "stop_timeout_ms": 3000,
            "shutdown_timeout_ms": 10000,
        });
        if let (Some(base), Some(extra)) = (o.as_object_mut(), orchestrator.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        let cfg = serde_json::json!({"orchestrator": o, "services": services});
        self.write_config(&serde_json::to_string_pretty(&cfg).unwrap())
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("orchestrator.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs a client (or check/discover) command against this sandbox.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--config")
            .arg(self.dir.join("orchestrator.json"))
            .args(args)
            .current_dir(&self.dir);
        run_with_timeout(cmd, DEADLINE)
    }

    /// `status --json` as parsed JSON (an array), panicking with the stderr on failure.
    pub fn status(&self) -> Vec<Value> {
        let out = self.cli(&["status", "--json"]);
        assert_eq!(out.code, 0, "status failed: {}", out.stderr);
        serde_json::from_str::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", out.stdout))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn service_status(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("service {name} missing from status"))
    }

    /// `name`'s status, or null while it is not (yet) known to the daemon.
    fn status_or_null(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or(Value::Null)
    }

    /// Waits until `name` has `state` (it may appear meanwhile, by a reload); returns
    /// its status then.
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(DEADLINE, || {
            last = self.status_or_null(name);
            last["state"] == state
        });
        assert!(ok, "{name} never reached {state}; last status: {last}");
        last
    }

    /// Waits until `name` runs with a pid (other than `not`); returns the pid.
    pub fn wait_running(&self, name: &str, not: Option<i64>) -> i64 {
        let mut last = Value::Null;
        let ok = wait_until(DEADLINE, || {
            last = self.status_or_null(name);
            last["state"] == "running"
                && last["pid"].as_i64().is_some()
                && last["pid"].as_i64() != not
        });
        assert!(ok, "{name} never ran (a new pid); last status: {last}");
        last["pid"].as_i64().unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.dir);
        remove_cgroups(&self.socket());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon's cgroup directory name for `socket` (FNV-1a, as the daemon computes it).
pub fn cgroup_id(socket: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("orchestrator-{h:016x}")
}

/// Every directory named `name` under /sys/fs/cgroup (a few levels deep).
pub fn find_cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == name) {
                out.push(p);
            } else if depth > 0 {
                walk(&p, name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), name, 5, &mut out);
    out
}

/// Removes what a killed daemon left in cgroupfs for `socket` (its processes are
/// already dead: empty cgroups can be removed).
pub fn remove_cgroups(socket: &Path) {
    for base in find_cgroup_dirs(&cgroup_id(socket)) {
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let dir = e.path();
                if !dir.is_dir() {
                    continue;
                }
                // Kill whatever is still inside (escaped descendants included), then
                // remove the cgroup once its members are gone.
                wait_until(Duration::from_secs(5), || {
                    let procs =
                        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    std::fs::remove_dir(&dir).is_ok() || !dir.exists()
                });
            }
        }
        let _ = std::fs::remove_dir(&base);
    }
}

/// `cmd.spawn()`, tried again for a moment on ETXTBSY: a binary just copied into a
/// sandbox is busy while any process forked meanwhile (by a test on another thread)
/// still holds the copy's descriptor, until it execs.
pub fn spawn_when_not_busy(cmd: &mut Command) -> std::io::Result<Child> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_when_not_busy(&mut cmd).expect("spawn the orchestrator binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A running daemon. Dropping it SIGKILLs the daemon and every process group that any
/// process mentioning the sandbox belongs to.
pub struct Daemon {
    pub child: Option<Child>,
    pub pid: i32,
    log: Arc<Mutex<Vec<String>>>,
    /// Closed when the reader of the daemon's stderr has seen EOF.
    log_done: std::sync::mpsc::Receiver<()>,
    sandbox_dir: PathBuf,
}

impl Daemon {
    /// Starts `orchestrator run --config sandbox/orchestrator.json` with `extra` args and
    /// waits until its control socket answers.
    pub fn start(sb: &Sandbox, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn(sb, extra, &[]);
        let ok = wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0);
        assert!(ok, "daemon did not come up; log:\n{}", d.log_text());
        d
    }

    /// Starts the daemon without waiting; `env` is added to a minimal environment.
    pub fn spawn(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_as(sb, extra, env, None)
    }

    /// `spawn`, switched to `uid` (same gid, no supplementary groups) when given.
    pub fn spawn_as(
        sb: &Sandbox,
        extra: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Daemon {
        // Another user runs a copy it can reach (see `binary_for_other_users`).
        let bin = match uid {
            Some(_) => sb.binary_for_other_users(),
            None => PathBuf::from(BIN),
        };
        let mut cmd = Command::new(bin);
        if let Some(uid) = uid {
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("run")
            .arg("--config")
            .arg(sb.dir.join("orchestrator.json"))
            .args(extra);
        Daemon::launch(sb, cmd, env)
    }

    /// Starts `orchestrator run` in the sandbox without `--config`, with `extra` args:
    /// the daemon looks its config up (`./orchestrator.json`, or none). Waits until its
    /// socket (the sandbox's) answers.
    pub fn start_found(sb: &Sandbox, extra: &[&str]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").args(extra);
        let d = Daemon::launch(sb, cmd, &[]);
        let ok = wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0);
        assert!(ok, "daemon did not come up; log:\n{}", d.log_text());
        d
    }

    /// Launches `cmd` (which must end up as `orchestrator run` for this sandbox, e.g.
    /// through a wrapper that execs it) with the daemon's environment and guard.
    pub fn launch(sb: &Sandbox, mut cmd: Command, env: &[(&str, &str)]) -> Daemon {
        cmd.current_dir(&sb.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/root")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so the guard can kill it without touching the test runner.
            .process_group(0);
        let mut child = spawn_when_not_busy(&mut cmd).expect("spawn orchestrator run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let (done_tx, log_done) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _done = done_tx;
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_string();
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        Daemon {
            pid: child.id() as i32,
            child: Some(child),
            log,
            log_done,
            sandbox_dir: sb.dir.clone(),
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits until a log line contains every one of `parts`; returns it.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        let mut found = None;
        let ok = wait_until(DEADLINE, || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .cloned();
            found.is_some()
        });
        assert!(ok, "no log line with {parts:?}; log:\n{}", self.log_text());
        found.unwrap()
    }

    pub fn count_log(&self, parts: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid, sig);
        }
    }

    /// Waits for the daemon to exit; returns its exit code (None if still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                // Everything it wrote is read before the caller looks at the log.
                let _ = self.log_done.recv_timeout(Duration::from_secs(5));
                return Some(st.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.sandbox_dir);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn proc_stat(pid: i64) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let mut fields = vec![text[..close].to_string(), String::new()];
    fields.extend(text[close + 2..].split_whitespace().map(String::from));
    Some(fields)
}

/// An `orchestrator run --daemon` the test started: detached, so not our child, and
/// its pid could be another process's once it has exited. Dropping it SIGKILLs it
/// only if the pid still names the same process (same start time in /proc), and what
/// it left in the sandbox.
pub struct Detached {
    pub pid: i32,
    started: Option<String>,
    sandbox_dir: PathBuf,
}

impl Detached {
    /// The daemon `pidfile` names, once a `run --daemon` has returned (it returns only
    /// once the daemon serves, its pid written); `None` if the file holds no pid.
    pub fn from_pidfile(sb: &Sandbox, pidfile: &Path) -> Option<Detached> {
        let pid = first_line_pid(pidfile)? as i32;
        Some(Detached {
            pid,
            started: start_time(pid),
            sandbox_dir: sb.dir.clone(),
        })
    }

    /// Whether it still runs (the same process, not a zombie).
    pub fn alive(&self) -> bool {
        self.started.is_some() && start_time(self.pid) == self.started
    }
}

/// Field 22 of /proc/PID/stat (when the process started), for a live process.
fn start_time(pid: i32) -> Option<String> {
    proc_stat(pid.into())
        .filter(|f| f[2] != "Z")
        .and_then(|f| f.get(21).cloned())
}

impl Drop for Detached {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill has no memory preconditions; the pid is still that process.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        kill_processes_mentioning(&self.sandbox_dir);
    }
}

/// `orchestrator run --daemon --config SANDBOX/orchestrator.json --pidfile PIDFILE`,
/// without waiting for anything but its return.
pub fn run_detached(sb: &Sandbox, pidfile: &Path) -> Output {
    run_with_timeout(detached_command(sb, pidfile), DEADLINE)
}

fn detached_command(sb: &Sandbox, pidfile: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--daemon", "--config"])
        .arg(sb.path("orchestrator.json"))
        .arg("--pidfile")
        .arg(pidfile);
    cmd
}

/// `run_detached`, which must succeed, and the daemon it started.
pub fn start_detached(sb: &Sandbox, pidfile: &Path) -> Detached {
    started_detached(sb, pidfile, run_detached(sb, pidfile))
}

/// `start_detached` with the local syslog (where a daemon without `log_dir` logs) at
/// `dev_log` (`$ORCHESTRATOR_DEV_LOG`).
pub fn start_detached_with_dev_log(sb: &Sandbox, pidfile: &Path, dev_log: &Path) -> Detached {
    let mut cmd = detached_command(sb, pidfile);
    cmd.env("ORCHESTRATOR_DEV_LOG", dev_log);
    started_detached(sb, pidfile, run_with_timeout(cmd, DEADLINE))
}

fn started_detached(sb: &Sandbox, pidfile: &Path, out: Output) -> Detached {
    assert_eq!(out.code, 0, "run --daemon: {}", out.stderr);
    Detached::from_pidfile(sb, pidfile).expect("run --daemon returned with its pid written")
}

/// The pid on the first line of a pid file.
pub fn first_line_pid(path: &std::path::Path) -> Option<i64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Alive and not a zombie.
pub fn alive(pid: i64) -> bool {
    proc_stat(pid).is_some_and(|f| f[2] != "Z")
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        if let Some(f) = proc_stat(pid) {
            if f[4] == pgid.to_string() && f[2] != "Z" {
                out.push(pid);
            }
        }
    }
    out
}

pub fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// SIGKILLs the process group of every process whose command line mentions `dir`
/// (never our own group).
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = format!("{}/", dir.to_string_lossy());
    let own_pgrp = unsafe { libc::getpgrp() } as i64;
    for _ in 0..3 {
        let mut groups = std::collections::BTreeSet::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
                continue;
            };
            if cmdline(pid).contains(&needle) {
                if let Some(f) = proc_stat(pid) {
                    if let Ok(g) = f[4].parse::<i64>() {
                        if g != own_pgrp && g > 1 {
                            groups.insert(g);
                        }
                    }
                }
                if proc_stat(pid).is_some_and(|f| f[4].parse::<i64>().ok() == Some(own_pgrp)) {
                    continue;
                }
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
        for g in &groups {
            unsafe {
                libc::killpg(*g as i32, libc::SIGKILL);
            }
        }
        if groups.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `Detached` guard kills its daemon, and never a process that took the pid after
/// the daemon exited (here: one whose start time is not the one recorded).
#[test]
fn a_detached_guard_kills_only_the_process_it_recorded() {
    let sb = Sandbox::new();
    let pidfile = sb.path("d.pid");
    let spawn = || {
        let child = Command::new("sleep").arg("1000").spawn().unwrap();
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        child
    };
    let mut ours = spawn();
    let guard = Detached::from_pidfile(&sb, &pidfile).unwrap();
    assert!(guard.alive());
    drop(guard);
    assert!(ours.wait().is_ok_and(|s| !s.success()), "killed on drop");

    let mut other = spawn();
    let mut guard = Detached::from_pidfile(&sb, &pidfile).unwrap();
    // As if the pid had been the daemon's, which exited, and was taken since.
    guard.started = Some("0".into());
    assert!(!guard.alive());
    drop(guard);
    assert!(alive(other.id().into()), "left alone");
    let _ = other.kill();
    let _ = other.wait();
}
