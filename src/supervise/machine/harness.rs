//! A service under test with its own clock and random source, for the table, the
//! scenarios and the property test.

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
        grpc_service: String::new(),
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
            Phase::Up { run, .. } if run.launcher => "launching".into(),
            Phase::AwaitPidFile { .. } => "await-pid".into(),
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
            Action::ReadPidFile { .. } => "read-pid",
            Action::Log { event, .. } => event.as_str(),
        })
        .collect();
    words.join(" ")
}
