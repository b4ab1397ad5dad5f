//! The watcher of `services_dir` (docs/watching.md): one thread that blocks on an
//! inotify descriptor and tells the loop which services' files changed, once each has
//! been quiet for `watch_settle_ms` (counted per service), so that a directory still
//! being copied is never acted on half-written.
//!
//! What it watches: the entries of `services_dir` (directories coming and going), in
//! each `NAME/` only `NAME` and `service.json`, the config file's `conf.d` (and, in its
//! directory, `conf.d` itself coming and going). It reads no file and decides nothing
//! about a service: it names what changed, and the loop compares each named service
//! with its files. So the daemon's own writes (its hard links, `NAME.prev`, an
//! `upgrade`'s rename) need no filtering here: compared with what the daemon knows,
//! they are no change.
//!
//! Its invariant: every event read ends in exactly one `Settled` (an inotify queue
//! overflow becomes a rescan of everything), and the thread wakes only when the kernel
//! has an event for it or a settle deadline it holds is due. With nothing pending it
//! blocks in `poll` without a timeout: no wake-up while nothing changes.

use super::event::{Above, Event};
use crate::config::{is_drop_in, DROP_INS, SIDECAR};
use crossbeam_channel::Sender;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WATCHER_STACK: usize = 64 * 1024;
/// Room for a few hundred events per read, on the heap.
const READ_BUFFER: usize = 16 * 1024;

/// What the loop is told: these services' files have been quiet for the settle time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub services: Vec<String>,
    /// A drop-in in `conf.d` changed (or `conf.d` itself came or went).
    pub confd: bool,
    /// Events were lost (queue overflow): compare every service with its files.
    pub rescan: bool,
}

/// What a settle deadline is kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Service(String),
    ConfD,
    Rescan,
}

/// The settle bookkeeping: one deadline per key, pushed back by every new event for
/// it. Pure: the caller passes the time. A list, not a map: it holds the services
/// changing right now, a handful (and a map's code is kilobytes of the binary).
#[derive(Debug)]
pub struct Settle {
    quiet: Duration,
    due: Vec<(Key, Instant)>,
}

impl Settle {
    pub fn new(quiet: Duration) -> Settle {
        Settle {
            quiet,
            due: Vec::new(),
        }
    }

    /// Something of `key` changed at `now`: it acts once quiet for the settle time.
    pub fn touch(&mut self, key: Key, now: Instant) {
        let at = now + self.quiet;
        match self.due.iter_mut().find(|(k, _)| *k == key) {
            Some(d) => d.1 = at,
            None => self.due.push((key, at)),
        }
    }

    /// The earliest deadline, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.due.iter().map(|(_, d)| *d).min()
    }

    /// The keys quiet since their settle time, gathered into one message (None when
    /// none is due), and forgotten.
    pub fn take_due(&mut self, now: Instant) -> Option<Settled> {
        if !self.due.iter().any(|(_, d)| *d <= now) {
            return None;
        }
        let (due, left) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|(_, d)| *d <= now);
        self.due = left;
        let mut s = Settled::default();
        for (k, _) in due {
            match k {
                Key::Service(n) => s.services.push(n),
                Key::ConfD => s.confd = true,
                Key::Rescan => s.rescan = true,
            }
        }
        Some(s)
    }
}

/// What a watched directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dir {
    /// `services_dir`.
    Root,
    /// `services_dir/NAME`.
    Service(String),
    /// The config file's `conf.d`.
    ConfD,
    /// The config file's directory (only `conf.d` matters there).
    ConfigHome,
}

/// What one inotify event means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Nothing,
    Touch(Key),
    /// A service directory appeared: watch it, and touch the service.
    NewService(String),
    /// `conf.d` appeared: watch it, and touch the drop-ins.
    NewConfD,
    /// The queue overflowed: events were lost.
    Overflow,
}

/// Classifies one event on `dir` about the entry `name` with inotify's `mask`. Pure.
pub fn classify(dir: &Dir, name: Option<&str>, mask: u32) -> Seen {
    if mask & libc::IN_Q_OVERFLOW != 0 {
        return Seen::Overflow;
    }
    let Some(name) = name else {
        return Seen::Nothing;
    };
    let is_dir = mask & libc::IN_ISDIR != 0;
    // In `services_dir`, a symlink to a directory is a service directory too (as for
    // discovery), and inotify does not say where a link points: any entry with a
    // service's name counts; watching a plain file fails quietly.
    let came = mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
    let went = mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0;
    match dir {
        Dir::Root if crate::config::valid_service_name(name) => {
            if came {
                Seen::NewService(name.to_string())
            } else if went {
                Seen::Touch(Key::Service(name.to_string()))
            } else {
                Seen::Nothing
            }
        }
        Dir::Root => Seen::Nothing,
        Dir::Service(s) if name == s || name == SIDECAR => Seen::Touch(Key::Service(s.clone())),
        Dir::Service(_) => Seen::Nothing,
        Dir::ConfD if is_drop_in(name.as_bytes()) => Seen::Touch(Key::ConfD),
        Dir::ConfD => Seen::Nothing,
        Dir::ConfigHome if is_dir && name == DROP_INS && came => Seen::NewConfD,
        Dir::ConfigHome if is_dir && name == DROP_INS && went => Seen::Touch(Key::ConfD),
        Dir::ConfigHome => Seen::Nothing,
    }
}

const ROOT_MASK: u32 =
    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO | libc::IN_ONLYDIR;
const FILES_MASK: u32 =
    ROOT_MASK | libc::IN_CLOSE_WRITE | libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_EXCL_UNLINK;

/// The inotify descriptor and what each of its watches is.
struct Watches {
    fd: OwnedFd,
    /// By watch descriptor (a list: one per service directory, looked up per event).
    dirs: Vec<(i32, Dir)>,
    services_dir: PathBuf,
    confd: Option<PathBuf>,
}

impl Watches {
    fn add(&mut self, path: &Path, mask: u32, dir: Dir) {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid descriptor and a NUL-terminated path; returns a watch or -1.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd >= 0 {
            // Adding a watched path again returns its descriptor.
            self.dirs.retain(|(w, _)| *w != wd);
            self.dirs.push((wd, dir));
        } else {
            let e = io::Error::last_os_error();
            // A directory gone again before it was watched, or an entry that is no
            // directory, is no news.
            if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
                log::warn!("watch_services_dir: cannot watch {}: {e}", path.display());
            }
        }
    }

    fn add_service(&mut self, name: &str) {
        let path = self.services_dir.join(name);
        self.add(&path, FILES_MASK, Dir::Service(name.to_string()));
    }

    fn add_confd(&mut self) {
        if let Some(c) = self.confd.clone() {
            self.add(&c, FILES_MASK, Dir::ConfD);
        }
    }

    /// Every watch (again: adding a watched path again keeps its descriptor). Bound:
    /// one listing of `services_dir`.
    fn add_all(&mut self) {
        let root = self.services_dir.clone();
        self.add(&root, ROOT_MASK, Dir::Root);
        if let Some(parent) = self.confd.as_ref().and_then(|c| c.parent()) {
            let parent = parent.to_path_buf();
            self.add(&parent, ROOT_MASK, Dir::ConfigHome);
        }
        self.add_confd();
        let names: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| crate::config::valid_service_name(n))
            .collect();
        for n in names {
            self.add_service(&n);
        }
    }
}

/// Starts watching `services_dir` (and `confd`, the config file's `conf.d`, when there
/// is a config file) with changes settled for `quiet`. The watches are made here, so
/// that what exists at start is watched before the services start.
pub fn spawn(
    services_dir: PathBuf,
    confd: Option<PathBuf>,
    quiet: Duration,
    tx: Sender<Event>,
) -> io::Result<()> {
    // SAFETY: plain flags; returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut w = Watches {
        // SAFETY: fd was just opened and is owned here alone.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        dirs: Vec::new(),
        services_dir,
        confd,
    };
    w.add_all();
    std::thread::Builder::new()
        .name("watcher".into())
        .stack_size(WATCHER_STACK)
        .spawn(move || watch(w, Settle::new(quiet), &tx))
        .map(|_| ())
}

/// The thread: waits for events or the next settle deadline, never longer.
fn watch(mut w: Watches, mut settle: Settle, tx: &Sender<Event>) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let timeout = settle.deadline().map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            // Rounded up: waking before the deadline would only wait again.
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let mut pfd = libc::pollfd {
            fd: w.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            log::error!(
                "watch_services_dir: poll failed, watching stops: {}",
                io::Error::last_os_error()
            );
            return;
        }
        if n > 0 {
            if let Err(e) = drain(&mut w, &mut settle, &mut buf) {
                log::error!("watch_services_dir: read failed, watching stops: {e}");
                return;
            }
        }
        if let Some(s) = settle.take_due(Instant::now()) {
            if tx.send(Event::Above(Above::Watched(s))).is_err() {
                return;
            }
        }
    }
}

/// Reads every event queued and books each one.
fn drain(w: &mut Watches, settle: &mut Settle, buf: &mut [u8]) -> io::Result<()> {
    loop {
        // SAFETY: reads at most buf.len() bytes into buf, which lives across the call.
        let n = unsafe { libc::read(w.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        let now = Instant::now();
        let len = n as usize;
        let head = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0;
        while at + head <= len {
            // SAFETY: the kernel wrote a whole event header at `at` (checked in
            // bounds above); read_unaligned copes with the byte buffer's alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name_end = (at + head + ev.len as usize).min(len);
            let raw = &buf[at + head..name_end];
            let name = raw.iter().position(|b| *b == 0).map_or(raw, |z| &raw[..z]);
            let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty());
            book(w, settle, ev.wd, name, ev.mask, now);
            at = name_end;
        }
    }
}

fn book(
    w: &mut Watches,
    settle: &mut Settle,
    wd: i32,
    name: Option<&str>,
    mask: u32,
    now: Instant,
) {
    if mask & libc::IN_IGNORED != 0 {
        // The directory went (or its watch was removed): its descriptor may be reused.
        w.dirs.retain(|(w, _)| *w != wd);
        return;
    }
    let seen = match w.dirs.iter().find(|(w, _)| *w == wd) {
        Some((_, dir)) => classify(dir, name, mask),
        None => classify(&Dir::Root, None, mask),
    };
    match seen {
        Seen::Nothing => {}
        Seen::Touch(k) => settle.touch(k, now),
        Seen::NewService(n) => {
            w.add_service(&n);
            settle.touch(Key::Service(n), now);
        }
        Seen::NewConfD => {
            w.add_confd();
            settle.touch(Key::ConfD, now);
        }
        Seen::Overflow => {
            log::warn!("watch_services_dir: too many changes at once, rescanning everything");
            w.add_all();
            settle.touch(Key::Rescan, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_millis(500);

    #[test]
    fn a_service_settles_once_quiet_and_each_touch_pushes_it_back() {
        let t0 = Instant::now();
        let mut s = Settle::new(Q);
        assert_eq!(s.deadline(), None);
        s.touch(Key::Service("a".into()), t0);
        // A slow copy: a write every 300 ms keeps it from settling.
        for i in 1..5 {
            let t = t0 + Duration::from_millis(300 * i);
            assert_eq!(s.take_due(t), None);
            s.touch(Key::Service("a".into()), t);
        }
        let last = t0 + Duration::from_millis(1200);
        assert_eq!(s.deadline(), Some(last + Q));
        assert_eq!(s.take_due(last + Q - Duration::from_millis(1)), None);
        let due = s.take_due(last + Q).unwrap();
        assert_eq!(due.services, vec!["a".to_string()]);
        assert_eq!(s.deadline(), None);
        assert_eq!(s.take_due(last + Q * 4), None);
    }

    #[test]
    fn services_settle_each_on_their_own_and_a_burst_is_one_message() {
        let t0 = Instant::now();
        let mut s = Settle::new(Q);
        for i in 0..1000 {
            s.touch(Key::Service("a".into()), t0);
            s.touch(Key::Service(format!("s{}", i % 10)), t0);
        }
        s.touch(Key::Service("b".into()), t0 + Q / 2);
        s.touch(Key::ConfD, t0);
        let due = s.take_due(t0 + Q).unwrap();
        assert_eq!(due.services.len(), 11);
        assert!(due.services.iter().all(|n| n != "b"));
        assert!(due.confd && !due.rescan);
        assert_eq!(s.deadline(), Some(t0 + Q / 2 + Q));
        let due = s.take_due(t0 + Q * 2).unwrap();
        assert_eq!(due.services, vec!["b".to_string()]);
    }

    #[test]
    fn events_are_classified_by_where_and_what() {
        let svc = Dir::Service("web".into());
        let touch = Seen::Touch(Key::Service("web".into()));
        let dir = libc::IN_ISDIR;
        assert_eq!(classify(&svc, Some("web"), libc::IN_MOVED_TO), touch);
        assert_eq!(classify(&svc, Some("web"), libc::IN_MODIFY), touch);
        assert_eq!(classify(&svc, Some("web"), libc::IN_DELETE), touch);
        assert_eq!(
            classify(&svc, Some("service.json"), libc::IN_CLOSE_WRITE),
            touch
        );
        // The daemon's own files and anything else in the directory are no events.
        for other in [".web.running", "web.prev", ".web.upgrade", "data", "other"] {
            assert_eq!(classify(&svc, Some(other), libc::IN_CREATE), Seen::Nothing);
        }
        let root = Dir::Root;
        assert_eq!(
            classify(&root, Some("web"), libc::IN_CREATE | dir),
            Seen::NewService("web".into())
        );
        assert_eq!(
            classify(&root, Some("web"), libc::IN_MOVED_TO | dir),
            Seen::NewService("web".into())
        );
        assert_eq!(classify(&root, Some("web"), libc::IN_DELETE | dir), touch);
        // A symlink to a directory says no IN_ISDIR.
        assert_eq!(
            classify(&root, Some("web"), libc::IN_CREATE),
            Seen::NewService("web".into())
        );
        assert_eq!(
            classify(&root, Some(".hidden"), libc::IN_CREATE | dir),
            Seen::Nothing
        );
        assert_eq!(
            classify(&Dir::ConfD, Some("10-web.json"), libc::IN_MOVED_TO),
            Seen::Touch(Key::ConfD)
        );
        assert_eq!(
            classify(&Dir::ConfD, Some(".10-web.json.swp"), libc::IN_MODIFY),
            Seen::Nothing
        );
        assert_eq!(
            classify(&Dir::ConfigHome, Some("conf.d"), libc::IN_CREATE | dir),
            Seen::NewConfD
        );
        assert_eq!(
            classify(&Dir::ConfigHome, Some("orchestrator.json"), libc::IN_MODIFY),
            Seen::Nothing
        );
        assert_eq!(classify(&svc, None, libc::IN_Q_OVERFLOW), Seen::Overflow);
    }
}
