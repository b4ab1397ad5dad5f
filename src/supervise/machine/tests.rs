//! The machine, one (phase, event) pair at a time, and the behaviours that take a few
//! steps to show. `TABLE` is the whole state x event table: one row per pair, in phase
//! order, so that a reader can check by eye that none is missing.

use super::*;
use crate::config::{CheckType, HealthCheck};
use crate::supervise::backoff::Backoff;

/// A service under test with its own clock (ms from `t0`) and a seeded random source.
pub(super) struct T {
    pub svc: Service,
    pub t0: Instant,
    pub ms: u64,
    pub rng: fastrand::Rng,
    pub gen: u64,
    pub unmet: Vec<String>,
    pub shutting_down: bool,
}

pub(super) fn spec(policy: RestartPolicy, max: u32) -> ServiceSpec {
    let mut s = crate::config::discovery::test_spec("svc");
    s.policy = policy;
    s.max_restart_attempts = max;
    s.backoff = Backoff {
        initial_ms: 100,
        max_ms: 1000,
        jitter: 0.0,
    };
    s.reset_after = Duration::from_secs(60);
    s.stop_timeout = Duration::from_secs(5);
    s
}

pub(super) fn check(threshold: u32) -> HealthCheck {
    HealthCheck {
        kind: CheckType::Tcp,
        command: vec![],
        address: Some("127.0.0.1:1".into()),
        url: None,
        interval_ms: 100,
        timeout_ms: 50,
        failure_threshold: threshold,
        initial_delay_ms: 30,
    }
}

impl T {
    pub fn with(spec: ServiceSpec) -> T {
        T {
            svc: Service::new(spec, 1_000_000),
            t0: Instant::now(),
            ms: 0,
            rng: fastrand::Rng::with_seed(1),
            gen: 0,
            unmet: Vec::new(),
            shutting_down: false,
        }
    }

    pub fn new(policy: RestartPolicy, max: u32) -> T {
        T::with(spec(policy, max))
    }

    pub fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Moves the clock to `ms` and feeds `event`.
    pub fn on_at(&mut self, ms: u64, event: Event) -> Result<Vec<Action>, Refusal> {
        self.ms = self.ms.max(ms);
        let mut ctx = Ctx {
            now: Now {
                mono: self.at(self.ms),
                wall_ms: 1_000_000 + self.ms,
            },
            rng: &mut self.rng,
            unmet: self.unmet.clone(),
            shutting_down: self.shutting_down,
        };
        self.svc.on(event, &mut ctx)
    }

    pub fn on(&mut self, event: Event) -> Result<Vec<Action>, Refusal> {
        self.on_at(self.ms, event)
    }

    /// Feeds an event that cannot be refused.
    pub fn ev(&mut self, event: Event) -> Vec<Action> {
        self.on(event).expect("only requests are refused")
    }

    pub fn spawned(&mut self) -> Vec<Action> {
        self.gen += 1;
        let (pid, gen) = (100 + self.gen as i32, self.gen);
        self.ev(Event::Spawned { pid, gen })
    }

    pub fn exit(&mut self, exit: Exit) -> Vec<Action> {
        let gen = self.gen;
        self.ev(Event::Exited { gen, exit })
    }

    pub fn op_stop(&mut self) -> Result<Vec<Action>, Refusal> {
        self.on(Event::Stop {
            then: AfterStop::Stay,
            origin: Origin::Operator,
        })
    }

    /// Moves the clock to the machine's deadline and fires it.
    pub fn fire(&mut self) -> Vec<Action> {
        let d = self.svc.deadline().expect("a deadline is set");
        let ms = d.duration_since(self.t0).as_micros().div_ceil(1000) as u64;
        self.on_at(ms, Event::Timer)
            .expect("a timer is never refused")
    }

    /// The phase's name, as the table writes it: a stop under way (or waiting for a
    /// spawn) adds what follows it, as in `stopping+start`.
    pub fn phase(&self) -> String {
        let then = |t: AfterStop| match t {
            AfterStop::Stay => "",
            AfterStop::Start => "+start",
            AfterStop::Remove => "+remove",
            AfterStop::Recover(_) => "+recover",
        };
        match &self.svc.phase {
            Phase::Stopped { held: false } => "stopped".into(),
            Phase::Stopped { held: true } => "held".into(),
            Phase::Failed { retry_at: None } => "failed".into(),
            Phase::Failed { retry_at: Some(_) } => "failed-retry".into(),
            Phase::WaitingDeps => "waiting".into(),
            Phase::Backoff { .. } => "backoff".into(),
            Phase::BusyRetry { .. } => "busy".into(),
            Phase::Spawning { stop: None, .. } => "spawning".into(),
            Phase::Spawning {
                stop: Some((t, _)), ..
            } => format!("spawning-stop{}", then(*t)),
            Phase::Up { ready: false, .. } => "starting".into(),
            Phase::Up { ready: true, .. } => "running".into(),
            Phase::Stopping { stop, .. } if stop.killed => format!("killing{}", then(stop.then)),
            Phase::Stopping { stop, .. } => format!("stopping{}", then(stop.then)),
            Phase::Draining { stop, .. } => format!("draining{}", then(stop.then)),
        }
    }

    /// Deadline as ms after the current clock, `-` for none.
    pub fn due(&self) -> String {
        match self.svc.deadline() {
            Some(d) => format!(
                "+{}",
                d.saturating_duration_since(self.at(self.ms)).as_millis()
            ),
            None => "-".into(),
        }
    }
}

pub(super) fn kinds(actions: &[Action]) -> String {
    let words: Vec<&str> = actions
        .iter()
        .map(|a| match a {
            Action::Spawn => "spawn",
            Action::Signal {
                sig: libc::SIGKILL, ..
            } => "kill",
            Action::Signal { .. } => "signal",
            Action::CheckGroup(_) => "check",
            Action::Reap(_) => "reap",
            Action::Remove => "remove",
            Action::Probe { .. } => "probe",
            Action::Log { event, .. } => event,
        })
        .collect();
    words.join(" ")
}

/// Puts a fresh service in the named phase, through events only.
fn reach(phase: &str) -> T {
    let with_check = || {
        let mut s = spec(RestartPolicy::Always, 3);
        s.health_check = Some(check(2));
        T::with(s)
    };
    let mut t = match phase {
        "failed" => T::new(RestartPolicy::Never, 3),
        "failed-retry" => {
            let mut s = spec(RestartPolicy::Always, 1);
            s.retry_failed = Some(Duration::from_secs(30));
            T::with(s)
        }
        "starting" | "stopping" | "draining" => with_check(),
        _ => T::new(RestartPolicy::Always, 3),
    };
    let ok = "reaching a phase is never refused";
    match phase {
        "stopped" => {}
        "held" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.op_stop().expect(ok);
            t.exit(Exit::Signal(libc::SIGTERM));
            t.ev(Event::GroupEmpty);
        }
        "failed" | "backoff" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.exit(Exit::Code(1));
        }
        "failed-retry" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.exit(Exit::Code(1));
            t.fire();
            t.spawned();
            t.exit(Exit::Code(1));
        }
        "waiting" => {
            t.unmet = vec!["db (stopped)".into()];
            t.on(Event::Start).expect(ok);
            t.unmet.clear();
        }
        "busy" => {
            t.on(Event::Start).expect(ok);
            t.ev(Event::SpawnFailed {
                error: "Text file busy".into(),
                busy: true,
            });
        }
        "spawning" => {
            t.on(Event::Start).expect(ok);
        }
        "starting" | "running" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
        }
        "stopping" | "draining" => {
            // With a health check that has passed, so that a late result could matter.
            t.on(Event::Start).expect(ok);
            t.spawned();
            let gen = t.gen;
            t.ev(Event::Probe {
                gen,
                result: Ok(()),
            });
            t.op_stop().expect(ok);
            if phase == "draining" {
                t.exit(Exit::Signal(libc::SIGTERM));
            }
        }
        other => panic!("no way to reach phase {other}"),
    }
    assert_eq!(t.phase(), phase, "reached");
    t.ms += 10;
    t
}

/// Feeds the named event in the current phase.
fn apply(t: &mut T, event: &str) -> Result<Vec<Action>, Refusal> {
    let gen = t.gen;
    let ev = match event {
        "start" => Event::Start,
        "restart" => Event::Restart,
        "stop" => Event::Stop {
            then: AfterStop::Stay,
            origin: Origin::Operator,
        },
        "remove" => Event::Stop {
            then: AfterStop::Remove,
            origin: Origin::Reload,
        },
        "deps" => Event::DepsChanged,
        "spawned" => {
            t.gen += 1;
            Event::Spawned {
                pid: 100 + t.gen as i32,
                gen: t.gen,
            }
        }
        "spawnfail" => Event::SpawnFailed {
            error: "EMFILE".into(),
            busy: false,
        },
        "exited" => Event::Exited {
            gen,
            exit: Exit::Code(1),
        },
        "empty" => Event::GroupEmpty,
        "alive" => Event::GroupAlive,
        "timer" => {
            // Every deadline has passed an hour later.
            t.ms += 3_600_000;
            Event::Timer
        }
        "pass" => Event::Probe {
            gen,
            result: Ok(()),
        },
        "fail" => Event::Probe {
            gen,
            result: Err("refused".into()),
        },
        "skipped" => Event::ProbeSkipped,
        "recheck" => {
            // A reload adds a health check in place.
            let mut s = t.svc.spec().clone();
            s.health_check = Some(check(1));
            Event::Reconfigured(Box::new(s))
        }
        other => panic!("unknown event {other}"),
    };
    t.on(ev)
}

const PHASES: [&str; 12] = [
    "stopped",
    "held",
    "failed",
    "failed-retry",
    "waiting",
    "backoff",
    "busy",
    "spawning",
    "starting",
    "running",
    "stopping",
    "draining",
];

const EVENTS: [&str; 15] = [
    "start",
    "restart",
    "stop",
    "remove",
    "deps",
    "spawned",
    "spawnfail",
    "exited",
    "empty",
    "alive",
    "timer",
    "pass",
    "fail",
    "skipped",
    "recheck",
];

/// (phase, event) -> (phase after, actions or `refused: why`, deadline after, last_error).
/// `internal` is the warning record of an event that cannot happen in that phase.
#[rustfmt::skip]
const TABLE: &[(&str, &str, &str, &str, &str, &str)] = &[
    // phase, event, => phase, actions, deadline, last_error
    ("stopped", "start", "spawning", "spawn", "-", "-"),
    ("stopped", "restart", "spawning", "spawn", "-", "-"),
    ("stopped", "stop", "stopped", "refused: service is not running", "-", "-"),
    ("stopped", "remove", "stopped", "remove", "-", "-"),
    ("stopped", "deps", "stopped", "", "-", "-"),
    ("stopped", "spawned", "stopped", "internal kill", "-", "-"),
    ("stopped", "spawnfail", "stopped", "internal", "-", "-"),
    ("stopped", "exited", "stopped", "internal", "-", "-"),
    ("stopped", "empty", "stopped", "internal", "-", "-"),
    ("stopped", "alive", "stopped", "internal", "-", "-"),
    ("stopped", "timer", "stopped", "", "-", "-"),
    ("stopped", "pass", "stopped", "", "-", "-"),
    ("stopped", "fail", "stopped", "", "-", "-"),
    ("stopped", "skipped", "stopped", "", "-", "-"),
    ("stopped", "recheck", "stopped", "", "-", "-"),
    ("held", "start", "spawning", "spawn", "-", "-"),
    ("held", "restart", "spawning", "spawn", "-", "-"),
    ("held", "stop", "held", "refused: service is not running", "-", "-"),
    ("held", "remove", "held", "remove", "-", "-"),
    ("held", "deps", "held", "", "-", "-"),
    ("held", "spawned", "held", "internal kill", "-", "-"),
    ("held", "spawnfail", "held", "internal", "-", "-"),
    ("held", "exited", "held", "internal", "-", "-"),
    ("held", "empty", "held", "internal", "-", "-"),
    ("held", "alive", "held", "internal", "-", "-"),
    ("held", "timer", "held", "", "-", "-"),
    ("held", "pass", "held", "", "-", "-"),
    ("held", "fail", "held", "", "-", "-"),
    ("held", "skipped", "held", "", "-", "-"),
    ("held", "recheck", "held", "", "-", "-"),
    ("failed", "start", "spawning", "spawn", "-", "exited with code 1"),
    ("failed", "restart", "spawning", "spawn", "-", "exited with code 1"),
    ("failed", "stop", "failed", "refused: service is not running", "-", "exited with code 1"),
    ("failed", "remove", "failed", "remove", "-", "exited with code 1"),
    ("failed", "deps", "failed", "", "-", "exited with code 1"),
    ("failed", "spawned", "failed", "internal kill", "-", "exited with code 1"),
    ("failed", "spawnfail", "failed", "internal", "-", "exited with code 1"),
    ("failed", "exited", "failed", "internal", "-", "exited with code 1"),
    ("failed", "empty", "failed", "internal", "-", "exited with code 1"),
    ("failed", "alive", "failed", "internal", "-", "exited with code 1"),
    ("failed", "timer", "failed", "", "-", "exited with code 1"),
    ("failed", "pass", "failed", "", "-", "exited with code 1"),
    ("failed", "fail", "failed", "", "-", "exited with code 1"),
    ("failed", "skipped", "failed", "", "-", "exited with code 1"),
    ("failed", "recheck", "failed", "", "-", "exited with code 1"),
    ("failed-retry", "start", "spawning", "spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "restart", "spawning", "spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "stop", "held", "stopped", "-", "-"),
    ("failed-retry", "remove", "failed-retry", "remove", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "deps", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "spawned", "failed-retry", "internal kill", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "spawnfail", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "exited", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "empty", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "alive", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "timer", "spawning", "retrying spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "pass", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "fail", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "skipped", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "recheck", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("waiting", "start", "spawning", "spawn", "-", "-"),
    ("waiting", "restart", "spawning", "spawn", "-", "-"),
    ("waiting", "stop", "held", "stopped", "-", "-"),
    ("waiting", "remove", "waiting", "remove", "-", "waiting for db (stopped)"),
    ("waiting", "deps", "spawning", "spawn", "-", "-"),
    ("waiting", "spawned", "waiting", "internal kill", "-", "waiting for db (stopped)"),
    ("waiting", "spawnfail", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "exited", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "empty", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "alive", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "timer", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "pass", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "fail", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "skipped", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "recheck", "waiting", "", "-", "waiting for db (stopped)"),
    ("backoff", "start", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "restart", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "stop", "held", "stopped", "-", "-"),
    ("backoff", "remove", "backoff", "remove", "+90", "exited with code 1"),
    ("backoff", "deps", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "spawned", "backoff", "internal kill", "+90", "exited with code 1"),
    ("backoff", "spawnfail", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "exited", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "empty", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "alive", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "timer", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "pass", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "fail", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "skipped", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "recheck", "backoff", "", "+90", "exited with code 1"),
    ("busy", "start", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "restart", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "stop", "held", "stopped", "-", "-"),
    ("busy", "remove", "busy", "remove", "+90", "Text file busy"),
    ("busy", "deps", "busy", "", "+90", "Text file busy"),
    ("busy", "spawned", "busy", "internal kill", "+90", "Text file busy"),
    ("busy", "spawnfail", "busy", "internal", "+90", "Text file busy"),
    ("busy", "exited", "busy", "internal", "+90", "Text file busy"),
    ("busy", "empty", "busy", "internal", "+90", "Text file busy"),
    ("busy", "alive", "busy", "internal", "+90", "Text file busy"),
    ("busy", "timer", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "pass", "busy", "", "+90", "Text file busy"),
    ("busy", "fail", "busy", "", "+90", "Text file busy"),
    ("busy", "skipped", "busy", "", "+90", "Text file busy"),
    ("busy", "recheck", "busy", "", "+90", "Text file busy"),
    ("spawning", "start", "spawning", "refused: service is already running", "-", "-"),
    ("spawning", "restart", "spawning-stop+start", "", "-", "-"),
    ("spawning", "stop", "spawning-stop", "", "-", "-"),
    ("spawning", "remove", "spawning-stop+remove", "", "-", "-"),
    ("spawning", "deps", "spawning", "", "-", "-"),
    ("spawning", "spawned", "running", "started", "-", "-"),
    ("spawning", "spawnfail", "backoff", "failed restarting", "+100", "EMFILE"),
    ("spawning", "exited", "spawning", "internal", "-", "-"),
    ("spawning", "empty", "spawning", "internal", "-", "-"),
    ("spawning", "alive", "spawning", "internal", "-", "-"),
    ("spawning", "timer", "spawning", "", "-", "-"),
    ("spawning", "pass", "spawning", "", "-", "-"),
    ("spawning", "fail", "spawning", "", "-", "-"),
    ("spawning", "skipped", "spawning", "", "-", "-"),
    ("spawning", "recheck", "spawning", "", "-", "-"),
    ("starting", "start", "starting", "refused: service is already running", "+20", "-"),
    ("starting", "restart", "stopping+start", "stopping signal", "+5000", "-"),
    ("starting", "stop", "stopping", "stopping signal", "+5000", "-"),
    ("starting", "remove", "stopping+remove", "stopping signal", "+5000", "-"),
    ("starting", "deps", "starting", "", "+20", "-"),
    ("starting", "spawned", "starting", "internal kill", "+20", "-"),
    ("starting", "spawnfail", "starting", "internal", "+20", "-"),
    ("starting", "exited", "backoff", "exited kill reap restarting", "+100", "exited with code 1"),
    ("starting", "empty", "starting", "internal", "+20", "-"),
    ("starting", "alive", "starting", "internal", "+20", "-"),
    ("starting", "timer", "starting", "probe", "-", "-"),
    ("starting", "pass", "running", "ready", "+100", "-"),
    ("starting", "fail", "starting", "unhealthy", "+100", "health check failed (1 in a row): refused"),
    ("starting", "skipped", "starting", "", "+100", "-"),
    ("starting", "recheck", "starting", "", "+20", "-"),
    ("running", "start", "running", "refused: service is already running", "-", "-"),
    ("running", "restart", "stopping+start", "stopping signal", "+5000", "-"),
    ("running", "stop", "stopping", "stopping signal", "+5000", "-"),
    ("running", "remove", "stopping+remove", "stopping signal", "+5000", "-"),
    ("running", "deps", "running", "", "-", "-"),
    ("running", "spawned", "running", "internal kill", "-", "-"),
    ("running", "spawnfail", "running", "internal", "-", "-"),
    ("running", "exited", "backoff", "exited kill reap restarting", "+100", "exited with code 1"),
    ("running", "empty", "running", "internal", "-", "-"),
    ("running", "alive", "running", "internal", "-", "-"),
    ("running", "timer", "running", "", "-", "-"),
    ("running", "pass", "running", "", "-", "-"),
    ("running", "fail", "running", "", "-", "-"),
    ("running", "skipped", "running", "", "-", "-"),
    ("running", "recheck", "running", "", "+30", "-"),
    ("stopping", "start", "stopping+start", "", "+4990", "-"),
    ("stopping", "restart", "stopping+start", "", "+4990", "-"),
    ("stopping", "stop", "stopping", "", "+4990", "-"),
    ("stopping", "remove", "stopping+remove", "", "+4990", "-"),
    ("stopping", "deps", "stopping", "", "+4990", "-"),
    ("stopping", "spawned", "stopping", "internal kill", "+4990", "-"),
    ("stopping", "spawnfail", "stopping", "internal", "+4990", "-"),
    ("stopping", "exited", "draining", "exited check", "+20", "-"),
    ("stopping", "empty", "stopping", "internal", "+4990", "-"),
    ("stopping", "alive", "stopping", "internal", "+4990", "-"),
    ("stopping", "timer", "killing", "killed kill", "-", "-"),
    ("stopping", "pass", "stopping", "", "+4990", "-"),
    ("stopping", "fail", "stopping", "", "+4990", "-"),
    ("stopping", "skipped", "stopping", "", "+4990", "-"),
    ("stopping", "recheck", "stopping", "", "+4990", "-"),
    ("draining", "start", "draining+start", "", "+10", "-"),
    ("draining", "restart", "draining+start", "", "+10", "-"),
    ("draining", "stop", "draining", "", "+10", "-"),
    ("draining", "remove", "draining+remove", "", "+10", "-"),
    ("draining", "deps", "draining", "", "+10", "-"),
    ("draining", "spawned", "draining", "internal kill", "+10", "-"),
    ("draining", "spawnfail", "draining", "internal", "+10", "-"),
    ("draining", "exited", "draining", "internal", "+10", "-"),
    ("draining", "empty", "held", "reap stopped", "-", "-"),
    ("draining", "alive", "draining", "", "+20", "-"),
    ("draining", "timer", "held", "killed kill reap stopped", "-", "-"),
    ("draining", "pass", "draining", "", "+10", "-"),
    ("draining", "fail", "draining", "", "+10", "-"),
    ("draining", "skipped", "draining", "", "+10", "-"),
    ("draining", "recheck", "draining", "", "+10", "-"),
];

fn row(phase: &str, event: &str) -> (String, String, String, String) {
    let mut t = reach(phase);
    let out = match apply(&mut t, event) {
        Ok(a) => kinds(&a),
        Err(r) => format!("refused: {}", r.message()),
    };
    let err = t.svc.last_error().unwrap_or("-").to_string();
    (t.phase(), out, t.due(), err)
}

#[test]
fn every_phase_and_event_as_the_table_says() {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for phase in PHASES {
        for event in EVENTS {
            let got = row(phase, event);
            let line = format!(
                "    (\"{phase}\", \"{event}\", \"{}\", \"{}\", \"{}\", \"{}\"),",
                got.0, got.1, got.2, got.3
            );
            match TABLE.iter().find(|r| r.0 == phase && r.1 == event) {
                None => missing.push(line),
                Some(r) if (r.2, r.3, r.4, r.5) != (&*got.0, &*got.1, &*got.2, &*got.3) => {
                    wrong.push(line)
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "rows that differ:\n{}\nrows missing:\n{}",
        wrong.join("\n"),
        missing.join("\n")
    );
    assert_eq!(TABLE.len(), PHASES.len() * EVENTS.len(), "one row per pair");
}

#[test]
fn a_binary_that_cannot_run_fails_a_configured_service_at_once() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.binary_problem = Some(BinaryProblem::Missing);
    s.autostart = false;
    let svc = Service::new(s.clone(), 0);
    assert_eq!(svc.state(), State::Failed, "configured: failed");
    assert_eq!(
        svc.last_error(),
        Some("service binary not found: /bin/true")
    );
    s.configured = false;
    assert_eq!(
        Service::new(s, 0).state(),
        State::Stopped,
        "neither: stopped"
    );
}

#[test]
fn crashes_back_off_doubling_then_give_up_after_exactly_max() {
    let mut t = T::new(RestartPolicy::Always, 2);
    t.on(Event::Start).unwrap();
    let mut delays = Vec::new();
    for _ in 0..3 {
        t.spawned();
        let a = t.exit(Exit::Code(1));
        if t.svc.state() == State::Restarting {
            delays.push(t.due());
            t.fire();
        } else {
            assert_eq!(kinds(&a), "exited kill reap failed");
        }
    }
    assert_eq!(delays, ["+100", "+200"]);
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.svc.restarts(), 2);
    assert_eq!(t.svc.history().len(), 3);
    t.on(Event::Start).unwrap();
    assert_eq!(t.svc.attempts(), 0, "start resets the counter");
}

#[test]
fn zero_max_retries_forever_at_the_capped_delay() {
    let mut t = T::new(RestartPolicy::Always, 0);
    t.on(Event::Start).unwrap();
    for _ in 0..40 {
        t.spawned();
        t.exit(Exit::Code(1));
        assert_eq!(t.svc.state(), State::Restarting);
        let due = t.due();
        t.fire();
        if t.svc.restarts() > 10 {
            assert_eq!(due, "+1000");
        }
    }
}

#[test]
fn a_long_run_resets_the_counter() {
    let mut t = T::new(RestartPolicy::Always, 10);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    t.ms += 60_000;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.attempts(), 1, "reset before counting this restart");
    assert_eq!(t.due(), "+100");
}

#[test]
fn policies_decide_what_an_exit_leads_to() {
    for (policy, exit, state) in [
        (RestartPolicy::Never, Exit::Code(0), State::Stopped),
        (RestartPolicy::Never, Exit::Code(3), State::Failed),
        (RestartPolicy::OnFailure, Exit::Code(0), State::Stopped),
        (RestartPolicy::OnFailure, Exit::Code(3), State::Restarting),
        (RestartPolicy::OnFailure, Exit::Signal(9), State::Restarting),
        (RestartPolicy::Always, Exit::Code(0), State::Restarting),
    ] {
        let mut t = T::new(policy, 5);
        t.on(Event::Start).unwrap();
        t.spawned();
        t.exit(exit);
        assert_eq!(t.svc.state(), state, "{policy:?} {exit:?}");
        assert_eq!(t.svc.pid(), None);
    }
}

#[test]
fn nothing_restarts_or_starts_during_shutdown() {
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.shutting_down = true;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.on(Event::Start), Ok(vec![]));
    assert_eq!(t.svc.state(), State::Stopped);
}

#[test]
fn an_operator_stop_stays_a_stop_whatever_a_reload_or_a_check_asks() {
    for origin in [Origin::Reload, Origin::Liveness] {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.on(Event::Start).unwrap();
        t.spawned();
        t.op_stop().unwrap();
        let restart = Event::Stop {
            then: AfterStop::Start,
            origin,
        };
        assert_eq!(t.on(restart), Ok(vec![]));
        t.exit(Exit::Signal(libc::SIGTERM));
        assert_eq!(kinds(&t.ev(Event::GroupEmpty)), "reap stopped");
        assert_eq!(t.phase(), "held", "{origin:?}");
    }
    // The operator's own restart, and removal, do override it.
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.op_stop().unwrap();
    t.on(Event::Restart).unwrap();
    assert_eq!(t.phase(), "stopping+start");
    let remove = Event::Stop {
        then: AfterStop::Remove,
        origin: Origin::Reload,
    };
    t.on(remove).unwrap();
    t.on(Event::Restart).unwrap();
    assert_eq!(t.phase(), "stopping+remove", "removal wins");
}

#[test]
fn a_stop_past_its_timeout_is_killed_and_ends_stopped() {
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.op_stop().unwrap();
    assert_eq!(
        t.svc.state(),
        State::Running,
        "the state stays until the group is empty"
    );
    assert_eq!(kinds(&t.fire()), "killed kill");
    assert_eq!(t.svc.deadline(), None);
    let a = t.exit(Exit::Signal(9));
    assert_eq!(kinds(&a), "exited reap stopped");
    let last = t.svc.last_exit().unwrap();
    assert!(last.by_operator, "an operator's stop caused this exit");
}

#[test]
fn retry_failed_tries_again_and_keeps_failing_fast() {
    let mut s = spec(RestartPolicy::Always, 1);
    s.retry_failed = Some(Duration::from_secs(30));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.due(), "+30000", "next_restart shown while failed");
    assert_eq!(kinds(&t.fire()), "retrying spawn");
    t.spawned();
    t.exit(Exit::Code(1));
    assert_eq!(
        t.phase(),
        "failed-retry",
        "straight back: the attempts stay used up"
    );
    // A retry that runs long enough recovers the normal backoff.
    t.fire();
    t.spawned();
    t.ms += 60_000;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Restarting);
}

#[test]
fn a_wall_clock_jump_changes_no_decision() {
    // The same runs, with the wall clock steady or jumping: backoff, attempts and
    // reset-after follow the monotonic clock; the wall clock only stamps the history.
    let run = |jump: bool| {
        let mut t = T::new(RestartPolicy::Always, 10);
        t.on(Event::Start).unwrap();
        let mut seen = Vec::new();
        for (start, end) in [(0, 10), (200, 210), (600, 70_600), (70_800, 70_810)] {
            t.on_at(start, Event::Timer).unwrap();
            t.spawned();
            t.ms = end;
            let gen = t.gen;
            let mut ctx = Ctx {
                now: Now {
                    mono: t.at(end),
                    wall_ms: if jump { 5 } else { 1_000_000 + end },
                },
                rng: &mut t.rng,
                unmet: Vec::new(),
                shutting_down: false,
            };
            let exit = Event::Exited {
                gen,
                exit: Exit::Code(1),
            };
            t.svc.on(exit, &mut ctx).unwrap();
            seen.push((t.svc.attempts(), t.due(), t.svc.state()));
        }
        seen
    };
    let steady = run(false);
    assert_eq!(run(true), steady);
    let attempts: Vec<u32> = steady.iter().map(|s| s.0).collect();
    assert_eq!(attempts, [1, 2, 1, 2], "the 70 s run reset the counter");
}

#[test]
fn health_checks_gate_readiness_then_restart_a_dead_service() {
    let mut s = spec(RestartPolicy::Always, 5);
    s.health_check = Some(check(2));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert_eq!(t.svc.state(), State::Starting);
    let gen = t.gen;
    let fail = |t: &mut T| {
        t.fire();
        t.ev(Event::Probe {
            gen,
            result: Err("503".into()),
        })
    };
    for _ in 0..5 {
        assert_eq!(kinds(&fail(&mut t)), "unhealthy", "no restart before ready");
    }
    t.fire();
    t.ev(Event::Probe {
        gen,
        result: Ok(()),
    });
    assert_eq!(t.svc.state(), State::Running);
    assert_eq!(kinds(&fail(&mut t)), "unhealthy");
    assert_eq!(kinds(&fail(&mut t)), "unhealthy stopping signal");
    t.exit(Exit::Signal(libc::SIGTERM));
    assert_eq!(kinds(&t.ev(Event::GroupEmpty)), "reap stopped restarting");
    assert!(t.svc.last_error().unwrap().contains("(2 in a row): 503"));
    assert_eq!(t.phase(), "backoff", "a liveness restart is not held");
}

#[test]
fn a_late_probe_result_touches_nothing() {
    let mut s = spec(RestartPolicy::Always, 5);
    s.health_check = Some(check(1));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    let old = t.gen;
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    let a = t.ev(Event::Probe {
        gen: old,
        result: Err("x".into()),
    });
    assert!(a.is_empty());
    assert_eq!(t.svc.last_error(), Some("exited with code 1"));
}

#[test]
fn a_busy_binary_is_retried_without_counting_a_restart() {
    let mut t = T::new(RestartPolicy::Never, 5);
    t.on(Event::Start).unwrap();
    let busy = || Event::SpawnFailed {
        error: "Text file busy".into(),
        busy: true,
    };
    for _ in 0..BUSY_RETRIES {
        assert_eq!(kinds(&t.ev(busy())), "retrying");
        assert_eq!(t.svc.state(), State::Starting);
        assert_eq!(kinds(&t.fire()), "spawn");
    }
    assert_eq!(t.svc.restarts(), 0);
    assert!(t.svc.history().is_empty(), "a retry is not a run");
    assert_eq!(kinds(&t.ev(busy())), "failed");
    assert_eq!(t.svc.state(), State::Failed);
}

#[test]
fn history_keeps_the_last_ten_runs() {
    let mut t = T::new(RestartPolicy::Always, 0);
    t.on(Event::Start).unwrap();
    for _ in 0..15 {
        t.spawned();
        t.exit(Exit::Code(1));
        t.fire();
    }
    assert_eq!(t.svc.history().len(), HISTORY_LEN);
}
