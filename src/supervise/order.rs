//! Dependency order (docs/lifecycle.md, docs/health.md): a start waits until every
//! `depends_on` runs (the machine is told which are not running, as its `unmet` input),
//! and a stop, or the shutdown, takes a service down only once nothing that still has a
//! process depends on it, directly or through services that are already stopped.
//!
//! The stops asked for and not yet carried out are one set here, not flags on the
//! services; `advance_stops` carries out whichever may go now and is called after
//! every change.

use super::machine::{self, AfterStop, Origin};
use super::supervisor::Supervisor;
use std::collections::{BTreeSet, HashSet};

/// Services whose ordered stop was asked for and has not finished.
#[derive(Default)]
pub(super) struct Stops {
    requested: BTreeSet<String>,
}

impl Stops {
    pub fn request(&mut self, name: &str) {
        self.requested.insert(name.to_string());
    }

    /// A `start` or `restart` overrides a stop that still waits for dependents.
    pub fn cancel(&mut self, name: &str) {
        self.requested.remove(name);
    }

    pub fn is_requested(&self, name: &str) -> bool {
        self.requested.contains(name)
    }

    /// The stops asked for, for `upgrade-self`.
    pub fn names(&self) -> Vec<String> {
        self.requested.iter().cloned().collect()
    }
}

/// Whether a requested stop must still be fed to the service's machine: not while a
/// stop that ends its run for good is under way, an operator's or a removal (which no
/// other stop overrides). Feeding one there changes nothing, and `advance_stops`,
/// counting it as progress, would go round for ever.
fn needs_feeding(under_way: Option<AfterStop>) -> bool {
    !matches!(under_way, Some(AfterStop::Stay | AfterStop::Remove))
}

impl Supervisor {
    /// Dependencies of `name` that are not running, as `name (state)`.
    pub(super) fn unmet_dependencies(&self, name: &str) -> Vec<String> {
        let Some(e) = self.services.get(name) else {
            return Vec::new();
        };
        e.svc
            .spec()
            .depends_on
            .iter()
            .filter_map(|d| match self.services.get(d) {
                Some(de) if de.svc.state() == super::state::State::Running => None,
                Some(de) => Some(format!("{d} ({})", de.svc.state().as_str())),
                None => Some(format!("{d} (unknown)")),
            })
            .collect()
    }

    /// Everything `name` depends on, directly or not.
    fn dependencies_of(&self, name: &str) -> HashSet<String> {
        let mut found = HashSet::new();
        let mut frontier = vec![name];
        while let Some(n) = frontier.pop() {
            for d in self
                .services
                .get(n)
                .map_or(&[][..], |e| &e.svc.spec().depends_on)
            {
                if found.insert(d.clone()) {
                    frontier.push(d);
                }
            }
        }
        found
    }

    /// Services that depend on `name`, directly or not.
    pub(super) fn dependents_of(&self, name: &str) -> Vec<String> {
        self.services
            .keys()
            .filter(|n| n.as_str() != name && self.dependencies_of(n).contains(name))
            .cloned()
            .collect()
    }

    /// Carries out the requested stops that may go now: a service with a process is
    /// stopped once no service that still has a process depends on it (its dependents
    /// are asked to stop first, including one started meanwhile); one without a process
    /// is stopped at once (its pending start is cancelled). A stop that has finished
    /// leaves the set.
    pub(super) fn advance_stops(&mut self) {
        loop {
            let requested: Vec<String> = self.stops.requested.iter().cloned().collect();
            if requested.is_empty() {
                return;
            }
            // For each service with a process, everything it depends on is still needed.
            let live: Vec<String> = self
                .services
                .iter()
                .filter(|(_, e)| e.svc.has_process())
                .map(|(n, _)| n.clone())
                .collect();
            let needs: Vec<(String, HashSet<String>)> = live
                .iter()
                .map(|l| (l.clone(), self.dependencies_of(l)))
                .collect();
            let origin = if self.shutdown.is_some() {
                Origin::Shutdown
            } else {
                Origin::Operator
            };
            let stop = machine::Event::Stop {
                then: AfterStop::Stay,
                origin,
            };
            let mut progress = false;
            for name in requested {
                let Some(e) = self.services.get(&name) else {
                    self.stops.requested.remove(&name);
                    continue;
                };
                if !e.svc.stoppable() {
                    // It ended by itself while it waited for its dependents (exited,
                    // or failed for good): the stop still leaves it stopped and held,
                    // as a stop of a stopped or failed service does.
                    self.stops.requested.remove(&name);
                    let _ = self.feed(&name, stop.clone());
                    progress = true;
                    continue;
                }
                if !needs_feeding(e.svc.stopping()) {
                    continue; // Under way.
                }
                if e.svc.has_process() {
                    let blockers: Vec<&String> = needs
                        .iter()
                        .filter(|(_, deps)| deps.contains(&name))
                        .map(|(l, _)| l)
                        .collect();
                    if !blockers.is_empty() {
                        for b in blockers {
                            if !self.stops.requested.contains(b) {
                                self.stops.requested.insert(b.clone());
                                progress = true;
                            }
                        }
                        continue;
                    }
                }
                if self.feed(&name, stop.clone()).is_err() {
                    // Refused: there was nothing left to stop.
                    self.stops.requested.remove(&name);
                }
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::machine::{Ctx, Event, Service};
    use crate::supervise::state::Now;

    fn feed(svc: &mut Service, event: Event) {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut ctx = Ctx {
            now: Now {
                mono: std::time::Instant::now(),
                wall_ms: 0,
            },
            rng: &mut rng,
            unmet: Vec::new(),
            shutting_down: false,
        };
        let _ = svc.on(event, &mut ctx);
    }

    /// `advance_stops` feeds a requested stop and goes round again: whatever stop was
    /// under way (a removal by a reload, a restart, a liveness recovery), with a process
    /// or still spawning, the operator's stop fed once leaves nothing more to feed.
    /// (A stop of a service that a reload was removing used to spin the loop for ever.)
    #[test]
    fn one_operators_stop_leaves_nothing_to_feed() {
        let thens = [
            (AfterStop::Stay, Origin::Operator),
            (AfterStop::Start, Origin::Reload),
            (AfterStop::Remove, Origin::Reload),
            (AfterStop::Recover(None), Origin::Liveness),
        ];
        for (then, origin) in thens {
            for spawned in [false, true] {
                let mut svc = Service::new(crate::config::discovery::test_spec("svc"), 0);
                feed(&mut svc, Event::Start);
                if spawned {
                    feed(&mut svc, Event::Spawned { pid: 4242, gen: 1 });
                }
                feed(&mut svc, Event::Stop { then, origin });
                assert!(svc.stopping().is_some(), "{then:?} spawned={spawned}");
                let operator = Event::Stop {
                    then: AfterStop::Stay,
                    origin: Origin::Operator,
                };
                feed(&mut svc, operator);
                assert!(
                    !needs_feeding(svc.stopping()),
                    "{then:?} spawned={spawned}: {:?}",
                    svc.stopping()
                );
            }
        }
    }
}
