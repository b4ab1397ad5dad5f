//! Hardening (SPEC 13): each protection bites. A small Python fixture tries the
//! forbidden thing (calls that fail harmlessly when they are permitted) and writes what
//! happened; each test runs it with the key and, where that proves the key did it,
//! without. Root-only; skipped with a printed reason elsewhere or when the kernel lacks
//! the feature.

use crate::util::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const PYTHON: &str = "/usr/bin/python3";

/// Tries one forbidden thing (argv: action, result file, argument) and writes the
/// outcome to the result file: "ok" or "errno N". Then waits $HOLD seconds.
const PROBE: &str = r#"
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
act, out = sys.argv[1], sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else ""
def report(s):
    with open(out + ".tmp", "w") as f:
        f.write(s)
    os.rename(out + ".tmp", out)
def call(r):
    return "ok" if r == 0 else "errno %d" % ctypes.get_errno()
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return "errno %d" % e.errno
if act == "mount":
    report(call(libc.mount(b"/nonexistent-source", b"/nonexistent-target", b"tmpfs", 0, None)))
elif act == "swapon":
    report(call(libc.swapon(b"/dev/null", 0)))
elif act == "bind80":
    report(attempt(lambda: socket.socket().bind(("127.0.0.1", 80))))
elif act == "chown":
    report(attempt(lambda: os.chown(arg, 0, 0)))
elif act == "connect":
    own = socket.socket()
    own.bind(("127.0.0.1", 0))
    own.listen(1)
    mine = attempt(lambda: socket.create_connection(own.getsockname(), timeout=2))
    host = attempt(lambda: socket.create_connection(("127.0.0.1", int(arg)), timeout=2))
    report("host %s, own %s" % (host, mine))
elif act == "exists":
    report("yes" if os.path.exists(arg) else "no")
elif act == "write":
    report(attempt(lambda: open(arg, "w").write("x")))
elif act == "prio":
    ioprio_get = {"x86_64": 252, "aarch64": 31}[os.uname().machine]
    report("nice %d ioprio %d" % (os.getpriority(os.PRIO_PROCESS, 0), libc.syscall(ioprio_get, 1, 0)))
elif act == "ids":
    report("uid %d, / owned by %d, uid_map %s" % (os.getuid(), os.stat("/").st_uid,
           " ".join(open("/proc/self/uid_map").read().split())))
time.sleep(float(os.environ.get("HOLD", "0")))
"#;

/// A sandbox with the fixture, or `None` (reason printed) where these tests cannot run.
fn sandbox() -> Option<Sandbox> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: hardening tests need root");
        return None;
    }
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: no {PYTHON} for the fixture");
        return None;
    }
    let sb = Sandbox::new();
    std::fs::write(sb.path("probe.py"), PROBE).unwrap();
    std::fs::create_dir_all(sb.path("out")).unwrap();
    // Services running as another user write their results here.
    std::fs::set_permissions(sb.path("out"), std::fs::Permissions::from_mode(0o777)).unwrap();
    sb.open_to_other_users();
    Some(sb)
}

/// A service running the probe: `action` with `arg`, plus the keys in `extra`.
fn probe(sb: &Sandbox, name: &str, action: &str, arg: &str, extra: Value) -> Value {
    let mut svc = json!({
        "binary_path": PYTHON,
        "pass_service_args": false,
        "args": [sb.path("probe.py"), action, sb.path(&format!("out/{name}")), arg],
        "restart": "never",
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        svc[k] = v;
    }
    svc
}

/// The outcome `name` reported.
fn result(sb: &Sandbox, d: &Daemon, name: &str) -> String {
    let path = sb.path(&format!("out/{name}"));
    let ok = wait_until(DEADLINE, || path.exists());
    assert!(ok, "{name} reported nothing; log:\n{}", d.log_text());
    std::fs::read_to_string(path).unwrap()
}

fn run(sb: &Sandbox, services: Value) -> Daemon {
    sb.config(json!({}), services);
    Daemon::start(sb, &[])
}

#[test]
fn syscall_filter_denies_mount_and_swapon_with_eperm() {
    let Some(sb) = sandbox() else { return };
    let filter = json!({"syscall_filter": ["@mount", "@swap"]});
    let d = run(
        &sb,
        json!({
            "mount": probe(&sb, "mount", "mount", "", filter.clone()),
            "swapon": probe(&sb, "swapon", "swapon", "", filter),
            "mount-free": probe(&sb, "mount-free", "mount", "", json!({})),
            "swapon-free": probe(&sb, "swapon-free", "swapon", "", json!({})),
        }),
    );
    assert_eq!(result(&sb, &d, "mount"), "errno 1");
    assert_eq!(result(&sb, &d, "swapon"), "errno 1");
    // Unfiltered, the same calls fail for a harmless reason of their own.
    assert_ne!(result(&sb, &d, "mount-free"), "errno 1");
    assert_ne!(result(&sb, &d, "swapon-free"), "errno 1");
}

#[test]
fn syscall_filter_kill_ends_the_process_with_sigsys() {
    let Some(sb) = sandbox() else { return };
    let kill = json!({"syscall_filter": ["@mount", "@swap"], "syscall_filter_action": "kill"});
    let _d = run(
        &sb,
        json!({
            "swapon": probe(&sb, "swapon", "swapon", "", kill.clone()),
            "mount": probe(&sb, "mount", "mount", "", kill),
        }),
    );
    for name in ["swapon", "mount"] {
        let st = sb.wait_state(name, "failed");
        assert_eq!(st["last_exit"]["signal"], "SIGSYS", "{st}");
        assert!(!sb.path(&format!("out/{name}")).exists());
    }
}

#[test]
fn port_80_needs_cap_net_bind_service_for_a_user_service() {
    let Some(sb) = sandbox() else { return };
    // In a network namespace of its own, so the host's port 80 and its
    // ip_unprivileged_port_start do not matter.
    let user = json!({"user": "nobody", "private_network": true});
    let mut with = user.clone();
    with["capabilities"] = json!(["CAP_NET_BIND_SERVICE"]);
    let d = run(
        &sb,
        json!({
            "with": probe(&sb, "with", "bind80", "", with),
            "without": probe(&sb, "without", "bind80", "", user),
        }),
    );
    assert_eq!(result(&sb, &d, "with"), "ok");
    assert_eq!(
        result(&sb, &d, "without"),
        format!("errno {}", libc::EACCES)
    );
}

#[test]
fn a_root_service_without_capabilities_cannot_chown() {
    let Some(sb) = sandbox() else { return };
    let (theirs, control) = (sb.path("theirs"), sb.path("theirs-control"));
    for f in [&theirs, &control] {
        std::fs::write(f, "").unwrap();
        std::os::unix::fs::chown(f, Some(1), Some(1)).unwrap();
    }
    let arg = |p: &PathBuf| p.display().to_string();
    let d = run(
        &sb,
        json!({
            "none": probe(&sb, "none", "chown", &arg(&theirs), json!({"capabilities": []})),
            "all": probe(&sb, "all", "chown", &arg(&control), json!({})),
        }),
    );
    assert_eq!(result(&sb, &d, "none"), "errno 1");
    assert_eq!(result(&sb, &d, "all"), "ok");
}

#[test]
fn private_network_cannot_reach_the_hosts_loopback() {
    let Some(sb) = sandbox() else { return };
    if !Path::new("/proc/self/ns/net").exists() {
        eprintln!("skipped: no network namespaces in this kernel");
        return;
    }
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port().to_string();
    let d = run(
        &sb,
        json!({
            "private": probe(&sb, "private", "connect", &port, json!({"private_network": true})),
            "shared": probe(&sb, "shared", "connect", &port, json!({})),
        }),
    );
    assert_eq!(
        result(&sb, &d, "private"),
        format!("host errno {}, own ok", libc::ECONNREFUSED),
        "loopback is up, and the host's is out of reach"
    );
    assert_eq!(result(&sb, &d, "shared"), "host ok, own ok");
}

#[test]
fn private_tmp_hides_what_another_service_put_in_tmp() {
    let Some(sb) = sandbox() else { return };
    let marker = format!(
        "/tmp/orchestrator-test-{}-{}",
        std::process::id(),
        sb.dir.file_name().unwrap().to_string_lossy()
    );
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(marker.clone());
    let writer = probe(&sb, "writer", "write", &marker, json!({}));
    let d = run(&sb, json!({"writer": writer.clone()}));
    assert_eq!(result(&sb, &d, "writer"), "ok");
    assert!(Path::new(&marker).exists());
    // Then the readers, by a reload.
    sb.config(
        json!({}),
        json!({
            "writer": writer,
            "private": probe(&sb, "private", "exists", &marker, json!({"private_tmp": true})),
            "shared": probe(&sb, "shared", "exists", &marker, json!({})),
        }),
    );
    assert_eq!(sb.cli(&["reload"]).code, 0);
    assert_eq!(result(&sb, &d, "private"), "no");
    assert_eq!(result(&sb, &d, "shared"), "yes");
}

#[test]
fn a_write_under_read_only_paths_fails_with_erofs() {
    let Some(sb) = sandbox() else { return };
    std::fs::create_dir_all(sb.path("ro")).unwrap();
    let target = sb.path("ro/file").display().to_string();
    let ro = json!({"read_only_paths": [sb.path("ro")]});
    let d = run(
        &sb,
        json!({
            "ro": probe(&sb, "ro", "write", &target, ro),
            "rw": probe(&sb, "rw", "write", &format!("{target}-control"), json!({})),
        }),
    );
    assert_eq!(result(&sb, &d, "ro"), format!("errno {}", libc::EROFS));
    assert_eq!(result(&sb, &d, "rw"), "ok");
    // Only the service's view was read-only.
    std::fs::write(sb.path("ro/host-write"), "x").unwrap();
}

#[test]
fn nice_and_io_priority_are_what_the_config_says() {
    let Some(sb) = sandbox() else { return };
    let keys = json!({"nice": 7, "io_class": "best-effort", "io_priority": 6,
                      "environment": {"HOLD": "60"}});
    let d = run(&sb, json!({"prio": probe(&sb, "prio", "prio", "", keys)}));
    // ioprio value: class << 13 | level.
    let expected = (2 << 13) | 6;
    assert_eq!(result(&sb, &d, "prio"), format!("nice 7 ioprio {expected}"));
    let pid = sb.wait_running("prio", None);
    let stat = proc_stat(pid).expect("the service's /proc/PID/stat");
    assert_eq!(stat[18], "7", "nice in /proc/{pid}/stat");
    // SAFETY: ioprio_get takes no pointers.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid as i32) };
    assert_eq!(io, expected as i64);
    let hardening = &sb.service_status("prio")["hardening"];
    assert_eq!(hardening["nice"], "setpriority before exec");
    assert_eq!(hardening["private_tmp"], "off");
    assert!(hardening["io_weight"] == "off");
}

#[test]
fn private_users_maps_the_service_user_to_itself_and_root_to_nobody() {
    let Some(sb) = sandbox() else { return };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if !Path::new("/proc/self/ns/user").exists() || max.trim() == "0" {
        eprintln!("skipped: user namespaces are not available");
        return;
    }
    let keys = json!({"user": "daemon", "private_users": true, "private_tmp": true,
                      "capabilities": ["CAP_NET_BIND_SERVICE"], "nice": 3});
    let d = run(&sb, json!({"ids": probe(&sb, "ids", "ids", "", keys)}));
    let uid = nix_uid("daemon");
    assert_eq!(
        result(&sb, &d, "ids"),
        format!("uid {uid}, / owned by 65534, uid_map {uid} {uid} 1")
    );
}

/// The uid of `user`, from /etc/passwd.
fn nix_uid(user: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == user).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no user {user}"))
}

#[test]
fn a_key_that_cannot_be_applied_fails_the_start_with_the_reason() {
    let Some(sb) = sandbox() else { return };
    // Retried forever, so that last_error stays the reason.
    let keys = json!({"read_only_paths": ["/no/such/dir"], "restart": "always",
                      "max_restart_attempts": 0});
    let _d = run(&sb, json!({"x": probe(&sb, "x", "exists", "/", keys)}));
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = sb.service_status("x");
        last["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("read_only_paths /no/such/dir"))
    });
    assert!(ok, "{last}");
    assert!(!sb.path("out/x").exists(), "it never ran unprotected");
    let check = sb.cli(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("read_only_paths = [/no/such/dir]: cannot be applied"),
        "{}",
        check.stdout
    );
}

#[test]
fn an_io_priority_with_the_idle_class_is_warned_about_and_ignored() {
    // No root needed: the idle class is open to everyone.
    let sb = Sandbox::new();
    let svc = sb.service("idle", "exec sleep 60");
    let keys = |prio: Value| {
        json!({"idle": {"binary_path": svc, "pass_service_args": false,
                        "io_class": "idle", "io_priority": prio}})
    };
    sb.config(json!({}), keys(json!(5)));
    let check = sb.cli(&["check"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let warning = "idle: io_priority 5 is ignored: the idle class has no priority levels";
    assert!(check.stderr.contains(warning), "{}", check.stderr);
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&[warning]);
    let pid = sb.wait_running("idle", None);
    // SAFETY: ioprio_get takes no pointers.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid as i32) };
    assert_eq!(io, 3 << 13, "the idle class, its only level");
    // Without a priority there is nothing to warn about.
    sb.config(json!({}), keys(Value::Null));
    assert!(!sb.cli(&["check"]).stderr.contains("io_priority"));
}
