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

/// What a row of `every_process_field_restarts_and_every_other_applies_in_place` reads
/// from the running process to see which value it runs with.
#[derive(Clone, Copy)]
enum Probe {
    /// The command line (`/bin/sh SCRIPT ARGS...`), space-separated.
    Cmdline,
    /// One variable of /proc/PID/environ ("" when absent).
    Env(&'static str),
    /// The working directory.
    Cwd,
    /// The first value of a /proc/PID/status line (`Uid:`, `Gid:`).
    Status(&'static str),
    /// The soft value of a /proc/PID/limits row.
    Limit(&'static str),
    /// The value the service's cgroup holds for this limit (None: not enforced here).
    Cgroup(&'static str),
    /// Nothing observable in this version: only the restart is checked.
    None,
}

fn probe(sb: &Sandbox, name: &str, pid: i64, p: Probe) -> Option<String> {
    let proc = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let text = |f: &str| String::from_utf8_lossy(&proc(f)).into_owned();
    match p {
        Probe::Cmdline => Some(
            text("cmdline")
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Probe::Env(var) => Some(
            text("environ")
                .split('\0')
                .find_map(|kv| kv.strip_prefix(&format!("{var}=")).map(String::from))
                .unwrap_or_default(),
        ),
        Probe::Cwd => std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|p| p.display().to_string()),
        Probe::Status(field) => text("status")
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(String::from),
        Probe::Limit(row) => text("limits")
            .lines()
            .find(|l| l.starts_with(row))
            .and_then(|l| l[row.len()..].split_whitespace().next())
            .map(String::from),
        Probe::Cgroup(what) => {
            // "cgroup v1 pids.max in /sys/fs/cgroup/pids/orchestrator-..."
            let st = sb.service_status(name);
            let how = st["limits"][what].as_str()?.to_string();
            if how.starts_with("not enforced") {
                eprintln!("{name}: {what} {how}: value not checked");
                return None;
            }
            let file = how.split_whitespace().nth(2)?;
            let base = how.rsplit(" in ").next()?;
            let value = std::fs::read_to_string(format!("{base}/{name}/{file}")).ok()?;
            // cpu.max on v2 is "QUOTA PERIOD": the quota says it.
            value.split_whitespace().next().map(String::from)
        }
        Probe::None => None,
    }
}

/// docs/lifecycle.md: a reload restarts a service whose process would change, one field at
/// a time, and the new run has the new value; any other change is applied in place (same
/// pid).
#[test]
fn every_process_field_restarts_and_every_other_applies_in_place() {
    let root = unsafe { libc::geteuid() } == 0;
    let sb = Sandbox::new();
    // A shell that stays the main process, so its command line shows the arguments.
    const BODY: &str = "sleep 1000 & wait";
    let script = |n: &str| sb.path(&format!("services/{n}/{n}")).display().to_string();
    let alt = sb.path("alt/binary");
    std::fs::create_dir_all(sb.path("alt")).unwrap();
    sb.script(&alt, BODY);
    let mib = |n: u64| (n << 20).to_string();
    // (service, config before, config after, probe, value before, value after)
    let mut restarts = vec![
        (
            "binary",
            json!({}),
            json!({"binary_path": alt}),
            Probe::Cmdline,
            format!(
                "/bin/sh {} --service binary --log-level info",
                script("binary")
            ),
            // A binary_path of its own: no service args by default any more.
            format!("/bin/sh {}", alt.display()),
        ),
        (
            "args",
            json!({"args": ["a"]}),
            json!({"args": ["b"]}),
            Probe::Cmdline,
            format!(
                "/bin/sh {} --service args --log-level info a",
                script("args")
            ),
            format!(
                "/bin/sh {} --service args --log-level info b",
                script("args")
            ),
        ),
        (
            "pass",
            json!({"args": ["x"]}),
            json!({"args": ["x"], "pass_service_args": false}),
            Probe::Cmdline,
            format!(
                "/bin/sh {} --service pass --log-level info x",
                script("pass")
            ),
            format!("/bin/sh {} x", script("pass")),
        ),
        (
            "env",
            json!({"environment": {"V": "1"}}),
            json!({"environment": {"V": "2"}}),
            Probe::Env("V"),
            "1".into(),
            "2".into(),
        ),
        (
            "datadir",
            json!({"data_dir": "data/one"}),
            json!({"data_dir": "data/two"}),
            Probe::Cwd,
            sb.path("data/one").display().to_string(),
            sb.path("data/two").display().to_string(),
        ),
        (
            "nofile",
            json!({"limits": {"nofile": 1024}}),
            json!({"limits": {"nofile": 512}}),
            Probe::Limit("Max open files"),
            "1024".into(),
            "512".into(),
        ),
        (
            "nproc",
            json!({"limits": {"nproc": 4000}}),
            json!({"limits": {"nproc": 3000}}),
            Probe::Limit("Max processes"),
            "4000".into(),
            "3000".into(),
        ),
        (
            "core",
            json!({"limits": {"core": 0}}),
            json!({"limits": {"core": 4096}}),
            Probe::Limit("Max core file size"),
            "0".into(),
            "4096".into(),
        ),
        (
            "memory",
            json!({"memory_limit": 32}),
            json!({"memory_limit": 64}),
            Probe::Env("GOMEMLIMIT"),
            "32MiB".into(),
            "64MiB".into(),
        ),
        (
            "sockets",
            json!({}),
            json!({"sockets": [{"listen": "127.0.0.1:0"}]}),
            Probe::None,
            String::new(),
            String::new(),
        ),
    ];
    if root {
        restarts.extend([
            (
                "user",
                json!({}),
                json!({"user": "nobody"}),
                Probe::Status("Uid:"),
                "0".into(),
                "65534".into(),
            ),
            (
                "group",
                json!({}),
                json!({"group": "daemon"}),
                Probe::Status("Gid:"),
                "0".into(),
                "1".into(),
            ),
            (
                "memcg",
                json!({"memory_limit": 32}),
                json!({"memory_limit": 64}),
                Probe::Cgroup("memory_limit"),
                mib(32),
                mib(64),
            ),
            (
                "cpu",
                json!({"limits": {"cpu_percent": 50}}),
                json!({"limits": {"cpu_percent": 20}}),
                Probe::Cgroup("cpu_percent"),
                "50000".into(),
                "20000".into(),
            ),
            (
                "pids",
                json!({"limits": {"pids_max": 100}}),
                json!({"limits": {"pids_max": 50}}),
                Probe::Cgroup("pids_max"),
                "100".into(),
                "50".into(),
            ),
        ]);
    } else {
        eprintln!("skipped the user, group and cgroup rows: they need root");
    }
    // Applied in place: (service, config before, config after).
    let in_place = [
        (
            "policy",
            json!({"restart": "always"}),
            json!({"restart": "on-failure"}),
        ),
        (
            "attempts",
            json!({"max_restart_attempts": 5}),
            json!({"max_restart_attempts": 7}),
        ),
        (
            "backoff",
            json!({"initial_backoff_ms": 50, "max_backoff_ms": 200}),
            json!({"initial_backoff_ms": 70, "max_backoff_ms": 300}),
        ),
        (
            "stoptime",
            json!({"stop_timeout_ms": 3000}),
            json!({"stop_timeout_ms": 1000}),
        ),
        (
            "stopsig",
            json!({"stop_signal": "SIGTERM"}),
            json!({"stop_signal": "SIGINT"}),
        ),
        (
            "health",
            json!({}),
            json!({"health_check": {"type": "exec", "command": ["true"], "interval_ms": 200}}),
        ),
        ("deps", json!({}), json!({"depends_on": ["same"]})),
        (
            "retry",
            json!({"retry_failed_ms": 1000}),
            json!({"retry_failed_ms": 2000}),
        ),
    ];
    let mut before = serde_json::Map::new();
    let mut after = serde_json::Map::new();
    for (n, old, new, ..) in &restarts {
        sb.service(n, BODY);
        before.insert(n.to_string(), old.clone());
        after.insert(n.to_string(), new.clone());
    }
    for (n, old, new) in &in_place {
        sb.service(n, BODY);
        before.insert(n.to_string(), old.clone());
        after.insert(n.to_string(), new.clone());
    }
    sb.service("same", BODY);
    sb.open_to_other_users();
    let settings = json!({"services_dir": "services"});
    sb.config(settings.clone(), before.into());
    let _d = Daemon::start(&sb, &[]);

    let mut pids = std::collections::BTreeMap::new();
    for (n, .., p, was, _) in &restarts {
        let pid = sb.wait_running(n, None);
        if let Some(v) = probe(&sb, n, pid, *p) {
            assert_eq!(&v, was, "{n} before the reload");
        }
        pids.insert(n.to_string(), pid);
    }
    for n in in_place.iter().map(|r| r.0).chain(["same"]) {
        pids.insert(n.to_string(), sb.wait_running(n, None));
    }

    sb.config(settings, after.into());
    let out = sb.cli(&["reload", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.stdout;
    let mut expected: Vec<String> = restarts
        .iter()
        .map(|r| format!("{}: restart", r.0))
        .chain(in_place.iter().map(|r| format!("{}: update", r.0)))
        .collect();
    expected.push("same: unchanged".into());
    for line in &expected {
        assert!(plan.lines().any(|l| l == line), "no `{line}` in:\n{plan}");
    }

    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (n, .., p, _, now) in &restarts {
        let old = pids[*n];
        let pid = sb.wait_running(n, Some(old));
        assert!(!alive(old), "{n}: the old run is gone");
        if let Some(v) = probe(&sb, n, pid, *p) {
            assert_eq!(&v, now, "{n} after the reload");
        }
    }
    for n in in_place.iter().map(|r| r.0).chain(["same"]) {
        let st = sb.service_status(n);
        assert_eq!(st["pid"], pids[n], "{n} was restarted: {st}");
    }
    // The health check added in place is run on the same process.
    assert_eq!(sb.wait_state("health", "running")["pid"], pids["health"]);
}

/// Regression (docs/lifecycle.md): a service dropped from the config while its binary
/// stays in
/// `services_dir` counts as removed when `run_unconfigured` is false. The plan said
/// `update` and the service kept running.
#[test]
fn a_service_dropped_from_the_config_stops_when_unconfigured_ones_do_not_run() {
    let sb = Sandbox::new();
    sb.service("kept", "exec sleep 1000");
    sb.service("dropped", "exec sleep 1000");
    let settings = json!({"services_dir": "services", "run_unconfigured": false});
    sb.config(settings.clone(), json!({"kept": {}, "dropped": {}}));
    let _d = Daemon::start(&sb, &[]);
    let kept = sb.wait_running("kept", None);
    let pid = sb.wait_running("dropped", None);
    sb.config(settings, json!({"kept": {}}));
    let plan = sb.cli(&["reload", "--dry-run"]).stdout;
    assert!(plan.contains("dropped: stop"), "{plan}");
    assert!(plan.contains("kept: unchanged"), "{plan}");
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // reload answers once the stops it caused have finished.
    let st = sb.service_status("dropped");
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(!alive(pid), "its process is gone");
    assert_eq!(sb.service_status("kept")["pid"], kept);
}

/// `reload` through the socket alone: the client looks no config file up, so that a
/// broken or missing file is the daemon's to report.
fn reload_by_socket(sb: &Sandbox) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--socket")
        .arg(sb.socket())
        .arg("reload")
        .current_dir("/")
        .env_remove("ORCHESTRATOR_CONFIG");
    run_with_timeout(cmd, DEADLINE)
}

/// The file found at start (here `./orchestrator.json`, no `--config`) is the one every
/// reload reads: a reload that cannot read or parse it stops nothing and says why, and
/// one that can applies it.
fn reloads_read_the_file_found_at_start(sb: &Sandbox, log: &dyn Fn() -> String) {
    let pid = sb.wait_running("sleeper", None);
    let out = reload_by_socket(sb);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("sleeper: unchanged"), "{}", out.stdout);
    assert_eq!(sb.service_status("sleeper")["pid"], pid);
    let file = sb.path("orchestrator.json");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, "{\"orchestrator\": ").unwrap();
    let out = reload_by_socket(sb);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "{}",
        out.stderr
    );
    std::fs::remove_file(&file).unwrap();
    let out = reload_by_socket(sb);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        wait_until(DEADLINE, || log().matches("reload failed").count() >= 2),
        "{}",
        log()
    );
    assert_eq!(sb.service_status("sleeper")["state"], "running");
    assert_eq!(sb.service_status("sleeper")["pid"], pid);
    // The same file, back with one more service: applied.
    sb.service("late", "exec sleep 1000");
    let with_late = good.replace("\"sleeper\": {}", "\"sleeper\": {}, \"late\": {}");
    assert_ne!(with_late, good);
    std::fs::write(&file, with_late).unwrap();
    let out = reload_by_socket(sb);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    sb.wait_running("late", None);
    assert_eq!(sb.service_status("sleeper")["pid"], pid);
}

#[test]
fn a_detached_daemon_reloads_the_file_it_found_at_start() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs"}),
        json!({"sleeper": {}}),
    );
    let pidfile = sb.path("d.pid");
    let mut cmd = std::process::Command::new(BIN);
    // No --config: ./orchestrator.json is found, and --daemon then moves to /.
    cmd.args(["run", "--daemon", "--pidfile"])
        .arg(&pidfile)
        .current_dir(&sb.dir)
        .env_remove("ORCHESTRATOR_CONFIG");
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(wait_until(DEADLINE, || sb.cli(&["status"]).code == 0));
    let d = Detached::from_pidfile(&sb, &pidfile).expect("the pidfile names the daemon");
    let pid = d.pid;
    let log = || std::fs::read_to_string(sb.path("logs/orchestrator.log")).unwrap_or_default();
    reloads_read_the_file_found_at_start(&sb, &log);
    // SIGHUP reads it too.
    sb.service("later", "exec sleep 1000");
    let text = std::fs::read_to_string(sb.path("orchestrator.json")).unwrap();
    std::fs::write(
        sb.path("orchestrator.json"),
        text.replace("\"late\": {}", "\"late\": {}, \"later\": {}"),
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    sb.wait_running("later", None);
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
}

#[test]
fn a_foreground_daemon_reloads_the_file_it_found_at_start() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({"sleeper": {}}));
    let d = Daemon::start_found(&sb, &[]);
    reloads_read_the_file_found_at_start(&sb, &|| d.log_text());
}

/// Without a config file at start the built-in defaults apply, and keep applying: a file
/// that appears later is not the daemon's (only a restart looks the file up again).
#[test]
fn without_a_file_at_start_reloads_keep_the_defaults() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    let socket = sb.socket();
    let d = Daemon::start_found(
        &sb,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--services-dir",
            "services",
        ],
    );
    let pid = sb.wait_running("sleeper", None);
    std::fs::write(
        sb.path("orchestrator.json"),
        r#"{"services": {"sleeper": {"enabled": false}}}"#,
    )
    .unwrap();
    let out = reload_by_socket(&sb);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("sleeper: unchanged"), "{}", out.stdout);
    assert_eq!(sb.service_status("sleeper")["pid"], pid);
    drop(d);
}

/// `reload --dry-run` calls a service the reload adds a `start`, even one whose binary
/// is missing (its start fails with the reason), and one that is not to run
/// `unchanged`: never `update`.
#[test]
fn an_added_service_is_a_start_in_the_plan() {
    let sb = Sandbox::new();
    sb.service("keep", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("keep", None);
    d.wait_log(&["started (pid", ", 1 service, control socket"]);
    sb.service("added", "exec sleep 1000");
    sb.service("off", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"ghost": {}, "off": {"enabled": false}}),
    );
    let out = sb.cli(&["reload", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.stdout;
    for line in [
        "added: start",
        "ghost: start",
        "off: unchanged",
        "keep: unchanged",
    ] {
        assert!(plan.lines().any(|l| l == line), "no `{line}` in:\n{plan}");
    }
    assert!(!plan.contains("update"), "{plan}");
    assert_eq!(sb.cli(&["reload"]).code, 0);
    sb.wait_running("added", None);
    let ghost = sb.wait_state("ghost", "failed");
    assert!(
        ghost["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("service binary not found")),
        "{ghost}"
    );
    assert_eq!(sb.service_status("off")["state"], "stopped");
}
