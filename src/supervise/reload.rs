//! Reload (docs/lifecycle.md): re-read the file, re-run discovery, decide for each service
//! what the new plan means for it, and carry that out through the machines. Either the new
//! configuration is valid and applied whole, or nothing changes.

use super::machine::{AfterStop, Event, Origin, Service};
use super::supervisor::{Entry, Supervisor};
use crate::config::discovery::{self, BinaryProblem, ServiceSpec};
use crate::config::{self};

/// What a reload does to one service (`reload --dry-run` prints these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Start,
    Stop,
    Restart,
    /// Applied in place, without touching the process.
    Update,
    Unchanged,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Start => "start",
            Decision::Stop => "stop",
            Decision::Restart => "restart",
            Decision::Update => "update",
            Decision::Unchanged => "unchanged",
        }
    }
}

/// What a reload does to one service, from what it is and what the new plan says.
pub fn decide(old: Option<&Service>, new: Option<&ServiceSpec>) -> Decision {
    let (o, n) = match (old, new) {
        // An added service is started (a binary that cannot run makes that start fail
        // with the reason, as any start); one that is not to run changes nothing.
        (None, Some(n)) if n.enabled && n.autostart => return Decision::Start,
        (None, Some(_)) | (None, None) => return Decision::Unchanged,
        (Some(_), None) => return Decision::Stop,
        (Some(o), Some(n)) => (o, n),
    };
    let active = o.stoppable();
    // Disabled, a binary that went away before it ever ran, or dropped from the config
    // while run_unconfigured is false (still discovered, no longer wanted).
    let unwanted = !n.enabled
        || (n.binary_problem.is_some() && !o.has_process())
        || (o.spec().configured && !n.configured && !n.autostart);
    if active && unwanted {
        return Decision::Stop;
    }
    // An operator's stop under way stays a stop: the new process settings apply at the
    // next start.
    let stopping_for_good = o.stopping() == Some(AfterStop::Stay);
    if active && !stopping_for_good && o.spec().process_differs(n) {
        return Decision::Restart;
    }
    let startable = n.autostart && n.binary_problem.is_none() && !o.held();
    let o_spec = o.spec();
    if !active
        && startable
        && (!o_spec.enabled || o_spec.binary_problem.is_some() || !o_spec.autostart)
    {
        return Decision::Start;
    }
    if o_spec != n {
        Decision::Update
    } else {
        Decision::Unchanged
    }
}

/// What a reload did: its decisions, and the sidecars it could not use (each error
/// names the file). A service whose sidecar broke keeps the settings it had; the rest
/// of the new configuration is applied, and the reload reports failure.
pub struct Outcome {
    pub decisions: Vec<(String, Decision)>,
    pub broken: Vec<String>,
}

impl Outcome {
    /// The reply's error when a sidecar could not be used.
    pub fn error(&self) -> Option<String> {
        (!self.broken.is_empty()).then(|| {
            format!(
                "reloaded, but kept previous settings: {}",
                self.broken.join("; ")
            )
        })
    }
}

/// The new specs of services whose sidecar broke, replaced by the settings they have
/// (when they had good ones): returns each broken sidecar's error, and the services to
/// tell why they kept their settings.
fn keep_settings(
    old: &std::collections::BTreeMap<String, Entry>,
    new: &mut std::collections::BTreeMap<String, ServiceSpec>,
) -> (Vec<String>, Vec<(String, String)>) {
    let (mut broken, mut kept) = (Vec::new(), Vec::new());
    for (name, spec) in new.iter_mut() {
        let Some(BinaryProblem::Sidecar(why)) = &spec.binary_problem else {
            continue;
        };
        broken.push(format!("{name}: {why}"));
        let Some(o) = old.get(name).map(|e| e.svc.spec()) else {
            continue;
        };
        if !matches!(o.binary_problem, Some(BinaryProblem::Sidecar(_))) {
            kept.push((name.clone(), why.clone()));
            *spec = o.clone();
        }
    }
    (broken, kept)
}

fn new_specs_daemonize(specs: &std::collections::BTreeMap<String, ServiceSpec>) -> bool {
    specs.values().any(|s| s.process.pid_file.is_some())
}

pub fn summarize(plan: &[(String, Decision)]) -> String {
    let changed: Vec<String> = plan
        .iter()
        .filter(|(_, a)| *a != Decision::Unchanged)
        .map(|(n, a)| format!("{n}: {}", a.as_str()))
        .collect();
    if changed.is_empty() {
        "no changes".into()
    } else {
        changed.join(", ")
    }
}

impl Supervisor {
    /// `reload`, with what it did (or why it did nothing) in the log unless `dry_run`:
    /// SIGHUP and the `reload` command alike.
    pub(super) fn reload_logged(&mut self, dry_run: bool) -> Result<Outcome, String> {
        let done = self.reload(dry_run);
        match &done {
            _ if dry_run => {}
            Ok(d) => {
                log::info!("reloaded: {}", summarize(&d.decisions));
                if let Some(e) = d.error() {
                    log::error!("{e}");
                }
            }
            Err(e) => log::error!("reload failed, keeping the current configuration: {e}"),
        }
        done
    }

    /// Re-reads the configuration and re-runs discovery; applies the result unless
    /// `dry_run`. On any error nothing changes. Bound: one config read and one
    /// directory scan.
    pub(super) fn reload(&mut self, dry_run: bool) -> Result<Outcome, String> {
        let cfg = config::load(&self.overrides).map_err(|e| e.0.join("; "))?;
        let mut plan = discovery::plan(&cfg).map_err(|e| e.join("; "))?;
        let (broken, kept) = keep_settings(&self.services, &mut plan.services);
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.extend(
            plan.services
                .keys()
                .filter(|n| !self.services.contains_key(*n))
                .cloned(),
        );
        names.sort_unstable();
        let decisions: Vec<(String, Decision)> = names
            .into_iter()
            .map(|name| {
                let d = decide(
                    self.services.get(&name).map(|e| &e.svc),
                    plan.services.get(&name),
                );
                (name, d)
            })
            .collect();
        if dry_run {
            return Ok(Outcome { decisions, broken });
        }
        for n in &plan.notices {
            log::log!(n.level, "{}", n.msg);
        }
        let old = std::mem::replace(&mut self.cfg, cfg);
        if old.settings.control_socket != self.cfg.settings.control_socket
            || old.settings.subreaper != self.cfg.settings.subreaper
        {
            log::warn!("control_socket and subreaper changes take effect at the next start");
        }
        if !self.reaper.reaps_orphans() && new_specs_daemonize(&plan.services) {
            self.reaper.become_subreaper();
        }
        match (&mut self.watchdog, &self.cfg.settings.watchdog) {
            (Some(w), Some(new)) => w.reconfigure(new),
            (None, None) => {}
            (Some(w), None) => log::warn!(
                "watchdog: {} stays fed with the old settings until the next start",
                w.path().display()
            ),
            (None, Some(_)) => log::warn!("watchdog: takes effect at the next start"),
        }
        let s = &self.cfg.settings;
        self.sink.set_filter(s.log_level, s.log_format);
        self.sink.set_files(crate::output::files::FileConfig::of(s));
        self.sink
            .set_forward(crate::output::forward::ForwardConfig::of(
                s,
                &self.cfg.services,
            ));
        let mut new_specs = plan.services;
        for (name, decision) in &decisions {
            let spec = new_specs.remove(name);
            let Some(spec) = spec else {
                // Removed from the plan: stopped, then forgotten.
                let remove = Event::Stop {
                    then: AfterStop::Remove,
                    origin: Origin::Reload,
                };
                let _ = self.feed(name, remove);
                continue;
            };
            if !self.services.contains_key(name) {
                self.services.insert(name.clone(), Entry::new(spec));
            } else if *decision != Decision::Unchanged {
                let _ = self.feed(name, Event::Reconfigured(Box::new(spec)));
            }
            let event = match decision {
                Decision::Start => Event::Start,
                Decision::Stop => Event::Stop {
                    then: AfterStop::Stay,
                    origin: Origin::Reload,
                },
                Decision::Restart => Event::Stop {
                    then: AfterStop::Start,
                    origin: Origin::Reload,
                },
                Decision::Update | Decision::Unchanged => continue,
            };
            let _ = self.feed(name, event);
        }
        // Dependencies may have changed in place: waiting services look again.
        let waiting: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.svc.waiting_for_deps())
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let _ = self.feed(&name, Event::DepsChanged);
        }
        for (name, why) in kept {
            if let Some(e) = self.services.get_mut(&name) {
                log::error!("{name}: keeps its previous settings: {why}");
                e.svc.keep_settings(why);
            }
        }
        self.settle();
        Ok(Outcome { decisions, broken })
    }
}
