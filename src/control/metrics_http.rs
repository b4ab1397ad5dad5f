//! `metrics_listen` (docs/status-and-metrics.md): a tiny HTTP/1.x endpoint that answers
//! `GET /metrics` with the Prometheus text exposition. No framework: a request head is
//! read (bounded in size), the metrics come from the main loop over the event channel like
//! any control request, and the connection is closed after the answer.
//!
//! Each connection gets a small short-lived thread, at most `MAX_CONNS` at once (more
//! are closed at once), and one deadline for the whole exchange, not per read: a client
//! dribbling a byte at a time holds one slot for `REQUEST_DEADLINE` at most and never
//! delays anyone else's scrape.

use crate::control::socket::Request;
use crate::supervise::event::Event;
use crossbeam_channel::{bounded, Sender};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 8 * 1024;
/// The whole request, from accept to the last byte of the answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; each costs a thread with a small stack.
const MAX_CONNS: usize = 8;
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub fn serve(addr: SocketAddr, tx: Sender<Event>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    // Descriptor shortage: wait rather than spin.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
                    // Full: closing is all a flood gets (no write that could block).
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let tx = tx.clone();
                let slot = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _ = answer(stream, &tx, Instant::now() + REQUEST_DEADLINE);
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
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

fn answer(mut stream: TcpStream, tx: &Sender<Event>, deadline: Instant) -> io::Result<()> {
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
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (reply_tx, reply_rx) = bounded(1);
            let req = Request {
                cmd: crate::control::socket::Cmd::Metrics,
                service: None,
                lines: None,
                dry_run: false,
                path: None,
                follow: false,
                conn: None,
            };
            if tx.send(Event::Control(req, reply_tx)).is_err() {
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
                    let reply = reply.into_value();
                    let body = reply["metrics"].as_str().unwrap_or("").as_bytes().to_vec();
                    respond(&mut stream, "200 OK", CONTENT_TYPE, &body, with_body)
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
