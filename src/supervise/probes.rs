//! Health checks from the loop's side (docs/health.md): the machine asks for a probe of a
//! run;
//! `tcp` and `http` checks go to the probe threads, `exec` checks are processes spawned
//! here, in the service's cgroup, and bounded by `timeout_ms`. Every result goes back
//! to the machine as a `Probe` event tagged with the run it checked.

use super::machine::Event;
use super::state::Exit;
use super::supervisor::Supervisor;
use crate::config::CheckType;
use crate::health::exec::ExecProbe;
use crate::health::probe::Job;
use crate::process::cgroup::CgroupLimits;
use crate::process::{spawn, waiter};
use std::time::{Duration, Instant};

impl Supervisor {
    /// Starts the health check of run `gen`.
    pub(super) fn start_probe(&mut self, name: &str, gen: u64) {
        let Some(e) = self.services.get(name) else {
            return;
        };
        let Some(hc) = e.svc.spec().health_check.clone() else {
            return;
        };
        if hc.kind != CheckType::Exec {
            let job = Job {
                service: e.name.clone(),
                gen,
                check: hc,
            };
            if !self.prober.submit(job) {
                log::debug!("{name}: health check skipped: too many checks in flight");
                let _ = self.feed(name, Event::ProbeSkipped);
            }
            return;
        }
        if e.probe.is_some() {
            // The previous one has not finished yet.
            let _ = self.feed(name, Event::ProbeSkipped);
            return;
        }
        // In the service's cgroup, so that what the check starts counts against the
        // service's limits and goes with the service when it stops.
        let files = if e.cgroup_dirs.is_empty() {
            Vec::new()
        } else {
            let spec = e.svc.spec();
            let limits = CgroupLimits::of(spec);
            self.cgroups
                .prepare(name, limits)
                .map(|(files, _)| files)
                .unwrap_or_default()
        };
        let spawned = spawn::spawn_probe(e.svc.spec(), &hc.command, &files);
        drop(files);
        let pid = match spawned {
            Ok(pid) => pid,
            Err(err) => {
                let _ = self.feed(
                    name,
                    Event::Probe {
                        gen,
                        result: Err(err),
                    },
                );
                return;
            }
        };
        let service = e.name.clone();
        let probe_gen = self.next_gen();
        if let Err(err) = waiter::spawn_waiter(pid, probe_gen, service, self.tx.clone(), None, None)
        {
            spawn::signal_group(pid, libc::SIGKILL);
            spawn::reap(pid);
            let result = Err(format!("cannot create a thread: {err}"));
            let _ = self.feed(name, Event::Probe { gen, result });
            return;
        }
        self.reaper.claim(pid);
        if let Some(e) = self.services.get_mut(name) {
            e.probe = Some(ExecProbe {
                pid,
                run_gen: gen,
                deadline: Instant::now() + Duration::from_millis(hc.timeout_ms.max(1)),
                timed_out: false,
            });
        }
    }

    pub(super) fn is_probe(&self, service: &str, pid: i32) -> bool {
        self.services
            .get(service)
            .and_then(|e| e.probe.as_ref())
            .is_some_and(|p| p.pid == pid)
    }

    pub(super) fn probe_exited(&mut self, service: &str, pid: i32, exit: Exit) {
        spawn::signal_group(pid, libc::SIGKILL); // Whatever the check left behind.
        spawn::reap(pid);
        self.reaper.reaped(pid);
        let Some(e) = self.services.get_mut(service) else {
            return;
        };
        let Some(p) = e.probe.take() else { return };
        let timeout = e
            .svc
            .spec()
            .health_check
            .as_ref()
            .map_or(0, |h| h.timeout_ms);
        let result = if p.timed_out {
            Err(format!("timed out after {timeout} ms"))
        } else if exit.success() {
            Ok(())
        } else {
            Err(exit.describe())
        };
        let gen = p.run_gen;
        let _ = self.feed(service, Event::Probe { gen, result });
    }

    /// Exec checks past their timeout are killed; the waiter reports the exit, which
    /// then reads "timed out".
    pub(super) fn probe_timeouts(&mut self, now: Instant) {
        for e in self.services.values_mut() {
            if let Some(p) = e
                .probe
                .as_mut()
                .filter(|p| p.deadline().is_some_and(|d| d <= now))
            {
                p.timed_out = true;
                spawn::signal_group(p.pid, libc::SIGKILL);
            }
        }
    }

    /// A stopping service's check goes at once: it would only keep the group alive.
    pub(super) fn kill_probe(&mut self, name: &str) {
        if let Some(p) = self.services.get(name).and_then(|e| e.probe.as_ref()) {
            spawn::signal_group(p.pid, libc::SIGKILL);
        }
    }
}
