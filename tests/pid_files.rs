//! `pid_file` services, which daemonize themselves, against real daemons where
//! one shows the behaviour: the pid is the file's first line (PostgreSQL), the daemon
//! it names is the run (memcached), a stop while the file is awaited gets the stop
//! signal, and a file is believed only when it names a process of the service, read
//! never through a symlink. A daemon whose own parent lives on is the run all the same;
//! one adopted through the subreaper outlives a SIGKILLed orchestrator until the next
//! start clears it.

use crate::util::packages;
use crate::util::*;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The uid and gid of `user` from /etc/passwd.
fn account(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// The newest PostgreSQL's program directory.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("pg_ctl").is_file() && b.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// PostgreSQL started the way its packages do (`pg_ctl start`): `postmaster.pid` holds
/// the pid on its first line and other facts after it. The postmaster is the run; it
/// stays running past `stop_timeout_ms`, and a stop shuts the cluster down cleanly (the
/// next start finds no crash to recover from).
#[test]
fn postgres_through_pg_ctl_runs_and_stops_clean() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: PostgreSQL refuses root; running it as postgres needs root");
        return;
    }
    // Recorded skips (failures under ORCH_REQUIRE_PACKAGES=1), as for any program.
    let Some(bin) = postgres_bin() else {
        packages::missing(
            "no PostgreSQL in /usr/lib/postgresql/*/bin: install the Debian package postgresql",
        );
        return;
    };
    let Some((uid, gid)) = account("postgres") else {
        packages::missing("no postgres user: install the Debian package postgresql");
        return;
    };
    let sb = Sandbox::new();
    sb.open_to_other_users();
    let pg = sb.path("pg");
    std::fs::create_dir(&pg).unwrap();
    std::os::unix::fs::chown(&pg, Some(uid), Some(gid)).unwrap();
    let data = pg.join("data");
    let out = Command::new(bin.join("initdb"))
        .args(["-D", data.to_str().unwrap(), "--auth=trust", "--no-sync"])
        .uid(uid)
        .gid(gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C")
        .current_dir(&pg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = pg.join("postgres.log");
    let options = format!("-k {} -c listen_addresses=''", pg.display());
    let stop_timeout = Duration::from_millis(2000);
    sb.config(
        json!({}),
        json!({"postgres": {
            "binary_path": bin.join("pg_ctl"),
            "args": ["start", "-D", data, "-l", log, "-o", options],
            "pass_service_args": false,
            "user": "postgres",
            "pid_file": data.join("postmaster.pid"),
            "stop_signal": "SIGINT",
            "stop_timeout_ms": stop_timeout.as_millis() as u64,
            "environment": {"LANG": "C"},
        }}),
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("postgres", None);
    let since = Instant::now();
    assert_eq!(Some(pid), first_line_pid(&data.join("postmaster.pid")));
    assert!(cmdline(pid).contains("postgres"), "{}", cmdline(pid));
    // Past the start's deadline it still runs, the same process, never restarted.
    let steady = wait_until(DEADLINE, || {
        let st = sb.service_status("postgres");
        assert_eq!(st["state"], "running", "{st}; log:\n{}", d.log_text());
        assert_eq!(st["pid"], pid, "{st}");
        assert_eq!(st["restarts"], 0, "{st}");
        since.elapsed() > stop_timeout + Duration::from_millis(500)
    });
    assert!(steady);
    let out = sb.cli(&["stop", "postgres"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    sb.wait_state("postgres", "stopped");
    assert!(!alive(pid), "the postmaster is gone after stop");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("database system is shut down"), "{text}");
    assert_eq!(d.count_log(&["postgres", "SIGKILL"]), 0, "{}", d.log_text());
    // Started again: a clean shutdown, nothing to recover.
    let out = sb.cli(&["start", "postgres"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = sb.wait_running("postgres", Some(pid));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("database system was shut down at"), "{text}");
    assert!(!text.contains("was interrupted"), "{text}");
    assert!(!text.contains("automatic recovery"), "{text}");
    assert_eq!(sb.cli(&["stop", "postgres"]).code, 0);
    sb.wait_state("postgres", "stopped");
    assert!(!alive(again));
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn memcached_version(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    s.write_all(b"version\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"VERSION "))
}

/// memcached `-d -P FILE`: the launcher's exit 0 is no run's end. While the daemon runs,
/// no exit code, an open history record and no error; its SIGKILL is the run's end
/// (137), which the next launcher's 0 does not overwrite.
#[test]
fn memcached_daemonized_is_the_run_and_its_crash_stays_shown() {
    packages::with("memcached", "/usr/bin/memcached", |memcached| {
        let sb = Sandbox::new();
        let port = free_port();
        let run = sb.path("run");
        std::fs::create_dir(&run).unwrap();
        let pid_file = run.join("memcached.pid");
        // As root memcached wants `-u`; as nobody it needs none, and writes its pid
        // file in a directory nobody owns.
        let root = unsafe { libc::geteuid() } == 0;
        let mut entry = json!({
            "binary_path": memcached,
            "args": ["-d", "-P", pid_file, "-p", port.to_string(), "-U", "0",
                     "-l", "127.0.0.1", "-m", "8"],
            "pass_service_args": false,
            "pid_file": pid_file,
            "restart": "always",
        });
        if root {
            sb.open_to_other_users();
            std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
            entry["user"] = json!("nobody");
        }
        sb.config(json!({}), json!({ "memcached": entry }));
        let d = Daemon::start(&sb, &[]);
        let pid = sb.wait_running("memcached", None);
        assert_eq!(Some(pid), first_line_pid(&pid_file));
        assert!(
            wait_until(DEADLINE, || memcached_version(port)),
            "memcached does not answer; log:\n{}",
            d.log_text()
        );
        let st = sb.service_status("memcached");
        assert!(st["last_exit_code"].is_null(), "no run has ended: {st}");
        assert!(st["last_error"].is_null(), "{st}");
        let history = st["history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{st}");
        assert!(history[0]["exited"].is_null(), "the run goes on: {st}");
        assert!(history[0]["exit_code"].is_null(), "{st}");

        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let again = sb.wait_running("memcached", Some(pid));
        assert!(wait_until(DEADLINE, || memcached_version(port)));
        let st = sb.service_status("memcached");
        assert_eq!(st["last_exit_code"], 137, "the crash stays shown: {st}");
        assert_eq!(st["pid"], again);
        let history = st["history"].as_array().unwrap();
        assert_eq!(history.len(), 2, "{st}");
        assert_eq!(history[0]["exit_code"], 137, "{st}");
        assert!(history[1]["exited"].is_null(), "{st}");
        assert!(
            !st["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("No such file"),
            "{st}"
        );

        let out = sb.cli(&["stop", "memcached"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        sb.wait_state("memcached", "stopped");
        assert!(!alive(again), "memcached is gone after stop");
    });
}

/// A launcher that forks a daemon (in a session of its own) which is slow to write its
/// pid file (here: never, in time), and which notes each SIGTERM it gets in `log`; with `ignore`, it lives on.
fn slow_daemon(sb: &Sandbox, name: &str, ignore: bool) -> (PathBuf, PathBuf) {
    let log = sb.path(&format!("{name}.log"));
    let pid_file = sb.path(&format!("{name}.pid"));
    let daemon = sb.path(&format!("{name}-daemon.sh"));
    let on_term = if ignore {
        format!("echo TERM >> {}", log.display())
    } else {
        format!("echo TERM >> {}; exit 0", log.display())
    };
    sb.script(
        &daemon,
        &format!(
            "trap '{on_term}' TERM\necho up >> {log}\nwhile :; do sleep 0.05; done",
            log = log.display()
        ),
    );
    // The daemon leaves the launcher's session and group, as a real one does.
    sb.service(name, &format!("setsid {} & exit 0", daemon.display()));
    (log, pid_file)
}

fn daemon_pid(sb: &Sandbox, name: &str) -> Option<i64> {
    let script = sb.path(&format!("{name}-daemon.sh"));
    let needle = script.to_str().unwrap();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .find(|p| cmdline(*p).contains(needle))
}

/// A stop between the launcher's exit and the pid file naming the daemon: whatever
/// runs of the service gets the stop signal, and SIGKILL only at the stop timeout.
#[test]
fn a_stop_while_the_pid_file_is_awaited_sends_the_stop_signal_first() {
    // Through the service's cgroup (as root), then without cgroups (as root, the daemon
    // as nobody has none) through what descends from the launcher: the daemon left its
    // session and group, and was reparented to us. One service at a time: without
    // cgroups, two daemons that left the sessions of launchers started together cannot
    // be told apart, and a stop reaches neither.
    let runs: &[Option<u32>] = if unsafe { libc::geteuid() } == 0 {
        &[None, Some(65534)]
    } else {
        &[None]
    };
    for &uid in runs {
        stop_while_awaited(uid, "polite", false);
        stop_while_awaited(uid, "stubborn", true);
    }
}

/// `name`'s daemon is slow to write its pid file; with `ignore`, it ignores SIGTERM.
fn stop_while_awaited(uid: Option<u32>, name: &str, ignore: bool) {
    let sb = Sandbox::new();
    let (log, pid_file) = slow_daemon(&sb, name, ignore);
    let timeout = if ignore { 5_000 } else { 60_000 };
    sb.config(
        json!({"services_dir": "services"}),
        json!({name: {"pid_file": pid_file, "stop_timeout_ms": timeout,
                      "pass_service_args": false}}),
    );
    if uid.is_some() {
        for d in [sb.dir.clone(), sb.path("services")] {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        }
    }
    let d = Daemon::spawn_as(&sb, &[], &[], uid);
    assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
    let cgroup = sb.service_status(name)["cgroup"].clone();
    if uid.is_some() {
        assert!(cgroup.is_null(), "nobody has no cgroups here: {cgroup}");
    }
    let up = |log: &Path| std::fs::read_to_string(log).is_ok_and(|t| t.contains("up"));
    assert!(wait_until(DEADLINE, || up(&log)));
    d.wait_log(&[name, "reading the pid file"]);
    let daemon = daemon_pid(&sb, name).expect("the daemon runs");
    assert_eq!(sb.service_status(name)["state"], "starting");

    let out = sb.cli(&["stop", name]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    sb.wait_state(name, "stopped");
    assert!(
        wait_until(DEADLINE, || !alive(daemon)),
        "{name} (uid {uid:?}): the daemon is gone once stopped; log:\n{}",
        d.log_text()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("TERM"), "the stop signal came first: {text}");
    if ignore {
        d.wait_log(&[name, "still running after 5000 ms: sending SIGKILL"]);
    } else {
        assert_eq!(d.count_log(&[name, "SIGKILL"]), 0, "{}", d.log_text());
    }
}

/// A second SIGTERM to the orchestrator kills every service at once, one whose pid
/// file is still awaited included: without cgroups, its daemon that left the
/// launcher's session and ignores SIGTERM too.
#[test]
fn a_forced_exit_kills_a_daemon_whose_pid_file_is_awaited() {
    let root = unsafe { libc::geteuid() } == 0;
    let runs: &[Option<u32>] = if root { &[None, Some(65534)] } else { &[None] };
    for &uid in runs {
        let sb = Sandbox::new();
        let (log, pid_file) = slow_daemon(&sb, "stubborn", true);
        sb.config(
            json!({"services_dir": "services", "shutdown_timeout_ms": 60_000}),
            json!({"stubborn": {"pid_file": pid_file, "stop_timeout_ms": 60_000,
                                "pass_service_args": false}}),
        );
        if uid.is_some() {
            for d in [sb.dir.clone(), sb.path("services")] {
                std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            }
        }
        let mut d = Daemon::spawn_as(&sb, &[], &[], uid);
        assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
        assert!(wait_until(DEADLINE, || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("up"))));
        d.wait_log(&["stubborn", "reading the pid file"]);
        let daemon = daemon_pid(&sb, "stubborn").expect("the daemon runs");
        d.signal(libc::SIGTERM);
        d.wait_log(&["stubborn", "stopping with SIGTERM"]);
        assert!(wait_until(DEADLINE, || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("TERM"))));
        assert!(alive(daemon), "it ignores SIGTERM");
        d.signal(libc::SIGTERM);
        d.wait_exit(DEADLINE);
        assert!(
            wait_until(DEADLINE, || !alive(daemon)),
            "killed with the forced exit (uid {uid:?})"
        );
    }
}

/// Without cgroups (as root, the daemon runs as nobody, so it has none), a pid file is
/// believed only for a process descending from the run's launcher: one in its session
/// or group, or one that left them (setsid) and was reparented to us. Another service's
/// process is refused, and that service is untouched.
#[test]
fn without_cgroups_a_pid_file_naming_another_service_is_refused() {
    let sb = Sandbox::new();
    let root = unsafe { libc::geteuid() } == 0;
    let run = sb.path("run");
    std::fs::create_dir(&run).unwrap();
    let (grouped, detached, evil) = (
        run.join("grouped.pid"),
        run.join("detached.pid"),
        run.join("evil.pid"),
    );
    let victim_pid = run.join("victim");
    sb.service("victim", "exec sleep 1000");
    sb.service(
        "grouped",
        &format!("sleep 1000 & echo $! > {}; exit 0", grouped.display()),
    );
    sb.service(
        "detached",
        &format!(
            "setsid sleep 1000 & echo $! > {}; exit 0",
            detached.display()
        ),
    );
    sb.service(
        "evil",
        &format!(
            "while [ ! -s {v} ]; do sleep 0.05; done; cat {v} > {}; exit 0",
            evil.display(),
            v = victim_pid.display()
        ),
    );
    let entry = |p: &Path| json!({"pid_file": p, "restart": "never", "pass_service_args": false});
    sb.config(
        json!({"services_dir": "services"}),
        json!({"victim": {}, "grouped": entry(&grouped), "detached": entry(&detached),
               "evil": {"pid_file": evil, "restart": "never", "pass_service_args": false,
                        "stop_timeout_ms": 5_000}}),
    );
    let uid = root.then_some(65534);
    if root {
        for d in [sb.dir.clone(), sb.path("services"), run.clone()] {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        }
    }
    let d = Daemon::spawn_as(&sb, &[], &[], uid);
    assert!(
        wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0),
        "{}",
        d.log_text()
    );
    let victim = sb.wait_running("victim", None);
    // What evil's launcher waits for, then writes into its own pid file.
    std::fs::write(&victim_pid, format!("{victim}\n")).unwrap();
    let st = sb.service_status("victim");
    assert!(
        st["cgroup"].is_null(),
        "this test needs a daemon without cgroups: {st}"
    );
    // Its own daemon, in its group or detached from it, is believed.
    assert_eq!(
        Some(sb.wait_running("grouped", None)),
        first_line_pid(&grouped)
    );
    assert_eq!(
        Some(sb.wait_running("detached", None)),
        first_line_pid(&detached)
    );

    let st = sb.wait_state("evil", "failed");
    let why = st["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains(&format!(
            "names process {victim}, which is not the service's"
        )),
        "{st}"
    );
    assert_eq!(sb.service_status("victim")["pid"], victim);
    assert_eq!(sb.service_status("victim")["state"], "running");
    assert!(alive(victim));
    sb.cli(&["stop", "evil"]);
    assert!(alive(victim), "the other service is untouched");
}

/// Without cgroups, a process that left its own parent but not another service's
/// session and group (a sibling of that service's daemon, reparented to us, started
/// after this launcher) is that service's: a pid file naming it is refused.
#[test]
fn without_cgroups_a_process_in_another_services_session_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (the daemon runs as nobody, without cgroups)");
        return;
    }
    let sb = Sandbox::new();
    let run = sb.path("run");
    std::fs::create_dir(&run).unwrap();
    let (grouped, evil, sibling, go) = (
        run.join("grouped.pid"),
        run.join("evil.pid"),
        run.join("sibling"),
        run.join("go"),
    );
    // grouped's daemon stays in its launcher's session and group; so does a sibling
    // forked once `go` exists, whose parent then exits (it is reparented to us).
    sb.service(
        "grouped",
        &format!(
            "sleep 1000 & echo $! > {grouped}\n\
             ( while [ ! -e {go} ]; do sleep 0.05; done; sleep 1000 & echo $! > {sibling} ) &\n\
             exit 0",
            grouped = grouped.display(),
            go = go.display(),
            sibling = sibling.display()
        ),
    );
    sb.service(
        "evil",
        &format!(
            "while [ ! -s {s} ]; do sleep 0.05; done; cat {s} > {}; exit 0",
            evil.display(),
            s = sibling.display()
        ),
    );
    sb.config(
        json!({"services_dir": "services"}),
        json!({"grouped": {"pid_file": grouped, "restart": "never", "pass_service_args": false},
               "evil": {"pid_file": evil, "restart": "never", "pass_service_args": false,
                        "stop_timeout_ms": 10_000}}),
    );
    for d in [sb.dir.clone(), sb.path("services"), run.clone()] {
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let d = Daemon::spawn_as(&sb, &[], &[], Some(65534));
    assert!(
        wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0),
        "{}",
        d.log_text()
    );
    let daemon = sb.wait_running("grouped", None);
    assert!(sb.service_status("grouped")["cgroup"].is_null());
    // evil's launcher runs: what starts from now on started after it.
    assert_eq!(sb.service_status("evil")["state"], "starting");
    std::fs::write(&go, "").unwrap();
    assert!(wait_until(DEADLINE, || first_line_pid(&sibling).is_some()));
    let sibling_pid = first_line_pid(&sibling).unwrap();
    let st = sb.wait_state("evil", "failed");
    let why = st["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains(&format!(
            "names process {sibling_pid}, which is not the service's"
        )),
        "{st}"
    );
    assert!(alive(sibling_pid), "grouped's process is untouched");
    assert_eq!(sb.service_status("grouped")["pid"], daemon);
}

/// The pid file is never read through a symlink: one pointing at a file that names
/// the service's own daemon is refused all the same.
#[test]
fn a_symlinked_pid_file_is_refused() {
    let sb = Sandbox::new();
    let (real, link) = (sb.path("real.pid"), sb.path("link.pid"));
    sb.service(
        "linked",
        &format!(
            "sleep 1000 & echo $! > {}; ln -s {} {}; exit 0",
            real.display(),
            real.display(),
            link.display()
        ),
    );
    sb.service(
        "plain",
        &format!(
            "sleep 1000 & echo $! > {}; exit 0",
            sb.path("plain.pid").display()
        ),
    );
    let entry = |p: PathBuf| {
        json!({"pid_file": p, "restart": "never", "stop_timeout_ms": 1000,
               "pass_service_args": false})
    };
    sb.config(
        json!({"services_dir": "services"}),
        json!({"linked": entry(link.clone()), "plain": entry(sb.path("plain.pid"))}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("plain", None);
    let st = sb.wait_state("linked", "failed");
    let why = st["last_error"].as_str().unwrap_or("");
    assert!(why.contains("link.pid"), "{st}");
    assert!(why.contains("symbolic link"), "{st}");
    let daemon = first_line_pid(&real).expect("the launcher wrote the real file");
    assert!(
        wait_until(DEADLINE, || !alive(daemon)),
        "what the failed start left is killed"
    );
}

/// A daemon whose own parent lives on (a monitor that forked it and waits for it) is
/// not the orchestrator's child: it is the run all the same, which lasts as long as it
/// does, and its exit ends the run, with a status that is not ours to know.
#[test]
fn a_daemon_with_a_parent_of_its_own_is_the_run_until_it_exits() {
    let sb = Sandbox::new();
    let pid_file = sb.path("watched.pid");
    sb.service(
        "watched",
        &format!(
            "( sleep 1000 & echo $! > {}; wait ) & exit 0",
            pid_file.display()
        ),
    );
    sb.config(
        json!({"services_dir": "services"}),
        json!({"watched": {"pid_file": pid_file, "restart": "always",
                           "pass_service_args": false}}),
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("watched", None);
    assert_eq!(Some(pid), first_line_pid(&pid_file));
    let parent = procfs_ppid(pid).expect("the daemon runs");
    assert_ne!(parent, d.pid as i64, "its parent is the monitor, not us");
    // It stays the run: no exit reported while it lives.
    let since = Instant::now();
    let steady = wait_until(DEADLINE, || {
        let st = sb.service_status("watched");
        assert_eq!(st["pid"], pid, "{st}; log:\n{}", d.log_text());
        assert_eq!(st["restarts"], 0, "{st}");
        since.elapsed() > Duration::from_secs(1)
    });
    assert!(steady);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let again = sb.wait_running("watched", Some(pid));
    // Its status was its parent's to read: the run says so, and invents no code.
    let st = sb.service_status("watched");
    assert_eq!(st["restarts"], 1, "{st}");
    assert!(st["last_exit_code"].is_null(), "{st}");
    let ended = &st["history"][0];
    assert!(ended["exit_code"].is_null(), "{st}");
    assert_eq!(
        ended["reason"], "exited with an unknown status (not the orchestrator's child)",
        "{st}"
    );
    d.wait_log(&["watched", "exited with an unknown status"]);
    assert_eq!(sb.cli(&["stop", "watched"]).code, 0);
    sb.wait_state("watched", "stopped");
    assert!(wait_until(DEADLINE, || !alive(again)));
}

fn procfs_ppid(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A daemon adopted through the subreaper outlives an orchestrator killed with SIGKILL
/// (the parent-death signal cannot reach it); the next start kills it: through the
/// service's cgroup, or without cgroups through the group recorded in `state_dir`.
#[test]
fn an_adopted_daemon_outlives_a_sigkill_until_the_next_start() {
    let root = unsafe { libc::geteuid() } == 0;
    // With cgroups (root), then without (as root: the daemon as nobody).
    let runs: &[Option<u32>] = if root { &[None, Some(65534)] } else { &[None] };
    for &uid in runs {
        let sb = Sandbox::new();
        let run = sb.path("run");
        std::fs::create_dir(&run).unwrap();
        let pid_file = run.join("adopted.pid");
        let daemon = sb.path("adopted-daemon.sh");
        sb.script(&daemon, "while :; do sleep 0.2; done");
        sb.service(
            "adopted",
            &format!(
                "setsid {} & echo $! > {}; exit 0",
                daemon.display(),
                pid_file.display()
            ),
        );
        sb.config(
            json!({"services_dir": "services", "state_dir": "state"}),
            json!({"adopted": {"pid_file": pid_file, "pass_service_args": false}}),
        );
        if uid.is_some() {
            for d in [sb.dir.clone(), sb.path("services"), run.clone()] {
                std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            }
        }
        let mut d = Daemon::spawn_as(&sb, &[], &[], uid);
        assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
        let pid = sb.wait_running("adopted", None);
        let cgroups = !sb.service_status("adopted")["cgroup"].is_null();
        assert_eq!(cgroups, root && uid.is_none(), "uid {uid:?}");
        let state = sb.path("state/state.json");
        assert!(wait_until(DEADLINE, || std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains(&format!("\"pgid\":{pid}")))));
        d.signal(libc::SIGKILL);
        d.wait_exit(DEADLINE);
        assert!(alive(pid), "the adopted daemon lives on (uid {uid:?})");
        let d2 = Daemon::spawn_as(&sb, &[], &[], uid);
        assert!(
            wait_until(DEADLINE, || !alive(pid)),
            "the next start kills it (uid {uid:?}); log:\n{}",
            d2.log_text()
        );
        if cgroups {
            d2.wait_log(&["left in service cgroups by a previous instance"]);
        } else {
            d2.wait_log(&[
                "adopted: killing process group",
                "left by a previous instance",
            ]);
        }
        let again = sb.wait_running("adopted", Some(pid));
        assert_eq!(sb.cli(&["stop", "adopted"]).code, 0);
        assert!(wait_until(DEADLINE, || !alive(again)));
    }
}
