//! Spawning, restart policies, backoff, stop and shutdown, with real processes.

use crate::util::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A service that records what it was started with, then sleeps.
const RECORDER: &str = r#"
d="$OUT"
printf '%s\n' "$0" "$@" > "$d/argv"
tr '\0' '\n' < /proc/$$/environ | sort > "$d/env"
pwd > "$d/cwd"
readlink /proc/$$/fd/0 > "$d/stdin"
exec sleep 1000
"#;

#[test]
fn spawn_uses_exact_argv_clean_environment_data_dir_and_own_session() {
    let sb = Sandbox::new();
    sb.service("rec", RECORDER);
    let out = sb.path("out");
    std::fs::create_dir_all(&out).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"rec": {
            "args": ["--flag", "two words"],
            "environment": {"OUT": out, "TMP": "/var/tmp/x"},
            "data_dir": "data/rec",
            "memory_limit": 32,
        }}),
    );
    let _d = Daemon::spawn(
        &sb,
        &[],
        &[("SECRET_TOKEN", "hunter2"), ("TMPDIR", "/tmp/orch")],
    );
    assert!(wait_until(DEADLINE, || out.join("stdin").exists()
        && !std::fs::read_to_string(out.join("stdin"))
            .unwrap()
            .is_empty()));
    let argv = std::fs::read_to_string(out.join("argv")).unwrap();
    let bin = sb.path("services/rec/rec");
    assert_eq!(
        argv,
        format!(
            "{}\n--service\nrec\n--log-level\ninfo\n--flag\ntwo words\n",
            bin.display()
        )
    );
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    let keys: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        ["GOMEMLIMIT", "HOME", "OUT", "PATH", "TEMP", "TMP"],
        "{env}"
    );
    assert!(env.contains("GOMEMLIMIT=32MiB\n"));
    assert!(
        env.contains("TEMP=/tmp/orch\n"),
        "TEMP is the daemon's TMPDIR: {env}"
    );
    assert!(
        env.contains("TMP=/var/tmp/x\n"),
        "the service's environment overrides: {env}"
    );
    assert!(env.contains("HOME=/root\n"));
    assert!(!env.contains("hunter2"));
    let cwd = std::fs::read_to_string(out.join("cwd")).unwrap();
    assert_eq!(cwd.trim(), sb.path("data/rec").to_str().unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(sb.path("data/rec"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o750);
    assert_eq!(
        std::fs::read_to_string(out.join("stdin")).unwrap().trim(),
        "/dev/null"
    );
    let pid = sb.wait_running("rec", None);
    let stat = proc_stat(pid).unwrap();
    assert_eq!(stat[4], pid.to_string(), "own process group");
    assert_eq!(stat[5], pid.to_string(), "own session");
    // The shell keeps its script open until it execs sleep: wait for that.
    assert!(wait_until(DEADLINE, || cmdline(pid).starts_with("sleep")));
    // no_new_privs and only the standard descriptors (plus none inherited).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Until it execs sleep, the shell holds its script open (close-on-exec).
    assert!(wait_until(DEADLINE, || cmdline(pid).starts_with("sleep 1000")));
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .collect();
    assert_eq!(fds.len(), 3, "only stdin, stdout and stderr are open");
}

#[test]
fn pass_service_args_false_gives_bare_args() {
    let sb = Sandbox::new();
    sb.service("rec", RECORDER);
    let out = sb.path("out");
    std::fs::create_dir_all(&out).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"rec": {"args": ["x"], "pass_service_args": false, "environment": {"OUT": out}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(
        out.join("argv")
    )
    .is_ok_and(|s| s.ends_with("x\n"))));
    let argv = std::fs::read_to_string(out.join("argv")).unwrap();
    assert_eq!(argv.lines().skip(1).collect::<Vec<_>>(), ["x"]);
}

/// A third-party program named by `binary_path` gets only its own arguments unless
/// asked otherwise, so it runs instead of crash-looping on `--service`; a binary found
/// in services_dir still gets them.
#[test]
fn binary_path_programs_get_no_service_args_by_default() {
    let sb = Sandbox::new();
    sb.service("rec", RECORDER);
    let out = sb.path("out");
    std::fs::create_dir_all(&out).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "sleeper": {"binary_path": "/bin/sleep", "args": ["1000"], "restart": "never"},
            "rec": {"environment": {"OUT": out}},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("sleeper", None);
    assert_eq!(cmdline(pid), "/bin/sleep 1000 ");
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(
        out.join("argv")
    )
    .is_ok_and(|s| s.lines().count() == 5)));
    let argv = std::fs::read_to_string(out.join("argv")).unwrap();
    assert_eq!(
        argv.lines().skip(1).collect::<Vec<_>>(),
        ["--service", "rec", "--log-level", "info"]
    );
    // Still the same run: sleep took its arguments.
    assert_eq!(sb.wait_running("sleeper", None), pid);
}

/// The default follows `binary_path`: a reload that names the same binary by path
/// changes argv, and that is a restart; an explicit value wins over the default.
#[test]
fn a_default_only_argv_change_restarts_on_reload() {
    let sb = Sandbox::new();
    let bin = sb.service("rec", RECORDER);
    let out = sb.path("out");
    std::fs::create_dir_all(&out).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"rec": {"environment": {"OUT": out}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let first = sb.wait_running("rec", None);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(
        out.join("argv")
    )
    .is_ok_and(|s| s.lines().count() == 5)));
    // The same binary, with pass_service_args explicit: nothing changes.
    sb.config(
        json!({"services_dir": "services"}),
        json!({"rec": {"environment": {"OUT": out}, "binary_path": bin, "pass_service_args": true}}),
    );
    let plan = sb.cli(&["reload", "--dry-run"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(!plan.stdout.contains("rec: restart"), "{}", plan.stdout);
    // The key left out: the default for a binary_path drops the service args.
    sb.config(
        json!({"services_dir": "services"}),
        json!({"rec": {"environment": {"OUT": out}, "binary_path": bin}}),
    );
    let plan = sb.cli(&["reload", "--dry-run"]);
    assert!(plan.stdout.contains("rec: restart"), "{}", plan.stdout);
    std::fs::remove_file(out.join("argv")).unwrap();
    let r = sb.cli(&["reload"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    sb.wait_running("rec", Some(first));
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(
        out.join("argv")
    )
    .is_ok_and(|s| !s.is_empty())));
    let argv = std::fs::read_to_string(out.join("argv")).unwrap();
    assert_eq!(argv, format!("{}\n", bin.display()));
}

#[test]
fn missing_binary_is_failed_while_others_run() {
    let sb = Sandbox::new();
    sb.service("ok", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"ghost": {}, "viapath": {"binary_path": "bin/nothing"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("ok", None);
    let ghost = sb.service_status("ghost");
    assert_eq!(ghost["state"], "failed");
    assert_eq!(
        ghost["last_error"],
        format!(
            "service binary not found: {}",
            sb.path("services/ghost/ghost").display()
        )
    );
    assert!(ghost["pid"].is_null());
    let via = sb.service_status("viapath");
    assert_eq!(
        via["last_error"],
        format!(
            "service binary not found: {}",
            sb.path("bin/nothing").display()
        )
    );
    let out = sb.cli(&["start", "ghost"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("service binary not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn crash_loop_backs_off_then_fails_after_max_attempts() {
    let sb = Sandbox::new();
    sb.service("crash", "echo boom >&2; exit 7");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 100, "max_backoff_ms": 400}),
        json!({"crash": {"max_restart_attempts": 3}}),
    );
    let d = Daemon::start(&sb, &[]);
    let st = sb.wait_state("crash", "failed");
    assert_eq!(st["last_error"], "maximum restart attempts exceeded");
    assert_eq!(st["last_exit_code"], 7);
    assert_eq!(st["restarts"], 3);
    assert_eq!(st["history"].as_array().unwrap().len(), 4, "max + 1 runs");
    // The delays doubled: 100, 200, 400 ms (jitter is 0 in tests).
    for ms in [
        "restarting in 100 ms",
        "restarting in 200 ms",
        "restarting in 400 ms",
    ] {
        d.wait_log(&["crash", ms]);
    }
    let h = st["history"].as_array().unwrap();
    let gap = |i: usize| h[i + 1]["started"].as_u64().unwrap() - h[i]["exited"].as_u64().unwrap();
    assert!(gap(0) >= 100 && gap(1) >= 200 && gap(2) >= 400, "{h:?}");
    // start resets the counter and runs again.
    let out = sb.cli(&["start", "crash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    d.wait_log(&["crash", "restarting in 100 ms (attempt 1)"]);
}

/// The delay doubles up to `max_backoff_ms` and stays there: seen in the daemon's log,
/// in `next_restart_ms` while it waits, and in the gaps between runs in the history.
#[test]
fn backoff_stops_growing_at_max_backoff_ms() {
    let sb = Sandbox::new();
    sb.service("crash", "exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 20, "max_backoff_ms": 60}),
        json!({"crash": {"max_restart_attempts": 8}}),
    );
    let d = Daemon::start(&sb, &[]);
    let delays = [20u64, 40, 60, 60, 60, 60, 60, 60];
    // Doubling without the cap would wait 80, 160, ... 2560 ms.
    let mut longest_wait = 0;
    let mut st = serde_json::Value::Null;
    assert!(wait_until(DEADLINE, || {
        st = sb.service_status("crash");
        longest_wait = longest_wait.max(st["next_restart_ms"].as_u64().unwrap_or(0));
        st["state"] == "failed"
    }));
    assert!(
        longest_wait <= 60,
        "next_restart_ms {longest_wait} > max_backoff_ms"
    );
    let logged: Vec<u64> = d
        .log_lines()
        .iter()
        .filter(|l| l.contains(" crash: restarting in "))
        .filter_map(|l| l.split("restarting in ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(logged, delays, "{}", d.log_text());
    let h = st["history"].as_array().unwrap();
    assert_eq!(h.len(), delays.len() + 1, "{st}");
    let gap = |i: usize| h[i + 1]["started"].as_u64().unwrap() - h[i]["exited"].as_u64().unwrap();
    for (i, ms) in delays.iter().enumerate() {
        assert!(gap(i) >= *ms, "restart {i} came after {} ms: {st}", gap(i));
    }
    // The last four waits are capped at 60 ms (uncapped: 320 + 640 + 1280 + 2560).
    let tail: u64 = (4..delays.len()).map(gap).sum();
    assert!(
        tail < 4 * 60 + 400,
        "the last four waits took {tail} ms: {st}"
    );
}

#[test]
fn restarting_state_shows_next_restart() {
    let sb = Sandbox::new();
    sb.service("slowcrash", "exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 5000, "max_backoff_ms": 5000}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let st = sb.wait_state("slowcrash", "restarting");
    let next = st["next_restart_ms"].as_u64().unwrap();
    assert!(next > 0 && next <= 5000, "{st}");
    assert!(st["pid"].is_null() && st["rss_bytes"].is_null() && st["cpu_seconds"].is_null());
    let table = sb.cli(&["status"]);
    assert!(table.stdout.contains("next restart in"), "{}", table.stdout);
    // A stop during backoff cancels the pending restart.
    assert_eq!(sb.cli(&["stop", "slowcrash"]).code, 0);
    assert_eq!(sb.service_status("slowcrash")["state"], "stopped");
}

#[test]
fn policies_on_failure_and_never() {
    let sb = Sandbox::new();
    sb.service("clean", "exit 0");
    sb.service("dirty", "exit 2");
    sb.service("signalled", "kill -SEGV $$");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "clean": {"restart": "on-failure"},
            "dirty": {"restart": "never"},
            "signalled": {"restart": "never"},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    let clean = sb.wait_state("clean", "stopped");
    assert_eq!(clean["last_exit_code"], 0);
    assert!(clean["last_error"].is_null());
    assert_eq!(clean["restarts"], 0);
    let dirty = sb.wait_state("dirty", "failed");
    assert_eq!(dirty["last_exit_code"], 2, "{dirty}");
    assert_eq!(dirty["last_error"], "exited with code 2");
    let sig = sb.wait_state("signalled", "failed");
    assert_eq!(sig["last_exit_code"], 128 + 11, "{sig}");
    assert_eq!(sig["last_error"], "killed by signal SIGSEGV");
}

#[test]
fn auto_restart_false_means_never() {
    let sb = Sandbox::new();
    sb.service("once", "exit 0");
    sb.config(
        json!({"services_dir": "services", "auto_restart": false}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let st = sb.wait_state("once", "stopped");
    assert_eq!(st["restarts"], 0);
}

#[test]
fn long_run_resets_the_restart_counter() {
    let sb = Sandbox::new();
    // Runs 400 ms, longer than reset_after_ms, then fails: the counter never climbs.
    sb.service("steady", "sleep 0.4; exit 1");
    sb.config(
        json!({"services_dir": "services", "reset_after_ms": 300, "initial_backoff_ms": 10, "max_backoff_ms": 10}),
        json!({"steady": {"max_restart_attempts": 1}}),
    );
    let d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || d
        .count_log(&["steady", "restarting"])
        >= 3));
    assert_eq!(
        d.count_log(&["steady", "(attempt 2)"]),
        0,
        "{}",
        d.log_text()
    );
    assert_ne!(sb.service_status("steady")["state"], "failed");
}

#[test]
fn stop_signals_the_whole_group_and_waits_for_it() {
    let sb = Sandbox::new();
    // The main process and a child that both exit on SIGTERM; the child lingers 300 ms.
    sb.service(
        "family",
        r#"sh -c 'trap "sleep 0.3; exit 0" TERM; while :; do sleep 0.05; done' &
trap 'exit 0' TERM
while :; do sleep 0.05; done"#,
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("family", None);
    assert!(wait_until(DEADLINE, || group_members(pid).len() >= 3));
    let out = sb.cli(&["stop", "family"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("family: stopped"), "{}", out.stdout);
    // `stop` returned once the whole group was gone.
    assert!(group_members(pid).is_empty(), "{:?}", group_members(pid));
    let st = sb.service_status("family");
    assert_eq!(st["state"], "stopped");
    assert!(st["pid"].is_null());
    // A stopped service stays stopped; stopping again succeeds and says so.
    let out = sb.cli(&["stop", "family"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "family: already stopped\n");
}

#[test]
fn stop_timeout_escalates_to_sigkill() {
    let sb = Sandbox::new();
    sb.service("stubborn", "trap '' TERM; while :; do sleep 0.05; done");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"stubborn": {"stop_timeout_ms": 300}}),
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("stubborn", None);
    let t = std::time::Instant::now();
    assert_eq!(sb.cli(&["stop", "stubborn"]).code, 0);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!alive(pid));
    d.wait_log(&["stubborn", "sending SIGKILL"]);
    assert_eq!(sb.service_status("stubborn")["last_exit_code"], 137);
}

#[test]
fn custom_stop_signal_is_used() {
    let sb = Sandbox::new();
    let marker = sb.path("got-usr1");
    sb.service(
        "usr",
        &format!(
            "trap 'touch {}; exit 0' USR1; while :; do sleep 0.05; done",
            marker.display()
        ),
    );
    sb.config(
        json!({"services_dir": "services"}),
        json!({"usr": {"stop_signal": "USR1"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("usr", None);
    assert_eq!(sb.cli(&["stop", "usr"]).code, 0);
    assert!(marker.exists());
}

#[test]
fn restart_gives_a_new_pid_and_resets_counter() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("svc", None);
    let out = sb.cli(&["restart", "svc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let new = sb.wait_running("svc", Some(pid));
    assert_ne!(new, pid);
    assert!(!alive(pid));
    let out = sb.cli(&["start", "svc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "svc: already running\n");
}

#[test]
fn sigterm_stops_everything_in_parallel_and_exits_0() {
    let sb = Sandbox::new();
    for name in ["a", "b", "c"] {
        sb.service(
            name,
            "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.05; done",
        );
    }
    sb.service("crasher", "exit 1");
    sb.config(
        // Restarts come faster than the 1 s stops: any restart during the shutdown
        // would show.
        json!({"services_dir": "services", "initial_backoff_ms": 100, "max_backoff_ms": 100}),
        json!({}),
    );
    let mut d = Daemon::start(&sb, &[]);
    let pids: Vec<i64> = ["a", "b", "c"]
        .iter()
        .map(|n| sb.wait_running(n, None))
        .collect();
    d.wait_log(&["crasher", "started"]);
    let t = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(DEADLINE);
    assert_eq!(code, Some(0), "log:\n{}", d.log_text());
    // In parallel: three 1 s stops take well under the 3 s they would take in turn.
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    for p in pids {
        assert!(group_members(p).is_empty());
    }
    assert!(!sb.socket().exists(), "socket removed at exit");
    // No restart once the shutdown began (it may have restarted before, on a slow box).
    let log = d.log_lines();
    let begun = log
        .iter()
        .position(|l| l.contains("shutting down"))
        .expect("shutdown logged");
    assert!(
        !log[begun..]
            .iter()
            .any(|l| l.contains("crasher") && l.contains("started")),
        "restart during shutdown:\n{}",
        log.join("\n")
    );
}

#[test]
fn shutdown_timeout_kills_what_is_left() {
    let sb = Sandbox::new();
    sb.service("stubborn", "trap '' TERM; while :; do sleep 0.05; done");
    sb.config(
        json!({"services_dir": "services", "shutdown_timeout_ms": 400}),
        json!({"stubborn": {"stop_timeout_ms": 60000}}),
    );
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("stubborn", None);
    d.signal(libc::SIGINT);
    assert_eq!(d.wait_exit(DEADLINE), Some(0), "{}", d.log_text());
    assert!(group_members(pid).is_empty());
    d.wait_log(&["shutdown timeout"]);
}

#[test]
fn second_signal_kills_everything_and_exits_1() {
    let sb = Sandbox::new();
    sb.service("stubborn", "trap '' TERM; while :; do sleep 0.05; done");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"stubborn": {"stop_timeout_ms": 60000}}),
    );
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("stubborn", None);
    d.signal(libc::SIGTERM);
    d.wait_log(&["stubborn", "stopping"]);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(1));
    assert!(wait_until(DEADLINE, || group_members(pid).is_empty()));
}

/// Threads that keep every CPU busy until dropped.
struct BusyCpus(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl BusyCpus {
    fn start() -> BusyCpus {
        let stop = Arc::new(AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCpus(stop, threads)
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn shutdown_is_answered_even_when_there_is_nothing_to_stop() {
    // With nothing to stop the daemon exits right after answering; on a busy machine it
    // used to exit before the connection thread had written the answer.
    let sb = Sandbox::new();
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _busy = BusyCpus::start();
    for _ in 0..20 {
        let mut d = Daemon::start(&sb, &[]);
        let out = sb.cli(&["shutdown"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(d.wait_exit(DEADLINE), Some(0));
    }
}

#[test]
fn shutdown_command_waits_until_the_daemon_is_gone() {
    let sb = Sandbox::new();
    sb.service(
        "s",
        "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done",
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("s", None);
    let out = sb.cli(&["shutdown"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!alive(pid));
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    // Now nobody answers: exit 3.
    let out = sb.cli(&["status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach the orchestrator"));
}

#[test]
fn sigkill_of_the_daemon_takes_its_children_along() {
    let sb = Sandbox::new();
    for n in ["x", "y"] {
        sb.service(n, "exec sleep 1000");
    }
    sb.config(json!({"services_dir": "services"}), json!({}));
    let mut d = Daemon::start(&sb, &[]);
    let pids: Vec<i64> = ["x", "y"]
        .iter()
        .map(|n| sb.wait_running(n, None))
        .collect();
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE);
    assert!(wait_until(Duration::from_secs(1), || pids
        .iter()
        .all(|p| !alive(*p))));
}

#[test]
fn zero_backoff_restarts_immediately_and_keeps_going() {
    let sb = Sandbox::new();
    sb.service("fast", "exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 0, "max_backoff_ms": 0}),
        json!({"fast": {"max_restart_attempts": 0}}),
    );
    let d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || sb.service_status("fast")
        ["restarts"]
        .as_u64()
        .unwrap_or(0)
        >= 50));
    assert!(d.count_log(&["fast", "restarting in 0 ms"]) >= 50);
}

/// docs/lifecycle.md `retry_failed_ms`: a service whose restart attempts ran out is tried
/// again at that interval while it keeps failing (state `failed`, next attempt shown), and
/// recovers by itself once what it needs comes back.
#[test]
fn retry_failed_ms_brings_a_service_back_after_a_long_outage() {
    let sb = Sandbox::new();
    let needed = sb.path("needed");
    sb.service(
        "patient",
        &format!("[ -e {} ] || exit 1; exec sleep 1000", needed.display()),
    );
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10,
               "max_restart_attempts": 2, "retry_failed_ms": 300}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let st = sb.wait_state("patient", "failed");
    assert_eq!(
        st["last_error"], "maximum restart attempts exceeded",
        "{st}"
    );
    assert!(
        st["next_restart_ms"].as_u64().is_some_and(|ms| ms <= 300),
        "{st}"
    );
    // Still failing: tried again and again, each time straight back to failed.
    let runs = |st: &serde_json::Value| st["history"].as_array().map_or(0, |h| h.len());
    let before = runs(&st);
    assert!(
        wait_until(DEADLINE, || runs(&sb.service_status("patient"))
            >= before + 2),
        "retried while failing"
    );
    assert_eq!(sb.service_status("patient")["state"], "failed");
    // The outage ends: the next retry runs for good.
    std::fs::write(&needed, "").unwrap();
    sb.wait_running("patient", None);
}

/// A service's own `retry_failed_ms` beats the orchestrator's, and a service without
/// one takes the orchestrator's: seen in `next_restart_ms` and in the retries made.
#[test]
fn a_services_own_retry_failed_ms_beats_the_orchestrators() {
    let sb = Sandbox::new();
    sb.service("own", "exit 1");
    sb.service("inherits", "exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10,
               "max_restart_attempts": 1, "retry_failed_ms": 600_000}),
        json!({"own": {"retry_failed_ms": 200}, "inherits": {}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let runs = |st: &serde_json::Value| st["history"].as_array().map_or(0, |h| h.len());
    let st = sb.wait_state("inherits", "failed");
    let next = st["next_restart_ms"].as_u64();
    assert!(
        next.is_some_and(|ms| ms > 300_000 && ms <= 600_000),
        "the orchestrator's value: {st}"
    );
    let st = sb.wait_state("own", "failed");
    let next = st["next_restart_ms"].as_u64();
    assert!(next.is_some_and(|ms| ms <= 200), "its own value: {st}");
    // Retried at its own pace, again and again, while the other waits its ten minutes.
    let before = runs(&st);
    assert!(
        wait_until(DEADLINE, || runs(&sb.service_status("own")) >= before + 3),
        "own was not retried at its own interval"
    );
    assert_eq!(
        runs(&sb.service_status("inherits")),
        2,
        "max_restart_attempts 1"
    );
}

/// The other halves of `retry_failed_ms`: `stop` cancels the pending retry, and a
/// service without one (null) stays failed. A third service retrying at the same pace
/// is the clock: once it has been tried three more times, the other two would have
/// been too.
#[test]
fn stop_cancels_a_retry_of_a_failed_service_and_null_means_never() {
    let sb = Sandbox::new();
    for s in ["clock", "stopped", "never"] {
        sb.service(s, "exit 1");
    }
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10,
               "max_restart_attempts": 1}),
        json!({"clock": {"retry_failed_ms": 100}, "stopped": {"retry_failed_ms": 100},
               "never": {}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let runs = |name: &str| {
        sb.service_status(name)["history"]
            .as_array()
            .map_or(0, |h| h.len())
    };
    let st = sb.wait_state("never", "failed");
    assert!(st["next_restart_ms"].is_null(), "{st}");
    let st = sb.wait_state("stopped", "failed");
    assert!(st["next_restart_ms"].is_u64(), "{st}");
    let out = sb.cli(&["stop", "stopped"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let st = sb.service_status("stopped");
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(st["next_restart_ms"].is_null(), "{st}");
    let (stopped, never) = (runs("stopped"), runs("never"));
    assert_eq!(never, 2, "max_restart_attempts 1");

    let clock = runs("clock");
    assert!(
        wait_until(DEADLINE, || runs("clock") >= clock + 3),
        "clock was not retried"
    );
    assert_eq!(runs("stopped"), stopped, "retried after stop");
    assert_eq!(sb.service_status("stopped")["state"], "stopped");
    assert_eq!(runs("never"), never, "retried without retry_failed_ms");
    assert_eq!(sb.service_status("never")["state"], "failed");
}

/// Start and reload: a retry already pending follows the `retry_failed_ms` a reload
/// gives. A shorter interval brings it sooner; null cancels it (the service stays
/// failed, as if the setting had never been there).
#[test]
fn a_reload_reschedules_or_cancels_a_pending_retry() {
    let sb = Sandbox::new();
    for s in ["clock", "patient"] {
        sb.service(s, "exit 1");
    }
    let config = |retry: Option<u64>| {
        sb.config(
            json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10,
                   "max_restart_attempts": 1}),
            json!({"clock": {"retry_failed_ms": 100}, "patient": {"retry_failed_ms": retry}}),
        )
    };
    config(Some(600_000));
    let _d = Daemon::start(&sb, &[]);
    let runs = |name: &str| {
        sb.service_status(name)["history"]
            .as_array()
            .map_or(0, |h| h.len())
    };
    let st = sb.wait_state("patient", "failed");
    assert!(st["next_restart_ms"].as_u64() > Some(300_000), "{st}");
    let before = runs("patient");

    // Ten minutes become 200 ms: the pending retry comes within that.
    config(Some(200));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let st = sb.service_status("patient");
    assert!(
        st["next_restart_ms"].as_u64().is_some_and(|ms| ms <= 200),
        "{st}"
    );
    assert!(
        wait_until(DEADLINE, || runs("patient") >= before + 2),
        "the retry kept its old ten minutes"
    );

    // Null: no retry is pending any more, and none comes.
    config(None);
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // (A retry under way when the reload came ends failed, with nothing pending.)
    let st = sb.wait_state("patient", "failed");
    assert!(st["next_restart_ms"].is_null(), "{st}");
    let (patient, clock) = (runs("patient"), runs("clock"));
    assert!(
        wait_until(DEADLINE, || runs("clock") >= clock + 3),
        "clock was not retried"
    );
    assert_eq!(
        runs("patient"),
        patient,
        "retried after retry_failed_ms went"
    );
}

/// docs/lifecycle.md `pid_file`: the started process daemonizes and exits 0; the pid in
/// its file is the run's main process. A file that names no live process, or a process
/// outside the service, is a failed start with the reason.
#[test]
fn pid_file_follows_a_daemonizing_service_and_refuses_a_bad_file() {
    let sb = Sandbox::new();
    let (good, stale, foreign) = (
        sb.path("good.pid"),
        sb.path("stale.pid"),
        sb.path("foreign.pid"),
    );
    sb.service(
        "forks",
        &format!("sleep 1000 & echo $! > {}; exit 0", good.display()),
    );
    sb.service(
        "stale",
        &format!("echo 999999 > {}; exit 0", stale.display()),
    );
    sb.service(
        "foreign",
        // This test's own process: alive, and nothing of the service's.
        &format!(
            "echo {} > {}; exit 0",
            std::process::id(),
            foreign.display()
        ),
    );
    let entry = |p: &std::path::Path| {
        json!({"pid_file": p, "stop_timeout_ms": 1000,
                                              "restart": "never", "pass_service_args": false})
    };
    sb.config(
        json!({"services_dir": "services"}),
        json!({"forks": entry(&good), "stale": entry(&stale), "foreign": entry(&foreign)}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("forks", None);
    let written: i64 = std::fs::read_to_string(&good)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, written, "the main process is the one the file names");
    assert!(cmdline(pid).contains("sleep"), "{}", cmdline(pid));
    let st = sb.wait_state("stale", "failed");
    assert!(
        st["last_error"].as_str().unwrap_or("").contains("stale"),
        "{st}"
    );
    let st = sb.wait_state("foreign", "failed");
    let why = st["last_error"].as_str().unwrap_or("");
    assert!(why.contains("not the service's"), "{st}");
    // Its exit ends the run, although it was never the orchestrator's own child from
    // the start; stop takes it down.
    let out = sb.cli(&["stop", "forks"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        wait_until(DEADLINE, || !alive(pid)),
        "the daemon is gone after stop"
    );
}
