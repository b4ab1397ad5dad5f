//! The per-service state machine (SPEC 4), pure: it is fed events with the time passed
//! in and answers with `Action`s for the supervisor to carry out. It makes no syscalls,
//! reads no clock and spawns nothing, so every (state, event) pair is unit-tested here.
//!
//! A run is one spawned process. Its main process exiting ends the run; the supervisor
//! reaps the pid only when this machine says `Reap`, so that the process group id stays
//! reserved (the leader is a zombie until then) for as long as signals may go to it.

use crate::config::discovery::ServiceSpec;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    Starting,
    Running,
    Failed,
    Restarting,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Failed => "failed",
            State::Restarting => "restarting",
        }
    }

    pub const ALL: [State; 5] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Failed,
        State::Restarting,
    ];
}

/// How a main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by signal {}", signal_name(s)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("{sig}"))
}

/// The time an event happens, on both clocks: monotonic for decisions, wall for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub started_ms: u64,
    pub exited_ms: Option<u64>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub pid: i32,
    pub gen: u64,
    pub started: Instant,
    /// Set once the main process has exited while a stop waits for the rest of the group.
    pub exited: Option<Exit>,
}

/// What to do once a stop has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay stopped (a user `stop`, a shutdown, a disable).
    Stay,
    /// Start again (`restart`, or a reload that changed the process).
    Start,
    /// Forget the service (removed by a reload).
    Remove,
    /// Failed its liveness check: restart after this backoff delay, or (None) give up
    /// because the attempts are used up.
    Recover(Option<Duration>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopping {
    pub deadline: Instant,
    pub killed: bool,
    pub then: AfterStop,
    /// When the group is next checked for survivors (set after the main process exited).
    pub poll_at: Option<Instant>,
}

/// What the supervisor must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn a new run (the supervisor checks dependencies first).
    Spawn,
    /// Send `sig` to the process group `pgid` (a run's main pid).
    SignalGroup { pgid: i32, sig: i32 },
    /// Report whether group `pgid` still has live members (`group_empty`/`group_alive`).
    CheckGroup(i32),
    /// Reap this main process and forget its pid.
    Reap(i32),
    /// Drop this service from the map.
    Remove,
    /// Run the health check against run `gen`; the result comes back as
    /// `probe_result` (or `probe_skipped`).
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
pub enum Refusal {
    Disabled,
    AlreadyRunning,
    NotRunning,
    BinaryNotFound,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Disabled => "service is disabled",
            Refusal::AlreadyRunning => "service is already running",
            Refusal::NotRunning => "service is not running",
            Refusal::BinaryNotFound => "service binary not found",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub spec: ServiceSpec,
    pub state: State,
    pub run: Option<Run>,
    pub stopping: Option<Stopping>,
    /// Consecutive restarts; drives the backoff and the attempt limit.
    pub attempts: u32,
    /// Every restart since this service became known; the `restarts` of status/metrics.
    pub restarts: u64,
    pub last_exit_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_restart: Option<Instant>,
    pub history: VecDeque<HistoryEntry>,
    /// Stopped on purpose: a reload leaves it stopped.
    pub held: bool,
    pub health: Health,
    /// Spawns in a row that found the binary busy (ETXTBSY), retried as the same start.
    pub busy_retries: u32,
}

/// Health-check progress of the current run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Failures in a row.
    pub failures: u32,
    /// When the next probe is due (none while one is in flight).
    pub next_probe: Option<Instant>,
    pub in_flight: bool,
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
    pub fn new(spec: ServiceSpec) -> Service {
        let (state, last_error) = match spec.binary_error() {
            Some(e) if spec.autostart || spec.configured => (State::Failed, Some(e)),
            _ => (State::Stopped, None),
        };
        Service {
            spec,
            state,
            run: None,
            stopping: None,
            attempts: 0,
            restarts: 0,
            last_exit_code: None,
            last_error,
            next_restart: None,
            history: VecDeque::new(),
            held: false,
            busy_retries: 0,
            health: Health::default(),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.run.as_ref().map(|r| r.pid)
    }

    /// True while a process of this service may exist.
    pub fn has_process(&self) -> bool {
        self.run.is_some()
    }

    /// A start under way with no process yet: a restart or retry is due, or the start
    /// waits for its dependencies.
    pub fn start_pending(&self) -> bool {
        self.run.is_none() && matches!(self.state, State::Restarting | State::Starting)
    }

    /// Has a process, or is about to: what a stop acts on.
    pub fn is_active(&self) -> bool {
        self.has_process() || self.start_pending()
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        match &self.run {
            Some(r) if r.exited.is_none() => now.saturating_duration_since(r.started),
            _ => Duration::ZERO,
        }
    }

    /// The earliest moment this service needs the loop's attention, if any.
    pub fn deadline(&self) -> Option<Instant> {
        if let Some(st) = &self.stopping {
            if st.killed {
                return None;
            }
            return Some(match st.poll_at {
                Some(p) => p.min(st.deadline),
                None => st.deadline,
            });
        }
        if self.start_pending() {
            return self.next_restart;
        }
        if self.run.is_some() {
            return self.health.next_probe;
        }
        None
    }

    /// `start`, from a user or from autostart. Resets the restart counter.
    pub fn start(&mut self) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        if let Some(st) = &mut self.stopping {
            // Started while stopping: let the stop finish, then start.
            st.then = AfterStop::Start;
            self.held = false;
            return Ok(Vec::new());
        }
        if self.run.is_some() {
            return Err(Refusal::AlreadyRunning);
        }
        if self.spec.binary_problem.is_some() {
            self.state = State::Failed;
            self.last_error = self.spec.binary_error();
            return Err(Refusal::BinaryNotFound);
        }
        self.held = false;
        self.attempts = 0;
        self.busy_retries = 0;
        self.next_restart = None;
        self.state = State::Starting;
        Ok(vec![Action::Spawn])
    }

    /// `stop` (then = Stay), `restart` (Start) or removal (Remove).
    pub fn stop(&mut self, then: AfterStop, now: Instant) -> Result<Vec<Action>, Refusal> {
        self.held = then == AfterStop::Stay;
        if let Some(st) = &mut self.stopping {
            st.then = then;
            return Ok(Vec::new());
        }
        if let Some(run) = &self.run {
            self.stopping = Some(Stopping {
                deadline: now + self.spec.stop_timeout,
                killed: false,
                then,
                poll_at: None,
            });
            return Ok(vec![
                log(
                    log::Level::Info,
                    "stopping",
                    Some(run.pid),
                    format!("stopping with {}", signal_name(self.spec.stop_signal)),
                ),
                Action::SignalGroup {
                    pgid: run.pid,
                    sig: self.spec.stop_signal,
                },
            ]);
        }
        // No process: a pending restart or a wait for dependencies is cancelled.
        let was_active = self.start_pending();
        self.next_restart = None;
        match then {
            AfterStop::Remove => Ok(vec![Action::Remove]),
            AfterStop::Start => self.start(),
            AfterStop::Stay if was_active => {
                self.state = State::Stopped;
                self.last_error = None;
                Ok(vec![log(
                    log::Level::Info,
                    "stopped",
                    None,
                    "stopped (pending start cancelled)",
                )])
            }
            AfterStop::Stay => Err(Refusal::NotRunning),
            // Liveness failures only happen to a running process.
            AfterStop::Recover(_) => Ok(Vec::new()),
        }
    }

    /// `restart`: stop if running, then start with the counter reset.
    pub fn restart(&mut self, now: Instant) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        if self.run.is_some() {
            self.attempts = 0;
            return self.stop(AfterStop::Start, now);
        }
        self.start()
    }

    /// The supervisor spawned the run it was asked for.
    pub fn spawned(&mut self, pid: i32, gen: u64, now: Now) -> Vec<Action> {
        self.busy_retries = 0;
        self.run = Some(Run {
            pid,
            gen,
            started: now.mono,
            exited: None,
        });
        self.push_history(HistoryEntry {
            started_ms: now.wall_ms,
            exited_ms: None,
            exit_code: None,
        });
        // Without a health check the process is up once exec has succeeded; with one,
        // it is up once the first check passes.
        self.health = Health::default();
        self.state = match &self.spec.health_check {
            Some(hc) => {
                self.health.next_probe =
                    Some(now.mono + Duration::from_millis(hc.initial_delay_ms));
                State::Starting
            }
            None => State::Running,
        };
        vec![log(log::Level::Info, "started", Some(pid), "started")]
    }

    /// The spawn failed (binary gone, EMFILE, EAGAIN...): a failed run of no duration.
    /// A `busy` binary (ETXTBSY) is first tried again a few times, whatever the restart
    /// policy: that failure is a moment's, not the service's.
    pub fn spawn_failed(
        &mut self,
        error: String,
        busy: bool,
        now: Now,
        rng: &mut fastrand::Rng,
    ) -> Vec<Action> {
        if busy && self.busy_retries < BUSY_RETRIES {
            self.busy_retries += 1;
            self.state = State::Starting;
            self.next_restart = Some(now.mono + BUSY_RETRY);
            let msg = format!(
                "cannot start yet: {error}; trying again in {} ms",
                BUSY_RETRY.as_millis()
            );
            self.last_error = Some(error);
            return vec![log(log::Level::Warn, "retrying", None, msg)];
        }
        self.busy_retries = 0;
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
        actions.extend(self.after_run(false, Duration::ZERO, true, now.mono, rng));
        if let Some(t) = &mut self.next_restart {
            *t = (*t).max(now.mono + SPAWN_RETRY_MIN);
        }
        actions
    }

    /// The current run's main process exited. `may_restart` is false during shutdown.
    pub fn exited(
        &mut self,
        exit: Exit,
        now: Now,
        may_restart: bool,
        rng: &mut fastrand::Rng,
    ) -> Vec<Action> {
        let Some(run) = &mut self.run else {
            return vec![log(
                log::Level::Warn,
                "internal",
                None,
                "exit reported for no run (ignored)",
            )];
        };
        run.exited = Some(exit);
        let (pid, ran_for) = (run.pid, now.mono.saturating_duration_since(run.started));
        self.last_exit_code = Some(exit.code());
        if let Some(h) = self.history.back_mut() {
            h.exited_ms = Some(now.wall_ms);
            h.exit_code = Some(exit.code());
        }
        // An exit we asked for (a stop) is news, not a warning.
        let level = if exit.success() || self.stopping.is_some() {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        let mut actions = vec![log(level, "exited", Some(pid), exit.describe())];
        if let Some(st) = &mut self.stopping {
            if st.killed {
                actions.push(Action::Reap(pid));
                actions.extend(self.finish_stop(now.mono));
            } else {
                st.poll_at = Some(now.mono + GROUP_POLL);
                actions.push(Action::CheckGroup(pid));
            }
            return actions;
        }
        // A run ends with its main process: what is left of its group goes with it.
        actions.push(Action::SignalGroup {
            pgid: pid,
            sig: libc::SIGKILL,
        });
        actions.push(Action::Reap(pid));
        self.run = None;
        self.health = Health::default();
        self.last_error = (!exit.success()).then(|| exit.describe());
        actions.extend(self.after_run(exit.success(), ran_for, may_restart, now.mono, rng));
        actions
    }

    /// The restart decision after a run ended by itself.
    fn after_run(
        &mut self,
        success: bool,
        ran_for: Duration,
        may_restart: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<Action> {
        if ran_for >= self.spec.reset_after {
            self.attempts = 0;
        }
        let wanted = may_restart
            && match self.spec.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
        if !wanted {
            self.state = if success {
                State::Stopped
            } else {
                State::Failed
            };
            return Vec::new();
        }
        let delay = self.next_attempt(rng);
        vec![self.schedule_restart(delay, now)]
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

    /// `restarting` until `now + delay`, or `failed` for good when there is no delay.
    fn schedule_restart(&mut self, delay: Option<Duration>, now: Instant) -> Action {
        match delay {
            Some(delay) => {
                self.state = State::Restarting;
                self.next_restart = Some(now + delay);
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
                self.state = State::Failed;
                self.last_error = Some("maximum restart attempts exceeded".into());
                log(
                    log::Level::Error,
                    "failed",
                    None,
                    format!(
                        "maximum restart attempts exceeded ({}); giving up",
                        self.spec.max_restart_attempts
                    ),
                )
            }
        }
    }

    /// The supervisor found the stopping run's group empty.
    pub fn group_empty(&mut self, now: Instant) -> Vec<Action> {
        match &self.run {
            Some(r) if r.exited.is_some() && self.stopping.is_some() => {
                let mut actions = vec![Action::Reap(r.pid)];
                actions.extend(self.finish_stop(now));
                actions
            }
            _ => vec![log(
                log::Level::Warn,
                "internal",
                None,
                "group check with no stopped run (ignored)",
            )],
        }
    }

    /// The group is still alive: look again after the poll interval.
    pub fn group_alive(&mut self, now: Instant) {
        if let Some(st) = &mut self.stopping {
            st.poll_at = Some(now + GROUP_POLL);
        }
    }

    fn finish_stop(&mut self, now: Instant) -> Vec<Action> {
        let then = self
            .stopping
            .take()
            .map(|s| s.then)
            .unwrap_or(AfterStop::Stay);
        self.run = None;
        self.health = Health::default();
        self.state = State::Stopped;
        self.next_restart = None;
        let mut actions = vec![log(log::Level::Info, "stopped", None, "stopped")];
        match then {
            AfterStop::Stay => self.last_error = None,
            AfterStop::Remove => actions.push(Action::Remove),
            AfterStop::Start => {
                self.last_error = None;
                self.attempts = 0;
                self.state = State::Starting;
                actions.push(Action::Spawn);
            }
            // The liveness failure stays in last_error (unless the attempts ran out).
            AfterStop::Recover(delay) => actions.push(self.schedule_restart(delay, now)),
        }
        actions
    }

    /// A health-check result for run `gen`. The first pass makes the service ready;
    /// `failure_threshold` failures in a row while running restart it through backoff.
    pub fn probe_result(
        &mut self,
        gen: u64,
        result: Result<(), String>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<Action> {
        let Some(hc) = self.spec.health_check.clone() else {
            return Vec::new();
        };
        let current = self
            .run
            .as_ref()
            .is_some_and(|r| r.gen == gen && r.exited.is_none());
        if !current || self.stopping.is_some() {
            return Vec::new(); // A late answer about a run that is over.
        }
        self.health.in_flight = false;
        self.health.next_probe = Some(now + Duration::from_millis(hc.interval_ms));
        let pid = self.pid();
        match result {
            Ok(()) => {
                self.health.failures = 0;
                // A pass resets the restart counter, as a long run does.
                self.attempts = 0;
                if self.state == State::Starting {
                    self.state = State::Running;
                    self.last_error = None;
                    return vec![log(
                        log::Level::Info,
                        "ready",
                        pid,
                        "health check passed: ready",
                    )];
                }
                Vec::new()
            }
            Err(why) => {
                self.health.failures += 1;
                let n = self.health.failures;
                self.last_error = Some(format!("health check failed ({n} in a row): {why}"));
                if self.state != State::Running || n < hc.failure_threshold {
                    return vec![log(
                        log::Level::Warn,
                        "unhealthy",
                        pid,
                        format!("health check failed ({n} in a row): {why}"),
                    )];
                }
                let then = AfterStop::Recover(self.next_attempt(rng));
                let mut actions = vec![log(
                    log::Level::Warn,
                    "unhealthy",
                    pid,
                    format!("health check failed {n} times in a row ({why}): restarting"),
                )];
                actions.extend(self.stop(then, now).unwrap_or_default());
                self.held = false;
                actions
            }
        }
    }

    /// After a reload changed the health check in place: a running process without a
    /// check any more is up; one that just got a check is probed from now on.
    pub fn reconcile_health(&mut self, now: Instant) {
        if self.run.as_ref().is_none_or(|r| r.exited.is_some()) || self.stopping.is_some() {
            return;
        }
        match &self.spec.health_check {
            None => {
                self.health = Health::default();
                if self.state == State::Starting {
                    self.state = State::Running;
                    self.last_error = None;
                }
            }
            Some(hc) if self.health.next_probe.is_none() && !self.health.in_flight => {
                self.health.next_probe = Some(now + Duration::from_millis(hc.initial_delay_ms));
            }
            Some(_) => {}
        }
    }

    /// The probe could not even be queued (too many at once): try again next interval.
    pub fn probe_skipped(&mut self, now: Instant) {
        if let Some(hc) = &self.spec.health_check {
            self.health.in_flight = false;
            self.health.next_probe = Some(now + Duration::from_millis(hc.interval_ms));
        }
    }

    /// Deadlines: a due restart, a stop timeout, a group poll.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        if let Some(st) = &mut self.stopping {
            if st.killed {
                return Vec::new();
            }
            let Some(run) = &self.run else {
                return Vec::new();
            };
            let pid = run.pid;
            if now >= st.deadline {
                st.killed = true;
                st.poll_at = None;
                let mut actions = vec![
                    log(
                        log::Level::Warn,
                        "killed",
                        Some(pid),
                        format!(
                            "still running after {} ms: sending SIGKILL",
                            self.spec.stop_timeout.as_millis()
                        ),
                    ),
                    Action::SignalGroup {
                        pgid: pid,
                        sig: libc::SIGKILL,
                    },
                ];
                if run.exited.is_some() {
                    // The main process is already gone; SIGKILL cannot be ignored, so the
                    // stop is complete.
                    actions.push(Action::Reap(pid));
                    actions.extend(self.finish_stop(now));
                }
                return actions;
            }
            if st.poll_at.is_some_and(|p| now >= p) {
                st.poll_at = None;
                return vec![Action::CheckGroup(pid)];
            }
            return Vec::new();
        }
        let due = self.health.next_probe.is_some_and(|t| now >= t);
        if due && !self.health.in_flight {
            if let Some(run) = self.run.as_ref().filter(|r| r.exited.is_none()) {
                self.health.next_probe = None;
                self.health.in_flight = true;
                return vec![Action::Probe { gen: run.gen }];
            }
        }
        if self.start_pending() && self.next_restart.is_some_and(|t| now >= t) {
            self.next_restart = None;
            if self.state == State::Restarting {
                self.restarts += 1;
            }
            self.state = State::Starting;
            return vec![Action::Spawn];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, RestartPolicy};
    use crate::supervise::backoff::Backoff;
    use std::path::PathBuf;

    fn spec(policy: RestartPolicy, max: u32) -> ServiceSpec {
        ServiceSpec {
            name: "svc".into(),
            configured: true,
            enabled: true,
            autostart: true,
            binary: PathBuf::from("/bin/true"),
            binary_problem: None,
            args: vec![],
            env: vec![],
            cwd: None,
            identity: None,
            memory_limit_mib: 0,
            limits: Limits::default(),
            sockets: vec![],
            policy,
            max_restart_attempts: max,
            backoff: Backoff {
                initial_ms: 100,
                max_ms: 1000,
                jitter: 0.0,
            },
            reset_after: Duration::from_secs(60),
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            depends_on: vec![],
            health_check: None,
        }
    }

    struct T {
        svc: Service,
        t0: Instant,
        rng: fastrand::Rng,
        gen: u64,
    }

    impl T {
        fn new(policy: RestartPolicy, max: u32) -> T {
            T {
                svc: Service::new(spec(policy, max)),
                t0: Instant::now(),
                rng: fastrand::Rng::with_seed(1),
                gen: 0,
            }
        }
        fn at(&self, ms: u64) -> Now {
            Now {
                mono: self.t0 + Duration::from_millis(ms),
                wall_ms: 1_000_000 + ms,
            }
        }
        fn spawn(&mut self, ms: u64) {
            self.gen += 1;
            let now = self.at(ms);
            self.svc.spawned(100 + self.gen as i32, self.gen, now);
        }
        fn exit(&mut self, ms: u64, e: Exit) -> Vec<Action> {
            let now = self.at(ms);
            self.svc.exited(e, now, true, &mut self.rng)
        }
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Spawn => "spawn",
                Action::SignalGroup {
                    sig: libc::SIGKILL, ..
                } => "kill",
                Action::SignalGroup { .. } => "signal",
                Action::CheckGroup(_) => "check",
                Action::Reap(_) => "reap",
                Action::Remove => "remove",
                Action::Probe { .. } => "probe",
                Action::Log { event, .. } => event,
            })
            .collect()
    }

    #[test]
    fn start_spawns_and_running_after_spawn() {
        let mut t = T::new(RestartPolicy::Always, 3);
        assert_eq!(kinds(&t.svc.start().unwrap()), ["spawn"]);
        assert_eq!(t.svc.state, State::Starting);
        t.spawn(0);
        assert_eq!(t.svc.state, State::Running);
        assert_eq!(t.svc.start(), Err(Refusal::AlreadyRunning));
    }

    #[test]
    fn crash_restarts_with_doubling_backoff_then_gives_up() {
        let mut t = T::new(RestartPolicy::Always, 2);
        t.svc.start().unwrap();
        t.spawn(0);
        let a = t.exit(10, Exit::Code(1));
        assert_eq!(kinds(&a), ["exited", "kill", "reap", "restarting"]);
        assert_eq!(t.svc.state, State::Restarting);
        assert_eq!(t.svc.next_restart, Some(t.t0 + Duration::from_millis(110)));
        assert_eq!(t.svc.last_exit_code, Some(1));
        assert_eq!(t.svc.last_error.as_deref(), Some("exited with code 1"));
        assert!(t.svc.tick(t.at(109).mono).is_empty());
        assert_eq!(kinds(&t.svc.tick(t.at(110).mono)), ["spawn"]);
        t.spawn(110);
        t.exit(120, Exit::Signal(libc::SIGSEGV));
        assert_eq!(t.svc.last_exit_code, Some(128 + libc::SIGSEGV));
        assert_eq!(t.svc.next_restart, Some(t.t0 + Duration::from_millis(320)));
        t.svc.tick(t.at(320).mono);
        t.spawn(320);
        let a = t.exit(330, Exit::Code(1));
        assert_eq!(kinds(&a), ["exited", "kill", "reap", "failed"]);
        assert_eq!(t.svc.state, State::Failed);
        assert_eq!(
            t.svc.last_error.as_deref(),
            Some("maximum restart attempts exceeded")
        );
        assert_eq!(t.svc.restarts, 2);
        assert_eq!(t.svc.history.len(), 3);
        // start on a failed service resets the counter.
        assert_eq!(kinds(&t.svc.start().unwrap()), ["spawn"]);
        assert_eq!(t.svc.attempts, 0);
    }

    #[test]
    fn zero_max_retries_forever_at_capped_delay() {
        let mut t = T::new(RestartPolicy::Always, 0);
        t.svc.start().unwrap();
        let mut ms = 0;
        for _ in 0..50 {
            t.spawn(ms);
            t.exit(ms, Exit::Code(1));
            assert_eq!(t.svc.state, State::Restarting);
            ms = (t.svc.next_restart.unwrap() - t.t0).as_millis() as u64;
            t.svc.tick(t.at(ms).mono);
        }
        assert_eq!(
            t.svc
                .spec
                .backoff
                .delay(t.svc.attempts, &mut t.rng)
                .as_millis(),
            1000
        );
    }

    #[test]
    fn long_run_resets_counter() {
        let mut t = T::new(RestartPolicy::Always, 10);
        t.svc.start().unwrap();
        t.spawn(0);
        t.exit(0, Exit::Code(1));
        t.svc.tick(t.at(100).mono);
        t.spawn(100);
        t.exit(100, Exit::Code(1));
        assert_eq!(t.svc.attempts, 2);
        t.svc.tick(t.at(300).mono);
        t.spawn(300);
        t.exit(300 + 60_000, Exit::Code(1));
        assert_eq!(
            t.svc.attempts, 1,
            "the long run reset the counter before this restart"
        );
        assert_eq!(
            t.svc.next_restart,
            Some(t.t0 + Duration::from_millis(60_400))
        );
    }

    #[test]
    fn policies() {
        for (policy, exit, state) in [
            (RestartPolicy::Never, Exit::Code(0), State::Stopped),
            (RestartPolicy::Never, Exit::Code(3), State::Failed),
            (RestartPolicy::OnFailure, Exit::Code(0), State::Stopped),
            (RestartPolicy::OnFailure, Exit::Code(3), State::Restarting),
            (RestartPolicy::OnFailure, Exit::Signal(9), State::Restarting),
            (RestartPolicy::Always, Exit::Code(0), State::Restarting),
        ] {
            let mut t = T::new(policy, 5);
            t.svc.start().unwrap();
            t.spawn(0);
            t.exit(5, exit);
            assert_eq!(t.svc.state, state, "{policy:?} {exit:?}");
            assert!(t.svc.run.is_none());
        }
    }

    #[test]
    fn no_restart_during_shutdown() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        let now = t.at(5);
        t.svc.exited(Exit::Code(1), now, false, &mut t.rng);
        assert_eq!(t.svc.state, State::Failed);
    }

    #[test]
    fn stop_waits_for_group_then_stopped() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        let a = t.svc.stop(AfterStop::Stay, t.at(10).mono).unwrap();
        assert_eq!(kinds(&a), ["stopping", "signal"]);
        assert_eq!(
            t.svc.state,
            State::Running,
            "state stays until the group is empty"
        );
        assert_eq!(t.svc.deadline(), Some(t.at(5010).mono));
        let a = t.exit(20, Exit::Signal(libc::SIGTERM));
        assert_eq!(kinds(&a), ["exited", "check"]);
        assert_eq!(t.svc.deadline(), Some(t.at(40).mono));
        t.svc.group_alive(t.at(20).mono);
        assert_eq!(kinds(&t.svc.tick(t.at(40).mono)), ["check"]);
        let a = t.svc.group_empty(t.at(0).mono);
        assert_eq!(kinds(&a), ["reap", "stopped"]);
        assert_eq!(t.svc.state, State::Stopped);
        assert_eq!(t.svc.last_exit_code, Some(143));
        assert!(t.svc.held);
        assert_eq!(t.svc.deadline(), None);
        assert_eq!(
            t.svc.stop(AfterStop::Stay, t.at(50).mono),
            Err(Refusal::NotRunning)
        );
    }

    #[test]
    fn stop_timeout_kills_then_exit_finishes() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.stop(AfterStop::Stay, t.at(0).mono).unwrap();
        assert!(t.svc.tick(t.at(4999).mono).is_empty());
        assert_eq!(kinds(&t.svc.tick(t.at(5000).mono)), ["killed", "kill"]);
        assert_eq!(t.svc.deadline(), None);
        let a = t.exit(5001, Exit::Signal(9));
        assert_eq!(kinds(&a), ["exited", "reap", "stopped"]);
        assert_eq!(t.svc.state, State::Stopped);
    }

    #[test]
    fn stop_timeout_after_main_exit_kills_group_and_finishes() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.stop(AfterStop::Stay, t.at(0).mono).unwrap();
        t.exit(10, Exit::Code(0));
        let a = t.svc.tick(t.at(5000).mono);
        assert_eq!(kinds(&a), ["killed", "kill", "reap", "stopped"]);
    }

    #[test]
    fn stop_during_backoff_cancels_restart() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.exit(1, Exit::Code(1));
        assert_eq!(t.svc.state, State::Restarting);
        let a = t.svc.stop(AfterStop::Stay, t.at(2).mono).unwrap();
        assert_eq!(kinds(&a), ["stopped"]);
        assert_eq!(t.svc.state, State::Stopped);
        assert!(t.svc.tick(t.at(100_000).mono).is_empty());
    }

    #[test]
    fn restart_stops_then_spawns_with_counter_reset() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.attempts = 3;
        t.svc.restart(t.at(1).mono).unwrap();
        let a = t.exit(2, Exit::Signal(libc::SIGTERM));
        assert_eq!(kinds(&a), ["exited", "check"]);
        let a = t.svc.group_empty(t.at(0).mono);
        assert_eq!(kinds(&a), ["reap", "stopped", "spawn"]);
        assert_eq!(t.svc.state, State::Starting);
        assert_eq!(t.svc.attempts, 0);
        // restart of a stopped service starts it.
        let mut t = T::new(RestartPolicy::Always, 5);
        assert_eq!(kinds(&t.svc.restart(t.at(0).mono).unwrap()), ["spawn"]);
    }

    #[test]
    fn start_while_stopping_starts_after() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.stop(AfterStop::Stay, t.at(1).mono).unwrap();
        assert_eq!(t.svc.start(), Ok(vec![]));
        t.exit(2, Exit::Code(0));
        assert_eq!(
            kinds(&t.svc.group_empty(t.at(0).mono)),
            ["reap", "stopped", "spawn"]
        );
        assert!(!t.svc.held);
    }

    #[test]
    fn remove_without_process_is_immediate() {
        let mut t = T::new(RestartPolicy::Always, 5);
        assert_eq!(
            kinds(&t.svc.stop(AfterStop::Remove, t.at(0).mono).unwrap()),
            ["remove"]
        );
    }

    #[test]
    fn disabled_and_missing_binary_refuse() {
        let mut s = spec(RestartPolicy::Always, 5);
        s.enabled = false;
        let mut svc = Service::new(s);
        assert_eq!(svc.start(), Err(Refusal::Disabled));
        assert_eq!(svc.restart(Instant::now()), Err(Refusal::Disabled));
        let mut s = spec(RestartPolicy::Always, 5);
        s.binary_problem = Some(crate::config::discovery::BinaryProblem::Missing);
        let mut svc = Service::new(s);
        assert_eq!(svc.state, State::Failed);
        assert_eq!(
            svc.last_error.as_deref(),
            Some("service binary not found: /bin/true")
        );
        assert_eq!(svc.start(), Err(Refusal::BinaryNotFound));
    }

    #[test]
    fn spawn_failure_goes_through_backoff() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        let now = t.at(0);
        let a = t.svc.spawn_failed(
            "Too many open files (os error 24)".into(),
            false,
            now,
            &mut t.rng,
        );
        assert_eq!(kinds(&a), ["failed", "restarting"]);
        assert_eq!(t.svc.state, State::Restarting);
        assert_eq!(
            t.svc.last_error.as_deref(),
            Some("Too many open files (os error 24)")
        );
        assert_eq!(
            t.svc.next_restart,
            Some(t.at(0).mono + SPAWN_RETRY_MIN),
            "100 ms floor"
        );
        assert_eq!(t.svc.history.back().unwrap().exit_code, None);
    }

    #[test]
    fn busy_binary_is_retried_without_counting_a_restart() {
        let mut t = T::new(RestartPolicy::Never, 5);
        t.svc.start().unwrap();
        let busy = "cannot execute /bin/true: Text file busy (os error 26)";
        for i in 0..BUSY_RETRIES as u64 {
            let now = t.at(i * 100);
            let a = t.svc.spawn_failed(busy.into(), true, now, &mut t.rng);
            assert_eq!(kinds(&a), ["retrying"]);
            assert_eq!(t.svc.state, State::Starting);
            assert_eq!(t.svc.last_error.as_deref(), Some(busy));
            assert_eq!(t.svc.deadline(), Some(now.mono + BUSY_RETRY));
            assert!(t.svc.tick(now.mono + BUSY_RETRY / 2).is_empty());
            assert_eq!(kinds(&t.svc.tick(now.mono + BUSY_RETRY)), ["spawn"]);
        }
        assert_eq!(t.svc.restarts, 0);
        assert!(t.svc.history.is_empty(), "a retry is not a run");
        // Busy for too long: the failure counts, here under restart = never.
        let now = t.at(5000);
        let a = t.svc.spawn_failed(busy.into(), true, now, &mut t.rng);
        assert_eq!(kinds(&a), ["failed"]);
        assert_eq!(t.svc.state, State::Failed);
        assert_eq!(t.svc.history.len(), 1);
        // A successful spawn starts the count afresh.
        t.svc.start().unwrap();
        let a = t
            .svc
            .spawn_failed(busy.into(), true, t.at(6000), &mut t.rng);
        assert_eq!(kinds(&a), ["retrying"]);
        t.spawn(6100);
        assert_eq!(t.svc.busy_retries, 0);
    }

    #[test]
    fn stop_cancels_a_busy_retry() {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.svc.start().unwrap();
        let now = t.at(0);
        t.svc.spawn_failed("busy".into(), true, now, &mut t.rng);
        let a = t.svc.stop(AfterStop::Stay, now.mono).unwrap();
        assert_eq!(kinds(&a), ["stopped"]);
        assert_eq!(t.svc.state, State::Stopped);
        assert_eq!(t.svc.deadline(), None);
    }

    #[test]
    fn a_wall_clock_jump_changes_no_decision() {
        // The same runs, with the wall clock steady, jumping back an hour, or a day on:
        // backoff, attempts and reset-after follow the monotonic clock only; the wall
        // clock only stamps the history.
        let run = |jump_ms: i64| {
            let mut t = T::new(RestartPolicy::Always, 10);
            t.svc.start().unwrap();
            let at = |t: &T, ms: u64, jumped: bool| Now {
                mono: t.t0 + Duration::from_millis(ms),
                wall_ms: (1_000_000_000 + ms as i64 + if jumped { jump_ms } else { 0 }) as u64,
            };
            let mut seen = Vec::new();
            // Short runs count attempts; a 70 s run (by the monotonic clock) resets them.
            for (start, end) in [(0, 10), (200, 210), (600, 70_600), (70_800, 70_810)] {
                t.gen += 1;
                let now = at(&t, start, false);
                t.svc.spawned(100 + t.gen as i32, t.gen, now);
                let now = at(&t, end, true);
                t.svc.exited(Exit::Code(1), now, true, &mut t.rng);
                seen.push((
                    t.svc.attempts,
                    t.svc.next_restart.map(|r| r - t.t0),
                    t.svc.state,
                ));
            }
            let stamps: Vec<_> = t.svc.history.iter().map(|h| h.exited_ms).collect();
            (seen, stamps)
        };
        let (steady, steady_stamps) = run(0);
        for jump in [-3_600_000, 86_400_000] {
            let (jumped, stamps) = run(jump);
            assert_eq!(jumped, steady, "jump {jump} ms");
            assert_ne!(stamps, steady_stamps, "the history shows the wall clock");
        }
        assert_eq!(
            steady.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 2, 1, 2],
            "the 70 s run reset the counter"
        );
    }

    #[test]
    fn stray_events_are_ignored_not_panics() {
        let mut t = T::new(RestartPolicy::Always, 5);
        let a = t.exit(0, Exit::Code(0));
        assert_eq!(kinds(&a), ["internal"]);
        assert_eq!(kinds(&t.svc.group_empty(t.at(0).mono)), ["internal"]);
        assert!(t.svc.tick(t.at(0).mono).is_empty());
        assert_eq!(t.svc.state, State::Stopped);
    }

    #[test]
    fn history_keeps_last_ten() {
        let mut t = T::new(RestartPolicy::Always, 0);
        for i in 0..15 {
            t.spawn(i);
            t.exit(i, Exit::Code(1));
        }
        assert_eq!(t.svc.history.len(), HISTORY_LEN);
        assert_eq!(t.svc.history.front().unwrap().started_ms, 1_000_005);
    }

    fn with_check(threshold: u32, max: u32) -> T {
        let mut t = T::new(RestartPolicy::Always, max);
        t.svc.spec.health_check = Some(crate::config::HealthCheck {
            kind: crate::config::CheckType::Tcp,
            command: vec![],
            address: Some("127.0.0.1:1".into()),
            url: None,
            interval_ms: 100,
            timeout_ms: 50,
            failure_threshold: threshold,
            initial_delay_ms: 30,
        });
        t
    }

    #[test]
    fn health_check_gates_readiness() {
        let mut t = with_check(3, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        assert_eq!(t.svc.state, State::Starting);
        assert_eq!(
            t.svc.deadline(),
            Some(t.at(30).mono),
            "first probe after initial_delay_ms"
        );
        assert!(t.svc.tick(t.at(29).mono).is_empty());
        assert_eq!(
            t.svc.tick(t.at(30).mono),
            vec![Action::Probe { gen: t.gen }]
        );
        assert_eq!(
            t.svc.deadline(),
            None,
            "no second probe while one is in flight"
        );
        // Failures while starting do not restart: the service is not up yet.
        for _ in 0..5 {
            let a = t
                .svc
                .probe_result(t.gen, Err("refused".into()), t.at(40).mono, &mut t.rng);
            assert_eq!(kinds(&a), ["unhealthy"]);
            t.svc.tick(t.at(1000).mono);
        }
        assert_eq!(t.svc.state, State::Starting);
        assert!(t.svc.last_error.as_deref().unwrap().contains("refused"));
        let a = t.svc.probe_result(t.gen, Ok(()), t.at(50).mono, &mut t.rng);
        assert_eq!(kinds(&a), ["ready"]);
        assert_eq!(t.svc.state, State::Running);
        assert_eq!(t.svc.last_error, None);
        assert_eq!(
            t.svc.deadline(),
            Some(t.at(150).mono),
            "next probe after interval_ms"
        );
    }

    #[test]
    fn liveness_failures_restart_through_backoff() {
        let mut t = with_check(2, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.tick(t.at(30).mono);
        t.svc.probe_result(t.gen, Ok(()), t.at(31).mono, &mut t.rng);
        t.svc.tick(t.at(131).mono);
        let a = t
            .svc
            .probe_result(t.gen, Err("503".into()), t.at(132).mono, &mut t.rng);
        assert_eq!(kinds(&a), ["unhealthy"]);
        assert_eq!(t.svc.state, State::Running);
        t.svc.tick(t.at(232).mono);
        let a = t
            .svc
            .probe_result(t.gen, Err("503".into()), t.at(233).mono, &mut t.rng);
        assert_eq!(kinds(&a), ["unhealthy", "stopping", "signal"]);
        let a = t.exit(240, Exit::Signal(libc::SIGTERM));
        assert_eq!(kinds(&a), ["exited", "check"]);
        let a = t.svc.group_empty(t.at(241).mono);
        assert_eq!(kinds(&a), ["reap", "stopped", "restarting"]);
        assert_eq!(t.svc.state, State::Restarting);
        assert_eq!(
            t.svc.next_restart,
            Some(t.at(341).mono),
            "backoff 100 ms, attempt 1"
        );
        assert!(t
            .svc
            .last_error
            .as_deref()
            .unwrap()
            .contains("health check failed (2 in a row): 503"));
        assert!(!t.svc.held, "a liveness restart is not a user stop");
        assert_eq!(kinds(&t.svc.tick(t.at(341).mono)), ["spawn"]);
        assert_eq!(t.svc.restarts, 1);
    }

    #[test]
    fn liveness_failure_with_attempts_used_up_fails() {
        let mut t = with_check(1, 1);
        t.svc.start().unwrap();
        t.spawn(0);
        t.svc.attempts = 1;
        t.svc.state = State::Running;
        t.svc.tick(t.at(30).mono);
        t.svc
            .probe_result(t.gen, Err("dead".into()), t.at(31).mono, &mut t.rng);
        t.exit(32, Exit::Code(0));
        t.svc.group_empty(t.at(33).mono);
        assert_eq!(t.svc.state, State::Failed);
        assert_eq!(
            t.svc.last_error.as_deref(),
            Some("maximum restart attempts exceeded")
        );
    }

    #[test]
    fn late_probe_results_are_ignored() {
        let mut t = with_check(1, 5);
        t.svc.start().unwrap();
        t.spawn(0);
        let old = t.gen;
        t.exit(10, Exit::Code(1));
        t.svc.tick(t.at(1000).mono);
        t.spawn(1000);
        let a = t
            .svc
            .probe_result(old, Err("x".into()), t.at(1001).mono, &mut t.rng);
        assert!(a.is_empty());
        assert_eq!(t.svc.health.failures, 0);
    }

    #[test]
    fn passing_check_resets_the_restart_counter() {
        let mut t = with_check(3, 5);
        t.svc.start().unwrap();
        t.svc.attempts = 4;
        t.spawn(0);
        t.svc.tick(t.at(30).mono);
        t.svc.probe_result(t.gen, Ok(()), t.at(31).mono, &mut t.rng);
        assert_eq!(t.svc.attempts, 0);
    }
}
