//! The watched services directory (docs/watching.md), with real files and the real
//! binary: a dropped directory runs within the settle time and a second, a binary copied
//! in slowly starts only once whole, a removed directory stops, a new version renamed
//! over the binary is upgraded and a broken one rolled back (a held socket refusing no
//! connection throughout) and never put back over a newer one, a symlinked directory,
//! a binary rewritten in place with no previous version, a burst
//! of a thousand changes starting each service once on its last version, and (as root)
//! a binary or a whole directory planted by another user refused, and a sidecar or a
//! drop-in changed (or broken) applied as a reload of what it touches; a stopped service
//! is not started by a new binary, the same bytes renamed over are no upgrade, a binary
//! whose link is gone is upgraded with nothing to go back to (and a stale `NAME.prev` is
//! never put back over a file rewritten in place), and watching turned off by a reload
//! acts on nothing; after `upgrade-self`, a rename over is an upgrade from what runs; an
//! `upgrade` by hand is no news to the watcher.

use crate::sockets::{ask_tcp, free_port, server_body, Prober};
use crate::util::*;
use serde_json::json;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::{Duration, Instant};

const SETTLE_MS: u64 = 400;

fn watched(sb: &Sandbox, services: serde_json::Value) {
    sb.config(
        json!({"watch_services_dir": true, "watch_settle_ms": SETTLE_MS}),
        services,
    );
}

/// `name`'s status, or null while the daemon does not know it.
fn status_of(sb: &Sandbox, name: &str) -> serde_json::Value {
    sb.status()
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or(serde_json::Value::Null)
}

fn upgrades(sb: &Sandbox, name: &str) -> Vec<serde_json::Value> {
    sb.service_status(name)["upgrades"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A whole service directory prepared beside `services` and renamed into it.
fn drop_service(sb: &Sandbox, name: &str, body: &str) {
    let staged = sb.path(&format!("staging/{name}"));
    std::fs::create_dir_all(&staged).unwrap();
    sb.script(&staged.join(name), body);
    std::fs::rename(&staged, sb.path(&format!("services/{name}"))).unwrap();
}

/// `body` renamed over `services/NAME/NAME`, the way OTA tools install a file.
fn rename_over(sb: &Sandbox, name: &str, body: &str) {
    let tmp = sb.path(&format!("services/{name}/.{name}.new"));
    sb.script(&tmp, body);
    std::fs::rename(&tmp, sb.path(&format!("services/{name}/{name}"))).unwrap();
}

#[test]
fn a_dropped_directory_runs_within_the_settle_time_and_a_removed_one_stops() {
    let sb = Sandbox::new();
    watched(&sb, json!({}));
    let d = Daemon::start(&sb, &[]);
    let t0 = Instant::now();
    drop_service(&sb, "dropped", "exec sleep 1000");
    let ok = wait_until(Duration::from_millis(SETTLE_MS + 1000), || {
        status_of(&sb, "dropped")["state"] == "running"
    });
    assert!(
        ok,
        "not running {:?} after the drop: {}\n{}",
        t0.elapsed(),
        status_of(&sb, "dropped"),
        d.log_text()
    );
    let pid = sb.service_status("dropped")["pid"].as_i64().unwrap();
    assert!(
        sb.path("services/dropped/.dropped.running").exists(),
        "no link to the running binary"
    );

    // A symlink to a directory is a service directory too, as for discovery.
    let elsewhere = sb.path("elsewhere/linked");
    std::fs::create_dir_all(&elsewhere).unwrap();
    sb.script(&elsewhere.join("linked"), "exec sleep 1000");
    std::os::unix::fs::symlink(&elsewhere, sb.path("services/linked")).unwrap();
    sb.wait_running("linked", None);

    std::fs::remove_dir_all(sb.path("services/dropped")).unwrap();
    assert!(
        wait_until(DEADLINE, || status_of(&sb, "dropped").is_null()
            && !alive(pid)),
        "still there after its directory was removed: {}",
        status_of(&sb, "dropped")
    );

    // A removed NAME/NAME of a configured service stops it too.
    sb.service("kept", "exec sleep 1000");
    sb.config(
        json!({"watch_services_dir": true, "watch_settle_ms": SETTLE_MS}),
        json!({"kept": {}}),
    );
    assert_eq!(sb.cli(&["reload"]).code, 0);
    let pid = sb.wait_running("kept", None);
    std::fs::remove_file(sb.path("services/kept/kept")).unwrap();
    sb.wait_state("kept", "stopped");
    assert!(!alive(pid));
}

#[test]
fn a_binary_copied_in_slowly_starts_only_once_the_copy_is_done() {
    let sb = Sandbox::new();
    watched(&sb, json!({}));
    let _d = Daemon::start(&sb, &[]);
    let dir = sb.path("services/slow");
    std::fs::create_dir_all(&dir).unwrap();
    // Executable from its first byte; what would run half-written exits at once.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(dir.join("slow"))
        .unwrap();
    f.write_all(b"#!/bin/sh\n").unwrap();
    let chunk = format!("# {}\n", "x".repeat(64 * 1024));
    for _ in 0..8 {
        f.write_all(chunk.as_bytes()).unwrap();
        f.flush().unwrap();
        // Pauses shorter than the settle time: nothing starts meanwhile.
        std::thread::sleep(Duration::from_millis(SETTLE_MS / 2));
        let s = status_of(&sb, "slow");
        assert!(s.is_null(), "started during the copy: {s}");
    }
    f.write_all(b"exec sleep 1000\n").unwrap();
    drop(f);
    sb.wait_running("slow", None);
    let runs = sb.service_status("slow")["history"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(runs, 1, "started more than once");
}

#[test]
fn a_version_renamed_over_is_upgraded_and_a_broken_one_rolled_back() {
    let sb = Sandbox::new();
    let port = free_port();
    let bin = sb.service("web", &server_body("v1"));
    watched(
        &sb,
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}],
                       "upgrade_grace_ms": 600}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let prober = Prober::start(port);
    prober.wait_answer_from(pid);

    rename_over(&sb, "web", &server_body("v2"));
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "web").len() == 1),
        "no upgrade recorded"
    );
    let u = upgrades(&sb, "web");
    assert_eq!(u[0]["result"], "ok", "{u:?}");
    assert_ne!(u[0]["from"], u[0]["to"]);
    let v2 = sb.wait_running("web", Some(pid));
    prober.wait_answer_from(v2);
    assert!(ask_tcp(port).unwrap().starts_with("v2 "));
    let prev = bin.with_file_name("web.prev");
    assert!(std::fs::read_to_string(&prev).unwrap().contains("v1"));

    rename_over(&sb, "web", "exit 3");
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "web").len() == 2),
        "no second upgrade recorded"
    );
    let u = upgrades(&sb, "web");
    let result = u[1]["result"].as_str().unwrap();
    assert!(result.starts_with("rolled back: "), "{u:?}");
    assert_eq!(u[1]["from"], u[0]["to"], "{u:?}");
    let back = sb.wait_running("web", Some(v2));
    prober.wait_answer_from(back);
    prober.finish_refusing_none();
    assert!(ask_tcp(port).unwrap().starts_with("v2 "));
    assert!(std::fs::read_to_string(&bin).unwrap().contains("v2"));
    // The daemon's own renames are no news: nothing more happens.
    std::thread::sleep(Duration::from_millis(SETTLE_MS * 2));
    assert_eq!(upgrades(&sb, "web").len(), 2);
    assert_eq!(sb.service_status("web")["pid"], back);
}

#[test]
fn a_rollback_never_puts_the_old_binary_over_a_newer_one() {
    let sb = Sandbox::new();
    let out = sb.path("out");
    let body = |v: &str, then: &str| format!("echo {v} > {}\n{then}", out.display());
    let bin = sb.service("swap", &body("v1", "exec sleep 1000"));
    watched(&sb, json!({"swap": {"upgrade_grace_ms": 1500}}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("swap", None);
    let says = |v: &str| std::fs::read_to_string(&out).is_ok_and(|s| s.trim() == v);
    assert!(wait_until(DEADLINE, || says("v1")));
    rename_over(&sb, "swap", &body("bad", "sleep 1; exit 3"));
    assert!(
        wait_until(DEADLINE, || says("bad")),
        "the new binary never ran"
    );
    // Within its window, a newer version arrives: the failing one is not undone over it.
    rename_over(&sb, "swap", &body("v3", "exec sleep 1000"));
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "swap").len() == 2
            && upgrades(&sb, "swap")[1]["result"] == "ok"),
        "{:?}",
        upgrades(&sb, "swap")
    );
    let u = upgrades(&sb, "swap");
    let first = u[0]["result"].as_str().unwrap();
    assert!(
        first.contains("was replaced since the upgrade began"),
        "{u:?}"
    );
    assert_eq!(u[1]["from"], u[0]["to"], "{u:?}");
    assert!(says("v3"));
    assert!(std::fs::read_to_string(&bin).unwrap().contains("v3"));
    assert_eq!(sb.service_status("swap")["state"], "running");
}

#[test]
fn a_binary_rewritten_in_place_fails_with_no_previous_binary() {
    let sb = Sandbox::new();
    let bin = sb.service("inplace", "exec sleep 1000");
    // An older version, left by some earlier upgrade: no previous version of this file.
    let stale = bin.with_file_name("inplace.prev");
    sb.script(&stale, "exec sleep 2000");
    watched(&sb, json!({"inplace": {"upgrade_grace_ms": 500}}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("inplace", None);
    // The same inode, another content (a script can be rewritten while it runs).
    std::fs::write(&bin, "#!/bin/sh\nexit 4\n").unwrap();
    let s = sb.wait_state("inplace", "failed");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no previous binary")),
        "{s}"
    );
    assert!(!alive(pid));
    let u = upgrades(&sb, "inplace");
    assert_eq!(u.len(), 1, "{u:?}");
    assert!(std::fs::read_to_string(&bin).unwrap().contains("exit 4"));
    assert!(stale.exists(), "the older version was put back");
}

#[test]
fn a_burst_of_a_thousand_changes_starts_each_service_once_on_its_last_version() {
    let sb = Sandbox::new();
    watched(&sb, json!({}));
    let _d = Daemon::start(&sb, &[]);
    let names: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    for version in 0..50 {
        for n in &names {
            let out = sb.path(&format!("out-{n}"));
            let body = format!("echo {version} > {}\nexec sleep 1000", out.display());
            if version == 0 {
                drop_service(&sb, n, &body);
            } else {
                rename_over(&sb, n, &body);
            }
        }
    }
    for n in &names {
        sb.wait_running(n, None);
        let out = sb.path(&format!("out-{n}"));
        assert!(
            wait_until(DEADLINE, || std::fs::read_to_string(&out)
                .is_ok_and(|v| v.trim() == "49")),
            "{n} does not run its last version"
        );
    }
    // Once settled, nothing more: each ran once.
    std::thread::sleep(Duration::from_millis(SETTLE_MS * 2));
    for n in &names {
        let s = sb.service_status(n);
        let runs = s["history"].as_array().map_or(0, Vec::len);
        assert_eq!(runs, 1, "{n} started {runs} times: {s}");
    }
}

#[test]
fn as_root_a_binary_planted_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to plant a file owned by another user");
        return;
    }
    let sb = Sandbox::new();
    sb.service("planted", "exec sleep 1000");
    watched(&sb, json!({}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("planted", None);
    let tmp = sb.path("services/planted/.planted.new");
    sb.script(&tmp, "exec sleep 2000");
    std::os::unix::fs::chown(&tmp, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::rename(&tmp, sb.path("services/planted/planted")).unwrap();
    d.wait_log(&["planted", "refusing"]);
    assert_eq!(sb.service_status("planted")["pid"], pid);
    assert!(upgrades(&sb, "planted").is_empty());

    // A whole directory planted by another user is refused too.
    let staged = sb.path("staging/intruder");
    std::fs::create_dir_all(&staged).unwrap();
    sb.script(&staged.join("intruder"), "exec sleep 1000");
    for p in [staged.join("intruder"), staged.clone()] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    std::fs::rename(&staged, sb.path("services/intruder")).unwrap();
    let s = sb.wait_state("intruder", "failed");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{s}"
    );
    assert!(s["pid"].is_null(), "{s}");
}

/// A sidecar or a drop-in changed under a watched `services_dir` is a reload of what it
/// touches, with no `reload` asked for: the service whose settings changed restarts
/// onto them, the others keep their pids; a sidecar broken meanwhile keeps the running
/// settings and says why in `last_error`; a drop-in adds a service.
#[test]
fn a_changed_sidecar_or_drop_in_is_a_reload_of_what_it_touches() {
    let sb = Sandbox::new();
    let dir = sb.dir.display().to_string();
    sb.service(
        "side",
        &format!("echo \"$@\" > {dir}/side.args; exec sleep 1000"),
    );
    sb.service("other", "exec sleep 1000");
    watched(&sb, json!({}));
    let d = Daemon::start(&sb, &[]);
    let side = sb.wait_running("side", None);
    let other = sb.wait_running("other", None);

    let sidecar = sb.path("services/side/service.json");
    std::fs::write(&sidecar, r#"{"args": ["from-the-sidecar"]}"#).unwrap();
    let restarted = sb.wait_running("side", Some(side));
    let ok = wait_until(DEADLINE, || {
        std::fs::read_to_string(sb.path("side.args"))
            .is_ok_and(|a| a.trim().ends_with(" from-the-sidecar"))
    });
    assert!(
        ok,
        "the sidecar's args were not applied: {:?}\n{}",
        std::fs::read_to_string(sb.path("side.args")),
        d.log_text()
    );
    assert_eq!(
        sb.service_status("other")["pid"],
        other,
        "another service restarted"
    );

    // Broken while running: the service keeps what it runs and says why.
    std::fs::write(&sidecar, "{\"args\": 5}").unwrap();
    let ok = wait_until(Duration::from_millis(SETTLE_MS + 3000), || {
        sb.service_status("side")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("service.json:1:"))
    });
    assert!(ok, "{}\n{}", sb.service_status("side"), d.log_text());
    let s = sb.service_status("side");
    assert_eq!(
        (s["pid"].clone(), s["state"].clone()),
        (json!(restarted), json!("running"))
    );

    // A drop-in beside the config file adds a service.
    let confd = sb.path("conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    let extra = json!({"services": {"extra": {"binary_path": "/bin/sleep", "args": ["1000"]}}});
    std::fs::write(confd.join("10-extra.json"), extra.to_string()).unwrap();
    let ok = wait_until(Duration::from_millis(SETTLE_MS + 3000), || {
        status_of(&sb, "extra")["state"] == "running"
    });
    assert!(ok, "{}\n{}", status_of(&sb, "extra"), d.log_text());
    assert_eq!(
        sb.service_status("other")["pid"],
        other,
        "another service restarted"
    );
}

#[test]
fn a_stopped_service_is_not_started_by_a_new_binary() {
    let sb = Sandbox::new();
    let out = sb.path("out");
    let body = |v: &str| format!("echo {v} > {}\nexec sleep 1000", out.display());
    sb.service("idle", &body("v1"));
    watched(&sb, json!({}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("idle", None);
    assert_eq!(sb.cli(&["stop", "idle"]).code, 0);
    sb.wait_state("idle", "stopped");
    assert!(!alive(pid));
    rename_over(&sb, "idle", &body("v2"));
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "idle").len() == 1),
        "no upgrade recorded"
    );
    assert_eq!(upgrades(&sb, "idle")[0]["result"], "ok");
    assert_eq!(sb.service_status("idle")["state"], "stopped");
    // Its next start runs the new binary.
    assert_eq!(sb.cli(&["start", "idle"]).code, 0);
    sb.wait_running("idle", None);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&out)
        .is_ok_and(|v| v.trim() == "v2")));
}

#[test]
fn watching_turned_off_by_a_reload_acts_on_nothing() {
    let sb = Sandbox::new();
    watched(&sb, json!({}));
    let d = Daemon::start(&sb, &[]);
    sb.config(json!({"watch_services_dir": false}), json!({}));
    assert_eq!(sb.cli(&["reload"]).code, 0);
    drop_service(&sb, "ignored", "exec sleep 1000");
    // Proving that nothing happens takes a wait: a few settle times.
    std::thread::sleep(Duration::from_millis(SETTLE_MS * 3));
    assert!(
        status_of(&sb, "ignored").is_null(),
        "started with watching off: {}\n{}",
        status_of(&sb, "ignored"),
        d.log_text()
    );
}

#[test]
fn the_same_binary_renamed_over_is_no_upgrade() {
    let sb = Sandbox::new();
    sb.service("same", "exec sleep 1000");
    watched(&sb, json!({"same": {"upgrade_grace_ms": 300}}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("same", None);
    rename_over(&sb, "same", "exec sleep 1000");
    // Looked at once settled: the link is made to the file renamed over.
    let bin = sb.path("services/same/same");
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    assert!(wait_until(DEADLINE, || ino(&bin)
        == ino(&bin.with_file_name(".same.running"))));
    rename_over(&sb, "same", "exec sleep 2000");
    // Once the real upgrade is recorded, the same bytes renamed over before it are not.
    let ok = wait_until(DEADLINE, || {
        upgrades(&sb, "same")
            .iter()
            .any(|u| u["from"] != u["to"] && u["result"] == "ok")
    });
    assert!(ok, "{:?}", upgrades(&sb, "same"));
    let u = upgrades(&sb, "same");
    assert_eq!(u.len(), 1, "{u:?}");
    assert_ne!(sb.service_status("same")["pid"], pid);
}

#[test]
fn a_binary_replaced_with_no_link_kept_is_upgraded_with_nothing_to_go_back_to() {
    let sb = Sandbox::new();
    let bin = sb.service("nolink", "exec sleep 1000");
    watched(&sb, json!({"nolink": {"upgrade_grace_ms": 300}}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("nolink", None);
    std::fs::remove_file(bin.with_file_name(".nolink.running")).unwrap();
    rename_over(&sb, "nolink", "exec sleep 2000");
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "nolink").len() == 1),
        "no upgrade recorded"
    );
    let u = upgrades(&sb, "nolink");
    assert_eq!(
        (u[0]["from"].as_str(), u[0]["result"].as_str()),
        (Some(""), Some("ok")),
        "{u:?}"
    );
    assert_ne!(sb.service_status("nolink")["pid"], pid);
}

#[test]
fn after_upgrade_self_a_binary_renamed_over_is_upgraded_from_what_runs() {
    let sb = Sandbox::new();
    let bin = sb.service("handed", "exec sleep 1000");
    watched(&sb, json!({"handed": {"upgrade_grace_ms": 300}}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("handed", None);
    let new = sb.path("orchestrator-new");
    copy_executable(BIN, &new);
    let out = sb.cli(&["upgrade-self", new.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let ok = wait_until(DEADLINE, || d.count_log(&["upgrade-self: took over"]) >= 1);
    assert!(ok, "no take-over; log:\n{}", d.log_text());
    // The new image knows the link the old one made: the rename is an upgrade from it.
    rename_over(&sb, "handed", "exec sleep 2000");
    assert!(
        wait_until(DEADLINE, || upgrades(&sb, "handed").len() == 1),
        "no upgrade recorded\n{}",
        d.log_text()
    );
    let u = upgrades(&sb, "handed");
    assert_eq!(u[0]["result"], "ok", "{u:?}");
    assert_ne!(u[0]["from"], "", "{u:?}");
    assert_ne!(sb.service_status("handed")["pid"], pid);
    let prev = std::fs::read_to_string(bin.with_file_name("handed.prev")).unwrap();
    assert!(prev.contains("sleep 1000"));
}

#[test]
fn an_upgrade_by_hand_is_no_news_to_the_watcher() {
    let sb = Sandbox::new();
    sb.service("byhand", "exec sleep 1000");
    watched(&sb, json!({"byhand": {"upgrade_grace_ms": 300}}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("byhand", None);
    let v2 = sb.path("byhand-v2");
    sb.script(&v2, "exec sleep 2000");
    let out = sb.cli(&["upgrade", "byhand", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let pid = sb.wait_running("byhand", None);
    // The upgrade's rename is seen by the watcher, which finds nothing new in it.
    std::thread::sleep(Duration::from_millis(SETTLE_MS * 2));
    let u = upgrades(&sb, "byhand");
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(sb.service_status("byhand")["pid"], pid);
}
