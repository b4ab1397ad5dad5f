//! Control requests on the loop's side (docs/cli.md, docs/control-protocol.md): each
//! command becomes events for the machines, and an answer now or later. `stop`, `restart`
//! and `reload` answer once what they caused has finished: their reply waits in `pending`
//! until then.

use super::machine::{AfterStop, Event, Origin};
use super::state::{Refusal, State};
use super::supervisor::Supervisor;
use crate::common::protocol::{PlanStep, Response};
use crate::config::discovery;
use crate::control::socket::{error_reply, Cmd, Reply, Request};
use crossbeam_channel::Sender;

/// An answer held back until every service in `waits_for` has finished stopping (and
/// left the ordered stops).
pub(super) struct Pending {
    waits_for: Vec<String>,
    answer: Answer,
    pub(super) reply: Sender<Reply>,
}

enum Answer {
    /// The status of this service (an empty list if it is gone by then).
    Status(String),
    /// A reload's plan, and its error when a sidecar could not be used.
    Plan(Vec<PlanStep>, Option<String>),
}

fn plan_reply(plan: Vec<PlanStep>, error: Option<String>) -> Response {
    Response {
        plan: Some(plan),
        ok: error.is_none(),
        error,
        ..Response::ok()
    }
}

/// When a start, stop or restart is answered.
enum Done {
    /// Now, with the service's status.
    Now,
    /// Now: nothing to do, the service is already where it was asked to be.
    Already(&'static str),
    /// Once these services have stopped, with the status then.
    After(Vec<String>),
}

impl Supervisor {
    pub(super) fn control(&mut self, req: Request, reply: Sender<Reply>) {
        let answer: Reply = match req.cmd {
            Cmd::Status => self.status(req.service.as_deref()),
            Cmd::Start | Cmd::Stop | Cmd::Restart => match self.lifecycle(&req) {
                Ok(Done::Now) => self.status(req.service.as_deref()),
                Ok(Done::Already(what)) => Response {
                    message: Some(what.to_string()),
                    ..Response::ok()
                }
                .into(),
                Ok(Done::After(waits_for)) => {
                    let name = req.service.clone().unwrap_or_default();
                    self.defer(waits_for, Answer::Status(name), reply);
                    return;
                }
                Err(msg) => error_reply(msg).into(),
            },
            Cmd::Reload => match self.reload_logged(req.dry_run) {
                Ok(done) => {
                    let error = done.error();
                    let plan = done.decisions;
                    let waits_for: Vec<String> = plan
                        .iter()
                        .filter(|(n, _)| {
                            self.services
                                .get(n)
                                .is_some_and(|e| e.svc.stopping().is_some())
                        })
                        .map(|(n, _)| n.clone())
                        .collect();
                    let list = plan
                        .iter()
                        .map(|(n, a)| PlanStep {
                            action: a.as_str().to_string(),
                            service: n.clone(),
                        })
                        .collect();
                    if !waits_for.is_empty() {
                        self.defer(waits_for, Answer::Plan(list, error), reply);
                        return;
                    }
                    plan_reply(list, error).into()
                }
                Err(e) => error_reply(e).into(),
            },
            Cmd::Logs => self.logs(req.service.as_deref(), req.lines.unwrap_or(100), req.follow),
            Cmd::Metrics => self.metrics(),
            Cmd::Shutdown => {
                let _ = reply.try_send(Response::ok().into());
                if self.shutdown.is_none() {
                    log::info!("shutdown requested");
                    self.begin_shutdown();
                }
                return;
            }
            Cmd::Upgrade | Cmd::Rollback => match self.begin_upgrade(&req, reply.clone()) {
                Ok(()) => return,
                Err(msg) => error_reply(msg).into(),
            },
            Cmd::UpgradeSelf => match self.begin_upgrade_self(&req, reply.clone()) {
                Ok(()) => return,
                Err(msg) => error_reply(msg).into(),
            },
        };
        let _ = reply.try_send(answer);
    }

    fn defer(&mut self, waits_for: Vec<String>, answer: Answer, reply: Sender<Reply>) {
        self.pending.push(Pending {
            waits_for,
            answer,
            reply,
        });
        self.answer_pending();
    }

    /// start/stop/restart, and when to answer.
    fn lifecycle(&mut self, req: &Request) -> Result<Done, String> {
        let name = req.service.clone().ok_or("missing service name")?;
        if self.shutdown.is_some() && req.cmd != Cmd::Stop {
            return Err("orchestrator is shutting down".into());
        }
        let strict = self.cfg.settings.strict_modes;
        let e = self.services.get_mut(&name).ok_or("service not found")?;
        let looked_again = !matches!(
            e.svc.spec().binary_problem,
            None | Some(discovery::BinaryProblem::Sidecar(_))
        );
        if req.cmd != Cmd::Stop && looked_again {
            // The binary may have appeared since discovery: look again.
            let problem = discovery::check_binary(&e.svc.spec().process.binary, strict);
            e.svc.set_binary_problem(problem);
        }
        let refused = |r: Refusal| r.message();
        match req.cmd {
            Cmd::Stop => {
                let idle = !e.svc.stoppable() && !self.stops.is_requested(&name);
                let failed = e.svc.state() == State::Failed;
                // Its active dependents are stopped with it, also when it was stopped
                // already: one waiting for it to run (`starting`, no process) would
                // otherwise start the moment it is started again, stop or no stop.
                let dependents: Vec<String> = self
                    .dependents_of(&name)
                    .into_iter()
                    .filter(|d| self.services.get(d).is_some_and(|de| de.svc.is_active()))
                    .collect();
                if idle {
                    // Nothing runs or is pending: stopped already, or failed (then
                    // left stopped); either way held, so that no reload starts it.
                    let stop = Event::Stop {
                        then: AfterStop::Stay,
                        origin: Origin::Operator,
                    };
                    self.feed(&name, stop).map_err(refused)?;
                    if dependents.is_empty() {
                        self.settle();
                        return Ok(if failed {
                            Done::Now
                        } else {
                            Done::Already("already stopped")
                        });
                    }
                }
                // Dependents go first, as at shutdown; each is stopped once what depends
                // on it has stopped, and this one last.
                let mut group = dependents;
                if !idle {
                    group.push(name.clone());
                }
                for n in &group {
                    self.stops.request(n);
                }
                self.settle();
                return Ok(Done::After(group));
            }
            _ => {
                let event = if req.cmd == Cmd::Start {
                    Event::Start
                } else {
                    Event::Restart
                };
                self.stops.cancel(&name);
                match self.feed(&name, event) {
                    Err(Refusal::AlreadyRunning) => return Ok(Done::Already("already running")),
                    r => r.map_err(refused)?,
                }
            }
        }
        self.settle();
        let stopping = self
            .services
            .get(&name)
            .is_some_and(|e| e.svc.stopping().is_some());
        Ok(if stopping {
            Done::After(vec![name])
        } else {
            Done::Now
        })
    }

    /// Sends the answers whose services have all finished stopping.
    pub(super) fn answer_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let done = p.waits_for.iter().all(|n| {
                !self.stops.is_requested(n)
                    && self
                        .services
                        .get(n)
                        .is_none_or(|e| e.svc.stopping().is_none())
            });
            if !done {
                self.pending.push(p);
                continue;
            }
            let answer = match p.answer {
                Answer::Status(name) if self.services.contains_key(&name) => {
                    self.status(Some(&name))
                }
                Answer::Status(_) => Response {
                    services: Some(Vec::new()),
                    ..Response::ok()
                }
                .into(),
                Answer::Plan(list, error) => plan_reply(list, error).into(),
            };
            let _ = p.reply.try_send(answer);
        }
    }

    /// Answers every reply still waiting with `msg`, for good: the replies are dropped.
    pub(super) fn refuse_pending(&mut self, msg: &str) {
        for p in std::mem::take(&mut self.pending) {
            let _ = p.reply.try_send(error_reply(msg).into());
        }
    }
}
