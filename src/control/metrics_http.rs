//! `metrics_listen` (docs/status-and-metrics.md): a tiny HTTP/1.x endpoint that answers
//! `GET /metrics` with the Prometheus text exposition. No framework: a request head is
//! read (bounded in size), the metrics come from the main loop over the event channel like
//! any control request, and the connection is closed after the answer.
//!
//! Each connection gets a small short-lived thread, at most `MAX_CONNS` at once, and one
//! deadline for the whole exchange, not per read: a client dribbling a byte at a time
//! holds one slot for `REQUEST_DEADLINE` at most. Idle connections (no whole request
//! yet) never starve a scrape: when every slot is taken, the oldest idle connection is
//! closed to make room for the new one, and one peer (address) holds at most
//! `MAX_PER_PEER` slots, its own oldest idle one closed first. Only when every slot is
//! busy answering is a new connection closed at once.

use crate::common::event::Event;
use crate::common::protocol::{Cmd, Request};
use crate::control::socket::Call;
use crossbeam_channel::{bounded, Sender};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 8 * 1024;
/// The whole request, from accept to the last byte of the answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; each costs a thread with a small stack.
const MAX_CONNS: usize = 8;
/// Connections one peer address holds at once.
const MAX_PER_PEER: usize = 4;

/// A connection being served, as the acceptor sees it.
struct Held {
    id: u64,
    peer: IpAddr,
    /// A second handle on the socket, to close it from the acceptor.
    handle: TcpStream,
    /// No whole request head has come yet.
    idle: Arc<AtomicBool>,
}

/// Closes the oldest idle connection that `pick` selects; false if there is none.
fn evict(held: &mut Vec<Held>, pick: impl Fn(&Held) -> bool) -> bool {
    let Some(at) = held
        .iter()
        .position(|h| pick(h) && h.idle.load(Ordering::Acquire))
    else {
        return false;
    };
    let h = held.remove(at);
    // Its thread's read ends at once; its slot is free from now on.
    let _ = h.handle.shutdown(Shutdown::Both);
    true
}

/// Makes room for a connection from `peer`: false if it must be closed instead.
fn admit(held: &mut Vec<Held>, peer: IpAddr) -> bool {
    if held.iter().filter(|h| h.peer == peer).count() >= MAX_PER_PEER
        && !evict(held, |h| h.peer == peer)
    {
        return false;
    }
    held.len() < MAX_CONNS || evict(held, |_| true)
}
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub fn serve<A: From<Call> + Send + 'static>(
    addr: SocketAddr,
    tx: Sender<Event<A>>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let held: Arc<Mutex<Vec<Held>>> = Arc::default();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut next_id = 0u64;
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    // Descriptor shortage: wait rather than spin.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                // Closing is all a connection that finds no room gets (no write that
                // could block).
                let (Ok(peer), Ok(handle)) = (stream.peer_addr(), stream.try_clone()) else {
                    continue;
                };
                next_id += 1;
                let (id, idle) = (next_id, Arc::new(AtomicBool::new(true)));
                {
                    let Ok(mut held) = held.lock() else {
                        return;
                    };
                    if !admit(&mut held, peer.ip()) {
                        continue;
                    }
                    held.push(Held {
                        id,
                        peer: peer.ip(),
                        handle,
                        idle: idle.clone(),
                    });
                }
                let tx = tx.clone();
                let table = held.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _ = answer(stream, &tx, Instant::now() + REQUEST_DEADLINE, &idle);
                        if let Ok(mut held) = table.lock() {
                            held.retain(|h| h.id != id);
                        }
                    });
                if spawned.is_err() {
                    if let Ok(mut held) = held.lock() {
                        held.retain(|h| h.id != id);
                    }
                }
            }
        })?;
    Ok(bound)
}

/// Sets the socket's timeouts to what is left until `deadline` (an error once passed).
fn until(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

fn answer<A: From<Call>>(
    mut stream: TcpStream,
    tx: &Sender<Event<A>>,
    deadline: Instant,
    idle: &AtomicBool,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        until(&stream, deadline)?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                true,
            );
        }
    }
    idle.store(false, Ordering::Release);
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (reply_tx, reply_rx) = bounded(1);
            if tx
                .send(Event::Above(
                    Call(Request::new(Cmd::Metrics), reply_tx).into(),
                ))
                .is_err()
            {
                return respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"shutting down\n",
                    with_body,
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match reply_rx.recv_timeout(left) {
                Ok(reply) => {
                    let body = reply.into_response().metrics.unwrap_or_default();
                    respond(
                        &mut stream,
                        "200 OK",
                        CONTENT_TYPE,
                        body.as_bytes(),
                        with_body,
                    )
                }
                Err(_) => respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"timed out\n",
                    with_body,
                ),
            }
        }
        ("GET" | "HEAD", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"try /metrics\n",
            with_body,
        ),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            with_body,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    with_body: bool,
) -> io::Result<()> {
    // The write timeout is what was left of the deadline at the last read; the answer
    // (a few KiB) fits the socket's buffer, so a client that does not read cannot
    // hold us here either.
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()
}
