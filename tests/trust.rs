//! Trust boundaries: the daemon runs as root, and nothing a service or a local
//! user can write may make it act for them. Each test reproduces one attack against the
//! real binary. (The file-level rules have unit tests in `common::safe_fs`, `persist`,
//! `instance`, `files` and `sha256`.)

use crate::util::*;
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

#[test]
fn strict_modes_refuse_binaries_another_user_could_swap() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    let sb = Sandbox::new();
    // A sticky, world-writable services_dir: user nobody makes evil/evil.
    let svcs = sb.path("services");
    chmod(&svcs, 0o1777);
    let evil = sb.service("evil", "exec sleep 1000");
    std::os::unix::fs::chown(evil.parent().unwrap(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&evil, Some(NOBODY), Some(NOBODY)).unwrap();
    sb.config(json!({"services_dir": "services"}), json!({}));
    let out = sb.cli(&["check"]);
    assert!(
        out.stdout
            .contains("evil: will fail: service binary refused: ")
            && out.stdout.contains("is owned by uid 65534"),
        "{}",
        out.stdout
    );
    // A root:nogroup 0775 binary in a 0775 directory of group nogroup.
    chmod(&svcs, 0o755);
    std::fs::remove_dir_all(evil.parent().unwrap()).unwrap();
    let grp = sb.service("grp", "exec sleep 1000");
    std::os::unix::fs::chown(&grp, Some(0), Some(NOBODY)).unwrap();
    chmod(&grp, 0o775);
    std::os::unix::fs::chown(grp.parent().unwrap(), Some(0), Some(NOBODY)).unwrap();
    chmod(grp.parent().unwrap(), 0o775);
    let out = sb.cli(&["check"]);
    assert!(
        out.stdout
            .contains("grp: will fail: service binary refused: ")
            && out.stdout.contains("is writable by its group"),
        "{}",
        out.stdout
    );
    // Fixed: it passes.
    chmod(&grp, 0o755);
    chmod(grp.parent().unwrap(), 0o755);
    let out = sb.cli(&["check"]);
    assert!(out.stdout.contains("grp: will start"), "{}", out.stdout);
}

#[test]
fn a_config_another_user_could_change_is_refused_even_when_relative() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    let cfg = sb.config(json!({"services_dir": "services"}), json!({}));
    assert_eq!(sb.cli(&["check"]).code, 0);
    // Owned by nobody, mode 0644.
    std::os::unix::fs::chown(&cfg, Some(NOBODY), None).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("owned by uid 65534"), "{}", out.stderr);
    // The default ./orchestrator.json, group-writable: found by the lookup, refused.
    std::os::unix::fs::chown(&cfg, Some(0), None).unwrap();
    chmod(&cfg, 0o664);
    let mut cmd = Command::new(BIN);
    cmd.arg("check")
        .current_dir(&sb.dir)
        .env_remove("ORCHESTRATOR_CONFIG");
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("refusing a config file"),
        "{}",
        out.stderr
    );
}

#[test]
fn status_answers_when_a_service_swaps_its_binary_for_a_fifo() {
    let sb = Sandbox::new();
    let bin = sb.service("app", "exec sleep 1000");
    sb.service("crash", "sleep 0.3; exit 3");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let mut d = Daemon::start(&sb, &[]);
    sb.wait_running("app", None);
    // rm app; mkfifo app: hashing it would block the main loop forever.
    std::fs::remove_file(&bin).unwrap();
    mkfifo(&bin);
    let t = Instant::now();
    let st = sb.service_status("app");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(st["binary"]["sha256"].is_null(), "{st}");
    // The loop still reaps and restarts, and still answers signals.
    let first = sb.wait_running("crash", None);
    sb.wait_running("crash", Some(first));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(DEADLINE).is_some());
}

#[test]
fn log_dir_links_and_fifos_are_never_followed_nor_block_the_writer() {
    let sb = Sandbox::new();
    let logs = sb.path("logs");
    std::fs::create_dir(&logs).unwrap();
    if is_root() {
        // The user that owns log_dir plants the traps.
        std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let target = sb.path("root-only");
    std::fs::write(&target, "secret\n").unwrap();
    chmod(&target, 0o600);
    std::os::unix::fs::symlink(&target, logs.join("app.log")).unwrap();
    mkfifo(&logs.join("jam.log"));
    for name in ["app", "jam", "ok"] {
        sb.service(name, "while :; do echo line; sleep 0.05; done");
    }
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    // Every service's lines keep flowing (to stderr, and to ok.log), long after the
    // writer first met the FIFO.
    assert!(wait_until(DEADLINE, || {
        std::fs::read_to_string(logs.join("ok.log")).is_ok_and(|s| s.lines().count() > 20)
    }));
    let before = d.count_log(&["jam[", "line"]);
    assert!(wait_until(DEADLINE, || d.count_log(&["jam[", "line"]) > before + 5));
    d.wait_log(&["cannot write", "app.log"]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
}

#[test]
fn text_logs_and_the_logs_command_escape_control_characters() {
    let sb = Sandbox::new();
    sb.service(
        "tty",
        r"printf 'a\rb\033]0;owned\007 2026-01-01T00:00:00.000Z ERROR orchestrator: x\302\233y\n'; exec sleep 1000",
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    let line = d.wait_log(&["tty[", "stdout:"]);
    assert!(
        line.contains(
            r"a\rb\x1b]0;owned\x07 2026-01-01T00:00:00.000Z ERROR orchestrator: x\u{9b}y"
        ),
        "{line:?}"
    );
    assert!(!d.log_text().contains('\u{1b}'));
    let out = sb.cli(&["logs", "tty"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(r"a\rb\x1b]0;owned\x07"),
        "{:?}",
        out.stdout
    );
    assert!(!out.stdout.contains('\u{1b}') && !out.stdout.contains('\r'));
}

#[test]
fn tiny_max_line_bytes_keep_the_daemon_up() {
    for max in [1, 2, 3] {
        let sb = Sandbox::new();
        sb.service("utf", "printf 'aé€😀\\n'; exec sleep 1000");
        sb.config(
            json!({"services_dir": "services", "max_line_bytes": max}),
            json!({}),
        );
        let d = Daemon::start(&sb, &[]);
        sb.wait_running("utf", None);
        d.wait_log(&["utf[", "😀"]);
        d.wait_log(&["utf[", "€"]);
        assert_eq!(sb.cli(&["status"]).code, 0, "max_line_bytes {max}");
    }
}

fn metrics_addr(d: &Daemon) -> String {
    let line = d.wait_log(&["metrics on http://"]);
    line.split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string()
}

#[test]
fn a_slow_metrics_client_does_not_hold_up_others() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "metrics_listen": "127.0.0.1:0"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    let addr = metrics_addr(&d);
    // A client sending one byte every 1.5 s.
    let slow_addr = addr.clone();
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&slow_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let start = Instant::now();
        // Until the server hangs up: cut off by the request's deadline, not kept for
        // as long as the client dribbles (this would take 18 s).
        for b in b"GET /metrics HTTP/1.1\r\n".iter().take(12) {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                _ => break,
            }
        }
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let held = slow.join().unwrap();
    assert!(held < Duration::from_secs(8), "held {held:?}");
}

#[test]
fn data_dir_is_never_created_through_a_link_the_service_user_planted() {
    if !is_root() {
        eprintln!("skipped: needs root to run a service as nobody");
        return;
    }
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    let home = sb.path("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let victim = sb.path("victim");
    std::fs::create_dir(&victim).unwrap();
    chmod(&victim, 0o700);
    // The user who owns `home` points `home/link` at a root-only directory.
    std::os::unix::fs::symlink(&victim, home.join("link")).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"svc": {"user": "nobody", "data_dir": home.join("link/data")}}),
    );
    let _d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || {
        sb.service_status("svc")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("data_dir"))
    }));
    assert!(!victim.join("data").exists(), "created through the link");
    // Without the link, it is created and handed to the user.
    std::fs::remove_file(home.join("link")).unwrap();
    assert!(wait_until(DEADLINE, || home.join("link/data").is_dir()));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(home.join("link")).unwrap().uid(), 0);
    assert_eq!(
        std::fs::metadata(home.join("link/data")).unwrap().uid(),
        NOBODY
    );
}

/// A path outside the sandbox (under /tmp, where another user may own it), removed
/// when the test ends, also when one of its asserts fails first.
struct Removed(std::path::PathBuf);

impl Removed {
    /// `path`, cleared of whatever an earlier run left there.
    fn new(path: std::path::PathBuf) -> Removed {
        let r = Removed(path);
        r.remove();
        r
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::ops::Deref for Removed {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Removed {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn daemon_log_is_private_and_capped_like_service_files() {
    let sb = Sandbox::new();
    // 3 MB of output in 100-byte lines, then a marker.
    sb.service(
        "flood",
        "head -c 3000000 /dev/zero | tr '\\0' x | fold -w 99; echo flood-done; exec sleep 1000",
    );
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs",
               "log_max_bytes": 100_000, "log_max_files": 2}),
        json!({}),
    );
    let _d = start_detached(&sb, &sb.path("d.pid"));
    let logs = sb.path("logs");
    assert!(wait_until(DEADLINE, || {
        std::fs::read_to_string(logs.join("flood.log")).is_ok_and(|s| s.contains("flood-done"))
    }));
    assert!(wait_until(DEADLINE, || {
        std::fs::read_to_string(logs.join("orchestrator.log"))
            .is_ok_and(|s| s.contains("flood-done"))
    }));
    let mut total = 0;
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with("orchestrator.log") {
            let m = entry.metadata().unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o640, "{name}");
            total += m.len();
        }
    }
    // Three files of at most log_max_bytes (plus one write of the sink), not 3 MB.
    assert!(total <= 3 * (100_000 + 65_536), "{total}");
    assert!(!logs.join("orchestrator.log.3").exists());
    assert_eq!(sb.cli(&["shutdown"]).code, 0);
}

/// A sandbox directly below the sticky, world-writable /tmp (as a clone under /tmp
/// is), made by root with mode 0755.
fn sandbox_under_tmp(tag: &str) -> Sandbox {
    let dir = std::env::temp_dir().join(format!("orch-tmp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("services")).unwrap();
    chmod(&dir, 0o755);
    Sandbox { dir }
}

#[test]
fn a_root_owned_directory_under_tmp_is_trusted_and_nobodys_is_not() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    let sb = sandbox_under_tmp("sticky");
    sb.service("app", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "state_dir": sb.path("state")}),
        json!({}),
    );
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("app: will start"), "{}", out.stdout);
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("app", None);
    assert!(wait_until(DEADLINE, || sb
        .path("state/state.json")
        .exists()));
    assert!(
        !d.log_text().contains("state_dir refused"),
        "{}",
        d.log_text()
    );
    drop(d);

    // Below /tmp, a directory nobody owns: its binary is refused, with the fix.
    let theirs =
        Removed::new(std::env::temp_dir().join(format!("orch-tmp-nobody-{}", std::process::id())));
    std::fs::create_dir(&theirs).unwrap();
    let bin = theirs.join("bin");
    sb.script(&bin, "exec sleep 1000");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    // A root-owned directory writable by others without the sticky bit.
    let open = sb.path("open");
    std::fs::create_dir(&open).unwrap();
    sb.script(&open.join("bin"), "exec sleep 1000");
    chmod(&open, 0o777);
    sb.config(
        json!({"services_dir": "services"}),
        json!({"theirs": {"binary_path": bin}, "open": {"binary_path": open.join("bin")}}),
    );
    let out = sb.cli(&["check"]);
    drop(theirs);
    assert!(
        out.stdout
            .contains("theirs: will fail: service binary refused: ")
            && out
                .stdout
                .contains("is owned by uid 65534 (not root); fix: chown root"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("open: will fail: service binary refused: ")
            && out.stdout.contains("fix: chmod go-w"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("app: will start"), "{}", out.stdout);
    // The config file in such a directory: refused, and so is a nobody-owned sandbox.
    std::os::unix::fs::chown(&sb.dir, Some(NOBODY), None).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("refusing a config file") && out.stderr.contains("fix: chown root"),
        "{}",
        out.stderr
    );
}

/// As user nobody (this thread's file-system uid only), whenever a socket appears at
/// `sock`, renames a symlink to `victim` over it, then clears the way for the next
/// bind. Runs until `stop`; returns how many swaps it made.
fn swap_links_over_sockets(
    sock: std::path::PathBuf,
    victim: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        unsafe { libc::syscall(libc::SYS_setfsuid, NOBODY) };
        unsafe { libc::syscall(libc::SYS_setfsgid, NOBODY) };
        let tmp = sock.with_extension("link");
        let mut swaps = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // The link is made beforehand: once the socket shows, one rename.
            if std::fs::symlink_metadata(&tmp).is_err() {
                let _ = std::os::unix::fs::symlink(&victim, &tmp);
            }
            let is_socket =
                std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
            if is_socket && std::fs::rename(&tmp, &sock).is_ok() {
                swaps += 1;
                std::thread::sleep(Duration::from_millis(30));
                let _ = std::fs::remove_file(&sock);
            }
        }
        swaps
    })
}

#[test]
fn a_symlink_raced_over_a_fresh_service_socket_changes_no_files_mode() {
    if !is_root() {
        eprintln!("skipped: needs root to race as another user");
        return;
    }
    let sb = Sandbox::new();
    let victim = sb.path("victim");
    std::fs::write(&victim, "root only\n").unwrap();
    chmod(&victim, 0o600);
    // Nobody's socket directory: refused before any bind. A squatted port makes every
    // start fail and retry, so that the old code bound again and again, each time
    // chmodding by path what stood at the socket's path a moment later. That moment is
    // stretched so that the race is won at once: the configured path goes through a
    // link whose target is thousands of `d/..` steps, which each lookup of the path
    // (the chmod's) walks, while nobody watches the socket through the short path.
    let theirs =
        Removed::new(std::env::temp_dir().join(format!("orch-race-{}", std::process::id())));
    std::fs::create_dir_all(theirs.join("d")).unwrap();
    std::os::unix::fs::symlink("d/../".repeat(800) + "d", theirs.join("s")).unwrap();
    let mut long = theirs.display().to_string() + "/";
    while long.len() + "s/../s/x.sock".len() <= 107 {
        long.push_str("s/../");
    }
    long.push_str("s/x.sock");
    for p in [theirs.join("d"), theirs.to_path_buf()] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let sock = theirs.join("d/x.sock");
    // A sticky directory of root's: bound (the kernel keeps nobody from renaming over
    // root's socket there), and born with its mode.
    let shared = sb.path("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    sb.service("web", "exec sleep 1000");
    sb.service("ok", "exec sleep 1000");
    let ok_sock = shared.join("s.sock");
    sb.config(
        json!({"services_dir": "services", "max_restart_attempts": 100000,
               "initial_backoff_ms": 1, "max_backoff_ms": 5}),
        json!({
            "web": {"sockets": [
                {"listen": format!("unix:{long}"), "mode": "0666"},
                {"listen": format!("127.0.0.1:{port}")}]},
            "plain": {"binary_path": sb.path("services/ok/ok"),
                      "sockets": [{"listen": format!("unix:{}", theirs.join("d/y.sock").display())}]},
            "ok": {"sockets": [{"listen": format!("unix:{}", ok_sock.display()), "mode": "0660"}]},
        }),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers = [
        swap_links_over_sockets(sock.clone(), victim.clone(), stop.clone()),
        swap_links_over_sockets(ok_sock.clone(), victim.clone(), stop.clone()),
    ];
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("ok", None);
    let meta = std::fs::symlink_metadata(&ok_sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    // Many starts of web, each a chance for the race; stop early if it was won.
    let victim_mode = || std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    wait_until(Duration::from_secs(20), || {
        victim_mode() != 0o600 || d.count_log(&["web", "cannot bind socket"]) >= 100
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps: Vec<usize> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let starts = d.count_log(&["web", "cannot bind socket"]);
    eprintln!("{starts} starts of web, swaps {swaps:?}");
    assert_eq!(
        victim_mode(),
        0o600,
        "the victim's mode changed; swaps {swaps:?}"
    );
    let st = sb.service_status("web");
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("in a directory others control"), "{st}");
    // Without the link: the directory itself is judged, and the fix named.
    let st = sb.service_status("plain");
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("socket directory refused") && err.contains("fix: chown root"),
        "{st}"
    );
    assert!(!theirs.join("d/y.sock").exists());
    assert_eq!(
        swaps[1], 0,
        "nobody renamed over root's socket in a sticky directory"
    );
    assert!(std::fs::symlink_metadata(&ok_sock).is_ok_and(|m| m.file_type().is_socket()));
    drop(taken);
}

/// A directory under /tmp that user nobody owns, holding `d/` and the link `s` to it
/// through thousands of `d/..` steps, and a socket path of at most 107 bytes that goes
/// through `s` many times and ends in `d/NAME`: every lookup of it (a chmod by path)
/// takes long, while nobody watches `d/NAME` through the short path. `room`: bytes
/// left for a suffix.
fn slow_path_in_nobodys_dir(tag: &str, name: &str, room: usize) -> (Removed, String) {
    let theirs =
        Removed::new(std::env::temp_dir().join(format!("orch-{tag}-{}", std::process::id())));
    std::fs::create_dir_all(theirs.join("d")).unwrap();
    std::os::unix::fs::symlink("d/../".repeat(800) + "d", theirs.join("s")).unwrap();
    let mut long = theirs.display().to_string() + "/";
    while long.len() + "s/../s/".len() + name.len() + room <= 107 {
        long.push_str("s/../");
    }
    long.push_str("s/");
    long.push_str(name);
    for p in [theirs.join("d"), theirs.to_path_buf()] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    (theirs, long)
}

#[test]
fn a_symlink_raced_over_the_control_or_notify_socket_changes_no_files_mode() {
    if !is_root() {
        eprintln!("skipped: needs root to race as another user");
        return;
    }
    let sb = Sandbox::new();
    let victim = sb.path("victim");
    std::fs::write(&victim, "root's\n").unwrap();
    chmod(&victim, 0o644);
    // The ".notify" suffix must fit too.
    let (theirs, long) = slow_path_in_nobodys_dir("ctl-race", "c.sock", ".notify".len());
    sb.service("web", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "control_socket": long}),
        json!({"web": {"ready": "notify"}}),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers = [
        swap_links_over_sockets(theirs.join("d/c.sock"), victim.clone(), stop.clone()),
        swap_links_over_sockets(theirs.join("d/c.sock.notify"), victim.clone(), stop.clone()),
    ];
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(sb.path("orchestrator.json"))
        .current_dir(&sb.dir);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at start; the old daemon ran (and chmodded both sockets by path).
    let victim_mode = || std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    let exited = wait_until(DEADLINE, || {
        victim_mode() != 0o644 || child.try_wait().ok().flatten().is_some()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps: Vec<usize> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    drop(theirs);
    assert_eq!(
        victim_mode(),
        0o644,
        "the victim's mode changed; swaps {swaps:?}"
    );
    assert!(exited, "swaps {swaps:?}: {err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("in a directory others control"), "{err}");
}

#[test]
fn control_and_notify_sockets_are_born_with_their_modes() {
    let sb = Sandbox::new();
    sb.service("web", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {"ready": "notify"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let mut notify = sb.socket().into_os_string();
    notify.push(".notify");
    assert!(wait_until(DEADLINE, || std::path::Path::new(&notify).exists()));
    for (p, mode) in [(sb.socket(), 0o600), (notify.into(), 0o666)] {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket(), "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{}", p.display());
    }
    // Refused: a socket directory writable by others without the sticky bit.
    if is_root() {
        let open = sb.path("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(sb.path("orchestrator.json"))
            .arg("--socket")
            .arg(open.join("c.sock"))
            .current_dir(&sb.dir);
        let out = run_with_timeout(cmd, DEADLINE);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("socket directory refused")
                && out.stderr.contains("fix: chmod go-w"),
            "{}",
            out.stderr
        );
        assert!(!open.join("c.sock").exists());
    }
}

/// The umask a socket is bound with is the bind's alone: the daemon's other threads,
/// and what they create afterwards (log_dir, log files), keep the daemon's own.
#[test]
fn files_made_after_the_sockets_are_bound_keep_their_modes() {
    let sb = Sandbox::new();
    let logs = sb.path("logs");
    let flag = sb.path("go");
    sb.service("web", "exec sleep 1000");
    sb.service(
        "late",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done\necho hello\nexec sleep 1000",
            flag.display()
        ),
    );
    sb.config(
        json!({"services_dir": "services", "log_dir": logs}),
        json!({"web": {"ready": "notify"}}),
    );
    let umask_of = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| m.trim().to_string())
    };
    let ours = umask_of(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert!(ours.is_some());
    let d = Daemon::start(&sb, &[]);
    let mut notify = sb.socket().into_os_string();
    notify.push(".notify");
    assert!(wait_until(DEADLINE, || Path::new(&notify).exists()));
    sb.wait_running("late", None);
    // Every thread of the daemon still has the umask it was started with.
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid)).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status"));
        if let Ok(status) = status {
            assert_eq!(umask_of(&status), ours, "{status}");
        }
    }
    // A log_dir made by a reload, and a log file opened in it, after the binds.
    let logs = sb.path("logs2");
    sb.config(
        json!({"services_dir": "services", "log_dir": logs}),
        json!({"web": {"ready": "notify"}}),
    );
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::write(&flag, "").unwrap();
    let log = logs.join("late.log");
    let written = wait_until(DEADLINE, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("hello"))
    });
    assert!(written, "{} never written", log.display());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&logs), 0o755 & !umask_bits(&ours));
    assert_eq!(mode(&log), 0o640 & !umask_bits(&ours));
}

fn umask_bits(m: &Option<String>) -> u32 {
    m.as_deref()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0)
}

fn sha256_of(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the took-over record of the new image shows in the log.
fn wait_took_over(d: &Daemon) {
    let ok = wait_until(DEADLINE, || d.count_log(&["upgrade-self: took over"]) >= 1);
    assert!(ok, "no take-over; log:\n{}", d.log_text());
}

#[test]
fn upgrade_paths_another_user_could_change_are_refused() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    // Everything in a root-owned directory right under /tmp.
    let sb = sandbox_under_tmp("upgrade");
    sb.service("app", "echo v1; exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("app", None);
    // A binary in a directory others may write to (no sticky bit), and one nobody owns
    // right in /tmp: refused by both, with the fix, and nothing changes.
    let open = sb.path("open");
    std::fs::create_dir(&open).unwrap();
    let in_open = open.join("app");
    sb.script(&in_open, "echo evil; exec sleep 1000");
    copy_executable(BIN, open.join("orchestrator"));
    chmod(&open, 0o777);
    let theirs =
        Removed::new(std::env::temp_dir().join(format!("orch-tmp-theirs-{}", std::process::id())));
    let theirs_self = Removed::new(
        std::env::temp_dir().join(format!("orch-tmp-theirs-self-{}", std::process::id())),
    );
    sb.script(&theirs, "echo evil; exec sleep 1000");
    copy_executable(BIN, &theirs_self);
    for p in [&theirs, &theirs_self] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let cases = [
        (vec!["upgrade", "app"], in_open.clone(), "fix: chmod go-w"),
        (
            vec!["upgrade", "app"],
            theirs.to_path_buf(),
            "fix: chown root",
        ),
        (
            vec!["upgrade-self"],
            open.join("orchestrator"),
            "fix: chmod go-w",
        ),
        (
            vec!["upgrade-self"],
            theirs_self.to_path_buf(),
            "fix: chown root",
        ),
    ];
    for (cmd, path, fix) in cases {
        let mut args = cmd.clone();
        args.push(path.to_str().unwrap());
        let out = sb.cli(&args);
        assert_eq!(out.code, 1, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("which another user could change") && out.stderr.contains(fix),
            "{args:?}: {}",
            out.stderr
        );
    }
    drop((theirs, theirs_self));
    assert_eq!(sb.service_status("app")["pid"], pid);
    assert_eq!(d.count_log(&["handing over"]), 0, "{}", d.log_text());
    // Root's own files under /tmp: accepted by both.
    std::fs::create_dir(sb.path("new")).unwrap();
    let v2 = sb.path("new/app");
    sb.script(&v2, "echo v2; exec sleep 1000");
    let out = sb.cli(&["upgrade", "app", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    d.wait_log(&["app[", "v2"]);
    let new = sb.path("new/orchestrator");
    copy_executable(BIN, &new);
    let out = sb.cli(&["upgrade-self", new.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d);
}

/// Whether process `pid` has `path` open.
fn has_open(pid: i32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|it| {
        it.flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
    })
}

#[test]
fn a_binary_swapped_after_the_upgrade_checks_is_not_what_is_installed() {
    let sb = Sandbox::new();
    // A big service binary: hashing it (the first thing the upgrade does after its
    // checks) holds it open long enough to swap the new one meanwhile.
    let bin = sb.service("app", "echo v1; exec sleep 1000");
    let mut text = std::fs::read(&bin).unwrap();
    text.extend(std::iter::repeat_n(b"# padding to make hashing slow\n", 1 << 19).flatten());
    std::fs::write(&bin, &text).unwrap();
    sb.config(
        json!({"services_dir": "services"}),
        json!({"app": {"upgrade_grace_ms": 200}}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("app", None);
    std::fs::create_dir(sb.path("new")).unwrap();
    let (v2, evil) = (sb.path("new/app"), sb.path("new/evil"));
    sb.script(&v2, "echo v2; exec sleep 1000");
    sb.script(&evil, "echo evil; exec sleep 1000");
    let checked = sha256_of(&v2);
    let upgrade = std::thread::spawn({
        let (socket, cfg, v2) = (sb.socket(), sb.path("orchestrator.json"), v2.clone());
        move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("--socket").arg(socket).arg("--config").arg(cfg);
            cmd.args(["upgrade", "app"]).arg(v2);
            run_with_timeout(cmd, Duration::from_secs(60))
        }
    });
    let hashing = wait_until(DEADLINE, || has_open(d.pid, &bin));
    std::fs::rename(&evil, &v2).unwrap();
    let out = upgrade.join().unwrap();
    assert!(hashing, "never saw the hashing of the old binary");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    d.wait_log(&["app[", "v2"]);
    assert_eq!(d.count_log(&["app[", "evil"]), 0, "{}", d.log_text());
    let st = sb.service_status("app");
    assert_eq!(st["binary"]["sha256"], checked.as_str(), "{st}");
}

#[test]
fn a_binary_swapped_after_the_upgrade_self_checks_is_not_what_is_executed() {
    let sb = Sandbox::new();
    sb.service("sleeper", "exec sleep 1000");
    sb.config(json!({}), json!({"sleeper": {}}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("sleeper", None);
    let real = sb.path("orchestrator-real");
    copy_executable(BIN, &real);
    std::fs::create_dir(sb.path("new")).unwrap();
    // The binary checked: its `check` run waits until told, so that the path can be
    // swapped after every check. The one swapped in leaves a mark, then takes over.
    let (checking, go, mark) = (sb.path("checking"), sb.path("go"), sb.path("mark"));
    let good = sb.path("new/orchestrator");
    sb.script(
        &good,
        &format!(
            "if [ \"$1\" = check ]; then : > {}; while [ ! -e {} ]; do sleep 0.02; done; fi\nexec {} \"$@\"",
            checking.display(),
            go.display(),
            real.display()
        ),
    );
    let evil = sb.path("new/evil");
    sb.script(
        &evil,
        &format!(": > {}\nexec {} \"$@\"", mark.display(), real.display()),
    );
    let upgrade = std::thread::spawn({
        let (socket, cfg, good) = (sb.socket(), sb.path("orchestrator.json"), good.clone());
        move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("--socket").arg(socket).arg("--config").arg(cfg);
            cmd.arg("upgrade-self").arg(good);
            run_with_timeout(cmd, Duration::from_secs(60))
        }
    });
    let held = wait_until(DEADLINE, || checking.exists());
    std::fs::rename(&evil, &good).unwrap();
    std::fs::write(&go, "").unwrap();
    let out = upgrade.join().unwrap();
    assert!(held, "{}", d.log_text());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_took_over(&d);
    assert!(!mark.exists(), "the file swapped in after the checks ran");
}
