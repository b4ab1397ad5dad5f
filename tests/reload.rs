//! Reload as a transaction: invalid config changes nothing; a valid one starts, stops,
//! restarts or updates each service as needed, and leaves the rest alone.

use crate::util::*;
use serde_json::json;

#[test]
fn reload_applies_each_kind_of_change() {
    let sb = Sandbox::new();
    for n in ["keep", "tune", "change", "drop", "disable"] {
        sb.service(n, "exec sleep 1000");
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({"change": {"args": ["a"]}}),
    );
    let d = Daemon::start(&sb, &[]);
    let pid = |n: &str| sb.wait_running(n, None);
    let (keep, tune, change) = (pid("keep"), pid("tune"), pid("change"));
    pid("drop");
    pid("disable");
    // New config: one added, one removed (binary deleted, not configured), one disabled,
    // one with new args, one with only a new restart policy.
    std::fs::remove_dir_all(sb.path("services/drop")).unwrap();
    sb.service("added", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "change": {"args": ["b"]},
            "tune": {"restart": "on-failure", "stop_timeout_ms": 100},
            "disable": {"enabled": false},
        }),
    );
    let out = sb.cli(&["reload", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.stdout;
    for line in [
        "added: start",
        "change: restart",
        "disable: stop",
        "drop: stop",
        "keep: unchanged",
        "tune: update",
    ] {
        assert!(
            plan.lines().any(|l| l == line),
            "missing `{line}` in:\n{plan}"
        );
    }
    // Dry run changed nothing.
    assert_eq!(sb.service_status("change")["pid"], change);
    assert!(sb.status().iter().all(|s| s["name"] != "added"));

    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    sb.wait_running("added", None);
    let new_change = sb.wait_running("change", Some(change));
    assert_ne!(new_change, change);
    assert_eq!(sb.service_status("keep")["pid"], keep);
    assert_eq!(sb.service_status("tune")["pid"], tune);
    sb.wait_state("disable", "stopped");
    assert!(wait_until(DEADLINE, || sb
        .status()
        .iter()
        .all(|s| s["name"] != "drop")));
    d.wait_log(&["reloaded:"]);
}

#[test]
fn invalid_reload_keeps_the_old_config() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("svc", None);
    sb.write_config("{\"orchestrator\": {\"services_dri\": \"x\"}}");
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("did you mean `services_dir`"),
        "{}",
        out.stderr
    );
    d.wait_log(&["reload failed, keeping the current configuration"]);
    assert_eq!(sb.service_status("svc")["pid"], pid);
    // SIGHUP with the broken file: logged, nothing changes.
    d.signal(libc::SIGHUP);
    assert!(wait_until(DEADLINE, || d.count_log(&["reload failed"]) >= 2));
    assert_eq!(sb.service_status("svc")["pid"], pid);
}

#[test]
fn sighup_reloads() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    sb.service("late", "exec sleep 1000");
    d.signal(libc::SIGHUP);
    sb.wait_running("late", None);
    d.wait_log(&["reloaded: late: start"]);
}

#[test]
fn reload_starts_a_service_whose_binary_appeared() {
    let sb = Sandbox::new();
    sb.config(json!({"services_dir": "services"}), json!({"later": {}}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_state("later", "failed");
    sb.service("later", "exec sleep 1000");
    let out = sb.cli(&["reload"]);
    assert!(out.stdout.contains("later: start"), "{}", out.stdout);
    sb.wait_running("later", None);
}

#[test]
fn reload_leaves_a_stopped_service_stopped() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    assert_eq!(sb.cli(&["stop", "svc"]).code, 0);
    let out = sb.cli(&["reload"]);
    assert!(out.stdout.contains("svc: unchanged"), "{}", out.stdout);
    assert_eq!(sb.service_status("svc")["state"], "stopped");
}
