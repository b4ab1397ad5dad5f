//! The control socket (docs/control-protocol.md): a Unix stream socket, one JSON request
//! per line, one JSON reply per line. One thread accepts; each connection gets a
//! short-lived thread that checks the peer, reads bounded requests with a timeout, hands
//! each to the main loop over the event channel and writes back the answer.
//!
//! Nothing a client does can block the main loop or another client: requests are size-
//! and time-bounded here, connections are capped, and the main loop only ever sees a
//! parsed `Request`.

use crate::common::event::Event;
pub use crate::common::protocol::{Cmd, Request};
use crate::common::protocol::{Response, Streamed};
use crossbeam_channel::{bounded, Sender};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more are refused with an error reply.
const MAX_CONNECTIONS: usize = 64;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the main loop may take to answer (a stop waits for the service to stop).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const CONN_STACK: usize = 128 * 1024;
/// Pause after a failed accept() (descriptor or memory shortage).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A request and where its answer goes: what a control connection hands the main loop,
/// inside its event (`common::event`) as news from above.
pub struct Call(pub Request, pub Sender<Reply>);

/// The main loop's answer: ready, or work to finish on the connection's own thread
/// (hashing binaries, reading /proc), so that the loop never does that work itself.
pub enum Reply {
    Ready(Response),
    Finish(Box<dyn FnOnce() -> Response + Send>),
    /// `logs -f`: the first answer, then every new line until the client or the service
    /// goes (see `follow`).
    Follow(Response, crate::output::reader::Follow),
    /// The answer will be written by someone else, on a duplicate of the connection
    /// (`upgrade-self`'s new image): the connection's thread writes nothing and ends.
    Handed,
}

impl Reply {
    /// The answer, finishing it here if it was left to finish.
    pub fn into_response(self) -> Response {
        match self {
            Reply::Ready(v) | Reply::Follow(v, _) => v,
            Reply::Finish(f) => f(),
            Reply::Handed => Response::default(),
        }
    }
}

impl From<Response> for Reply {
    fn from(v: Response) -> Reply {
        Reply::Ready(v)
    }
}

pub fn error_reply(msg: impl Into<String>) -> Response {
    Response::error(msg)
}

/// One request line as a client sent it; the error is the reply's message.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| {
        let msg = e.to_string();
        // serde's "unknown variant `x`, expected one of ..." is about `cmd`, the only
        // enum of the request.
        match msg.strip_prefix("unknown variant `") {
            Some(rest) => {
                let bad = rest.split('`').next().unwrap_or("");
                format!("unknown command `{bad}`")
            }
            None => format!("malformed request: {msg}"),
        }
    })
}

/// Starts the accept thread. `reserve` is a descriptor held back (see `open_reserve`).
pub fn serve<A: From<Call> + Send + 'static>(
    listener: UnixListener,
    tx: Sender<Event<A>>,
    reserve: Option<std::fs::File>,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("control".into())
        .stack_size(CONN_STACK)
        .spawn(move || {
            let mut reserve = reserve;
            loop {
                // Off the listener while `upgrade-self` hands over (`pause.rs`).
                super::pause::wait_listener(listener.as_raw_fd());
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if out_of_descriptors(&e) && reserve.is_some() => {
                        reserve = None;
                        log::warn!("control: out of file descriptors; using the reserve");
                        continue;
                    }
                    Err(e) => {
                        // EMFILE/ENFILE/ENOMEM fail at once and would fail again at
                        // once: wait a little instead of spinning. Only errors wait.
                        log::warn!("control: accept failed: {e}");
                        std::thread::sleep(ACCEPT_RETRY);
                        reserve = reserve.or_else(open_reserve);
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    refuse(stream, "too many control connections");
                    continue;
                }
                let tx = tx.clone();
                let guard = ActiveGuard(active.clone());
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let _guard = guard;
                        serve_conn(stream, &tx);
                    });
                if let Err(e) = spawned {
                    log::warn!("control: cannot serve a connection: {e}");
                }
                reserve = reserve.or_else(open_reserve);
            }
        })
        .map(|_| ())
}

/// One descriptor held in reserve: when the process runs out, it is given up to accept
/// a client, so `status` still answers on a box at its limit. Opened first thing, so it
/// has a low number and is below any limit the process can reach.
pub fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Requests handed to the main loop whose replies are not written yet. The answer to
/// `shutdown` is sent just before the main loop starts stopping everything; if it has
/// nothing to stop, the process could exit before the connection thread wrote it, and
/// the client would see the connection close unanswered.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// At exit, once the main loop has stopped: waits (at most `timeout`) until every
/// reply it gave has been written. Requests it never answered fail at once, as their
/// reply channels are gone with it.
pub fn drain(timeout: Duration) {
    let end = std::time::Instant::now() + timeout;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse(mut stream: UnixStream, msg: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = writeln!(stream, "{}", error_reply(msg));
}

/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-parameters sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

fn serve_conn<A: From<Call>>(stream: UnixStream, tx: &Sender<Event<A>>) {
    let me = nix::unistd::geteuid().as_raw();
    match peer_uid(&stream) {
        Some(uid) if uid == 0 || uid == me => {}
        other => {
            log::warn!(
                "control: refused a client with uid {}",
                other.map_or("unknown".to_string(), |u| u.to_string())
            );
            refuse(stream, "permission denied");
            return;
        }
    }
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    // Both halves borrow the one descriptor: a duplicate would cost a second fd, and
    // failing to get it while descriptors run short would drop an unread request,
    // which resets the client instead of answering it.
    let mut writer = &stream;
    let mut reader = BufReader::with_capacity(4096, &stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return, // timeout or reset: an abandoned client
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let msg = if line.len() > MAX_REQUEST {
                format!("request too large (limit {MAX_REQUEST} bytes)")
            } else {
                "request must end with a newline".to_string()
            };
            let _ = writeln!(writer, "{}", error_reply(msg));
            return;
        }
        let mut req = match parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(writer, "{}", error_reply(e));
                return;
            }
        };
        let shutdown = req.cmd == Cmd::Shutdown;
        req.conn = Some(stream.as_raw_fd());
        let (reply_tx, reply_rx) = bounded(1);
        let in_flight = InFlight::enter();
        if tx.send(Event::Above(Call(req, reply_tx).into())).is_err() {
            let _ = writeln!(writer, "{}", error_reply("orchestrator is shutting down"));
            return;
        }
        let reply = match reply_rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(Reply::Follow(first, f)) => {
                drop(in_flight);
                if writeln!(writer, "{first}").is_ok() {
                    follow(&stream, f);
                }
                return;
            }
            Ok(Reply::Handed) => return,
            Ok(r) => r.into_response(),
            Err(_) => error_reply("operation timed out"),
        };
        let written = writeln!(writer, "{reply}").is_ok();
        drop(in_flight);
        if !written {
            return;
        }
        if shutdown {
            // Hold the connection until the process exits: the client's EOF means
            // the orchestrator is gone.
            let _ = stream.set_read_timeout(None);
            let mut sink = [0u8; 64];
            while matches!(reader.get_mut().read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
    }
}

/// Streams a follower's lines (`{"line": {...}}` each, `{"dropped": N}` when it lost
/// some) until the client goes or the service is removed. Only this connection's thread
/// waits here; the service and the loop never wait for it.
fn follow(stream: &UnixStream, f: crate::output::reader::Follow) {
    FOLLOWING.fetch_add(1, Ordering::SeqCst);
    let _following = Following;
    let mut writer = std::io::BufWriter::new(stream);
    let mut reported = 0;
    loop {
        let batch = match f.rx.recv_timeout(IDLE_TIMEOUT) {
            Ok(b) => Some(b),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                // Ended by `upgrade-self` (the exec ends this thread): say so.
                if crate::process::wake::handover().is_up() {
                    let msg = "orchestrator re-executed onto a new binary: follow again";
                    let _ = writeln!(writer, "{}", error_reply(msg));
                    let _ = writer.flush();
                }
                return;
            }
        };
        let dropped = f.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let msg = Streamed {
                dropped: Some(dropped - reported),
                ..Streamed::default()
            };
            if writeln!(writer, "{msg}").is_err() {
                return;
            }
            reported = dropped;
        }
        match batch {
            Some(b) => {
                f.taken(&b);
                for l in &b.lines {
                    let msg = Streamed {
                        line: Some(b.log_line(l)),
                        ..Streamed::default()
                    };
                    if writeln!(writer, "{msg}").is_err() {
                        return;
                    }
                }
            }
            // Quiet for a while: find out whether the client is still there.
            None if client_gone(stream) => return,
            None => {}
        }
        // Write what came in one go; more may be waiting already.
        if f.rx.is_empty() && writer.flush().is_err() {
            return;
        }
    }
}

/// `logs -f` streams being written.
static FOLLOWING: AtomicUsize = AtomicUsize::new(0);

struct Following;

impl Drop for Following {
    fn drop(&mut self) {
        FOLLOWING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (at most `bound`, looking every 5 ms) until every `logs -f` stream has ended:
/// `upgrade-self` ends them (their services' rings let go of them) and waits here so
/// that each client gets its last lines and the reason before the exec.
pub fn wait_followers(bound: Duration) {
    let end = std::time::Instant::now() + bound;
    while FOLLOWING.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client closed its end (a read would return end of file at once).
fn client_gone(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: pfd is valid for the call; a zero timeout never blocks.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
