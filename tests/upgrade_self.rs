//! `upgrade-self` (docs/unattended.md): the daemon re-executes onto a copy of itself and
//! keeps its pid, its children and every line of their output; deadlines (a backoff, a
//! stop, an upgrade's window) carry on where they were; a binary that cannot take over is
//! refused and nothing changes.

use crate::sockets::{ask_tcp, free_port, server_body, Prober};
use crate::util::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A copy of the orchestrator under another name, as a new version would be.
fn new_binary(sb: &Sandbox) -> PathBuf {
    let p = sb.path("orchestrator-new");
    copy_executable(BIN, &p);
    p
}

fn exe(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn upgrade_self(sb: &Sandbox, path: &std::path::Path) -> Output {
    sb.cli(&["upgrade-self", path.to_str().unwrap()])
}

/// Waits until the daemon has finished taking over (its successor logged it).
fn wait_took_over(d: &Daemon, n: usize) {
    let ok = wait_until(DEADLINE, || d.count_log(&["upgrade-self: took over"]) >= n);
    assert!(ok, "no take-over; log:\n{}", d.log_text());
}

#[test]
fn numbered_lines_pass_the_handover_none_lost_or_repeated() {
    let sb = Sandbox::new();
    sb.service(
        "counter",
        "i=0\nwhile :; do i=$((i+1)); echo \"n $i\"; done",
    );
    sb.service("sleeper", "exec sleep 1000");
    sb.config(
        json!({"log_dir": "logs", "log_max_bytes": 1_000_000_000u64}),
        json!({"counter": {}, "sleeper": {}}),
    );
    let d = Daemon::start(&sb, &[]);
    let counter = sb.wait_running("counter", None);
    let sleeper = sb.wait_running("sleeper", None);
    let new = new_binary(&sb);
    // Twice: the successor hands over again just as well.
    for round in 1..=2 {
        let out = upgrade_self(&sb, &new);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("took over"), "{}", out.stdout);
        wait_took_over(&d, round);
    }
    assert_eq!(exe(d.pid), new, "the daemon runs the new binary");
    // The pipes themselves came over: the same process goes on being read (a pipe left
    // behind would leave it writing into nothing, or dead of SIGPIPE).
    let last = |text: &str| {
        text.lines()
            .filter_map(|l| l.split_once("stdout: n ")?.1.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let log = sb.path("logs/counter.log");
    let at_handover = last(&std::fs::read_to_string(&log).unwrap_or_default());
    let ok = wait_until(DEADLINE, || {
        last(&std::fs::read_to_string(&log).unwrap_or_default()) > at_handover + 1000
    });
    assert!(ok, "no output after the handover; log:\n{}", d.log_text());
    // Same daemon pid, same service processes, still supervised.
    assert_eq!(sb.cli(&["status", "--json"]).code, 0);
    assert_eq!(sb.service_status("counter")["pid"], counter);
    assert_eq!(sb.service_status("sleeper")["pid"], sleeper);
    let out = sb.cli(&["stop", "counter"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The log file has every number exactly once, in order, across both handovers.
    let text = std::fs::read_to_string(sb.path("logs/counter.log")).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_once("stdout: n ")?.1.trim().parse().ok())
        .collect();
    assert!(numbers.len() > 1000, "only {} lines", numbers.len());
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "line {} of the log", i + 1);
    }
    // The kept lines came over too: `logs` still has the first ones' successors.
    let out = sb.cli(&["logs", "counter", "-n", "5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("n "), "{}", out.stdout);
}

#[test]
fn a_backoff_restart_comes_when_it_was_due() {
    let sb = Sandbox::new();
    sb.service("crash", "echo \"run $$ says hello\"\nexit 3");
    sb.config(
        json!({"initial_backoff_ms": 2000, "max_backoff_ms": 2000}),
        json!({"crash": {}}),
    );
    let d = Daemon::start(&sb, &[]);
    let ok = wait_until(DEADLINE, || {
        sb.service_status("crash")["state"] == "restarting"
    });
    assert!(ok, "{}", d.log_text());
    let s = sb.service_status("crash");
    let exited = s["history"][0]["exited"].as_i64().unwrap();
    let kept = sb.cli(&["logs", "crash"]).stdout;
    assert!(kept.contains("says hello"), "{kept}");
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    // The kept lines came over: the first run's line and records, unchanged.
    assert_eq!(sb.service_status("crash")["state"], "restarting");
    assert_eq!(sb.cli(&["logs", "crash"]).stdout, kept);
    // The second run starts 2 s after the first one's exit (the backoff has a ±10%
    // jitter at most): neither lost nor started over.
    let ok = wait_until(DEADLINE, || {
        sb.service_status("crash")["history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2)
    });
    assert!(ok, "no restart; log:\n{}", d.log_text());
    let started = sb.service_status("crash")["history"][1]["started"]
        .as_i64()
        .unwrap();
    let delay = started - exited;
    assert!(
        (1700..=2600).contains(&delay),
        "restarted {delay} ms after the exit"
    );
    assert_eq!(sb.service_status("crash")["restarts"], 1);
}

#[test]
fn a_stop_under_way_finishes_after_the_handover() {
    let sb = Sandbox::new();
    sb.service("stubborn", "trap '' TERM\nwhile :; do sleep 0.05; done");
    sb.config(json!({}), json!({"stubborn": {"stop_timeout_ms": 3000}}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("stubborn", None);
    // `stop` waits for the stop; its connection ends with the exec, so it is sent
    // from a thread that is not waited for.
    let asked = Instant::now();
    let asked_ms = wall_ms();
    let cfg = sb.path("orchestrator.json");
    let stop = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["stop", "stubborn", "--config", cfg.to_str().unwrap()]);
        run_with_timeout(cmd, Duration::from_secs(30))
    });
    let ok = wait_until(DEADLINE, || d.count_log(&["stubborn", "stopping"]) > 0);
    assert!(ok, "{}", d.log_text());
    // Half the stop timeout has gone when the handover comes: a deadline started
    // afresh by the new image would kill 1.5 s late. (The point is time passing.)
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(asked.elapsed()));
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    assert!(alive(pid), "the stop timeout has not passed yet");
    let s = sb.wait_state("stubborn", "stopped");
    assert!(!alive(pid));
    assert_eq!(s["last_exit_code"], 137, "{s}");
    // Killed when the timeout that began before the handover ran out: 3 s after the
    // stop was asked for, not 3 s after the handover (4.5 s).
    let exited = s["history"][0]["exited"].as_u64().unwrap();
    let took = exited.saturating_sub(asked_ms);
    assert!(
        (2900..4200).contains(&took),
        "killed {took} ms after the stop"
    );
    let _ = stop.join();
}

#[test]
fn an_upgrade_window_under_way_still_rolls_back() {
    let sb = Sandbox::new();
    let port = free_port();
    sb.service("web", &server_body("v1"));
    sb.config(
        json!({}),
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}],
                       "upgrade_grace_ms": 4000}}),
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let prober = Prober::start(port);
    prober.wait_answer_from(pid);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let bad = sb.path("new/web-bad");
    sb.script(&bad, "sleep 1.5\nexit 3");
    let cfg = sb.path("orchestrator.json");
    let upgrade = std::thread::spawn({
        let bad = bad.clone();
        move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.args([
                "upgrade",
                "web",
                bad.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ]);
            run_with_timeout(cmd, Duration::from_secs(30))
        }
    });
    let ok = wait_until(DEADLINE, || {
        d.count_log(&["web", "upgrade"]) > 0 && sb.service_status("web")["pid"] != pid
    });
    assert!(ok, "{}", d.log_text());
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    let ok = wait_until(DEADLINE, || {
        sb.service_status("web")["upgrades"]
            .as_array()
            .and_then(|u| u.last().cloned())
            .is_some_and(|u| {
                u["result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("rolled back: exited with code 3"))
            })
    });
    assert!(ok, "{}\n{}", sb.service_status("web"), d.log_text());
    let again = sb.wait_running("web", Some(pid));
    prober.wait_answer_from(again);
    assert!(ask_tcp(port).unwrap().starts_with("v1 "));
    let _ = prober.finish();
    let _ = upgrade.join();
}

#[test]
fn a_binary_that_cannot_take_over_is_refused_and_nothing_changes() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let services = sb.path("services");
    let d = Daemon::start(&sb, &["--services-dir", services.to_str().unwrap()]);
    let pid = sb.wait_running("sleeper", None);
    let before = exe(d.pid);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    // Not an orchestrator; one too old to take over (it knows no --resume-format);
    // one that refuses the config; not executable; missing.
    let old = sb.path("new/old");
    sb.script(&old, "[ \"$1\" = --version ] && echo 'orchestrator 0.0.1' && exit 0\necho \"unknown flag $1\" >&2\nexit 2");
    let picky = sb.path("new/picky");
    sb.script(
        &picky,
        "case \"$1\" in\n--version) echo 'orchestrator 9.9';;\n--resume-format) echo 1;;\n*) echo 'unknown key x' >&2; exit 2;;\nesac",
    );
    let plain = sb.path("new/plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    for (path, why) in [
        (PathBuf::from("/bin/true"), "not an orchestrator"),
        (old, "cannot take over from this one"),
        (picky, "refuses the current config"),
        (plain, "is not executable"),
        (sb.path("new/missing"), "No such file"),
    ] {
        let out = upgrade_self(&sb, &path);
        assert_eq!(
            out.code,
            1,
            "{}: {}{}",
            path.display(),
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains(why),
            "{}: {}",
            path.display(),
            out.stderr
        );
        assert_eq!(exe(d.pid), before);
        assert_eq!(sb.service_status("sleeper")["pid"], pid);
    }
    assert_eq!(d.count_log(&["handing over"]), 0, "{}", d.log_text());
    // A config file changed since it was loaded is refused too: reload first.
    sb.config(json!({}), json!({"sleeper": {"stop_timeout_ms": 1234}}));
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("reload first"), "{}", out.stderr);
    assert_eq!(exe(d.pid), before);
}

#[test]
fn a_log_follower_is_told_why_its_stream_ended() {
    use std::io::{BufRead, BufReader, Read};
    let sb = Sandbox::new();
    sb.service("talker", "echo first\nexec sleep 1000");
    sb.config(json!({}), json!({"talker": {}}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("talker", None);
    let mut follower = std::process::Command::new(BIN)
        .args(["logs", "-f", "talker", "--config"])
        .arg(sb.path("orchestrator.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(follower.id() as i32);
    // Streaming once its first line is out.
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("first") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
    }
    let up = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(up.code, 0, "{}{}", up.stdout, up.stderr);
    let ok = wait_until(DEADLINE, || matches!(follower.try_wait(), Ok(Some(_))));
    assert!(ok, "the follower is still connected");
    let code = follower.wait().unwrap().code();
    let mut err = String::new();
    follower
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("follow again"), "{err}");
    wait_took_over(&d, 1);
    drop(guard);
}

/// Kills a client process the test started, should the test fail before it exits.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is a child of this test
        // not yet reaped (its zombie keeps the pid), or already gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Bytes written into the pipe that `pid`'s stdout is and not read yet.
fn unread_stdout(pid: i64) -> Option<i32> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/1"))
        .ok()?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into n.
    let r = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) };
    (r == 0).then_some(n)
}

#[test]
fn a_line_read_in_half_is_finished_after_the_handover() {
    let sb = Sandbox::new();
    let (wrote, go) = (sb.path("wrote"), sb.path("go"));
    sb.service(
        "halves",
        &format!(
            "printf 'first half, '\n: > {}\nwhile [ ! -e {} ]; do sleep 0.02; done\necho 'second half'\nexec sleep 1000",
            wrote.display(),
            go.display()
        ),
    );
    sb.config(json!({}), json!({"halves": {}}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("halves", None);
    // The first half has been read out of the pipe: the old reader holds it, unfinished.
    let ok = wait_until(DEADLINE, || wrote.exists() && unread_stdout(pid) == Some(0));
    assert!(ok, "the first half was never read; log:\n{}", d.log_text());
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    std::fs::write(&go, "").unwrap();
    let ok = wait_until(DEADLINE, || {
        sb.cli(&["logs", "halves"]).stdout.contains("second half")
    });
    assert!(ok, "no second half; log:\n{}", d.log_text());
    let kept = sb.cli(&["logs", "halves"]).stdout;
    assert!(kept.contains("first half, second half"), "{kept}");
    assert_eq!(sb.service_status("halves")["pid"], pid);
}

#[test]
fn a_stop_waiting_for_its_dependents_is_carried_out_after_the_handover() {
    let sb = Sandbox::new();
    sb.service("db", "exec sleep 1000");
    sb.service("web", "trap '' TERM\nwhile :; do sleep 0.05; done");
    sb.config(
        json!({}),
        json!({"db": {}, "web": {"depends_on": ["db"], "stop_timeout_ms": 1500}}),
    );
    let d = Daemon::start(&sb, &[]);
    let db = sb.wait_running("db", None);
    let web = sb.wait_running("web", None);
    // `stop db` stops web first; db's own stop waits in the set of stops asked for.
    let cfg = sb.path("orchestrator.json");
    let stop = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["stop", "db", "--config", cfg.to_str().unwrap()]);
        run_with_timeout(cmd, Duration::from_secs(30))
    });
    let ok = wait_until(DEADLINE, || d.count_log(&["web", "stopping"]) > 0);
    assert!(ok, "{}", d.log_text());
    assert!(alive(db));
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    assert!(alive(db), "db goes only once web has gone");
    sb.wait_state("web", "stopped");
    assert!(!alive(web));
    let ok = wait_until(DEADLINE, || sb.service_status("db")["state"] == "stopped");
    assert!(ok, "db was never stopped: {}", sb.service_status("db"));
    assert!(!alive(db));
    let _ = stop.join();
}

#[test]
fn a_signal_during_the_exec_waits_for_the_new_image() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("sleeper", None);
    // The new binary gets SIGTERM the moment it is executed, before any handler can be
    // in place: a wrapper that signals itself (same pid) and then execs the real one.
    let real = new_binary(&sb);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let wrapper = sb.path("new/orchestrator-signalled");
    sb.script(
        &wrapper,
        &format!(
            "[ \"$1\" = run ] && kill -TERM $$\nexec {} \"$@\"",
            real.display()
        ),
    );
    let out = upgrade_self(&sb, &wrapper);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // It waited, blocked, and shut the new image down cleanly once it could.
    let code = d.wait_exit(DEADLINE);
    assert_eq!(code, Some(0), "log:\n{}", d.log_text());
    assert_eq!(d.count_log(&["upgrade-self: took over"]), 1);
    assert_eq!(d.count_log(&["SIGTERM received"]), 1, "{}", d.log_text());
    assert!(!alive(pid));
}

/// A service with kept lines enough for a `logs` answer far larger than a socket's
/// buffers, and a client that asks for them and does not read: its answer stays
/// unwritten, so the old image waits its full second for it after answering
/// `upgrade-self`, and what the test does just after the answer surely meets the old
/// image, not the new one. The service's pid and the client.
fn old_image_held_after_the_answer(
    sb: &Sandbox,
    d: &Daemon,
) -> (i64, std::os::unix::net::UnixStream) {
    use std::io::{Read, Write};
    let pid = sb.wait_running("big", None);
    let ok = wait_until(DEADLINE, || {
        sb.cli(&["logs", "big", "-n", "100"]).stdout.lines().count() >= 16
    });
    assert!(ok, "{}", d.log_text());
    let mut stuck = std::os::unix::net::UnixStream::connect(sb.socket()).unwrap();
    stuck
        .write_all(b"{\"cmd\":\"logs\",\"service\":\"big\",\"lines\":100}\n")
        .unwrap();
    let mut first = [0u8; 1];
    stuck.read_exact(&mut first).unwrap();
    (pid, stuck)
}

/// Starts a daemon with only `big`, which writes 16 lines of 60000 bytes and sleeps.
fn start_with_big(sb: &Sandbox) -> Daemon {
    sb.service(
        "big",
        "i=0\nwhile [ $i -lt 16 ]; do head -c 60000 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done\nexec sleep 1000",
    );
    sb.config(json!({}), json!({"big": {}}));
    Daemon::start(sb, &[])
}

#[test]
fn a_signal_right_after_the_answer_still_shuts_everything_down() {
    let sb = Sandbox::new();
    let mut d = start_with_big(&sb);
    let (pid, stuck) = old_image_held_after_the_answer(&sb, &d);
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(DEADLINE);
    assert_eq!(code, Some(0), "log:\n{}", d.log_text());
    assert_eq!(d.count_log(&["upgrade-self: took over"]), 1);
    assert_eq!(d.count_log(&["SIGTERM received"]), 1, "{}", d.log_text());
    assert!(!alive(pid));
    drop(stuck);
}

#[test]
fn a_client_right_after_the_answer_is_served_by_the_new_image() {
    let sb = Sandbox::new();
    let d = start_with_big(&sb);
    let (pid, stuck) = old_image_held_after_the_answer(&sb, &d);
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // The old image is still there (for up to a second): this client waits in the
    // backlog and gets its answer from the new image, not a cut connection.
    let out = sb.cli(&["status", "big"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        d.count_log(&["upgrade-self: took over"]),
        1,
        "{}",
        d.log_text()
    );
    assert_eq!(sb.service_status("big")["pid"], pid);
    drop(stuck);
}

#[test]
fn a_second_upgrade_self_during_the_checks_is_refused() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("sleeper", None);
    // A new binary whose `check` waits until told: the first upgrade-self is held in
    // its checks while the second comes.
    let real = new_binary(&sb);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let (checking, go) = (sb.path("checking"), sb.path("go"));
    let slow = sb.path("new/orchestrator-slow");
    sb.script(
        &slow,
        &format!(
            "if [ \"$1\" = check ]; then : > {}; while [ ! -e {} ]; do sleep 0.02; done; fi\nexec {} \"$@\"",
            checking.display(),
            go.display(),
            real.display()
        ),
    );
    let cfg = sb.path("orchestrator.json");
    let first = std::thread::spawn({
        let slow = slow.clone();
        move || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.args(["upgrade-self", slow.to_str().unwrap(), "--config"])
                .arg(cfg);
            run_with_timeout(cmd, Duration::from_secs(30))
        }
    });
    let ok = wait_until(DEADLINE, || checking.exists());
    assert!(ok, "{}", d.log_text());
    let second = upgrade_self(&sb, &slow);
    std::fs::write(&go, "").unwrap();
    assert_eq!(second.code, 1, "{}{}", second.stdout, second.stderr);
    assert!(
        second.stderr.contains("another upgrade-self is under way"),
        "{}",
        second.stderr
    );
    let first = first.join().unwrap();
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    wait_took_over(&d, 1);
    assert_eq!(sb.service_status("sleeper")["pid"], pid);
    assert_eq!(d.count_log(&["upgrade-self: took over"]), 1);
}

/// READY=1 sent while the old image finishes (held a second by a slow client) is not
/// lost: neither taken by the old notify reader with its wake-up dying in the queue,
/// nor refused by a socket closed with the exec. Else it stays `starting` for ever.
#[test]
fn a_ready_sent_while_the_old_image_finishes_reaches_the_new_one() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-notify"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no systemd-notify");
        return;
    }
    let sb = Sandbox::new();
    let go = sb.path("go");
    sb.service(
        "big",
        "i=0\nwhile [ $i -lt 16 ]; do head -c 60000 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done\nexec sleep 1000",
    );
    sb.service(
        "web",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.01; done\nsystemd-notify --ready\nexec sleep 1000",
            go = go.display()
        ),
    );
    sb.config(json!({}), json!({"big": {}, "web": {"ready": "notify"}}));
    let d = Daemon::start(&sb, &[]);
    let (_, stuck) = old_image_held_after_the_answer(&sb, &d);
    assert_eq!(sb.service_status("web")["state"], "starting");
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // The old image is still there for up to a second: READY=1 comes to it.
    std::fs::write(&go, "").unwrap();
    let ok = wait_until(DEADLINE, || sb.service_status("web")["state"] == "running");
    let log: String = d
        .log_text()
        .lines()
        .filter(|l| !l.contains("big["))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(ok, "READY=1 lost; log:\n{log}");
    wait_took_over(&d, 1);
    drop(stuck);
}

/// `--daemon` moves to `/`: the relative `--config` and `--pidfile` it was started with
/// must still name the same files for the checks, for a reload and for the new image
/// (its argv is made absolute, not reused as typed).
#[test]
fn a_detached_daemon_started_with_relative_paths_takes_over() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs"}),
        json!({"sleeper": {}}),
    );
    let pidfile = sb.path("d.pid");
    let mut cmd = std::process::Command::new(BIN);
    // Relative to the directory it was started in; --daemon moves to /.
    cmd.args([
        "run",
        "--daemon",
        "--config",
        "orchestrator.json",
        "--pidfile",
        "d.pid",
    ])
    .current_dir(sb.path(""));
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // `run --daemon` returns once the daemon serves: the pidfile names it already.
    let d = Detached::from_pidfile(&sb, &pidfile).expect("the pidfile names the daemon");
    let pid = d.pid;
    let sleeper = sb.wait_running("sleeper", None);
    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let log = || std::fs::read_to_string(sb.path("logs/orchestrator.log")).unwrap_or_default();
    let ok = wait_until(DEADLINE, || log().contains("upgrade-self: took over"));
    assert!(ok, "no take-over; log:\n{}", log());
    assert!(alive(pid as i64));
    assert_eq!(sb.service_status("sleeper")["pid"], sleeper);
    // The relative paths still name the same files for a reload, and the pidfile.
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    let _ = sb.cli(&["shutdown"]);
}

/// The answer comes from the new image: an exec that fails (here the binary checked
/// loses its execute bits once checked) is reported to the client as the failure it is.
#[test]
fn an_exec_that_fails_after_the_checks_is_not_reported_as_done() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("sleeper", None);
    let real = new_binary(&sb);
    std::fs::create_dir_all(sb.path("new")).unwrap();
    let vanishing = sb.path("new/orchestrator-unexecutable");
    sb.script(
        &vanishing,
        &format!(
            "if [ \"$1\" = check ]; then {} \"$@\"; s=$?; chmod a-x \"$0\"; exit $s; fi\nexec {} \"$@\"",
            real.display(),
            real.display()
        ),
    );
    let out = upgrade_self(&sb, &vanishing);
    let failed = wait_until(Duration::from_secs(5), || {
        d.count_log(&["upgrade-self: cannot execute"]) > 0
    });
    assert!(failed, "the exec did not fail; log:\n{}", d.log_text());
    assert_eq!(out.code, 1, "told success: {}{}", out.stdout, out.stderr);
}

/// `upgrade-self` from a daemon that reaps orphans: the checks of the new binary are
/// children of the daemon, which its orphan reaper must leave to their waiter.
fn upgrade_twice_while_reaping_orphans(sb: &Sandbox, d: &Daemon, service: &str) {
    let pid = sb.wait_running(service, None);
    d.wait_log(&["reaping orphans"]);
    let new = new_binary(sb);
    for round in 1..=2 {
        let out = upgrade_self(sb, &new);
        assert_eq!(out.code, 0, "round {round}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("took over"), "{}", out.stdout);
        wait_took_over(d, round);
        assert_eq!(exe(d.pid), new);
        assert_eq!(sb.service_status(service)["pid"], pid);
    }
}

#[test]
fn a_subreaper_daemon_upgrades_itself() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({"subreaper": true}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    upgrade_twice_while_reaping_orphans(&sb, &d, "sleeper");
}

/// A `pid_file` service makes the daemon a subreaper (its daemon is reparented to us).
#[test]
fn a_daemon_with_a_pid_file_service_upgrades_itself() {
    let sb = Sandbox::new();
    let pid_file = sb.path("forks.pid");
    sb.service(
        "forks",
        &format!("sleep 1000 & echo $! > {}; exit 0", pid_file.display()),
    );
    sb.config(
        json!({}),
        json!({"forks": {"pid_file": pid_file, "pass_service_args": false}}),
    );
    let d = Daemon::start(&sb, &[]);
    upgrade_twice_while_reaping_orphans(&sb, &d, "forks");
}

/// As PID 1 of a PID namespace (an init's own deployment), `upgrade-self` works too.
#[test]
fn as_pid_1_the_daemon_upgrades_itself() {
    if !crate::util::is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid --fork --mount-proc is not available here");
        return;
    }
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        BIN,
        "run",
        "--config",
    ])
    .arg(sb.path("orchestrator.json"))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut unshare = cmd.spawn().unwrap();
    let _guard = PidNamespace(sb.dir.clone(), unshare.id() as i32);
    assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
    let pid = sb.wait_running("sleeper", None);
    let new = new_binary(&sb);
    for round in 1..=2 {
        let out = upgrade_self(&sb, &new);
        assert_eq!(out.code, 0, "round {round}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("took over"), "{}", out.stdout);
        assert_eq!(sb.service_status("sleeper")["pid"], pid);
    }
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
    assert_eq!(unshare.wait().unwrap().code(), Some(0));
}

/// Kills what a PID-namespace test left: the namespace goes with unshare's group.
struct PidNamespace(PathBuf, i32);

impl Drop for PidNamespace {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.0);
        unsafe { libc::killpg(self.1, libc::SIGKILL) };
    }
}

/// `upgrade-self` while a `pid_file` service's launcher has exited and its pid file is
/// not written yet: the new image keeps the launcher unreaped (a zombie: its pid is
/// still its daemon's group, and must not be reused), and the start carries on.
#[test]
fn a_launcher_whose_pid_file_is_awaited_stays_unreaped_across_the_handover() {
    let sb = Sandbox::new();
    let (pid_file, launcher_file, go) =
        (sb.path("late.pid"), sb.path("launcher.pid"), sb.path("go"));
    let daemon = sb.path("late-daemon.sh");
    sb.script(
        &daemon,
        &format!(
            "while [ ! -e {go} ]; do sleep 0.05; done\necho $$ > {pid}\nexec sleep 1000",
            go = go.display(),
            pid = pid_file.display()
        ),
    );
    sb.service(
        "late",
        &format!(
            "echo $$ > {}; {} & exit 0",
            launcher_file.display(),
            daemon.display()
        ),
    );
    sb.config(
        json!({}),
        json!({"late": {"pid_file": pid_file, "stop_timeout_ms": 60_000,
                        "pass_service_args": false}}),
    );
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["late", "reading the pid file"]);
    let launcher: i64 = std::fs::read_to_string(&launcher_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let zombie = |pid: i64| proc_stat(pid).is_some_and(|f| f[2] == "Z");
    assert!(zombie(launcher), "the launcher is kept unreaped");

    let out = upgrade_self(&sb, &new_binary(&sb));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d, 1);
    // A request answered after the take-over: whatever the new image did with the
    // launcher on resuming, it has done.
    assert_eq!(sb.service_status("late")["state"], "starting");
    assert!(
        zombie(launcher),
        "the launcher is still unreaped after the handover; log:\n{}",
        d.log_text()
    );

    std::fs::write(&go, "").unwrap();
    let pid = sb.wait_running("late", None);
    assert_eq!(Some(pid), first_line_pid(&pid_file));
    assert!(
        wait_until(DEADLINE, || !zombie(launcher)),
        "reaped once read"
    );
    assert_eq!(sb.cli(&["stop", "late"]).code, 0);
    sb.wait_state("late", "stopped");
    assert!(wait_until(DEADLINE, || !alive(pid)));
}
