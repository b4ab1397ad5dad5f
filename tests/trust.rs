//! Trust boundaries: the daemon runs as root, and nothing a service or a local
//! user can write may make it act for them. Each test reproduces one attack against the
//! real binary. (The file-level rules have unit tests in `process::safe_fs`, `persist`,
//! `instance`, `files` and `sha256`.)

use crate::util::*;
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

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

struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
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
    let pidfile = sb.path("d.pid");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--daemon", "--config"])
        .arg(sb.path("orchestrator.json"))
        .arg("--pidfile")
        .arg(&pidfile);
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut pid = 0;
    assert!(wait_until(DEADLINE, || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    }));
    let _guard = KillPid(pid);
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
    let theirs = std::env::temp_dir().join(format!("orch-tmp-nobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&theirs);
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
    let _ = std::fs::remove_dir_all(&theirs);
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
