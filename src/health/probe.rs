//! Health checks of type `tcp`, `http` and `grpc` (docs/health.md), run off the main loop.
//! Each check gets its own short-lived thread with a small stack, bounded by its
//! `timeout_ms` (name resolution aside), and its result goes back to the main loop as an
//! event. A service has at most one check in flight: one whose checks hang only delays
//! itself, never another service's check (a shared pool of four did: eight hung
//! services delayed everyone's by seconds). `MAX_IN_FLIGHT` bounds the threads of all
//! services together. (`exec` checks are processes, so the main loop spawns those
//! itself: see the supervisor.)

use crate::config::{CheckType, HealthCheck};
use crate::supervise::event::Event;
use crossbeam_channel::Sender;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Checks in flight at once, all services together.
const MAX_IN_FLIGHT: usize = 256;
/// Enough for name resolution through the C library; only touched pages cost memory.
const PROBE_STACK: usize = 128 * 1024;

pub struct Job {
    pub service: Arc<str>,
    pub gen: u64,
    pub check: HealthCheck,
}

/// Starts checks, one thread each.
pub struct Prober {
    events: Sender<Event>,
    /// The services with a check in flight.
    in_flight: Arc<Mutex<HashSet<Arc<str>>>>,
}

impl Prober {
    pub fn new(events: Sender<Event>) -> Prober {
        Prober {
            events,
            in_flight: Arc::default(),
        }
    }

    /// Starts a check. False if this service's previous check has not finished, if
    /// `MAX_IN_FLIGHT` are running, or if no thread could be started.
    pub fn submit(&mut self, job: Job) -> bool {
        {
            let Ok(mut set) = self.in_flight.lock() else {
                return false;
            };
            if set.len() >= MAX_IN_FLIGHT || !set.insert(job.service.clone()) {
                return false;
            }
        }
        let (events, in_flight) = (self.events.clone(), self.in_flight.clone());
        let service = job.service.clone();
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .stack_size(PROBE_STACK)
            .spawn(move || {
                let result = run(&job.check);
                if let Ok(mut set) = in_flight.lock() {
                    set.remove(&job.service);
                }
                let _ = events.send(Event::Probe {
                    service: job.service,
                    gen: job.gen,
                    result,
                });
            });
        if spawned.is_err() {
            if let Ok(mut set) = self.in_flight.lock() {
                set.remove(&service);
            }
            return false;
        }
        true
    }
}

/// Runs one tcp, http or grpc check.
pub fn run(check: &HealthCheck) -> Result<(), String> {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    match check.kind {
        CheckType::Tcp => {
            let addr = check.address.as_deref().unwrap_or("");
            connect(addr, timeout).map(|_| ())
        }
        CheckType::Http => http_get(check.url.as_deref().unwrap_or(""), timeout),
        CheckType::Grpc => super::grpc::check(
            check.address.as_deref().unwrap_or(""),
            &check.grpc_service,
            timeout,
        ),
        CheckType::Exec => Err("exec checks are run by the supervisor".into()),
    }
}

/// Numbers and `localhost` are resolved here, without the C library: a static build
/// (`make static`) has no NSS to ask, and these are what health checks mostly name.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Some(port) = addr
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let sa = resolve(addr)?;
    TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| format!("connect {addr}: {}", io_reason(&e, timeout)))
}

/// An I/O error as a check reports it: a timeout says how long it waited (the OS's
/// "Resource temporarily unavailable" says nothing to an operator).
fn io_reason(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out after {} ms", timeout.as_millis())
        }
        _ => e.to_string(),
    }
}

/// `http://host[:port]/path` into (host:port, host, path).
pub fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), path.to_string()))
}

/// GET over HTTP/1.1 on a plain TCP stream; a 2xx status passes, anything else fails
/// (redirects are not followed), and so does an answer whose first line is not an
/// HTTP status line. The whole exchange is bounded by `timeout`.
fn http_get(url: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let (addr, host, path) = parse_url(url)?;
    let mut stream = connect(&addr, timeout)?;
    let left = || {
        timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    let io = |e: io::Error| format!("GET {url}: {}", io_reason(&e, timeout));
    stream.set_write_timeout(Some(left())).map_err(io)?;
    // One write: a server that answers after the first segment must see it all.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: orchestrator-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream.set_read_timeout(Some(left())).map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = status_code(&head)
        .ok_or_else(|| format!("GET {url}: not an HTTP answer (no `HTTP/1.x NNN` status line)"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {url}: status {status}"))
    }
}

/// The code of an `HTTP/x.y NNN reason` status line at the start of `head`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/")?;
    let at = rest.iter().position(|&b| b == b' ')?;
    let code = rest.get(at + 1..at + 4)?;
    let after = rest.get(at + 4).copied();
    if !code.iter().all(u8::is_ascii_digit) || !matches!(after, None | Some(b' ' | b'\r')) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hung_checks_of_one_service_do_not_delay_another() {
        // Eight services whose servers accept and never answer, each with a 3 s timeout.
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung_addr = hung.local_addr().unwrap();
        let ok = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ok_addr = ok.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut prober = Prober::new(tx);
        let check = |url: String| HealthCheck {
            kind: CheckType::Http,
            command: vec![],
            address: None,
            url: Some(url),
            grpc_service: String::new(),
            interval_ms: 1000,
            timeout_ms: 3000,
            failure_threshold: 1,
            initial_delay_ms: 0,
        };
        for i in 0..8 {
            assert!(prober.submit(Job {
                service: format!("hung{i}").into(),
                gen: 1,
                check: check(format!("http://{hung_addr}/")),
            }));
        }
        // The same service cannot pile up checks.
        assert!(!prober.submit(Job {
            service: "hung0".into(),
            gen: 1,
            check: check(format!("http://{hung_addr}/")),
        }));
        let tcp = HealthCheck {
            kind: CheckType::Tcp,
            address: Some(ok_addr.to_string()),
            url: None,
            ..check(String::new())
        };
        let started = Instant::now();
        assert!(prober.submit(Job {
            service: "fine".into(),
            gen: 1,
            check: tcp,
        }));
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let Event::Probe {
            service, result, ..
        } = first
        else {
            panic!("not a probe result");
        };
        assert_eq!(&*service, "fine");
        assert_eq!(result, Ok(()));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        drop((hung, ok));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"),
            Some(302)
        );
        assert_eq!(status_code(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_code(b"FOO 200 OK\r\n"), None);
        assert_eq!(status_code(b"200 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/healthz").unwrap(),
            (
                "127.0.0.1:8080".into(),
                "127.0.0.1:8080".into(),
                "/healthz".into()
            )
        );
        assert_eq!(parse_url("http://example").unwrap().0, "example:80");
        assert_eq!(parse_url("http://h:1").unwrap().2, "/");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn tcp_and_http_against_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for (i, conn) in l.incoming().take(2).enumerate() {
                let mut s = conn.unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let status = if i == 0 { "200 OK" } else { "503 Busy" };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let check = |url: String| HealthCheck {
            kind: CheckType::Http,
            command: vec![],
            address: None,
            url: Some(url),
            grpc_service: String::new(),
            interval_ms: 1000,
            timeout_ms: 2000,
            failure_threshold: 1,
            initial_delay_ms: 0,
        };
        assert_eq!(run(&check(format!("http://{addr}/ok"))), Ok(()));
        let e = run(&check(format!("http://{addr}/busy"))).unwrap_err();
        assert!(e.contains("status 503"), "{e}");
        server.join().unwrap();
        // Nobody listens any more.
        let tcp = HealthCheck {
            kind: CheckType::Tcp,
            address: Some(addr.to_string()),
            url: None,
            ..check(String::new())
        };
        assert!(run(&tcp).is_err());
    }

    #[test]
    fn only_2xx_answers_pass_an_http_check() {
        let answers = [
            (199, false),
            (200, true),
            (299, true),
            (300, false),
            (399, false),
        ];
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for ((code, _), conn) in answers.iter().zip(l.incoming()) {
                let mut s = conn.unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        for (code, passes) in answers {
            let check = HealthCheck {
                kind: CheckType::Http,
                command: vec![],
                address: None,
                url: Some(format!("http://{addr}/")),
                grpc_service: String::new(),
                interval_ms: 1000,
                timeout_ms: 2000,
                failure_threshold: 1,
                initial_delay_ms: 0,
            };
            let r = run(&check);
            if passes {
                assert_eq!(r, Ok(()), "{code}");
            } else {
                let e = r.unwrap_err();
                assert!(e.ends_with(&format!(": status {code}")), "{code}: {e}");
            }
        }
        server.join().unwrap();
    }
}
