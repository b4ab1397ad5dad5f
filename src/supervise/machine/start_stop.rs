//! The machine's answers to requests: start, restart and stop (from an operator, a
//! reload, a shutdown or a failed health check), and how a stop begins and ends.

use super::*;

impl Service {
    /// A start from rest (stopped, failed, or a start already pending): the counter
    /// reset, unless the binary cannot run.
    pub(super) fn start(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        if let Some(why) = self.spec.binary_error() {
            self.phase = Phase::Failed { retry_at: None };
            self.last_error = Some(why.clone());
            return Err(Refusal::Binary(why));
        }
        self.attempts = 0;
        Ok(self.launch(0, ctx))
    }

    /// Started while a stop waits for the spawn: the stop is dropped.
    pub(super) fn keep_spawn(&mut self) -> Vec<Action> {
        if let Phase::Spawning { stop, .. } = &mut self.phase {
            *stop = None;
        }
        Vec::new()
    }

    /// Started while stopping: the stop finishes, then it starts.
    pub(super) fn start_after_stop(&mut self) -> Vec<Action> {
        if let Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } = &mut self.phase {
            stop.then = AfterStop::Start;
            stop.origin = Origin::Operator;
        }
        Vec::new()
    }

    /// Restarted with a process (or one coming): stopped, then started with the counter
    /// reset.
    pub(super) fn restart(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        self.attempts = 0;
        self.dispatch(
            Event::Stop {
                then: AfterStop::Start,
                origin: Origin::Operator,
            },
            ctx,
        )
    }

    /// A stop before the spawn's result: kept, carried out once the process exists.
    pub(super) fn stop_once_spawned(&mut self, then: AfterStop, origin: Origin) -> Vec<Action> {
        if let Phase::Spawning { stop, .. } = &mut self.phase {
            *stop = Some(merge(*stop, then, origin));
        }
        Vec::new()
    }

    /// A stop on top of one under way.
    pub(super) fn stop_again(&mut self, then: AfterStop, origin: Origin) -> Vec<Action> {
        if let Phase::Stopping { stop, .. } | Phase::Draining { stop, .. } = &mut self.phase {
            (stop.then, stop.origin) = merge(Some((stop.then, stop.origin)), then, origin);
        }
        Vec::new()
    }

    /// A stop with nothing running (stopped or failed).
    pub(super) fn stop_idle(
        &mut self,
        then: AfterStop,
        origin: Origin,
        ctx: &mut Ctx,
    ) -> Result<Vec<Action>, Refusal> {
        let retry_pending = self.next_restart().is_some();
        match then {
            AfterStop::Remove => Ok(vec![Action::Remove]),
            AfterStop::Start => self.start(ctx),
            AfterStop::Stay if retry_pending => Ok(self.cancel(origin, "retry")),
            // An operator's stop leaves a failed service stopped, as a stop during a
            // restart delay does, and either held: no reload starts it until the
            // operator does.
            AfterStop::Stay if origin == Origin::Operator => match self.phase {
                Phase::Failed { .. } => Ok(self.cancel(origin, "failed state")),
                _ => {
                    self.phase = Phase::Stopped { held: true };
                    Ok(Vec::new())
                }
            },
            AfterStop::Stay => Err(Refusal::NotRunning),
            AfterStop::Recover(_) => Ok(Vec::new()),
        }
    }

    /// The daemon may be up already, its pid file not written yet: whatever runs of the
    /// service (its cgroup, or without one what descends from the launcher) is stopped
    /// like a run.
    pub(super) fn stop_unnamed(
        &mut self,
        then: AfterStop,
        origin: Origin,
        now: Instant,
    ) -> Vec<Action> {
        let Phase::AwaitPidFile {
            gen,
            launcher,
            started,
            ..
        } = self.phase
        else {
            return Vec::new();
        };
        let run = Run {
            pid: launcher,
            gen,
            started,
            launcher: true,
        };
        self.begin_drain(run, then, origin, now)
    }

    /// No process yet (or, handed over by an older image, no launcher known: whatever
    /// the daemon left goes with the service's cgroup): the pending start is cancelled
    /// at once.
    pub(super) fn stop_pending(
        &mut self,
        then: AfterStop,
        origin: Origin,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        match then {
            AfterStop::Remove => vec![Action::Remove],
            AfterStop::Start => {
                self.attempts = 0;
                self.launch(0, ctx)
            }
            AfterStop::Stay => self.cancel(origin, "pending start"),
            AfterStop::Recover(_) => Vec::new(),
        }
    }

    /// A pending (re)start is dropped: stopped, and held when an operator asked.
    pub(super) fn cancel(&mut self, origin: Origin, what: &str) -> Vec<Action> {
        self.phase = Phase::Stopped {
            held: origin != Origin::Reload,
        };
        self.last_error = None;
        vec![log(
            log::Level::Info,
            RecordKind::Stopped,
            None,
            format!("stopped ({what} cancelled)"),
        )]
    }

    pub(super) fn begin_stop(
        &mut self,
        run: Run,
        ready: bool,
        then: AfterStop,
        origin: Origin,
        now: Instant,
    ) -> Vec<Action> {
        let shown = if ready {
            State::Running
        } else {
            State::Starting
        };
        let stop = self.new_stop(then, origin, shown, None, now);
        self.phase = Phase::Stopping { run, stop };
        self.signal_stop(run, Some(run.pid), "")
    }

    /// A stop with no main process to wait for (its launcher gone, the pid file not yet
    /// read): `stop_signal` to what is left of the run, which is then drained as after
    /// a main process's exit, SIGKILL at the timeout.
    fn begin_drain(
        &mut self,
        run: Run,
        then: AfterStop,
        origin: Origin,
        now: Instant,
    ) -> Vec<Action> {
        let stop = self.new_stop(then, origin, State::Starting, Some(now + GROUP_POLL), now);
        self.phase = Phase::Draining { run, stop };
        self.signal_stop(run, None, " (the pid file names no process yet)")
    }

    /// A stop that starts now: SIGKILL is due at `stop_timeout_ms`.
    fn new_stop(
        &self,
        then: AfterStop,
        origin: Origin,
        shown: State,
        poll_at: Option<Instant>,
        now: Instant,
    ) -> Stop {
        Stop {
            deadline: now + self.spec.stop_timeout,
            killed: false,
            then,
            origin,
            shown,
            poll_at,
        }
    }

    /// `stop_signal` to the run's group, and the record that says so.
    fn signal_stop(&self, run: Run, pid: Option<i32>, why: &str) -> Vec<Action> {
        vec![
            log(
                log::Level::Info,
                RecordKind::Stopping,
                pid,
                format!(
                    "stopping with {}{why}",
                    crate::supervise::state::signal_name(self.spec.stop_signal)
                ),
            ),
            Action::Signal {
                pgid: run.pid,
                sig: self.spec.stop_signal,
            },
        ]
    }

    pub(super) fn finish_stop(&mut self, stop: Stop, ctx: &mut Ctx) -> Vec<Action> {
        self.phase = Phase::Stopped {
            held: matches!(stop.origin, Origin::Operator | Origin::Shutdown),
        };
        let mut actions = vec![log(log::Level::Info, RecordKind::Stopped, None, "stopped")];
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

    /// The draining run's group is empty: the stop is done.
    pub(super) fn drained(&mut self, run: Run, stop: Stop, ctx: &mut Ctx) -> Vec<Action> {
        let mut actions = vec![Action::Reap(run.pid)];
        actions.extend(self.finish_stop(stop, ctx));
        actions
    }

    /// The draining run's group still has members: checked again later.
    pub(super) fn poll_group_later(&mut self, now: Instant) -> Vec<Action> {
        if let Phase::Draining { stop, .. } = &mut self.phase {
            stop.poll_at = Some(now + GROUP_POLL);
        }
        Vec::new()
    }
}
