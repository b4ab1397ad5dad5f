//! `upgrade` and `rollback` on the loop's side (docs/sockets-and-upgrades.md): the checks,
//! the file work handed to a thread (`files.rs`: hashing and copying a binary
//! takes as long as it is large, and the loop never waits on anything but its channel),
//! the restart onto the new binary, the grace window judged after every batch of events
//! (`window.rs`), putting the old binary back when the new one fails (never over a file
//! that replaced the new one since), the version history in `status` and in
//! `state_dir`, and the settling at start-up of an upgrade a crash cut short.
//!
//! The machine is never told about upgrades: it gets the same `Restart` an operator
//! would send, and the window only reads it. Nothing here runs during an event's
//! handling but bounded file operations (a rename and an fsync, a small JSON file).

use super::files::{now_ms, sha, Installed, Work};
use super::window::{History, Pending, Record, Verdict, View, Watch};
use crate::common::decode::Decode;
use crate::common::protocol::Response;
use crate::control::socket::{error_reply, Cmd, Reply, Request};
use crate::output::record::RecordKind;
use crate::process::install;
use crate::supervise::machine::{AfterStop, Event as MachineEvent};
use crate::supervise::state::reason;
use crate::supervise::supervisor::Supervisor;
use crossbeam_channel::Sender;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The answer to `upgrade` or `rollback`: what happened, and the binary now installed.
fn installed_reply(result: &str, sha256: String) -> Response {
    Response {
        result: Some(result.to_string()),
        sha256: Some(sha256),
        ..Response::ok()
    }
}

/// Where the version history lives in `state_dir`.
const HISTORY_FILE: &str = "upgrades.json";

/// The marker of an upgrade under way, in `state_dir`.
pub(in crate::supervise) fn pending_file(service: &str) -> String {
    format!("upgrade-{service}.pending")
}

/// A service's upgrade under way, and its history.
#[derive(Default)]
pub struct Upgrades {
    /// File work in flight: another upgrade or rollback is refused meanwhile.
    busy: bool,
    active: Option<Active>,
    pub history: History,
}

struct Active {
    watch: Watch,
    /// The file replaced (kept here: a reload may change the service's path meanwhile).
    binary: PathBuf,
    from: String,
    to: String,
    at_ms: u64,
    /// The `upgrade` client, answered when the window is over (or, should the window
    /// end with the service, removed by a reload, when this is dropped).
    reply: Option<Sender<Reply>>,
    /// The file installed, where known: a rollback never puts the old binary over a
    /// file that replaced this one since (docs/watching.md).
    installed: Option<install::Ident>,
    /// A binary rewritten in place: there is nothing to go back to.
    no_prev: bool,
}

impl Active {
    fn answer(&mut self, r: Reply) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.try_send(r);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.answer(error_reply("the service was removed during the grace window").into());
    }
}

impl Upgrades {
    pub fn deadline(&self) -> Option<Instant> {
        self.active.as_ref().and_then(|a| a.watch.deadline())
    }

    pub(in crate::supervise) fn set_busy(&mut self) {
        self.busy = true;
    }

    /// File work in flight or a grace window open: the watcher's news waits for it.
    pub fn under_way(&self) -> bool {
        self.busy || self.active.is_some()
    }

    /// File work in flight (`upgrade-self` waits for it to end).
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// For `upgrade-self`: the window under way (its client, whose connection ends
    /// with the exec, is not carried) and the history.
    pub fn carry(&self) -> Option<Value> {
        let active = self.active.as_ref().map(|a| {
            json!({"watch": serde_json::to_value(&a.watch).unwrap_or(Value::Null),
                   "binary": a.binary, "from": a.from, "to": a.to, "at_ms": a.at_ms,
                   "no_prev": a.no_prev})
        });
        Some(json!({"active": active, "history": self.history.to_json()}))
    }

    /// What `carry` gave, in the new image.
    pub fn resume(v: &Value) -> Upgrades {
        let a = &v["active"];
        let active = Watch::decode(&a["watch"]).ok().map(|watch| Active {
            watch,
            binary: PathBuf::from(a["binary"].as_str().unwrap_or_default()),
            from: a["from"].as_str().unwrap_or_default().to_string(),
            to: a["to"].as_str().unwrap_or_default().to_string(),
            at_ms: a["at_ms"].as_u64().unwrap_or_default(),
            reply: None,
            installed: None,
            no_prev: a["no_prev"].as_bool().unwrap_or_default(),
        });
        Upgrades {
            busy: false,
            active,
            history: History::from_json(&v["history"]),
        }
    }
}

impl Supervisor {
    /// `upgrade NAME PATH` and `rollback NAME`: checked here, the file work started on
    /// a thread; the answer comes later. `Err` is the refusal, answered at once.
    pub(in crate::supervise) fn begin_upgrade(
        &mut self,
        req: &Request,
        reply: Sender<Reply>,
    ) -> Result<(), String> {
        let name = req.service.clone().ok_or("missing service name")?;
        if self.shutdown.is_some() {
            return Err("orchestrator is shutting down".into());
        }
        let rollback = req.cmd == Cmd::Rollback;
        let e = self.services.get_mut(&name).ok_or("service not found")?;
        if !e.svc.spec().enabled {
            return Err("service is disabled".into());
        }
        if e.upgrade.busy || (e.upgrade.active.is_some() && !rollback) {
            return Err("upgrade in progress".into());
        }
        let binary = e.svc.spec().process.binary.clone();
        let path = match (rollback, req.path.as_deref()) {
            (true, _) => None,
            (false, None) => return Err("missing path".into()),
            (false, Some(p)) => {
                let file = install::open_checked(Path::new(p))?;
                Some((PathBuf::from(p), file))
            }
        };
        if rollback && std::fs::symlink_metadata(install::prev_path(&binary)).is_err() {
            return Err(format!(
                "no previous binary to go back to ({})",
                install::prev_path(&binary).display()
            ));
        }
        // A rollback by hand ends the window of an upgrade under way.
        if let Some(mut a) = e.upgrade.active.take() {
            a.answer(error_reply("upgrade rolled back by hand").into());
            self.forget_pending(&name);
        }
        let work = match path {
            Some((p, file)) => Work::Install(p, file),
            None => Work::PutBack,
        };
        self.start_file_work(&name, binary, work, reply)
    }

    /// The file work is done: restart onto the new binary and open its window, or
    /// record a rollback by hand.
    pub(in crate::supervise) fn installed(&mut self, done: Installed) {
        let Installed {
            service,
            rollback,
            watched,
            result,
            reply,
        } = done;
        let Some(e) = self.services.get_mut(&service) else {
            let _ = reply.try_send(error_reply("service not found").into());
            return;
        };
        e.upgrade.busy = false;
        let d = match result {
            Ok(d) => d,
            Err(msg) => {
                if watched {
                    let msg = format!("the new binary is not used: {msg}");
                    self.event(
                        log::Level::Error,
                        &service,
                        None,
                        RecordKind::Upgrading,
                        msg,
                    );
                }
                let _ = reply.try_send(error_reply(msg).into());
                self.rewatch_deferred(&service);
                return;
            }
        };
        self.note_installed(&service, watched, d.installed);
        if d.unchanged {
            let _ = reply.try_send(installed_reply("unchanged", d.to).into());
            self.rewatch_deferred(&service);
            return;
        }
        let Some(e) = self.services.get_mut(&service) else {
            return;
        };
        let at_ms = now_ms();
        if rollback {
            e.upgrade.history.push(Record {
                at_ms,
                from: d.from.clone(),
                to: d.to.clone(),
                result: "rollback".into(),
            });
            let active = e.svc.is_active();
            if active {
                e.svc
                    .ending(reason::rolled_back("by an operator (rollback)"));
            }
            self.event(
                log::Level::Warn,
                &service,
                None,
                RecordKind::Rollback,
                format!("rolled back by hand to {}", short(&d.to)),
            );
            self.save_upgrades();
            if active {
                let _ = self.feed(&service, MachineEvent::Restart);
            }
            let _ = reply.try_send(installed_reply("rollback", d.to).into());
            self.settle();
            self.rewatch_deferred(&service);
            return;
        }
        if watched && !e.svc.is_active() {
            self.changed_while_stopped(&service, d);
            return;
        }
        let grace = Duration::from_millis(e.svc.spec().upgrade_grace_ms);
        e.upgrade.active = Some(Active {
            watch: Watch::new(e.svc.gen(), grace),
            binary: e.svc.spec().process.binary.clone(),
            from: d.from.clone(),
            to: d.to.clone(),
            at_ms,
            reply: Some(reply),
            installed: d.installed,
            no_prev: d.no_prev,
        });
        self.event(
            log::Level::Info,
            &service,
            None,
            RecordKind::Upgrading,
            format!(
                "upgrading {} to {}: restarting onto it, grace window {} ms",
                short(&d.from),
                short(&d.to),
                grace.as_millis()
            ),
        );
        if self.shutdown.is_some() {
            // Shutdown began while the file was copied: judged (and undone) at once.
            self.settle();
            return;
        }
        if let Some(e) = self.services.get_mut(&service) {
            e.svc.ending(reason::UPGRADE.into());
        }
        if let Err(r) = self.feed(&service, MachineEvent::Restart) {
            self.conclude(&service, Verdict::Failed(r.message()));
        }
        self.settle();
    }

    /// Looks at every upgrade in its window (after each batch of events, and at the
    /// windows' deadlines).
    pub(in crate::supervise) fn judge_upgrades(&mut self) {
        let now = Instant::now();
        let shutting_down = self.shutdown.is_some();
        let mut verdicts = Vec::new();
        for (name, e) in &mut self.services {
            let Some(a) = &mut e.upgrade.active else {
                continue;
            };
            if shutting_down {
                verdicts.push((
                    name.clone(),
                    Verdict::Failed("orchestrator is shutting down".into()),
                ));
                continue;
            }
            let svc = &e.svc;
            let reason = svc
                .last_error()
                .map(str::to_string)
                .or_else(|| svc.last_exit().map(|l| l.exit.describe()))
                .unwrap_or_else(|| svc.state().as_str().to_string());
            let view = View {
                state: svc.state(),
                gen: svc.gen(),
                stopping: svc.stopping().is_some(),
                reason,
            };
            match a.watch.judge(&view, now) {
                Verdict::Wait => {}
                v => verdicts.push((name.clone(), v)),
            }
        }
        for (name, v) in verdicts {
            self.conclude(&name, v);
        }
    }

    /// The window is over: keep the new binary, or put the old one back and restart
    /// onto it (not during shutdown: then only the file goes back).
    fn conclude(&mut self, name: &str, verdict: Verdict) {
        let Some(e) = self.services.get_mut(name) else {
            return;
        };
        let Some(mut a) = e.upgrade.active.take() else {
            return;
        };
        let binary = a.binary.clone();
        // An operator's stop (or a reload's) within the window is obeyed: the old binary
        // goes back, but nothing starts until someone asks.
        let stays = e.svc.held() || e.svc.stopping() == Some(AfterStop::Stay);
        let mut restored = false;
        let replaced = a
            .installed
            .is_some_and(|i| install::Ident::at(&binary).is_none_or(|now| !now.same_file(&i)));
        let (result, answer) = match verdict {
            Verdict::Failed(reason) => {
                let reason = if a.no_prev {
                    format!("{reason}; no previous binary")
                } else if replaced {
                    format!(
                        "{reason}; {} was replaced since the upgrade began: left as it is",
                        binary.display()
                    )
                } else {
                    match install::restore_prev(&binary) {
                        Ok(()) => {
                            restored = true;
                            reason
                        }
                        Err(err) => format!("{reason}; {err}"),
                    }
                };
                let answer = error_reply(format!("upgrade rolled back: {reason}")).into();
                (format!("rolled back: {reason}"), answer)
            }
            _ => (
                "ok".to_string(),
                Reply::from(installed_reply("ok", a.to.clone())),
            ),
        };
        let ok = result == "ok";
        e.upgrade.history.push(Record {
            at_ms: a.at_ms,
            from: a.from.clone(),
            to: a.to.clone(),
            result: result.clone(),
        });
        let (level, event) = if ok {
            (log::Level::Info, RecordKind::Upgraded)
        } else {
            (log::Level::Error, RecordKind::RolledBack)
        };
        let msg = if ok {
            format!("upgrade to {} passed its grace window", short(&a.to))
        } else {
            format!("upgrade to {} {result}", short(&a.to))
        };
        self.event(level, name, None, event, msg);
        if restored {
            self.relink_running(name);
        }
        self.forget_pending(name);
        self.save_upgrades();
        if !ok && self.shutdown.is_none() && !stays {
            if let Some(e) = self.services.get_mut(name) {
                e.svc.ending(result.clone());
            }
            // A file that replaced the new one is the watcher's next upgrade, with its
            // own window: no restart onto it here.
            if a.no_prev {
                self.fail_without_prev(name, &result);
            } else if !(replaced && self.guarded(name).is_some()) {
                let _ = self.feed(name, MachineEvent::Restart);
            }
        }
        a.answer(answer);
        self.rewatch_deferred(name);
    }

    /// An upgrade recorded without a window: its marker goes, its history is kept.
    pub(in crate::supervise) fn upgrade_done(&self, name: &str) {
        self.forget_pending(name);
        self.save_upgrades();
    }

    fn forget_pending(&self, name: &str) {
        if let Some(p) = &self.persist {
            let _ = p.dir().remove_file(&pending_file(name));
        }
    }

    /// Writes every service's history to `state_dir` (small, rare: on the loop).
    fn save_upgrades(&self) {
        let Some(p) = &self.persist else { return };
        let mut all = serde_json::Map::new();
        for (name, e) in &self.services {
            let h = e.upgrade.history.to_json();
            if h.as_array().is_some_and(|a| !a.is_empty()) {
                all.insert(name.clone(), h);
            }
        }
        if let Err(err) = p
            .dir()
            .write_file(HISTORY_FILE, &format!("{}\n", Value::Object(all)))
        {
            log::error!("state_dir: cannot write {HISTORY_FILE}: {err}");
        }
    }

    /// At start-up, before anything starts: the history a predecessor kept, and the
    /// upgrades it left in their window (it crashed or lost power): the old binary is
    /// put back, since the new one never passed.
    pub(in crate::supervise) fn load_upgrades(&mut self) {
        let Some(dir) = self.persist.as_ref().map(|p| p.dir()) else {
            return;
        };
        if let Some(text) = dir.read_file(HISTORY_FILE) {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            for (name, e) in &mut self.services {
                e.upgrade.history = History::from_json(&v[name.as_str()]);
            }
        }
        let markers: Vec<String> = dir
            .names()
            .into_iter()
            .filter(|n| n.starts_with("upgrade-") && n.ends_with(".pending"))
            .collect();
        for marker in markers {
            let name = &marker["upgrade-".len()..marker.len() - ".pending".len()];
            let pending = dir.read_file(&marker).and_then(|t| Pending::from_text(&t));
            match pending {
                Some(p) if self.services.contains_key(name) => self.settle_interrupted(name, &p),
                // Removed from the configuration during its window: left as it is.
                _ => {}
            }
            let _ = dir.remove_file(&marker);
        }
        self.save_upgrades();
    }

    fn settle_interrupted(&mut self, name: &str, p: &Pending) {
        let binary = PathBuf::from(&p.binary);
        let now = sha(&binary).unwrap_or_default();
        let outcome = if now == p.to {
            install::restore_prev(&binary).map(|()| "the old binary was put back")
        } else if now == p.from {
            Ok("the new binary had not been installed")
        } else {
            Err(format!(
                "{} is neither the old nor the new binary: left as it is",
                binary.display()
            ))
        };
        let reason = match &outcome {
            Ok(what) => format!("interrupted by the orchestrator's end; {what}"),
            Err(e) => format!("interrupted by the orchestrator's end; {e}"),
        };
        log::warn!("{name}: upgrade to {} {reason}", short(&p.to));
        if let Some(e) = self.services.get_mut(name) {
            e.upgrade.history.push(Record {
                at_ms: p.at_ms,
                from: p.from.clone(),
                to: p.to.clone(),
                result: format!("rolled back: {reason}"),
            });
        }
    }
}

/// The first 12 hex digits, for log lines.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// For `status --json`.
pub(in crate::supervise) fn history_rows(u: &Upgrades) -> Vec<crate::common::protocol::Upgrade> {
    u.history
        .iter()
        .map(|r| crate::common::protocol::Upgrade {
            at: r.at_ms,
            from: r.from.clone(),
            result: r.result.clone(),
            to: r.to.clone(),
        })
        .collect()
}
