//! The sd_notify socket (docs/health.md `ready: "notify"`, `watchdog_ms`): one datagram
//! socket for the daemon with `SO_PASSCRED`, read by a single thread that blocks while
//! nothing comes. Each datagram (at most 4 KiB) belongs to the service that owns the
//! sending process, found by its process group (registered at spawn), or else by its
//! cgroup: the exact path of the service's cgroup on the daemon's tracking hierarchy
//! (`<own>/orchestrator-<id>/NAME`), never a look-alike elsewhere. Anything else is
//! dropped and counted.
//!
//! The socket is world-writable, so a flood by unrelated local processes must cost
//! little: a sender's process group is a map lookup after one syscall, and a pid found
//! to be of no service is remembered for `REFUSED_TTL`, its datagrams dropped without
//! another read of /proc, so the reader keeps up and services' datagrams keep flowing.
//!
//! Messages are coalesced into one small slot per service (ready, status, trigger, last
//! keep-alive), so the queue to the main loop is bounded by the number of services: the
//! loop is woken (one `Event::Notify` per service at most in flight) only when READY,
//! STATUS or WATCHDOG=trigger changes something. A keep-alive never wakes it: it only
//! stamps the slot, which the loop reads when the service's watchdog deadline comes.
//! A flood from one service therefore costs the reader thread, never the loop, and
//! other services' messages wait only behind the reader's quick pass over the flood.
//!
//! It never decides anything about a service's lifecycle and never signals anyone:
//! the main loop turns slots into machine events.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::cgroup::ProcKey;

/// The largest datagram accepted (docs/health.md); longer ones are dropped and counted.
pub const MAX_DATAGRAM: usize = 4096;
/// Descriptors accepted with one datagram (systemd-notify's barrier sends one); all are
/// closed at once.
const MAX_FDS: usize = 16;

/// What a service said, coalesced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    pub ready: bool,
    pub status: Option<String>,
    /// `WATCHDOG=trigger` arrived and the loop has not taken it yet.
    pub trigger: bool,
    /// The last `WATCHDOG=1`.
    pub keepalive: Option<Instant>,
    /// Datagrams from this service that were too long or not text.
    pub dropped: u64,
    /// A wake is in flight to the loop.
    woken: bool,
}

struct Shared {
    /// Process group (a run's main pid) -> service.
    groups: Mutex<HashMap<i32, Arc<str>>>,
    slots: Mutex<HashMap<Arc<str>, Slot>>,
    /// Datagrams from processes of no service.
    rejected: AtomicU64,
    /// Senders looked up in /proc: a flood from one pid must not make more of these.
    proc_reads: AtomicU64,
    /// Datagrams from a main process we just spawned whose group the loop has not
    /// registered yet (a spawn on the start-up pool is registered once the whole batch
    /// is done): kept briefly, applied by `register`.
    early: Mutex<VecDeque<Early>>,
    wake: Box<dyn Fn(Arc<str>) + Send + Sync>,
    /// The reader is off the socket for `upgrade-self`'s handover (`park`).
    parked: Mutex<bool>,
    parked_cond: std::sync::Condvar,
}

struct Early {
    pgid: i32,
    at: Instant,
    text: Vec<u8>,
    truncated: bool,
}

/// How many early datagrams are kept, and how long.
const MAX_EARLY: usize = 64;
const EARLY_TTL: Duration = Duration::from_secs(5);

/// How long a pid found to be of no service is refused without another look at /proc,
/// and how many such pids are remembered. The process group is looked up first, so a
/// registered run is heard whatever this remembers; only a process whose pid belonged
/// to a refused sender less than this ago (the pid space wrapped within a second)
/// and that speaks before its group is registered, or from outside it, would wait out
/// the rest of it.
const REFUSED_TTL: Duration = Duration::from_secs(1);
const MAX_REFUSED: usize = 4096;
/// The reader thread's nice value.
const READER_NICE: libc::c_int = -10;

/// The daemon's notify socket. Dropping it removes the socket file; the reader thread
/// lives as long as the process.
pub struct Notify {
    shared: Arc<Shared>,
    path: PathBuf,
    fd: RawFd,
}

impl Notify {
    /// Binds `path` (replacing a stale file) and starts the reader. `tracking` says
    /// where the services' cgroups are (none: senders are told by process group only);
    /// `wake` tells the main loop that a service's slot changed.
    pub fn open(
        path: &Path,
        tracking: Option<ProcKey>,
        wake: impl Fn(Arc<str>) + Send + Sync + 'static,
    ) -> io::Result<Notify> {
        Notify::start(bind(path)?, path, tracking, wake)
    }

    /// `open` on the socket a previous image bound at `path` and handed over
    /// (`upgrade-self`): what was sent to it meanwhile is read now.
    pub fn adopt(
        fd: OwnedFd,
        path: &Path,
        tracking: Option<ProcKey>,
        wake: impl Fn(Arc<str>) + Send + Sync + 'static,
    ) -> io::Result<Notify> {
        Notify::start(fd, path, tracking, wake)
    }

    fn start(
        fd: OwnedFd,
        path: &Path,
        tracking: Option<ProcKey>,
        wake: impl Fn(Arc<str>) + Send + Sync + 'static,
    ) -> io::Result<Notify> {
        let raw = fd.as_raw_fd();
        let shared = Arc::new(Shared {
            groups: Mutex::default(),
            slots: Mutex::default(),
            rejected: AtomicU64::new(0),
            proc_reads: AtomicU64::new(0),
            early: Mutex::default(),
            wake: Box::new(wake),
            parked: Mutex::new(false),
            parked_cond: std::sync::Condvar::new(),
        });
        let reader = Reader {
            fd,
            shared: shared.clone(),
            tracking,
            refused: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("notify".into())
            .stack_size(64 * 1024)
            .spawn(move || reader.run())?;
        Ok(Notify {
            shared,
            path: path.to_path_buf(),
            fd: raw,
        })
    }

    /// The socket, for `upgrade-self` to hand over.
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Waits (at most `bound`) until the reader is off the socket for a handover
    /// (`output::handover::stop_readers` asked): from then on no slot changes and what
    /// comes stays in the socket for the new image. The reader reads on by itself if
    /// the handover is called off.
    pub fn park(&self, bound: std::time::Duration) -> bool {
        let end = Instant::now() + bound;
        let Ok(mut parked) = self.shared.parked.lock() else {
            return false;
        };
        while !*parked {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            parked = match self.shared.parked_cond.wait_timeout(parked, left) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
        true
    }

    /// A new run of `service` with process group `pgid` (its main pid). What its main
    /// process said before this is applied now.
    pub fn register(&self, pgid: i32, service: &Arc<str>) {
        if let Ok(mut g) = self.shared.groups.lock() {
            g.insert(pgid, service.clone());
        }
        let early: VecDeque<Early> = match self.shared.early.lock() {
            Ok(mut q) => {
                let (mine, rest) = q.drain(..).partition(|e| e.pgid == pgid);
                *q = rest;
                mine
            }
            Err(_) => VecDeque::new(),
        };
        for e in early {
            self.shared.apply(service, &e.text, e.truncated);
        }
    }

    /// The run with process group `pgid` is over (its main process reaped): the next
    /// run of its service starts with an empty slot.
    pub fn forget(&self, pgid: i32) {
        let Some(service) = self
            .shared
            .groups
            .lock()
            .ok()
            .and_then(|mut g| g.remove(&pgid))
        else {
            return;
        };
        if let Ok(mut s) = self.shared.slots.lock() {
            if let Some(slot) = s.get_mut(&service) {
                *slot = Slot {
                    dropped: slot.dropped,
                    ..Slot::default()
                };
            }
        }
    }

    /// The slot after a wake: a copy, with the trigger consumed and the next change
    /// allowed to wake the loop again.
    pub fn take(&self, service: &str) -> Option<Slot> {
        let mut slots = self.shared.slots.lock().ok()?;
        let slot = slots.get_mut(service)?;
        let copy = slot.clone();
        slot.trigger = false;
        slot.woken = false;
        Some(copy)
    }

    /// The last keep-alive of `service`, read when its watchdog deadline comes.
    pub fn keepalive(&self, service: &str) -> Option<Instant> {
        self.shared.slots.lock().ok()?.get(service)?.keepalive
    }

    pub fn dropped(&self, service: &str) -> u64 {
        let slots = self.shared.slots.lock();
        slots
            .ok()
            .and_then(|s| s.get(service).map(|s| s.dropped))
            .unwrap_or(0)
    }

    /// Datagrams from processes of no service.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> io::Result<OwnedFd> {
    let fd = crate::common::safe_fs::unix_socket(libc::SOCK_DGRAM)?;
    let on: libc::c_int = 1;
    // SAFETY: valid descriptor and option pointer of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // A stale socket from a crash; a live daemon on it was ruled out by the instance lock.
    let _ = std::fs::remove_file(path);
    // Services may run as other users: anyone may send, only services are heard. The
    // socket is born 0666 (never chmodded by path, which a link could redirect).
    crate::common::safe_fs::bind_unix(fd.as_raw_fd(), path, 0o666)?;
    Ok(fd)
}

struct Reader {
    fd: OwnedFd,
    shared: Arc<Shared>,
    tracking: Option<ProcKey>,
    /// Pids lately found to be of no service, and when.
    refused: HashMap<i32, Instant>,
}

/// Whom a datagram comes from.
enum Sender {
    Service(Arc<str>),
    /// A main process we spawned, not registered yet: its process group.
    Early(i32),
    Nobody,
}

/// One datagram as received.
struct Datagram<'a> {
    text: &'a [u8],
    truncated: bool,
    pid: Option<i32>,
}

impl Reader {
    fn run(mut self) {
        // Ahead of the senders: while the socket's short queue is full, every sender
        // waits, and a waiter that is woken loses its place to a flooder that is
        // running, so a flood by many processes could hold a service's keep-alive back
        // for seconds. A reader that runs as soon as a datagram comes keeps the queue
        // from filling; it does little per datagram. (Only a privileged daemon may;
        // otherwise it stays as it is.)
        // SAFETY: plain syscalls on the calling thread; a failure changes nothing.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, READER_NICE);
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let space =
            // SAFETY: CMSG_SPACE only computes a size.
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize
                + libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize };
        let mut control = vec![0u64; space.div_ceil(8)];
        loop {
            if !self.wait_readable() {
                continue;
            }
            // Everything queued, without a poll between datagrams: the socket's queue is
            // short (`net.unix.max_dgram_qlen`, often 10), and while it is full every
            // sender, a service's keep-alive too, waits for the reader.
            while !crate::process::wake::handover().is_up() {
                match self.receive(&mut buf, &mut control) {
                    Ok(d) => self.handle(d),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::error!(
                            "notify socket: {e}; readiness notifications are no longer read"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Blocks until a datagram is there (`true`), or, while `upgrade-self` hands over,
    /// stays off the socket until the handover is called off (`false`), looking every
    /// 10 ms: it lasts seconds at most, and ends with the exec if it succeeds.
    fn wait_readable(&self) -> bool {
        let handover = crate::process::wake::handover();
        let r = crate::process::wake::wait(self.fd.as_raw_fd(), handover.fd());
        if !handover.is_up() {
            // Data, an error for recvmsg to report, or a wake-up of a handover gone.
            return r.map_or(true, |(ready, _)| ready);
        }
        self.set_parked(true);
        while handover.is_up() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.set_parked(false);
        false
    }

    fn set_parked(&self, v: bool) {
        if let Ok(mut p) = self.shared.parked.lock() {
            *p = v;
            self.shared.parked_cond.notify_all();
        }
    }

    /// Takes one datagram if there is one (`WouldBlock` if not); closes whatever
    /// descriptors came with it.
    fn receive<'a>(&self, buf: &'a mut [u8], control: &mut [u64]) -> io::Result<Datagram<'a>> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(control) as _;
        let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
        // SAFETY: valid descriptor and msghdr; MSG_CMSG_CLOEXEC keeps passed fds from
        // leaking into children before we close them.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut pid = None;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                        let cred = std::ptr::read_unaligned(data as *const libc::ucred);
                        pid = Some(cred.pid);
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for i in 0..len / std::mem::size_of::<RawFd>() {
                            let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                            libc::close(fd);
                        }
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
        Ok(Datagram {
            text: &buf[..n as usize],
            truncated,
            pid,
        })
    }

    /// Who sent from `pid`: the service whose registered process group it is in, else
    /// the service whose cgroup holds it (a process that left the group), else a main
    /// process we spawned a moment ago (our child, leading its own group). A pid
    /// refused lately is refused again without a look at /proc.
    fn sender(&mut self, pid: i32, now: Instant) -> Sender {
        if pid <= 0 {
            return Sender::Nobody;
        }
        // SAFETY: getpgid has no memory preconditions.
        let pgid = unsafe { libc::getpgid(pid) };
        if pgid <= 0 {
            return Sender::Nobody; // Gone already.
        }
        if let Some(s) = self
            .shared
            .groups
            .lock()
            .ok()
            .and_then(|g| g.get(&pgid).cloned())
        {
            return Sender::Service(s);
        }
        if self
            .refused
            .get(&pid)
            .is_some_and(|&at| now.duration_since(at) < REFUSED_TTL)
        {
            return Sender::Nobody;
        }
        let sender = self.look_up(pid, pgid);
        if matches!(sender, Sender::Nobody) {
            self.refuse(pid, now);
        }
        sender
    }

    /// `sender`'s reads of /proc, for a pid whose group is no service's.
    fn look_up(&mut self, pid: i32, pgid: i32) -> Sender {
        self.shared.proc_reads.fetch_add(1, Ordering::Relaxed);
        let owner = self.tracking.as_ref().and_then(|t| cgroup_owner(pid, t));
        if let Some(name) = owner {
            let known = self
                .shared
                .slots
                .lock()
                .ok()
                .and_then(|s| s.get_key_value(name.as_str()).map(|(k, _)| k.clone()));
            return Sender::Service(known.unwrap_or_else(|| name.as_str().into()));
        }
        if pgid == pid && parent_of(pid) == Some(std::process::id() as i32) {
            return Sender::Early(pgid);
        }
        Sender::Nobody
    }

    /// Remembers `pid` as of no service; forgets the stale ones when the table fills,
    /// and everything if they are all fresh (a pid forgotten is only looked up again).
    fn refuse(&mut self, pid: i32, now: Instant) {
        if self.refused.len() >= MAX_REFUSED {
            self.refused
                .retain(|_, at| now.duration_since(*at) < REFUSED_TTL);
            if self.refused.len() >= MAX_REFUSED {
                self.refused.clear();
            }
        }
        self.refused.insert(pid, now);
    }

    fn handle(&mut self, d: Datagram) {
        let now = Instant::now();
        match d.pid.map_or(Sender::Nobody, |p| self.sender(p, now)) {
            Sender::Service(s) => self.shared.apply(&s, d.text, d.truncated),
            Sender::Early(pgid) => self.shared.keep_early(pgid, d.text, d.truncated),
            Sender::Nobody => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Shared {
    fn keep_early(&self, pgid: i32, text: &[u8], truncated: bool) {
        let Ok(mut q) = self.early.lock() else {
            return;
        };
        let now = Instant::now();
        while q
            .front()
            .is_some_and(|e| q.len() >= MAX_EARLY || now.duration_since(e.at) > EARLY_TTL)
        {
            q.pop_front();
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(Early {
            pgid,
            at: now,
            text: text.to_vec(),
            truncated,
        });
    }

    /// Folds one datagram of `service` into its slot; wakes the loop on a change.
    fn apply(&self, service: &Arc<str>, text: &[u8], truncated: bool) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let slot = slots.entry(service.clone()).or_default();
        let text = match std::str::from_utf8(text) {
            Ok(t) if !truncated => t,
            _ => {
                slot.dropped += 1;
                return;
            }
        };
        let mut changed = false;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) if !slot.ready => {
                    slot.ready = true;
                    changed = true;
                }
                Some(("STATUS", s)) if slot.status.as_deref() != Some(s) => {
                    slot.status = Some(s.to_string());
                    changed = true;
                }
                Some(("WATCHDOG", "1")) => slot.keepalive = Some(Instant::now()),
                Some(("WATCHDOG", "trigger")) => {
                    slot.trigger = true;
                    changed = true;
                }
                _ => {}
            }
        }
        if changed && !slot.woken {
            slot.woken = true;
            drop(slots);
            (self.wake)(service.clone());
        }
    }
}

/// The parent of `pid`, from /proc/PID/stat (the field after the command's `)`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The service whose cgroup on the tracking hierarchy holds `pid`.
fn cgroup_owner(pid: i32, tracking: &ProcKey) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    tracking.owner(&text).map(str::to_string)
}

#[cfg(test)]
mod tests;
