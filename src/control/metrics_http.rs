//! `metrics_listen` (SPEC 9): a tiny HTTP/1.x endpoint on one thread that answers
//! `GET /metrics` with the Prometheus text exposition. No framework: a request head is
//! read (bounded in size and time), the metrics come from the main loop over the event
//! channel like any control request, and the connection is closed after the answer.
//! Requests are served one at a time; a slow client costs others at most the timeout.

use crate::control::socket::Request;
use crate::supervise::event::Event;
use crossbeam_channel::{bounded, Sender};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const MAX_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub fn serve(addr: SocketAddr, tx: Sender<Event>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let _ = answer(stream, &tx);
                    }
                    // Descriptor shortage: wait rather than spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, tx: &Sender<Event>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
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
                cmd: "metrics".into(),
                service: None,
                lines: None,
                dry_run: false,
                path: None,
                follow: false,
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
            match reply_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(reply) => {
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
