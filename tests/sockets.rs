//! Sockets held by the orchestrator (docs/sockets-and-upgrades.md): passed the systemd way
//! to a real sd_listen_fds-style server, kept across restarts and reloads so no client is
//! refused, held by that service alone, closed when it goes, and a socket that cannot
//! be bound failing only its own service.

use crate::util::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/listen_server.py"
);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python interpreter itself: `python3` may be a slow wrapper script (pyenv),
/// which would make every start of the fixture take half a second.
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed for the socket tests");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// A service script that runs the fixture server as `version`.
pub fn server_body(version: &str) -> String {
    format!("exec {} {SERVER} {version}", python())
}

/// The line a TCP connection to `port` gets, or the error.
pub fn ask_tcp(port: u16) -> std::io::Result<String> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(DEADLINE))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// Connects to `port` in a loop until stopped; keeps every answer and error.
pub struct Prober {
    stop: Arc<AtomicBool>,
    pub answers: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Prober {
    pub fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (flag, kept) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match ask_tcp(port) {
                    // An empty answer: accepted by a run that was stopping, not refused.
                    Ok(line) => kept.lock().unwrap().push(line),
                    Err(e) => errors.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            errors
        });
        Prober {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    /// Waits until a run with `pid` has answered the prober.
    pub fn wait_answer_from(&self, pid: i64) {
        let word = format!(" {pid} ");
        let ok = wait_until(DEADLINE, || {
            self.answers
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.contains(&word))
        });
        assert!(ok, "pid {pid} never answered the prober");
    }

    /// Stops, and fails the test if any connection was refused or failed.
    pub fn finish_refusing_none(self) {
        let (_, errors) = self.finish();
        assert_eq!(
            errors,
            Vec::<String>::new(),
            "refused or failed connections"
        );
    }

    /// Stops; returns (how many were answered, the errors).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        let answered = self.answers.lock().unwrap().len();
        (answered, errors)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Socket inodes among `pid`'s descriptors, with their fd numbers.
fn socket_inodes(pid: i64) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if t.starts_with("socket:") {
            let fd = e.file_name().to_string_lossy().parse().unwrap_or(-1);
            out.push((fd, t.into_owned()));
        }
    }
    out
}

#[test]
fn sockets_reach_an_sd_listen_fds_server_and_no_one_else() {
    let sb = Sandbox::new();
    let (port, uport) = (free_port(), free_port());
    let unix = sb.path("run/web.sock");
    sb.service("web", &server_body("v1"));
    sb.service("other", "exec sleep 1000");
    sb.config(
        json!({}),
        json!({"web": {"sockets": [
            {"listen": format!("127.0.0.1:{port}"), "name": "http"},
            {"listen": format!("unix:{}", unix.display()), "mode": "0660"},
            {"listen": format!("udp:127.0.0.1:{uport}"), "name": "dns"},
        ]}}),
    );
    let out = sb.cli(&["check"]);
    assert!(
        out.stdout
            .contains(&format!("socket: fd 3 127.0.0.1:{port} name http")),
        "{}",
        out.stdout
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    let other = sb.wait_running("other", None);

    // The server checked LISTEN_PID against its own pid, else it would have exited.
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {pid} http"));
    let s = UnixStream::connect(&unix).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), format!("v1 {pid} web"));
    let mode = std::fs::metadata(&unix).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(DEADLINE)).unwrap();
    u.send_to(b"ping", ("127.0.0.1", uport)).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = u.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("v1 {pid} dns\nping").as_bytes());

    // The service holds them at 3, 4, 5; the other service holds none of them.
    let held = socket_inodes(pid);
    let passed: Vec<&String> = held
        .iter()
        .filter(|(fd, _)| (3..6).contains(fd))
        .map(|(_, i)| i)
        .collect();
    assert_eq!(passed.len(), 3, "{held:?}");
    let others = socket_inodes(other);
    assert!(
        others.iter().all(|(_, i)| !passed.contains(&i)),
        "{others:?}"
    );
    let status = sb.service_status("web");
    assert_eq!(status["sockets"][0]["name"], "http");
    assert_eq!(status["sockets"][1]["name"], "web");
    drop(d);
}

#[test]
fn restarts_refuse_no_connection() {
    let sb = Sandbox::new();
    let port = free_port();
    sb.service("web", &server_body("v1"));
    sb.config(
        json!({}),
        json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{port}")}]}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let mut pid = sb.wait_running("web", None);
    assert!(ask_tcp(port).unwrap().starts_with("v1 "));
    let prober = Prober::start(port);
    prober.wait_answer_from(pid);
    for _ in 0..3 {
        let out = sb.cli(&["restart", "web"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        pid = sb.wait_running("web", Some(pid));
        // Served by the new run, through the same socket; connections made while no
        // run was there waited in the backlog.
        prober.wait_answer_from(pid);
    }
    let (answered, errors) = prober.finish();
    assert!(answered >= 4);
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "refused or failed connections"
    );
}

#[test]
fn a_socket_that_cannot_be_bound_fails_only_its_service() {
    let sb = Sandbox::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    sb.service("bad", &server_body("v1"));
    sb.service("good", "exec sleep 1000");
    sb.config(
        json!({"max_restart_attempts": 1}),
        json!({"bad": {"sockets": [{"listen": format!("127.0.0.1:{port}")}]}}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("good", None);
    let st = sb.wait_state("bad", "failed");
    assert!(st["pid"].is_null());
    // Each attempt says why; once they are used up, status says so.
    let bind = format!("cannot bind socket 127.0.0.1:{port}: Address already in use");
    d.wait_log(&["bad", &bind]);
    assert_eq!(st["history"].as_array().map(Vec::len), Some(2), "{st}");
    // Once the port is free, a start binds it.
    drop(taken);
    assert_eq!(sb.cli(&["start", "bad"]).code, 0);
    let pid = sb.wait_running("bad", None);
    assert!(ask_tcp(port).unwrap().starts_with(&format!("v1 {pid} ")));
}

#[test]
fn reload_keeps_unchanged_sockets_and_closes_changed_or_removed_ones() {
    let sb = Sandbox::new();
    let (a, b) = (free_port(), free_port());
    let unix = sb.path("run/gone.sock");
    sb.service("web", &server_body("v1"));
    sb.service("gone", &server_body("v1"));
    let services = |web_port: u16, with_gone: bool| {
        let mut s = json!({"web": {"sockets": [{"listen": format!("127.0.0.1:{web_port}")}]}});
        if with_gone {
            s["gone"] = json!({"sockets": [{"listen": format!("unix:{}", unix.display())}]});
        }
        s
    };
    sb.config(json!({"services_dir": "services"}), services(a, true));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    sb.wait_running("gone", None);
    let inode = |pid: i64| {
        socket_inodes(pid)
            .into_iter()
            .find(|(fd, _)| *fd == 3)
            .unwrap()
            .1
    };
    let first = inode(pid);

    // A reload that changes something else (the log level) keeps the socket.
    sb.config(
        json!({"services_dir": "services", "log_level": "debug"}),
        services(a, true),
    );
    assert_eq!(sb.cli(&["reload"]).code, 0);
    let pid2 = sb.wait_running("web", Some(pid));
    assert_eq!(inode(pid2), first, "an unchanged socket was re-bound");

    // New port: the old one is closed, the new one served; `gone` removed: its file too.
    std::fs::remove_dir_all(sb.path("services/gone")).unwrap();
    sb.config(
        json!({"services_dir": "services", "log_level": "debug", "run_unconfigured": false}),
        services(b, false),
    );
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pid3 = sb.wait_running("web", Some(pid2));
    assert!(wait_until(DEADLINE, || ask_tcp(b)
        .is_ok_and(|l| l.contains(&pid3.to_string()))));
    assert!(
        wait_until(DEADLINE, || TcpListener::bind(("127.0.0.1", a)).is_ok()),
        "old port still held"
    );
    assert!(
        wait_until(DEADLINE, || !Path::new(&unix).exists()),
        "removed service's socket file stays"
    );
    drop(d);
}

#[test]
fn an_unprivileged_service_serves_a_privileged_port() {
    if !crate::util::is_root() {
        eprintln!("skipped: binding a port below 1024 for another user needs root");
        return;
    }
    let Some(port) = (900..1024).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) else {
        eprintln!("skipped: no free port below 1024");
        return;
    };
    // The system's interpreter: the user's may sit in a home nobody else can enter.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(python) = python else {
        eprintln!("skipped: no system python3 another user can run");
        return;
    };
    let sb = Sandbox::new();
    // A copy in the sandbox: nobody may not reach the clone (a clone in a
    // private directory).
    let server = sb.path("listen_server.py");
    copy_executable(SERVER, &server);
    sb.service("web", &format!("exec {python} {} v1", server.display()));
    sb.config(
        json!({}),
        json!({"web": {"user": "nobody", "sockets": [{"listen": format!("127.0.0.1:{port}")}]}}),
    );
    sb.open_to_other_users();
    let _d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("web", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {pid} web"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
}

/// The other half of removal: a service a reload disables (`enabled: false`) lets its
/// sockets go too, and the daemon holds none of them any more; enabled again, it binds
/// them afresh and serves.
#[test]
fn reload_closes_the_sockets_of_a_disabled_service_and_binds_them_when_enabled() {
    let sb = Sandbox::new();
    let port = free_port();
    let unix = sb.path("run/off.sock");
    sb.service("off", &server_body("v1"));
    sb.service("stays", "exec sleep 1000");
    let services = |enabled: bool| {
        json!({"off": {"enabled": enabled, "sockets": [
            {"listen": format!("127.0.0.1:{port}")},
            {"listen": format!("unix:{}", unix.display())},
        ]}})
    };
    sb.config(json!({"services_dir": "services"}), services(true));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("off", None);
    let stays = sb.wait_running("stays", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {pid} off"));
    let passed: Vec<String> = socket_inodes(pid)
        .into_iter()
        .filter(|(fd, _)| (3..5).contains(fd))
        .map(|(_, i)| i)
        .collect();
    assert_eq!(passed.len(), 2);
    let daemon_holds = || {
        socket_inodes(i64::from(d.pid))
            .into_iter()
            .filter(|(_, i)| passed.contains(i))
            .count()
    };
    assert_eq!(daemon_holds(), 2, "the daemon keeps them between runs");

    sb.config(json!({"services_dir": "services"}), services(false));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    sb.wait_state("off", "stopped");
    assert!(wait_until(DEADLINE, || !alive(pid)));
    assert_eq!(daemon_holds(), 0, "a disabled service's sockets stay open");
    let refused = TcpStream::connect(("127.0.0.1", port))
        .err()
        .map(|e| e.kind());
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port held");
    assert!(!unix.exists(), "the socket file stays");
    // The rest untouched.
    assert_eq!(sb.service_status("stays")["pid"], stays);

    sb.config(json!({"services_dir": "services"}), services(true));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = sb.wait_running("off", None);
    assert_eq!(ask_tcp(port).unwrap(), format!("v1 {again} off"));
    assert!(unix.exists());
}
