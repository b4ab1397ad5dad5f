//! `upgrade-self`, the new image's side (docs/unattended.md): take the state the old image
//! left in a memfd and carry on from it. Each machine is put back with its deadlines, each
//! run that has not exited gets its waiter again, and each output pipe its reader,
//! starting with the unfinished end of the line the old reader had read. Nothing is
//! spawned or stopped here: the machines decide, as before the exec.

use super::{Carried, RESUME_ENV};
use crate::common::decode::Decode;
use crate::output::handover;
use crate::output::reader::ReaderCtx;
use crate::output::sink::Stream;
use crate::process::sockets::Bound;
use crate::process::waiter::Drain;
use crate::process::{spawn, waiter};
use crate::supervise::machine::Service;
use crate::supervise::supervisor::Supervisor;
use crate::supervise::upgrades::steps::Upgrades;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The state a previous image handed over, if this process is one's successor: `None`
/// for a plain start. Call first thing, while single-threaded (it clears the variable).
pub fn take_carried() -> Option<Result<Carried, String>> {
    let v = std::env::var_os(RESUME_ENV)?;
    std::env::remove_var(RESUME_ENV);
    let fd: i32 = match v.to_str().and_then(|s| s.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => return Some(Err(format!("{RESUME_ENV}: not a descriptor: {v:?}"))),
    };
    let Some(fd) = crate::process::inherit::adopt(fd) else {
        return Some(Err(format!("{RESUME_ENV}: descriptor {fd} is not open")));
    };
    let mut f = std::fs::File::from(fd);
    let mut text = String::new();
    if let Err(e) = f.read_to_string(&mut text) {
        return Some(Err(format!("cannot read the handed-over state: {e}")));
    }
    Some(
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| Carried::decode(&v))
            .map_err(|e| format!("the handed-over state is not readable: {e}"))
            .and_then(|c| match c.format {
                super::FORMAT => Ok(c),
                n => Err(format!(
                    "the handed-over state has format {n}; this version reads {}",
                    super::FORMAT
                )),
            }),
    )
}

impl Supervisor {
    /// Carries on from `c` instead of `start_all`.
    pub fn resume(&mut self, c: Carried) {
        let now = Instant::now();
        let c_reply = c.reply;
        self.continue_gen(c.gen);
        self.adopt_running();
        let unreaped = c.unreaped.into_iter().collect();
        for name in &c.stops {
            self.stops.request(name);
        }
        let (mut drains, mut runs) = (HashMap::new(), 0);
        for s in c.services {
            // The OOM kill count is read afresh: a kill during the handover itself
            // reads as the SIGKILL it is.
            let oom_kills = self.cgroups.oom_kills(&s.name);
            let Some(e) = self.services.get_mut(&s.name) else {
                // Cannot happen (the config was checked unchanged): a run of a service
                // this image does not know is not left without supervision.
                if let Some(pid) = s.output_pid.checked_abs().filter(|p| *p > 0) {
                    log::error!("{}: unknown after upgrade-self: killing pid {pid}", s.name);
                    spawn::signal_group(pid, libc::SIGKILL);
                }
                continue;
            };
            let spec = e.svc.spec().clone();
            e.svc = Service::resume(spec, s.machine, now);
            if let Ok(mut ring) = e.ring.lock() {
                ring.restore(&e.name, &e.counters.file_unwritten, s.ring);
            }
            e.counters
                .stdout_lines
                .store(s.stdout_lines, Ordering::Relaxed);
            e.counters
                .stderr_lines
                .store(s.stderr_lines, Ordering::Relaxed);
            e.counters
                .file_unwritten
                .store(s.file_unwritten, Ordering::Relaxed);
            e.cgroup_dirs = s.cgroup_dirs;
            e.oom_kills = oom_kills;
            e.output_pid.store(s.output_pid, Ordering::Relaxed);
            e.group = s
                .group
                .map(|(pgid, start_ticks)| crate::supervise::persist::Group { pgid, start_ticks });
            let configs = &e.svc.spec().process.sockets;
            e.sockets = s
                .sockets
                .and_then(|fds| Bound::adopt(&s.name, configs, &fds));
            if let Some(u) = &s.upgrade {
                e.upgrade = Upgrades::resume(u);
            }
            if let Some((pid, gen)) = e.svc.unexited_run() {
                runs += 1;
                // A daemon named by a pid file gets its pidfd again (the old image's
                // went with the exec); the pid is still unreaped, so still that process
                // unless, not our child, it exited during the handover.
                let daemon = e.svc.spec().process.pid_file.is_some() && e.svc.launcher().is_none();
                e.daemon = daemon
                    .then(|| waiter::pidfd_open(pid))
                    .flatten()
                    .map(|fd| (pid, Arc::new(fd)));
                let drain = Arc::new(Drain::default());
                let started = waiter::spawn_waiter(
                    pid,
                    gen,
                    e.name.clone(),
                    self.tx.clone(),
                    Some(drain.clone()),
                    e.daemon.as_ref().map(|(_, fd)| fd.clone()),
                );
                if let Err(err) = started {
                    log::error!(
                        "{}: cannot create a thread ({err}): killing pid {pid}",
                        s.name
                    );
                    spawn::signal_group(pid, libc::SIGKILL);
                }
                drains.insert((s.name.clone(), pid), drain);
            }
        }
        // Pids not reaped yet that no run claims (a stale run whose exit the old image
        // saw after its last look at the channel): waited for under no generation, so
        // the loop reaps them as no one's.
        // A `pid_file` launcher whose file is awaited has exited and is claimed all the
        // same: it stays unreaped (its pid is its lineage's session and group, and must
        // not be reused) until its machine says `Reap`.
        let claimed: std::collections::HashSet<i32> = self
            .services
            .values()
            .flat_map(|e| [e.svc.run_pid(), e.svc.launcher()])
            .flatten()
            .collect();
        let launchers = self
            .services
            .values()
            .filter_map(|e| e.svc.launcher())
            .collect();
        self.reaper.adopt(unreaped, launchers);
        for pid in self.reaper.unreaped().filter(|p| !claimed.contains(p)) {
            let _ = waiter::spawn_waiter(pid, 0, Arc::from(""), self.tx.clone(), None, None);
        }
        // The notify socket handed over, with what was sent to it meanwhile (else it
        // is bound again at the same path); the runs are known by it.
        if let Some(fd) = c.notify.and_then(crate::process::inherit::adopt) {
            self.adopt_notify(fd);
        }
        let live: Vec<(String, i32)> = self
            .services
            .iter()
            .filter_map(|(n, e)| e.svc.unexited_run().map(|(pid, _)| (n.clone(), pid)))
            .collect();
        for (name, pid) in live {
            if self.services[&name].svc.spec().process.ready_notify
                || self.services[&name].svc.spec().process.watchdog.is_some()
            {
                self.ensure_notify(&name);
                if let (Some(n), Some(e)) = (&self.notify, self.services.get(&name)) {
                    n.register(pid, &e.name);
                }
            }
        }
        let pipes = c.readers.len();
        for r in c.readers {
            let Some(fd) = r.take_fd() else { continue };
            let Some(e) = self.services.get(&r.service) else {
                continue;
            };
            let current = e.output_pid.load(Ordering::Relaxed) == r.pid;
            let pid = match current {
                true => e.output_pid.clone(),
                false => Arc::new(std::sync::atomic::AtomicI32::new(r.pid)),
            };
            let drain = drains
                .get(&(r.service.clone(), r.pid))
                .cloned()
                .unwrap_or_default();
            let ctx = ReaderCtx {
                service: e.name.clone(),
                pid,
                stream: if r.stderr {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                max_line: self.cfg.settings.max_line_bytes,
                sink: self.sink.clone(),
                ring: e.ring.clone(),
                counters: e.counters.clone(),
                drain,
            };
            handover::restart(fd, ctx, r.carry);
        }
        log::info!(
            "upgrade-self: took over from orchestrator {}: {}, {}, {}",
            c.from_version,
            crate::output::count(self.services.len(), "service", "services"),
            crate::output::count(runs, "running process", "running processes"),
            crate::output::count(pipes, "output pipe", "output pipes"),
        );
        self.settle();
        // The `upgrade-self` client learns it is done only now, from us.
        if let Some(fd) = c_reply {
            let answer = super::took_over(env!("CARGO_PKG_VERSION"));
            super::answer_on(fd, &answer);
        }
    }
}
