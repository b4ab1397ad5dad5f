//! Health checks of type `tcp` and `http` (SPEC 7), run off the main loop on a small,
//! fixed pool of threads fed by a bounded queue: a hundred services probing every
//! 100 ms cannot grow threads or stall supervision. Each probe is bounded by its
//! `timeout_ms`; the result goes back to the main loop as an event. (`exec` checks are
//! processes, so the main loop spawns those itself: see the supervisor.)

use crate::config::{CheckType, HealthCheck};
use crate::supervise::event::Event;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
const QUEUE: usize = 256;
const WORKER_STACK: usize = 128 * 1024;

pub struct Job {
    pub service: Arc<str>,
    pub gen: u64,
    pub check: HealthCheck,
}

/// The probe pool; threads start with the first probe.
pub struct Prober {
    jobs: Option<Sender<Job>>,
    events: Sender<Event>,
}

impl Prober {
    pub fn new(events: Sender<Event>) -> Prober {
        Prober { jobs: None, events }
    }

    /// Queues a probe. False if the queue is full (or no thread could be started).
    pub fn submit(&mut self, job: Job) -> bool {
        if self.jobs.is_none() {
            self.jobs = self.start();
        }
        match &self.jobs {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }

    fn start(&self) -> Option<Sender<Job>> {
        let (tx, rx) = bounded::<Job>(QUEUE);
        let mut started = 0;
        for i in 0..WORKERS {
            let (rx, events) = (rx.clone(), self.events.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("probe-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || worker(rx, events));
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(tx)
    }
}

fn worker(rx: Receiver<Job>, events: Sender<Event>) {
    for job in rx {
        let result = run(&job.check);
        if events
            .send(Event::Probe {
                service: job.service,
                gen: job.gen,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Runs one tcp or http check.
pub fn run(check: &HealthCheck) -> Result<(), String> {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    match check.kind {
        CheckType::Tcp => {
            let addr = check.address.as_deref().unwrap_or("");
            connect(addr, timeout).map(|_| ())
        }
        CheckType::Http => http_get(check.url.as_deref().unwrap_or(""), timeout),
        CheckType::Exec => Err("exec checks are run by the supervisor".into()),
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let sa = resolve(addr)?;
    TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect {addr}: {e}"))
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

/// GET over HTTP/1.1 on a plain TCP stream; a 2xx status passes. The whole exchange
/// is bounded by `timeout`.
fn http_get(url: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let (addr, host, path) = parse_url(url)?;
    let mut stream = connect(&addr, timeout)?;
    let left = || {
        timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    let io = |e: io::Error| format!("GET {url}: {e}");
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
    let line = String::from_utf8_lossy(&head);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {url}: no HTTP status in the answer"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {url}: status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
