//! The hardware watchdog (docs/unattended.md), with a FIFO or a plain file standing in for
//! the device: fed at the interval only while every critical service is running, stopped
//! and resumed with a log line each, disarmed with `V` at a clean shutdown only, a
//! critical service that is not in the config refused, and the critical list a reload
//! gives obeyed (services taken off and put on, and its interval).

use crate::util::*;
use serde_json::json;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every byte read from the FIFO, with when it came; `closed` once the writer closed.
#[derive(Default)]
struct Fed {
    bytes: Vec<(Instant, u8)>,
    closed: bool,
}

/// Makes a FIFO at `path` and reads it on a thread. The read end is opened first,
/// non-blocking, so that the daemon's non-blocking open for writing finds a reader;
/// until a writer comes, poll waits (Linux reports no hang-up on a FIFO that never had
/// a writer).
fn fifo_reader(path: &Path) -> Arc<Mutex<Fed>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open the FIFO for reading");
    let fed = Arc::new(Mutex::new(Fed::default()));
    let out = fed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // Bounded, so that the thread ends with the test even if no writer came.
            if unsafe { libc::poll(&mut pfd, 1, 30_000) } <= 0 {
                break;
            }
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            let now = Instant::now();
            if n == 0 {
                out.lock().unwrap().closed = true;
                break;
            }
            if n > 0 {
                let mut f = out.lock().unwrap();
                f.bytes.extend(buf[..n as usize].iter().map(|b| (now, *b)));
            }
        }
        unsafe { libc::close(fd) };
    });
    fed
}

fn count(fed: &Arc<Mutex<Fed>>) -> usize {
    fed.lock().unwrap().bytes.len()
}

/// The longest pause between two feeds from the last of the first `since` on.
fn longest_gap_after(fed: &Arc<Mutex<Fed>>, since: usize) -> Duration {
    let f = fed.lock().unwrap();
    f.bytes[since.saturating_sub(1)..]
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default()
}

/// A witness that the daemon's clock moved on: a non-critical service whose exec
/// health check, run by the daemon every 100 ms (the watchdog's interval in these
/// tests), appends a byte to a file. Returns its config and the file.
fn ticker(sb: &Sandbox) -> (serde_json::Value, std::path::PathBuf) {
    sb.service("ticker", "exec sleep 1000");
    let ticks = sb.path("ticks");
    let check = json!({"health_check": {"type": "exec", "interval_ms": 100,
        "command": ["/bin/sh", "-c", format!("printf . >> {}", ticks.display())]}});
    (check, ticks)
}

/// Waits until the ticker's check has run `n` more times: `n - 1` whole intervals of
/// the daemon's own timing have passed, however slowly the machine runs.
fn wait_ticks(ticks: &Path, n: u64) {
    let len = || std::fs::metadata(ticks).map_or(0, |m| m.len());
    let from = len();
    assert!(
        wait_until(DEADLINE, || len() >= from + n),
        "the ticker's check stopped running"
    );
}

#[test]
fn fed_only_while_critical_services_run_and_disarmed_at_shutdown() {
    let sb = Sandbox::new();
    let fifo = sb.path("watchdog.fifo");
    let fed = fifo_reader(&fifo);
    let trigger = sb.path("fail-now");
    sb.service("crit", "exec sleep 1000");
    sb.service(
        "once",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; exit 3",
            trigger.display()
        ),
    );
    sb.service("other", "exec sleep 1000");
    let (tick_check, ticks) = ticker(&sb);
    sb.config(
        json!({"services_dir": "services",
               "watchdog": {"device": fifo, "interval_ms": 100, "critical": ["crit", "once"]}}),
        json!({"crit": {"initial_backoff_ms": 1500, "max_backoff_ms": 1500},
               "once": {"restart": "never"},
               "other": {},
               "ticker": tick_check}),
    );
    let mut d = Daemon::start(&sb, &[]);
    sb.wait_running("crit", None);
    sb.wait_running("once", None);

    // Fed at the interval while every critical service runs.
    assert!(
        wait_until(DEADLINE, || count(&fed) >= 6),
        "never fed 6 times"
    );
    {
        let f = fed.lock().unwrap();
        assert!(
            f.bytes.iter().all(|(_, b)| *b != b'V'),
            "disarmed too early"
        );
        for w in f.bytes.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= Duration::from_millis(70),
                "fed faster than the interval: {gap:?}"
            );
        }
    }
    d.wait_log(&["watchdog", "feeding", "every critical service is running"]);
    // A non-critical service going down changes nothing.
    let other = sb.wait_running("other", None);
    unsafe { libc::kill(other as i32, libc::SIGKILL) };
    sb.wait_running("other", Some(other));

    // Restarting is not running: no feed through the 1.5 s backoff, then it resumes.
    let before = count(&fed);
    let crit = sb.wait_running("crit", None);
    unsafe { libc::kill(crit as i32, libc::SIGKILL) };
    d.wait_log(&["watchdog", "not feeding", "crit is restarting"]);
    sb.wait_running("crit", Some(crit));
    let resumed = count(&fed);
    assert!(
        wait_until(DEADLINE, || count(&fed) >= resumed + 3),
        "feeding never resumed"
    );
    let gap = longest_gap_after(&fed, before);
    assert!(
        gap >= Duration::from_millis(1200),
        "fed while crit was restarting (longest pause {gap:?}); log:\n{}",
        d.log_text()
    );

    // Failed is not running either; `start` brings it back, and feeding with it.
    let before = count(&fed);
    std::fs::write(&trigger, "").unwrap();
    sb.wait_state("once", "failed");
    d.wait_log(&["watchdog", "not feeding", "once is failed"]);
    std::fs::remove_file(&trigger).unwrap();
    let stalled = count(&fed);
    // Five intervals by the daemon's own clock: at least four feeds, were it feeding.
    wait_ticks(&ticks, 6);
    assert!(
        count(&fed) <= stalled + 1,
        "fed while once was failed: {} feeds",
        count(&fed) - stalled
    );
    assert_eq!(sb.cli(&["start", "once"]).code, 0);
    sb.wait_running("once", None);
    assert!(
        wait_until(DEADLINE, || count(&fed) >= stalled + 3),
        "feeding never resumed after start"
    );
    let gap = longest_gap_after(&fed, before);
    assert!(
        gap >= Duration::from_millis(400),
        "fed while once was failed (longest pause {gap:?})"
    );
    assert_eq!(
        d.count_log(&["watchdog", "feeding", "every critical service is running"]),
        3,
        "one line each time feeding starts:\n{}",
        d.log_text()
    );

    // A clean shutdown ends with the magic close: `V`, then the device is closed.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    assert!(wait_until(DEADLINE, || fed.lock().unwrap().closed));
    let f = fed.lock().unwrap();
    assert_eq!(f.bytes.last().map(|b| b.1), Some(b'V'), "no magic close");
    assert_eq!(f.bytes.iter().filter(|b| b.1 == b'V').count(), 1);
}

#[test]
fn a_forced_exit_leaves_the_device_armed() {
    let sb = Sandbox::new();
    let device = sb.path("watchdog.dev");
    std::fs::write(&device, "").unwrap();
    sb.service("stubborn", "trap '' TERM; while :; do sleep 0.05; done");
    sb.config(
        json!({"services_dir": "services",
               "watchdog": {"device": device, "interval_ms": 50}}),
        json!({"stubborn": {"stop_timeout_ms": 10000}}),
    );
    let mut d = Daemon::start(&sb, &[]);
    // A plain file stands in too: no critical service, so it is fed from the start.
    let size = || std::fs::metadata(&device).map_or(0, |m| m.len());
    assert!(wait_until(DEADLINE, || size() >= 3), "plain file never fed");
    sb.wait_running("stubborn", None);
    d.signal(libc::SIGTERM);
    d.wait_log(&["shutting down"]);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(1));
    let bytes = std::fs::read(&device).unwrap();
    assert!(!bytes.contains(&b'V'), "disarmed after a forced exit");
}

#[test]
fn a_critical_service_not_in_the_config_is_a_configuration_error() {
    let sb = Sandbox::new();
    let device = sb.path("watchdog.dev");
    std::fs::write(&device, "").unwrap();
    sb.service("web", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services",
               "watchdog": {"device": device, "critical": ["web", "nosuch"]}}),
        json!({}),
    );
    let mut d = Daemon::spawn(&sb, &[], &[]);
    assert_eq!(d.wait_exit(DEADLINE), Some(2));
    assert!(
        d.log_text()
            .contains("orchestrator.watchdog.critical: unknown service `nosuch`"),
        "{}",
        d.log_text()
    );
    assert_eq!(std::fs::metadata(&device).unwrap().len(), 0, "fed anyway");
    let check = sb.cli(&["check"]);
    assert_eq!(check.code, 2, "{}", check.stderr);
    sb.config(
        json!({"services_dir": "services",
               "watchdog": {"device": device, "critical": ["web"]}}),
        json!({}),
    );
    let check = sb.cli(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check
            .stdout
            .contains("fed every 10000 ms while running: web"),
        "{}",
        check.stdout
    );
}

/// The critical list after a reload is the new one: a service taken off it no longer
/// stops the feeding when it fails, one put on it does, and taking a failed service
/// off resumes the feeding at once, at the reloaded interval.
#[test]
fn a_reload_replaces_the_critical_list_and_the_interval() {
    let sb = Sandbox::new();
    let fifo = sb.path("watchdog.fifo");
    let fed = fifo_reader(&fifo);
    let (fail_a, fail_b) = (sb.path("fail-a"), sb.path("fail-b"));
    for (name, trigger) in [("a", &fail_a), ("b", &fail_b)] {
        sb.service(
            name,
            &format!(
                "while [ ! -e {} ]; do sleep 0.05; done; exit 3",
                trigger.display()
            ),
        );
    }
    let (tick_check, ticks) = ticker(&sb);
    let config = |critical: &[&str], interval_ms: u64| {
        sb.config(
            json!({"services_dir": "services",
                   "watchdog": {"device": fifo, "interval_ms": interval_ms, "critical": critical}}),
            json!({"a": {"restart": "never"}, "b": {"restart": "never"}, "ticker": tick_check}),
        )
    };
    config(&["a"], 100);
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("a", None);
    sb.wait_running("b", None);
    assert!(wait_until(DEADLINE, || count(&fed) >= 3), "never fed");

    // A list naming an unknown service is refused, at a reload as at start.
    config(&["b", "nosuch"], 100);
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("orchestrator.watchdog.critical: unknown service `nosuch`"),
        "{}",
        out.stderr
    );

    config(&["b"], 100);
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Taken off: its failure changes nothing.
    std::fs::write(&fail_a, "").unwrap();
    sb.wait_state("a", "failed");
    let now = count(&fed);
    assert!(
        wait_until(DEADLINE, || count(&fed) >= now + 5),
        "a was taken off the critical list, yet its failure stopped the feeding:\n{}",
        d.log_text()
    );
    assert_eq!(d.count_log(&["watchdog", "not feeding"]), 0);

    // Put on: its failure stops the feeding.
    std::fs::write(&fail_b, "").unwrap();
    sb.wait_state("b", "failed");
    d.wait_log(&["watchdog", "not feeding", "b is failed"]);
    let stalled = count(&fed);
    wait_ticks(&ticks, 6);
    assert!(
        count(&fed) <= stalled + 1,
        "fed while b, now critical, was failed: {} feeds",
        count(&fed) - stalled
    );

    // Taken off while it blocks: the reload itself resumes the feeding, at the
    // interval that reload gives. Counted, not timed: however late the reader sees
    // them, no more feeds can have come since the reload than that interval allows.
    config(&[], 400);
    let reloaded = Instant::now();
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        wait_until(DEADLINE, || count(&fed) >= stalled + 4),
        "feeding never resumed once b was no longer critical"
    );
    let since = count(&fed) - stalled;
    let allowed = (reloaded.elapsed().as_millis() / 400) as usize + 2;
    assert!(
        since <= allowed,
        "{since} feeds in {:?}: not at the reloaded interval",
        reloaded.elapsed()
    );
    assert_eq!(sb.service_status("b")["state"], "failed");
}
