//! The control socket and its clients: exit codes, permissions, hostile clients,
//! concurrency, single instance.

use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn raw(sb: &Sandbox, payload: &[u8]) -> String {
    let mut s = UnixStream::connect(sb.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(payload);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

fn basic(sb: &Sandbox) {
    sb.service("svc", "exec sleep 1000");
    sb.service("off", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"off": {"enabled": false}}),
    );
}

#[test]
fn status_json_has_the_seed_fields() {
    let sb = Sandbox::new();
    basic(&sb);
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("svc", None);
    std::thread::sleep(Duration::from_millis(50));
    let out = sb.cli(&["status", "svc", "--json"]);
    assert_eq!(out.code, 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 1);
    let s = &arr[0];
    for key in [
        "name",
        "configured",
        "enabled",
        "state",
        "pid",
        "uptime",
        "restarts",
        "last_exit_code",
        "last_error",
        "rss_bytes",
        "cpu_seconds",
        "binary",
        "history",
    ] {
        assert!(s.get(key).is_some(), "missing {key}: {s}");
    }
    assert_eq!(s["pid"], pid);
    assert_eq!(s["configured"], false);
    assert!(
        s["uptime"].as_u64().unwrap() >= 50_000_000,
        "uptime is in nanoseconds: {s}"
    );
    assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    assert!(s.get("next_restart_ms").is_none());
    let off = sb.service_status("off");
    assert_eq!(off["enabled"], false);
    assert_eq!(off["state"], "stopped");
    assert!(off["pid"].is_null());
    let table = sb.cli(&["status"]).stdout;
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAME") && header.contains("STATE") && header.contains("PID"));
    let row = table.lines().find(|l| l.starts_with("svc ")).unwrap();
    assert!(
        row.contains("running") && row.contains(&pid.to_string()),
        "{table}"
    );
    // The columns line up.
    let col = header.find("STATE").unwrap();
    assert_eq!(&row[col..col + 7], "running");
}

#[test]
fn client_exit_codes_and_messages() {
    let sb = Sandbox::new();
    basic(&sb);
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["status", "nope"], 1, "service not found"),
        (&["start", "nope"], 1, "service not found"),
        (&["start", "off"], 1, "service is disabled"),
        (&["restart", "off"], 1, "service is disabled"),
        (&["logs", "nope"], 1, "service not found"),
        (&["upgrade", "nope", "/bin/true"], 1, "service not found"),
        (&["upgrade", "svc", "/nonexistent/x"], 1, "No such file"),
        (&["rollback", "svc"], 1, "no previous binary"),
        (&["upgrade-self", "/bin/true"], 1, "not an orchestrator"),
        (&["start"], 2, "one service name"),
    ];
    for (args, code, msg) in cases {
        let out = sb.cli(args);
        assert_eq!(out.code, *code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(msg), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1);
    }
    // A refusal carries what the caller typed (a path, a name) escaped: a title-setting
    // sequence in it reaches the terminal as text, never as ESC or BEL.
    let hostile = "/nonexistent/\x1b]0;x\x07";
    for args in [
        &["upgrade", "svc", hostile][..],
        &["status", hostile],
        &["start", hostile],
    ] {
        let out = sb.cli(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("\\x1b]0;x"),
            "{args:?}: {:?}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(['\x1b', '\x07']),
            "{args:?}: {:?}",
            out.stderr
        );
    }
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["status", "--socket"]).arg(sb.path("nobody.sock"));
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 3);
}

/// `start` of a running service and `stop` of a stopped one succeed and say so, as
/// systemctl and sv do; `start` of a restarting or failed one starts it now, `stop` of
/// one leaves it stopped.
#[test]
fn start_and_stop_succeed_when_already_done() {
    let sb = Sandbox::new();
    basic(&sb);
    sb.service("crash", "exit 1");
    sb.service("broken", "exit 1");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "off": {"enabled": false},
            "crash": {"initial_backoff_ms": 600_000, "max_backoff_ms": 600_000},
            "broken": {"restart": "never"},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("svc", None);
    let out = sb.cli(&["start", "svc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "svc: already running\n");
    let reply = raw(&sb, b"{\"cmd\":\"start\",\"service\":\"svc\"}\n");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
        json!({"ok": true, "message": "already running"})
    );
    assert_eq!(sb.wait_running("svc", None), pid, "the run is left alone");
    let out = sb.cli(&["stop", "svc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "svc: stopped\n");
    let out = sb.cli(&["stop", "svc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "svc: already stopped\n");
    let reply = raw(&sb, b"{\"cmd\":\"stop\",\"service\":\"off\"}\n");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
        json!({"ok": true, "message": "already stopped"})
    );
    // Restarting: `start` starts it now instead of after the ten-minute delay.
    sb.wait_state("crash", "restarting");
    let out = sb.cli(&["start", "crash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(wait_until(DEADLINE, || sb.service_status("crash")
        ["history"]
        .as_array()
        .is_some_and(|h| h.len() >= 2)));
    // Restarting again: `stop` cancels the pending attempt.
    sb.wait_state("crash", "restarting");
    let out = sb.cli(&["stop", "crash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let st = sb.service_status("crash");
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(st["next_restart_ms"].is_null(), "{st}");
    // Failed: `start` runs it again, `stop` leaves it stopped.
    sb.wait_state("broken", "failed");
    let out = sb.cli(&["start", "broken"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(wait_until(DEADLINE, || sb.service_status("broken")
        ["history"]
        .as_array()
        .is_some_and(|h| h.len() == 2)));
    sb.wait_state("broken", "failed");
    let out = sb.cli(&["stop", "broken"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sb.service_status("broken")["state"], "stopped");
}

/// `status NAME` answers as LSB's status does: 0 running, 3 any other state, 1 an
/// unknown service, 4 no daemon; plain `status` is 0 whatever the states, 3 no daemon.
#[test]
fn status_exit_codes_follow_the_lsb_convention() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.service("off", "exec sleep 1000");
    sb.service("broken", "exit 1");
    sb.service("crash", "exit 1");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "off": {"enabled": false},
            "broken": {"restart": "never"},
            "crash": {"restart": "always", "initial_backoff_ms": 600000,
                      "max_backoff_ms": 600000},
        }),
    );
    let mut d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    for (name, state) in [("broken", "failed"), ("crash", "restarting")] {
        let ok = wait_until(DEADLINE, || sb.service_status(name)["state"] == state);
        assert!(ok, "{name} never {state}: {}", sb.service_status(name));
    }
    for json in [false, true] {
        let with = |args: &[&str]| {
            let mut a = args.to_vec();
            if json {
                a.push("--json");
            }
            sb.cli(&a)
        };
        assert_eq!(with(&["status", "svc"]).code, 0, "running, json {json}");
        let out = with(&["status", "off"]);
        assert_eq!(out.code, 3, "stopped, json {json}: {}", out.stderr);
        assert!(out.stdout.contains("stopped"), "{}", out.stdout);
        for (name, state) in [("broken", "failed"), ("crash", "restarting")] {
            let out = with(&["status", name]);
            assert_eq!(out.code, 3, "{state}, json {json}: {}", out.stderr);
            assert!(out.stdout.contains(state), "{}", out.stdout);
        }
        assert_eq!(with(&["status", "nope"]).code, 1, "unknown, json {json}");
        assert_eq!(with(&["status"]).code, 0, "the table, json {json}");
    }
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    for json in [&[][..], &["--json"]] {
        let out = sb.cli(&[&["status", "svc"][..], json].concat());
        assert_eq!(out.code, 4, "{}", out.stderr);
        assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
        assert_eq!(sb.cli(&[&["status"][..], json].concat()).code, 3);
    }
}

#[test]
fn socket_is_private_and_hostile_requests_are_contained() {
    let sb = Sandbox::new();
    basic(&sb);
    let _d = Daemon::start(&sb, &[]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(sb.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let r = raw(&sb, b"this is not json\n");
    assert!(
        r.contains("\"ok\":false") && r.contains("malformed request"),
        "{r}"
    );
    let r = raw(&sb, b"{\"cmd\":\"status\",\"evil\":1}\n");
    assert!(r.contains("malformed request"), "{r}");
    let r = raw(&sb, b"{\"cmd\":\"format-disk\"}\n");
    assert!(r.contains("unknown command"), "{r}");
    let mut big = vec![b'x'; 10 * 1024 * 1024];
    big.push(b'\n');
    let r = raw(&sb, &big);
    assert!(r.contains("request too large"), "{r}");
    // A client that connects and never writes does not hold anyone up.
    let _idle: Vec<UnixStream> = (0..5)
        .map(|_| UnixStream::connect(sb.socket()).unwrap())
        .collect();
    let r = raw(&sb, b"{\"cmd\":\"status\"}\n");
    assert!(r.starts_with("{") && r.contains("\"ok\":true"), "{r}");
    // Several requests on one connection.
    let mut s = UnixStream::connect(sb.socket()).unwrap();
    s.write_all(
        b"{\"cmd\":\"status\",\"service\":\"svc\"}\n{\"cmd\":\"status\",\"service\":\"off\"}\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    for name in ["svc", "off"] {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["services"][0]["name"], name);
    }
    assert_eq!(sb.service_status("svc")["state"], "running");
}

#[test]
fn refuses_peers_of_other_users() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let sb = Sandbox::new();
    basic(&sb);
    let d = Daemon::start(&sb, &[]);
    // Let uid 65534 reach the socket file and a binary, then connect as that user.
    let bin = sb.binary_for_other_users();
    std::fs::set_permissions(
        sb.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let sock = sb.socket();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["status", "--socket"]).arg(&sock);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    d.wait_log(&["refused a client with uid 65534"]);
}

/// SO_PEERCRED when the daemon is not root: its own user and root get in, a third
/// user is refused even though the socket's mode lets it connect.
#[test]
fn a_daemon_run_by_another_user_admits_only_that_user_and_root() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the daemon and clients as other users");
        return;
    }
    let sb = Sandbox::new();
    basic(&sb);
    // The daemon, as nobody, creates its socket in the sandbox: nobody's own directory
    // (a world-writable one would send its lock file to nobody's home).
    std::os::unix::fs::chown(&sb.dir, Some(65534), Some(65534)).unwrap();
    let d = Daemon::spawn_as(&sb, &[], &[], Some(65534));
    assert!(
        wait_until(DEADLINE, || sb.cli(&["status"]).code == 0),
        "root is admitted; log:\n{}",
        d.log_text()
    );
    std::fs::set_permissions(
        sb.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let bin = sb.binary_for_other_users();
    let status_as = |uid: u32| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["status", "--socket"]).arg(sb.socket());
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        run_with_timeout(cmd, DEADLINE)
    };
    let own = status_as(65534);
    assert_eq!(own.code, 0, "the daemon's own user: {}", own.stderr);
    let other = status_as(1);
    assert_eq!(other.code, 1, "{} {}", other.stdout, other.stderr);
    assert!(
        other.stderr.contains("permission denied"),
        "{}",
        other.stderr
    );
    d.wait_log(&["refused a client with uid 1"]);
    assert_eq!(d.count_log(&["refused a client"]), 1, "{}", d.log_text());
}

#[test]
fn fifty_concurrent_status_calls_while_services_restart() {
    let sb = Sandbox::new();
    sb.service("crashy", "sleep 0.02; exit 1");
    sb.service("steady", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 0, "max_backoff_ms": 0}),
        json!({"crashy": {"max_restart_attempts": 0}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let steady = sb.wait_running("steady", None);
    let before = sb.service_status("crashy")["restarts"].as_u64().unwrap();
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let sock = sb.socket();
            std::thread::spawn(move || {
                let mut cmd = std::process::Command::new(BIN);
                cmd.args(["status", "--json", "--socket"]).arg(sock);
                run_with_timeout(cmd, DEADLINE)
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(serde_json::from_str::<Value>(&out.stdout).is_ok());
    }
    // Supervision went on meanwhile.
    assert!(wait_until(DEADLINE, || sb.service_status("crashy")
        ["restarts"]
        .as_u64()
        .unwrap()
        > before + 5));
    assert_eq!(sb.service_status("steady")["pid"], steady);
}

#[test]
fn second_instance_is_refused_and_stale_files_are_replaced() {
    let sb = Sandbox::new();
    basic(&sb);
    let pidfile = sb.path("orch.pid");
    let mut d = Daemon::start(&sb, &["--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        d.pid.to_string()
    );
    let mut second = Daemon::spawn(&sb, &[], &[]);
    assert_eq!(second.wait_exit(DEADLINE), Some(1));
    assert!(
        second
            .log_text()
            .contains(&format!("already running (pid {})", d.pid)),
        "{}",
        second.log_text()
    );
    // The first one is untouched.
    assert_eq!(sb.cli(&["status"]).code, 0);
    // Crash it: socket and pidfile stay behind, and the next start replaces them.
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE);
    assert!(sb.socket().exists());
    assert!(pidfile.exists());
    let d2 = Daemon::start(&sb, &["--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        d2.pid.to_string()
    );
    sb.wait_running("svc", None);
}

#[test]
fn daemon_mode_detaches_and_logs_to_file() {
    let sb = Sandbox::new();
    basic(&sb);
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs"}),
        json!({"off": {"enabled": false}}),
    );
    let pidfile = sb.path("d.pid");
    let d = start_detached(&sb, &pidfile);
    assert!(wait_until(DEADLINE, || sb.cli(&["status"]).code == 0));
    let pid = i64::from(d.pid);
    assert!(alive(pid));
    let stat = proc_stat(pid).unwrap();
    assert_ne!(
        stat[5],
        unsafe { libc::getsid(0) }.to_string(),
        "detached from our session"
    );
    sb.wait_running("svc", None);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(
        sb.path("logs/orchestrator.log")
    )
    .is_ok_and(|s| s.contains("svc[") && s.contains("started"))));
    let out = sb.cli(&["shutdown"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!alive(pid));
    assert!(!pidfile.exists());
}

/// `run --daemon` returns only once the daemon serves: the pidfile, read the instant the
/// command returns, names the live daemon, which answers on its socket at once (as
/// systemd's `Type=forking`, start-stop-daemon and OpenRC expect). 100 starts, so that
/// a window between the caller's exit and the daemon's pid being written shows.
#[test]
fn run_daemon_returns_once_the_daemon_serves() {
    let sb = Sandbox::new();
    sb.config(json!({"log_dir": "logs"}), json!({}));
    let pidfile = sb.path("d.pid");
    let start = || run_detached(&sb, &pidfile);
    for i in 0..100 {
        let out = start();
        assert_eq!(out.code, 0, "start {i}: {}", out.stderr);
        let d = Detached::from_pidfile(&sb, &pidfile).unwrap_or_else(|| {
            let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
            panic!("start {i}: pidfile holds {text:?}")
        });
        let pid = i64::from(d.pid);
        assert!(alive(pid), "start {i}: pid {pid} from the pidfile is gone");
        assert!(
            cmdline(pid).contains(" run "),
            "start {i}: {}",
            cmdline(pid)
        );
        let status = sb.cli(&["status"]);
        assert_eq!(status.code, 0, "start {i}: {}", status.stderr);
        if i == 0 {
            // A second instance is refused with run's code, on the caller's stderr.
            let second = start();
            assert_eq!(second.code, 1, "{}", second.stderr);
            assert!(
                second
                    .stderr
                    .contains(&format!("already running (pid {pid})")),
                "{}",
                second.stderr
            );
            assert!(alive(pid));
        }
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        assert!(
            wait_until(DEADLINE, || !alive(pid) && !pidfile.exists()),
            "start {i}: the daemon did not exit"
        );
    }
    // A configuration error is exit 2, with the reason on the caller's stderr.
    sb.write_config("{\"orchestrator\": {\"log_dir\": \"logs\", \"services_dri\": 1}}");
    let out = start();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("services_dri"), "{}", out.stderr);
    assert!(!pidfile.exists());
}

#[test]
fn notify_socket_gets_ready() {
    let sb = Sandbox::new();
    basic(&sb);
    let path = sb.path("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    listener.set_read_timeout(Some(DEADLINE)).unwrap();
    let _d = Daemon::spawn(&sb, &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    // A receive with a timeout is not restarted after a signal: retry it.
    let n = loop {
        match listener.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means the services were started.
    assert!(sb.service_status("svc")["pid"].as_i64().is_some());
}

#[test]
fn metrics_cover_every_service() {
    let sb = Sandbox::new();
    basic(&sb);
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    let out = sb.cli(&["metrics"]);
    assert_eq!(out.code, 0);
    let m = out.stdout;
    assert!(
        m.contains("orchestrator_service_up{service=\"svc\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("orchestrator_service_up{service=\"off\"} 0"),
        "{m}"
    );
    assert!(m.contains("# TYPE orchestrator_service_restarts_total counter"));
    assert!(m.contains("orchestrator_service_state{service=\"off\",state=\"stopped\"} 1"));
}
