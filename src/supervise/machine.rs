//! The per-service lifecycle (SPEC 4) as a closed machine, in the manner of
//! s6-supervise's state x event table: one private `Phase` names where a service is,
//! one entry point (`Service::on`) takes an `Event` with its context (the time, the
//! random source, which dependencies are not running, whether shutdown is under way)
//! and returns the `Action`s the supervisor must carry out. The five states users see
//! are computed from the phase, never stored.
//!
//! It is pure: no syscall, no clock, no spawn. No other module writes its fields; the
//! supervisor only feeds it events and reads it through accessors. Every (phase, event)
//! pair is covered by the table in `machine/tests.rs`, and random event sequences are
//! checked against the lifecycle's invariants in `machine/props.rs`.
//!
//! A run's main pid is reaped only when this machine says `Reap`, after the last signal
//! that may go to its process group: the leader stays a zombie until then, so its pid
//! (the group id) cannot be reused while anyone may still signal it.

use super::state::{Exit, HistoryEntry, LastExit, Now, Refusal, State};
use crate::config::discovery::{BinaryProblem, ServiceSpec};
use crate::config::RestartPolicy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a stopping service whose main process has exited is checked for the rest of
/// its group. Polling happens only then, never while idle.
pub const GROUP_POLL: Duration = Duration::from_millis(20);
/// Runs kept for `status` (SPEC 9).
pub const HISTORY_LEN: usize = 10;
/// The shortest wait before retrying a spawn that failed (EMFILE, EAGAIN, ENOENT...).
/// Backoff 0 means "restart at once after an exit"; it must not turn a resource
/// shortage into a busy loop that makes the shortage worse.
pub const SPAWN_RETRY_MIN: Duration = Duration::from_millis(100);
/// A binary busy (ETXTBSY: open for writing, e.g. being copied into place) is tried
/// again this often, this many times, before the failure counts as one.
pub const BUSY_RETRY: Duration = Duration::from_millis(100);
pub const BUSY_RETRIES: u32 = 50;

/// Who asked for a stop. It decides what the stop leaves behind (an operator's stop is
/// kept across reloads) and what may override a stop under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Operator,
    Reload,
    Shutdown,
    Liveness,
}

/// What follows a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Start again, the counter reset (`restart`, or a reload that changed the process).
    Start,
    /// Forget the service (removed by a reload).
    Remove,
    /// Failed its liveness check: restart after this backoff delay, or (None) give up
    /// because the attempts are used up.
    Recover(Option<Duration>),
}

/// Everything that can happen to a service.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `start`, from an operator or autostart; resets the restart counter.
    Start,
    /// `restart` from an operator: stop what runs, then start with the counter reset.
    Restart,
    /// A stop; `then` says what follows it.
    Stop { then: AfterStop, origin: Origin },
    /// A dependency changed state: a start held back for it may go now.
    DepsChanged,
    /// The supervisor spawned the run this machine asked for.
    Spawned { pid: i32, gen: u64 },
    /// The spawn failed (binary gone, EMFILE, EAGAIN...); `busy` for ETXTBSY.
    SpawnFailed { error: String, busy: bool },
    /// Run `gen`'s main process exited (observed, not yet reaped).
    Exited { gen: u64, exit: Exit },
    /// The draining run's group has no live member left.
    GroupEmpty,
    /// The draining run's group still has members.
    GroupAlive,
    /// The deadline this machine gave (`deadline`) has passed.
    Timer,
    /// A health-check result for run `gen`.
    Probe {
        gen: u64,
        result: Result<(), String>,
    },
    /// The health check could not be started (too many in flight).
    ProbeSkipped,
    /// A reload changed settings that apply in place (SPEC 5 `update`).
    Reconfigured(Box<ServiceSpec>),
}

/// What surrounds an event: the machine reads nothing else.
pub struct Ctx<'a> {
    pub now: Now,
    pub rng: &'a mut fastrand::Rng,
    /// Dependencies that are not running, as `name (state)`: a start waits for them.
    pub unmet: Vec<String>,
    /// Shutdown is under way: nothing starts or restarts.
    pub shutting_down: bool,
}

/// What the supervisor must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn a new run; the result comes back as `Spawned` or `SpawnFailed`.
    Spawn,
    /// Send `sig` to the process group `pgid` (a run's main pid) and its cgroup.
    Signal { pgid: i32, sig: i32 },
    /// Report whether group `pgid` has live members: `GroupEmpty` or `GroupAlive`.
    CheckGroup(i32),
    /// Reap this main process and forget its pid. No signal goes to it afterwards.
    Reap(i32),
    /// Drop this service from the map.
    Remove,
    /// Run the health check against run `gen`; the answer comes back as `Probe`.
    Probe { gen: u64 },
    /// Write an event record.
    Log {
        level: log::Level,
        event: &'static str,
        pid: Option<i32>,
        msg: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    pid: i32,
    gen: u64,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// When the next probe is due; none while one is in flight.
    next_probe: Option<Instant>,
    in_flight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stop {
    deadline: Instant,
    killed: bool,
    then: AfterStop,
    origin: Origin,
    /// The state shown until the group is empty (SPEC 4: "the state stays what it was").
    shown: State,
    /// When the draining group is next checked.
    poll_at: Option<Instant>,
}

/// Where a service is. Each variant carries exactly what that phase needs.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No process, nothing pending. `held`: an operator (or shutdown) stopped it, so a
    /// reload does not start it again.
    Stopped { held: bool },
    /// Given up (policy, attempts, a binary that cannot run); `retry_at` when
    /// `retry_failed_ms` will try again.
    Failed { retry_at: Option<Instant> },
    /// A start held back until every `depends_on` runs.
    WaitingDeps,
    /// Waiting out a restart delay.
    Backoff { until: Instant },
    /// The binary was busy (ETXTBSY): the same start is tried again.
    BusyRetry { until: Instant, tries: u32 },
    /// `Spawn` was asked for and its result is not in yet. A stop that arrives meanwhile
    /// is kept and carried out once the process exists.
    Spawning {
        tries: u32,
        stop: Option<(AfterStop, Origin)>,
    },
    /// A live run: `ready` once up (exec succeeded, or the first health check passed).
    Up {
        run: Run,
        ready: bool,
        health: Health,
    },
    /// The stop signal went to the group; the main process has not exited yet.
    Stopping { run: Run, stop: Stop },
    /// The main process exited during a stop; the rest of the group is being waited for.
    Draining { run: Run, stop: Stop },
}

/// One service: its spec, its phase, and what `status` reports about its past.
#[derive(Debug, Clone)]
pub struct Service {
    spec: ServiceSpec,
    phase: Phase,
    /// Consecutive restarts; drives the backoff and the attempt limit.
    attempts: u32,
    /// Every restart since this service became known; the `restarts` of status/metrics.
    restarts: u64,
    last_exit: Option<LastExit>,
    last_error: Option<String>,
    history: VecDeque<HistoryEntry>,
    /// Wall-clock ms of the last change of the shown state.
    since_ms: u64,
}

fn log(level: log::Level, event: &'static str, pid: Option<i32>, msg: impl Into<String>) -> Action {
    Action::Log {
        level,
        event,
        pid,
        msg: msg.into(),
    }
}

impl Service {
    /// A service as planned: `failed` at once when its binary cannot run and it would
    /// be started (or is configured), else `stopped`.
    pub fn new(spec: ServiceSpec, now_ms: u64) -> Service {
        let (phase, last_error) = match spec.binary_error() {
            Some(e) if spec.autostart || spec.configured => {
                (Phase::Failed { retry_at: None }, Some(e))
            }
            _ => (Phase::Stopped { held: false }, None),
        };
        Service {
            spec,
            phase,
            attempts: 0,
            restarts: 0,
            last_exit: None,
            last_error,
            history: VecDeque::new(),
            since_ms: now_ms,
        }
    }

    /// Carries on what a predecessor saved (`state_dir`).
    pub fn restore(&mut self, restarts: u64, history: impl IntoIterator<Item = HistoryEntry>) {
        self.restarts = restarts;
        for h in history {
            self.push_history(h);
        }
    }

    /// The binary was looked at again (before a start, or at reload).
    pub fn set_binary_problem(&mut self, problem: Option<BinaryProblem>) {
        self.spec.binary_problem = problem;
    }

    // ----- reading ---------------------------------------------------------------------

    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    pub fn state(&self) -> State {
        match &self.phase {
            Phase::Stopped { .. } => State::Stopped,
            Phase::Failed { .. } => State::Failed,
            Phase::WaitingDeps | Phase::BusyRetry { .. } | Phase::Spawning { .. } => {
                State::Starting
            }
            Phase::Backoff { .. } => State::Restarting,
            Phase::Up { ready: true, .. } => State::Running,
            Phase::Up { ready: false, .. } => State::Starting,
            Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } => stop.shown,
        }
    }

    fn run(&self) -> Option<&Run> {
        match &self.phase {
            Phase::Up { run, .. } | Phase::Stopping { run, .. } | Phase::Draining { run, .. } => {
                Some(run)
            }
            _ => None,
        }
    }

    /// The current run's main pid, until it is reaped.
    pub fn pid(&self) -> Option<i32> {
        self.run().map(|r| r.pid)
    }

    /// The current run's spawn generation.
    pub fn gen(&self) -> Option<u64> {
        self.run().map(|r| r.gen)
    }

    /// True while a process of this service may exist.
    pub fn has_process(&self) -> bool {
        self.run().is_some()
    }

    /// A start under way with no process yet.
    pub fn start_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::WaitingDeps
                | Phase::Backoff { .. }
                | Phase::BusyRetry { .. }
                | Phase::Spawning { .. }
        )
    }

    /// Has a process, or is about to: what a stop acts on.
    pub fn is_active(&self) -> bool {
        self.has_process() || self.start_pending()
    }

    /// What a `stop` acts on: a process, a pending start, or a pending retry.
    pub fn stoppable(&self) -> bool {
        self.is_active() || self.next_restart().is_some()
    }

    pub fn waiting_for_deps(&self) -> bool {
        self.phase == Phase::WaitingDeps
    }

    /// Stopped by an operator: a reload leaves it stopped.
    pub fn held(&self) -> bool {
        matches!(self.phase, Phase::Stopped { held: true })
    }

    /// What a stop under way leads to, if one is.
    pub fn stopping(&self) -> Option<AfterStop> {
        match &self.phase {
            Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } => Some(stop.then),
            Phase::Spawning { stop, .. } => stop.map(|(then, _)| then),
            _ => None,
        }
    }

    /// When the next (re)start is due: a restart delay, or a retry of a failed service.
    pub fn next_restart(&self) -> Option<Instant> {
        match self.phase {
            Phase::Backoff { until } => Some(until),
            Phase::Failed { retry_at } => retry_at,
            _ => None,
        }
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        match &self.phase {
            Phase::Up { run, .. } | Phase::Stopping { run, .. } => {
                now.saturating_duration_since(run.started)
            }
            _ => Duration::ZERO,
        }
    }

    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn last_exit(&self) -> Option<LastExit> {
        self.last_exit
    }

    pub fn last_exit_code(&self) -> Option<i32> {
        self.last_exit.map(|l| l.exit.code())
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn history(&self) -> &VecDeque<HistoryEntry> {
        &self.history
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// The earliest moment this service needs the loop's attention, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Backoff { until } | Phase::BusyRetry { until, .. } => Some(*until),
            Phase::Failed { retry_at } => *retry_at,
            Phase::Up { health, .. } if !health.in_flight => health.next_probe,
            Phase::Stopping { stop, .. } if !stop.killed => Some(stop.deadline),
            Phase::Draining { stop, .. } => {
                Some(stop.poll_at.map_or(stop.deadline, |p| p.min(stop.deadline)))
            }
            _ => None,
        }
    }

    // ----- the one entry point ---------------------------------------------------------

    /// Feeds one event. Requests (`Start`, `Restart`, `Stop`) may be refused; everything
    /// else is accepted, and an event that makes no sense in the current phase is
    /// ignored with a warning record, never a panic.
    pub fn on(&mut self, event: Event, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        let before = self.state();
        let result = self.dispatch(event, ctx);
        if self.state() != before {
            self.since_ms = ctx.now.wall_ms;
        }
        result
    }

    fn dispatch(&mut self, event: Event, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        let now = ctx.now.mono;
        Ok(match event {
            Event::Start => return self.start(ctx),
            Event::Restart => return self.restart(ctx),
            Event::Stop { then, origin } => return self.stop(then, origin, ctx),
            Event::DepsChanged => match self.phase {
                Phase::WaitingDeps => self.launch(0, ctx),
                _ => Vec::new(),
            },
            Event::Spawned { pid, gen } => self.spawned(pid, gen, ctx),
            Event::SpawnFailed { error, busy } => self.spawn_failed(error, busy, ctx),
            Event::Exited { gen, exit } => self.exited(gen, exit, ctx),
            Event::GroupEmpty => match self.phase {
                Phase::Draining { run, stop } => {
                    let mut actions = vec![Action::Reap(run.pid)];
                    actions.extend(self.finish_stop(stop, ctx));
                    actions
                }
                _ => vec![stray("group check with no draining run")],
            },
            Event::GroupAlive => match &mut self.phase {
                Phase::Draining { stop, .. } => {
                    stop.poll_at = Some(now + GROUP_POLL);
                    Vec::new()
                }
                _ => vec![stray("group check with no draining run")],
            },
            Event::Timer => self.timer(ctx),
            Event::Probe { gen, result } => self.probe(gen, result, ctx),
            Event::ProbeSkipped => {
                let interval = self.check_interval();
                if let (Phase::Up { health, .. }, Some(interval)) = (&mut self.phase, interval) {
                    health.in_flight = false;
                    health.next_probe = Some(now + interval);
                }
                Vec::new()
            }
            Event::Reconfigured(spec) => self.reconfigured(*spec, ctx),
        })
    }

    // ----- requests --------------------------------------------------------------------

    fn start(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        match &mut self.phase {
            Phase::Up { .. } => Err(Refusal::AlreadyRunning),
            Phase::Spawning { stop, .. } => match stop {
                Some(_) => {
                    *stop = None;
                    Ok(Vec::new())
                }
                None => Err(Refusal::AlreadyRunning),
            },
            // Started while stopping: the stop finishes, then it starts.
            Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } => {
                stop.then = AfterStop::Start;
                stop.origin = Origin::Operator;
                Ok(Vec::new())
            }
            _ => {
                if let Some(why) = self.spec.binary_error() {
                    self.phase = Phase::Failed { retry_at: None };
                    self.last_error = Some(why.clone());
                    return Err(Refusal::Binary(why));
                }
                self.attempts = 0;
                Ok(self.launch(0, ctx))
            }
        }
    }

    fn restart(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        if self.has_process() || matches!(self.phase, Phase::Spawning { .. }) {
            self.attempts = 0;
            return self.stop(AfterStop::Start, Origin::Operator, ctx);
        }
        self.start(ctx)
    }

    fn stop(
        &mut self,
        then: AfterStop,
        origin: Origin,
        ctx: &mut Ctx,
    ) -> Result<Vec<Action>, Refusal> {
        let now = ctx.now.mono;
        match &mut self.phase {
            Phase::Up { run, ready, .. } => {
                let (run, ready) = (*run, *ready);
                Ok(self.begin_stop(run, ready, then, origin, now))
            }
            Phase::Spawning { stop, .. } => {
                *stop = Some(merge(*stop, then, origin));
                Ok(Vec::new())
            }
            Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } => {
                (stop.then, stop.origin) = merge(Some((stop.then, stop.origin)), then, origin);
                Ok(Vec::new())
            }
            Phase::Stopped { .. } | Phase::Failed { .. } => {
                let retry_pending = self.next_restart().is_some();
                match then {
                    AfterStop::Remove => Ok(vec![Action::Remove]),
                    AfterStop::Start => self.start(ctx),
                    AfterStop::Stay if retry_pending => Ok(self.cancel(origin, "retry")),
                    AfterStop::Stay => Err(Refusal::NotRunning),
                    AfterStop::Recover(_) => Ok(Vec::new()),
                }
            }
            // No process yet: the pending start is cancelled at once.
            Phase::WaitingDeps | Phase::Backoff { .. } | Phase::BusyRetry { .. } => match then {
                AfterStop::Remove => Ok(vec![Action::Remove]),
                AfterStop::Start => {
                    self.attempts = 0;
                    Ok(self.launch(0, ctx))
                }
                AfterStop::Stay => Ok(self.cancel(origin, "pending start")),
                AfterStop::Recover(_) => Ok(Vec::new()),
            },
        }
    }

    /// A pending (re)start is dropped: stopped, and held when an operator asked.
    fn cancel(&mut self, origin: Origin, what: &str) -> Vec<Action> {
        self.phase = Phase::Stopped {
            held: origin != Origin::Reload,
        };
        self.last_error = None;
        vec![log(
            log::Level::Info,
            "stopped",
            None,
            format!("stopped ({what} cancelled)"),
        )]
    }

    fn begin_stop(
        &mut self,
        run: Run,
        ready: bool,
        then: AfterStop,
        origin: Origin,
        now: Instant,
    ) -> Vec<Action> {
        self.phase = Phase::Stopping {
            run,
            stop: Stop {
                deadline: now + self.spec.stop_timeout,
                killed: false,
                then,
                origin,
                shown: if ready {
                    State::Running
                } else {
                    State::Starting
                },
                poll_at: None,
            },
        };
        vec![
            log(
                log::Level::Info,
                "stopping",
                Some(run.pid),
                format!(
                    "stopping with {}",
                    super::state::signal_name(self.spec.stop_signal)
                ),
            ),
            Action::Signal {
                pgid: run.pid,
                sig: self.spec.stop_signal,
            },
        ]
    }

    fn finish_stop(&mut self, stop: Stop, ctx: &mut Ctx) -> Vec<Action> {
        self.phase = Phase::Stopped {
            held: matches!(stop.origin, Origin::Operator | Origin::Shutdown),
        };
        let mut actions = vec![log(log::Level::Info, "stopped", None, "stopped")];
        match stop.then {
            AfterStop::Stay => self.last_error = None,
            AfterStop::Remove => actions.push(Action::Remove),
            AfterStop::Start => {
                self.last_error = None;
                self.attempts = 0;
                actions.extend(self.launch(0, ctx));
            }
            // The liveness failure stays in last_error (unless the attempts ran out).
            AfterStop::Recover(_) if ctx.shutting_down => {}
            AfterStop::Recover(delay) => {
                actions.push(self.schedule_restart(delay, ctx.now.mono));
            }
        }
        actions
    }

    // ----- spawning --------------------------------------------------------------------

    /// Asks for a spawn, unless dependencies hold it back or shutdown forbids it.
    fn launch(&mut self, tries: u32, ctx: &mut Ctx) -> Vec<Action> {
        if ctx.shutting_down {
            self.phase = Phase::Stopped { held: true };
            return Vec::new();
        }
        if !ctx.unmet.is_empty() {
            self.phase = Phase::WaitingDeps;
            self.last_error = Some(format!("waiting for {}", ctx.unmet.join(", ")));
            return Vec::new();
        }
        if self.phase == Phase::WaitingDeps {
            self.last_error = None;
        }
        self.phase = Phase::Spawning { tries, stop: None };
        vec![Action::Spawn]
    }

    fn spawned(&mut self, pid: i32, gen: u64, ctx: &mut Ctx) -> Vec<Action> {
        let Phase::Spawning { stop, .. } = self.phase else {
            // Nothing asked for this process: it must not run untracked.
            return vec![
                stray("spawn reported while none was asked for: killing it"),
                Action::Signal {
                    pgid: pid,
                    sig: libc::SIGKILL,
                },
            ];
        };
        let now = ctx.now;
        let run = Run {
            pid,
            gen,
            started: now.mono,
        };
        self.push_history(HistoryEntry {
            started_ms: now.wall_ms,
            exited_ms: None,
            exit_code: None,
        });
        // Without a health check the process is up once exec has succeeded; with one,
        // once the first check passes.
        let mut health = Health::default();
        let ready = match &self.spec.health_check {
            Some(hc) => {
                health.next_probe = Some(now.mono + Duration::from_millis(hc.initial_delay_ms));
                false
            }
            None => true,
        };
        self.phase = Phase::Up { run, ready, health };
        let mut actions = vec![log(log::Level::Info, "started", Some(pid), "started")];
        if let Some((then, origin)) = stop {
            actions.extend(self.begin_stop(run, ready, then, origin, now.mono));
        }
        actions
    }

    /// A failed spawn is a failed run of no duration. A busy binary is first tried again
    /// a few times, whatever the policy: that failure is a moment's, not the service's.
    fn spawn_failed(&mut self, error: String, busy: bool, ctx: &mut Ctx) -> Vec<Action> {
        let Phase::Spawning { tries, stop } = self.phase else {
            return vec![stray("spawn failure reported while none was asked for")];
        };
        let now = ctx.now;
        if let Some((then, origin)) = stop {
            // A stop came first: there is nothing to stop, so it simply holds.
            self.phase = Phase::Stopped {
                held: origin != Origin::Reload,
            };
            self.last_error = Some(error);
            return match then {
                AfterStop::Remove => vec![Action::Remove],
                AfterStop::Start => {
                    self.attempts = 0;
                    self.launch(0, ctx)
                }
                _ => Vec::new(),
            };
        }
        if busy && tries < BUSY_RETRIES {
            self.phase = Phase::BusyRetry {
                until: now.mono + BUSY_RETRY,
                tries: tries + 1,
            };
            let msg = format!(
                "cannot start yet: {error}; trying again in {} ms",
                BUSY_RETRY.as_millis()
            );
            self.last_error = Some(error);
            return vec![log(log::Level::Warn, "retrying", None, msg)];
        }
        self.push_history(HistoryEntry {
            started_ms: now.wall_ms,
            exited_ms: Some(now.wall_ms),
            exit_code: None,
        });
        let mut actions = vec![log(
            log::Level::Error,
            "failed",
            None,
            format!("cannot start: {error}"),
        )];
        self.last_error = Some(error);
        actions.extend(self.after_run(false, ctx));
        if let Phase::Backoff { until } = &mut self.phase {
            *until = (*until).max(now.mono + SPAWN_RETRY_MIN);
        }
        actions
    }

    // ----- exits -----------------------------------------------------------------------

    fn exited(&mut self, gen: u64, exit: Exit, ctx: &mut Ctx) -> Vec<Action> {
        let now = ctx.now;
        let (run, stop) = match &self.phase {
            Phase::Up { run, .. } if run.gen == gen => (*run, None),
            Phase::Stopping { run, stop } if run.gen == gen => (*run, Some(*stop)),
            _ => return vec![stray("exit reported for no live run")],
        };
        self.last_exit = Some(LastExit {
            exit,
            at_ms: now.wall_ms,
            by_operator: stop.is_some_and(|s| s.origin == Origin::Operator),
        });
        if let Some(h) = self.history.back_mut() {
            h.exited_ms = Some(now.wall_ms);
            h.exit_code = Some(exit.code());
        }
        // An exit we asked for is news, not a warning.
        let level = if exit.success() || stop.is_some() {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        let mut actions = vec![log(level, "exited", Some(run.pid), exit.describe())];
        if let Some(mut stop) = stop {
            if stop.killed {
                actions.push(Action::Reap(run.pid));
                actions.extend(self.finish_stop(stop, ctx));
            } else {
                stop.poll_at = Some(now.mono + GROUP_POLL);
                self.phase = Phase::Draining { run, stop };
                actions.push(Action::CheckGroup(run.pid));
            }
            return actions;
        }
        // A run ends with its main process: what is left of its group goes with it.
        actions.push(Action::Signal {
            pgid: run.pid,
            sig: libc::SIGKILL,
        });
        actions.push(Action::Reap(run.pid));
        if now.mono.saturating_duration_since(run.started) >= self.spec.reset_after {
            self.attempts = 0;
        }
        self.last_error = (!exit.success()).then(|| exit.describe());
        actions.extend(self.after_run(exit.success(), ctx));
        actions
    }

    /// The restart decision after a run ended by itself.
    fn after_run(&mut self, success: bool, ctx: &mut Ctx) -> Vec<Action> {
        let wanted = !ctx.shutting_down
            && match self.spec.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
        if !wanted {
            self.phase = if success {
                Phase::Stopped { held: false }
            } else {
                Phase::Failed { retry_at: None }
            };
            return Vec::new();
        }
        let delay = self.next_attempt(ctx.rng);
        vec![self.schedule_restart(delay, ctx.now.mono)]
    }

    /// The delay before the next restart, counting the attempt; `None` once
    /// `max_restart_attempts` consecutive restarts are used up.
    fn next_attempt(&mut self, rng: &mut fastrand::Rng) -> Option<Duration> {
        let max = self.spec.max_restart_attempts;
        if max > 0 && self.attempts >= max {
            return None;
        }
        let delay = self.spec.backoff.delay(self.attempts, rng);
        self.attempts += 1;
        Some(delay)
    }

    /// `restarting` until `now + delay`, or `failed` when there is no delay (then
    /// retried every `retry_failed_ms` where that is set).
    fn schedule_restart(&mut self, delay: Option<Duration>, now: Instant) -> Action {
        match delay {
            Some(delay) => {
                self.phase = Phase::Backoff { until: now + delay };
                log(
                    log::Level::Info,
                    "restarting",
                    None,
                    format!(
                        "restarting in {} ms (attempt {})",
                        delay.as_millis(),
                        self.attempts
                    ),
                )
            }
            None => {
                let retry = self.spec.retry_failed;
                self.phase = Phase::Failed {
                    retry_at: retry.map(|r| now + r),
                };
                self.last_error = Some("maximum restart attempts exceeded".into());
                let then = match retry {
                    Some(r) => format!("trying again in {} ms", r.as_millis()),
                    None => "giving up".into(),
                };
                log(
                    log::Level::Error,
                    "failed",
                    None,
                    format!(
                        "maximum restart attempts exceeded ({}); {then}",
                        self.spec.max_restart_attempts
                    ),
                )
            }
        }
    }

    // ----- deadlines -------------------------------------------------------------------

    fn timer(&mut self, ctx: &mut Ctx) -> Vec<Action> {
        let now = ctx.now.mono;
        let due = |t: Instant| now >= t;
        match &mut self.phase {
            Phase::Backoff { until } if due(*until) => {
                self.restarts += 1;
                self.launch(0, ctx)
            }
            Phase::BusyRetry { until, tries } if due(*until) => {
                let tries = *tries;
                self.launch(tries, ctx)
            }
            Phase::Failed { retry_at: Some(at) } if due(*at) => {
                // The attempts stay used up: another failure comes straight back here.
                self.restarts += 1;
                let mut actions = vec![log(
                    log::Level::Info,
                    "retrying",
                    None,
                    "trying a failed service again (retry_failed_ms)",
                )];
                actions.extend(self.launch(0, ctx));
                actions
            }
            Phase::Up { run, health, .. } => match health.next_probe {
                Some(t) if due(t) && !health.in_flight => {
                    health.next_probe = None;
                    health.in_flight = true;
                    vec![Action::Probe { gen: run.gen }]
                }
                _ => Vec::new(),
            },
            Phase::Stopping { run, stop } if !stop.killed && due(stop.deadline) => {
                stop.killed = true;
                let pid = run.pid;
                vec![self.kill_log(pid), kill(pid)]
            }
            Phase::Draining { run, stop } if due(stop.deadline) => {
                // The main process is gone; SIGKILL cannot be ignored: the stop is done.
                let (run, stop) = (*run, *stop);
                let mut actions =
                    vec![self.kill_log(run.pid), kill(run.pid), Action::Reap(run.pid)];
                actions.extend(self.finish_stop(stop, ctx));
                actions
            }
            Phase::Draining { run, stop } => match stop.poll_at {
                Some(t) if due(t) => {
                    stop.poll_at = None;
                    vec![Action::CheckGroup(run.pid)]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn kill_log(&self, pid: i32) -> Action {
        log(
            log::Level::Warn,
            "killed",
            Some(pid),
            format!(
                "still running after {} ms: sending SIGKILL",
                self.spec.stop_timeout.as_millis()
            ),
        )
    }

    // ----- health ----------------------------------------------------------------------

    fn check_interval(&self) -> Option<Duration> {
        self.spec
            .health_check
            .as_ref()
            .map(|hc| Duration::from_millis(hc.interval_ms))
    }

    /// The first pass makes the service ready; `failure_threshold` failures in a row
    /// while running restart it through backoff (liveness).
    fn probe(&mut self, gen: u64, result: Result<(), String>, ctx: &mut Ctx) -> Vec<Action> {
        let now = ctx.now.mono;
        let Some(hc) = self.spec.health_check.clone() else {
            return Vec::new();
        };
        let Phase::Up { run, ready, health } = &mut self.phase else {
            return Vec::new(); // A late answer about a run that is over or stopping.
        };
        if run.gen != gen {
            return Vec::new();
        }
        health.in_flight = false;
        health.next_probe = Some(now + Duration::from_millis(hc.interval_ms));
        let (run, pid) = (*run, Some(run.pid));
        match result {
            Ok(()) => {
                health.failures = 0;
                // A pass resets the restart counter, as a long run does.
                self.attempts = 0;
                if *ready {
                    return Vec::new();
                }
                *ready = true;
                self.last_error = None;
                vec![log(
                    log::Level::Info,
                    "ready",
                    pid,
                    "health check passed: ready",
                )]
            }
            Err(why) => {
                health.failures += 1;
                let n = health.failures;
                let live = *ready;
                self.last_error = Some(format!("health check failed ({n} in a row): {why}"));
                if !live || n < hc.failure_threshold {
                    // Before the first pass a failure is expected (the service is still
                    // coming up): it is debug news, not a warning.
                    let level = if live {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    return vec![log(
                        level,
                        "unhealthy",
                        pid,
                        format!("health check failed ({n} in a row): {why}"),
                    )];
                }
                let then = AfterStop::Recover(self.next_attempt(ctx.rng));
                let mut actions = vec![log(
                    log::Level::Warn,
                    "unhealthy",
                    pid,
                    format!("health check failed {n} times in a row ({why}): restarting"),
                )];
                actions.extend(self.begin_stop(run, true, then, Origin::Liveness, now));
                actions
            }
        }
    }

    /// In-place settings from a reload. A running process without a check any more is
    /// up; one that just got a check is probed from now on; a failed service whose
    /// binary can run again is `stopped`, one whose binary went says why.
    fn reconfigured(&mut self, spec: ServiceSpec, ctx: &mut Ctx) -> Vec<Action> {
        let had_problem = self.spec.binary_problem.is_some();
        self.spec = spec;
        let now = ctx.now.mono;
        let check = self.spec.health_check.clone();
        match (&mut self.phase, check) {
            (Phase::Up { ready, health, .. }, None) => {
                *health = Health::default();
                if !*ready {
                    *ready = true;
                    self.last_error = None;
                }
            }
            (Phase::Up { health, .. }, Some(hc))
                if health.next_probe.is_none() && !health.in_flight =>
            {
                health.next_probe = Some(now + Duration::from_millis(hc.initial_delay_ms));
            }
            (Phase::Failed { .. }, _) => {
                if let Some(err) = self.spec.binary_error() {
                    self.last_error = Some(err);
                } else if had_problem {
                    self.last_error = None;
                    self.phase = Phase::Stopped { held: false };
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn push_history(&mut self, h: HistoryEntry) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(h);
    }
}

/// A stop on top of one under way. Removal wins over everything; an operator's or a
/// shutdown's stop is not turned into a restart by a reload or a health check; anything
/// else is replaced by the newer intent.
fn merge(old: Option<(AfterStop, Origin)>, then: AfterStop, origin: Origin) -> (AfterStop, Origin) {
    match old {
        Some((AfterStop::Remove, o)) => (AfterStop::Remove, o),
        Some(kept @ (AfterStop::Stay, Origin::Operator | Origin::Shutdown))
            if matches!(origin, Origin::Reload | Origin::Liveness) && then != AfterStop::Remove =>
        {
            kept
        }
        _ => (then, origin),
    }
}

fn kill(pgid: i32) -> Action {
    Action::Signal {
        pgid,
        sig: libc::SIGKILL,
    }
}

/// An event that cannot happen in this phase: recorded, ignored.
fn stray(what: &str) -> Action {
    log(
        log::Level::Warn,
        "internal",
        None,
        format!("{what} (ignored)"),
    )
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
