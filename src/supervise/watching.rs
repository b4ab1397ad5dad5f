//! The watcher's news on the loop's side (docs/watching.md): once a service's files have
//! been quiet, the configuration is reloaded (a new directory starts, a removed one
//! stops, a changed sidecar or drop-in applies, as a reload would) and the service is
//! compared once with its files: its binary's path against `.NAME.running`, the hard
//! link the daemon keeps to the binary the service runs. A file renamed over the path
//! is an upgrade from that link (which becomes `NAME.prev`) with the grace window and
//! the automatic rollback of `upgrades/steps.rs`; a file rewritten in place is an upgrade
//! with nothing to go back to; a path gone stops the service.
//!
//! What the daemon writes itself (the link, `NAME.prev`, an `upgrade`'s rename) is
//! never news: every such write is followed by the link made again, so comparing finds
//! nothing. News about a service whose upgrade is under way waits (`deferred`) and the
//! service is compared once when the upgrade ends: changes are coalesced, never lost.
//! The hashing and renaming are done on a thread, as for `upgrade`; the loop only
//! stats and links (bounded file operations).

use super::event::{Above, Event};
use super::machine::{AfterStop, Event as MachineEvent, Origin};
use super::reload::{summarize, Decision};
use super::supervisor::Supervisor;
use super::upgrades::files::{now_ms, Done, Work};
use super::upgrades::window::Record;
use super::watcher::Settled;
use crate::output::record::RecordKind;
use crate::process::install::{self, Ident};
use std::path::PathBuf;

/// What the loop keeps per service for the watcher.
#[derive(Debug, Default)]
pub struct Files {
    /// The file `.NAME.running` was linked to, as it was then; None: not linked yet.
    running: Option<Ident>,
    /// News that came during an upgrade: compared once it ends.
    deferred: bool,
    /// An upgrade with no previous binary failed: `failed` once the service is at rest.
    fail_at_rest: Option<String>,
}

impl Files {
    /// News about the service: act on it now (true), or, with an upgrade under way,
    /// keep it for the upgrade's end (however many come, one compare then).
    pub fn news(&mut self, upgrade_under_way: bool) -> bool {
        self.deferred |= upgrade_under_way;
        !upgrade_under_way
    }

    /// The upgrade may have ended: whether news kept meanwhile is due now (once).
    pub fn due_after(&mut self, upgrade_under_way: bool) -> bool {
        !upgrade_under_way && std::mem::take(&mut self.deferred)
    }
}

/// What comparing a service's binary with what it runs finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    /// Not linked yet (a new service, or the first look).
    New,
    /// The path names no file any more.
    Gone,
    /// Another file was renamed over the path.
    Renamed,
    /// The same file with another content (rewritten in place).
    Rewritten,
}

/// Compares what `.NAME.running` was linked to with what the path names now. Pure.
pub fn compare(known: Option<Ident>, now: Option<Ident>) -> Change {
    match (known, now) {
        (_, None) => Change::Gone,
        (None, Some(_)) => Change::New,
        (Some(k), Some(n)) if !k.same_file(&n) => Change::Renamed,
        (Some(k), Some(n)) if k != n => Change::Rewritten,
        _ => Change::Same,
    }
}

impl Supervisor {
    fn watching(&self) -> bool {
        self.cfg.settings.watch_services_dir
    }

    /// The binary the watcher guards for `name`: its path when that is
    /// `services_dir/NAME/NAME` (a `binary_path` elsewhere, or a symlink, is not).
    pub(super) fn guarded(&self, name: &str) -> Option<PathBuf> {
        let e = self.services.get(name)?;
        let p = self.cfg.settings.services_dir.join(name).join(name);
        (self.watching() && e.svc.spec().process.binary == p).then_some(p)
    }

    /// At load: the link to every guarded binary.
    pub(super) fn link_all_running(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.relink_running(&name);
        }
    }

    /// After `upgrade-self`: the links the previous image made name what the services
    /// run (a change during the handover is no change to them); every service is then
    /// compared with its files, since the handover's events were not watched.
    pub(super) fn adopt_running(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(bin) = self.guarded(&name) else {
                continue;
            };
            match Ident::at(&install::running_path(&bin)) {
                Some(id) => {
                    if let Some(e) = self.services.get_mut(&name) {
                        e.files.running = Some(id);
                    }
                }
                None => self.relink_running(&name),
            }
        }
        if self.watching() {
            let s = Settled {
                rescan: true,
                ..Settled::default()
            };
            let _ = self.tx.send(Event::Above(Above::Watched(s)));
        }
    }

    /// Links `.NAME.running` to what the path names now, and remembers it.
    pub(super) fn relink_running(&mut self, name: &str) {
        let Some(bin) = self.guarded(name) else {
            return;
        };
        let Some(now) = Ident::at(&bin) else {
            return;
        };
        if let Err(e) = install::link_running(&bin) {
            log::warn!(
                "{name}: cannot link {}: {e}; a file renamed over it will have no previous binary",
                install::running_path(&bin).display()
            );
        }
        if let Some(e) = self.services.get_mut(name) {
            e.files.running = Some(now);
        }
    }

    /// After an `upgrade`'s or the watcher's file work: what is in place now is what
    /// runs (the link is made again unless the watcher's thread made it).
    pub(super) fn note_installed(&mut self, name: &str, watched: bool, now: Option<Ident>) {
        let Some(bin) = self.guarded(name) else {
            return;
        };
        if !watched && now.is_some() && Ident::at(&bin) == now {
            self.relink_running(name);
        } else if let (true, Some(e)) = (watched, self.services.get_mut(name)) {
            e.files.running = now.or(e.files.running);
        }
    }

    /// The watcher's news: one reload, then each service named compared with its files
    /// (all of them after a rescan). Services in an upgrade wait for its end.
    pub(super) fn watched(&mut self, s: Settled) {
        if !self.watching() || self.shutdown.is_some() {
            return;
        }
        let names: Vec<String> = if s.rescan {
            self.services.keys().cloned().collect()
        } else {
            s.services
        };
        let mut now = Vec::new();
        for name in names {
            let entry = self.services.get_mut(&name);
            if entry.is_none_or(|e| e.files.news(e.upgrade.under_way())) {
                now.push(name);
            }
        }
        if now.is_empty() && !s.confd && !s.rescan {
            return;
        }
        match self.reload(false) {
            // The daemon's own links touch a binary's metadata (its link count): a
            // reload that finds nothing to do is no news worth a line at info.
            Ok(outcome) => {
                let plan = &outcome.decisions;
                let quiet = plan.iter().all(|(_, d)| *d == Decision::Unchanged);
                let level = if quiet {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                log::log!(level, "services_dir changed: {}", summarize(plan));
                // A broken sidecar: the service keeps its settings, `last_error` says
                // why, and the log names the file.
                if let Some(e) = outcome.error() {
                    log::error!("services_dir changed: {e}");
                }
            }
            Err(e) => log::error!("services_dir changed, but the configuration is refused: {e}"),
        }
        for name in now {
            self.compare_files(&name);
        }
    }

    /// An upgrade ended: news that came meanwhile is looked at now (through the
    /// channel, as news: nothing is re-entered).
    pub(super) fn rewatch_deferred(&mut self, name: &str) {
        let Some(e) = self.services.get_mut(name) else {
            return;
        };
        if !e.files.due_after(e.upgrade.under_way()) {
            return;
        }
        let s = Settled {
            services: vec![name.to_string()],
            ..Settled::default()
        };
        let _ = self.tx.send(Event::Above(Above::Watched(s)));
    }

    fn compare_files(&mut self, name: &str) {
        let Some(bin) = self.guarded(name) else {
            return;
        };
        let Some(e) = self.services.get(name) else {
            return;
        };
        match compare(e.files.running, Ident::at(&bin)) {
            Change::Same => {}
            Change::New => self.relink_running(name),
            Change::Gone if e.svc.stoppable() => {
                let msg = format!("{} was removed: stopping", bin.display());
                self.event(log::Level::Warn, name, None, RecordKind::Stopping, msg);
                let stop = MachineEvent::Stop {
                    then: AfterStop::Stay,
                    origin: Origin::Reload,
                };
                let _ = self.feed(name, stop);
                self.settle();
            }
            Change::Gone => {}
            Change::Renamed => self.begin_watched(name, bin, false),
            Change::Rewritten => self.begin_watched(name, bin, true),
        }
    }

    /// A new binary at the path: hashed, checked and linked on a thread, then the
    /// upgrade goes on in `installed` as one asked for by `upgrade`.
    fn begin_watched(&mut self, name: &str, bin: PathBuf, in_place: bool) {
        // Nobody waits for the answer.
        let reply = crossbeam_channel::bounded(1).0;
        if let Err(e) = self.start_file_work(name, bin, Work::Watched { in_place }, reply) {
            log::error!("{name}: cannot upgrade: {e}");
        }
    }

    /// A stopped or failed service's binary changed: recorded, used at its next start.
    pub(super) fn changed_while_stopped(&mut self, name: &str, d: Done) {
        let Some(e) = self.services.get_mut(name) else {
            return;
        };
        e.upgrade.history.push(Record {
            at_ms: now_ms(),
            from: d.from,
            to: d.to.clone(),
            result: "ok".into(),
        });
        let msg = format!(
            "new binary {} in place; used at the next start",
            d.to.get(..12).unwrap_or(&d.to)
        );
        self.event(log::Level::Info, name, None, RecordKind::Upgraded, msg);
        self.upgrade_done(name);
        self.rewatch_deferred(name);
    }

    /// An upgrade with nothing to go back to failed: the service stops and is `failed`.
    pub(super) fn fail_without_prev(&mut self, name: &str, result: &str) {
        if let Some(e) = self.services.get_mut(name) {
            e.files.fail_at_rest = Some(format!("{result} (no previous binary)"));
        }
        let stop = MachineEvent::Stop {
            then: AfterStop::Stay,
            origin: Origin::Reload,
        };
        let _ = self.feed(name, stop);
        self.fail_at_rest();
    }

    /// Services waiting to be `failed` once at rest (after each batch of events).
    pub(super) fn fail_at_rest(&mut self) {
        let mut changed = false;
        for e in self.services.values_mut() {
            if e.files.fail_at_rest.is_some() && !e.svc.is_active() && e.svc.stopping().is_none() {
                if let Some(why) = e.files.fail_at_rest.take() {
                    changed |= e.svc.fail_at_rest(why);
                }
            }
        }
        if changed {
            self.mark_state_dirty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, size: u64, mtime_ns: i128) -> Ident {
        Ident {
            dev: 1,
            ino,
            size,
            mtime_ns,
        }
    }

    #[test]
    fn news_during_an_upgrade_is_kept_and_looked_at_once_when_it_ends() {
        let mut f = Files::default();
        assert!(f.news(false), "no upgrade: at once");
        assert!(!f.due_after(false), "nothing kept");
        for _ in 0..1000 {
            assert!(!f.news(true));
        }
        assert!(!f.due_after(true), "still under way");
        assert!(f.due_after(false));
        assert!(!f.due_after(false), "once");
    }

    #[test]
    fn a_binary_is_compared_with_the_file_it_runs() {
        let running = Some(id(7, 100, 5));
        assert_eq!(compare(running, Some(id(7, 100, 5))), Change::Same);
        assert_eq!(compare(None, Some(id(7, 100, 5))), Change::New);
        assert_eq!(compare(running, None), Change::Gone);
        assert_eq!(compare(None, None), Change::Gone);
        assert_eq!(compare(running, Some(id(8, 100, 5))), Change::Renamed);
        assert_eq!(compare(running, Some(id(7, 120, 5))), Change::Rewritten);
        assert_eq!(compare(running, Some(id(7, 100, 6))), Change::Rewritten);
    }
}
