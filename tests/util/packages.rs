//! Third-party programs for the tests that run real daemons: found on the box, or
//! installed from Debian packages on first use (CI runs as root and reaches the
//! registry). It only ever installs; it never removes or upgrades what is there.
//!
//! Installs are serialised twice: a mutex for the test threads of this process, and an
//! flock on a file in /tmp for other test processes, since apt refuses to run twice at
//! once (it would fail rather than wait). Each answer is remembered, so a package that
//! cannot be had costs one attempt per test process, not one per test.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Per package: the program's path, or why it cannot be had.
static KNOWN: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
/// Whether `apt-get update` already ran in this process.
static UPDATED: Mutex<bool> = Mutex::new(false);

/// `program` (an absolute path) when it exists, after installing Debian `package` if it
/// does not; otherwise why it cannot be had, for the test to print as its skip reason.
pub fn ensure(package: &str, program: &str) -> Result<PathBuf, String> {
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{package} {program}");
    if let Some(answer) = known.get(&key) {
        return answer.clone();
    }
    let answer = if Path::new(program).exists() {
        Ok(PathBuf::from(program))
    } else {
        install(package).and_then(|()| {
            if Path::new(program).exists() {
                Ok(PathBuf::from(program))
            } else {
                Err(format!(
                    "package {package} installed, but {program} is missing"
                ))
            }
        })
    };
    known.insert(key, answer.clone());
    answer
}

/// Runs `test` with the program, or prints why the test is skipped.
pub fn with(package: &str, program: &str, test: impl FnOnce(PathBuf)) {
    match ensure(package, program) {
        Ok(path) => test(path),
        Err(why) => eprintln!("skipped: {why}"),
    }
}

fn install(package: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "{package} is not installed and installing needs root"
        ));
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "{package} is not installed and there is no apt-get"
        ));
    }
    let _lock = FileLock::take("/tmp/orchestrator-tests-apt.lock")?;
    if apt(&["install", "-y", "--no-install-recommends", package]).is_ok() {
        return Ok(());
    }
    // Package lists missing or stale (a fresh container): refresh them once.
    let mut updated = UPDATED.lock().unwrap_or_else(|e| e.into_inner());
    if !*updated {
        apt(&["update"]).map_err(|e| format!("{package}: apt-get update failed: {e}"))?;
        *updated = true;
    }
    apt(&["install", "-y", "--no-install-recommends", package])
        .map_err(|e| format!("{package} cannot be installed: {e}"))
}

/// One apt-get run, non-interactive; its last lines of output on failure.
fn apt(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(["-q", "-o", "DPkg::Lock::Timeout=120"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    Err(format!(
        "apt-get {} exited with {}: {}",
        args.join(" "),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// An exclusive flock, released when dropped (with the file).
struct FileLock(std::fs::File);

impl FileLock {
    fn take(path: &str) -> Result<FileLock, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        loop {
            // SAFETY: a valid open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot lock {path}: {e}"));
            }
        }
    }
}
