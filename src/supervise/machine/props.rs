//! Random event sequences against the lifecycle's invariants. A small model of the
//! world answers the machine's actions the way the supervisor and the kernel would
//! (spawns succeed or fail, processes exit on their own or on a signal, groups drain,
//! probes pass or fail), while random requests, exits, sd_notify messages and clock
//! jumps come in. After
//! every step the lifecycle's invariants are checked:
//! - never two live runs of one service;
//! - no signal (or group check) to a pid after it was reaped, and no double reap;
//! - every operator stop ends `stopped` within the stop timeout plus a bound;
//! - every restart delay lies within the backoff formula's bounds;
//! - `failed` by the attempt limit comes after exactly `max_restart_attempts`
//!   consecutive restarts;
//! - the state shown is one of the five.
//!
//! `ORCH_PROP_CASES` sets the number of sequences (100,000 by default under
//! `make test`; `make props` runs far more), `ORCH_PROP_SEED` the first seed. A failure
//! names its seed, which replays it exactly.

use super::harness::{check, spec, T};
use super::*;
use crate::config::discovery::Backoff;
use std::collections::HashSet;

/// The world as the machine's actions left it.
#[derive(Default)]
struct World {
    /// The live run: pid, gen, when it started (ms), whether its exit was reported.
    live: Option<(i32, u64, u64, bool)>,
    /// A `pid_file` run's launcher once the daemon took over as the live run: exited,
    /// not reaped yet.
    launcher: Option<i32>,
    reaped: HashSet<i32>,
    /// A SIGKILL went to the live group: it exits at the next step.
    killed: bool,
    /// It ignores the stop signal.
    stubborn: bool,
    probe: Option<u64>,
    /// Consecutive restarts since the counter was last reset, counted independently.
    consecutive: u32,
    /// An operator's stop must be finished by then (ms).
    stop_by: Option<u64>,
    /// When the stop signal first went to the live run (ms): how long it lasted, for
    /// the counter reset, is measured up to then.
    stop_at: Option<u64>,
}

struct Case {
    t: T,
    w: World,
    seed: u64,
    steps: Vec<String>,
}

impl Case {
    fn fail(&self, why: String) -> ! {
        let tail: Vec<&String> = self.steps.iter().rev().take(70).rev().collect();
        panic!(
            "seed {}: {why}\nlast steps:\n  {}",
            self.seed,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    /// Feeds an event and answers the actions, as the supervisor would.
    fn feed(&mut self, event: Event) -> Result<(), Refusal> {
        self.steps.push(format!("{} ms {:?}", self.t.ms, event));
        let before = self.t.svc.state();
        let actions = self.t.on(event)?;
        self.answer(actions, before);
        Ok(())
    }

    fn answer(&mut self, actions: Vec<Action>, before: State) {
        let mut queue: VecDeque<Action> = actions.into();
        let mut restarting = false;
        while let Some(a) = queue.pop_front() {
            self.steps.push(format!("  -> {a:?}"));
            match a {
                Action::Spawn => {
                    if let Some((pid, ..)) = self.w.live {
                        if !self.w.reaped.contains(&pid) {
                            self.fail(format!("spawn while pid {pid} is not reaped"));
                        }
                    }
                    if let Some(pid) = self.w.launcher {
                        self.fail(format!("spawn while launcher {pid} is not reaped"));
                    }
                    let ev = if self.t.rng.u8(..10) == 0 {
                        Event::SpawnFailed {
                            error: "EAGAIN".into(),
                            busy: self.t.rng.bool(),
                        }
                    } else {
                        self.t.gen += 1;
                        let (pid, gen) = (1000 + self.t.gen as i32, self.t.gen);
                        self.w.live = Some((pid, gen, self.t.ms, false));
                        self.w.killed = false;
                        self.w.stop_at = None;
                        self.w.stubborn = self.t.rng.u8(..4) == 0;
                        Event::Spawned { pid, gen }
                    };
                    queue.extend(self.t.ev(ev));
                }
                Action::Signal { pgid, sig } => {
                    if self.w.reaped.contains(&pgid) {
                        self.fail(format!("signal {sig} to reaped pid {pgid}"));
                    }
                    if sig == libc::SIGKILL || !self.w.stubborn {
                        self.w.killed = true;
                    }
                    self.w.stop_at.get_or_insert(self.t.ms);
                }
                Action::CheckGroup(pgid) => {
                    if self.w.reaped.contains(&pgid) {
                        self.fail(format!("group check of reaped pid {pgid}"));
                    }
                    let ev = if self.w.killed || self.t.rng.bool() {
                        Event::GroupEmpty
                    } else {
                        Event::GroupAlive
                    };
                    queue.extend(self.t.ev(ev));
                }
                Action::Reap(pid) => {
                    match self.w.live {
                        _ if self.w.launcher == Some(pid) => self.w.launcher = None,
                        Some((p, _, _, true)) if p == pid => {}
                        _ => self.fail(format!("reap of pid {pid} that did not exit")),
                    }
                    if !self.w.reaped.insert(pid) {
                        self.fail(format!("pid {pid} reaped twice"));
                    }
                }
                Action::Probe { gen } => self.w.probe = Some(gen),
                Action::ReadPidFile { gen } => {
                    // The launcher wrote a good file, or not (yet).
                    let result = if self.t.rng.u8(..3) == 0 {
                        Err("pid file missing".into())
                    } else {
                        // The run started with its launcher, which is left unreaped.
                        if let Some((launcher, _, _, true)) = self.w.live {
                            self.w.launcher = Some(launcher);
                        }
                        let pid = 5000 + self.t.gen as i32;
                        let started = self.w.live.map_or(self.t.ms, |l| l.2);
                        self.w.live = Some((pid, gen, started, false));
                        self.w.killed = false;
                        Ok(pid)
                    };
                    queue.extend(self.t.ev(Event::PidFile { gen, result }));
                }
                Action::Remove => {}
                Action::Log {
                    event: RecordKind::Restarting,
                    ..
                } => {
                    self.w.consecutive += 1;
                    restarting = true;
                }
                Action::Log { .. } => {}
            }
        }
        self.after(before, restarting);
    }

    /// The invariants that follow a state change.
    fn after(&mut self, before: State, restarting: bool) {
        let state = self.t.svc.state();
        if !State::ALL.contains(&state) {
            self.fail(format!("state {state:?} is not one of the five"));
        }
        let spec = self.t.svc.spec().clone();
        if state == State::Restarting && restarting {
            let n = self.t.svc.attempts().saturating_sub(1);
            let b = spec.backoff;
            let base = b.initial_ms.saturating_mul(1u64 << n.min(62)).min(b.max_ms) as f64;
            let lo = (base * (1.0 - b.jitter)).floor() as u128;
            let hi = (base * (1.0 + b.jitter)).ceil() as u128;
            let lo = lo.min(SPAWN_RETRY_MIN.as_millis());
            let hi = hi.max(SPAWN_RETRY_MIN.as_millis());
            let delay = self
                .t
                .due()
                .trim_start_matches('+')
                .parse::<u128>()
                .unwrap_or(0);
            if delay < lo || delay > hi {
                self.fail(format!(
                    "restart delay {delay} ms outside [{lo}, {hi}] (n = {n})"
                ));
            }
        }
        let gave_up = self.t.svc.last_error() == Some("maximum restart attempts exceeded");
        if state == State::Failed && before != State::Failed && gave_up {
            let max = spec.max_restart_attempts;
            if self.w.consecutive != max {
                self.fail(format!(
                    "failed after {} restarts, max is {max}",
                    self.w.consecutive
                ));
            }
        }
        if state == State::Stopped {
            self.w.stop_by = None;
        }
    }

    /// One random step of the world.
    fn step(&mut self) {
        let jump = [0, 1, 10, 50, 200, 1000][self.t.rng.usize(..6)];
        let target = self.t.ms + jump;
        // Deadlines that pass on the way fire in order, as the loop fires them.
        while let Some(d) = self.t.svc.deadline() {
            // Rounded up: a deadline between two ms is due at the later one.
            let at = d
                .saturating_duration_since(self.t.t0)
                .as_micros()
                .div_ceil(1000) as u64;
            if at > target {
                break;
            }
            self.t.ms = self.t.ms.max(at);
            let _ = self.feed(Event::Timer);
            self.signalled_exit();
        }
        self.t.ms = target;
        if let Some(by) = self.w.stop_by {
            if self.t.ms > by {
                self.fail(format!(
                    "stop not finished {} ms after it was due",
                    self.t.ms - by
                ));
            }
        }
        match self.t.rng.u8(..14) {
            0 => {
                if self.reset_by(Event::Start) {
                    self.w.stop_by = None;
                }
            }
            1 => {
                let had = self.t.svc.has_process();
                let then = AfterStop::Stay;
                let origin = Origin::Operator;
                if self.feed(Event::Stop { then, origin }).is_ok() && had {
                    let bound = self.t.svc.spec().stop_timeout.as_millis() as u64 + 1000;
                    self.w.stop_by.get_or_insert(self.t.ms + bound);
                }
            }
            2 => {
                if self.reset_by(Event::Restart) {
                    self.w.stop_by = None;
                }
            }
            3 => {
                // A reload that changed the process: a restart with the counter reset.
                let restart = Event::Stop {
                    then: AfterStop::Start,
                    origin: Origin::Reload,
                };
                self.reset_by(restart);
            }
            4 => {
                self.t.unmet = if self.t.rng.bool() {
                    vec!["db (stopped)".into()]
                } else {
                    Vec::new()
                };
                let _ = self.feed(Event::DepsChanged);
            }
            5 => {
                if let Some(gen) = self.w.probe.take() {
                    let result = if self.t.rng.bool() {
                        Ok(())
                    } else {
                        Err("refused".into())
                    };
                    // A pass of the live run resets the counter, ready or not (with
                    // `ready: notify` a pass alone does not make it running).
                    let passed = result.is_ok()
                        && self.t.svc.gen() == Some(gen)
                        && self.t.svc.stopping().is_none();
                    let _ = self.feed(Event::Probe { gen, result });
                    if passed {
                        self.w.consecutive = 0;
                    }
                }
            }
            6 => {
                // What the service says on its notify socket, late news included.
                let notice = match self.t.rng.u8(..4) {
                    0 => Notice::Ready,
                    1 => Notice::Status("busy".into()),
                    2 => Notice::KeepAlive(self.t.at(self.t.ms)),
                    _ => Notice::Trigger,
                };
                let _ = self.feed(Event::Notify(notice));
            }
            _ => self.exit_maybe(),
        }
        self.signalled_exit();
    }

    /// Feeds a request that resets the restart counter when accepted; whether it was.
    fn reset_by(&mut self, event: Event) -> bool {
        let kept = std::mem::take(&mut self.w.consecutive);
        let accepted = self.feed(event).is_ok();
        if !accepted {
            self.w.consecutive = kept;
        }
        accepted
    }

    /// A process that got a signal it does not ignore exits at once.
    fn signalled_exit(&mut self) {
        if self.w.killed && matches!(self.w.live, Some((.., false))) {
            self.exit_maybe();
        }
    }

    /// The live process exits: on its own, or because it was killed.
    fn exit_maybe(&mut self) {
        let Some((pid, gen, started, false)) = self.w.live else {
            return;
        };
        if !self.w.killed && self.t.rng.u8(..3) != 0 {
            return;
        }
        let exit = if self.w.killed {
            Exit::Signal(libc::SIGKILL)
        } else if self.t.rng.bool() {
            Exit::Code(0)
        } else {
            Exit::Code(1)
        };
        self.w.live = Some((pid, gen, started, true));
        let ran = self.w.stop_at.unwrap_or(self.t.ms).min(self.t.ms) - started;
        if ran >= self.t.svc.spec().reset_after.as_millis() as u64 {
            self.w.consecutive = 0;
        }
        let _ = self.feed(Event::Exited { gen, exit });
    }
}

fn random_spec(rng: &mut fastrand::Rng) -> ServiceSpec {
    let policy = [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ][rng.usize(..3)];
    let mut s = spec(policy, rng.u32(..5));
    let initial = [0, 10, 100][rng.usize(..3)];
    s.backoff = Backoff {
        initial_ms: initial,
        max_ms: initial * [1, 4, 30][rng.usize(..3)],
        jitter: [0.0, 0.2][rng.usize(..2)],
    };
    s.reset_after = Duration::from_millis([500, 5000][rng.usize(..2)]);
    s.stop_timeout = Duration::from_millis([50, 300][rng.usize(..2)]);
    if rng.bool() {
        s.health_check = Some(check(rng.u32(1..3)));
    }
    if rng.bool() {
        s.retry_failed = Some(Duration::from_millis(700));
    }
    if rng.u8(..4) == 0 {
        s.process.pid_file = Some("/run/svc.pid".into());
    }
    s.process.ready_notify = rng.bool();
    if rng.bool() {
        s.process.watchdog = Some(Duration::from_millis(300));
    }
    s
}

fn run_case(seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = T::with(random_spec(&mut rng));
    t.rng = rng;
    let mut case = Case {
        t,
        w: World::default(),
        seed,
        steps: Vec::new(),
    };
    let _ = case.feed(Event::Start);
    for _ in 0..steps {
        case.step();
        // A sample of the phases the machine reaches, as upgrade-self carries them.
        if seed.is_multiple_of(64) {
            carry::assert_reads_back(&case.t.svc);
        }
        if case.steps.len() > 4096 {
            case.steps.drain(..2048);
        }
    }
}

#[test]
fn random_sequences_keep_the_invariants() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("ORCH_PROP_CASES", 100_000);
    let first = env("ORCH_PROP_SEED", 1);
    for seed in first..first + cases {
        run_case(seed, 40);
    }
}
