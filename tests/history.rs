//! Why each run ended (`history[].reason` in `status --json`, and per run in `status
//! NAME`): exits and signals, operators and reloads, the watchdog, and the kernel's
//! OOM killer.

use crate::util::*;
use serde_json::{json, Value};

/// The reasons of `name`'s runs, oldest first (null for a run that runs).
fn reasons(sb: &Sandbox, name: &str) -> Vec<Value> {
    sb.service_status(name)["history"]
        .as_array()
        .map(|h| h.iter().map(|r| r["reason"].clone()).collect())
        .unwrap_or_default()
}

/// Waits until `name` has `n` runs, the last one ended; returns the reasons.
fn wait_ended(sb: &Sandbox, name: &str, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    let ok = wait_until(DEADLINE, || {
        last = reasons(sb, name);
        last.len() == n && last.iter().all(|r| !r.is_null())
    });
    assert!(ok, "{name}: never {n} ended runs: {last:?}");
    last
}

#[test]
fn each_run_says_why_it_ended() {
    let sb = Sandbox::new();
    sb.service("code", "exit 3");
    sb.service("sig", "kill -USR1 $$\nexec sleep 1000");
    sb.service("svc", "exec sleep 1000");
    sb.service("rl", "exec sleep 1000");
    sb.service("off", "exec sleep 1000");
    let services = |rl_args: &[&str], off: bool| {
        json!({
            "code": {"restart": "never"},
            "sig": {"restart": "never"},
            "rl": {"args": rl_args},
            "off": {"enabled": off},
        })
    };
    sb.config(json!({"services_dir": "services"}), services(&[], true));
    let _d = Daemon::start(&sb, &[]);
    assert_eq!(wait_ended(&sb, "code", 1), ["exited with code 3"]);
    assert_eq!(wait_ended(&sb, "sig", 1), ["killed by SIGUSR1"]);
    let first = sb.wait_running("svc", None);
    assert_eq!(reasons(&sb, "svc"), [Value::Null], "null while it runs");
    assert_eq!(sb.cli(&["restart", "svc"]).code, 0);
    sb.wait_running("svc", Some(first));
    assert_eq!(sb.cli(&["stop", "svc"]).code, 0);
    assert_eq!(
        wait_ended(&sb, "svc", 2),
        ["restarted by an operator", "stopped by an operator"]
    );
    sb.wait_running("rl", None);
    sb.wait_running("off", None);
    sb.config(json!({"services_dir": "services"}), services(&["x"], false));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(wait_ended(&sb, "off", 1), ["stopped by reload"]);
    let r = reasons(&sb, "rl");
    assert_eq!(r.first(), Some(&json!("restarted by reload")), "{r:?}");
    // `status NAME` shows each run's reason.
    let out = sb.cli(&["status", "svc"]);
    assert!(out.stdout.contains("last 2 runs:"), "{}", out.stdout);
    assert!(
        out.stdout.contains("  restarted by an operator\n")
            && out.stdout.contains("  stopped by an operator\n"),
        "{}",
        out.stdout
    );
}

/// The watchdog's restart keeps its reason once the new run is up and healthy.
#[test]
fn a_watchdog_restart_stays_explained() {
    let sb = Sandbox::new();
    let runs = sb.path("runs");
    sb.service(
        "hb",
        &format!(
            "echo run >> {runs}\n\
             [ $(wc -l < {runs}) -gt 1 ] || exec sleep 1000\n\
             exec /usr/bin/python3 -c 'import os, socket, time\n\
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
while True:\n    s.sendto(b\"WATCHDOG=1\", os.environ[\"NOTIFY_SOCKET\"]); time.sleep(0.1)'",
            runs = runs.display()
        ),
    );
    sb.config(json!({}), json!({"hb": {"watchdog_ms": 2000}}));
    let _d = Daemon::start(&sb, &[]);
    let first = sb.wait_running("hb", None);
    // A later run, several keep-alive windows old: it stays.
    let mut s = Value::Null;
    let ok = wait_until(DEADLINE, || {
        s = sb.service_status("hb");
        s["pid"].as_i64().is_some_and(|p| p != first)
            && s["state"] == "running"
            && s["uptime"].as_u64() > Some(5_000_000_000)
    });
    assert!(ok, "{s}");
    let r = reasons(&sb, "hb");
    assert_eq!(r.last(), Some(&Value::Null), "{r:?}");
    assert!(r.len() >= 2, "{r:?}");
    for ended in &r[..r.len() - 1] {
        assert_eq!(
            ended, "watchdog timeout (no keep-alive in 2000 ms)",
            "{r:?}"
        );
    }
    let out = sb.cli(&["status", "hb"]);
    assert!(
        out.stdout
            .contains("  watchdog timeout (no keep-alive in 2000 ms)\n"),
        "{}",
        out.stdout
    );
}

/// A service that outgrows its memory_limit is killed by the kernel; its history says
/// so, naming the limit, and `check` says where the count comes from.
#[test]
fn an_oom_kill_is_named_with_the_limit() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: memory cgroups need root");
        return;
    }
    let sb = Sandbox::new();
    sb.service(
        "hog",
        "exec /usr/bin/python3 -c 'x = b\"\\x01\" * (200 << 20); import time; time.sleep(100)'",
    );
    sb.service("plain", "exec sleep 1000");
    let cfg = sb.config(
        json!({"services_dir": "services"}),
        json!({"hog": {"memory_limit": 16, "restart": "never"}, "plain": {"restart": "never"}}),
    );
    let check = sb.cli(&["check", "--config", cfg.to_str().unwrap()]);
    let hog_line = check
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("hog:"))
        .find(|l| l.contains("oom detection"))
        .unwrap_or_default()
        .to_string();
    if !hog_line.contains("oom detection: from") {
        eprintln!("skipped: no OOM kill count can be read here: {hog_line}");
        return;
    }
    if hog_line.contains("memory.oom_control") {
        // cgroup v1: without a memory_limit a service has no memory cgroup to count in.
        let plain_line = check
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("plain:"))
            .find(|l| l.contains("oom detection"))
            .unwrap_or_default();
        assert!(
            plain_line.contains("oom detection: unavailable (")
                && plain_line.ends_with("reads as killed by SIGKILL"),
            "{}",
            check.stdout
        );
    }
    let _d = Daemon::start(&sb, &[]);
    assert_eq!(
        wait_ended(&sb, "hog", 1),
        ["killed by the OOM killer (memory_limit 16 MiB)"]
    );
    let s = sb.service_status("hog");
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["last_exit_code"], 137, "{s}");
    // A SIGKILL from anyone else is only that.
    let pid = sb.wait_running("plain", None);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let r = wait_ended(&sb, "plain", 1);
    assert_eq!(r, ["killed by SIGKILL"]);
}

/// The OOM killer is named for the run it killed only: the same service's next run,
/// killed by a plain SIGKILL, reads as that, though its cgroup counted an OOM kill.
#[test]
fn an_oom_kill_is_named_for_its_own_run_only() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: memory cgroups need root");
        return;
    }
    let sb = Sandbox::new();
    let flag = sb.path("hogged");
    sb.service(
        "hog",
        &format!(
            "test -e {f} && exec sleep 1000\n: > {f}\n\
             exec /usr/bin/python3 -c 'x = b\"\\x01\" * (200 << 20); import time; time.sleep(100)'",
            f = flag.display()
        ),
    );
    let cfg = sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 100}),
        json!({"hog": {"memory_limit": 16, "restart": "always"}}),
    );
    let check = sb.cli(&["check", "--config", cfg.to_str().unwrap()]);
    if !check.stdout.contains("oom detection: from") {
        eprintln!(
            "skipped: no OOM kill count can be read here: {}",
            check.stdout
        );
        return;
    }
    let _d = Daemon::start(&sb, &[]);
    let mut r = Vec::new();
    let restarted = wait_until(DEADLINE, || {
        r = reasons(&sb, "hog");
        r.len() == 2 && r[1].is_null()
    });
    assert!(restarted, "hog never ran again: {r:?}");
    assert_eq!(
        r[0], "killed by the OOM killer (memory_limit 16 MiB)",
        "{r:?}"
    );
    let pid = sb.wait_running("hog", None);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let r = wait_ended(&sb, "hog", 2);
    assert_eq!(
        r,
        [
            "killed by the OOM killer (memory_limit 16 MiB)",
            "killed by SIGKILL"
        ]
    );
}

/// A liveness check that fails restarts the run, and says so; an upgrade replaces the
/// run, and says so.
#[test]
fn health_failures_and_upgrades_are_named() {
    let sb = Sandbox::new();
    let flag = sb.path("sick");
    sb.service("web", "exec sleep 1000");
    sb.service("app", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "web": {"upgrade_grace_ms": 300},
            "app": {"health_check": {"type": "exec", "interval_ms": 100, "failure_threshold": 1,
                                     "command": ["/bin/sh", "-c", format!("test ! -e {}", flag.display())]}},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    let first = sb.wait_running("app", None);
    std::fs::write(&flag, "").unwrap();
    let r = wait_ended(&sb, "app", 1);
    assert!(
        r[0].as_str()
            .is_some_and(|w| w.starts_with("health check failed: ")),
        "{r:?}"
    );
    std::fs::remove_file(&flag).unwrap();
    sb.wait_running("app", Some(first));

    let pid = sb.wait_running("web", None);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let v2 = sb.path("new/web-v2");
    sb.script(&v2, "exec sleep 999");
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    sb.wait_running("web", Some(pid));
    assert_eq!(
        reasons(&sb, "web"),
        [json!("replaced by an upgrade"), Value::Null]
    );
}
