//! sd_notify on the loop (docs/health.md): the notify socket, opened before the first
//! spawn of a service that uses it (or taken over from a previous image by
//! `upgrade-self`), and what a service's slot says, fed to its machine. The datagrams
//! themselves are read by `health::notify`'s thread; nothing here reads the socket.

use super::event::Event;
use super::machine;
use super::supervisor::Supervisor;
use crate::health::notify::Notify;
use std::path::PathBuf;

impl Supervisor {
    /// Opens the notify socket before the first spawn of a service given one (its
    /// `NOTIFY_SOCKET`): a daemon whose services do not use it has no socket, thread
    /// or descriptor for it.
    pub(super) fn ensure_notify(&mut self, name: &str) {
        if self.notify.is_some() || self.notify_tried {
            return;
        }
        if let Some(path) = self
            .services
            .get(name)
            .and_then(|e| notify_path(e.svc.spec()))
        {
            self.notify_tried = true;
            let (tracking, tx) = (self.cgroups.tracker_proc.clone(), self.tx.clone());
            let opened = Notify::open(&path, tracking, move |service| {
                let _ = tx.send(Event::Notify { service });
            });
            self.notify = report(opened, &path);
        }
    }

    /// The notify socket a previous image handed over (`upgrade-self`), read again at
    /// the path the services know.
    pub(super) fn adopt_notify(&mut self, fd: std::os::fd::OwnedFd) {
        let path = self
            .services
            .values()
            .find_map(|e| notify_path(e.svc.spec()));
        let Some(path) = path else { return };
        self.notify_tried = true;
        let (tracking, tx) = (self.cgroups.tracker_proc.clone(), self.tx.clone());
        let adopted = Notify::adopt(fd, &path, tracking, move |service| {
            let _ = tx.send(Event::Notify { service });
        });
        self.notify = report(adopted, &path);
    }

    /// A service's notify slot changed: its news, in the order they matter.
    pub(super) fn notified(&mut self, name: &str) {
        let Some(slot) = self.notify.as_ref().and_then(|n| n.take(name)) else {
            return;
        };
        let mut notices = Vec::new();
        notices.extend(slot.keepalive.map(machine::Notice::KeepAlive));
        notices.extend(slot.status.map(machine::Notice::Status));
        if slot.ready {
            notices.push(machine::Notice::Ready);
        }
        if slot.trigger {
            notices.push(machine::Notice::Trigger);
        }
        for n in notices {
            let _ = self.feed(name, machine::Event::Notify(n));
        }
    }

    /// Keep-alives only stamp the service's slot; its watchdog deadline has come, so
    /// the machine learns the last one now.
    pub(super) fn feed_keepalive(&mut self, name: &str) {
        let watching = self.services.get(name).is_some_and(|e| e.svc.watching());
        let at = self.notify.as_ref().and_then(|n| n.keepalive(name));
        if let (true, Some(at)) = (watching, at) {
            let _ = self.feed(name, machine::Event::Notify(machine::Notice::KeepAlive(at)));
        }
    }
}

/// The `NOTIFY_SOCKET` a service is given, if any.
fn notify_path(spec: &crate::config::discovery::ServiceSpec) -> Option<PathBuf> {
    spec.process
        .env
        .iter()
        .find(|(k, _)| k == "NOTIFY_SOCKET")
        .map(|(_, v)| PathBuf::from(v))
}

/// The socket, or the error logged: services with `ready: notify` or `watchdog_ms`
/// then cannot report, and the rest goes on.
fn report(r: std::io::Result<Notify>, path: &std::path::Path) -> Option<Notify> {
    match r {
        Ok(n) => Some(n),
        Err(e) => {
            log::error!(
                "notify socket {}: {e}; services with ready or watchdog_ms cannot report",
                path.display()
            );
            None
        }
    }
}
