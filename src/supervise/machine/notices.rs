//! The machine's side of sd_notify (docs/health.md): readiness that needs `READY=1` (and
//! the health check's first pass, when there is one), `STATUS=...`, and the watchdog: a
//! deadline armed once the run is `running`, moved by keep-alives, whose expiry (or a
//! `WATCHDOG=trigger`) is a liveness failure restarted through the backoff path.

use super::*;

impl Service {
    /// Makes an unready run ready once everything it waits for has come: the first
    /// health-check pass (with a check) and READY=1 (with `ready: notify`). Arms the
    /// watchdog then. True when it became ready.
    pub(super) fn ready_if_due(&mut self, now: Instant) -> bool {
        let needs_pass = self.spec.health_check.is_some();
        let needs_notify = self.spec.process.ready_notify;
        let watchdog = self.spec.process.watchdog;
        let Phase::Up {
            ready: ready @ false,
            health,
            watch,
            ..
        } = &mut self.phase
        else {
            return false;
        };
        if (needs_pass && !health.passed) || (needs_notify && !watch.notified) {
            return false;
        }
        *ready = true;
        watch.deadline = watchdog.map(|w| now + w);
        true
    }

    /// `STATUS=...`, kept while a process runs.
    pub(super) fn status_text(&mut self, text: String) -> Vec<Action> {
        if self.has_process() {
            self.notify_status = Some(text);
        }
        Vec::new()
    }

    /// `READY=1` from a live run.
    pub(super) fn ready_notified(&mut self, now: Instant) -> Vec<Action> {
        let Phase::Up {
            run, ready, watch, ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        if *ready || watch.notified {
            return Vec::new();
        }
        watch.notified = true;
        let pid = run.pid;
        if !self.ready_if_due(now) {
            return Vec::new();
        }
        self.last_error = None;
        vec![log(
            log::Level::Info,
            RecordKind::Ready,
            Some(pid),
            "READY=1: ready",
        )]
    }

    /// The last `WATCHDOG=1` moves the deadline.
    pub(super) fn keep_alive(&mut self, at: Instant) -> Vec<Action> {
        let watchdog = self.spec.process.watchdog;
        if let (Phase::Up { watch, .. }, Some(w)) = (&mut self.phase, watchdog) {
            if let Some(deadline) = &mut watch.deadline {
                *deadline = (*deadline).max(at + w);
            }
        }
        Vec::new()
    }

    /// `WATCHDOG=trigger`: a liveness failure.
    pub(super) fn watchdog_triggered(
        &mut self,
        run: Run,
        ready: bool,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        self.ending = Some(reason::WATCHDOG_TRIGGER.into());
        let why = "watchdog triggered by the service (WATCHDOG=trigger)";
        self.watchdog_restart(run, ready, why.into(), ctx)
    }

    /// No keep-alive within `watchdog_ms`: the run is hung.
    pub(super) fn watchdog_timeout(&mut self, run: Run, ctx: &mut Ctx) -> Vec<Action> {
        let ms = self.spec.process.watchdog.map_or(0, |w| w.as_millis());
        let why = reason::watchdog_timeout(ms);
        self.ending = Some(why.clone());
        self.watchdog_restart(run, true, why, ctx)
    }

    /// A watchdog's verdict on `run`: `why` logged and kept as `last_error`, and the run
    /// stopped to be restarted as after any liveness failure.
    fn watchdog_restart(
        &mut self,
        run: Run,
        ready: bool,
        why: String,
        ctx: &mut Ctx,
    ) -> Vec<Action> {
        let then = AfterStop::Recover(self.liveness_attempt(run, ctx));
        let mut actions = vec![log(
            log::Level::Warn,
            RecordKind::Watchdog,
            Some(run.pid),
            format!("{why}: restarting"),
        )];
        self.last_error = Some(why);
        actions.extend(self.begin_stop(run, ready, then, Origin::Liveness, ctx.now.mono));
        actions
    }

    /// The restart delay after a liveness failure of `run`. A run that lasted
    /// `reset_after` before it hung resets the counter first (docs/lifecycle.md), as an
    /// exit after that long would: a hang after a day of service gets a fresh backoff.
    fn liveness_attempt(&mut self, run: Run, ctx: &mut Ctx) -> Option<Duration> {
        if ctx.now.mono.saturating_duration_since(run.started) >= self.spec.reset_after {
            self.attempts = 0;
        }
        self.next_attempt(ctx.rng)
    }
}
