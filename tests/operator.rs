//! The operator's side of the client (docs/cli.md): finding the daemon from anywhere and
//! saying how, errors that name the service, suggestions, `status NAME`, the status
//! table, and following logs. Where the daemon's side is not the point, a fake daemon
//! (a plain Unix socket in this process) answers with exactly the reply under test.

use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Runs the binary in `dir` with no `ORCHESTRATOR_*` or `NO_COLOR` from the test's own
/// environment, plus `env`.
fn client(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    for var in ["ORCHESTRATOR_CONFIG", "ORCHESTRATOR_SOCKET", "NO_COLOR"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    run_with_timeout(cmd, DEADLINE)
}

/// A stand-in daemon: each request line gets the lines `answer` returns, then the
/// connection is closed if it says so. Every request is recorded.
struct FakeDaemon {
    path: std::path::PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Answer = dyn Fn(&Value) -> (Vec<Value>, bool) + Send + Sync;

impl FakeDaemon {
    fn start(path: std::path::PathBuf, answer: Box<Answer>) -> FakeDaemon {
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, halt) = (requests.clone(), stop.clone());
        let answer: Arc<Answer> = Arc::from(answer);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (seen, answer) = (seen.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut writer = &conn;
                    for line in BufReader::new(&conn).lines() {
                        let Ok(line) = line else { return };
                        let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                        seen.lock().unwrap().push(req.clone());
                        let (replies, close) = answer(&req);
                        for r in replies {
                            if writeln!(writer, "{r}").is_err() {
                                return;
                            }
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        FakeDaemon {
            path,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kept_line(msg: &str) -> Value {
    json!({"ts": "2026-11-30T10:00:00.000Z", "level": "info", "pid": 7, "stream": "stdout",
           "msg": msg, "partial": false})
}

#[test]
fn client_finds_the_daemon_from_its_config_anywhere() {
    let sb = Sandbox::new();
    sb.service("alpha", "exec sleep 100");
    let cfg = sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("alpha", None);
    let cfg = cfg.to_str().unwrap();
    let elsewhere = sb.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for (dir, args, env) in [
        (&sb.dir, vec!["status"], vec![]),
        (
            &elsewhere,
            vec!["status"],
            vec![("ORCHESTRATOR_CONFIG", cfg)],
        ),
        (&elsewhere, vec!["--config", cfg, "status"], vec![]),
    ] {
        let out = client(dir, &args, &env);
        assert_eq!(out.code, 0, "{args:?} {env:?}: {}", out.stderr);
        assert!(out.stdout.contains("alpha"), "{}", out.stdout);
    }
}

#[test]
fn a_config_that_does_not_parse_is_reported_never_skipped() {
    let sb = Sandbox::new();
    sb.service("alpha", "exec sleep 100");
    sb.config(json!({"services_dir": "services"}), json!({"alpha": {}}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("alpha", None);
    // Saved while the daemon runs: the client must say what is wrong with the file
    // (it needs the file to find the socket), not "cannot reach" some other socket.
    sb.config(
        json!({"services_dir": "services"}),
        json!({"alpha": {"restart": "sometimes"}}),
    );
    for args in [&["status"][..], &["reload", "--dry-run"]] {
        let out = client(&sb.dir, args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        let at = line.find("orchestrator.json:").expect("names the file");
        let pos: Vec<&str> = line[at..].splitn(4, ':').collect();
        assert!(
            pos[1].parse::<u32>().is_ok() && pos[2].parse::<u32>().is_ok(),
            "no line:column in {line}"
        );
        assert!(line.contains("sometimes"), "{line}");
        assert!(!line.contains("cannot reach"), "{line}");
    }
    // Naming the socket bypasses the file.
    let sock = sb.socket();
    let out = client(
        &sb.dir,
        &["--socket", sock.to_str().unwrap(), "status"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A problem only the daemon cares about does not stop the client.
    sb.config(
        json!({"services_dir": "services"}),
        json!({"alpha": {"depends_on": ["ghost"]}}),
    );
    let out = client(&sb.dir, &["status"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A named file that is not there is an error too.
    let out = client(&sb.dir, &["--config", "nope.json", "status"], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nope.json"), "{}", out.stderr);
}

#[test]
fn an_unreachable_daemon_is_reported_with_the_socket_and_why() {
    let sb = Sandbox::new();
    let cfg = sb.config(json!({}), json!({}));
    let sock = sb.socket().display().to_string();
    let out = client(&sb.dir, &["status"], &[]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the orchestrator at {sock} (control_socket in {}): ",
            cfg.display()
        )),
        "{}",
        out.stderr
    );
    let other = sb.path("other.sock").display().to_string();
    let out = client(&sb.dir, &["status"], &[("ORCHESTRATOR_SOCKET", &other)]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .contains(&format!("at {other} (from $ORCHESTRATOR_SOCKET)")),
        "{}",
        out.stderr
    );
    let out = client(&sb.dir, &["--socket", &other, "stop", "x"], &[]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains(&format!("at {other} (from --socket)")),
        "{}",
        out.stderr
    );
    // A config without control_socket: the default path, and the reason. (A real
    // daemon may own the default socket on this box; then there is nothing to check.)
    sb.write_config("{}");
    let out = client(&sb.dir, &["status"], &[]);
    if out.code == 3 {
        assert!(
            out.stderr.contains(&format!(
                "(the default: {} sets no control_socket)",
                cfg.display()
            )),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_mistyped_command_gets_the_nearest_suggested() {
    let sb = Sandbox::new();
    let out = client(&sb.dir, &["stauts"], &[]);
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr.trim(),
        "orchestrator: unknown command `stauts` (did you mean `status`?)"
    );
}

#[test]
fn refusals_name_the_service() {
    let sb = Sandbox::new();
    sb.service("alpha", "exec sleep 100");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("alpha", None);
    for args in [
        &["status", "nosuch"][..],
        &["start", "nosuch"],
        &["stop", "nosuch"],
        &["restart", "nosuch"],
        &["logs", "nosuch"],
    ] {
        let out = sb.cli(args);
        assert_eq!(out.code, 1, "{args:?}");
        assert_eq!(
            out.stderr.trim(),
            "orchestrator: nosuch: service not found",
            "{args:?}"
        );
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({"alpha": {"enabled": false}}),
    );
    assert_eq!(sb.cli(&["reload"]).code, 0);
    let out = sb.cli(&["start", "alpha"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("orchestrator: alpha: "),
        "{}",
        out.stderr
    );
}

#[test]
fn status_name_shows_one_service_in_detail() {
    let sb = Sandbox::new();
    let bin = sb.service(
        "web",
        "i=1; while [ $i -le 15 ]; do echo line$i; i=$((i+1)); done; exec sleep 100",
    );
    sb.config(json!({"services_dir": "services"}), json!({"web": {}}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    assert!(wait_until(DEADLINE, || sb
        .cli(&["logs", "web"])
        .stdout
        .contains("line15")));
    let out = sb.cli(&["status", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = &out.stdout;
    assert!(s.starts_with("web: running since "), "{s}");
    assert!(s.contains(&format!("  pid:        {pid}")), "{s}");
    assert!(
        s.contains(&format!("  binary:     {}", bin.display())),
        "{s}"
    );
    assert!(s.contains("  restarts:   0"), "{s}");
    assert!(s.contains("last 10 lines:"), "{s}");
    assert!(s.contains(&format!("web[{pid}] stdout: line15\n")), "{s}");
    assert!(s.contains("stdout: line6\n"), "{s}");
    assert!(!s.contains("stdout: line5\n"), "{s}");
}

#[test]
fn a_running_row_does_not_show_the_last_run() {
    let sb = Sandbox::new();
    let marker = sb.path("ran-once");
    sb.service(
        "phoenix",
        &format!(
            "if [ -e {m} ]; then exec sleep 100; fi; touch {m}; echo boom >&2; exit 3",
            m = marker.display()
        ),
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || {
        let s = sb.service_status("phoenix");
        s["state"] == "running" && s["restarts"] == 1
    }));
    assert_eq!(sb.service_status("phoenix")["last_exit_code"], 3);
    let out = sb.cli(&["status"]);
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap();
    let row = lines.find(|l| l.starts_with("phoenix")).unwrap();
    let exit_col = header.find("EXIT").unwrap();
    assert!(
        row[exit_col..].starts_with('-'),
        "a running row shows the last run's exit:\n{header}\n{row}"
    );
    assert!(header.contains("SINCE") && row.contains(" ago"), "{row}");
}

#[test]
fn an_operator_stop_reads_as_one_and_the_detail_says_when() {
    let sb = Sandbox::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let service = json!({"name": "web", "configured": true, "enabled": true, "state": "stopped",
        "pid": null, "uptime": 0, "restarts": 0, "last_exit_code": 143, "last_error": null,
        "since": now - 90_000, "binary": {"path": "/srv/web", "size": 10, "sha256": "ab"},
        "limits": {"nofile": "setrlimit"}, "history": [],
        "last_exit": {"code": null, "signal": "SIGTERM", "at": now - 90_000, "by_operator": true}});
    let fake = FakeDaemon::start(
        sb.socket(),
        Box::new(move |req| match req["cmd"].as_str() {
            Some("status") => (
                vec![json!({"ok": true, "services": [service.clone()]})],
                false,
            ),
            _ => (
                vec![json!({"ok": true, "lines": [kept_line("bye")]})],
                false,
            ),
        }),
    );
    let out = sb.cli(&["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stopped by operator"), "{}", out.stdout);
    assert!(!out.stdout.contains("143"), "{}", out.stdout);
    assert!(out.stdout.contains("1m30s ago"), "{}", out.stdout);
    let out = sb.cli(&["status", "web"]);
    let s = &out.stdout;
    assert!(s.starts_with("web: stopped since "), "{s}");
    assert!(
        s.contains("  last exit:  SIGTERM at ") && s.contains("stopped by the operator"),
        "{s}"
    );
    assert!(s.contains("  limits:     nofile: setrlimit"), "{s}");
    assert!(s.contains("web[7] stdout: bye"), "{s}");
    let logs = fake
        .requests()
        .into_iter()
        .find(|r| r["cmd"] == "logs")
        .expect("status NAME asks for the last lines");
    assert_eq!(logs["lines"], 10);
}

#[test]
fn logs_follow_prints_the_stream_and_the_dropped_count() {
    let sb = Sandbox::new();
    let fake = FakeDaemon::start(
        sb.socket(),
        Box::new(|_| {
            let mut event = kept_line("exited with code 1");
            event["event"] = json!("exited");
            (
                vec![
                    json!({"ok": true, "lines": [kept_line("kept")]}),
                    json!({"line": kept_line("new 1")}),
                    json!({"dropped": 3}),
                    json!({"line": event}),
                ],
                true,
            )
        }),
    );
    let out = sb.cli(&["logs", "-n", "5", "web", "-f"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = "2026-11-30T10:00:00.000Z web[7] stdout: kept\n\
                2026-11-30T10:00:00.000Z web[7] stdout: new 1\n\
                2026-11-30T10:00:00.000Z web[7] exited: exited with code 1\n";
    assert_eq!(out.stdout, want);
    assert_eq!(
        out.stderr.trim(),
        "-- 3 lines dropped (follower too slow) --"
    );
    assert_eq!(
        fake.requests(),
        vec![json!({"cmd": "logs", "service": "web", "lines": 5, "follow": true})]
    );
}

#[test]
fn logs_follow_runs_until_interrupted() {
    let sb = Sandbox::new();
    let _fake = FakeDaemon::start(
        sb.socket(),
        Box::new(|_| {
            (
                vec![json!({"ok": true, "lines": [kept_line("kept")]})],
                false,
            )
        }),
    );
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--socket",
        sb.socket().to_str().unwrap(),
        "logs",
        "web",
        "-f",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // A test runner started in the background by a script (`cargo test &`) inherits
    // SIGINT ignored, and so would the client: start it as a terminal would.
    // SAFETY: only async-signal-safe calls on memory of this frame, no allocation.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.ends_with("stdout: kept\n"), "{first}");
    // Still following: the stream has not ended.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "gave up following");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(
        wait_until(DEADLINE, || child.try_wait().unwrap().is_some()),
        "SIGINT did not end logs -f"
    );
}
