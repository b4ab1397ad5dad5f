//! Signals the daemon gets (the README's signal list): the named ones keep their
//! meaning, SIGUSR1 reopens every log file for logrotate, and no stray signal ends the
//! daemon or, through it, its services.

use crate::util::*;
use serde_json::json;

fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// Sends `sig` to the daemon and waits for a log line with all of `parts` beyond the
/// `before` ones already there; then the daemon and the service are as they were.
fn survives(d: &Daemon, sb: &Sandbox, sleeper: i64, sig: i32, parts: &[&str]) {
    let before = d.count_log(parts);
    d.signal(sig);
    if !parts.is_empty() {
        let ok = wait_until(DEADLINE, || d.count_log(parts) > before);
        assert!(
            ok,
            "signal {sig}: no line with {parts:?}; log:\n{}",
            d.log_text()
        );
    }
    assert!(alive(d.pid.into()), "signal {sig} ended the daemon");
    assert_eq!(sb.service_status("sleeper")["pid"], sleeper, "signal {sig}");
    assert_eq!(
        sb.service_status("sleeper")["state"],
        "running",
        "signal {sig}"
    );
}

#[test]
fn no_stray_signal_ends_the_daemon_or_its_services() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    let sleeper = sb.wait_running("sleeper", None);
    let me = format!("from pid {}", std::process::id());
    survives(&d, &sb, sleeper, libc::SIGHUP, &["reloaded"]);
    survives(&d, &sb, sleeper, libc::SIGUSR1, &["log files reopened"]);
    // Ignored without a word; the next logged signal shows the daemon went on.
    for sig in [libc::SIGPIPE, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT] {
        survives(&d, &sb, sleeper, sig, &[]);
        survives(&d, &sb, sleeper, libc::SIGHUP, &["reloaded"]);
    }
    let stray = [
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTSTP, "SIGTSTP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGPWR, "SIGPWR"),
        (sigrtmin() + 3, "SIGRTMIN+3"),
    ];
    for (sig, name) in stray {
        survives(&d, &sb, sleeper, sig, &[&format!("{name} {me} ignored")]);
    }
    // The last real-time signal too: the handled range ends at SIGRTMAX, inclusive.
    let last = format!("SIGRTMIN+{} {me} ignored", libc::SIGRTMAX() - sigrtmin());
    survives(&d, &sb, sleeper, libc::SIGRTMAX(), &[&last]);
    // A fault signal another process sends is a message, not a fault.
    let faults = [
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGSYS, "SIGSYS"),
        (libc::SIGABRT, "SIGABRT"),
    ];
    for (sig, name) in faults {
        survives(
            &d,
            &sb,
            sleeper,
            sig,
            &[&format!("{name} {me} ignored"), "sent by another process"],
        );
    }
    // Twice in a row, after std's own SIGSEGV handler has had its say: still ignored.
    survives(&d, &sb, sleeper, libc::SIGSEGV, &[]);
    survives(&d, &sb, sleeper, libc::SIGHUP, &["reloaded"]);
    assert_eq!(sb.cli(&["status"]).code, 0);
}

#[test]
fn sigquit_shuts_down_cleanly() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({"sleeper": {}}));
    let mut d = Daemon::start(&sb, &[]);
    let sleeper = sb.wait_running("sleeper", None);
    d.signal(libc::SIGQUIT);
    assert_eq!(d.wait_exit(DEADLINE), Some(0), "{}", d.log_text());
    assert!(d.log_text().contains("SIGQUIT received: shutting down"));
    assert!(!alive(sleeper));
}

/// logrotate's `create` mode with `log_max_bytes: 0` (our own rotation off): the files
/// are renamed away, SIGUSR1 follows, and new lines go to fresh files (0640) while the
/// renamed ones keep the old lines, none lost in between.
#[test]
fn sigusr1_reopens_every_log_file_for_logrotate() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.service(
        "talker",
        "i=0\nwhile :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done",
    );
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 0}),
        json!({"talker": {}}),
    );
    let d = start_detached(&sb, &sb.path("d.pid"));
    let pid = d.pid;
    let talker = sb.wait_running("talker", None);
    let read =
        |name: &str| std::fs::read_to_string(sb.path(&format!("logs/{name}"))).unwrap_or_default();
    let numbers = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| {
                l.rsplit_once("stdout: line ")
                    .and_then(|(_, n)| n.parse().ok())
            })
            .collect()
    };
    // No rotation of our own: the file only grows.
    assert!(wait_until(DEADLINE, || numbers(&read("talker.log")).len() >= 20));
    assert!(!sb.path("logs/talker.log.1").exists());
    assert!(!sb.path("logs/orchestrator.log.1").exists());
    for name in ["talker.log", "orchestrator.log"] {
        std::fs::rename(
            sb.path(&format!("logs/{name}")),
            sb.path(&format!("logs/{name}.1")),
        )
        .unwrap();
    }
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(
        wait_until(DEADLINE, || read("orchestrator.log")
            .contains("log files reopened")),
        "no fresh orchestrator.log; the old one:\n{}",
        read("orchestrator.log.1")
    );
    assert!(read("orchestrator.log.1").contains("SIGUSR1 received"));
    assert!(wait_until(DEADLINE, || numbers(&read("talker.log")).len() >= 10));
    let old = numbers(&read("talker.log.1"));
    let new = numbers(&read("talker.log"));
    // The renamed file keeps its lines and takes no more; none is lost in between.
    assert_eq!(old.first(), Some(&1));
    assert_eq!(
        old.last().map(|n| n + 1),
        new.first().copied(),
        "{old:?} {new:?}"
    );
    assert_eq!(numbers(&read("talker.log.1")), old);
    for name in ["talker.log", "orchestrator.log"] {
        let mode = std::fs::metadata(sb.path(&format!("logs/{name}")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{name}");
    }
    assert_eq!(sb.service_status("talker")["pid"], talker);
    assert!(alive(pid.into()));
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
}

/// Where a sent fault signal or terminal signal can land: only on the signals thread,
/// which every other thread leaves it to. On any other thread a sent SIGSEGV could
/// interrupt a thread starting up inside std's own lock, and hang the daemon.
#[test]
fn fault_and_terminal_signals_reach_the_signals_thread_only() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("sleeper", None);
    // A client connection starts a thread too: its mask is checked with the others.
    assert_eq!(sb.cli(&["status"]).code, 0);
    let routed = [
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGABRT,
    ];
    let bits: u64 = routed.iter().map(|s| 1u64 << (s - 1)).sum();
    let mut threads = 0;
    let mut signals_thread = false;
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid)).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let Some(blocked) = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        else {
            continue;
        };
        threads += 1;
        if comm.trim() == "signals" {
            signals_thread = true;
            assert_eq!(blocked & bits, 0, "the signals thread blocks {blocked:x}");
        } else {
            assert_eq!(
                blocked & bits,
                bits,
                "thread {} leaves some of them unblocked: {blocked:x}",
                comm.trim()
            );
        }
    }
    assert!(signals_thread, "no signals thread among {threads}");
    assert!(threads > 2, "{threads} threads");
}
