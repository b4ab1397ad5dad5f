//! `upgrade-self`, the old image's side: check the new binary off the loop, then hand
//! everything over and exec it in place, keeping the pid. Every child stays ours: they
//! were all cloned by this (main) thread, which the exec keeps, so no parent-death
//! signal fires.
//!
//! Until the exec nothing has changed that cannot be put back: a refusal or a failed
//! exec leaves the daemon running as it was, and the client gets the reason.

use super::new_binary::{check_binary, exec};
use super::{Carried, CarriedService, FORMAT};
use crate::common::protocol::Response;
use crate::control::instance::InstanceFds;
use crate::control::socket::{error_reply, Reply, Request};
use crate::output::handover::{self, Report};
use crate::process::inherit;
use crate::supervise::event::{Above, Event};
use crate::supervise::machine;
use crate::supervise::supervisor::{Outcome, Supervisor};
use crossbeam_channel::Sender;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// How long the output readers get to reach a line boundary, and the log writer to
/// write out what they delivered.
const STOP_BOUND: Duration = Duration::from_secs(2);

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
    pub(in crate::supervise) fn begin_upgrade_self(
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
    pub(in crate::supervise) fn upgrade_self(&mut self, checked: SelfChecked) -> Option<Outcome> {
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
        self.refuse_pending("orchestrator re-executed onto a new binary: ask again");
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
            gen: self.gen(),
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
