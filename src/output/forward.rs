//! `log_forward` (docs/logs.md): every record also goes to syslog collectors. The log
//! writer encodes each record once per target into that target's bounded buffer
//! (`queue.rs`) and never waits; one forwarder thread per target sends what waits there,
//! with blocking I/O, and sleeps on a doorbell while it has nothing to send. A collector
//! that is down costs its backoff's wake-ups, one a deadline; a connected, idle one costs
//! none.
//!
//! This module never decides what a record says, and never blocks the log writer: the
//! only lock it shares with the forwarders is held to copy bytes.

pub mod queue;
mod sender;

use crate::common::level;
use crate::config::forward::{Address, ForwardTarget};
use crate::output::record::{Record, RecordKind};
use crate::output::sink::Batch;
use crate::output::syslog::{Encoder, Message};
use queue::Queue;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

const STACK: usize = 64 * 1024;

/// Where the writer's records go besides its log: the targets, and which services
/// keep their lines local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardConfig {
    pub targets: Vec<ForwardTarget>,
    /// `--daemon` without `log_dir`: the local syslog takes what stderr would have
    /// (filled in by the writer from `ForwardSetting::set_fallback`).
    pub fallback: Option<ForwardTarget>,
    /// Services with `log_forward: false`.
    pub local: Vec<String>,
}

impl ForwardConfig {
    pub fn of(
        s: &crate::config::Settings,
        services: &BTreeMap<String, crate::config::ServiceConfig>,
    ) -> ForwardConfig {
        ForwardConfig {
            targets: s.log_forward.0.clone(),
            fallback: None,
            local: services
                .iter()
                .filter(|(_, c)| !c.log_forward)
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }
}

/// Records dropped from a target's buffer, per service ("" for the daemon's own).
pub type Drops = Vec<(Arc<str>, u64)>;

/// What a target's forwarder and the rest of the daemon share.
pub struct Shared {
    target: ForwardTarget,
    queue: Mutex<Queue>,
    /// Signalled when the queue and the forwarder's hands are both empty.
    emptied: Condvar,
    in_flight: AtomicBool,
    reconnect: AtomicBool,
    stop: AtomicBool,
    /// Wakes the forwarder: records where there were none, a reconnect, a stop.
    bell: Bell,
    /// A duplicate of the connected socket, so that a reconnect or a stop can end a
    /// write blocked on a collector that does not read.
    conn: Mutex<Option<OwnedFd>>,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A forwarder never panics holding the lock; if one did, its queue is still whole.
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The address, as metrics and records name the target.
    pub fn name(&self) -> String {
        self.target.address.to_string()
    }

    /// Messages dropped so far, per service ("" for the daemon's own).
    pub fn dropped(&self) -> Drops {
        lock(&self.queue).dropped().to_vec()
    }

    /// Drops the connection and connects again at once, keeping what is buffered
    /// (SIGUSR1). Never blocks.
    pub fn reconnect(&self) {
        self.reconnect.store(true, Ordering::Release);
        self.shutdown_conn();
        self.bell.ring();
    }

    fn shutdown_conn(&self) {
        if let Ok(c) = self.conn.lock() {
            if let Some(fd) = c.as_ref() {
                // SAFETY: shutdown on a descriptor we own; it only ends I/O on it.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// Waits until everything buffered is sent, at most until `deadline`.
    pub fn wait_empty(&self, deadline: Instant) -> bool {
        let mut q = lock(&self.queue);
        loop {
            if q.is_empty() && !self.in_flight.load(Ordering::Acquire) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = match self.emptied.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// A forwarder's doorbell: rung by whoever has news for it (records where there were
/// none, a reconnect, a stop), taken by the forwarder. A flag under a lock, so that a
/// ring before the wait is never lost.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        if let Ok(mut rung) = self.rung.lock() {
            *rung = true;
            self.cv.notify_one();
        }
    }

    /// Waits until rung, or until `deadline` passes; takes the ring. False when the
    /// deadline passed first.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        let Ok(mut rung) = self.rung.lock() else {
            return false;
        };
        while !*rung {
            rung = match deadline {
                None => match self.cv.wait(rung) {
                    Ok(r) => r,
                    Err(_) => return false,
                },
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    match self.cv.wait_timeout(rung, left) {
                        Ok((r, _)) => r,
                        Err(_) => return false,
                    }
                }
            };
        }
        *rung = false;
        true
    }
}

/// One target as the log writer holds it.
pub struct Target {
    pub shared: Arc<Shared>,
    encoder: Encoder,
    /// The `/dev/log` fallback: every service, and only what the daemon's log shows.
    fallback: bool,
    /// Messages encoded and not yet queued, and where each ends.
    stage: Vec<u8>,
    ends: Vec<usize>,
    /// Records were queued for a forwarder that may be asleep, and it was not woken.
    unrung: bool,
}

/// Queued bytes that wake a forwarder without waiting for the writer to run idle.
const RING_AT: usize = 32 * 1024;

impl Target {
    fn start(target: ForwardTarget, fallback: bool) -> io::Result<Target> {
        let hostname = match target.address {
            Address::Unix(_) => None,
            _ => sender::hostname(),
        };
        let encoder = Encoder::new(
            target.format,
            target.facility,
            target.max_message_bytes,
            hostname,
        );
        let shared = Arc::new(Shared {
            bell: Bell::default(),
            queue: Mutex::new(Queue::new(target.buffer_bytes)),
            target,
            emptied: Condvar::new(),
            in_flight: AtomicBool::new(false),
            reconnect: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conn: Mutex::new(None),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("log-forward".into())
            .stack_size(STACK)
            .spawn(move || sender::Forwarder::new(theirs).run())?;
        Ok(Target {
            shared,
            encoder,
            fallback,
            stage: Vec::with_capacity(512),
            ends: Vec::new(),
            unrung: false,
        })
    }

    /// Encodes one message into the stage.
    fn stage(&mut self, m: &Message) {
        self.encoder.encode(m, &mut self.stage);
        self.ends.push(self.stage.len());
    }

    /// Queues what is staged, as `service`'s. Encoded before the lock is taken, so the
    /// forwarder waits on it only while bytes are copied. A forwarder that may be
    /// asleep is woken once a send's worth waits, else when the writer runs idle
    /// (`Forwarding::ring`).
    fn queue_staged(&mut self, service: Option<&Arc<str>>) {
        let mut q = lock(&self.shared.queue);
        let who = q.who(service);
        let mut start = 0;
        for &end in &self.ends {
            self.unrung |= q.push(self.stage.get(start..end).unwrap_or_default(), who);
            start = end;
        }
        if self.unrung && q.used() >= RING_AT {
            self.unrung = false;
            self.shared.bell.ring();
        }
        drop(q);
        self.stage.clear();
        self.ends.clear();
    }
}

impl Drop for Target {
    /// The forwarder ends, woken from wherever it waits.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.shutdown_conn();
        self.shared.bell.ring();
    }
}

/// The log writer's targets.
#[derive(Default)]
pub struct Forwarding {
    config: ForwardConfig,
    targets: Vec<Target>,
    generation: u64,
    /// The daemon's pid, for its own records' PROCID: taken with the settings, not
    /// asked of the kernel for every batch.
    pid: i32,
}

/// The settings the sink's handle gives the writer, and the targets it runs, for
/// counts, reconnects and the drain at exit.
#[derive(Default)]
pub struct ForwardSetting {
    generation: AtomicU64,
    config: Mutex<ForwardConfig>,
    /// Set once at start: the daemon's log when it has no other.
    fallback: Mutex<Option<ForwardTarget>>,
    targets: Mutex<Vec<Arc<Shared>>>,
}

impl ForwardSetting {
    /// The local syslog as the daemon's log (`--daemon` without `log_dir`).
    pub fn set_fallback(&self, target: ForwardTarget) {
        if let Ok(mut f) = self.fallback.lock() {
            *f = Some(target);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// New settings; the writer applies them with its next record.
    pub fn set(&self, config: ForwardConfig) {
        if let Ok(mut c) = self.config.lock() {
            if *c != config {
                *c = config;
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn targets(&self) -> Vec<Arc<Shared>> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Every target connects again at once, keeping what it holds (SIGUSR1).
    pub fn reconnect(&self) {
        for t in self.targets() {
            t.reconnect();
        }
    }

    /// Each target's address and the records dropped from its buffer so far, per
    /// service ("" for the daemon's own).
    pub fn dropped(&self) -> Vec<(String, Drops)> {
        self.targets()
            .iter()
            .map(|t| (t.name(), t.dropped()))
            .collect()
    }

    /// Waits (until `deadline` at most) for every target to send what it holds.
    pub fn drain(&self, deadline: Instant) {
        for t in self.targets() {
            t.wait_empty(deadline);
        }
    }
}

/// A record as a syslog message: APP-NAME the service (`orchestrator` and the daemon's
/// pid for its own), MSGID the stream or the record's kind, a crash an error.
fn message<'a>(rec: &'a Record<'a>, own_pid: i32) -> Message<'a> {
    // An exit nobody asked for (a warning in the log) is a crash: an error to syslog.
    let crash = rec.event == Some(RecordKind::Exited) && rec.level <= log::Level::Warn;
    Message {
        ts_ms: rec.ts_ms,
        level: if crash { log::Level::Error } else { rec.level },
        app: rec.service.unwrap_or("orchestrator"),
        pid: rec.pid.or(rec.service.is_none().then_some(own_pid)),
        msgid: rec
            .stream
            .map(|s| s.as_str())
            .or(rec.event.map(|e| e.as_str())),
        text: rec.msg,
        partial: rec.partial,
    }
}

impl Forwarding {
    /// Takes new settings: targets whose settings are unchanged keep their forwarder,
    /// connection and buffer; the others end and new ones start.
    pub fn configure(&mut self, config: ForwardConfig) {
        if config == self.config {
            return;
        }
        self.pid = std::process::id() as i32;
        let mut old = std::mem::take(&mut self.targets);
        let wanted = config
            .targets
            .iter()
            .map(|t| (t, false))
            .chain(config.fallback.iter().map(|t| (t, true)));
        for (t, fallback) in wanted {
            let kept = old
                .iter()
                .position(|o| o.shared.target == *t && o.fallback == fallback);
            match kept {
                Some(i) => self.targets.push(old.swap_remove(i)),
                None => match Target::start(t.clone(), fallback) {
                    Ok(target) => self.targets.push(target),
                    Err(e) => {
                        log::error!("log_forward {}: cannot start its thread: {e}", t.address)
                    }
                },
            }
        }
        self.config = config;
    }

    /// Picks up the settings `setting` holds when they have changed (a reload).
    pub fn refresh(&mut self, setting: &ForwardSetting) {
        let generation = setting.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let mut config = setting.config.lock().map(|c| c.clone()).unwrap_or_default();
        // A target at the fallback's own socket replaces it.
        config.fallback = setting
            .fallback
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .filter(|f| config.targets.iter().all(|t| t.address != f.address));
        self.configure(config);
        if let Ok(mut t) = setting.targets.lock() {
            *t = self.targets.iter().map(|t| t.shared.clone()).collect();
        }
    }

    /// A batch of a service's lines; `max` is the daemon log's level filter.
    pub fn batch(&mut self, batch: &Batch, max: u8) {
        if self.targets.is_empty() {
            return;
        }
        let local = self.config.local.iter().any(|s| **s == *batch.service);
        for t in &mut self.targets {
            if local && !t.fallback {
                continue;
            }
            for line in &batch.lines {
                if t.fallback && level::rank(line.level) > max {
                    continue;
                }
                let rec = batch.record(line);
                t.stage(&message(&rec, self.pid));
            }
            t.queue_staged(Some(&batch.service));
        }
    }

    /// Wakes every forwarder that has records it has not been told of: the log writer
    /// calls this when its queue runs empty, as it writes out what it formatted, so a
    /// burst costs a forwarder one wake-up and one send per burst, not per line.
    pub fn ring(&mut self) {
        for t in &mut self.targets {
            if std::mem::take(&mut t.unrung) {
                t.shared.bell.ring();
            }
        }
    }

    /// A lifecycle record or one of the daemon's own; `shown` when the daemon's log
    /// shows it.
    pub fn record(&mut self, rec: &Record, shown: bool) {
        if self.targets.is_empty() {
            return;
        }
        let service: Option<Arc<str>> = rec.service.map(Arc::from);
        let local = rec
            .service
            .is_some_and(|s| self.config.local.iter().any(|l| l == s));
        for t in &mut self.targets {
            // The targets get every lifecycle record; the daemon's own as its log does.
            let wanted = if t.fallback {
                shown
            } else {
                !local && (shown || service.is_some())
            };
            if !wanted {
                continue;
            }
            t.stage(&message(rec, self.pid));
            t.queue_staged(service.as_ref());
        }
    }
}

pub use sender::answers;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sink::Stream;

    fn rec(
        level: log::Level,
        stream: Option<Stream>,
        event: Option<RecordKind>,
    ) -> Record<'static> {
        Record {
            ts_ms: 1,
            level,
            service: Some("web"),
            pid: Some(7),
            stream,
            event,
            msg: "x",
            partial: false,
        }
    }

    #[test]
    fn a_record_keeps_its_level_and_a_crash_is_an_error() {
        let line = rec(log::Level::Warn, Some(Stream::Stderr), None);
        let m = message(&line, 99);
        assert_eq!((m.level, m.app, m.pid), (log::Level::Warn, "web", Some(7)));
        assert_eq!(m.msgid, Some("stderr"));
        let crash = rec(log::Level::Warn, None, Some(RecordKind::Exited));
        let m = message(&crash, 99);
        assert_eq!((m.level, m.msgid), (log::Level::Error, Some("exited")));
        let asked = rec(log::Level::Info, None, Some(RecordKind::Exited));
        assert_eq!(message(&asked, 99).level, log::Level::Info);
        let own = Record {
            service: None,
            pid: None,
            ..rec(log::Level::Info, None, None)
        };
        let m = message(&own, 99);
        assert_eq!((m.app, m.pid, m.msgid), ("orchestrator", Some(99), None));
    }

    #[test]
    fn a_reload_keeps_an_unchanged_targets_buffer() {
        // Sockets nobody answers at: what is queued stays queued.
        let dir = std::env::temp_dir().join(format!("orch-forward-{}", std::process::id()));
        let a = ForwardTarget::dev_log(dir.join("a"));
        let b = ForwardTarget::dev_log(dir.join("b"));
        let mut f = Forwarding::default();
        f.configure(ForwardConfig {
            targets: vec![a.clone()],
            ..ForwardConfig::default()
        });
        let kept = f.targets[0].shared.clone();
        f.record(
            &rec(log::Level::Info, None, Some(RecordKind::Started)),
            true,
        );
        assert!(!lock(&kept.queue).is_empty());
        f.configure(ForwardConfig {
            targets: vec![b, a],
            fallback: None,
            local: vec!["web".into()],
        });
        assert_eq!(f.targets.len(), 2);
        let again = &f.targets[1].shared;
        assert!(
            Arc::ptr_eq(again, &kept),
            "a new forwarder for an unchanged target"
        );
        assert!(!lock(&again.queue).is_empty(), "its buffer was dropped");
    }

    #[test]
    fn a_target_at_the_fallbacks_socket_replaces_it() {
        let dir = std::env::temp_dir().join(format!("orch-forward-{}", std::process::id()));
        let setting = ForwardSetting::default();
        setting.set_fallback(ForwardTarget::dev_log(dir.join("log")));
        let mut f = Forwarding::default();
        f.refresh(&setting);
        assert_eq!((f.targets.len(), f.targets[0].fallback), (1, true));
        let own = ForwardTarget {
            facility: 16,
            ..ForwardTarget::dev_log(dir.join("log"))
        };
        setting.set(ForwardConfig {
            targets: vec![own],
            ..ForwardConfig::default()
        });
        f.refresh(&setting);
        assert_eq!((f.targets.len(), f.targets[0].fallback), (1, false));
        assert_eq!(setting.targets().len(), 1);
    }
}
