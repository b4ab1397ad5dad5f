//! The machine's deadlines (restart delays, retries, stop timeouts, group polls, probe
//! times), health-check results, and settings a reload changes in place.

use super::*;

impl Service {
    // ----- deadlines -------------------------------------------------------------------

    /// The restart delay is over.
    pub(super) fn backoff_over(&mut self, ctx: &mut Ctx) -> Vec<Action> {
        self.restarts += 1;
        self.launch(0, ctx)
    }

    /// `retry_failed_ms` came: the attempts stay used up, so another failure comes
    /// straight back to `failed`.
    pub(super) fn retry_failed(&mut self, ctx: &mut Ctx) -> Vec<Action> {
        self.restarts += 1;
        let mut actions = vec![log(
            log::Level::Info,
            RecordKind::Retrying,
            None,
            "trying a failed service again (retry_failed_ms)",
        )];
        actions.extend(self.launch(0, ctx));
        actions
    }

    /// `pid_file`: the launcher never daemonized: stopped, and restarted through the
    /// backoff path.
    pub(super) fn never_daemonized(&mut self, run: Run, ready: bool, ctx: &mut Ctx) -> Vec<Action> {
        let why = format!(
            "did not daemonize within {} ms (pid_file)",
            self.spec.stop_timeout.as_millis()
        );
        self.ending = Some(reason::start_failed(&why));
        self.last_error = Some(why);
        let then = AfterStop::Recover(self.next_attempt(ctx.rng));
        self.begin_stop(run, ready, then, Origin::Liveness, ctx.now.mono)
    }

    /// `pid_file`: no live process named by the start's deadline.
    pub(super) fn pid_file_timeout(&mut self, ctx: &mut Ctx) -> Vec<Action> {
        let Phase::AwaitPidFile { launcher, why, .. } = &mut self.phase else {
            return Vec::new();
        };
        let (launcher, why) = (*launcher, why.take());
        let message = format!(
            "the pid file {} names no live process of the service within {} ms",
            self.spec
                .process
                .pid_file
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string()),
            self.spec.stop_timeout.as_millis()
        );
        let why = match why {
            Some(e) => format!("{message}: {e}"),
            None => message,
        };
        self.start_failed(launcher, why, ctx)
    }

    /// `pid_file`: time to read it again.
    pub(super) fn read_pid_file_again(&mut self) -> Vec<Action> {
        let Phase::AwaitPidFile { gen, retry_at, .. } = &mut self.phase else {
            return Vec::new();
        };
        *retry_at = None;
        vec![Action::ReadPidFile { gen: *gen }]
    }

    /// A health check is due.
    pub(super) fn probe_due(&mut self) -> Vec<Action> {
        let Phase::Up { run, health, .. } = &mut self.phase else {
            return Vec::new();
        };
        health.next_probe = None;
        health.in_flight = true;
        vec![Action::Probe { gen: run.gen }]
    }

    /// `stop_timeout_ms` passed with the main process still there: SIGKILL.
    pub(super) fn stop_timeout(&mut self) -> Vec<Action> {
        let Phase::Stopping { run, stop } = &mut self.phase else {
            return Vec::new();
        };
        stop.killed = true;
        let pid = run.pid;
        vec![self.kill_log(pid), kill(pid)]
    }

    /// The main process is gone and its group outlived the stop timeout; SIGKILL
    /// cannot be ignored: the stop is done.
    pub(super) fn drain_timeout(&mut self, run: Run, stop: Stop, ctx: &mut Ctx) -> Vec<Action> {
        let mut actions = vec![self.kill_log(run.pid), kill(run.pid), Action::Reap(run.pid)];
        actions.extend(self.finish_stop(stop, ctx));
        actions
    }

    /// Time to check the draining group again.
    pub(super) fn poll_group(&mut self) -> Vec<Action> {
        let Phase::Draining { run, stop } = &mut self.phase else {
            return Vec::new();
        };
        stop.poll_at = None;
        vec![Action::CheckGroup(run.pid)]
    }

    pub(super) fn kill_log(&self, pid: i32) -> Action {
        log(
            log::Level::Warn,
            RecordKind::Killed,
            Some(pid),
            format!(
                "still running after {} ms: sending SIGKILL",
                self.spec.stop_timeout.as_millis()
            ),
        )
    }

    // ----- health ----------------------------------------------------------------------

    pub(super) fn check_interval(&self) -> Option<Duration> {
        self.spec
            .health_check
            .as_ref()
            .map(|hc| Duration::from_millis(hc.interval_ms))
    }

    /// The first pass makes the service ready; `failure_threshold` failures in a row
    /// while running restart it through backoff (liveness).
    pub(super) fn probe(&mut self, result: Result<(), String>, ctx: &mut Ctx) -> Vec<Action> {
        let now = ctx.now.mono;
        let Some(hc) = self.spec.health_check.clone() else {
            return Vec::new();
        };
        let Phase::Up {
            run, ready, health, ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        health.in_flight = false;
        health.next_probe = Some(now + Duration::from_millis(hc.interval_ms));
        let (run, pid) = (*run, Some(run.pid));
        match result {
            Ok(()) => {
                health.failures = 0;
                health.passed = true;
                // A pass resets the restart counter, as a long run does.
                self.attempts = 0;
                if *ready {
                    return Vec::new();
                }
                self.last_error = None;
                match self.ready_if_due(now) {
                    true => vec![log(
                        log::Level::Info,
                        RecordKind::Ready,
                        pid,
                        "health check passed: ready",
                    )],
                    false => Vec::new(),
                }
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
                        RecordKind::Unhealthy,
                        pid,
                        format!("health check failed ({n} in a row): {why}"),
                    )];
                }
                let then = AfterStop::Recover(self.next_attempt(ctx.rng));
                let mut actions = vec![log(
                    log::Level::Warn,
                    RecordKind::Unhealthy,
                    pid,
                    format!("health check failed {n} times in a row ({why}): restarting"),
                )];
                self.ending = Some(reason::health(&why));
                actions.extend(self.begin_stop(run, true, then, Origin::Liveness, now));
                actions
            }
        }
    }

    /// The check could not be started: tried again an interval later.
    pub(super) fn probe_skipped(&mut self, now: Instant) -> Vec<Action> {
        let interval = self.check_interval();
        if let (Phase::Up { health, .. }, Some(interval)) = (&mut self.phase, interval) {
            health.in_flight = false;
            health.next_probe = Some(now + interval);
        }
        Vec::new()
    }

    /// In-place settings from a reload. A running process without a check any more is
    /// up; one that just got a check is probed from now on; a failed service whose
    /// binary can run again is `stopped`, one whose binary went says why; a pending
    /// retry of a failed service follows the new `retry_failed_ms` (null cancels it).
    pub(super) fn reconfigured(&mut self, spec: ServiceSpec, ctx: &mut Ctx) -> Vec<Action> {
        let had_problem = self.spec.binary_problem.is_some();
        let old_retry = self.spec.retry_failed;
        self.spec = spec;
        let now = ctx.now.mono;
        let check = self.spec.health_check.clone();
        match (&mut self.phase, check) {
            (Phase::Up { ready, health, .. }, None) => {
                *health = Health::default();
                if !*ready {
                    self.last_error = None;
                    self.ready_if_due(now);
                }
            }
            (Phase::Up { health, .. }, Some(hc))
                if health.next_probe.is_none() && !health.in_flight =>
            {
                health.next_probe = Some(now + Duration::from_millis(hc.initial_delay_ms));
            }
            (Phase::Failed { retry_at }, _) => {
                // Counted from the reload: ten minutes lowered to one bring the retry
                // within a minute, and null means never, at once.
                if retry_at.is_some() && self.spec.retry_failed != old_retry {
                    *retry_at = self.spec.retry_failed.map(|r| now + r);
                }
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

    pub(super) fn push_history(&mut self, h: HistoryEntry) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(h);
    }
}
