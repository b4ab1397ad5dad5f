//! `pid_file` services, which daemonize themselves (SPEC 4), against real daemons where
//! one shows the behaviour: the pid is the file's first line (PostgreSQL), the daemon
//! it names is the run (memcached), a stop while the file is awaited gets the stop
//! signal, and a file is believed only when it names a process of the service, read
//! never through a symlink.

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

fn first_line_pid(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
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
    let Some(bin) = postgres_bin() else {
        eprintln!("skipped: no PostgreSQL in /usr/lib/postgresql");
        return;
    };
    let Some((uid, gid)) = account("postgres") else {
        eprintln!("skipped: no postgres user");
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
