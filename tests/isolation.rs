//! Isolation and limits: cgroups that catch every descendant, resource limits visible in
//! /proc and cgroupfs, identity switching. Root-only parts skip with a printed reason.

use crate::util::*;
use serde_json::json;
use std::time::Duration;

/// True when the daemon will have service cgroups here (root and a writable hierarchy).
fn cgroups_available(sb: &Sandbox) -> bool {
    if !is_root() {
        eprintln!("skipped: cgroups need root");
        return false;
    }
    sb.config(json!({}), json!({}));
    let out = sb.cli(&["check"]);
    if out.stdout.contains("cgroups: none writable") {
        eprintln!("skipped: no writable cgroup hierarchy on this kernel");
        return false;
    }
    true
}

/// A service that starts a daemonized (setsid, double-forked) grandchild, writes its pid
/// to `escaped`, then waits.
fn escaper(sb: &Sandbox, tail: &str) -> std::path::PathBuf {
    let escaped = sb.path("escaped");
    sb.service(
        "escaper",
        &format!(
            "setsid sh -c 'echo $$ > {f}; exec sleep 1000' </dev/null >/dev/null 2>&1 &\nwhile [ ! -s {f} ]; do sleep 0.01; done\n{tail}",
            f = escaped.display()
        ),
    );
    escaped
}

fn read_pid(path: &std::path::Path) -> i64 {
    let mut pid = 0;
    assert!(wait_until(DEADLINE, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid != 0
    }));
    pid
}

#[test]
fn stop_kills_descendants_that_left_the_group() {
    let sb = Sandbox::new();
    if !cgroups_available(&sb) {
        return;
    }
    let escaped = escaper(&sb, "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    let main = sb.wait_running("escaper", None);
    let esc = read_pid(&escaped);
    assert_ne!(
        proc_stat(esc).unwrap()[4],
        main.to_string(),
        "it left the process group"
    );
    let st = sb.service_status("escaper");
    let cgroup = st["cgroup"]
        .as_str()
        .expect("status names the service's cgroup")
        .to_string();
    assert!(std::fs::read_to_string(format!("{cgroup}/cgroup.procs"))
        .unwrap()
        .contains(&esc.to_string()));
    assert_eq!(sb.cli(&["stop", "escaper"]).code, 0);
    assert!(!alive(esc), "the escaped grandchild survived the stop");
    assert!(
        !std::path::Path::new(&cgroup).exists(),
        "cgroup removed when the service stopped"
    );
}

#[test]
fn a_run_that_ends_takes_its_escaped_descendants_along() {
    let sb = Sandbox::new();
    if !cgroups_available(&sb) {
        return;
    }
    let escaped = escaper(&sb, "exit 4");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"escaper": {"restart": "never"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let esc = read_pid(&escaped);
    sb.wait_state("escaper", "failed");
    assert!(wait_until(Duration::from_secs(2), || !alive(esc)));
}

#[test]
fn a_restarted_daemon_cleans_up_what_a_crashed_one_left() {
    let sb = Sandbox::new();
    if !cgroups_available(&sb) {
        return;
    }
    let escaped = escaper(&sb, "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let mut d = Daemon::start(&sb, &[]);
    let esc = read_pid(&escaped);
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE);
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(esc), "PDEATHSIG only reaches direct children");
    std::fs::remove_file(&escaped).unwrap();
    let d2 = Daemon::start(&sb, &[]);
    assert!(
        wait_until(Duration::from_secs(2), || !alive(esc)),
        "predecessor's leftover survived"
    );
    d2.wait_log(&["left in service cgroups by a previous instance"]);
}

#[test]
fn rlimits_are_visible_in_proc() {
    let sb = Sandbox::new();
    sb.service("limited", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"limited": {"limits": {"nofile": 123, "core": 0}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("limited", None);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row("Max open files").contains("123 123"), "{limits}");
    assert!(row("Max core file size").contains("0 0"), "{limits}");
    let st = sb.service_status("limited");
    assert_eq!(st["limits"]["nofile"], "setrlimit");
}

#[test]
fn cgroup_limits_are_written_and_reported() {
    let sb = Sandbox::new();
    if !cgroups_available(&sb) {
        return;
    }
    sb.service("capped", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"capped": {"memory_limit": 64, "limits": {"cpu_percent": 50, "pids_max": 32}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("capped", None);
    let st = sb.service_status("capped");
    let own: String = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let id = cgroup_id(&sb.socket());
    assert!(own.contains(&format!("{id}/capped")), "{own}");
    for (what, expect) in [
        ("memory_limit", ["memory.max", "memory.limit_in_bytes"]),
        ("cpu_percent", ["cpu.max", "cpu.cfs_quota_us"]),
        ("pids_max", ["pids.max", "pids.max"]),
    ] {
        let how = st["limits"][what].as_str().unwrap();
        if how.starts_with("not enforced") {
            eprintln!("{what}: {how}");
            continue;
        }
        let file = if how.contains("v2") {
            expect[0]
        } else {
            expect[1]
        };
        assert!(how.contains(file), "{how}");
        let base = how.rsplit(" in ").next().unwrap();
        let value = std::fs::read_to_string(format!("{base}/capped/{file}")).unwrap();
        let value = value.trim();
        match (what, how.contains("v2")) {
            ("memory_limit", _) => assert_eq!(value, (64u64 << 20).to_string()),
            ("cpu_percent", true) => assert_eq!(value, "50000 100000"),
            ("cpu_percent", false) => assert_eq!(value, "50000"),
            _ => assert_eq!(value, "32"),
        }
    }
}

#[test]
fn a_fork_bomb_is_contained_by_pids_max() {
    let sb = Sandbox::new();
    if !cgroups_available(&sb) {
        return;
    }
    sb.service("bomb", "while :; do sleep 1000 & done");
    sb.service("bystander", "exec sleep 1000");
    // The shell dies when fork fails; restarting it forever keeps the bomb going.
    sb.config(
        json!({"services_dir": "services"}),
        json!({"bomb": {"limits": {"pids_max": 16}, "max_restart_attempts": 0}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("bomb", None);
    let st = sb.service_status("bomb");
    let how = st["limits"]["pids_max"].as_str().unwrap().to_string();
    if how.starts_with("not enforced") {
        eprintln!("skipped: {how}");
        return;
    }
    let cgroup = std::path::PathBuf::from(how.rsplit(" in ").next().unwrap()).join("bomb");
    // The bomb fills its quota and no more.
    let current = || -> u64 {
        std::fs::read_to_string(cgroup.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(wait_until(DEADLINE, || current() == 16));
    let mut max = 0;
    wait_until(Duration::from_millis(500), || {
        max = max.max(current());
        false
    });
    assert!(max <= 16, "{max}");
    // The box and the daemon are fine; the bomb stops cleanly.
    assert_eq!(sb.service_status("bystander")["state"], "running");
    assert_eq!(sb.cli(&["stop", "bomb"]).code, 0);
    assert!(!cgroup.exists());
}

#[test]
fn user_and_group_are_switched_with_supplementary_groups() {
    if !is_root() {
        eprintln!("skipped: switching identity needs root");
        return;
    }
    let sb = Sandbox::new();
    sb.service("who", "exec sleep 1000");
    // The script must be reachable by nobody.
    sb.open_to_other_users();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"who": {"user": "nobody", "group": "daemon", "data_dir": "data/who"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("who", None);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), ["65534"; 4]);
    assert_eq!(field("Gid:"), ["1"; 4]);
    let groups = field("Groups:");
    assert!(
        groups.contains(&"1") && groups.contains(&"65534"),
        "{groups:?}"
    );
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&env).contains("HOME=/nonexistent"));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(sb.path("data/who")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 1),
        "data_dir belongs to the service"
    );
}

#[test]
fn a_service_switched_to_another_user_still_dies_with_the_daemon() {
    if !is_root() {
        eprintln!("skipped: switching identity needs root");
        return;
    }
    // The switch of user clears the parent-death signal: it must be set after it.
    let sb = Sandbox::new();
    sb.service("who", "exec sleep 1000");
    sb.open_to_other_users();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"who": {"user": "nobody"}}),
    );
    let mut d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("who", None);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534\t")),
        "{status}"
    );
    d.signal(libc::SIGKILL);
    d.wait_exit(DEADLINE);
    assert!(
        wait_until(Duration::from_secs(1), || !alive(pid)),
        "the service running as nobody outlived the daemon"
    );
}

#[test]
fn unknown_user_is_a_configuration_error() {
    let sb = Sandbox::new();
    sb.service("x", "exec sleep 1");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"x": {"user": "no-such-user-here"}}),
    );
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("services.x: user: no such user `no-such-user-here`"),
        "{}",
        out.stderr
    );
}

#[test]
fn world_writable_binaries_and_configs_are_refused_as_root() {
    if !is_root() {
        eprintln!("skipped: StrictModes checks apply when running as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let bin = sb.service("open", "exec sleep 1000");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
    sb.service("fine", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({"open": {}}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("fine", None);
    let st = sb.service_status("open");
    assert_eq!(st["state"], "failed");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("is writable by others"),
        "{st}"
    );
    d.wait_log(&["refusing", "writable by others"]);
    drop(d);
    // Explicitly allowed: it runs.
    sb.config(
        json!({"services_dir": "services", "strict_modes": false}),
        json!({"open": {}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("open", None);
    drop(_d);
    // A config file others can write to is refused outright (exit 2, nothing started).
    let cfg = sb.path("orchestrator.json");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("refusing a config file that another user could change"),
        "{}",
        out.stderr
    );
}

#[test]
fn symlinked_binary_is_resolved_once_and_logged() {
    let sb = Sandbox::new();
    let marker = sb.path("ran");
    for v in ["v1", "v2"] {
        sb.script(
            &sb.path(v),
            &format!("echo {v} >> {}; sleep 0.3; exit 1", marker.display()),
        );
    }
    std::fs::create_dir_all(sb.path("services/lnk")).unwrap();
    std::os::unix::fs::symlink(sb.path("v1"), sb.path("services/lnk/lnk")).unwrap();
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 10, "max_backoff_ms": 10}),
        json!({"lnk": {"max_restart_attempts": 0}}),
    );
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["lnk:", "is a symlink to", "/v1"]);
    // Swap the link: restarts keep running what was resolved...
    std::fs::remove_file(sb.path("services/lnk/lnk")).unwrap();
    std::os::unix::fs::symlink(sb.path("v2"), sb.path("services/lnk/lnk")).unwrap();
    let runs = || std::fs::read_to_string(&marker).unwrap_or_default();
    let before = runs().lines().count();
    assert!(wait_until(DEADLINE, || runs().lines().count() >= before + 2));
    assert!(!runs().contains("v2"), "{}", runs());
    // ...until a reload, which sees a new binary and restarts onto it.
    let out = sb.cli(&["reload"]);
    assert!(
        out.stdout.contains("lnk: restart") || out.stdout.contains("lnk: update"),
        "{}",
        out.stdout
    );
    assert!(wait_until(DEADLINE, || runs().contains("v2")));
    assert!(sb.service_status("lnk")["binary"]["path"]
        .as_str()
        .unwrap()
        .ends_with("/v2"));
}

#[test]
fn services_get_a_known_umask() {
    let sb = Sandbox::new();
    let out = sb.path("umask");
    sb.service("um", &format!("umask > {}; exec sleep 1000", out.display()));
    sb.config(json!({"services_dir": "services"}), json!({}));
    // The daemon itself runs with a strict umask.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "umask 077; exec {BIN} run --config {}",
            sb.path("orchestrator.json").display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&out)
        .is_ok_and(|s| !s.is_empty())));
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "0022");
    let _ = child.kill();
    let _ = child.wait();
}
