//! `upgrade-self PATH` (docs/unattended.md), the old image's side: check the new binary
//! off the loop (it must say it is an orchestrator and accept the config in force), then
//! hand everything over and exec it in place, keeping the pid. Every child stays ours: they
//! were all cloned by this (main) thread, which the exec keeps, so no parent-death
//! signal fires. The new binary is opened once (StrictModes as root) and every check
//! run and the exec itself go through that descriptor (`execveat`), never its path
//! again, so that what was checked is what runs.
//!
//! What crosses the exec (`Carried`, JSON in a memfd whose number the new image finds
//! in `ORCHESTRATOR_RESUME_FD`): each machine with its deadlines, counters, history,
//! kept lines, cgroups and sockets; the ordered stops under way; every output pipe with
//! the unfinished end of its last line (`output::handover` stops the readers at a line
//! boundary); and the instance's lock and control socket. Waiters, readers and the
//! other threads are started anew by the new image (`resume.rs`).
//!
//! Until the exec nothing has changed that cannot be put back: a refusal or a failed
//! exec leaves the daemon running as it was, and the client gets the reason.

use super::event::{Above, Event};
use super::machine;
use super::supervisor::{Outcome, Supervisor};
use crate::common::decode::{self, field, Decode};
use crate::common::protocol::Response;
use crate::control::instance::InstanceFds;
use crate::control::socket::{error_reply, Reply, Request};
use crate::output::handover::{self, CarriedBatch, CarriedReader, Report};
use crate::process::helper::Helper;
use crate::process::inherit;
use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::Value;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable that tells a new image where the state is.
pub const RESUME_ENV: &str = "ORCHESTRATOR_RESUME_FD";
/// The format of `Carried`. A binary prints the one it reads with `--resume-format`;
/// one that does not (too old to take over) or reads another is refused.
pub const FORMAT: u32 = 1;
/// How long the output readers get to reach a line boundary, and the log writer to
/// write out what they delivered.
const STOP_BOUND: Duration = Duration::from_secs(2);
/// The longest a check of the new binary may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the new image takes over.
#[derive(Serialize)]
pub struct Carried {
    pub format: u32,
    pub from_version: String,
    pub gen: u64,
    pub unreaped: Vec<i32>,
    pub stops: Vec<String>,
    pub services: Vec<CarriedService>,
    pub readers: Vec<CarriedReader>,
    pub instance: InstanceFds,
    /// The sd_notify socket, if open: what services send during the exec waits in it.
    pub notify: Option<RawFd>,
    /// A duplicate of the `upgrade-self` client's connection: the new image answers it
    /// once it has taken over, so the client's exit says whether it did.
    pub reply: Option<RawFd>,
}

#[derive(Serialize)]
pub struct CarriedService {
    pub name: String,
    pub machine: machine::carry::Carried,
    pub ring: Vec<CarriedBatch>,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    pub file_unwritten: u64,
    pub cgroup_dirs: Vec<PathBuf>,
    pub output_pid: i32,
    pub group: Option<(i32, u64)>,
    pub sockets: Option<Vec<RawFd>>,
    pub upgrade: Option<serde_json::Value>,
}

impl Decode for Carried {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Carried {
            format: field(v, "format")?,
            from_version: field(v, "from_version")?,
            gen: field(v, "gen")?,
            unreaped: field(v, "unreaped")?,
            stops: field(v, "stops")?,
            services: field(v, "services")?,
            readers: field(v, "readers")?,
            instance: field(v, "instance")?,
            notify: field(v, "notify")?,
            reply: field(v, "reply")?,
        })
    }
}

impl Decode for CarriedService {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(CarriedService {
            name: field(v, "name")?,
            machine: field(v, "machine")?,
            ring: field(v, "ring")?,
            stdout_lines: field(v, "stdout_lines")?,
            stderr_lines: field(v, "stderr_lines")?,
            file_unwritten: field(v, "file_unwritten")?,
            cgroup_dirs: field(v, "cgroup_dirs")?,
            output_pid: field(v, "output_pid")?,
            group: field(v, "group")?,
            sockets: field(v, "sockets")?,
            upgrade: field(v, "upgrade")?,
        })
    }
}

/// The checks' verdict, back on the loop.
pub struct SelfChecked {
    path: PathBuf,
    /// The version, and the binary as opened and checked: what is executed.
    result: Result<(String, std::fs::File), String>,
    reply: Sender<Reply>,
    /// The client's connection, answered from the new image.
    conn: Option<RawFd>,
}

impl Supervisor {
    /// `upgrade-self PATH`: refused at once when it cannot be done now; otherwise the
    /// binary is checked on a thread and the answer comes with `SelfChecked`.
    pub(super) fn begin_upgrade_self(
        &mut self,
        req: &Request,
        reply: Sender<Reply>,
    ) -> Result<(), String> {
        let path = PathBuf::from(req.path.as_deref().ok_or("missing path")?);
        self.refuse_upgrade_self()?;
        // Its checks would end with the first one's exec, and its client unanswered.
        if self.checking_self {
            return Err("another upgrade-self is under way".into());
        }
        let mut args: Vec<OsString> = vec!["check".into()];
        if let Some(p) = &self.cfg.path {
            args.extend(["--config".into(), p.clone().into_os_string()]);
        }
        if let Some(d) = &self.overrides.services_dir {
            args.extend(["--services-dir".into(), d.clone().into_os_string()]);
        }
        if let Some(s) = &self.overrides.socket {
            args.extend(["--socket".into(), s.clone().into_os_string()]);
        }
        let tx = self.tx.clone();
        let conn = req.conn;
        std::thread::Builder::new()
            .name("upgrade-self".into())
            .spawn(move || {
                let result = check_binary(&path, &args);
                let _ = tx.send(Event::Above(Above::SelfChecked(SelfChecked {
                    path,
                    result,
                    reply,
                    conn,
                })));
            })
            .map(|_| self.checking_self = true)
            .map_err(|e| format!("cannot create a thread: {e}"))
    }

    /// What stops a handover now.
    fn refuse_upgrade_self(&self) -> Result<(), String> {
        if self.shutdown.is_some() {
            return Err("orchestrator is shutting down".into());
        }
        if let Some(e) = self.services.values().find(|e| e.upgrade.busy()) {
            return Err(format!(
                "{}: an upgrade is installing its binary; try again",
                e.name
            ));
        }
        if self.instance_fds().is_none() {
            return Err("not supported in this mode".into());
        }
        Ok(())
    }

    /// The new binary passed (or failed) its checks: hand over and exec, or answer why
    /// not. Returns only if the exec did not happen. Until then another `upgrade-self`
    /// stays refused: one queued behind these checks would otherwise start checks of its
    /// own (children cloned while the handed-over descriptors are open across exec) and
    /// lose its client with the exec.
    pub(super) fn upgrade_self(&mut self, checked: SelfChecked) -> Option<Outcome> {
        let outcome = self.hand_over(checked);
        self.checking_self = false;
        outcome
    }

    fn hand_over(&mut self, checked: SelfChecked) -> Option<Outcome> {
        let SelfChecked {
            path,
            result,
            reply,
            conn,
        } = checked;
        let (version, binary) = match result.and_then(|v| self.refuse_upgrade_self().map(|()| v)) {
            Ok(v) => v,
            Err(msg) => {
                let _ = reply.try_send(error_reply(msg).into());
                return None;
            }
        };
        if let Err(msg) = self.config_unchanged() {
            let _ = reply.try_send(error_reply(msg).into());
            return None;
        }
        // No connection is accepted from here until the exec: a client that comes now
        // waits in the listener's backlog for the new image (or for this one again,
        // should the handover be called off, which drops the hold).
        let _held = crate::control::pause::hold(Duration::from_millis(500));
        // What is queued already is taken now: an exit, a signal or a request would
        // otherwise be lost with the channel.
        while let Ok(ev) = self.rx_try_recv() {
            if let Event::Above(Above::SelfChecked(other)) = ev {
                let msg = "another upgrade-self is under way";
                let _ = other.reply.try_send(error_reply(msg).into());
                continue;
            }
            if let Some(outcome) = self.handle_event(ev) {
                let _ = reply.try_send(error_reply("orchestrator is exiting").into());
                return Some(outcome);
            }
        }
        if let Err(msg) = self.refuse_upgrade_self() {
            let _ = reply.try_send(error_reply(msg).into());
            return None;
        }
        // From here the loop is paused until the new image runs it (the `took over`
        // record): `make bench` measures between the two.
        log::info!(
            "upgrade-self: handing over to {} (orchestrator {version})",
            path.display()
        );
        let reports = match handover::stop_readers(STOP_BOUND) {
            Ok(r) => r,
            Err(r) => {
                handover::resume(r);
                let msg = "output readers did not stop in time (is the log writer blocked?)";
                let _ = reply.try_send(error_reply(msg).into());
                return None;
            }
        };
        // The notify reader too: no slot changes from here, and what services send
        // stays in the socket, which the new image reads on.
        if self.notify.as_ref().is_some_and(|n| !n.park(STOP_BOUND)) {
            handover::resume(reports);
            let msg = "the notify reader did not stop in time";
            let _ = reply.try_send(error_reply(msg).into());
            return None;
        }
        // What it took before it stopped (a READY=1 whose wake-up is still queued)
        // goes to the machines now, while they can carry it.
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in &names {
            self.notified(name);
        }
        if !self.sink.flush(STOP_BOUND) {
            handover::resume(reports);
            let msg = "the log writer did not write out in time";
            let _ = reply.try_send(error_reply(msg).into());
            return None;
        }
        let Some(instance) = self.instance_fds().cloned() else {
            handover::resume(reports);
            return None;
        };
        let argv = instance.argv.clone();
        let mut carried = self.carry(&reports, instance);
        // The client's connection, duplicated (without close-on-exec) while its thread
        // still holds it: the thread lets go, the new image answers.
        carried.reply = conn.and_then(|fd| {
            // SAFETY: dup of a descriptor the connection's thread keeps open meanwhile.
            let d = unsafe { libc::dup(fd) };
            (d >= 0).then_some(d)
        });
        let memfd = match write_memfd(&carried) {
            Ok(fd) => fd,
            Err(e) => {
                self.uncarry(&carried);
                close_reply(&carried);
                handover::resume(reports);
                let msg = format!("cannot hand the state over: {e}");
                let _ = reply.try_send(error_reply(msg).into());
                return None;
            }
        };
        for p in std::mem::take(&mut self.pending) {
            let msg = "orchestrator re-executed onto a new binary: ask again";
            let _ = p.reply.try_send(error_reply(msg).into());
        }
        for e in self.services.values() {
            if let Ok(mut ring) = e.ring.lock() {
                ring.end_followers();
            }
        }
        crate::control::socket::wait_followers(Duration::from_millis(500));
        let answer = match carried.reply {
            Some(_) => Reply::Handed,
            None => took_over(version).into(),
        };
        let _ = reply.try_send(answer);
        crate::control::socket::drain(Duration::from_secs(1));
        self.sink.flush(STOP_BOUND);
        let cancelled = self.cancel_exec_probes();
        // Since the queue was emptied the signals thread has gone on forwarding signals (a
        // SIGTERM sent the moment `upgrade-self` answered): raised again on this thread
        // with the handled signals blocked, each stays pending across the exec and
        // reaches the new image once its handlers are in.
        let mask = crate::process::signals::block_handled();
        let late = self.keep_late_signals();
        let err = exec(&binary, &argv, memfd.as_raw_fd());
        // Still here: the exec failed. Everything is as it was but the checks killed;
        // the signals kept are delivered now, the rest of the queue is put back.
        crate::process::signals::restore_mask(&mask);
        for ev in late {
            let _ = self.tx.send(ev);
        }
        drop(memfd);
        self.uncarry(&carried);
        handover::resume(reports);
        for name in cancelled {
            let _ = self.feed(&name, machine::Event::ProbeSkipped);
        }
        let msg = format!("cannot execute {}: {err}; carrying on", path.display());
        log::error!("upgrade-self: {msg}");
        if let Some(fd) = carried.reply {
            answer_on(fd, &error_reply(msg));
        }
        None
    }

    /// Empties the queue with the handled signals blocked on this thread: each signal
    /// is raised again on this thread, to stay pending; the other events are returned,
    /// for the old image to deal with should the exec fail (the new image's waiters see
    /// the exits again; a request's connection ends with the exec).
    fn keep_late_signals(&mut self) -> Vec<Event> {
        let mut rest = Vec::new();
        while let Ok(ev) = self.rx_try_recv() {
            match ev {
                // SAFETY: raise has no memory preconditions.
                Event::Signal(sig) => unsafe {
                    libc::raise(sig);
                },
                other => rest.push(other),
            }
        }
        rest
    }

    /// Kills and reaps the `exec` checks in flight (the new image runs them again, as
    /// the machines say a check is in flight); the services they were for.
    fn cancel_exec_probes(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        for (name, e) in &mut self.services {
            if let Some(p) = e.probe.take() {
                crate::process::spawn::signal_group(p.pid, libc::SIGKILL);
                crate::process::spawn::reap(p.pid);
                self.reaper.reaped(p.pid);
                names.push(name.clone());
            }
        }
        names
    }

    /// The state as it crosses the exec; every descriptor in it is left open across it.
    fn carry(&self, reports: &[Report], instance: InstanceFds) -> Carried {
        let services = self
            .services
            .values()
            .map(|e| CarriedService {
                name: e.name.to_string(),
                machine: e.svc.carry(),
                ring: e.ring.lock().map(|r| r.carry()).unwrap_or_default(),
                stdout_lines: load(&e.counters.stdout_lines),
                stderr_lines: load(&e.counters.stderr_lines),
                file_unwritten: load(&e.counters.file_unwritten),
                cgroup_dirs: e.cgroup_dirs.clone(),
                output_pid: e.output_pid.load(std::sync::atomic::Ordering::Relaxed),
                group: e.group.map(|g| (g.pgid, g.start_ticks)),
                sockets: e.sockets.as_ref().map(|b| b.raw_fds()),
                upgrade: e.upgrade.carry(),
            })
            .collect::<Vec<_>>();
        let carried = Carried {
            format: FORMAT,
            from_version: env!("CARGO_PKG_VERSION").into(),
            gen: self.gen,
            unreaped: self.reaper.unreaped().collect(),
            stops: self.stops.names(),
            services,
            readers: reports.iter().map(Report::describe).collect(),
            instance,
            notify: self.notify.as_ref().map(|n| n.raw_fd()),
            reply: None,
        };
        for fd in carried_fds(&carried) {
            inherit::clear_cloexec(fd);
        }
        carried
    }

    /// Undoes `carry`'s descriptor flags after a failed exec.
    fn uncarry(&self, carried: &Carried) {
        for fd in carried_fds(carried) {
            inherit::set_cloexec(fd);
        }
    }

    /// The file as it is now must give the configuration in force: the new image
    /// plans from it, and must not run a service differently from how it runs.
    fn config_unchanged(&self) -> Result<(), String> {
        let changed = "the config file changed since it was loaded: reload first";
        let cfg = crate::config::load(&self.overrides).map_err(|e| e.to_string())?;
        if cfg != self.cfg {
            return Err(changed.into());
        }
        let plan = crate::config::discovery::plan(&cfg).map_err(|e| e.join("; "))?;
        let same = plan.services.len() == self.services.len()
            && plan.services.iter().all(|(n, spec)| {
                self.services
                    .get(n)
                    .is_some_and(|e| same_spec(e.svc.spec(), spec))
            });
        if !same {
            return Err(changed.into());
        }
        Ok(())
    }
}

/// Equal but for what is looked at again before each start anyway (is the binary
/// there and executable).
fn same_spec(
    a: &crate::config::discovery::ServiceSpec,
    b: &crate::config::discovery::ServiceSpec,
) -> bool {
    let mut b = b.clone();
    b.binary_problem = a.binary_problem.clone();
    *a == b
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

/// The answer to `upgrade-self` from the image that runs now.
pub fn took_over(version: impl Into<String>) -> Response {
    Response {
        pid: Some(std::process::id()),
        version: Some(version.into()),
        ..Response::ok()
    }
}

/// Writes `answer` as the reply line on connection `fd` (a duplicate handed over), and
/// closes it. Bounded: the client is waiting for it, and a full socket buffer fails
/// the write (non-blocking) rather than hold the loop.
pub fn answer_on(fd: RawFd, answer: &Response) {
    use std::io::Write;
    let Some(fd) = inherit::adopt(fd) else { return };
    let stream = std::os::unix::net::UnixStream::from(fd);
    let _ = stream.set_nonblocking(true);
    let _ = writeln!(&stream, "{answer}");
}

/// Closes the handed-over connection of a handover called off before the answer.
fn close_reply(c: &Carried) {
    if let Some(fd) = c.reply.and_then(inherit::adopt) {
        drop(fd);
    }
}

fn carried_fds(c: &Carried) -> Vec<RawFd> {
    let mut fds = vec![c.instance.lock, c.instance.listener];
    fds.extend(c.reply);
    fds.extend(c.instance.pidfile.as_ref().map(|p| p.1));
    fds.extend(c.notify);
    fds.extend(c.readers.iter().map(|r| r.fd));
    for s in &c.services {
        fds.extend(s.sockets.iter().flatten());
    }
    fds
}

/// Runs `PATH --version` and `PATH check ...`: it must be an orchestrator that accepts
/// the config in force. PATH is opened once (`install::open_checked`: StrictModes as
/// root) and every run, the exec included, goes through that descriptor, so that what
/// was checked is what runs. The version it reports and the file, or why it is refused.
fn check_binary(path: &Path, check_args: &[OsString]) -> Result<(String, std::fs::File), String> {
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

/// The state, in a memfd left open across exec.
fn write_memfd(c: &Carried) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::{Seek, Write};
    let name = CString::new("orchestrator-state").unwrap_or_default();
    // SAFETY: name is a valid C string; no MFD_CLOEXEC: the new image reads it.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours alone.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // To a Vec, as every other serialisation here: one copy of the serialiser's code.
    f.write_all(&serde_json::to_vec(c)?)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(f.into())
}

/// execveat of the checked binary with our argv, our environment + RESUME_ENV=fd, and
/// the signals the daemon handles blocked, so that one arriving before the new image
/// has its handlers stays pending instead of killing it. Returns only on failure, with
/// the mask restored.
fn exec(binary: &std::fs::File, argv: &[OsString], memfd: RawFd) -> std::io::Error {
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
