//! Lifecycle races found by a randomized run, each with its minimal config:
//! a stop during backoff with a running dependent, a dependent added by a reload, and a
//! reload that would restart a service while an operator's stop of it is under way.

use crate::util::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// A client command with a bound of its own (the default deadline is far longer).
fn cli_within(sb: &Sandbox, args: &[&str], bound: Duration) -> (Output, Duration) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(sb.socket())
        .arg("--config")
        .arg(sb.path("orchestrator.json"))
        .args(args);
    let t = Instant::now();
    let out = run_with_timeout(cmd, bound);
    (out, t.elapsed())
}

/// Positions of the first daemon log line with each of `parts`' entries.
fn first_line(d: &Daemon, parts: &[&str]) -> usize {
    d.log_lines()
        .iter()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no log line with {parts:?}; log:\n{}", d.log_text()))
}

#[test]
fn stop_during_backoff_with_a_running_dependent_returns() {
    let sb = Sandbox::new();
    sb.config(
        json!({}),
        json!({
            "base": {"binary_path": "/bin/sh", "args": ["-c", "sleep 0.5; exit 3"],
                     "pass_service_args": false, "restart": "always",
                     "initial_backoff_ms": 5000, "max_backoff_ms": 10000},
            "dependent": {"binary_path": "/bin/sleep", "args": ["100000"],
                          "pass_service_args": false, "depends_on": ["base"]},
        }),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_state("base", "restarting");
    let dep = sb.wait_running("dependent", None);
    let (out, took) = cli_within(&sb, &["stop", "base"], Duration::from_secs(10));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert!(out.stdout.contains("base: stopped"), "{}", out.stdout);
    assert!(!alive(dep));
    for n in ["base", "dependent"] {
        assert_eq!(sb.service_status(n)["state"], "stopped", "{n}");
    }
    // The backoff's deadline passes and nothing starts again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.count_log(&["base", "] started"]), 1, "{}", d.log_text());
    for n in ["base", "dependent"] {
        assert_eq!(sb.service_status(n)["state"], "stopped", "{n}");
    }
}

#[test]
fn dependent_added_by_reload_is_stopped_first() {
    let sb = Sandbox::new();
    let stamp = sb.path("terms");
    sb.service(
        "db",
        &format!(
            "trap 'echo db >> {f}; exit 0' TERM; while :; do sleep 0.02; done",
            f = stamp.display()
        ),
    );
    sb.service("mid", "trap 'exit 0' TERM; while :; do sleep 0.02; done");
    sb.service(
        "app",
        &format!(
            "trap 'echo app >> {f}' TERM; while :; do sleep 0.02; done",
            f = stamp.display()
        ),
    );
    let services = |app_deps: &[&str]| {
        json!({
            "db": {},
            "mid": {"depends_on": ["db"]},
            "app": {"stop_timeout_ms": 1000, "depends_on": app_deps},
        })
    };
    sb.config(json!({"services_dir": "services"}), services(&[]));
    let d = Daemon::start(&sb, &[]);
    for n in ["db", "mid", "app"] {
        sb.wait_running(n, None);
    }
    let app = sb.service_status("app")["pid"].as_i64().unwrap();
    assert_eq!(sb.cli(&["stop", "mid"]).code, 0);
    sb.config(json!({"services_dir": "services"}), services(&["mid"]));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("app: update"), "{}", out.stdout);
    assert_eq!(sb.service_status("app")["pid"].as_i64(), Some(app));

    let (out, took) = cli_within(&sb, &["stop", "db"], Duration::from_secs(10));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // app ignores SIGTERM: db goes only after app's stop timeout.
    assert!(took >= Duration::from_millis(900), "stop db took {took:?}");
    assert!(!alive(app), "app still runs after `stop db`");
    assert_eq!(sb.service_status("app")["state"], "stopped");
    assert_eq!(sb.service_status("db")["state"], "stopped");
    let terms = std::fs::read_to_string(&stamp).unwrap_or_default();
    assert_eq!(terms.lines().collect::<Vec<_>>(), ["app", "db"]);
    assert!(
        first_line(&d, &["app[", "sending SIGKILL"]) < first_line(&d, &["db[", "stopping"]),
        "{}",
        d.log_text()
    );
}

#[test]
fn reload_during_an_operators_stop_keeps_it_a_stop() {
    let sb = Sandbox::new();
    sb.service("app", "trap '' TERM; while :; do sleep 0.02; done");
    let services = |v: &str| json!({"app": {"stop_timeout_ms": 1500, "environment": {"V": v}}});
    sb.config(json!({"services_dir": "services"}), services("1"));
    let d = Daemon::start(&sb, &[]);
    let app = sb.wait_running("app", None);
    let stopper = {
        let (socket, config) = (sb.socket(), sb.path("orchestrator.json"));
        std::thread::spawn(move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("--socket").arg(socket).arg("--config").arg(config);
            cmd.args(["stop", "app"]);
            run_with_timeout(cmd, Duration::from_secs(10))
        })
    };
    d.wait_log(&["app[", "stopping"]);
    sb.config(json!({"services_dir": "services"}), services("2"));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = stopper.join().expect("the stop client");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("app: stopped"), "{}", out.stdout);
    assert!(!alive(app));
    // It stays stopped: nothing starts it again behind the operator's back.
    std::thread::sleep(Duration::from_millis(500));
    let st = sb.service_status("app");
    assert_eq!(st["state"], "stopped", "{st}");
    assert_eq!(d.count_log(&["app[", "] started"]), 1, "{}", d.log_text());
    // The new environment applies at the next start.
    assert_eq!(sb.cli(&["start", "app"]).code, 0);
    let pid = sb.wait_running("app", None);
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&env).contains("V=2"));
}

/// Found by `make chaos`: a `stop` of a service that a reload is removing (its stop
/// under way ends in removal, which no other stop overrides) spun the loop for ever.
#[test]
fn stop_of_a_service_being_removed_returns() {
    let sb = Sandbox::new();
    // Given by binary_path, not discovered: a reload that drops it removes it.
    std::fs::create_dir_all(sb.path("progs")).unwrap();
    sb.script(
        &sb.path("progs/slow"),
        "trap '' TERM; while :; do sleep 0.02; done",
    );
    sb.script(&sb.path("progs/other"), "while :; do sleep 0.02; done");
    let svc =
        |n: &str| json!({"binary_path": sb.path(&format!("progs/{n}")), "stop_timeout_ms": 1000});
    sb.config(
        json!({}),
        json!({"slow": svc("slow"), "other": svc("other")}),
    );
    let d = Daemon::start(&sb, &[]);
    let slow = sb.wait_running("slow", None);
    sb.config(json!({}), json!({"other": svc("other")}));
    let reload = {
        let (socket, config) = (sb.socket(), sb.path("orchestrator.json"));
        std::thread::spawn(move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("--socket").arg(socket).arg("--config").arg(config);
            cmd.arg("reload");
            run_with_timeout(cmd, Duration::from_secs(10))
        })
    };
    d.wait_log(&["slow[", "stopping"]);
    let (out, took) = cli_within(&sb, &["stop", "slow"], Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(3),
        "stop took {took:?}: {}",
        d.log_text()
    );
    assert!(
        out.code == 0 || out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    assert_eq!(reload.join().expect("the reload client").code, 0);
    assert!(!alive(slow));
    // The daemon still answers, and the service is gone.
    let (out, took) = cli_within(&sb, &["status", "--json"], Duration::from_secs(5));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(took < Duration::from_secs(1), "status took {took:?}");
    assert!(!out.stdout.contains("\"slow\""), "{}", out.stdout);
}
