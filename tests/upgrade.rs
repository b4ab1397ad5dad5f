//! `upgrade` and `rollback` (docs/sockets-and-upgrades.md) with a real sd_listen_fds
//! server behind a held socket: no client refused during an upgrade, a failing binary
//! rolled back to the very file that was installed, a late failure restarted normally, one
//! upgrade at a time, the version history and metric, a crash in or after the window
//! settled at the next start, the health gate passed and failed, and stopped services (an
//! upgrade starts one; a rollback, by hand or automatic, leaves one stopped).

use crate::sockets::{ask_tcp, free_port, server_body, Prober};
use crate::util::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// A sandbox with `web` serving v1 on a held socket; returns (sandbox, port, binary).
fn web(grace_ms: u64, orchestrator: serde_json::Value) -> (Sandbox, u16, PathBuf) {
    let sb = Sandbox::new();
    let port = free_port();
    let bin = sb.service("web", &server_body("v1"));
    sb.config(
        orchestrator,
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}],
                       "upgrade_grace_ms": grace_ms}}),
    );
    (sb, port, bin)
}

/// Writes a candidate binary outside the services dir.
fn candidate(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let p = sb.path(&format!("new/{name}"));
    sb.script(&p, body);
    p
}

fn upgrades(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.service_status("web")["upgrades"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_upgrade_refuses_no_connection_and_keeps_a_good_binary() {
    let (sb, port, bin) = web(300, json!({}));
    let old = std::fs::read(&bin).unwrap();
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let prober = Prober::start(port);
    prober.wait_answer_from(pid);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("web: upgraded to sha256 "),
        "{}",
        out.stdout
    );
    let new_pid = sb.wait_running("web", Some(pid));
    prober.wait_answer_from(new_pid);
    prober.finish_refusing_none();
    assert!(ask_tcp(port).unwrap().starts_with("v2 "));
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&v2).unwrap());
    assert_eq!(std::fs::read(bin.with_file_name("web.prev")).unwrap(), old);

    let u = upgrades(&sb);
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(u[0]["result"], "ok");
    let to = u[0]["to"].as_str().unwrap().to_string();
    assert_eq!(sb.service_status("web")["binary"]["sha256"], to.as_str());
    let metrics = sb.cli(&["metrics"]).stdout;
    assert!(
        metrics.contains(&format!(
            "orchestrator_service_info{{service=\"web\",sha256=\"{to}\"}} 1"
        )),
        "{metrics}"
    );

    // The same file again changes nothing; a rollback by hand goes back to v1.
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("already runs this binary"),
        "{}",
        out.stdout
    );
    assert_eq!(sb.service_status("web")["pid"], new_pid);
    let out = sb.cli(&["rollback", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let back = sb.wait_running("web", Some(new_pid));
    assert!(wait_until(DEADLINE, || ask_tcp(port)
        .is_ok_and(|l| l == format!("v1 {back} web"))));
    assert_eq!(std::fs::read(&bin).unwrap(), old);
    assert_eq!(upgrades(&sb).last().unwrap()["result"], "rollback");
    let out = sb.cli(&["rollback", "web"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no previous binary"), "{}", out.stderr);
}

#[test]
fn a_binary_that_exits_at_once_is_rolled_back_to_the_very_file_installed() {
    let (sb, port, bin) = web(2000, json!({"strict_modes": false}));
    // An owner and mode of its own, to see them come back.
    std::os::unix::fs::chown(&bin, Some(1), Some(1)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o750)).unwrap();
    let before = std::fs::metadata(&bin).unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let prober = Prober::start(port);
    prober.wait_answer_from(pid);

    let bad = candidate(&sb, "web-bad", "exit 3");
    let out = sb.cli(&["upgrade", "web", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("rolled back: exited with code 3"),
        "{}",
        out.stderr
    );
    let again = sb.wait_running("web", Some(pid));
    prober.wait_answer_from(again);
    prober.finish_refusing_none();
    assert!(ask_tcp(port).unwrap().starts_with("v1 "));

    let after = std::fs::metadata(&bin).unwrap();
    assert_eq!(std::fs::read(&bin).unwrap(), bytes);
    assert_eq!(
        (after.ino(), after.mode(), after.uid(), after.gid()),
        (before.ino(), before.mode(), before.uid(), before.gid())
    );
    let u = upgrades(&sb);
    assert!(
        u[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: exited with code 3"),
        "{u:?}"
    );

    // Not executable: refused, nothing touched.
    let plain = sb.path("new/plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sb.cli(&["upgrade", "web", plain.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is not executable"), "{}", out.stderr);
    assert_eq!(std::fs::read(&bin).unwrap(), bytes);
}

#[test]
fn a_binary_that_fails_after_the_window_is_restarted_not_rolled_back() {
    let (sb, port, bin) = web(300, json!({}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    // Serves for a second, then exits 3: after its 300 ms window.
    let late = candidate(&sb, "web-late", &format!("{} 1.0", server_body("v2")));
    let out = sb.cli(&["upgrade", "web", late.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first = sb.wait_running("web", Some(pid));
    let second = sb.wait_running("web", Some(first));
    assert!(wait_until(DEADLINE, || ask_tcp(port)
        .is_ok_and(|l| l.starts_with(&format!("v2 {second} ")))));
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&late).unwrap());
    let u = upgrades(&sb);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0]["result"], "ok");
}

#[test]
fn one_upgrade_at_a_time_and_a_rollback_by_hand_ends_the_window() {
    let (sb, _port, bin) = web(20_000, json!({}));
    let old = std::fs::read(&bin).unwrap();
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let first = {
        let (sock, cfg, v2) = (sb.socket(), sb.path("orchestrator.json"), v2.clone());
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("--socket")
                .arg(sock)
                .arg("--config")
                .arg(cfg)
                .arg("upgrade")
                .arg("web")
                .arg(v2);
            run_with_timeout(cmd, DEADLINE)
        })
    };
    sb.wait_running("web", Some(pid));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("upgrade in progress"), "{}", out.stderr);
    let out = sb.cli(&["rollback", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first = first.join().unwrap();
    assert_eq!(first.code, 1);
    assert!(
        first.stderr.contains("rolled back by hand"),
        "{}",
        first.stderr
    );
    assert_eq!(std::fs::read(&bin).unwrap(), old);
}

#[test]
fn a_crash_in_the_window_is_settled_at_the_next_start() {
    let (sb, _port, bin) = web(60_000, json!({"state_dir": "state"}));
    let old = std::fs::read(&bin).unwrap();
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let client = {
        let (sock, cfg, v2) = (sb.socket(), sb.path("orchestrator.json"), v2.clone());
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("--socket")
                .arg(sock)
                .arg("--config")
                .arg(cfg)
                .arg("upgrade")
                .arg("web")
                .arg(v2);
            run_with_timeout(cmd, DEADLINE)
        })
    };
    sb.wait_running("web", Some(pid));
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&v2).unwrap());
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(DEADLINE).is_some());
    assert_ne!(client.join().unwrap().code, 0);
    drop(d);

    let _d = Daemon::start(&sb, &[]);
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        old,
        "the old binary was not put back"
    );
    sb.wait_running("web", None);
    let u = upgrades(&sb);
    assert_eq!(u.len(), 1, "{u:?}");
    assert!(
        u[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: interrupted"),
        "{u:?}"
    );
}

#[test]
fn a_binary_that_never_passes_its_health_check_is_rolled_back() {
    let sb = Sandbox::new();
    let port = free_port();
    std::fs::create_dir_all(sb.path("data")).unwrap();
    let bin = sb.service("web", &format!("touch ready; {}", server_body("v1")));
    sb.config(
        json!({}),
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}],
                       "data_dir": sb.path("data"),
                       "upgrade_grace_ms": 1000,
                       "health_check": {"type": "exec", "command": ["test", "-e", "ready"],
                                        "interval_ms": 100, "initial_delay_ms": 300}}}),
    );
    let old = std::fs::read(&bin).unwrap();
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    // Runs, but never becomes ready.
    let stuck = candidate(&sb, "web-stuck", "rm -f ready; exec sleep 1000");
    let out = sb.cli(&["upgrade", "web", stuck.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "rolled back: not ready within upgrade_grace_ms (1000 ms): health check failed"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&bin).unwrap(), old);
    let back = sb.wait_running("web", Some(pid));
    assert!(wait_until(DEADLINE, || ask_tcp(port)
        .is_ok_and(|l| l.starts_with(&format!("v1 {back} ")))));
}

#[test]
fn a_shutdown_in_the_window_puts_the_old_binary_back() {
    let (sb, _port, bin) = web(60_000, json!({}));
    let old = std::fs::read(&bin).unwrap();
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let client = {
        let (sock, cfg, v2) = (sb.socket(), sb.path("orchestrator.json"), v2.clone());
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("--socket").arg(sock).arg("--config").arg(cfg);
            cmd.arg("upgrade").arg("web").arg(v2);
            run_with_timeout(cmd, DEADLINE)
        })
    };
    sb.wait_running("web", Some(pid));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert!(out.stderr.contains("upgrade in progress"), "{}", out.stderr);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    let out = client.join().unwrap();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("rolled back: orchestrator is shutting down"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&bin).unwrap(), old);
}

/// The runs `web` has had so far.
fn runs(sb: &Sandbox) -> usize {
    sb.service_status("web")["history"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The other half of a rollback by hand: of a stopped service, it puts the old binary
/// back and starts nothing.
#[test]
fn a_rollback_by_hand_of_a_stopped_service_leaves_it_stopped() {
    let (sb, port, bin) = web(300, json!({}));
    let old = std::fs::read(&bin).unwrap();
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let new_pid = sb.wait_running("web", Some(pid));
    assert_eq!(sb.cli(&["stop", "web"]).code, 0);
    sb.wait_state("web", "stopped");
    assert!(wait_until(DEADLINE, || !alive(new_pid)));
    let before = runs(&sb);

    let out = sb.cli(&["rollback", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&bin).unwrap(), old, "the old binary is back");
    assert_eq!(upgrades(&sb).last().unwrap()["result"], "rollback");
    d.wait_log(&["web", "rolled back by hand"]);
    let st = sb.service_status("web");
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(st["pid"].is_null(), "{st}");
    assert_eq!(runs(&sb), before, "a run was started");
    // A start later runs the old binary.
    assert_eq!(sb.cli(&["start", "web"]).code, 0);
    let back = sb.wait_running("web", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {back} web"));
    assert_eq!(runs(&sb), before + 1);
}

/// An automatic rollback of a service an operator stopped within the window puts the
/// old binary back and leaves the service stopped, as the operator asked.
#[test]
fn an_automatic_rollback_of_a_service_stopped_in_its_window_leaves_it_stopped() {
    let (sb, port, bin) = web(20_000, json!({}));
    let old = std::fs::read(&bin).unwrap();
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let client = {
        let (sock, cfg, v2) = (sb.socket(), sb.path("orchestrator.json"), v2.clone());
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("--socket").arg(sock).arg("--config").arg(cfg);
            cmd.arg("upgrade").arg("web").arg(v2);
            run_with_timeout(cmd, DEADLINE)
        })
    };
    let new_pid = sb.wait_running("web", Some(pid));
    assert!(wait_until(DEADLINE, || ask_tcp(port)
        .is_ok_and(|l| l.starts_with(&format!("v2 {new_pid} ")))));
    // The runs so far, the new binary's included: its stop ends it, and nothing else
    // may run until an operator says so.
    let before = runs(&sb);
    assert_eq!(sb.cli(&["stop", "web"]).code, 0);
    let out = client.join().unwrap();
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("upgrade rolled back: stopped within the grace window"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&bin).unwrap(), old, "the old binary is back");
    let st = sb.wait_state("web", "stopped");
    assert!(st["pid"].is_null(), "{st}");
    assert!(wait_until(DEADLINE, || !alive(new_pid)));
    d.wait_log(&["web", "rolled back"]);
    // Nothing was started behind the operator's back, not even for a moment: no run
    // was added, and the log has no start after the rollback.
    assert_eq!(runs(&sb), before, "log:\n{}", d.log_text());
    let log = d.log_lines();
    let at = log.iter().position(|l| l.contains("rolled back")).unwrap();
    assert!(
        !log[at..].iter().any(|l| l.contains("] started")),
        "started after the rollback:\n{}",
        d.log_text()
    );
    assert_eq!(sb.cli(&["start", "web"]).code, 0);
    let back = sb.wait_running("web", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {back} web"));
}

/// The other half of settling a crash: an upgrade that passed its window before the
/// orchestrator died keeps the new binary at the next start.
#[test]
fn a_crash_after_the_window_keeps_the_new_binary() {
    let (sb, port, bin) = web(300, json!({"state_dir": "state"}));
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    sb.wait_running("web", Some(pid));
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(DEADLINE).is_some());
    drop(d);

    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(&v2).unwrap(),
        "a passed upgrade was undone; log:\n{}",
        d.log_text()
    );
    assert_eq!(ask_tcp(port).unwrap(), format!("v2 {pid} web"));
    let u = upgrades(&sb);
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(u[0]["result"], "ok");
}

/// An upgrade of a stopped service starts it on the new binary (and a rollback by
/// hand then leaves it running on the old one).
#[test]
fn an_upgrade_of_a_stopped_service_starts_it() {
    let (sb, port, _bin) = web(300, json!({}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    assert_eq!(sb.cli(&["stop", "web"]).code, 0);
    sb.wait_state("web", "stopped");
    assert!(wait_until(DEADLINE, || !alive(pid)));
    let v2 = candidate(&sb, "web-v2", &server_body("v2"));
    let out = sb.cli(&["upgrade", "web", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let new_pid = sb.wait_running("web", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v2 {new_pid} web"));
    let out = sb.cli(&["rollback", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let back = sb.wait_running("web", Some(new_pid));
    assert!(wait_until(DEADLINE, || ask_tcp(port)
        .is_ok_and(|l| l == format!("v1 {back} web"))));
}

/// The other half of the health gate: a new binary that becomes ready within the
/// window, after a few failed probes of its start-up, is kept.
#[test]
fn a_binary_that_becomes_healthy_within_the_window_is_kept() {
    let sb = Sandbox::new();
    let port = free_port();
    std::fs::create_dir_all(sb.path("data")).unwrap();
    let bin = sb.service("web", &format!("touch ready; {}", server_body("v1")));
    sb.config(
        json!({}),
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}],
                       "data_dir": sb.path("data"),
                       "upgrade_grace_ms": 3000,
                       "health_check": {"type": "exec", "command": ["test", "-e", "ready"],
                                        "interval_ms": 100, "failure_threshold": 1000}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    // Not ready for its first half second: the probes fail, then pass. The old run's
    // marker goes first, so that no probe of the new run can see it.
    let slow = candidate(
        &sb,
        "web-slow",
        &format!("(sleep 0.5; touch ready) & {}", server_body("v2")),
    );
    std::fs::remove_file(sb.path("data/ready")).unwrap();
    let out = sb.cli(&["upgrade", "web", slow.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&slow).unwrap());
    let new_pid = sb.wait_running("web", Some(pid));
    assert_eq!(ask_tcp(port).unwrap(), format!("v2 {new_pid} web"));
    assert_eq!(upgrades(&sb).last().unwrap()["result"], "ok");
}
