//! The machine's runs: asking for a spawn (or waiting for dependencies), a spawn's
//! result, a main process's exit, and the restart decision with its backoff.

use super::*;

impl Service {
    // ----- spawning --------------------------------------------------------------------

    /// Asks for a spawn, unless dependencies hold it back or shutdown forbids it.
    pub(super) fn launch(&mut self, tries: u32, ctx: &mut Ctx) -> Vec<Action> {
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
        self.ending = None;
        self.phase = Phase::Spawning { tries, stop: None };
        vec![Action::Spawn]
    }

    /// The spawn asked for happened; a stop that came meanwhile begins now.
    pub(super) fn spawned(
        &mut self,
        stop: Option<(AfterStop, Origin)>,
        pid: i32,
        gen: u64,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        let now = ctx.now;
        let run = Run {
            pid,
            gen,
            started: now.mono,
            launcher: self.spec.process.pid_file.is_some(),
        };
        self.push_history(HistoryEntry {
            started_ms: now.wall_ms,
            exited_ms: None,
            exit_code: None,
            reason: None,
        });
        let ready = self.up(run, now.mono);
        let mut actions = vec![log(
            log::Level::Info,
            RecordKind::Started,
            Some(pid),
            "started",
        )];
        if let Some((then, origin)) = stop {
            actions.extend(self.begin_stop(run, ready, then, origin, now.mono));
        }
        actions
    }

    /// `run` is live: up at once without a health check (or a pid file still to come);
    /// with one, once the first check passes. Whether it is ready.
    fn up(&mut self, run: Run, now: Instant) -> bool {
        // Without a health check the process is up once exec has succeeded; with one,
        // once the first check passes; with `ready: notify`, once READY=1 came too. A
        // launcher is never up: the process its pid file names will be.
        let mut health = Health::default();
        if let Some(hc) = self.spec.health_check.as_ref().filter(|_| !run.launcher) {
            health.next_probe = Some(now + Duration::from_millis(hc.initial_delay_ms));
        }
        self.notify_status = None;
        self.phase = Phase::Up {
            run,
            ready: false,
            health,
            watch: Watch::default(),
        };
        if !run.launcher {
            self.ready_if_due(now);
        }
        matches!(self.phase, Phase::Up { ready: true, .. })
    }

    /// `pid_file`: the launcher daemonized and exited 0. What its pid file names is
    /// the run's main process from now on; it is read until the start's deadline. The
    /// launcher is reaped once that is settled.
    fn launcher_done(&mut self, run: Run, ctx: &mut Ctx) -> Vec<Action> {
        let deadline = run.started + self.spec.stop_timeout;
        self.phase = Phase::AwaitPidFile {
            gen: run.gen,
            launcher: run.pid,
            why: None,
            started: run.started,
            deadline,
            retry_at: None,
        };
        let _ = ctx;
        vec![
            log(
                log::Level::Info,
                RecordKind::Daemonized,
                Some(run.pid),
                "launcher exited 0: reading the pid file",
            ),
            Action::ReadPidFile { gen: run.gen },
        ]
    }

    /// The answer to `ReadPidFile`.
    pub(super) fn pid_file(&mut self, result: Result<i32, String>, ctx: &mut Ctx) -> Vec<Action> {
        let now = ctx.now.mono;
        let Phase::AwaitPidFile {
            gen,
            launcher,
            started,
            deadline,
            ..
        } = self.phase
        else {
            return Vec::new();
        };
        match result {
            Ok(pid) => {
                let run = Run {
                    pid,
                    gen,
                    started,
                    launcher: false,
                };
                self.up(run, now);
                let mut actions = vec![log(
                    log::Level::Info,
                    RecordKind::Started,
                    Some(pid),
                    "main process from the pid file",
                )];
                if launcher > 0 {
                    actions.push(Action::Reap(launcher));
                }
                actions
            }
            Err(why) if now + PID_FILE_POLL < deadline => {
                self.phase = Phase::AwaitPidFile {
                    gen,
                    launcher,
                    why: Some(why),
                    started,
                    deadline,
                    retry_at: Some(now + PID_FILE_POLL),
                };
                Vec::new()
            }
            Err(why) => self.start_failed(launcher, why, ctx),
        }
    }

    /// A start that produced no main process (a pid file missing, stale or naming a
    /// process outside the service): a failed run, through the backoff path. What the
    /// launcher left in its group (and the service's cgroup) goes with it.
    pub(super) fn start_failed(
        &mut self,
        launcher: i32,
        why: String,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        if let Some(h) = self.history.back_mut() {
            h.exited_ms.get_or_insert(ctx.now.wall_ms);
            h.reason.get_or_insert_with(|| reason::start_failed(&why));
        }
        let mut actions = vec![log(
            log::Level::Error,
            RecordKind::Failed,
            None,
            format!("cannot start: {why}"),
        )];
        // Unknown (0) only in a state handed over by an older image.
        if launcher > 0 {
            actions.extend([kill(launcher), Action::Reap(launcher)]);
        }
        self.last_error = Some(why);
        actions.extend(self.after_run(false, ctx));
        actions
    }

    /// A failed spawn is a failed run of no duration. A busy binary is first tried again
    /// a few times, whatever the policy: that failure is a moment's, not the service's.
    pub(super) fn spawn_failed(
        &mut self,
        tries: u32,
        stop: Option<(AfterStop, Origin)>,
        error: String,
        busy: bool,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
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
            return vec![log(log::Level::Warn, RecordKind::Retrying, None, msg)];
        }
        self.push_history(HistoryEntry {
            started_ms: now.wall_ms,
            exited_ms: Some(now.wall_ms),
            exit_code: None,
            reason: Some(reason::start_failed(&error)),
        });
        let mut actions = vec![log(
            log::Level::Error,
            RecordKind::Failed,
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

    /// Run `run`'s main process exited, by itself or (`stop`) during a stop.
    pub(super) fn exited(
        &mut self,
        run: Run,
        stop: Option<Stop>,
        exit: Exit,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        let now = ctx.now;
        // The launcher's expected exit is no run's end: the exit code, the history and
        // last_error are the daemon's to write.
        if run.launcher && stop.is_none() && exit.success() {
            return self.launcher_done(run, ctx);
        }
        self.last_exit = Some(LastExit {
            exit,
            at_ms: now.wall_ms,
            by_operator: stop.is_some_and(|s| s.origin == Origin::Operator),
        });
        let why = self.ending.take().unwrap_or_else(|| match stop {
            Some(stop) => stop_reason(stop.origin, stop.then, exit),
            None => reason::exit(exit),
        });
        if let Some(h) = self.history.back_mut() {
            h.exited_ms = Some(now.wall_ms);
            h.exit_code = exit.code();
            h.reason = Some(why);
        }
        // An exit we asked for is news, not a warning.
        let level = if exit.clean() || stop.is_some() {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        let mut actions = vec![log(
            level,
            RecordKind::Exited,
            Some(run.pid),
            exit.describe(),
        )];
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
        self.last_error = (!exit.clean()).then(|| exit.describe());
        actions.extend(self.after_run(exit.clean(), ctx));
        actions
    }

    /// The restart decision after a run ended by itself.
    pub(super) fn after_run(&mut self, success: bool, ctx: &mut Ctx) -> Vec<Action> {
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
    pub(super) fn next_attempt(&mut self, rng: &mut fastrand::Rng) -> Option<Duration> {
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
    pub(super) fn schedule_restart(&mut self, delay: Option<Duration>, now: Instant) -> Action {
        match delay {
            Some(delay) => {
                self.phase = Phase::Backoff { until: now + delay };
                log(
                    log::Level::Info,
                    RecordKind::Restarting,
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
                    RecordKind::Failed,
                    None,
                    format!(
                        "maximum restart attempts exceeded ({}); {then}",
                        self.spec.max_restart_attempts
                    ),
                )
            }
        }
    }
}

/// Why a run that a stop ended ended, by who asked for the stop.
fn stop_reason(origin: Origin, then: AfterStop, exit: Exit) -> String {
    match (origin, then) {
        (Origin::Operator, AfterStop::Start) => reason::OPERATOR_RESTART.into(),
        (Origin::Operator, _) => reason::OPERATOR_STOP.into(),
        (Origin::Reload, AfterStop::Start) => reason::RELOAD_RESTART.into(),
        (Origin::Reload, _) => reason::RELOAD_STOP.into(),
        (Origin::Shutdown, _) => reason::SHUTDOWN.into(),
        // A liveness stop says why in `ending`; without it, the exit is all there is.
        (Origin::Liveness, _) => reason::exit(exit),
    }
}
