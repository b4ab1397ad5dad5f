//! Hardening (docs/hardening.md): each protection bites. A small Python fixture tries the
//! forbidden thing (calls that fail harmlessly when they are permitted) and writes what
//! happened; each test runs it with the key and, where that proves the key did it,
//! without. Root-only; skipped with a printed reason elsewhere or when the kernel lacks
//! the feature.
//!
//! Each behaviour is tested in both halves; a new key adds its pair here:
//! - syscall_filter: every call of every deny group fails with EPERM (walked call by
//!   call against a table of our own) / the same calls unfiltered do not; errno / kill.
//! - syscall_allow: calls outside the list fail / python3, nginx, redis and memcached
//!   run under it; syscall_filter beside it denies an allowed call; kill; a change
//!   restarts on reload; check and status count the calls / say "off" without it.
//! - capabilities: the listed ones in all five sets / nothing else (the highest one
//!   included); root / a user (ambient); `[]` / no key (everything).
//! - read_only_paths: a write under the path, and under mounts below it, fails / the
//!   same write without the key succeeds.
//! - private_users: a root service gets a host id and no root powers / without the key
//!   it is root; a user service is mapped to itself; a binary the id cannot execute is
//!   refused / the same binary runs without the key; with no accounts files the
//!   name's id is still given / with unreadable ones the start fails (never root);
//!   a service keeps its id when a clashing one is added / the newcomer moves; a root
//!   data_dir the id cannot enter is refused with the reason / an open one is entered.
//! - io_priority with the idle class: warned about and ignored / no warning without it.

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
elif act == "walk":
    # Each number in arg ("name:nr ..."), all six arguments -1 (harmless: a bad
    # pointer, fd, flag or id for every call walked here): "nr:ok" or "nr:errno".
    libc.syscall.restype = ctypes.c_long
    res = []
    for word in arg.split():
        nr = int(word.split(":")[1])
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(-1)] * 6)
        res.append("%d:%s" % (nr, "ok" if r >= 0 else ctypes.get_errno()))
    report(" ".join(res))
elif act == "rootless":
    report("uid %d, append %s, shadow %s, cwd owner %d" % (os.getuid(),
           attempt(lambda: open(arg, "a").write("x")),
           attempt(lambda: open("/etc/shadow").read()), os.stat(".").st_uid))
elif act == "ids":
    report("uid %d, / owned by %d, uid_map %s" % (os.getuid(), os.stat("/").st_uid,
           " ".join(open("/proc/self/uid_map").read().split())))
time.sleep(float(os.environ.get("HOLD", "0")))
"#;

/// A sandbox with the fixture, or `None` (reason printed) where these tests cannot run.
fn sandbox() -> Option<Sandbox> {
    if !crate::util::is_root() {
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

/// Every group a deny list names, with each member x86_64 has and its number there, as
/// systemd 257 defines the groups (src/shared/seccomp-util.c) and the kernel numbers
/// the calls (arch/x86/entry/syscalls/syscall_64.tbl). Kept apart from the daemon's
/// own tables on purpose: a member dropped from those must fail a test.
#[rustfmt::skip]
const DENY_GROUPS_X86_64: &[(&str, &str)] = &[
    ("@aio", "io_cancel:210 io_destroy:207 io_getevents:208 io_pgetevents:333 io_setup:206 \
        io_submit:209 io_uring_enter:426 io_uring_register:427 io_uring_setup:425"),
    ("@chown", "chown:92 fchown:93 fchownat:260 lchown:94"),
    ("@clock", "adjtimex:159 clock_adjtime:305 clock_settime:227 settimeofday:164"),
    ("@cpu-emulation", "modify_ldt:154"),
    ("@debug", "lookup_dcookie:212 perf_event_open:298 pidfd_getfd:438 ptrace:101"),
    ("@ipc", "memfd_create:319 mq_getsetattr:245 mq_notify:244 mq_open:240 \
        mq_timedreceive:243 mq_timedsend:242 mq_unlink:241 msgctl:71 msgget:68 msgrcv:70 \
        msgsnd:69 pipe:22 pipe2:293 process_madvise:440 process_vm_readv:310 \
        process_vm_writev:311 semctl:66 semget:64 semop:65 semtimedop:220 shmat:30 shmctl:31 \
        shmdt:67 shmget:29"),
    ("@keyring", "add_key:248 keyctl:250 request_key:249"),
    ("@memlock", "mlock:149 mlock2:325 mlockall:151 munlock:150 munlockall:152"),
    ("@module", "delete_module:176 finit_module:313 init_module:175"),
    ("@mount", "chroot:161 fsconfig:431 fsmount:432 fsopen:430 fspick:433 mount:165 \
        mount_setattr:442 move_mount:429 open_tree:428 pivot_root:155 umount2:166"),
    ("@network-io", "accept:43 accept4:288 bind:49 connect:42 getpeername:52 getsockname:51 \
        getsockopt:55 listen:50 recvfrom:45 recvmmsg:299 recvmsg:47 sendmmsg:307 sendmsg:46 \
        sendto:44 setsockopt:54 shutdown:48 socket:41 socketpair:53"),
    ("@obsolete", "_sysctl:156 afs_syscall:183 create_module:174 get_kernel_syms:177 \
        getpmsg:181 putpmsg:182 query_module:178 security:185 sysfs:139 tuxcall:184 \
        uselib:134 ustat:136 vserver:236"),
    ("@pkey", "pkey_alloc:330 pkey_free:331 pkey_mprotect:329"),
    ("@privileged", "_sysctl:156 acct:163 adjtimex:159 bpf:321 capset:126 chown:92 chroot:161 \
        clock_adjtime:305 clock_settime:227 delete_module:176 fanotify_init:300 \
        fanotify_mark:301 fchown:93 fchownat:260 finit_module:313 init_module:175 ioperm:173 \
        iopl:172 kexec_file_load:320 kexec_load:246 lchown:94 nfsservctl:180 \
        open_by_handle_at:304 pivot_root:155 quotactl:179 quotactl_fd:443 reboot:169 \
        setdomainname:171 setfsuid:122 setgroups:116 sethostname:170 setresuid:117 \
        setreuid:113 settimeofday:164 setuid:105 swapoff:168 swapon:167 vhangup:153"),
    ("@raw-io", "ioperm:173 iopl:172"),
    ("@reboot", "kexec_file_load:320 kexec_load:246 reboot:169"),
    ("@resources", "ioprio_set:251 mbind:237 migrate_pages:256 move_pages:279 \
        sched_setaffinity:203 sched_setattr:314 sched_setparam:142 sched_setscheduler:144 \
        set_mempolicy:238 set_mempolicy_home_node:450 setpriority:141 setrlimit:160"),
    ("@sandbox", "landlock_add_rule:445 landlock_create_ruleset:444 \
        landlock_restrict_self:446 seccomp:317"),
    ("@setuid", "setgid:106 setgroups:116 setregid:114 setresgid:119 setresuid:117 \
        setreuid:113 setuid:105"),
    ("@swap", "swapoff:168 swapon:167"),
    ("@sync", "fdatasync:75 fsync:74 msync:26 sync:162 sync_file_range:277 syncfs:306"),
    ("@timer", "alarm:37 getitimer:36 setitimer:38 timer_create:222 timer_delete:226 \
        timer_getoverrun:225 timer_gettime:224 timer_settime:223 timerfd_create:283 \
        timerfd_gettime:287 timerfd_settime:286 times:100"),
];

/// "nr:errno" for each call of `walk` (a `DENY_GROUPS_X86_64` entry's calls).
fn expect_all(walk: &str, errno: i32) -> String {
    walk.split_whitespace()
        .map(|w| format!("{}:{errno}", w.split_once(':').unwrap().1))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_call_of_every_deny_group_fails_with_eperm() {
    let Some(sb) = sandbox() else { return };
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipped: the walked table holds x86_64's numbers");
        return;
    }
    // One service per group, denying that group alone and calling each of its members;
    // and one without a filter calling the same, whose answers must not be EPERM (so
    // the EPERMs are the filter's).
    let mut services = serde_json::Map::new();
    for (i, (group, calls)) in DENY_GROUPS_X86_64.iter().enumerate() {
        let keys = json!({"syscall_filter": [group]});
        services.insert(
            format!("g{i}"),
            probe(&sb, &format!("g{i}"), "walk", calls, keys),
        );
    }
    let every: Vec<&str> = DENY_GROUPS_X86_64.iter().map(|(_, c)| *c).collect();
    let every = every.join(" ");
    services.insert("free".into(), probe(&sb, "free", "walk", &every, json!({})));
    let d = run(&sb, Value::Object(services));
    for (i, (group, calls)) in DENY_GROUPS_X86_64.iter().enumerate() {
        let got = result(&sb, &d, &format!("g{i}"));
        assert_eq!(got, expect_all(calls, libc::EPERM), "{group}");
    }
    let free = result(&sb, &d, "free");
    let eperm: Vec<&str> = free.split(' ').filter(|r| r.ends_with(":1")).collect();
    assert!(eperm.is_empty(), "EPERM without a filter: {eperm:?}");
}

/// Calls outside systemd's @system-service (and one inside, getpid) for the allow list.
const OUTSIDE: &str = "swapon:167 reboot:169 mount:165 kexec_load:246 acct:163 getpid:39";

/// The number in "... allowing N system calls ..." of a hardening line.
fn allowed_count(how: &str) -> u32 {
    how.split_once("allowing ")
        .and_then(|(_, r)| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {how}"))
}

#[test]
fn syscall_allow_runs_the_listed_calls_and_denies_the_rest() {
    let Some(sb) = sandbox() else { return };
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipped: the walked calls are x86_64's numbers");
        return;
    }
    let allow = json!({"syscall_allow": ["@system-service"], "environment": {"HOLD": "60"}});
    let deny_wins = json!({"syscall_allow": ["@system-service"], "syscall_filter": ["getpid"]});
    let kill = json!({"syscall_allow": ["@system-service"], "syscall_filter_action": "kill"});
    let services = |allow: Value| {
        json!({
            "allow": probe(&sb, "allow", "walk", OUTSIDE, allow),
            "deny-wins": probe(&sb, "deny-wins", "walk", OUTSIDE, deny_wins.clone()),
            "kill": probe(&sb, "kill", "walk", "swapon:167", kill.clone()),
            "free": probe(&sb, "free", "walk", OUTSIDE, json!({})),
        })
    };
    let d = run(&sb, services(allow.clone()));
    // python3 itself runs under the list: only the calls outside it fail.
    assert_eq!(
        result(&sb, &d, "allow"),
        "167:1 169:1 165:1 246:1 163:1 39:ok"
    );
    assert_eq!(
        result(&sb, &d, "deny-wins"),
        "167:1 169:1 165:1 246:1 163:1 39:1"
    );
    let free = result(&sb, &d, "free");
    assert!(!free.contains(":1 ") && free.ends_with("39:ok"), "{free}");
    let st = sb.wait_state("kill", "failed");
    assert_eq!(st["last_exit"]["signal"], "SIGSYS", "{st}");
    assert!(!sb.path("out/kill").exists());

    // check and status say how many calls the list resolves to.
    let check = sb.cli(&["check"]);
    let line = check
        .stdout
        .lines()
        .find(|l| {
            l.contains("hardening: syscall_allow = [@system-service]: seccomp filter allowing")
        })
        .unwrap_or_else(|| panic!("{}", check.stdout))
        .to_string();
    let n = allowed_count(&line);
    assert!((250..450).contains(&n), "{line}");
    let status = sb.service_status("allow");
    assert_eq!(
        allowed_count(status["hardening"]["syscall_allow"].as_str().unwrap()),
        n
    );
    assert_eq!(
        sb.service_status("free")["hardening"]["syscall_allow"],
        "off"
    );

    // A change restarts the service on reload, under the new list.
    let pid = sb.wait_running("allow", None);
    std::fs::remove_file(sb.path("out/allow")).unwrap();
    let mut wider = allow;
    wider["syscall_allow"] = json!(["@system-service", "@swap"]);
    sb.config(json!({}), services(wider));
    assert_eq!(sb.cli(&["reload"]).code, 0);
    sb.wait_running("allow", Some(pid));
    let got = result(&sb, &d, "allow");
    assert!(
        got.starts_with("167:") && !got.starts_with("167:1 "),
        "{got}"
    );
    assert!(got.contains(" 169:1 "), "{got}");
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Whether 127.0.0.1:`port` answers `request` with something containing `expect`.
fn answers(port: u16, request: &[u8], expect: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&buf).contains(expect) {
            return true;
        }
    }
    false
}

/// nginx, redis and memcached as systemd units run them with
/// `SystemCallFilter=@system-service`: each serves a real client.
#[test]
fn real_daemons_serve_under_the_system_service_allow_list() {
    let Some(sb) = sandbox() else { return };
    let paths = [
        ("nginx", "/usr/sbin/nginx"),
        ("redis-server", "/usr/bin/redis-server"),
        ("memcached", "/usr/bin/memcached"),
    ];
    let mut bins = Vec::new();
    for (package, program) in paths {
        match crate::util::packages::ensure(package, program) {
            Ok(p) => bins.push(p),
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    }
    let (web, kv, cache) = (free_port(), free_port(), free_port());
    let www = sb.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served under the allow list\n").unwrap();
    let tmp = sb.path("nginx-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let t = tmp.display();
    let conf = sb.path("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 2;\npid {pid};\nerror_log stderr notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {t}/b; proxy_temp_path {t}/p;\n\
             fastcgi_temp_path {t}/f; uwsgi_temp_path {t}/u; scgi_temp_path {t}/s;\n\
             server {{ listen 127.0.0.1:{web}; root {www}; }} }}\n",
            pid = sb.path("nginx.pid").display(),
            www = www.display(),
        ),
    )
    .unwrap();
    let allow = |bin: &PathBuf, args: Value| {
        json!({"binary_path": bin, "args": args, "pass_service_args": false,
               "syscall_allow": ["@system-service"]})
    };
    let d = run(
        &sb,
        json!({
            "nginx": allow(&bins[0], json!(["-c", conf, "-e", "stderr"])),
            "redis": allow(&bins[1], json!(["--port", kv.to_string(), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
                "--dir", sb.path("")])),
            "memcached": allow(&bins[2], json!(["-p", cache.to_string(), "-l", "127.0.0.1",
                "-U", "0", "-u", "nobody"])),
        }),
    );
    let get = "GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n".to_string();
    for (name, port, request, expect) in [
        ("nginx", web, get.as_bytes(), "served under the allow list"),
        ("redis", kv, b"*1\r\n$4\r\nPING\r\n".as_slice(), "+PONG"),
        ("memcached", cache, b"version\r\n".as_slice(), "VERSION "),
    ] {
        let ok = wait_until(DEADLINE, || answers(port, request, expect));
        assert!(ok, "{name} does not answer; log:\n{}", d.log_text());
        let how = sb.service_status(name)["hardening"]["syscall_allow"].clone();
        assert!(
            how.as_str().is_some_and(|h| h.contains("allowing")),
            "{how}"
        );
        let pid = sb.wait_running(name, None);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "{name} runs unfiltered:\n{status}"
        );
    }
}

/// The host id in /proc/PID/uid_map: "0 HOST 1" expected.
fn mapped_host(pid: i64) -> u32 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let f: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(
        (f.len(), f[0], f[2]),
        (3, "0", "1"),
        "only root inside is mapped: {map}"
    );
    f[1].parse().unwrap()
}

#[test]
fn private_users_gives_a_root_service_one_unprivileged_host_id() {
    let Some(sb) = sandbox() else { return };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if !Path::new("/proc/self/ns/user").exists() || max.trim() == "0" {
        eprintln!("skipped: user namespaces are not available");
        return;
    }
    // A root-owned 0644 file: root on the host could append to it.
    let target = sb.path("root-owned");
    std::fs::write(&target, "").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = sb.path("rootless-data");
    let mut keys = json!({"private_users": true, "data_dir": data,
                          "capabilities": ["CAP_DAC_OVERRIDE", "CAP_CHOWN"],
                          "environment": {"HOLD": "60"}});
    let arg = target.display().to_string();
    let mut as_root = keys.clone();
    as_root["user"] = json!("root");
    as_root["data_dir"] = json!(sb.path("as-root-data"));
    keys["restart"] = json!("always");
    let d = run(
        &sb,
        json!({
            "rootless": probe(&sb, "rootless", "rootless", &arg, keys),
            "as-root": probe(&sb, "as-root", "rootless", &arg, as_root),
            "host": probe(&sb, "host", "rootless", &arg, json!({})),
        }),
    );
    let pid = sb.wait_running("rootless", None);
    let host = mapped_host(pid);
    assert!((61184..=65519).contains(&host), "{host}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .to_string()
    };
    assert_eq!(ids("Uid:"), format!("Uid:\t{host}\t{host}\t{host}\t{host}"));
    assert_eq!(ids("Gid:"), format!("Gid:\t{host}\t{host}\t{host}\t{host}"));
    assert_eq!(
        ids("Groups:").trim_end(),
        "Groups:",
        "the daemon's groups are dropped"
    );
    let eacces = format!("errno {}", libc::EACCES);
    // Root inside, capabilities inside: still nothing a root-owned file would allow.
    assert_eq!(
        result(&sb, &d, "rootless"),
        format!("uid 0, append {eacces}, shadow {eacces}, cwd owner 0")
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (host, host),
        "data_dir is the host id's"
    );
    // `user: "root"` is the same case, with an id of its own.
    let other = mapped_host(sb.wait_running("as-root", None));
    assert_ne!(other, host);
    assert_eq!(
        result(&sb, &d, "as-root"),
        format!("uid 0, append {eacces}, shadow {eacces}, cwd owner 0")
    );
    // Without private_users, root is root.
    assert_eq!(
        result(&sb, &d, "host"),
        "uid 0, append ok, shadow ok, cwd owner 0"
    );
    // check and status name the id.
    let named = format!("root inside is host uid/gid {host}");
    let check = sb.cli(&["check"]);
    assert!(check.stdout.contains(&named), "{}", check.stdout);
    let how = sb.service_status("rootless")["hardening"]["private_users"].clone();
    assert!(how.as_str().is_some_and(|h| h.contains(&named)), "{how}");
    // The same id at the next start.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let again = sb.wait_running("rootless", Some(pid));
    assert_eq!(mapped_host(again), host);
}

/// `orchestrator ARGS` in a mount namespace of its own whose /etc is an empty tmpfs,
/// after `setup` (shell) ran in it.
fn with_empty_etc(setup: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs /etc && {setup} exec \"$0\" \"$@\""
        ))
        .arg(BIN)
        .args(args);
    cmd
}

#[test]
fn private_users_never_maps_root_to_root_when_the_accounts_are_missing_or_unreadable() {
    let Some(sb) = sandbox() else { return };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if !Path::new("/proc/self/ns/user").exists() || max.trim() == "0" {
        eprintln!("skipped: user namespaces are not available");
        return;
    }
    let keys = json!({"private_users": true, "restart": "always",
                      "environment": {"HOLD": "60"}});
    sb.config(
        json!({}),
        json!({"rootless": probe(&sb, "rootless", "ids", "", keys)}),
    );
    let config = sb.path("orchestrator.json").display().to_string();
    let run = ["run", "--config", config.as_str()];

    // No /etc/passwd nor /etc/group (an empty root): no accounts, so the name's id.
    let up = |d: &Daemon| {
        let ok = wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0);
        assert!(ok, "daemon did not come up; log:\n{}", d.log_text());
    };
    let d = Daemon::launch(&sb, with_empty_etc("", &run), &[]);
    up(&d);
    let pid = sb.wait_running("rootless", None);
    let host = mapped_host(pid);
    assert!(
        (61184..=65519).contains(&host),
        "{host}; log:\n{}",
        d.log_text()
    );
    drop(d);

    // Accounts that cannot be read (a symlink loop: ELOOP even for root): the start
    // fails with the reason, and check says so; root is never mapped to root.
    let looped = "ln -s passwd /etc/passwd && ln -s group /etc/group &&";
    let _ = std::fs::remove_file(sb.socket());
    let d = Daemon::launch(&sb, with_empty_etc(looped, &run), &[]);
    up(&d);
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = sb.service_status("rootless");
        last["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot choose a host id"))
    });
    assert!(ok, "{last}; log:\n{}", d.log_text());
    assert!(last["pid"].is_null(), "it runs: {last}");
    let check = run_with_timeout(
        with_empty_etc(looped, &["check", "--config", &config]),
        DEADLINE,
    );
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .contains("cannot be applied: cannot choose a host id"),
        "{}",
        check.stdout
    );
}

/// A service name, sorting before "web", whose host id search starts at `id`: the
/// daemon's rule (FNV-1a of the name, into 61184-65519), searched.
fn name_starting_at(id: u32) -> String {
    let fnv = |name: &str| {
        name.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    };
    (0..)
        .map(|i| format!("a-{i}"))
        .find(|n| 61184 + fnv(n) % (65519 - 61184 + 1) == id)
        .unwrap()
}

#[test]
fn private_users_keeps_a_services_host_id_when_a_clashing_one_is_added() {
    let Some(sb) = sandbox() else { return };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if !Path::new("/proc/self/ns/user").exists() || max.trim() == "0" {
        eprintln!("skipped: user namespaces are not available");
        return;
    }
    let data = sb.path("web-data");
    let keys = json!({"private_users": true, "restart": "always", "data_dir": data,
                      "environment": {"HOLD": "60"}});
    let web = probe(&sb, "web", "ids", "", keys.clone());
    let d = run(&sb, json!({"web": web}));
    let pid = sb.wait_running("web", None);
    let host = mapped_host(pid);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), host);
    // A service whose name would take that id first, and sorts earlier.
    let newcomer = name_starting_at(host);
    let mut other = keys.clone();
    other["data_dir"] = json!(sb.path("newcomer-data"));
    sb.config(
        json!({}),
        json!({"web": web, newcomer.as_str(): probe(&sb, &newcomer, "ids", "", other)}),
    );
    let r = sb.cli(&["reload"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let theirs = mapped_host(sb.wait_running(&newcomer, None));
    assert_ne!(theirs, host, "{newcomer} got web's id");
    // web was not even restarted; and at its next start it has the same id, so its
    // data_dir is still its own.
    assert_eq!(sb.service_status("web")["pid"].as_i64(), Some(pid));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let again = sb.wait_running("web", Some(pid));
    assert_eq!(mapped_host(again), host, "log:\n{}", d.log_text());
}

#[test]
fn private_users_refuses_a_data_dir_its_host_id_cannot_enter() {
    let Some(sb) = sandbox() else { return };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if !Path::new("/proc/self/ns/user").exists() || max.trim() == "0" {
        eprintln!("skipped: user namespaces are not available");
        return;
    }
    // Root's directories, as a service that ran without private_users left them: a
    // private one is not handed over; one open to others is entered as it is.
    let (locked, open) = (sb.path("locked"), sb.path("open"));
    for (dir, mode) in [(&locked, 0o700), (&open, 0o755)] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let svc = |dir: &PathBuf, name: &str| {
        probe(
            &sb,
            name,
            "ids",
            "",
            json!({"private_users": true, "data_dir": dir,
                                          "restart": "always", "max_restart_attempts": 0}),
        )
    };
    let d = run(
        &sb,
        json!({"locked": svc(&locked, "locked"), "open": svc(&open, "open")}),
    );
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = sb.service_status("locked");
        last["last_error"].as_str().is_some_and(|e| {
            e.contains("cannot enter data_dir")
                && e.contains("mode 0700, owner 0:0")
                && e.contains("chown -R 6")
        })
    });
    assert!(ok, "{last}; log:\n{}", d.log_text());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&locked).unwrap().uid(),
        0,
        "left as it was"
    );
    assert!(result(&sb, &d, "open").starts_with("uid 0, / owned by 65534"));
}

#[test]
fn private_users_refuses_a_binary_the_host_id_cannot_execute() {
    let Some(sb) = sandbox() else { return };
    let private = sb.path("private-bin");
    copy_executable("/bin/true", &private);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let svc = |users: bool| {
        json!({"binary_path": private, "pass_service_args": false, "restart": "always",
               "max_restart_attempts": 0, "private_users": users})
    };
    let _d = run(&sb, json!({"x": svc(true), "control": svc(false)}));
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = sb.service_status("x");
        last["last_error"].as_str().is_some_and(|e| {
            e.contains("cannot execute") && e.contains("mode 0700") && e.contains("host uid 6")
        })
    });
    assert!(ok, "{last}");
    assert!(sb.service_status("control")["last_exit"]["code"] == 0);
}

/// The five capability sets of `pid`, from /proc/PID/status, as
/// [CapInh, CapPrm, CapEff, CapBnd, CapAmb].
fn cap_sets(pid: i64) -> [u64; 5] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mut out = [u64::MAX; 5];
    for (i, key) in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .enumerate()
    {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        out[i] = u64::from_str_radix(line[key.len()..].trim(), 16).unwrap();
    }
    out
}

#[test]
fn capabilities_leave_exactly_the_listed_ones_in_all_five_sets() {
    let Some(sb) = sandbox() else { return };
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // What the daemon itself may hand out: this process's bounding set (a container
    // may have cut it).
    let own = cap_sets(std::process::id() as i64)[3];
    let (chown, bind, highest) = (1u64 << 0, 1u64 << 10, 1u64 << last);
    let hold = json!({"HOLD": "60"});
    let keys = |caps: Value, user: Option<&str>| {
        let mut k = json!({"capabilities": caps, "environment": hold});
        if let Some(u) = user {
            k["user"] = json!(u);
        }
        k
    };
    let d = run(
        &sb,
        json!({
            "root-two": probe(&sb, "root-two", "exists", "/",
                keys(json!(["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]), None)),
            "root-none": probe(&sb, "root-none", "exists", "/", keys(json!([]), None)),
            "user-bind": probe(&sb, "user-bind", "exists", "/",
                keys(json!(["CAP_NET_BIND_SERVICE"]), Some("nobody"))),
            "root-all": probe(&sb, "root-all", "exists", "/",
                json!({"environment": hold})),
        }),
    );
    let _ = &d;
    let sets = |name: &str| cap_sets(sb.wait_running(name, None));
    // Root keeps the listed ones in the inheritable, permitted, effective and
    // bounding sets, nothing ambient (it needs none to keep them across exec).
    let two = chown | bind;
    assert_eq!(sets("root-two"), [two, two, two, two, 0], "root-two");
    assert_eq!(sets("root-none"), [0; 5], "root-none");
    // A user keeps them as ambient capabilities across the switch and exec.
    assert_eq!(
        sets("user-bind"),
        [bind, bind, bind, bind, bind],
        "user-bind"
    );
    // Without the key, root's sets are whole, up to the highest capability.
    let free = sets("root-all");
    assert_eq!((free[1], free[3]), (own, own), "root-all");
    assert_ne!(own & highest, 0, "the highest capability is ours to drop");
}

/// Mounts made below a directory by the test, undone (lazily) on drop.
struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid path string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn read_only_paths_cover_the_mounts_below_them() {
    let Some(sb) = sandbox() else { return };
    let ro = sb.path("ro");
    let (tmpfs, bound, source) = (ro.join("tmpfs"), ro.join("bound"), sb.path("source"));
    for d in [&tmpfs, &bound, &source] {
        std::fs::create_dir_all(d).unwrap();
    }
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut guard = Mounted(Vec::new());
    // SAFETY: valid strings; the mounts are undone by the guard.
    let ok = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c(&tmpfs).as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    } == 0;
    assert!(ok, "mount tmpfs: {}", std::io::Error::last_os_error());
    guard.0.push(tmpfs.clone());
    // SAFETY: as above.
    let ok = unsafe {
        let none = std::ptr::null();
        libc::mount(
            c(&source).as_ptr(),
            c(&bound).as_ptr(),
            none,
            libc::MS_BIND,
            none.cast(),
        )
    } == 0;
    assert!(ok, "bind mount: {}", std::io::Error::last_os_error());
    guard.0.push(bound.clone());
    let keys = json!({"read_only_paths": [ro]});
    let file = |dir: &Path, name: &str| dir.join(name).display().to_string();
    let d = run(
        &sb,
        json!({
            "in-tmpfs": probe(&sb, "in-tmpfs", "write", &file(&tmpfs, "a"), keys.clone()),
            "in-bound": probe(&sb, "in-bound", "write", &file(&bound, "a"), keys.clone()),
            "top": probe(&sb, "top", "write", &file(&ro, "a"), keys),
            "free-tmpfs": probe(&sb, "free-tmpfs", "write", &file(&tmpfs, "b"), json!({})),
            "free-bound": probe(&sb, "free-bound", "write", &file(&bound, "b"), json!({})),
        }),
    );
    let erofs = format!("errno {}", libc::EROFS);
    for name in ["in-tmpfs", "in-bound", "top"] {
        assert_eq!(result(&sb, &d, name), erofs, "{name}");
    }
    for name in ["free-tmpfs", "free-bound"] {
        assert_eq!(result(&sb, &d, name), "ok", "{name}");
    }
    drop(d);
}
