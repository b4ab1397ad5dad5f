//! The main loop (SPEC 4, 5, 10): owns the map of services, sleeps in one blocking
//! receive until the next event or the earliest deadline, feeds events to the pure
//! state machines and carries out the actions they return.
//!
//! Only this thread spawns, signals and reaps. Spawning here (the main thread, which
//! lives as long as the process) is what makes PR_SET_PDEATHSIG reliable; reaping only
//! here, after the waiter reported the exit, is what keeps a pid from being signalled
//! after it was reused. It must never block on anything but its channel: logging is
//! non-blocking and control replies go through bounded(1) channels nobody else fills.

use crate::config::discovery::{self, Plan, ServiceSpec};
use crate::config::{self, Config, Overrides};
use crate::control::metrics;
use crate::control::socket::{error_reply, Reply, Request};
use crate::health::probe::{Job, Prober};
use crate::output::reader::{self, Counters, ReaderCtx, Ring};
use crate::output::sink::{EventRecord, Sink, Stream};
use crate::output::timefmt;
use crate::process::cgroup::{CgroupLimits, Cgroups};
use crate::process::procfs;
use crate::process::spawn;
use crate::process::waiter;
use crate::supervise::event::Event;
use crate::supervise::machine::{Action, AfterStop, Now, Service, State};
use crate::supervise::persist;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

struct Entry {
    svc: Service,
    name: Arc<str>,
    ring: Arc<Mutex<Ring>>,
    counters: Arc<Counters>,
    /// Spawn requested, held back until every `depends_on` is running.
    waiting: bool,
    /// `stop` asked for, held back until every dependent that runs has stopped.
    stop_requested: bool,
    /// Its cgroup directories (created at spawn, removed once the service is done);
    /// empty when it has none.
    cgroup_dirs: Vec<PathBuf>,
    /// An `exec` health check in progress.
    probe: Option<ProbeProc>,
    /// The current run's process group, for `state_dir`.
    group: Option<persist::Group>,
}

/// A running `exec` health check.
struct ProbeProc {
    pid: i32,
    /// The run it checks.
    run_gen: u64,
    deadline: Instant,
    timed_out: bool,
}

impl Entry {
    fn new(spec: ServiceSpec) -> Entry {
        Entry {
            name: spec.name.as_str().into(),
            svc: Service::new(spec),
            ring: Arc::default(),
            counters: Arc::default(),
            waiting: false,
            stop_requested: false,
            cgroup_dirs: Vec::new(),
            probe: None,
            group: None,
        }
    }
}

/// A control request answered once a service has finished stopping.
struct PendingReply {
    service: String,
    reply: Sender<Reply>,
}

/// (size, mtime seconds, mtime nanoseconds, inode): a file changed if any differs.
type FileVersion = (u64, i64, i64, u64);

struct Shutdown {
    deadline: Instant,
    killed: bool,
}

pub struct Supervisor {
    overrides: Overrides,
    cfg: Config,
    services: BTreeMap<String, Entry>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    sink: Sink,
    rng: fastrand::Rng,
    gen: u64,
    shutdown: Option<Shutdown>,
    /// Main pids spawned and not yet reaped: the orphan reaper must leave them alone.
    unreaped: HashSet<i32>,
    /// Reap orphaned descendants on SIGCHLD (PID 1 or `subreaper`).
    reap_orphans: bool,
    pending: Vec<PendingReply>,
    started: Instant,
    cgroups: Cgroups,
    /// SHA-256 of each binary, keyed by path, valid while size, mtime and inode match.
    binary_ids: HashMap<PathBuf, (FileVersion, String)>,
    prober: Prober,
    pool: spawn::Pool,
    /// Process groups with live members, scanned at most once per loop iteration.
    live_groups: Option<HashSet<i32>>,
    persist: Option<Persist>,
}

/// `state_dir`: the file is rewritten after runs start or end, at most once per
/// SAVE_INTERVAL.
struct Persist {
    dir: Arc<persist::StateDir>,
    dirty: bool,
    saved_at: Option<Instant>,
}

/// How the loop ended.
pub enum Outcome {
    Clean,
    Forced,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        overrides: Overrides,
        cfg: Config,
        plan: Plan,
        tx: Sender<Event>,
        rx: Receiver<Event>,
        sink: Sink,
        reap_orphans: bool,
        cgroups: Cgroups,
        state_dir: Option<persist::StateDir>,
    ) -> Supervisor {
        let prober = Prober::new(tx.clone());
        let services = plan
            .services
            .into_values()
            .map(|spec| (spec.name.clone(), Entry::new(spec)))
            .collect();
        Supervisor {
            overrides,
            cfg,
            services,
            tx,
            rx,
            sink,
            rng: fastrand::Rng::new(),
            gen: 0,
            shutdown: None,
            unreaped: HashSet::new(),
            reap_orphans,
            pending: Vec::new(),
            started: Instant::now(),
            cgroups,
            binary_ids: HashMap::new(),
            prober,
            pool: spawn::Pool::new(),
            live_groups: None,
            persist: state_dir.map(|dir| Persist {
                dir: Arc::new(dir),
                dirty: false,
                saved_at: None,
            }),
        }
    }

    /// Carries on the restart counts and run histories a predecessor saved. A run that
    /// was live then ended with that predecessor (its group was killed at start-up).
    pub fn restore(&mut self, saved: persist::Saved) {
        let now_ms = timefmt::unix_ms(SystemTime::now());
        for (name, s) in saved.services {
            let Some(e) = self.services.get_mut(&name) else {
                continue;
            };
            e.svc.restarts = s.restarts;
            let skip = s
                .history
                .len()
                .saturating_sub(crate::supervise::machine::HISTORY_LEN);
            e.svc.history = s
                .history
                .into_iter()
                .skip(skip)
                .map(|mut h| {
                    h.exited_ms.get_or_insert(now_ms);
                    h
                })
                .collect();
        }
        self.mark_state_dirty();
    }

    fn mark_state_dirty(&mut self) {
        if let Some(p) = &mut self.persist {
            p.dirty = true;
        }
    }

    /// When the state file is next due to be written, if it has changes.
    fn state_deadline(&self) -> Option<Instant> {
        let p = self.persist.as_ref().filter(|p| p.dirty)?;
        Some(
            p.saved_at
                .map_or_else(Instant::now, |t| t + persist::SAVE_INTERVAL),
        )
    }

    /// Has the state file written if it has changes and is due; with `force` (at exit),
    /// at once (the log writer's final flush then waits for it).
    fn save_state(&mut self, force: bool) {
        let due = self.state_deadline().is_some_and(|d| d <= Instant::now());
        if !(due || force) {
            return;
        }
        let Some(p) = &self.persist else { return };
        let mut saved = persist::Saved {
            boot_id: p.dir.boot_id().to_string(),
            services: Vec::with_capacity(self.services.len()),
        };
        for (name, e) in &self.services {
            let live = e.svc.run.as_ref().map(|r| r.pid);
            let s = persist::SavedService {
                restarts: e.svc.restarts,
                history: e.svc.history.iter().copied().collect(),
                group: e.group.filter(|g| Some(g.pgid) == live),
            };
            saved.services.push((name.clone(), s));
        }
        let dir = p.dir.clone();
        let job = Box::new(move || dir.save_logged(&saved));
        // At exit the writer is flushed afterwards, which waits for the job.
        let queued = if force {
            self.sink.send_job(job, Duration::from_secs(2))
        } else {
            self.sink.offer_job(job)
        };
        if let Some(p) = &mut self.persist {
            // Queued or not (the queue was full), look again an interval later.
            p.dirty &= !queued;
            p.saved_at = Some(Instant::now());
        }
    }

    fn now() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: timefmt::unix_ms(SystemTime::now()),
        }
    }

    /// Starts every autostart service; the caller then reports readiness and calls `run`.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.svc.spec.autostart && e.svc.state != State::Failed)
            .map(|(n, _)| n.clone())
            .collect();
        // The state machines first, then every spawn they ask for at once.
        let mut batch = Vec::new();
        for name in names {
            if let Some(e) = self.services.get_mut(&name) {
                // Autostart services are enabled and have a binary, so start() accepts.
                for action in e.svc.start().unwrap_or_default() {
                    match action {
                        Action::Spawn => batch.push(name.clone()),
                        other => self.execute(&name, vec![other]),
                    }
                }
            }
        }
        self.spawn_batch(batch);
        for e in self.services.values() {
            if let Some(err) = e.svc.spec.binary_error() {
                if e.svc.spec.autostart || e.svc.spec.configured {
                    self.event(log::Level::Error, &e.name, None, "failed", err);
                }
            }
        }
        self.settle();
    }

    /// The loop. Returns when shutdown has finished.
    pub fn run(mut self) -> Outcome {
        loop {
            let received = match self.next_deadline() {
                Some(d) => self.rx.recv_deadline(d),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            // Process states may have changed since the last scan.
            self.live_groups = None;
            match received {
                Ok(ev) => {
                    if let Some(outcome) = self.handle(ev) {
                        return outcome;
                    }
                    // Take whatever else is already queued before the per-iteration
                    // passes below, which cost O(services): a burst of a thousand exits
                    // is then one pass, not a thousand.
                    while let Ok(ev) = self.rx.try_recv() {
                        if let Some(outcome) = self.handle(ev) {
                            return outcome;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // We hold a sender ourselves, so this cannot happen; stop cleanly if it does.
                Err(RecvTimeoutError::Disconnected) => return Outcome::Forced,
            }
            self.tick(Instant::now());
            self.settle();
            if self.finished() {
                self.cgroups.remove_all();
                self.save_state(true);
                return Outcome::Clean;
            }
            self.save_state(false);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let svc = self
            .services
            .values()
            .flat_map(|e| {
                let probe = e
                    .probe
                    .as_ref()
                    .filter(|p| !p.timed_out)
                    .map(|p| p.deadline);
                [e.svc.deadline(), probe]
            })
            .flatten()
            .min();
        let shutdown = self
            .shutdown
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.deadline);
        [svc, shutdown, self.state_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle(&mut self, ev: Event) -> Option<Outcome> {
        match ev {
            Event::Exited {
                service, pid, exit, ..
            } if self.is_probe(&service, pid) => self.probe_exited(&service, pid, exit),
            Event::Probe {
                service,
                gen,
                result,
            } => {
                let now = Instant::now();
                if let Some(e) = self.services.get_mut(&*service) {
                    let actions = e.svc.probe_result(gen, result, now, &mut self.rng);
                    self.execute(&service, actions);
                }
            }
            Event::Exited {
                service,
                gen,
                pid,
                exit,
            } => {
                let current = self
                    .services
                    .get(&*service)
                    .and_then(|e| e.svc.run.as_ref())
                    .is_some_and(|r| r.gen == gen);
                if !current {
                    // A run nobody tracks any more: reap it so that it is no zombie.
                    if self.unreaped.remove(&pid) {
                        spawn::reap(pid);
                    }
                    return None;
                }
                let may_restart = self.shutdown.is_none();
                let now = Self::now();
                let e = self.services.get_mut(&*service)?;
                let actions = e.svc.exited(exit, now, may_restart, &mut self.rng);
                self.execute(&service, actions);
            }
            Event::Signal(sig) => return self.on_signal(sig),
            Event::Control(req, reply) => self.control(req, reply),
        }
        None
    }

    fn on_signal(&mut self, sig: i32) -> Option<Outcome> {
        match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => {
                if self.shutdown.is_some() {
                    log::warn!(
                        "second {}: killing every service now",
                        crate::supervise::machine::signal_name(sig)
                    );
                    self.kill_all();
                    return Some(Outcome::Forced);
                }
                log::info!(
                    "{} received: shutting down",
                    crate::supervise::machine::signal_name(sig)
                );
                self.begin_shutdown();
            }
            libc::SIGHUP => match self.reload(false) {
                Ok(plan) => log::info!("reloaded: {}", summarize(&plan)),
                Err(e) => log::error!("reload failed, keeping the current configuration: {e}"),
            },
            libc::SIGCHLD => self.reap_orphans(),
            _ => {}
        }
        None
    }

    /// SIGKILL to every group that may still have a process.
    fn kill_all(&mut self) {
        for (name, e) in &self.services {
            if let Some(pid) = e.svc.pid() {
                spawn::signal_group(pid, libc::SIGKILL);
                self.cgroups.kill(name);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        let timeout = Duration::from_millis(self.cfg.settings.shutdown_timeout_ms);
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + timeout,
            killed: false,
        });
        // Pending restarts and dependency waits are cancelled at once; every process is
        // stopped in dependency order, as by `stop` (a stop under way runs its course).
        let now = Instant::now();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(e) = self.services.get_mut(&name) else {
                continue;
            };
            if e.svc.has_process() {
                e.stop_requested = e.svc.stopping.is_none();
            } else if e.svc.start_pending() {
                e.waiting = false;
                if let Ok(actions) = e.svc.stop(AfterStop::Stay, now) {
                    self.execute(&name, actions);
                }
            }
        }
        self.settle();
    }

    fn finished(&self) -> bool {
        self.shutdown.is_some() && self.services.values().all(|e| !e.svc.has_process())
    }

    fn tick(&mut self, now: Instant) {
        if let Some(sd) = &mut self.shutdown {
            if !sd.killed && now >= sd.deadline {
                sd.killed = true;
                log::warn!(
                    "shutdown timeout ({} ms) reached: killing what is left",
                    self.cfg.settings.shutdown_timeout_ms
                );
                self.kill_all();
            }
        }
        for e in self.services.values_mut() {
            if let Some(p) = e
                .probe
                .as_mut()
                .filter(|p| !p.timed_out && p.deadline <= now)
            {
                // The waiter reports the exit this causes; the result is "timed out".
                p.timed_out = true;
                spawn::signal_group(p.pid, libc::SIGKILL);
            }
        }
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.svc.deadline().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(e) = self.services.get_mut(&name) {
                let actions = e.svc.tick(now);
                self.execute(&name, actions);
            }
        }
    }

    /// Work that follows from state changes: held-back starts whose dependencies are now
    /// running, answers to waiting clients, and the next step of an ordered shutdown.
    fn settle(&mut self) {
        let waiting: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.waiting)
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let unmet = self.unmet_dependencies(&name);
            if unmet.is_empty() {
                self.execute(&name, vec![Action::Spawn]);
            } else if let Some(e) = self.services.get_mut(&name) {
                e.svc.last_error = Some(format!("waiting for {}", unmet.join(", ")));
            }
        }
        if !self.pending.is_empty() {
            let services = &self.services;
            let mut done = Vec::new();
            self.pending.retain(|p| {
                let finished = services
                    .get(&p.service)
                    .is_none_or(|e| e.svc.stopping.is_none() && !e.stop_requested);
                if finished {
                    done.push((p.service.clone(), p.reply.clone()));
                }
                !finished
            });
            for (name, reply) in done {
                let answer = if self.services.contains_key(&name) {
                    self.status(Some(&name))
                } else {
                    json!({"ok": true, "services": []})
                };
                let _ = reply.try_send(answer);
            }
        }
        self.stop_step();
    }

    /// Services that depend on `name`, directly or not.
    fn dependents_of(&self, name: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for (d, e) in &self.services {
                if e.svc.spec.depends_on.contains(&n) && !found.contains(d) && d != name {
                    found.push(d.clone());
                    frontier.push(d.clone());
                }
            }
        }
        found
    }

    /// Carries out requested stops (`stop`, shutdown) in dependency order: a service is
    /// stopped once none of its dependents has a process left.
    fn stop_step(&mut self) {
        // A pass can mark more services (dependents started meanwhile): go again then.
        while self.stop_pass() {}
    }

    /// One pass of `stop_step`; whether it marked a service it had not seen.
    fn stop_pass(&mut self) -> bool {
        let mut marked = false;
        // Services that something with a process still depends on, in one pass over the
        // edges.
        let needed: HashSet<String> = self
            .services
            .values()
            .filter(|e| e.svc.has_process())
            .flat_map(|e| e.svc.spec.depends_on.iter().cloned())
            .collect();
        let requested: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.stop_requested)
            .map(|(n, _)| n.clone())
            .collect();
        let now = Instant::now();
        for name in requested {
            if needed.contains(&name) {
                // Its dependents go first. One (re)started meanwhile goes too: the stop
                // would wait for it for ever otherwise.
                for de in self.services.values_mut() {
                    if de.svc.has_process()
                        && de.svc.spec.depends_on.contains(&name)
                        && de.svc.stopping.is_none()
                        && !de.stop_requested
                    {
                        de.stop_requested = true;
                        marked = true;
                    }
                }
                continue;
            }
            let Some(e) = self.services.get_mut(&name) else {
                continue;
            };
            e.stop_requested = false;
            e.waiting = false;
            // A refusal means there is nothing left to stop.
            if let Ok(actions) = e.svc.stop(AfterStop::Stay, now) {
                self.execute(&name, actions);
            }
        }
        marked
    }

    /// Dependencies of `name` that are not running, with their state.
    fn unmet_dependencies(&self, name: &str) -> Vec<String> {
        let Some(e) = self.services.get(name) else {
            return Vec::new();
        };
        e.svc
            .spec
            .depends_on
            .iter()
            .filter_map(|d| match self.services.get(d) {
                Some(de) if de.svc.state == State::Running => None,
                Some(de) => Some(format!("{d} ({})", de.svc.state.as_str())),
                None => Some(format!("{d} (unknown)")),
            })
            .collect()
    }

    /// Carries out a state machine's actions, and those that follow from them.
    fn execute(&mut self, name: &str, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn => queue.extend(self.spawn(name)),
                Action::SignalGroup { pgid, sig } => {
                    spawn::signal_group(pgid, sig);
                    // Descendants that left the group are still in the cgroup.
                    if sig == libc::SIGKILL {
                        self.cgroups.kill(name);
                    } else {
                        for pid in self.cgroups.members(name) {
                            if procfs::stat(pid).is_some_and(|s| s.pgrp != pgid) {
                                // SAFETY: kill has no memory preconditions.
                                unsafe { libc::kill(pid, sig) };
                            }
                        }
                    }
                }
                Action::CheckGroup(pgid) => {
                    let alive = self.group_alive(name, pgid);
                    if let Some(e) = self.services.get_mut(name) {
                        if alive {
                            e.svc.group_alive(Instant::now());
                        } else {
                            queue.extend(e.svc.group_empty(Instant::now()));
                        }
                    }
                }
                Action::Probe { gen } => queue.extend(self.start_probe(name, gen)),
                Action::Reap(pid) => {
                    spawn::reap(pid);
                    self.unreaped.remove(&pid);
                    self.mark_state_dirty();
                }
                Action::Remove => {
                    if let Some(e) = self.services.remove(name) {
                        self.cgroups.remove(name, &e.cgroup_dirs);
                    }
                }
                Action::Log {
                    level,
                    event,
                    pid,
                    msg,
                } => self.event(level, name, pid, event, msg),
            }
        }
        // A service that is done (stopped or failed, not about to restart) gives its
        // cgroup back, whichever path brought it there.
        if let Some(e) = self.services.get_mut(name) {
            if !e.cgroup_dirs.is_empty()
                && !e.svc.has_process()
                && matches!(e.svc.state, State::Stopped | State::Failed)
            {
                let dirs = std::mem::take(&mut e.cgroup_dirs);
                self.cgroups.remove(name, &dirs);
            }
        }
    }

    fn event(
        &self,
        level: log::Level,
        service: &str,
        pid: Option<i32>,
        event: &'static str,
        msg: String,
    ) {
        self.sink.event(EventRecord {
            ts_ms: timefmt::unix_ms(SystemTime::now()),
            level,
            service: Some(service.to_string()),
            pid,
            event: Some(event),
            msg,
        });
    }

    /// Spawns a run of `name` (or holds it back for its dependencies) and returns what the
    /// state machine makes of the result.
    fn spawn(&mut self, name: &str) -> Vec<Action> {
        let files = match self.prepare_spawn(name) {
            Ok(files) => files,
            Err(actions) => return actions,
        };
        let now = Self::now();
        let Some(e) = self.services.get(name) else {
            return Vec::new();
        };
        let result = spawn::spawn(&e.svc.spec, &files);
        drop(files);
        self.finish_spawn(name, result, now)
    }

    /// Spawns many services at once on the spawner pool (start-up, reload); what
    /// follows from each result is carried out in order.
    fn spawn_batch(&mut self, names: Vec<String>) {
        // Each job goes to the pool as soon as it is prepared, so preparing the next one
        // overlaps with spawning this one.
        let mut queued = Vec::new();
        let mut done = Vec::new();
        for name in names {
            match self.prepare_spawn(&name) {
                Ok(files) => {
                    let Some(spec) = self.services.get(&name).map(|e| e.svc.spec.clone()) else {
                        continue;
                    };
                    match self.pool.submit(queued.len(), spec, files) {
                        Some(result) => done.push((name, result)),
                        None => queued.push(name),
                    }
                }
                Err(actions) => self.execute(&name, actions),
            }
        }
        for (index, result) in self.pool.collect(queued.len()) {
            if let Some(name) = queued.get(index) {
                done.push((name.clone(), result));
            }
        }
        let now = Self::now();
        for (name, result) in done {
            let actions = self.finish_spawn(&name, result, now);
            self.execute(&name, actions);
        }
    }

    /// Everything before the clone: shutdown and dependency checks, the cgroups. `Err`
    /// carries what to do instead of spawning.
    fn prepare_spawn(&mut self, name: &str) -> Result<Vec<std::fs::File>, Vec<Action>> {
        if self.shutdown.is_some() {
            if let Some(e) = self.services.get_mut(name) {
                e.waiting = false;
                if !e.svc.has_process() {
                    e.svc.state = State::Stopped;
                }
            }
            return Err(Vec::new());
        }
        let unmet = self.unmet_dependencies(name);
        let Some(e) = self.services.get_mut(name) else {
            return Err(Vec::new());
        };
        if !unmet.is_empty() {
            e.svc.state = State::Starting;
            e.svc.last_error = Some(format!("waiting for {}", unmet.join(", ")));
            e.waiting = true;
            return Err(Vec::new());
        }
        if e.waiting {
            e.waiting = false;
            e.svc.last_error = None;
        }
        let now = Self::now();
        let spec = &e.svc.spec;
        let limits = CgroupLimits {
            memory_mib: spec.memory_limit_mib,
            cpu_percent: spec.limits.cpu_percent,
            pids_max: spec.limits.pids_max,
        };
        if !self.cgroups.available() {
            return Ok(Vec::new());
        }
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
            Err(err) if limits != CgroupLimits::default() => {
                Err(e.svc.spawn_failed(err, false, now, &mut self.rng))
            }
            Err(err) => {
                log::warn!("{name}: running without a cgroup: {err}");
                Ok(Vec::new())
            }
        }
    }

    /// Everything after the clone: the waiter and the readers, and the state machine's
    /// view of the result.
    fn finish_spawn(
        &mut self,
        name: &str,
        result: Result<spawn::Child, spawn::SpawnError>,
        now: Now,
    ) -> Vec<Action> {
        let Some(e) = self.services.get_mut(name) else {
            // Removed meanwhile (cannot happen within one batch); let the process go.
            if let Ok(child) = result {
                spawn::signal_group(child.pid, libc::SIGKILL);
                spawn::reap(child.pid);
            }
            return Vec::new();
        };
        let child = match result {
            Ok(c) => c,
            Err(err) => {
                return e
                    .svc
                    .spawn_failed(err.message, err.busy, now, &mut self.rng)
            }
        };
        self.gen += 1;
        let (pid, gen) = (child.pid, self.gen);
        self.unreaped.insert(pid);
        if let Err(err) = waiter::spawn_waiter(pid, gen, e.name.clone(), self.tx.clone()) {
            // Without a waiter nobody would see this run end: undo it.
            spawn::signal_group(pid, libc::SIGKILL);
            spawn::reap(pid);
            self.unreaped.remove(&pid);
            return e.svc.spawn_failed(
                format!("cannot create a thread: {err}"),
                false,
                now,
                &mut self.rng,
            );
        }
        if let Some(p) = &mut self.persist {
            e.group = persist::Group::of(pid);
            p.dirty = true;
        }
        let max_line = self.cfg.settings.max_line_bytes;
        for (fd, stream) in [
            (child.stdout, Stream::Stdout),
            (child.stderr, Stream::Stderr),
        ] {
            let ctx = ReaderCtx {
                service: e.name.clone(),
                pid,
                stream,
                max_line,
                sink: self.sink.clone(),
                ring: e.ring.clone(),
                counters: e.counters.clone(),
            };
            if let Err(err) = reader::spawn_reader(fd, ctx) {
                // The waiter will report the exit this causes.
                log::error!("{name}: cannot create an output thread ({err}): killing pid {pid}");
                spawn::signal_group(pid, libc::SIGKILL);
            }
        }
        e.svc.spawned(pid, gen, now)
    }

    /// Whether anything of a stopping service is left: its cgroup's members where it has
    /// one (a superset of its process group), else the live members of its group, from a
    /// /proc scan shared by every check of this loop iteration.
    fn group_alive(&mut self, name: &str, pgid: i32) -> bool {
        if self
            .services
            .get(name)
            .is_some_and(|e| !e.cgroup_dirs.is_empty())
        {
            return !self.cgroups.members(name).is_empty();
        }
        self.live_groups
            .get_or_insert_with(|| {
                procfs::all()
                    .into_iter()
                    .filter(|s| s.state != b'Z')
                    .map(|s| s.pgrp)
                    .collect()
            })
            .contains(&pgid)
    }

    fn is_probe(&self, service: &str, pid: i32) -> bool {
        self.services
            .get(service)
            .and_then(|e| e.probe.as_ref())
            .is_some_and(|p| p.pid == pid)
    }

    /// Starts the health check of run `gen`: exec checks as a child of this thread,
    /// tcp/http checks on the probe pool.
    fn start_probe(&mut self, name: &str, gen: u64) -> Vec<Action> {
        let now = Instant::now();
        let Some(e) = self.services.get_mut(name) else {
            return Vec::new();
        };
        let Some(hc) = e.svc.spec.health_check.clone() else {
            return Vec::new();
        };
        if hc.kind != crate::config::CheckType::Exec {
            let job = Job {
                service: e.name.clone(),
                gen,
                check: hc,
            };
            if !self.prober.submit(job) {
                log::debug!("{name}: health check skipped: too many checks in flight");
                e.svc.probe_skipped(now);
            }
            return Vec::new();
        }
        if e.probe.is_some() {
            e.svc.probe_skipped(now); // The previous one has not finished yet.
            return Vec::new();
        }
        let pid = match spawn::spawn_probe(&e.svc.spec, &hc.command) {
            Ok(pid) => pid,
            Err(err) => return e.svc.probe_result(gen, Err(err), now, &mut self.rng),
        };
        self.gen += 1;
        if let Err(err) = waiter::spawn_waiter(pid, self.gen, e.name.clone(), self.tx.clone()) {
            spawn::signal_group(pid, libc::SIGKILL);
            spawn::reap(pid);
            let err = format!("cannot create a thread: {err}");
            return e.svc.probe_result(gen, Err(err), now, &mut self.rng);
        }
        self.unreaped.insert(pid);
        e.probe = Some(ProbeProc {
            pid,
            run_gen: gen,
            deadline: now + Duration::from_millis(hc.timeout_ms.max(1)),
            timed_out: false,
        });
        Vec::new()
    }

    fn probe_exited(&mut self, service: &str, pid: i32, exit: crate::supervise::machine::Exit) {
        spawn::signal_group(pid, libc::SIGKILL); // Whatever the check left behind.
        spawn::reap(pid);
        self.unreaped.remove(&pid);
        let now = Instant::now();
        let Some(e) = self.services.get_mut(service) else {
            return;
        };
        let Some(p) = e.probe.take() else { return };
        let timeout = e.svc.spec.health_check.as_ref().map_or(0, |h| h.timeout_ms);
        let result = if p.timed_out {
            Err(format!("timed out after {timeout} ms"))
        } else if exit.success() {
            Ok(())
        } else {
            Err(exit.describe())
        };
        let actions = e.svc.probe_result(p.run_gen, result, now, &mut self.rng);
        self.execute(service, actions);
    }

    /// Reaps children that are not ours to wait for: orphans handed to us as PID 1 or
    /// subreaper. Managed main pids are skipped, so no waiter ever loses its status.
    fn reap_orphans(&mut self) {
        if !self.reap_orphans {
            return;
        }
        for pid in procfs::children() {
            if self.unreaped.contains(&pid) {
                continue;
            }
            let mut status = 0;
            // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
            unsafe {
                libc::waitpid(pid, &mut status, libc::WNOHANG);
            }
        }
    }

    // ----- control requests -------------------------------------------------------------

    fn control(&mut self, req: Request, reply: Sender<Reply>) {
        let answer = match req.cmd.as_str() {
            "status" => self.status(req.service.as_deref()),
            "start" | "stop" | "restart" => match self.lifecycle(&req, &reply) {
                Ok(Some(r)) => r,
                Ok(None) => return, // answered when the stop completes
                Err(msg) => error_reply(msg),
            },
            "reload" => match self.reload(req.dry_run) {
                Ok(plan) => {
                    if !req.dry_run {
                        log::info!("reloaded: {}", summarize(&plan));
                    }
                    json!({"ok": true, "plan": plan.iter().map(|(n, a)| json!({"service": n, "action": a})).collect::<Vec<_>>()})
                }
                Err(e) => {
                    if !req.dry_run {
                        log::error!("reload failed, keeping the current configuration: {e}");
                    }
                    error_reply(e)
                }
            },
            "logs" => self.logs(req.service.as_deref(), req.lines.unwrap_or(100)),
            "metrics" => json!({"ok": true, "metrics": self.metrics()}),
            "shutdown" => {
                let _ = reply.try_send(json!({"ok": true}));
                if self.shutdown.is_none() {
                    log::info!("shutdown requested");
                    self.begin_shutdown();
                }
                return;
            }
            "upgrade" | "rollback" | "upgrade-self" => {
                error_reply(format!("`{}` is not supported by this version", req.cmd))
            }
            other => error_reply(format!("unknown command `{other}`")),
        };
        let _ = reply.try_send(answer);
    }

    /// start/stop/restart. `Ok(None)`: the reply is deferred until the stop completes.
    fn lifecycle(&mut self, req: &Request, reply: &Sender<Reply>) -> Result<Option<Reply>, String> {
        let name = req.service.clone().ok_or("missing service name")?;
        if self.shutdown.is_some() && req.cmd != "stop" {
            return Err("orchestrator is shutting down".into());
        }
        let now = Instant::now();
        let e = self.services.get_mut(&name).ok_or("service not found")?;
        if req.cmd != "stop" && e.svc.spec.binary_problem.is_some() {
            // The binary may have appeared since discovery: look again.
            e.svc.spec.binary_problem =
                discovery::check_binary(&e.svc.spec.binary, self.cfg.settings.strict_modes);
        }
        if req.cmd != "stop" {
            // A start or restart overrides a stop still waiting for dependents.
            e.stop_requested = false;
        }
        let result = match req.cmd.as_str() {
            "start" => e.svc.start(),
            "stop" => {
                if !e.svc.is_active() {
                    return Err(crate::supervise::machine::Refusal::NotRunning
                        .message()
                        .into());
                }
                // Dependents go first, like at shutdown: each is stopped once what
                // depends on it has stopped, and this one last.
                for d in self.dependents_of(&name) {
                    if let Some(de) = self.services.get_mut(&d) {
                        de.stop_requested = de.svc.is_active();
                    }
                }
                if let Some(e) = self.services.get_mut(&name) {
                    e.stop_requested = true;
                }
                Ok(Vec::new())
            }
            _ => e.svc.restart(now),
        };
        let actions = result.map_err(|r| r.message().to_string())?;
        self.execute(&name, actions);
        self.settle();
        let stopping = self
            .services
            .get(&name)
            .is_some_and(|e| e.svc.stopping.is_some() || e.stop_requested);
        if stopping {
            self.pending.push(PendingReply {
                service: name,
                reply: reply.clone(),
            });
            return Ok(None);
        }
        Ok(Some(self.status(Some(&name))))
    }

    /// `{"path", "size", "mtime", "sha256"}` of a binary; the hash is computed once per
    /// version of the file.
    fn binary_identity(&mut self, path: &Path) -> serde_json::Value {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(path) else {
            return serde_json::Value::Null;
        };
        let key = (m.len(), m.mtime(), m.mtime_nsec(), m.ino());
        let hash = match self.binary_ids.get(path) {
            Some((k, h)) if *k == key => Some(h.clone()),
            _ => crate::control::sha256::file_hex(path).ok().inspect(|h| {
                self.binary_ids.insert(path.to_path_buf(), (key, h.clone()));
            }),
        };
        json!({"path": path.display().to_string(), "size": m.len(), "mtime": m.mtime(), "sha256": hash})
    }

    fn status(&mut self, name: Option<&str>) -> Reply {
        let binaries: Vec<PathBuf> = match name {
            Some(n) => self
                .services
                .get(n)
                .map(|e| e.svc.spec.binary.clone())
                .into_iter()
                .collect(),
            None => self
                .services
                .values()
                .map(|e| e.svc.spec.binary.clone())
                .collect(),
        };
        let identities: HashMap<PathBuf, serde_json::Value> = binaries
            .into_iter()
            .map(|b| {
                let id = self.binary_identity(&b);
                (b, id)
            })
            .collect();
        let now = Instant::now();
        let selected: Vec<&Entry> = match name {
            Some(n) => match self.services.get(n) {
                Some(e) => vec![e],
                None => return error_reply("service not found"),
            },
            None => self.services.values().collect(),
        };
        let usage = self.usage(&selected);
        let list: Vec<serde_json::Value> = selected
            .iter()
            .zip(usage)
            .map(|(e, u)| {
                let mut v = status_json(e, now, u);
                v["binary"] = identities
                    .get(&e.svc.spec.binary)
                    .cloned()
                    .unwrap_or_default();
                v["cgroup"] = json!(self
                    .cgroups
                    .tracker_dir(&e.name)
                    .filter(|_| e.svc.has_process()));
                v["limits"] = limits_json(&self.cgroups, &e.svc.spec);
                v
            })
            .collect();
        json!({
            "ok": true,
            "services": list,
            "orchestrator": {
                "pid": std::process::id(),
                "uptime": self.started.elapsed().as_nanos() as u64,
                "log_records_dropped": self.sink.dropped(),
                "log_write_errors": self.sink.write_errors(),
            }
        })
    }

    fn logs(&self, name: Option<&str>, n: usize) -> Reply {
        let Some(e) = name.and_then(|n| self.services.get(n)) else {
            return error_reply("service not found");
        };
        let lines = match e.ring.lock() {
            Ok(r) => r.tail(n),
            Err(_) => Vec::new(),
        };
        let lines: Vec<serde_json::Value> = lines
            .iter()
            .map(|(b, l)| {
                json!({
                    "ts": timefmt::rfc3339(b.ts_ms),
                    "level": l.level.as_str().to_ascii_lowercase(),
                    "pid": b.pid,
                    "stream": b.stream.as_str(),
                    "msg": b.msg(l),
                    "partial": l.partial,
                })
            })
            .collect();
        json!({"ok": true, "lines": lines})
    }

    /// Memory and CPU of each entry's processes: its cgroup's members where there is
    /// one, else its process group. `None` for entries without a process.
    fn usage(&self, entries: &[&Entry]) -> Vec<Option<procfs::Usage>> {
        if self.cgroups.available() {
            return entries
                .iter()
                .map(|e| {
                    e.svc
                        .has_process()
                        .then(|| procfs::usage_of(&self.cgroups.members(&e.name)))
                })
                .collect();
        }
        let pgids: Vec<i32> = entries.iter().filter_map(|e| e.svc.pid()).collect();
        let by_group = procfs::usage_by_group(&pgids);
        entries
            .iter()
            .map(|e| {
                e.svc
                    .pid()
                    .map(|p| by_group.get(&p).copied().unwrap_or_default())
            })
            .collect()
    }

    fn metrics(&self) -> String {
        let now = Instant::now();
        let entries: Vec<&Entry> = self.services.values().collect();
        let usage = self.usage(&entries);
        let rows: Vec<metrics::Row> = entries
            .iter()
            .zip(usage)
            .map(|(e, usage)| metrics::Row {
                name: &e.name,
                state: e.svc.state,
                restarts: e.svc.restarts,
                uptime: e.svc.uptime(now),
                usage: usage.unwrap_or_default(),
                stdout_lines: e
                    .counters
                    .stdout_lines
                    .load(std::sync::atomic::Ordering::Relaxed),
                stderr_lines: e
                    .counters
                    .stderr_lines
                    .load(std::sync::atomic::Ordering::Relaxed),
                unwritten: e
                    .counters
                    .file_unwritten
                    .load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        metrics::render(&rows, self.sink.dropped(), self.sink.write_errors())
    }

    // ----- reload ------------------------------------------------------------------------

    /// Re-reads the configuration and re-runs discovery; applies the result unless
    /// `dry_run`. On any error nothing changes.
    fn reload(&mut self, dry_run: bool) -> Result<Vec<(String, &'static str)>, String> {
        let cfg = config::load(&self.overrides).map_err(|e| e.0.join("; "))?;
        let plan = discovery::plan(&cfg).map_err(|e| e.join("; "))?;
        let mut decisions = Vec::new();
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.extend(
            plan.services
                .keys()
                .filter(|n| !self.services.contains_key(*n))
                .cloned(),
        );
        names.sort_unstable();
        for name in &names {
            let action = decide(
                self.services.get(name).map(|e| &e.svc),
                plan.services.get(name),
            );
            decisions.push((name.clone(), action));
        }
        if dry_run {
            return Ok(decisions);
        }
        for n in &plan.notices {
            log::log!(n.level, "{}", n.msg);
        }
        let old = std::mem::replace(&mut self.cfg, cfg);
        if old.settings.control_socket != self.cfg.settings.control_socket
            || old.settings.subreaper != self.cfg.settings.subreaper
        {
            log::warn!("control_socket and subreaper changes take effect at the next start");
        }
        let s = &self.cfg.settings;
        self.sink.set_filter(s.log_level, s.log_format);
        self.sink.set_files(s.log_files());
        let mut new_specs = plan.services;
        let now = Instant::now();
        for (name, action) in &decisions {
            let spec = new_specs.remove(name);
            let actions = match (self.services.get_mut(name), spec) {
                (None, Some(spec)) => {
                    let mut e = Entry::new(spec);
                    let actions = if *action == "start" {
                        e.svc.start().unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    self.services.insert(name.clone(), e);
                    actions
                }
                (Some(e), None) => {
                    e.waiting = false;
                    e.svc.stop(AfterStop::Remove, now).unwrap_or_default()
                }
                (Some(e), Some(spec)) => {
                    let had_problem = e.svc.spec.binary_problem.is_some();
                    e.svc.spec = spec;
                    match *action {
                        "start" => e.svc.start().unwrap_or_default(),
                        "stop" => {
                            e.waiting = false;
                            e.svc.stop(AfterStop::Stay, now).unwrap_or_default()
                        }
                        "restart" => e.svc.restart(now).unwrap_or_default(),
                        _ => {
                            e.svc.reconcile_health(now);
                            if let Some(err) = e.svc.spec.binary_error() {
                                if !e.svc.has_process() && e.svc.state == State::Failed {
                                    e.svc.last_error = Some(err);
                                }
                            } else if had_problem && e.svc.state == State::Failed {
                                e.svc.last_error = None;
                                e.svc.state = State::Stopped;
                            }
                            Vec::new()
                        }
                    }
                }
                (None, None) => Vec::new(),
            };
            self.execute(name, actions);
        }
        self.settle();
        Ok(decisions)
    }
}

/// What a reload does to one service: start, stop, restart, update or unchanged.
fn decide(old: Option<&Service>, new: Option<&ServiceSpec>) -> &'static str {
    match (old, new) {
        (None, Some(n)) if n.autostart && n.binary_problem.is_none() => "start",
        (None, Some(_)) => "update",
        (Some(_), None) => "stop",
        (Some(o), Some(n)) => {
            let active = o.is_active();
            if active && (!n.enabled || n.binary_problem.is_some() && !o.has_process()) {
                return "stop";
            }
            if active && o.spec.process_differs(n) {
                return "restart";
            }
            let startable = n.autostart && n.binary_problem.is_none() && !o.held;
            if !active
                && startable
                && (!o.spec.enabled || o.spec.binary_problem.is_some() || !o.spec.autostart)
            {
                return "start";
            }
            if o.spec != *n {
                "update"
            } else {
                "unchanged"
            }
        }
        (None, None) => "unchanged",
    }
}

fn summarize(plan: &[(String, &'static str)]) -> String {
    let changed: Vec<String> = plan
        .iter()
        .filter(|(_, a)| *a != "unchanged")
        .map(|(n, a)| format!("{n}: {a}"))
        .collect();
    if changed.is_empty() {
        "no changes".into()
    } else {
        changed.join(", ")
    }
}

/// How each configured limit is enforced: `{"nofile": "setrlimit", "memory_limit": ...}`.
fn limits_json(cgroups: &Cgroups, spec: &ServiceSpec) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, _, how) in cgroups.enforcement(spec) {
        m.insert(name.into(), json!(how));
    }
    serde_json::Value::Object(m)
}

fn status_json(e: &Entry, now: Instant, usage: Option<procfs::Usage>) -> serde_json::Value {
    let svc = &e.svc;

    let history: Vec<serde_json::Value> = svc
        .history
        .iter()
        .map(|h| json!({"started": h.started_ms, "exited": h.exited_ms, "exit_code": h.exit_code}))
        .collect();
    let mut v = json!({
        "name": &*e.name,
        "configured": svc.spec.configured,
        "enabled": svc.spec.enabled,
        "state": svc.state.as_str(),
        "pid": svc.pid(),
        "uptime": svc.uptime(now).as_nanos() as u64,
        "restarts": svc.restarts,
        "last_exit_code": svc.last_exit_code,
        "last_error": svc.last_error,
        "rss_bytes": usage.map(|u| u.rss_bytes),
        "cpu_seconds": usage.map(|u| u.cpu_seconds),
        "binary": null,
        "log_lines_unwritten": e.counters.file_unwritten.load(std::sync::atomic::Ordering::Relaxed),
        "history": history,
    });
    if svc.state == State::Restarting {
        if let Some(t) = svc.next_restart {
            v["next_restart_ms"] = json!(t.saturating_duration_since(now).as_millis() as u64);
        }
    }
    v
}
