//! What the supervisor reads of a service's machine: the state users see, the run's
//! pids and generation, the counters and history `status` reports, and the one
//! deadline the loop waits for. Reading only: nothing here changes the machine.

use super::{AfterStop, Phase, Run, Service};
use crate::config::discovery::ServiceSpec;
use crate::supervise::state::{HistoryEntry, LastExit, State};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

impl Service {
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    pub fn state(&self) -> State {
        match &self.phase {
            Phase::Stopped { .. } => State::Stopped,
            Phase::Failed { .. } => State::Failed,
            Phase::WaitingDeps
            | Phase::BusyRetry { .. }
            | Phase::Spawning { .. }
            | Phase::AwaitPidFile { .. } => State::Starting,
            Phase::Backoff { .. } => State::Restarting,
            Phase::Up { ready: true, .. } => State::Running,
            Phase::Up { ready: false, .. } => State::Starting,
            Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } => stop.shown,
        }
    }

    pub(super) fn run(&self) -> Option<&Run> {
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

    /// `pid_file`: the launcher of the run whose pid file is awaited (exited, unreaped).
    pub fn awaited_launcher(&self) -> Option<i32> {
        match self.phase {
            Phase::AwaitPidFile { launcher, .. } if launcher > 0 => Some(launcher),
            _ => None,
        }
    }

    /// `pid_file`: the pid of the current run's launcher while it is the run (not yet
    /// daemonized, or exited and its pid file awaited or a stop draining what it left).
    pub fn launcher(&self) -> Option<i32> {
        match &self.phase {
            Phase::AwaitPidFile { launcher, .. } if *launcher > 0 => Some(*launcher),
            Phase::Up { run, .. } | Phase::Stopping { run, .. } | Phase::Draining { run, .. }
                if run.launcher =>
            {
                Some(run.pid)
            }
            _ => None,
        }
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
                | Phase::AwaitPidFile { .. }
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

    /// A live run of a `ready: notify` service that has not sent READY=1 yet.
    pub fn awaiting_ready(&self) -> bool {
        match &self.phase {
            Phase::Up { ready, watch, .. } => {
                !ready && self.spec.process.ready_notify && !watch.notified
            }
            _ => false,
        }
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
        self.last_exit.and_then(|l| l.exit.code())
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn notify_status(&self) -> Option<&str> {
        self.notify_status.as_deref()
    }

    /// Whether the watchdog deadline is armed: the loop then reads the last keep-alive
    /// when this service's deadline comes.
    pub fn watching(&self) -> bool {
        matches!(&self.phase, Phase::Up { watch, .. } if watch.deadline.is_some())
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
            // A launcher that has not daemonized by the deadline fails the start.
            Phase::Up { run, .. } if run.launcher => Some(run.started + self.spec.stop_timeout),
            Phase::AwaitPidFile {
                deadline, retry_at, ..
            } => Some(retry_at.map_or(*deadline, |r| r.min(*deadline))),
            Phase::Up { health, watch, .. } => {
                let probe = health.next_probe.filter(|_| !health.in_flight);
                [probe, watch.deadline].into_iter().flatten().min()
            }
            Phase::Stopping { stop, .. } if !stop.killed => Some(stop.deadline),
            Phase::Draining { stop, .. } => {
                Some(stop.poll_at.map_or(stop.deadline, |p| p.min(stop.deadline)))
            }
            _ => None,
        }
    }
}
