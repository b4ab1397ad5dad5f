//! When and what the supervisor saves to `state_dir` (docs/unattended.md): restart counts,
//! run histories and live process groups, at most once per `persist::SAVE_INTERVAL`, the
//! writing itself done by the log writer thread (never the main loop). `persist.rs`
//! owns the file; this owns the timing and the carrying on of a predecessor's record.

use super::persist;
use super::state::reason;
use super::supervisor::Supervisor;
use crate::output::timefmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The state file's schedule.
pub(super) struct Saver {
    dir: Arc<persist::StateDir>,
    dirty: bool,
    saved_at: Option<Instant>,
}

impl Saver {
    pub fn new(dir: persist::StateDir) -> Saver {
        Saver {
            dir: Arc::new(dir),
            dirty: false,
            saved_at: None,
        }
    }
}

impl Saver {
    pub fn dir(&self) -> Arc<persist::StateDir> {
        self.dir.clone()
    }
}

impl Supervisor {
    /// Carries on the restart counts and run histories a predecessor saved. A run that
    /// was live then ended with that predecessor (its group was killed at start-up).
    pub fn restore(&mut self, saved: persist::Saved) {
        let now_ms = timefmt::unix_ms(SystemTime::now());
        for (name, s) in saved.services {
            let Some(e) = self.services.get_mut(&name) else {
                continue;
            };
            let history = s.history.into_iter().map(|mut h| {
                if h.exited_ms.is_none() {
                    h.exited_ms = Some(now_ms);
                    h.reason = Some(reason::ORCHESTRATOR_GONE.into());
                }
                h
            });
            e.svc.restore(s.restarts, history);
        }
        self.mark_state_dirty();
    }

    pub(super) fn mark_state_dirty(&mut self) {
        if let Some(p) = &mut self.persist {
            p.dirty = true;
        }
    }

    /// When the state file is next due to be written, if it has changes.
    pub(super) fn state_deadline(&self) -> Option<Instant> {
        let p = self.persist.as_ref().filter(|p| p.dirty)?;
        Some(
            p.saved_at
                .map_or_else(Instant::now, |t| t + persist::SAVE_INTERVAL),
        )
    }

    /// Has the state file written if it has changes and is due; with `force` (at exit),
    /// at once (the log writer's final flush then waits for it, at most 2 s).
    pub(super) fn save_state(&mut self, force: bool) {
        let due = self.state_deadline().is_some_and(|d| d <= Instant::now());
        if !(due || force) {
            return;
        }
        let Some(p) = &self.persist else { return };
        let mut saved = persist::Saved {
            boot_id: p.dir.boot_id().to_string(),
            services: Vec::with_capacity(self.services.len()),
        };
        for (name, e) in &self.services {
            let live = e.svc.pid();
            let s = persist::SavedService {
                restarts: e.svc.restarts(),
                history: e.svc.history().iter().cloned().collect(),
                group: e.group.filter(|g| Some(g.pgid) == live),
            };
            saved.services.push((name.clone(), s));
        }
        let dir = p.dir.clone();
        let job = Box::new(move || dir.save_logged(&saved));
        // At exit the writer is flushed afterwards, which waits for the job.
        let queued = if force {
            self.sink.send_job(job, Duration::from_secs(2))
        } else {
            self.sink.offer_job(job)
        };
        if let Some(p) = &mut self.persist {
            // Queued or not (the queue was full), look again an interval later.
            p.dirty &= !queued;
            p.saved_at = Some(Instant::now());
        }
    }
}
