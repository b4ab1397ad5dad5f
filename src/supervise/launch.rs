//! Starting a run, around the one audited child set-up in `process/spawn.rs`: the
//! service's cgroup before the clone, the waiter and the output readers after it. The
//! result goes back to the
//! service's machine as `Spawned` or `SpawnFailed`; nothing here decides anything
//! about the lifecycle.

use super::machine::Event;
use super::persist;
use super::supervisor::Supervisor;
use crate::output::reader::{self, ReaderCtx};
use crate::output::sink::Stream;
use crate::process::cgroup::CgroupLimits;
use crate::process::pidfile::{self, Lineage, Owner};
use crate::process::sockets::{Bound, Passed};
use crate::process::waiter::Drain;
use crate::process::{procfs, spawn, waiter};
use std::sync::Arc;

/// A run cloned at start-up, its waiter and `Spawned` still to come.
pub(super) type Cloned = Result<spawn::Child, spawn::SpawnError>;
/// A run's output pipe and what its reader needs, to start once its machine knows it.
pub(super) type Reader = (std::os::fd::OwnedFd, ReaderCtx);

impl Supervisor {
    /// `pid_file`: what the file of run `gen` names, checked; a main process found is
    /// waited for like any other (as subreaper, it is our child once its launcher is
    /// gone), and the run's output is tagged with it from now on.
    pub(super) fn read_pid_file(&mut self, name: &str, gen: u64) -> Event {
        let Some(e) = self.services.get_mut(name) else {
            let result = Err("service removed".into());
            return Event::PidFile { gen, result };
        };
        let Some(path) = e.svc.spec().process.pid_file.clone() else {
            let result = Err("no pid_file configured".into());
            return Event::PidFile { gen, result };
        };
        let members = (!e.cgroup_dirs.is_empty()).then(|| self.cgroups.members(name));
        let launcher = e.svc.awaited_launcher().unwrap_or(0);
        let others = self.others_than(name, launcher);
        let owner = match &members {
            Some(m) => Owner::Cgroup(m),
            None => Owner::Lineage(Lineage::new(launcher, &others)),
        };
        // Bound: one small file read and a few /proc reads.
        let result = pidfile::main_process(&path, owner);
        let Some(e) = self.services.get_mut(name) else {
            let result = Err("service removed".into());
            return Event::PidFile { gen, result };
        };
        let result = result.and_then(|(pid, started)| {
            // Held for the run: the daemon may not be our child, and then only a pidfd
            // waits for it and signals it without ever reaching a reused pid. Opened
            // after the checks, it is that process's only if the pid still started
            // then. (None on a kernel without pidfds.)
            let fd = waiter::pidfd_open(pid).map(Arc::new);
            if procfs::stat(pid).is_none_or(|s| s.start_ticks != started) {
                return Err(format!("process {pid} exited while its pid file was read"));
            }
            Ok((pid, fd))
        });
        e.daemon = match &result {
            Ok((pid, Some(fd))) => Some((*pid, fd.clone())),
            _ => None,
        };
        let result = result.map(|(pid, _)| pid);
        if let Ok(pid) = result {
            self.reaper.claim(pid);
            let pidfd = e.daemon.as_ref().map(|(_, fd)| fd.clone());
            let waiter =
                waiter::spawn_waiter(pid, gen, e.name.clone(), self.tx.clone(), None, pidfd);
            if let Err(err) = waiter {
                spawn::signal_group(pid, libc::SIGKILL);
                let result = Err(format!("cannot create a thread: {err}"));
                return Event::PidFile { gen, result };
            }
            e.output_pid
                .store(pid, std::sync::atomic::Ordering::Relaxed);
            if self.persist.is_some() {
                e.group = persist::Group::of(pid);
            }
        }
        Event::PidFile { gen, result }
    }

    /// Spawns a run of `name` here, on the main thread: every child is cloned by this
    /// one thread, which lives as long as the orchestrator and survives `upgrade-self`'s
    /// exec, so a child's parent-death signal fires only when the orchestrator dies.
    /// `None` if the service is gone.
    pub(super) fn spawn(&mut self, name: &str) -> Option<Event> {
        let files = match self.prepare_spawn(name) {
            Ok(files) => files,
            Err(event) => return Some(event),
        };
        let e = self.services.get(name)?;
        let result = spawn::spawn(e.svc.spec(), &files.0, &files.1);
        drop(files);
        self.finish_spawn(name, result)
    }

    /// Start-up's spawn: the clone only. What follows (the waiter, `Spawned`) waits in
    /// `held` until every autostart service has been cloned (`finish_cloned`), so that
    /// thread creation holds up no service's start. `Some`: the failed spawn.
    pub(super) fn clone_early(&mut self, name: &str) -> Option<Event> {
        let files = match self.prepare_spawn(name) {
            Ok(files) => files,
            Err(event) => return Some(event),
        };
        let e = self.services.get(name)?;
        let result = spawn::spawn(e.svc.spec(), &files.0, &files.1);
        if let Ok(child) = &result {
            // Ours to reap from now on: no orphan scan may take it meanwhile.
            self.reaper.claim(child.pid);
        }
        self.held.cloned(name, result);
        None
    }

    /// The waiters and `Spawned` of the runs `clone_early` started, in their order.
    pub(super) fn finish_cloned(&mut self, cloned: Vec<(String, Cloned)>) {
        for (name, result) in cloned {
            if let Some(event) = self.finish_spawn(&name, result) {
                let _ = self.feed(&name, event);
            }
        }
    }

    /// Everything before the clone: the notify socket (if this service is the first to
    /// need it), the service's sockets and cgroups. `Err` is the failed spawn (a socket
    /// that cannot be bound, limits configured that cannot be applied).
    fn prepare_spawn(&mut self, name: &str) -> Result<(Vec<std::fs::File>, Passed), Event> {
        self.ensure_notify(name);
        let sockets = self.bind_sockets(name)?;
        self.prepare_cgroups(name).map(|files| (files, sockets))
    }

    /// The service's sockets: bound before its first run (as the orchestrator's user,
    /// before the child switches to the service's) and kept while they stay the same;
    /// sockets changed by a reload replace the old ones here, closed first so that the
    /// new ones may take the same address.
    fn bind_sockets(&mut self, name: &str) -> Result<Passed, Event> {
        let Some(e) = self.services.get_mut(name) else {
            return Ok(Passed::default());
        };
        let wanted = &e.svc.spec().process.sockets;
        if e.sockets.as_ref().is_some_and(|b| !b.matches(wanted)) {
            e.sockets = None;
        }
        if wanted.is_empty() {
            return Ok(Passed::default());
        }
        if e.sockets.is_none() {
            let bound = Bound::bind(name, wanted)
                .map_err(|error| Event::SpawnFailed { error, busy: false })?;
            e.sockets = Some(bound);
        }
        Ok(e.sockets.as_ref().map(Bound::passed).unwrap_or_default())
    }

    /// Closes sockets no longer wanted: changed by a reload, or of a service a reload
    /// disabled (removal drops the whole entry). Bounded: a comparison per service
    /// with sockets.
    pub(super) fn release_sockets(&mut self) {
        for e in self.services.values_mut() {
            let spec = e.svc.spec();
            if e.sockets
                .as_ref()
                .is_some_and(|b| !spec.enabled || !b.matches(&spec.process.sockets))
            {
                e.sockets = None;
            }
        }
    }

    fn prepare_cgroups(&mut self, name: &str) -> Result<Vec<std::fs::File>, Event> {
        let Some(e) = self.services.get_mut(name) else {
            return Ok(Vec::new());
        };
        if !self.cgroups.available() {
            return Ok(Vec::new());
        }
        let spec = e.svc.spec();
        let limits = CgroupLimits::of(spec);
        // Whatever a previous run left in the cgroup goes before the next one starts.
        if !e.cgroup_dirs.is_empty() {
            self.cgroups.kill(name);
        }
        match self.cgroups.prepare(name, limits) {
            Ok((files, dirs)) => {
                for d in dirs {
                    if !e.cgroup_dirs.contains(&d) {
                        e.cgroup_dirs.push(d);
                    }
                }
                Ok(files)
            }
            // Configured limits that cannot be applied make the spawn fail (and retry):
            // running unlimited would be a silent surprise.
            Err(err) if limits != CgroupLimits::default() => Err(Event::SpawnFailed {
                error: err,
                busy: false,
            }),
            Err(err) => {
                log::warn!("{name}: running without a cgroup: {err}");
                Ok(Vec::new())
            }
        }
    }

    /// Everything after the clone: the waiter and the readers. Returns the event for
    /// the machine; `None` if the service went away meanwhile (its process is killed).
    fn finish_spawn(
        &mut self,
        name: &str,
        result: Result<spawn::Child, spawn::SpawnError>,
    ) -> Option<Event> {
        // Taken first (the service's entry is borrowed from here on); a generation a
        // failed spawn leaves unused is never seen.
        let gen = self.next_gen();
        let Some(e) = self.services.get_mut(name) else {
            if let Ok(child) = result {
                spawn::signal_group(child.pid, libc::SIGKILL);
                spawn::reap(child.pid);
            }
            return None;
        };
        let child = match result {
            Ok(c) => c,
            Err(err) => {
                return Some(Event::SpawnFailed {
                    error: err.message,
                    busy: err.busy,
                })
            }
        };
        let pid = child.pid;
        if e.svc.spec().process.pid_file.is_some() {
            self.reaper.claim_launcher(pid);
        } else {
            self.reaper.claim(pid);
        }
        let drain = Arc::new(Drain::default());
        let waiter = waiter::spawn_waiter(
            pid,
            gen,
            e.name.clone(),
            self.tx.clone(),
            Some(drain.clone()),
            None,
        );
        if let Err(err) = waiter {
            // Without a waiter nobody would see this run end: undo it.
            spawn::signal_group(pid, libc::SIGKILL);
            spawn::reap(pid);
            self.reaper.reaped(pid);
            return Some(Event::SpawnFailed {
                error: format!("cannot create a thread: {err}"),
                busy: false,
            });
        }
        if self.persist.is_some() {
            e.group = persist::Group::of(pid);
        }
        e.oom_kills = self.cgroups.oom_kills(&e.name);
        e.output_pid = Arc::new(std::sync::atomic::AtomicI32::new(pid));
        if let Some(n) = &self.notify {
            n.register(pid, &e.name);
        }
        let max_line = self.cfg.settings.max_line_bytes;
        for (fd, stream) in [
            (child.stdout, Stream::Stdout),
            (child.stderr, Stream::Stderr),
        ] {
            let ctx = ReaderCtx {
                service: e.name.clone(),
                pid: e.output_pid.clone(),
                stream,
                max_line,
                sink: self.sink.clone(),
                ring: e.ring.clone(),
                counters: e.counters.clone(),
                drain: drain.clone(),
            };
            self.held.reader((fd, ctx));
        }
        Some(Event::Spawned { pid, gen })
    }

    /// Starts the output readers of the runs just spawned, once their machines have
    /// taken the `Spawned` event: a run's `started` record then comes before its first
    /// line in `logs` (its output waits in the pipe meanwhile).
    pub(super) fn start_readers(&self, readers: Vec<Reader>) {
        for (fd, ctx) in readers {
            let (service, pid) = (ctx.service.clone(), ctx.pid.clone());
            if let Err(err) = reader::spawn_reader(fd, ctx) {
                // The waiter will report the exit this causes.
                let pid = pid.load(std::sync::atomic::Ordering::Relaxed);
                log::error!("{service}: cannot create an output thread ({err}): killing pid {pid}");
                spawn::signal_group(pid, libc::SIGKILL);
            }
        }
    }
}
