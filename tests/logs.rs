//! `logs` as an operator uses it (docs/cli.md, docs/logs.md): lifecycle events among a
//! service's lines and in its log file, `logs -f` following new lines without ever slowing
//! the service, and a run's own last lines before its `exited` record.

use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Regression: lifecycle events were only on the daemon's stderr, not in `logs` and
/// not in the service's log file.
#[test]
fn lifecycle_events_stand_among_the_lines_in_logs_and_the_log_file() {
    let sb = Sandbox::new();
    sb.service("crash", "echo about to fail; exit 3");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "initial_backoff_ms": 100,
               "max_restart_attempts": 1}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_state("crash", "failed");
    let out = sb.cli(&["logs", "crash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout;
    for what in [
        "started",
        "exited with code 3",
        "restarting in",
        "about to fail",
    ] {
        assert!(text.contains(what), "`{what}` in logs:\n{text}");
    }
    // Marked as events: the event's name stands where a stream would.
    assert!(text.contains("] exited: exited with code 3"), "{text}");
    let file = std::fs::read_to_string(sb.path("logs/crash.log")).unwrap();
    for what in [
        "started",
        "exited with code 3",
        "restarting in",
        "about to fail",
    ] {
        assert!(file.contains(what), "`{what}` in the log file:\n{file}");
    }
}

fn follow(sb: &Sandbox, service: &str) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(sb.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = json!({"cmd": "logs", "service": service, "lines": 5, "follow": true});
    writeln!(s, "{req}").unwrap();
    BufReader::new(s)
}

fn next(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

#[test]
fn logs_follow_prints_new_lines_as_they_come() {
    let sb = Sandbox::new();
    sb.service(
        "tick",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["tick[", "stdout: tick 3"]);
    let mut r = follow(&sb, "tick");
    let first = next(&mut r);
    assert_eq!(first["ok"], true, "{first}");
    let kept: Vec<String> = first["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["msg"].as_str().unwrap_or("").to_string())
        .collect();
    let last_kept: u64 = kept
        .iter()
        .rev()
        .find_map(|m| m.strip_prefix("tick ").and_then(|n| n.parse().ok()))
        .expect("tick lines kept");
    // The lines that follow continue the count exactly: nothing lost or repeated
    // between the kept lines and the stream.
    let mut expect = last_kept + 1;
    while expect < last_kept + 6 {
        let m = next(&mut r);
        let msg = m["line"]["msg"].as_str().unwrap_or("").to_string();
        if let Some(n) = msg.strip_prefix("tick ") {
            assert_eq!(n.parse::<u64>().unwrap(), expect, "{m}");
            expect += 1;
        }
    }
    // Through the CLI as well: `logs NAME -f` keeps printing.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["logs", "tick", "-n", "1", "-f", "--socket"])
        .arg(sb.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let end = Instant::now() + DEADLINE;
    let mut line = String::new();
    while seen < 4 && Instant::now() < end {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("tick[") && line.contains("stdout: tick ") {
            seen += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, 4, "the follower printed new lines");
}

#[test]
fn a_follower_that_does_not_read_loses_lines_and_is_told_the_service_never_waits() {
    let sb = Sandbox::new();
    // It floods once its follower is attached (`go` appears), then says so (`done`).
    let (go, done) = (sb.path("go"), sb.path("done"));
    sb.service(
        "flood",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; seq 1 1000000; touch {}; exec sleep 1000",
            go.display(),
            done.display()
        ),
    );
    // Stdout lines stay off the daemon's stderr (info < error): only the follower and
    // the counters see them.
    sb.config(
        json!({"services_dir": "services", "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("flood", None);
    let mut r = follow(&sb, "flood");
    assert_eq!(next(&mut r)["ok"], true);
    std::fs::write(&go, "").unwrap();
    // The service writes everything while its follower reads nothing.
    assert!(
        wait_until(Duration::from_secs(60), || done.exists()),
        "the service was held up by its follower"
    );
    let mut dropped = 0;
    let mut lines = 0;
    let end = Instant::now() + DEADLINE;
    while dropped == 0 && Instant::now() < end {
        let m = next(&mut r);
        if let Some(n) = m["dropped"].as_u64() {
            dropped = n;
        } else if m.get("line").is_some() {
            lines += 1;
        } else {
            break;
        }
    }
    assert!(
        dropped > 0,
        "dropped lines are said ({lines} lines came first)"
    );
    let counted = "orchestrator_log_lines_total{service=\"flood\",stream=\"stdout\"} 1000000";
    assert!(
        wait_until(DEADLINE, || sb.cli(&["metrics"]).stdout.contains(counted)),
        "every line reached the log path"
    );
}

/// Regression: a run's `exited` record could come before its own last line.
#[test]
fn a_runs_last_lines_come_before_its_exited_record() {
    let sb = Sandbox::new();
    sb.service("last", "echo one; echo two >&2; printf 'three'; exit 7");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 0, "max_backoff_ms": 0,
               "max_restart_attempts": 20}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_state("last", "failed");
    // The records reach the log through the writer thread: wait for the last one.
    let mut log = Vec::new();
    wait_until(DEADLINE, || {
        log = d.log_lines();
        log.iter()
            .filter(|l| l.contains("last[") && l.contains("exited with code 7"))
            .count()
            >= 21
    });
    let mut runs = 0;
    let mut pending: Option<String> = None;
    for l in &log {
        if !l.contains("last[") {
            continue;
        }
        let pid = l.split("last[").nth(1).and_then(|r| r.split(']').next());
        if l.contains("stdout: three") {
            pending = pid.map(String::from);
        }
        if l.contains("exited with code 7") {
            assert_eq!(
                pending.take().as_deref(),
                pid,
                "run {runs}: last line first\n{l}"
            );
            runs += 1;
        }
    }
    assert_eq!(runs, 21, "every run checked");
}

/// With `--daemon`, the daemon's own log keeps `log_max_bytes` within one line: a
/// service that floods short lines makes the log writer hand over megabytes at once,
/// and no `orchestrator.log*` may grow past the cap by more than a line.
#[test]
fn the_daemon_log_cap_holds_per_line_under_a_flood() {
    let sb = Sandbox::new();
    sb.service(
        "flood",
        "yes | head -n 300000\necho flood-done\nexec sleep 1000",
    );
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 100_000,
               "log_max_files": 50}),
        json!({}),
    );
    let _d = start_detached(&sb, &sb.path("d.pid"));
    let log = || std::fs::read_to_string(sb.path("logs/orchestrator.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || log().contains("flood-done")),
        "the flood never ended"
    );
    let mut files = 0;
    for e in std::fs::read_dir(sb.path("logs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("orchestrator.log") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let longest = text.lines().map(|l| l.len() + 1).max().unwrap_or(0);
        assert!(
            text.len() <= 100_000 + longest,
            "{name}: {} bytes, lines of at most {longest}",
            text.len()
        );
        files += 1;
    }
    assert!(
        files > 5,
        "only {files} log files: the flood did not rotate"
    );
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
}
