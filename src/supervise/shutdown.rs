//! The signals the loop acts on (shutdown, reload, orphans, reopening the logs) and
//! shutdown itself: no more starts, every service stopped in dependency order within
//! `shutdown_timeout_ms`, then SIGKILL to what is left (`tick`); a second shutdown
//! signal kills everything at once.

use super::machine::{self, AfterStop, Origin};
use super::state::signal_name;
use super::supervisor::{Outcome, Shutdown, Supervisor};
use std::time::{Duration, Instant};

impl Supervisor {
    /// A signal the signals thread passed on (docs/lifecycle.md lists what each does).
    pub(super) fn on_signal(&mut self, sig: i32) -> Option<Outcome> {
        match sig {
            // SIGPWR reaches the loop only as PID 1 (`signals::forward`).
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGPWR => {
                if self.shutdown.is_some() {
                    log::warn!("second {}: killing every service now", signal_name(sig));
                    self.kill_all();
                    return Some(Outcome::Forced);
                }
                log::info!("{} received: shutting down", signal_name(sig));
                self.begin_shutdown();
            }
            libc::SIGHUP => {
                let _ = self.reload_logged(false);
            }
            libc::SIGCHLD => self.reaper.reap_orphans(),
            libc::SIGUSR1 => {
                log::info!("SIGUSR1 received: reopening the log files");
                self.sink.reopen();
            }
            _ => {}
        }
        None
    }

    /// SIGKILL to every run that may still have a process, a launcher whose pid file is
    /// awaited included.
    pub(super) fn kill_all(&mut self) {
        let runs: Vec<(String, i32)> = self
            .services
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.svc.pid().or(e.svc.launcher())?)))
            .collect();
        for (name, pid) in runs {
            self.signal(&name, pid, libc::SIGKILL);
        }
    }

    /// No more starts; pending restarts and dependency waits are cancelled at once, and
    /// every process is stopped in dependency order, as by `stop`.
    pub(super) fn begin_shutdown(&mut self) {
        let timeout = Duration::from_millis(self.cfg.settings.shutdown_timeout_ms);
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + timeout,
            killed: false,
        });
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(e) = self.services.get(&name) else {
                continue;
            };
            if e.svc.has_process() {
                self.stops.request(&name);
            } else if e.svc.start_pending() {
                let _ = self.feed(
                    &name,
                    machine::Event::Stop {
                        then: AfterStop::Stay,
                        origin: Origin::Shutdown,
                    },
                );
            }
        }
        self.settle();
    }

    /// Shutdown is under way and no service has a process left.
    pub(super) fn finished(&self) -> bool {
        self.shutdown.is_some() && self.services.values().all(|e| !e.svc.has_process())
    }
}
