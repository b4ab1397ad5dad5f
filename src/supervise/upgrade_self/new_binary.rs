//! The new binary of an `upgrade-self`: opened once (StrictModes as root), asked
//! `--version` and `check` with the config in force, each run bounded, and finally
//! exec'd in place. Every run and the exec go through that one descriptor
//! (`execveat`), never its path again, so that what was checked is what runs.

use super::{FORMAT, RESUME_ENV};
use crate::process::helper::Helper;
use crate::process::inherit;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// The longest a check of the new binary may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `PATH --version` and `PATH check ...`: it must be an orchestrator that accepts
/// the config in force. PATH is opened once (`install::open_checked`: StrictModes as
/// root) and every run, the exec included, goes through that descriptor, so that what
/// was checked is what runs. The version it reports and the file, or why it is refused.
pub(super) fn check_binary(
    path: &Path,
    check_args: &[OsString],
) -> Result<(String, std::fs::File), String> {
    let file = crate::process::install::open_checked(path)?;
    let out = run_bounded(&file, path, &[OsString::from("--version")], true)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("orchestrator "))
        .filter(|v| out.status.success() && !v.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "{}: not an orchestrator (its --version says {:?})",
                path.display(),
                text.trim()
            )
        })?
        .trim()
        .to_string();
    let out = run_bounded(&file, path, &[OsString::from("--resume-format")], true)?;
    let format = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || format != FORMAT.to_string() {
        return Err(format!(
            "{}: orchestrator {version} cannot take over from this one (it reads state format {}, this one writes {FORMAT})",
            path.display(),
            if out.status.success() { format.as_str() } else { "none" }
        ));
    }
    let out = run_bounded(&file, path, check_args, false)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        return Err(format!(
            "{} refuses the current config ({}): {first}",
            path.display(),
            out.status
        ));
    }
    Ok((version, file))
}

/// An argv and an environment for `execveat`, built before any fork: the child of a
/// fork may not allocate.
struct ExecArgs {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`' heap buffers, owned by the same value and
// never changed or freed while it lives.
unsafe impl Send for ExecArgs {}
// SAFETY: as above; nothing is ever written through them.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    /// `argv`, and our environment without `RESUME_ENV` plus `extra` (a `K=V`).
    fn new<'a>(argv: impl IntoIterator<Item = &'a [u8]>, extra: Option<String>) -> ExecArgs {
        let mut strings: Vec<CString> = argv
            .into_iter()
            .filter_map(|a| CString::new(a).ok())
            .collect();
        let n = strings.len();
        strings.extend(
            std::env::vars_os()
                .filter(|(k, _)| k != RESUME_ENV)
                .filter_map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    CString::new(kv).ok()
                }),
        );
        strings.extend(extra.and_then(|e| CString::new(e).ok()));
        let ptrs = |from: &[CString]| -> Vec<*const libc::c_char> {
            from.iter()
                .map(|c| c.as_ptr())
                .chain([std::ptr::null()])
                .collect()
        };
        ExecArgs {
            argv: ptrs(&strings[..n]),
            envp: ptrs(&strings[n..]),
            _strings: strings,
        }
    }

    /// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: executes the file `fd` is open on,
    /// whatever its path names now. A raw call, no allocation: fit for a forked child.
    /// Returns only on failure.
    fn exec(&self, fd: RawFd) {
        // SAFETY: a valid descriptor, an empty C string, and NULL-terminated arrays of
        // C strings that live as long as self.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
    }
}

/// Whether the file starts with `#!`: a script's interpreter opens it again by its
/// `/dev/fd/N` name, so the descriptor must stay open across the exec.
fn is_script(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 2];
    file.read_at(&mut head, 0).is_ok_and(|n| n == 2) && &head == b"#!"
}

/// Runs the checked `file` (`path` is its name, for argv[0] and messages) with `args`,
/// no input and at most `CHECK_TIMEOUT`; its exit status, its stdout (when `stdout`,
/// else it goes to /dev/null) and its stderr, each read after the exit, so at most the
/// 64 KiB a pipe holds: enough for `--version` and an error, and `check`'s plan, which
/// can be longer, is not kept. The wait looks every 10 ms: this runs only during a
/// check, on its own thread.
fn run_bounded(
    file: &std::fs::File,
    path: &Path,
    args: &[OsString],
    stdout: bool,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let fd = file.as_raw_fd();
    let exec_args = ExecArgs::new(
        std::iter::once(path.as_os_str().as_bytes()).chain(args.iter().map(|a| a.as_bytes())),
        None,
    );
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    // SAFETY: in the child, after the fork: a fcntl and the execveat, raw calls with
    // what was prepared before; no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            // A script's interpreter reopens it as /dev/fd/N: left open across the exec.
            libc::fcntl(fd, libc::F_SETFD, 0);
            exec_args.exec(fd);
            Err(std::io::Error::last_os_error())
        });
    }
    // Registered with the orphan reaper, which would otherwise take its exit status.
    let mut helper =
        Helper::spawn(&mut cmd).map_err(|e| format!("{}: cannot run: {e}", path.display()))?;
    let child = &mut helper.child;
    let end = std::time::Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{}: did not answer in time", path.display()));
            }
        }
    };
    let mut out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut o) = child.stdout.take() {
        let _ = (&mut o).take(64 * 1024).read_to_end(&mut out.stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(64 * 1024).read_to_end(&mut out.stderr);
    }
    Ok(out)
}

/// execveat of the checked binary with our argv, our environment + RESUME_ENV=fd, and
/// the signals the daemon handles blocked, so that one arriving before the new image
/// has its handlers stays pending instead of killing it. Returns only on failure, with
/// the mask restored.
pub(super) fn exec(binary: &std::fs::File, argv: &[OsString], memfd: RawFd) -> std::io::Error {
    let args = ExecArgs::new(
        argv.iter().map(|a| a.as_bytes()),
        Some(format!("{RESUME_ENV}={memfd}")),
    );
    // A script (a wrapper in tests) is read again through its descriptor by its
    // interpreter; an orchestrator binary leaves it closed behind.
    let script = is_script(binary);
    if script {
        inherit::clear_cloexec(binary.as_raw_fd());
    }
    let old = crate::process::signals::block_handled();
    args.exec(binary.as_raw_fd());
    let err = std::io::Error::last_os_error();
    crate::process::signals::restore_mask(&old);
    if script {
        inherit::set_cloexec(binary.as_raw_fd());
    }
    err
}
