//! Reliability: orphans reaped as subreaper and as PID 1 without stealing managed exit
//! statuses, no leaks across many restarts, and every fault survived.

use crate::util::*;
use serde_json::json;
use std::time::Duration;

/// Pid, parent and state of every live process whose command line contains `needle`.
fn find(needle: &str) -> Vec<(i64, i64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        if cmdline(pid).contains(needle) {
            if let Some(f) = proc_stat(pid) {
                out.push((pid, f[3].parse().unwrap_or(0), f[2].clone()));
            }
        }
    }
    out
}

fn zombie_children(parent: i64) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|p| proc_stat(*p).is_some_and(|f| f[3] == parent.to_string() && f[2] == "Z"))
        .collect()
}

/// A service that leaves an orphan (which lives 300 ms) behind at every start, and then
/// exits 7 after a while.
fn orphan_maker(sb: &Sandbox) -> String {
    let orphan = sb.path("orphan.sh");
    sb.script(&orphan, "sleep 0.3");
    sb.service(
        "parent",
        &format!("({} &); sleep 0.5; exit 7", orphan.display()),
    );
    orphan.display().to_string()
}

#[test]
fn subreaper_adopts_and_reaps_orphans_without_stealing_statuses() {
    let sb = Sandbox::new();
    let orphan = orphan_maker(&sb);
    sb.config(
        json!({"services_dir": "services", "subreaper": true, "initial_backoff_ms": 10, "max_backoff_ms": 10}),
        json!({"parent": {"max_restart_attempts": 0}}),
    );
    let d = Daemon::start(&sb, &[]);
    // The orphan is re-parented to the daemon, not to init...
    assert!(
        wait_until(DEADLINE, || find(&orphan)
            .iter()
            .any(|(_, ppid, _)| *ppid == d.pid as i64)),
        "orphan never adopted: {:?}",
        find(&orphan)
    );
    // ...and reaped when it exits, run after run.
    assert!(wait_until(DEADLINE, || sb.service_status("parent")
        ["restarts"]
        .as_u64()
        .unwrap()
        >= 4));
    assert!(
        wait_until(Duration::from_secs(2), || zombie_children(d.pid as i64)
            .is_empty()),
        "zombies: {:?}",
        zombie_children(d.pid as i64)
    );
    // The managed exit statuses were never stolen by the reaper.
    let st = sb.service_status("parent");
    let codes: Vec<_> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["exit_code"].as_i64())
        .collect();
    assert!(
        codes.len() >= 4 && codes.iter().all(|c| *c == 7),
        "{codes:?}"
    );
}

#[test]
fn as_pid_1_in_a_pid_namespace_reaps_and_shuts_down_cleanly() {
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
    let orphan = orphan_maker(&sb);
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10}),
        json!({"parent": {"max_restart_attempts": 0}}),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", BIN, "run", "--config"])
        .arg(sb.path("orchestrator.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut unshare = cmd.spawn().unwrap();
    let _guard = Guard(sb.dir.clone(), unshare.id() as i32);
    // The orchestrator is unshare's child on the host, PID 1 inside.
    let mut orch = 0;
    assert!(wait_until(DEADLINE, || {
        orch = find(BIN)
            .iter()
            .find(|(_, ppid, _)| *ppid == unshare.id() as i64)
            .map_or(0, |p| p.0);
        orch != 0
    }));
    let status = std::fs::read_to_string(format!("/proc/{orch}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    assert!(wait_until(DEADLINE, || find(&orphan)
        .iter()
        .any(|(_, ppid, _)| *ppid == orch)));
    assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
    assert!(wait_until(DEADLINE, || sb.service_status("parent")
        ["restarts"]
        .as_u64()
        .unwrap()
        >= 3));
    assert!(wait_until(Duration::from_secs(2), || zombie_children(orch).is_empty()));
    assert_eq!(sb.service_status("parent")["last_exit_code"], 7);
    // SIGTERM to PID 1 is handled like a daemon's: clean shutdown, exit 0.
    unsafe { libc::kill(orch as i32, libc::SIGTERM) };
    let st = unshare.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

struct Guard(std::path::PathBuf, i32);

impl Drop for Guard {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.0);
        unsafe { libc::killpg(self.1, libc::SIGKILL) };
    }
}

/// fds, threads and RSS (kB) of a process.
fn footprint(pid: i32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    (fds, threads, rss)
}

/// Crash-and-restart cycles with zero backoff leave descriptors, threads and memory
/// where they were. `make soak` runs 10,000 cycles (ORCH_SOAK_CYCLES).
#[test]
fn restarts_leak_no_descriptors_threads_or_memory() {
    let cycles: u64 = std::env::var("ORCH_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sb = Sandbox::new();
    // 20 lines a run: the warm-up below fills the 1000-line ring, so that what is
    // measured after it is steady state.
    sb.service("crash", "seq 10; seq 10 >&2; exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 0, "max_backoff_ms": 0}),
        json!({"crash": {"max_restart_attempts": 0}}),
    );
    let d = Daemon::start(&sb, &[]);
    let restarts = || sb.service_status("crash")["restarts"].as_u64().unwrap();
    let settle = || {
        assert_eq!(sb.cli(&["stop", "crash"]).code, 0);
        // Let the last reader threads drain and exit.
        let mut last = footprint(d.pid);
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(20));
            let now = footprint(d.pid);
            if now.0 == last.0 && now.1 == last.1 {
                break;
            }
            last = now;
        }
        footprint(d.pid)
    };
    assert!(wait_until(DEADLINE, || restarts() >= 60));
    let before = settle();
    let start = restarts();
    assert_eq!(sb.cli(&["start", "crash"]).code, 0);
    assert!(wait_until(Duration::from_secs(600), || restarts() >= start + cycles));
    let after = settle();
    eprintln!(
        "soak: {cycles} restarts: fds {} -> {}, threads {} -> {}, rss {} kB -> {} kB",
        before.0, after.0, before.1, after.1, before.2, after.2
    );
    assert_eq!(after.0, before.0, "descriptors leaked");
    assert_eq!(after.1, before.1, "threads leaked");
    assert!(
        after.2 <= before.2 + 1024,
        "RSS grew from {} kB to {} kB",
        before.2,
        after.2
    );
    assert!(zombie_children(d.pid as i64).is_empty());
}

#[test]
fn deleted_or_non_executable_binary_fails_restarts_cleanly_and_recovers() {
    let sb = Sandbox::new();
    sb.service("victim", "sleep 0.2; exit 1");
    sb.service("bystander", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 50, "max_backoff_ms": 50}),
        json!({"victim": {"max_restart_attempts": 0}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let bystander = sb.wait_running("bystander", None);
    sb.wait_running("victim", None);
    let bin = sb.path("services/victim/victim");
    std::fs::remove_file(&bin).unwrap();
    let mut st = serde_json::Value::Null;
    assert!(wait_until(DEADLINE, || {
        st = sb.service_status("victim");
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("No such file or directory"))
    }));
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains(bin.to_str().unwrap()),
        "{st}"
    );
    assert_ne!(st["state"], "running");
    // Not executable: permission denied.
    sb.service("victim", "sleep 0.2; exit 1");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(wait_until(DEADLINE, || sb.service_status("victim")
        ["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("Permission denied"))));
    // Fixed: it comes back by itself at the next retry.
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sb.wait_running("victim", None);
    assert_eq!(sb.service_status("bystander")["pid"], bystander);
}

#[test]
fn a_binary_busy_being_written_is_retried_not_failed() {
    let sb = Sandbox::new();
    let bin = sb.service("fresh", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"fresh": {"restart": "never"}}),
    );
    // Held open for writing, as by a copy still in progress: exec gives ETXTBSY.
    let writer = std::fs::OpenOptions::new().append(true).open(&bin).unwrap();
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["fresh", "Text file busy", "trying again"]);
    let st = sb.service_status("fresh");
    assert_eq!(st["state"], "starting", "{st}");
    drop(writer);
    let pid = sb.wait_running("fresh", None);
    let st = sb.service_status("fresh");
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["history"].as_array().map(Vec::len), Some(1), "{st}");
    assert!(cmdline(pid).contains("sleep 1000"));
}

#[test]
fn state_dir_lets_a_successor_kill_what_a_crashed_daemon_left_and_keep_history() {
    // Without cgroups (as root, the daemon runs as nobody so it has none), the process
    // groups recorded in state_dir are all a successor has to find leftovers by.
    let sb = Sandbox::new();
    let root = crate::util::is_root();
    let uid = root.then_some(65534);
    if root {
        // The daemon's own user owns its directories (a world-writable one would fail
        // StrictModes for state_dir, and would put the lock in a private directory).
        for d in [sb.dir.clone(), sb.path("services")] {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        }
    }
    let kid = sb.path("kid.sh");
    sb.script(&kid, "sleep 1000; :");
    // The service's own child stays in its group but has no PDEATHSIG.
    sb.service(
        "parent",
        &format!(
            "sh {} & echo $! > {}; wait",
            kid.display(),
            sb.path("kid").display()
        ),
    );
    sb.config(
        json!({"services_dir": "services", "state_dir": "state"}),
        json!({}),
    );
    let mut d = Daemon::spawn_as(&sb, &[], &[], uid);
    assert!(
        wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0),
        "{}",
        d.log_text()
    );
    let first = sb.wait_running("parent", None);
    let state = sb.path("state/state.json");
    assert!(wait_until(DEADLINE, || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains(&format!("\"pgid\":{first}")))
    }));
    let mut kid_pid = 0;
    assert!(wait_until(DEADLINE, || {
        kid_pid = std::fs::read_to_string(sb.path("kid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        kid_pid > 0
    }));
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE);
    assert!(
        wait_until(DEADLINE, || !alive(first)),
        "PDEATHSIG took the main process"
    );
    assert!(alive(kid_pid), "the group member outlives the crash");
    let d2 = Daemon::spawn_as(&sb, &[], &[], uid);
    assert!(
        wait_until(DEADLINE, || !alive(kid_pid)),
        "leftover survived; log:\n{}",
        d2.log_text()
    );
    d2.wait_log(&["process group", "left by a previous instance"]);
    let second = sb.wait_running("parent", Some(first));
    // The run the crash ended is in the history, closed; the new one follows it.
    let st = sb.service_status("parent");
    let history = st["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{st}");
    assert!(history[0]["exited"].as_u64().is_some(), "{st}");
    assert_eq!(history[0]["reason"], "ended with the orchestrator", "{st}");
    assert!(history[1]["exited"].is_null(), "{st}");
    assert_eq!(st["pid"], second);
    // A clean shutdown leaves a state with no live group and every run closed.
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
    let text = std::fs::read_to_string(&state).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parent = &saved["services"]["parent"];
    assert!(parent["group"].is_null(), "{text}");
    let runs = parent["history"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{text}");
    assert!(runs.iter().all(|r| r[1].is_u64()), "{text}");
    // Each closed run keeps why it ended, across the restart too.
    assert_eq!(runs[0][3], "ended with the orchestrator", "{text}");
    assert_eq!(runs[1][3], "stopped by shutdown", "{text}");
}

#[test]
fn services_dir_removed_and_recreated() {
    let sb = Sandbox::new();
    sb.service("svc", "sleep 0.2; exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 50, "max_backoff_ms": 50}),
        json!({"svc": {"max_restart_attempts": 0}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("svc", None);
    std::fs::rename(sb.path("services"), sb.path("services.away")).unwrap();
    assert!(wait_until(DEADLINE, || sb.service_status("svc")
        ["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("No such file"))));
    std::fs::rename(sb.path("services.away"), sb.path("services")).unwrap();
    sb.wait_running("svc", None);
}

#[test]
fn closed_stdout_and_pipe_holding_grandchild_do_not_hang_anything() {
    let sb = Sandbox::new();
    // Closes stdout at once and keeps running; stderr still works.
    sb.service("mute", "exec >&-; echo still-here >&2; exec sleep 1000");
    // Exits while a child in its group still holds its output pipes.
    let kids = sb.path("kids");
    sb.service(
        "leaver",
        &format!(
            "sleep 1000 & echo $! >> {}; echo bye; exit 3",
            kids.display()
        ),
    );
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 100, "max_backoff_ms": 100}),
        json!({"leaver": {"max_restart_attempts": 2}}),
    );
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["mute[", "stderr: still-here"]);
    assert_eq!(sb.service_status("mute")["state"], "running");
    // The run ended with the main process (the waiter did not wait for the pipes), the
    // lingering child was killed with it, and the restarts went on to the limit.
    let st = sb.wait_state("leaver", "failed");
    assert_eq!(st["last_error"], "maximum restart attempts exceeded");
    let pids: Vec<i64> = std::fs::read_to_string(&kids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(
        wait_until(DEADLINE, || pids.iter().all(|p| !alive(*p))),
        "{pids:?}"
    );
    let mute = sb.service_status("mute")["pid"].as_i64().unwrap();
    assert_eq!(sb.cli(&["stop", "mute"]).code, 0);
    assert!(group_members(mute).is_empty());
}

#[test]
fn spawn_failures_from_descriptor_exhaustion_back_off_without_spinning() {
    let sb = Sandbox::new();
    for i in 0..8 {
        sb.service(&format!("s{i}"), "exec sleep 1000");
    }
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 0, "max_backoff_ms": 0}),
        json!({}),
    );
    // Start the daemon with a tiny descriptor limit: some spawns fail with EMFILE.
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(sb.path("orchestrator.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let _guard = Guard(sb.dir.clone(), pid);
    assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
    let mut st = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            st = sb.status();
            st.iter().any(|s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Too many open files"))
            })
        }),
        "{st:?}"
    );
    // Retrying, not spinning: well under half a core over a second.
    let ticks = |p: i32| -> u64 {
        let f = proc_stat(p as i64).unwrap();
        f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap()
    };
    let t0 = ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks(pid) - t0;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 2 < hz,
        "daemon used {used} ticks of {hz} in one second"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The daemon's open descriptors, by number.
fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

#[test]
fn status_answers_when_the_daemon_is_out_of_descriptors() {
    let sb = Sandbox::new();
    sb.service("steady", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_state("steady", "running");
    // No control connection may still hold a descriptor (the one that answered the
    // last status closes it just after the reply): its number would free up later.
    let conn_threads = || {
        std::fs::read_dir(format!("/proc/{}/task", d.pid))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "control-conn")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(wait_until(DEADLINE, || conn_threads() == 0));
    // Lower the daemon's limit to its lowest free descriptor number: every number
    // below the limit is taken, so accept() fails with EMFILE. (Descriptors above the
    // limit stay open; the reserve is opened first thing and sits below it.)
    let fds = open_fds(d.pid);
    let free = (0..).find(|n| !fds.contains(n)).unwrap();
    assert!(free > 3, "{fds:?}");
    let lim = libc::rlimit {
        rlim_cur: free as libc::rlim_t,
        rlim_max: free as libc::rlim_t,
    };
    let r = unsafe { libc::prlimit(d.pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    // The reserve descriptor is given up for the client; later clients reuse the
    // number each one frees.
    for _ in 0..3 {
        assert_eq!(sb.service_status("steady")["state"], "running");
    }
    d.wait_log(&["out of file descriptors; using the reserve"]);
}

#[test]
fn a_restart_storm_of_fifty_services_does_not_pin_a_core() {
    let sb = Sandbox::new();
    for i in 0..50 {
        sb.service(&format!("c{i}"), "exit 1");
    }
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 200, "max_backoff_ms": 1000}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || sb
        .status()
        .iter()
        .filter(|s| s["restarts"].as_u64() >= Some(2))
        .count()
        == 50));
    let ticks = || {
        let f = proc_stat(d.pid as i64).unwrap();
        f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap()
    };
    let t0 = ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = ticks() - t0;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < hz,
        "daemon used {used} ticks of {} in two seconds",
        2 * hz
    );
}
