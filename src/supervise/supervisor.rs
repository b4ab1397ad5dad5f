//! The main loop (docs/lifecycle.md, docs/control-protocol.md): owns the map of services,
//! sleeps in one blocking receive until the next event or the earliest deadline, feeds
//! each event to the service's machine and carries out the actions it returns. Nothing
//! polls while idle: the only timers are the machines' deadlines, the shutdown bound, the
//! state file's next save, a busy cgroup's next removal attempt and, while a helper is
//! being spawned, the next orphan reaping pass.
//!
//! One machine step at a time: `feed` queues the event (`work.rs`) and, unless a step
//! is already in progress, steps the queue until it is empty, first in first out. What
//! a step's actions find (spawned, spawn failed, group alive or empty, pid file read)
//! and the dependents its state change wakes are queued behind it, never fed at once;
//! so no machine sees an event while it or another is mid-step, a step's actions all
//! run before the next step, and events arising from one step are stepped in the order
//! they arose. A top-level `feed` (a request, a deadline, a child's exit) returns once
//! everything that followed from it was stepped, as with a direct call.
//!
//! The jobs around the loop each have a file: carrying out actions (`execute.rs`),
//! spawning a run (`launch.rs`), dependency order (`order.rs`), health checks
//! (`probes.rs`), control requests and their deferred replies (`requests.rs`), the
//! status and metrics views (`views.rs`), reload (`reload.rs`), persistence
//! (`persist.rs`), sd_notify (`notifying.rs`), `upgrade-self` (`upgrade_self/`), signals
//! and shutdown (`shutdown.rs`), busy cgroups (`janitor.rs`), what start-up and a drain
//! hold back (`held.rs`).
//!
//! Only the main thread spawns, signals and reaps. Spawning from the one thread that
//! lives as long as the process (and survives `upgrade-self`'s exec) is what makes
//! PR_SET_PDEATHSIG reliable; reaping only here, after
//! the waiter reported the exit and the machine said `Reap`, keeps a pid from being
//! signalled after it was reused. The loop never waits on anything but its channel:
//! every other call it makes is bounded (each says its bound where it is made).

use super::event::{Above, Event};
use super::held::Held;
use super::hw_watchdog::Watchdog;
use super::janitor::Janitor;
use super::launch::{Cloned, Reader};
use super::machine::{self, Ctx, Service};
use super::order::Stops;
use super::persist;
use super::reaper::Reaper;
use super::requests::Pending;
use super::state::{Now, Refusal, State};
use super::views::BinaryIds;
use super::work::Work;
use crate::config::discovery::{Plan, ServiceSpec};
use crate::config::{Config, Overrides};
use crate::control::instance::InstanceFds;
use crate::health::exec::ExecProbe;
use crate::health::notify::Notify;
use crate::health::probe::Prober;
use crate::output::reader::{Counters, Ring};
use crate::output::record::RecordKind;
use crate::output::sink::{Batch, EventRecord, Line, Sink, Stream};
use crate::output::timefmt;
use crate::process::cgroup::Cgroups;
use crate::process::sockets::Bound;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// One service in the map: its machine, and what the loop keeps beside it.
pub(super) struct Entry {
    pub svc: Service,
    pub name: Arc<str>,
    pub ring: Arc<Mutex<Ring>>,
    pub counters: Arc<Counters>,
    /// Its cgroup directories (created at spawn, removed once the service is done);
    /// empty when it has none.
    pub cgroup_dirs: Vec<PathBuf>,
    /// An `exec` health check in progress.
    pub probe: Option<ExecProbe>,
    /// The current run's process group, for `state_dir`.
    pub group: Option<persist::Group>,
    /// The pid the current run's output is tagged with (its readers share it).
    pub output_pid: Arc<std::sync::atomic::AtomicI32>,
    /// Its `sockets`, bound before its first run and kept across runs
    /// (docs/sockets-and-upgrades.md); dropping the entry closes them.
    pub sockets: Option<Bound>,
    /// Its upgrade under way and its version history (docs/sockets-and-upgrades.md).
    pub upgrade: super::upgrades::steps::Upgrades,
    /// Its memory cgroup's OOM kill count when the current run started, where one can
    /// be read: a SIGKILL with the count risen since is the OOM killer's.
    pub oom_kills: Option<u64>,
    /// `pid_file`: the daemon the file named, and a pidfd for it, through which it is
    /// signalled and reaped (it may not be our child: its pid could be reused).
    pub daemon: Option<(i32, Arc<std::os::fd::OwnedFd>)>,
    /// What the watcher compares its binary with (`watching.rs`).
    pub files: super::watching::Files,
}

impl Entry {
    pub fn new(spec: ServiceSpec) -> Entry {
        Entry {
            name: spec.name.as_str().into(),
            svc: Service::new(spec, timefmt::unix_ms(SystemTime::now())),
            ring: Arc::default(),
            counters: Arc::default(),
            cgroup_dirs: Vec::new(),
            probe: None,
            group: None,
            output_pid: Arc::default(),
            sockets: None,
            upgrade: Default::default(),
            oom_kills: None,
            daemon: None,
            files: Default::default(),
        }
    }
}

pub(super) struct Shutdown {
    pub deadline: Instant,
    pub killed: bool,
}

pub struct Supervisor {
    pub(super) overrides: Overrides,
    pub(super) cfg: Config,
    pub(super) services: BTreeMap<String, Entry>,
    pub(super) tx: Sender<Event>,
    rx: Receiver<Event>,
    pub(super) sink: Sink,
    pub(super) rng: fastrand::Rng,
    /// Spawn generation: tags every run and probe process so a late event from run N
    /// cannot touch run N+1.
    gen: u64,
    pub(super) shutdown: Option<Shutdown>,
    /// Which children are ours to reap, the orphans that are not, and the live
    /// process groups of this loop iteration (`reaper.rs`).
    pub(super) reaper: Reaper,
    pub(super) pending: Vec<Pending>,
    pub(super) stops: Stops,
    pub(super) started: Instant,
    pub(super) cgroups: Arc<Cgroups>,
    /// Cgroups still busy when their service was done: removal is retried, never
    /// waited for on the loop.
    pub(super) janitor: Janitor,
    pub(super) binary_ids: BinaryIds,
    pub(super) prober: Prober<Above>,
    /// The machine events still to be stepped, one at a time (`work.rs`).
    work: Work,
    /// What waits for the end of start-up's clones or of a drain: waiters and
    /// `Spawned` of start-up's runs, output readers of runs just spawned (`held.rs`).
    pub(super) held: Held<Cloned, Reader>,
    pub(super) persist: Option<super::snapshot::Saver>,
    /// The hardware watchdog, when configured and opened (`watchdog.rs`).
    pub(super) watchdog: Option<Watchdog>,
    /// The sd_notify socket, opened before the first spawn of a service that uses it;
    /// `None` until then, or if it could not be opened (logged once).
    pub(super) notify: Option<Notify>,
    pub(super) notify_tried: bool,
    pub(super) instance: Option<InstanceFds>,
    /// An `upgrade-self`'s checks are running (`upgrade_self/old_image.rs`): a second
    /// one is refused.
    pub(super) checking_self: bool,
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
            reaper: Reaper::new(reap_orphans),
            pending: Vec::new(),
            stops: Stops::default(),
            started: Instant::now(),
            cgroups: Arc::new(cgroups),
            janitor: Janitor::default(),
            binary_ids: BinaryIds::default(),
            prober,
            work: Work::default(),
            held: Held::default(),
            persist: state_dir.map(super::snapshot::Saver::new),
            watchdog: None,
            notify: None,
            notify_tried: false,
            instance: None,
            checking_self: false,
        }
    }

    pub(super) fn now() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: timefmt::unix_ms(SystemTime::now()),
        }
    }

    /// Hands the opened watchdog device to the loop, which feeds it from now on.
    pub fn arm_watchdog(&mut self, watchdog: Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// Starts every autostart service; the caller then reports readiness and calls `run`.
    /// Each is spawned on this thread as its machine asks (see `launch.rs`).
    pub fn start_all(&mut self) {
        self.load_upgrades();
        self.link_all_running();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.svc.spec().autostart && e.svc.state() != State::Failed)
            .map(|(n, _)| n.clone())
            .collect();
        let ahead = self.cgroups.create_ahead(names.clone());
        self.held.begin_start_up();
        for name in &names {
            // Autostart services are enabled and have a binary, so Start is accepted.
            let _ = self.feed(name, machine::Event::Start);
        }
        // A dependent woken by what follows spawns at once, as after start-up.
        let cloned = self.held.end_start_up();
        // Before any service's cgroup may be removed (and before the loop runs).
        if let Some(t) = ahead {
            let _ = t.join();
        }
        self.finish_cloned(cloned);
        let readers = self.held.readers();
        self.start_readers(readers);
        for e in self.services.values() {
            let spec = e.svc.spec();
            if let Some(err) = spec.binary_error() {
                if spec.autostart || spec.configured {
                    self.event(log::Level::Error, &e.name, None, RecordKind::Failed, err);
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
            self.reaper.new_iteration();
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
                // We hold a sender ourselves, so this cannot happen; stop cleanly if it
                // does.
                Err(RecvTimeoutError::Disconnected) => return Outcome::Forced,
            }
            self.tick(Instant::now());
            self.settle();
            if self.finished() {
                // The loop is over: waiting here for the last cgroups delays only exit.
                self.remove_busy_cgroups_now();
                self.cgroups.remove_all();
                self.save_state(true);
                // Only here: a forced exit leaves the device armed.
                if let Some(w) = self.watchdog.take() {
                    w.disarm();
                }
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
                [
                    e.svc.deadline(),
                    e.probe.as_ref().and_then(|p| p.deadline()),
                    e.upgrade.deadline(),
                ]
            })
            .flatten()
            .min();
        let shutdown = self
            .shutdown
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.deadline);
        let watchdog = self.watchdog.as_ref().and_then(Watchdog::deadline);
        [
            svc,
            shutdown,
            self.state_deadline(),
            self.janitor.retry_at(),
            self.reaper.retry_at(),
            watchdog,
        ]
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
                let _ = self.feed(&service, machine::Event::Probe { gen, result });
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
                    .is_some_and(|e| e.svc.gen() == Some(gen));
                if !current {
                    // A run nobody tracks any more: reap it so that it is no zombie.
                    if self.reaper.reaped(pid) {
                        self.reap(&service, pid);
                        if let Some(n) = &self.notify {
                            n.forget(pid);
                        }
                    }
                    return None;
                }
                self.note_oom_kill(&service, exit);
                let _ = self.feed(&service, machine::Event::Exited { gen, exit });
                if self.reaper.reaps_on_exit() {
                    self.reaper.reap_orphans();
                }
            }
            Event::Notify { service } => self.notified(&service),
            Event::Signal(sig) => return self.on_signal(sig),
            Event::Above(Above::Control(req, reply)) => self.control(req, reply),
            Event::Above(Above::Installed(done)) => self.installed(done),
            Event::Above(Above::Watched(settled)) => self.watched(settled),
            Event::Above(Above::SelfChecked(checked)) => return self.upgrade_self(checked),
        }
        None
    }

    /// A main process killed by SIGKILL while its memory cgroup's OOM kill count rose
    /// was the OOM killer's victim: the run's history says so.
    fn note_oom_kill(&mut self, service: &str, exit: super::state::Exit) {
        if exit != super::state::Exit::Signal(libc::SIGKILL) {
            return;
        }
        let Some(e) = self.services.get_mut(service) else {
            return;
        };
        let now = self.cgroups.oom_kills(service);
        if let (Some(before), Some(now)) = (e.oom_kills, now) {
            if now > before {
                let limit = e.svc.spec().process.memory_limit_mib;
                e.svc.ending(super::state::reason::oom(limit));
            }
        }
    }

    /// `handle`, for `upgrade-self`'s last look at what is queued.
    pub(super) fn handle_event(&mut self, ev: Event) -> Option<Outcome> {
        self.handle(ev)
    }

    pub(super) fn rx_try_recv(&mut self) -> Result<Event, crossbeam_channel::TryRecvError> {
        self.rx.try_recv()
    }

    /// The instance's lock (and pidfile) and the control socket's listener, which
    /// `upgrade-self` leaves open across its exec.
    pub fn set_instance_fds(&mut self, fds: InstanceFds) {
        self.instance = Some(fds);
    }

    pub(super) fn instance_fds(&self) -> Option<&InstanceFds> {
        self.instance.as_ref()
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
        self.probe_timeouts(now);
        self.retry_busy_cgroups(now);
        self.reaper.retry(now);
        if let Some(w) = &mut self.watchdog {
            let services = &self.services;
            w.tick(|name| services.get(name).map(|e| e.svc.state()), now);
        }
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.svc.deadline().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.feed_keepalive(&name);
            let _ = self.feed(&name, machine::Event::Timer);
        }
    }

    /// Work that follows from state changes: the next step of ordered stops, and answers
    /// to waiting clients.
    pub(super) fn settle(&mut self) {
        self.advance_stops();
        self.judge_upgrades();
        self.fail_at_rest();
        self.release_sockets();
        self.answer_pending();
    }

    /// Feeds one event to `name`'s machine. Outside a step, the event and all that
    /// follows from it (`work.rs`) are stepped before this returns, and the result is
    /// whether the machine took this event. Within a step (from an action being carried
    /// out) it is queued, stepped once the current step is done, and `Ok` is returned.
    pub(super) fn feed(&mut self, name: &str, event: machine::Event) -> Result<(), Refusal> {
        self.work.push(name, event);
        if !self.work.begin() {
            return Ok(());
        }
        // The queue was empty: the first item stepped is this event.
        let mut result = Ok(());
        let mut first = true;
        while let Some((name, event)) = self.work.next() {
            let r = self.step(&name, event);
            self.work.stepped();
            if std::mem::take(&mut first) {
                result = r;
            }
        }
        self.work.end();
        let readers = self.held.drained();
        self.start_readers(readers);
        result
    }

    /// A new spawn generation, for a run or a probe process.
    pub(super) fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    /// The last generation given, for `upgrade-self` to carry.
    pub(super) fn gen(&self) -> u64 {
        self.gen
    }

    /// Goes on from the generation a predecessor gave last (`upgrade-self`), so that
    /// no carried run's generation is given again.
    pub(super) fn continue_gen(&mut self, gen: u64) {
        self.gen = self.gen.max(gen);
    }

    /// What carrying out a step's actions found (spawned, spawn failed, group alive or
    /// empty, pid file read): queued, stepped after the current step.
    pub(super) fn queue(&mut self, name: &str, event: machine::Event) {
        self.work.push(name, event);
    }

    /// One step: `event` to `name`'s machine with its context, its actions carried out
    /// (what they find is queued), and the services that wait on it woken (queued too)
    /// when its state changed.
    fn step(&mut self, name: &str, event: machine::Event) -> Result<(), Refusal> {
        let unmet = self.unmet_dependencies(name);
        let shutting_down = self.shutdown.is_some();
        let Some(e) = self.services.get_mut(name) else {
            return Ok(());
        };
        let before = e.svc.state();
        let mut ctx = Ctx {
            now: Self::now(),
            rng: &mut self.rng,
            unmet,
            shutting_down,
        };
        let actions = e.svc.on(event, &mut ctx)?;
        self.execute(name, actions);
        let after = self.services.get(name).map(|e| e.svc.state());
        if after != Some(before) {
            self.mark_state_dirty();
            self.wake_dependents(name);
        }
        Ok(())
    }

    /// A service's state changed: those waiting for it may start now.
    fn wake_dependents(&mut self, name: &str) {
        for (w, e) in &self.services {
            if e.svc.waiting_for_deps() && e.svc.spec().depends_on.iter().any(|d| d == name) {
                self.work.push(w, machine::Event::DepsChanged);
            }
        }
    }

    /// A lifecycle record of `service`: to the daemon's log, to the service's log file,
    /// and among its kept lines for `logs` (docs/cli.md).
    pub(super) fn event(
        &self,
        level: log::Level,
        service: &str,
        pid: Option<i32>,
        event: RecordKind,
        msg: String,
    ) {
        let ts_ms = timefmt::unix_ms(SystemTime::now());
        let entry = self.services.get(service);
        if let Some(e) = entry {
            let batch = Batch {
                service: e.name.clone(),
                pid: pid.unwrap_or(0),
                stream: Stream::Stdout,
                ts_ms,
                unwritten: e.counters.file_unwritten.clone(),
                lines: vec![Line {
                    start: 0,
                    end: msg.len(),
                    level,
                    partial: false,
                }],
                text: msg.clone(),
                event: Some(event),
            };
            if let Ok(mut ring) = e.ring.lock() {
                ring.push(Arc::new(batch));
            }
        }
        self.sink.event(EventRecord {
            ts_ms,
            level,
            service: Some(service.to_string()),
            pid,
            event: Some(event),
            msg,
            file: entry.map(|e| (e.name.clone(), e.counters.file_unwritten.clone())),
        });
    }
}
