//! Real daemons nobody here wrote (BusyBox applets through their symlinks, redis-server
//! through Debian's symlink, nginx with its workers), installed from Debian packages
//! when missing. Each must serve a real client, log its own lines tagged with its name
//! and pid, come back serving after `kill -9`, and leave no process after `stop`.

use crate::util::packages;
use crate::util::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Sends `request` to 127.0.0.1:`port` and returns the whole answer, if any came.
fn exchange(port: u16, request: &[u8]) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the server closes or pauses: redis keeps the connection open.
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if request.starts_with(b"*") && buf.ends_with(b"\r\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An HTTP/1.0 GET, written by hand; the answer's head and body.
fn http_get(port: u16, path: &str) -> Option<String> {
    exchange(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// Live processes of service `name`: those in process group `pgid`, and those in the
/// service's cgroup (which also holds any that left the group).
fn service_processes(sb: &Sandbox, name: &str, pgid: i64) -> Vec<i64> {
    let cgroup = format!("/{}/{name}\n", cgroup_id(&sb.socket()));
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        let Some(stat) = proc_stat(pid) else { continue };
        if stat[2] == "Z" {
            continue;
        }
        let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.contains(&cgroup));
        if stat[4] == pgid.to_string() || in_cgroup {
            out.push(pid);
        }
    }
    out
}

/// A symlink `sb/bin/APPLET` -> BusyBox, as BusyBox installs its applets.
fn applet(sb: &Sandbox, busybox: &Path, name: &str) -> PathBuf {
    let dir = sb.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(name);
    std::os::unix::fs::symlink(busybox, &link).unwrap();
    link
}

/// The checks every daemon gets, on a daemon whose service `name` is starting:
/// - `serves` answers (a real client request);
/// - a line of its own with `own` in it is logged as `name[pid]`;
/// - after `kill -9` of its main process nothing of that run is left (its workers would
///   hold its port), and it runs again under a new pid, serves again and logs as
///   `name[newpid]`;
/// - `stop` leaves none of the processes either run had.
fn exercise(sb: &Sandbox, d: &Daemon, name: &str, own: &str, serves: impl Fn() -> bool) {
    let pid = sb.wait_running(name, None);
    assert!(
        wait_until(DEADLINE, &serves),
        "{name} does not serve; log:\n{}",
        d.log_text()
    );
    d.wait_log(&[&format!(" {name}[{pid}] "), own]);
    let mut seen = service_processes(sb, name, pid);
    assert!(
        seen.contains(&pid),
        "{name}: main pid {pid} not among {seen:?}"
    );

    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let again = sb.wait_running(name, Some(pid));
    let mut left = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            left = seen.iter().copied().filter(|p| alive(*p)).collect();
            left.is_empty()
        }),
        "{name}: left of the killed run: {left:?}"
    );
    assert!(
        wait_until(DEADLINE, &serves),
        "{name} does not serve after kill -9; log:\n{}",
        d.log_text()
    );
    d.wait_log(&[&format!(" {name}[{again}] "), own]);
    seen.extend(service_processes(sb, name, again));

    let out = sb.cli(&["stop", name]);
    assert_eq!(out.code, 0, "stop {name}: {}", out.stderr);
    sb.wait_state(name, "stopped");
    let left: Vec<i64> = seen.into_iter().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "{name}: processes left after stop: {left:?}"
    );
    for pgid in [pid, again] {
        let left = service_processes(sb, name, pgid);
        assert!(
            left.is_empty(),
            "{name}: processes left after stop: {left:?}"
        );
    }
}

/// docs/lifecycle.md without any package: a symlink to `cat` (discovered in
/// `services_dir`, and as a relative `binary_path`) prints its own /proc/self/cmdline,
/// whose first entry is argv[0]: the path as configured, not /usr/bin/cat. (A shell script
/// cannot show this: the kernel hands the interpreter the path it resolved, not argv[0].)
#[test]
fn symlinked_binary_gets_its_configured_path_as_argv0() {
    let sb = Sandbox::new();
    let cat = Path::new("/bin/cat");
    std::fs::create_dir_all(sb.path("services/found")).unwrap();
    std::os::unix::fs::symlink(cat, sb.path("services/found/found")).unwrap();
    std::fs::create_dir_all(sb.path("bin")).unwrap();
    std::os::unix::fs::symlink(cat, sb.path("bin/named")).unwrap();
    let svc = json!({"args": ["/proc/self/cmdline"], "pass_service_args": false,
                     "restart": "never"});
    let mut named = svc.clone();
    named["binary_path"] = json!("bin/named");
    sb.config(json!({}), json!({"found": svc, "named": named}));
    let d = Daemon::start(&sb, &[]);
    for (name, argv0) in [
        ("found", sb.path("services/found/found")),
        ("named", sb.path("bin/named")),
    ] {
        let line = d.wait_log(&[&format!(" {name}["), "/proc/self/cmdline"]);
        assert!(
            line.contains(&format!("stdout: {}", argv0.display())),
            "{name}: argv[0] is not {}: {line}",
            argv0.display()
        );
    }
}

/// BusyBox httpd through an `httpd` symlink: BusyBox picks the applet from argv[0], so
/// this fails (`httpd: applet not found` as `busybox -f ...`) when argv[0] is the
/// resolved path.
#[test]
fn busybox_httpd_through_its_symlink_serves_restarts_and_stops_clean() {
    packages::with("busybox-static", "/bin/busybox", |busybox| {
        let sb = Sandbox::new();
        let www = sb.path("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "served by busybox httpd\n").unwrap();
        let port = free_port();
        sb.config(
            json!({}),
            json!({"httpd": {
                "binary_path": applet(&sb, &busybox, "httpd"),
                "args": ["-f", "-vv", "-p", format!("127.0.0.1:{port}"), "-h", www],
                "pass_service_args": false,
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        // -vv logs each request on stderr: the request below makes the line.
        exercise(&sb, &d, "httpd", "url:/index.html", || {
            http_get(port, "/index.html").is_some_and(|r| {
                r.starts_with("HTTP/1.") && r.contains(" 200 ") && r.contains("served by busybox")
            })
        });
    });
}

/// BusyBox syslogd through a `syslogd` symlink, in the foreground (-n), writing what
/// it receives on /dev/log to its stdout (-O -). It owns /dev/log while it runs, so the
/// test skips on a box where a system logger has it.
#[test]
fn busybox_syslogd_through_its_symlink_logs_what_it_receives() {
    packages::with("busybox-static", "/bin/busybox", |busybox| {
        let dev_log = Path::new("/dev/log");
        if std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(dev_log))
            .is_ok()
        {
            eprintln!("skipped: a system logger already listens on /dev/log");
            return;
        }
        let sb = Sandbox::new();
        sb.config(
            json!({}),
            json!({"syslogd": {
                "binary_path": applet(&sb, &busybox, "syslogd"),
                "args": ["-n", "-O", "-"],
                "pass_service_args": false,
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        let marker = format!("daemons-test-{}", std::process::id());
        let serves = || {
            // A fresh message each time, so a later check never passes on an old line.
            let n = fastrand::u32(..);
            let sent = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.send_to(format!("<14>{marker}: hello {n}").as_bytes(), dev_log))
                .is_ok();
            sent && wait_until(Duration::from_millis(500), || {
                d.count_log(&[" syslogd[", &format!("{marker}: hello {n}")]) > 0
            })
        };
        exercise(&sb, &d, "syslogd", "syslogd started: BusyBox", serves);
        drop(d);
        // Nobody listens on it any more: leave no stale socket behind.
        let _ = std::fs::remove_file(dev_log);
    });
}

/// BusyBox crond through a `crond` symlink, in the foreground (-f), logging to stderr.
/// "Serving" here is reading its crontab and scheduling the job: it logs the parsed
/// schedule (a row of 60 ones for `* * * * *`). Running the job would need the next
/// minute boundary, too slow for this suite; and `@reboot`, which would run at once,
/// crashes Debian's BusyBox 1.35 crond (a NULL dereference while parsing it).
#[test]
fn busybox_crond_through_its_symlink_loads_its_crontab() {
    packages::with("busybox-static", "/bin/busybox", |busybox| {
        let sb = Sandbox::new();
        let tabs = sb.path("crontabs");
        std::fs::create_dir_all(&tabs).unwrap();
        let out = sb.path("cron.out");
        std::fs::write(
            tabs.join("root"),
            format!("* * * * * echo ran >> {}\n", out.display()),
        )
        .unwrap();
        sb.config(
            json!({}),
            json!({"crond": {
                "binary_path": applet(&sb, &busybox, "crond"),
                "args": ["-f", "-l", "5", "-L", "/dev/stderr", "-c", tabs],
                "pass_service_args": false,
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        let every_minute = "1".repeat(60);
        let serves = || {
            let pid = sb.service_status("crond")["pid"].as_i64().unwrap_or(0);
            d.count_log(&[&format!(" crond[{pid}] "), &every_minute]) > 0
        };
        exercise(&sb, &d, "crond", "crond (busybox", serves);
    });
}

/// redis-server as Debian installs it: /usr/bin/redis-server is a symlink to
/// redis-check-rdb, which runs the RDB checker (usage, exit 1) unless argv[0] says
/// redis-server. Checked with a raw RESP PING over TCP.
#[test]
fn redis_server_through_debians_symlink_answers_ping() {
    packages::with("redis-server", "/usr/bin/redis-server", |redis| {
        let sb = Sandbox::new();
        let port = free_port();
        sb.config(
            json!({}),
            json!({"redis": {
                "binary_path": redis,
                "args": ["--port", port.to_string(), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--daemonize", "no",
                         "--logfile", "", "--dir", sb.path("")],
                "pass_service_args": false,
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        let serves = || exchange(port, b"*1\r\n$4\r\nPING\r\n").is_some_and(|r| r == "+PONG\r\n");
        exercise(&sb, &d, "redis", "Ready to accept connections", serves);
        // redis starts each of its lines with its own pid: `1234:M ... Ready to accept`.
        let first = d.wait_log(&[" redis[", "Ready to accept connections"]);
        let tagged = first
            .split_once(" redis[")
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(p, _)| p.to_string())
            .unwrap();
        assert!(
            first.contains(&format!("] stdout: {tagged}:M ")),
            "the tag's pid is redis's own: {first}"
        );
    });
}

/// nginx's config for the tests: in the foreground (`daemon off;` or, for the pid_file
/// test, `daemon on;` with `pid`), a master and two workers, everything under `sb`.
fn nginx_conf(sb: &Sandbox, port: u16, foreground: bool) -> PathBuf {
    let root = sb.path("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "served by nginx\n").unwrap();
    let tmp = sb.path("nginx-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let t = tmp.display();
    let conf = sb.path("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon {daemon};
master_process on;
worker_processes 2;
pid {pid};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log /dev/stderr;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
",
            daemon = if foreground { "off" } else { "on" },
            pid = sb.path("nginx.pid").display(),
            root = root.display(),
        ),
    )
    .unwrap();
    conf
}

/// nginx forks two workers; the master's own notices (`PID#PID: start worker process`)
/// are tagged with its pid, and kill -9 of the master takes its workers with it so the
/// next master can bind the port again.
#[test]
fn nginx_with_workers_serves_restarts_and_stops_clean() {
    packages::with("nginx", "/usr/sbin/nginx", |nginx| {
        let sb = Sandbox::new();
        let port = free_port();
        let conf = nginx_conf(&sb, port, true);
        sb.config(
            json!({}),
            json!({"nginx": {
                "binary_path": nginx,
                "args": ["-c", conf, "-e", "stderr"],
                "pass_service_args": false,
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        let pid = sb.wait_running("nginx", None);
        assert!(
            wait_until(DEADLINE, || service_processes(&sb, "nginx", pid).len() >= 3),
            "nginx never had its master and two workers"
        );
        let serves = || {
            http_get(port, "/index.html")
                .is_some_and(|r| r.contains(" 200 ") && r.contains("served by nginx"))
        };
        exercise(&sb, &d, "nginx", "start worker process", serves);
        // The master's notices name its own pid: the tag and the text agree.
        let line = d.wait_log(&[" nginx[", "start worker process"]);
        let tagged = line
            .split_once(" nginx[")
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(p, _)| p.to_string())
            .unwrap();
        assert!(line.contains(&format!("{tagged}#{tagged}: ")), "{line}");
    });
}

/// An old-style daemon that forks itself: nginx with `daemon on;` writes its master's
/// pid to a file and the process the orchestrator started exits 0. With `pid_file`,
/// the master is the service's main process: status shows its pid, kill -9 of it is an
/// exit that restarts the service, stop leaves nothing.
#[test]
fn nginx_daemonizing_itself_is_followed_through_pid_file() {
    packages::with("nginx", "/usr/sbin/nginx", |nginx| {
        let sb = Sandbox::new();
        let port = free_port();
        let conf = nginx_conf(&sb, port, false);
        sb.config(
            json!({}),
            json!({"nginx": {
                "binary_path": nginx,
                "args": ["-c", conf, "-e", "stderr"],
                "pass_service_args": false,
                "pid_file": "nginx.pid",
            }}),
        );
        let d = Daemon::start(&sb, &[]);
        let from_file = || {
            std::fs::read_to_string(sb.path("nginx.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
        };
        let serves = || {
            http_get(port, "/index.html")
                .is_some_and(|r| r.contains(" 200 ") && r.contains("served by nginx"))
        };
        let pid = sb.wait_running("nginx", None);
        assert_eq!(
            Some(pid),
            from_file(),
            "the daemonized master is the main pid"
        );
        assert!(
            wait_until(DEADLINE, serves),
            "nginx does not serve; log:\n{}",
            d.log_text()
        );
        // A worker's access line, written after the hand-over, carries the main pid.
        d.wait_log(&[&format!(" nginx[{pid}] "), "GET /index.html"]);

        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let again = sb.wait_running("nginx", Some(pid));
        assert!(wait_until(DEADLINE, || from_file() == Some(again)));
        assert!(wait_until(DEADLINE, serves), "no service after kill -9");

        let mut seen = service_processes(&sb, "nginx", again);
        seen.push(pid);
        let out = sb.cli(&["stop", "nginx"]);
        assert_eq!(out.code, 0, "stop nginx: {}", out.stderr);
        sb.wait_state("nginx", "stopped");
        let left: Vec<i64> = seen.into_iter().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "processes left after stop: {left:?}");
        assert!(service_processes(&sb, "nginx", again).is_empty());
    });
}
