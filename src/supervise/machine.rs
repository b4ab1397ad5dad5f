//! The per-service lifecycle (docs/lifecycle.md) as a closed machine, in the manner of
//! s6-supervise's state x event table: one private `Phase` names where a service is,
//! one entry point (`Service::on`) takes an `Event` with its context (the time, the
//! random source, which dependencies are not running, whether shutdown is under way)
//! and returns the `Action`s the supervisor must carry out. The five states users see
//! are computed from the phase, never stored.
//!
//! It is pure: no syscall, no clock, no spawn. No other module writes its fields; the
//! supervisor only feeds it events and reads it through accessors. Every (phase, event)
//! pair is covered by the table in `machine/table.rs`, and random event sequences are
//! checked against the lifecycle's invariants in `machine/props.rs`.
//!
//! A run's main pid is reaped only when this machine says `Reap`, after the last signal
//! that may go to its process group: the leader stays a zombie until then, so its pid
//! (the group id) cannot be reused while anyone may still signal it.

use super::state::{reason, Exit, HistoryEntry, LastExit, Now, Refusal, State};
use crate::config::discovery::{BinaryProblem, ServiceSpec};
use crate::config::RestartPolicy;
use crate::output::record::RecordKind;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a stopping service whose main process has exited is checked for the rest of
/// its group. Polling happens only then, never while idle.
pub const GROUP_POLL: Duration = Duration::from_millis(20);
/// Runs kept for `status` (docs/status-and-metrics.md).
pub const HISTORY_LEN: usize = 10;
/// The shortest wait before retrying a spawn that failed (EMFILE, EAGAIN, ENOENT...).
/// Backoff 0 means "restart at once after an exit"; it must not turn a resource
/// shortage into a busy loop that makes the shortage worse.
pub const SPAWN_RETRY_MIN: Duration = Duration::from_millis(100);
/// A binary busy (ETXTBSY: open for writing, e.g. being copied into place) is tried
/// again this often, this many times, before the failure counts as one.
pub const BUSY_RETRY: Duration = Duration::from_millis(100);
pub const BUSY_RETRIES: u32 = 50;
/// How often a pid file that does not yet name the main process is read again.
pub const PID_FILE_POLL: Duration = Duration::from_millis(50);

/// Who asked for a stop. It decides what the stop leaves behind (an operator's stop is
/// kept across reloads) and what may override a stop under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Origin {
    Operator,
    Reload,
    Shutdown,
    Liveness,
}

/// What follows a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// What the pid file of run `gen` says: the main process, or why it names none.
    PidFile {
        gen: u64,
        result: Result<i32, String>,
    },
    /// The deadline this machine gave (`deadline`) has passed.
    Timer,
    /// A health-check result for run `gen`.
    Probe {
        gen: u64,
        result: Result<(), String>,
    },
    /// The health check could not be started (too many in flight).
    ProbeSkipped,
    /// A reload changed settings that apply in place (docs/lifecycle.md `update`).
    Reconfigured(Box<ServiceSpec>),
    /// What the service said on its notify socket (docs/health.md), about its current run.
    Notify(Notice),
}

/// One sd_notify message, as the main loop takes it from the service's slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`.
    Status(String),
    /// The last `WATCHDOG=1`, read when the watchdog deadline came (keep-alives never
    /// wake the loop by themselves).
    KeepAlive(Instant),
    /// `WATCHDOG=trigger`: restart now.
    Trigger,
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
    /// Read and check the pid file of run `gen`; the answer comes back as `PidFile`.
    ReadPidFile { gen: u64 },
    /// Write an event record.
    Log {
        level: log::Level,
        event: RecordKind,
        pid: Option<i32>,
        msg: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct Run {
    pid: i32,
    gen: u64,
    #[serde(with = "carry::mono")]
    started: Instant,
    /// With `pid_file`: the started process, expected to daemonize and exit 0; the
    /// run's main process is then the one the pid file names.
    launcher: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// A check has passed during this run.
    passed: bool,
    /// When the next probe is due; none while one is in flight.
    #[serde(with = "carry::mono_opt")]
    next_probe: Option<Instant>,
    in_flight: bool,
}

/// A run's sd_notify state (docs/health.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
struct Watch {
    /// `READY=1` came.
    notified: bool,
    /// When the run is declared hung without a keep-alive (`watchdog_ms`, once running).
    #[serde(with = "carry::mono_opt")]
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct Stop {
    #[serde(with = "carry::mono")]
    deadline: Instant,
    killed: bool,
    then: AfterStop,
    origin: Origin,
    /// The state shown until the group is empty (docs/lifecycle.md: "the state stays what
    /// it was").
    shown: State,
    /// When the draining group is next checked.
    #[serde(with = "carry::mono_opt")]
    poll_at: Option<Instant>,
}

/// Where a service is. Each variant carries exactly what that phase needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
enum Phase {
    /// No process, nothing pending. `held`: an operator (or shutdown) stopped it, so a
    /// reload does not start it again.
    Stopped { held: bool },
    /// Given up (policy, attempts, a binary that cannot run); `retry_at` when
    /// `retry_failed_ms` will try again.
    Failed {
        #[serde(with = "carry::mono_opt")]
        retry_at: Option<Instant>,
    },
    /// A start held back until every `depends_on` runs.
    WaitingDeps,
    /// Waiting out a restart delay.
    Backoff {
        #[serde(with = "carry::mono")]
        until: Instant,
    },
    /// The binary was busy (ETXTBSY): the same start is tried again.
    BusyRetry {
        #[serde(with = "carry::mono")]
        until: Instant,
        tries: u32,
    },
    /// `Spawn` was asked for and its result is not in yet. A stop that arrives meanwhile
    /// is kept and carried out once the process exists.
    Spawning {
        tries: u32,
        stop: Option<(AfterStop, Origin)>,
    },
    /// A live run: `ready` once up (exec succeeded, or the first health check passed
    /// and, with `ready: notify`, READY=1 came).
    Up {
        run: Run,
        ready: bool,
        health: Health,
        watch: Watch,
    },
    /// The stop signal went to the group; the main process has not exited yet.
    Stopping { run: Run, stop: Stop },
    /// The main process exited during a stop; the rest of the group is being waited for.
    Draining { run: Run, stop: Stop },
    /// `pid_file`: the launcher exited 0; its pid file must name a live process of the
    /// service by `deadline` (spawn + `stop_timeout_ms`). Read again at `retry_at`.
    /// The launcher is left unreaped meanwhile: its pid stays the id of its process
    /// group, which a stop signals, and cannot be reused. `why`: what the last read
    /// found wrong, reported only if the deadline passes (not in `last_error` meanwhile).
    AwaitPidFile {
        gen: u64,
        launcher: i32,
        why: Option<String>,
        #[serde(with = "carry::mono")]
        started: Instant,
        #[serde(with = "carry::mono")]
        deadline: Instant,
        #[serde(with = "carry::mono_opt")]
        retry_at: Option<Instant>,
    },
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
    /// The current run's last `STATUS=...`.
    notify_status: Option<String>,
    history: VecDeque<HistoryEntry>,
    /// Wall-clock ms of the last change of the shown state.
    since_ms: u64,
    /// Why the current run is being ended, where more than its exit and the stop's
    /// origin say so (a liveness failure, an upgrade, the OOM killer): its `history`
    /// reason when it ends.
    ending: Option<String>,
}

fn log(level: log::Level, event: RecordKind, pid: Option<i32>, msg: impl Into<String>) -> Action {
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
            notify_status: None,
            history: VecDeque::new(),
            since_ms: now_ms,
            ending: None,
        }
    }

    /// Carries on what a predecessor saved (`state_dir`).
    pub fn restore(&mut self, restarts: u64, history: impl IntoIterator<Item = HistoryEntry>) {
        self.restarts = restarts;
        for h in history {
            self.push_history(h);
        }
    }

    /// The current run is ended by an upgrade (or its rollback), or was killed by the
    /// OOM killer: `why` is its `history` reason, whatever stop is asked for next.
    pub fn ending(&mut self, why: String) {
        self.ending = Some(why);
    }

    /// At rest (stopped, or failed already): `failed` with `why`, as after an upgrade
    /// that failed with no previous binary to go back to. Elsewhere nothing changes.
    pub fn fail_at_rest(&mut self, why: String) -> bool {
        if !matches!(self.phase, Phase::Stopped { .. } | Phase::Failed { .. }) {
            return false;
        }
        self.phase = Phase::Failed { retry_at: None };
        self.last_error = Some(why);
        true
    }

    /// A reload could not use the service's new settings (its sidecar is broken): it
    /// keeps those it has, and `last_error` says why.
    pub fn keep_settings(&mut self, why: String) {
        self.last_error = Some(why);
    }

    /// The binary was looked at again (before a start, or at reload).
    pub fn set_binary_problem(&mut self, problem: Option<BinaryProblem>) {
        self.spec.binary_problem = problem;
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

    /// The lifecycle, one cell per (phase, event) pair: the table `machine/table.rs`
    /// checks, written as the code. Each cell names its handler; guards pick between
    /// cells of the same pair. Requests may be refused (`return`); events that find
    /// nothing to do in a phase are quietly dropped; every other pair cannot happen and
    /// reaches the one stray cell at the end.
    fn dispatch(&mut self, event: Event, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        use {Event as E, Notice as N, Phase as P};
        let now = ctx.now.mono;
        Ok(match (&self.phase, event) {
            // ----- requests ----------------------------------------------------------------
            (_, E::Start | E::Restart) if !self.spec.enabled => return Err(Refusal::Disabled),
            (P::Up { .. } | P::AwaitPidFile { .. } | P::Spawning { stop: None, .. }, E::Start) => {
                return Err(Refusal::AlreadyRunning)
            }
            (P::Spawning { stop: Some(_), .. }, E::Start) => self.keep_spawn(),
            (P::Stopping { .. } | P::Draining { .. }, E::Start) => self.start_after_stop(),
            (_, E::Start) => return self.start(ctx),
            (
                P::Up { .. }
                | P::Stopping { .. }
                | P::Draining { .. }
                | P::Spawning { .. }
                | P::AwaitPidFile { .. },
                E::Restart,
            ) => return self.restart(ctx),
            (_, E::Restart) => return self.start(ctx),
            (P::Up { run, ready, .. }, E::Stop { then, origin }) => {
                let (run, ready) = (*run, *ready);
                self.begin_stop(run, ready, then, origin, now)
            }
            (P::Spawning { .. }, E::Stop { then, origin }) => self.stop_once_spawned(then, origin),
            (P::Stopping { .. } | P::Draining { .. }, E::Stop { then, origin }) => {
                self.stop_again(then, origin)
            }
            (P::Stopped { .. } | P::Failed { .. }, E::Stop { then, origin }) => {
                return self.stop_idle(then, origin, ctx)
            }
            (P::AwaitPidFile { launcher, .. }, E::Stop { then, origin }) if *launcher > 0 => {
                self.stop_unnamed(then, origin, now)
            }
            (
                P::WaitingDeps | P::Backoff { .. } | P::BusyRetry { .. } | P::AwaitPidFile { .. },
                E::Stop { then, origin },
            ) => self.stop_pending(then, origin, ctx),
            // ----- runs --------------------------------------------------------------------
            (P::WaitingDeps, E::DepsChanged) => self.launch(0, ctx),
            (P::Spawning { stop, .. }, E::Spawned { pid, gen }) => {
                let stop = *stop;
                self.spawned(stop, pid, gen, ctx)
            }
            (P::Spawning { tries, stop }, E::SpawnFailed { error, busy }) => {
                let (tries, stop) = (*tries, *stop);
                self.spawn_failed(tries, stop, error, busy, ctx)
            }
            (P::Up { run, .. }, E::Exited { gen, exit }) if run.gen == gen => {
                let run = *run;
                self.exited(run, None, exit, ctx)
            }
            (P::Stopping { run, stop }, E::Exited { gen, exit }) if run.gen == gen => {
                let (run, stop) = (*run, *stop);
                self.exited(run, Some(stop), exit, ctx)
            }
            (P::Draining { run, stop }, E::GroupEmpty) => {
                let (run, stop) = (*run, *stop);
                self.drained(run, stop, ctx)
            }
            (P::Draining { .. }, E::GroupAlive) => self.poll_group_later(now),
            (P::AwaitPidFile { gen: awaited, .. }, E::PidFile { gen, result })
                if *awaited == gen =>
            {
                self.pid_file(result, ctx)
            }
            // ----- deadlines ---------------------------------------------------------------
            (P::Backoff { until }, E::Timer) if now >= *until => self.backoff_over(ctx),
            (P::BusyRetry { until, tries }, E::Timer) if now >= *until => {
                let tries = *tries;
                self.launch(tries, ctx)
            }
            (P::Failed { retry_at: Some(at) }, E::Timer) if now >= *at => self.retry_failed(ctx),
            (P::Up { run, ready, .. }, E::Timer)
                if run.launcher && now >= run.started + self.spec.stop_timeout =>
            {
                let (run, ready) = (*run, *ready);
                self.never_daemonized(run, ready, ctx)
            }
            (P::AwaitPidFile { deadline, .. }, E::Timer) if now >= *deadline => {
                self.pid_file_timeout(ctx)
            }
            (
                P::AwaitPidFile {
                    retry_at: Some(at), ..
                },
                E::Timer,
            ) if now >= *at => self.read_pid_file_again(),
            (
                P::Up {
                    run,
                    ready: true,
                    watch:
                        Watch {
                            deadline: Some(at), ..
                        },
                    ..
                },
                E::Timer,
            ) if now >= *at => {
                let run = *run;
                self.watchdog_timeout(run, ctx)
            }
            (P::Up { health, .. }, E::Timer)
                if !health.in_flight && health.next_probe.is_some_and(|at| now >= at) =>
            {
                self.probe_due()
            }
            (P::Stopping { stop, .. }, E::Timer) if !stop.killed && now >= stop.deadline => {
                self.stop_timeout()
            }
            (P::Draining { run, stop }, E::Timer) if now >= stop.deadline => {
                let (run, stop) = (*run, *stop);
                self.drain_timeout(run, stop, ctx)
            }
            (P::Draining { stop, .. }, E::Timer) if stop.poll_at.is_some_and(|at| now >= at) => {
                self.poll_group()
            }
            // ----- health, reloads, sd_notify ----------------------------------------------
            (P::Up { run, .. }, E::Probe { gen, result })
                if run.gen == gen && self.spec.health_check.is_some() =>
            {
                self.probe(result, ctx)
            }
            (P::Up { .. }, E::ProbeSkipped) => self.probe_skipped(now),
            (_, E::Reconfigured(spec)) => self.reconfigured(*spec, ctx),
            (_, E::Notify(N::Status(text))) => self.status_text(text),
            (P::Up { .. }, E::Notify(N::Ready)) => self.ready_notified(now),
            (P::Up { .. }, E::Notify(N::KeepAlive(at))) => self.keep_alive(at),
            (P::Up { run, ready, .. }, E::Notify(N::Trigger)) => {
                let (run, ready) = (*run, *ready);
                self.watchdog_triggered(run, ready, ctx)
            }
            // ----- nothing to do: nothing due, late news of a run that is over ------------
            (_, E::DepsChanged | E::Timer | E::Probe { .. } | E::ProbeSkipped | E::Notify(_)) => {
                Vec::new()
            }
            // ----- cannot happen in this phase ---------------------------------------------
            (_, event) => self.stray(event),
        })
    }

    /// An event that cannot happen in this phase (a spawn nothing asked for, an exit or
    /// a group check of no such run, a pid file nobody awaits): recorded and ignored.
    fn stray(&self, event: Event) -> Vec<Action> {
        let what = match event {
            // Nothing asked for this process: it must not run untracked.
            Event::Spawned { pid, .. } => {
                return vec![
                    stray("spawn reported while none was asked for: killing it"),
                    kill(pid),
                ]
            }
            Event::SpawnFailed { .. } => "spawn failure reported while none was asked for",
            Event::Exited { .. } => "exit reported for no live run",
            Event::GroupEmpty | Event::GroupAlive => "group check with no draining run",
            Event::PidFile { .. } if matches!(self.phase, Phase::AwaitPidFile { .. }) => {
                "pid file answer for another run"
            }
            Event::PidFile { .. } => "pid file answer with none awaited",
            _ => "event with no meaning in this phase",
        };
        vec![stray(what)]
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
        RecordKind::Internal,
        None,
        format!("{what} (ignored)"),
    )
}

pub(super) mod carry;
mod health;
mod notices;
mod read;
mod runs;
mod start_stop;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod props;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod table;
