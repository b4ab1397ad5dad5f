//! A target's thread: connects to the collector, sends what waits in the target's
//! queue, and backs off while the collector is away. Blocking I/O; it sleeps on the
//! target's doorbell while there is nothing to send, and on a deadline while waiting to
//! try again, never in a loop.
//!
//! It never touches the log writer's state but the queue, and holds that lock only to
//! copy bytes out.

use super::{lock, Shared};
use crate::config::forward::Address;
use crate::output::syslog::Framing;
use std::io;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first retry after a failed connection, doubled up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A forwarder sends at most about this much per write.
const CHUNK: usize = 64 * 1024;

/// This machine's name for the HOSTNAME field; `None` when it has none.
pub(super) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// A connection to a collector: the socket and how messages are separated on it.
struct Conn {
    fd: OwnedFd,
    framing: Framing,
}

fn connect(address: &Address) -> io::Result<Conn> {
    let (fd, framing): (OwnedFd, Framing) = match address {
        Address::Tcp(a) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
            let mut stream = None;
            for addr in a.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            (stream.ok_or(last)?.into(), Framing::OctetCount)
        }
        Address::Udp(a) => {
            let addr = a
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found"))?;
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local)?;
            socket.connect(addr)?;
            (socket.into(), Framing::Datagram)
        }
        Address::Unix(path) => {
            match UnixDatagram::unbound().and_then(|s| s.connect(path).map(|()| s)) {
                Ok(s) => (s.into(), Framing::Datagram),
                // A stream socket refuses a datagram's connect with EPROTOTYPE.
                Err(_) => (UnixStream::connect(path)?.into(), Framing::Nul),
            }
        }
    };
    Ok(Conn { fd, framing })
}

/// Whether the local syslog answers at `path` (datagram, else stream).
pub fn answers(path: &std::path::Path) -> bool {
    connect(&Address::Unix(path.to_path_buf())).is_ok()
}

impl Conn {
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer is ours and its length is passed; MSG_NOSIGNAL: a closed
        // peer is an error here, never a SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// A stream whose collector has closed it (it never sends us anything, so a
    /// readable socket means the end): found before a write that would be lost.
    fn closed(&self) -> bool {
        if self.framing == Framing::Datagram {
            return false;
        }
        let mut b = [0u8; 1];
        // SAFETY: a one-byte buffer of ours; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
    }
}

/// A target's thread: connects, sends what waits, backs off when the collector is away.
pub(super) struct Forwarder {
    shared: Arc<Shared>,
    name: String,
    /// What the queue gave, before framing, and each message's length: kept until
    /// every message is sent, so that what a broken connection cut is framed again for
    /// the next one (whose framing may differ: a unix socket turned stream).
    raw: Vec<u8>,
    lens: Vec<usize>,
    /// Messages of `raw` sent whole on an earlier connection.
    done: usize,
    /// The rest, framed for the current connection, with where each ends.
    pending: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of `pending` already sent.
    sent: usize,
    retry: Duration,
    /// Said that the collector is away, until it is back.
    warned: bool,
}

impl Forwarder {
    pub(super) fn new(shared: Arc<Shared>) -> Forwarder {
        Forwarder {
            name: shared.name(),
            shared,
            raw: Vec::new(),
            lens: Vec::new(),
            done: 0,
            pending: Vec::new(),
            ends: Vec::new(),
            sent: 0,
            retry: FIRST_RETRY,
            warned: false,
        }
    }

    pub(super) fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut connected_at = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if self.shared.reconnect.swap(false, Ordering::AcqRel) && conn.is_some() {
                self.drop_conn(&mut conn);
                self.retry = FIRST_RETRY;
            }
            let Some(c) = &conn else {
                match connect(&self.shared.target.address) {
                    Ok(c) => {
                        if let Ok(mut dup) = self.shared.conn.lock() {
                            *dup = c.fd.try_clone().ok();
                        }
                        conn = Some(c);
                        connected_at = Instant::now();
                        self.retry = FIRST_RETRY;
                        if std::mem::take(&mut self.warned) {
                            log::info!("log_forward {}: connected again", self.name);
                        }
                    }
                    Err(e) => {
                        self.away("cannot connect", &e);
                        if !self.backoff() {
                            return;
                        }
                    }
                }
                continue;
            };
            if self.lens.is_empty() {
                self.fill();
            }
            if self.pending.is_empty() {
                self.frame(c.framing);
            }
            if self.pending.is_empty() {
                continue;
            }
            if let Err(e) = self.send(c) {
                self.drop_conn(&mut conn);
                // A reconnect asked for ended the send: connect again at once.
                if self.shared.reconnect.swap(false, Ordering::AcqRel) {
                    continue;
                }
                self.away("connection lost", &e);
                // A collector that accepts and fails at once is not tried in a loop.
                if connected_at.elapsed() < MAX_RETRY && !self.backoff() {
                    return;
                }
                continue;
            }
            self.report_drops();
        }
    }

    fn drop_conn(&mut self, conn: &mut Option<Conn>) {
        if let Ok(mut dup) = self.shared.conn.lock() {
            *dup = None;
        }
        *conn = None;
        // A message cut by the broken connection is sent whole on the next one.
        self.done += self.ends.iter().take_while(|e| **e <= self.sent).count();
        self.pending.clear();
        self.ends.clear();
        self.sent = 0;
    }

    /// Frames the messages not yet sent for a connection.
    fn frame(&mut self, framing: Framing) {
        let mut start: usize = self.lens.iter().take(self.done).sum();
        for &len in self.lens.iter().skip(self.done) {
            let msg = self.raw.get(start..start + len).unwrap_or_default();
            framing.push(&mut self.pending, msg);
            self.ends.push(self.pending.len());
            start += len;
        }
    }

    fn away(&mut self, what: &str, e: &io::Error) {
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!(
                "log_forward {}: {what}: {e}; retrying with backoff, buffering meanwhile",
                self.name
            );
        }
    }

    /// Sleeps until the retry is due (or a reconnect is asked for); false to stop.
    fn backoff(&mut self) -> bool {
        let deadline = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        loop {
            if !self.shared.bell.wait(Some(deadline)) {
                return true;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            if self.shared.reconnect.swap(false, Ordering::AcqRel) {
                return true;
            }
        }
    }

    /// Takes the next messages from the queue, or sleeps on the doorbell while there
    /// are none. The lock is held for one copy; the framing is done after.
    fn fill(&mut self) {
        let shared = self.shared.clone();
        let mut q = lock(&shared.queue);
        if q.is_empty() {
            self.shared.in_flight.store(false, Ordering::Release);
            self.shared.emptied.notify_all();
            drop(q);
            self.shared.bell.wait(None);
            return;
        }
        self.shared.in_flight.store(true, Ordering::Release);
        q.take(CHUNK, &mut self.raw, &mut self.lens);
    }

    /// Sends everything pending: a stream in as few writes as it takes, a datagram
    /// socket one message each.
    fn send(&mut self, c: &Conn) -> io::Result<()> {
        if c.closed() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "closed by the collector",
            ));
        }
        while self.sent < self.pending.len() {
            let end = match c.framing {
                Framing::Datagram => self
                    .ends
                    .iter()
                    .copied()
                    .find(|e| *e > self.sent)
                    .unwrap_or(self.pending.len()),
                _ => self.pending.len(),
            };
            match c.send(&self.pending[self.sent..end]) {
                Ok(n) if c.framing == Framing::Datagram => self.sent = end.max(self.sent + n),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Too big for this socket: dropped, not retried forever.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => self.sent = end,
                // UDP: a collector that does not listen answers with ICMP, reported on a
                // later send; that datagram is gone either way, and so is this one.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && matches!(self.shared.target.address, Address::Udp(_)) =>
                {
                    self.sent = end
                }
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        self.ends.clear();
        self.sent = 0;
        self.raw.clear();
        self.lens.clear();
        self.done = 0;
        Ok(())
    }

    /// Says how many records were lost since it was last said, once they are known
    /// and the collector takes messages again.
    fn report_drops(&mut self) {
        let n = lock(&self.shared.queue).take_unreported();
        if n > 0 {
            log::warn!(
                "log_forward {}: {} dropped while the collector was away or slow (buffer_bytes {})",
                self.name,
                crate::output::count(n as usize, "record", "records"),
                self.shared.target.buffer_bytes
            );
        }
    }
}
