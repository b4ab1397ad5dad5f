//! The machine's answers to requests: start, restart and stop (from an operator, a
//! reload, a shutdown or a failed health check), and how a stop begins and ends.

use super::*;

impl Service {
    pub(super) fn start(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        match &mut self.phase {
            Phase::Up { .. } | Phase::AwaitPidFile { .. } => Err(Refusal::AlreadyRunning),
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

    pub(super) fn restart(&mut self, ctx: &mut Ctx) -> Result<Vec<Action>, Refusal> {
        if !self.spec.enabled {
            return Err(Refusal::Disabled);
        }
        if self.has_process()
            || matches!(
                self.phase,
                Phase::Spawning { .. } | Phase::AwaitPidFile { .. }
            )
        {
            self.attempts = 0;
            return self.stop(AfterStop::Start, Origin::Operator, ctx);
        }
        self.start(ctx)
    }

    pub(super) fn stop(
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
                    // An operator's stop leaves a failed service stopped, as a stop
                    // during a restart delay does, and either held: no reload starts
                    // it until the operator does.
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
            // The daemon may be up already, its pid file not written yet: whatever runs
            // of the service (its cgroup, or without one what descends from the
            // launcher) is stopped like a run.
            Phase::AwaitPidFile {
                gen,
                launcher,
                started,
                ..
            } if *launcher > 0 => {
                let run = Run {
                    pid: *launcher,
                    gen: *gen,
                    started: *started,
                    launcher: true,
                };
                Ok(self.begin_drain(run, then, origin, now))
            }
            // No process yet (or, handed over by an older image, no launcher known:
            // whatever the daemon left goes with the service's cgroup): the pending
            // start is cancelled at once.
            Phase::WaitingDeps
            | Phase::Backoff { .. }
            | Phase::BusyRetry { .. }
            | Phase::AwaitPidFile { .. } => match then {
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
    pub(super) fn cancel(&mut self, origin: Origin, what: &str) -> Vec<Action> {
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

    pub(super) fn begin_stop(
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
                    crate::supervise::state::signal_name(self.spec.stop_signal)
                ),
            ),
            Action::Signal {
                pgid: run.pid,
                sig: self.spec.stop_signal,
            },
        ]
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
        self.phase = Phase::Draining {
            run,
            stop: Stop {
                deadline: now + self.spec.stop_timeout,
                killed: false,
                then,
                origin,
                shown: State::Starting,
                poll_at: Some(now + GROUP_POLL),
            },
        };
        vec![
            log(
                log::Level::Info,
                "stopping",
                None,
                format!(
                    "stopping with {} (the pid file names no process yet)",
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
}
