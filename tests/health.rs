//! Health checks and dependency ordering with real fixture services: an HTTP server
//! that becomes healthy after a delay, a TCP listener, an exec check that flips, a
//! chain of three, and a hundred services probing every 100 ms.

use crate::util::*;
use serde_json::json;
use std::time::Duration;

fn python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 (the fixture HTTP/TCP servers) is not installed");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP server on $PORT answering 503 for `delay` seconds, then 200; it appends
/// `ready <ms>` to $STAMP when it first answers 200 (ms since the epoch).
const HTTPD: &str = r#"
import http.server, os, sys, time
start, delay, port = time.time(), float(sys.argv[1]), int(os.environ["PORT"])
stamp, said = os.environ.get("STAMP"), []
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.time() - start >= delay
        if ok and stamp and not said:
            said.append(1)
            open(stamp, "a").write("ready %s %d\n" % (os.environ["NAME"], time.time() * 1000))
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// A TCP listener on $PORT that starts listening after `delay` seconds.
const TCPD: &str = r#"
import os, socket, sys, time
time.sleep(float(sys.argv[1]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;

fn fixture(sb: &Sandbox, name: &str, text: &str) -> String {
    let p = sb.path(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn http_check_holds_starting_until_healthy() {
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let httpd = fixture(&sb, "httpd.py", HTTPD);
    let port = free_port();
    sb.service("web", &format!("exec python3 {httpd} 0.8"));
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {
            "environment": {"PORT": port.to_string()},
            "health_check": {"type": "http", "url": format!("http://127.0.0.1:{port}/healthz"),
                             "interval_ms": 100, "timeout_ms": 500},
        }}),
    );
    // Failures before the first pass are expected start-up news: debug, not warnings.
    let d = Daemon::start(&sb, &["--log-level", "debug"]);
    let pid = sb.wait_running("web", None).to_string();
    // It was starting, with a pid, before it was running.
    let started = d.wait_log(&["web[", "] started"]);
    let ready = d.wait_log(&["web[", "ready"]);
    let ms = |l: &str| l.split(' ').next().unwrap().to_string();
    assert!(ms(&ready) > ms(&started));
    assert!(
        d.count_log(&["web[", "health check failed"]) >= 1,
        "503s came first"
    );
    assert!(ready.contains(&pid));
}

#[test]
fn tcp_check_and_a_chain_of_three_start_in_order() {
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let httpd = fixture(&sb, "httpd.py", HTTPD);
    let tcpd = fixture(&sb, "tcpd.py", TCPD);
    let stamp = sb.path("stamps");
    let (p_db, p_api) = (free_port(), free_port());
    let log_start = |n: &str| {
        format!("python3 -c 'import time; open(\"{}\", \"a\").write(\"start {n} %d\\n\" % (time.time()*1000))'", stamp.display())
    };
    sb.service(
        "db",
        &format!("{}\nexec python3 {tcpd} 0.5", log_start("db")),
    );
    sb.service(
        "api",
        &format!("{}\nexec python3 {httpd} 0.3", log_start("api")),
    );
    sb.service("web", &format!("{}\nexec sleep 1000", log_start("web")));
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "db": {"environment": {"PORT": p_db.to_string()},
                   "health_check": {"type": "tcp", "address": format!("127.0.0.1:{p_db}"), "interval_ms": 100}},
            "api": {"depends_on": ["db"],
                    "environment": {"PORT": p_api.to_string(), "STAMP": stamp, "NAME": "api"},
                    "health_check": {"type": "http", "url": format!("http://127.0.0.1:{p_api}/"), "interval_ms": 100}},
            "web": {"depends_on": ["api"]},
        }),
    );
    let d = Daemon::start(&sb, &[]);
    // While db is not ready, api waits and says why.
    let api = sb.service_status("api");
    if api["state"] == "starting" && api["pid"].is_null() {
        assert!(
            api["last_error"]
                .as_str()
                .unwrap()
                .starts_with("waiting for db"),
            "{api}"
        );
    }
    sb.wait_running("web", None);
    let db_ready = d.wait_log(&["db[", "ready"]);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&stamp)
        .is_ok_and(|t| t.contains("start web"))));
    let text = std::fs::read_to_string(&stamp).unwrap();
    let t = |what: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no `{what}` in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (start_db, start_api, ready_api, start_web) = (
        t("start db"),
        t("start api"),
        t("ready api"),
        t("start web"),
    );
    assert!(
        start_db < start_api && start_api < ready_api && ready_api <= start_web,
        "{text}"
    );
    assert!(
        start_api >= start_db + 400,
        "api started before db listened:\n{text}\n{db_ready}"
    );
}

#[test]
fn exec_check_that_flips_restarts_the_service_with_the_reason() {
    let sb = Sandbox::new();
    let healthy = sb.path("healthy");
    sb.service("flip", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 100, "max_backoff_ms": 100}),
        json!({"flip": {"health_check": {"type": "exec", "command": ["test", "-f", healthy],
                                          "interval_ms": 50, "failure_threshold": 3}}}),
    );
    let d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || sb.service_status("flip")["pid"]
        .as_i64()
        .is_some()));
    std::thread::sleep(Duration::from_millis(300));
    let st = sb.service_status("flip");
    assert_eq!(st["state"], "starting", "not ready without the file: {st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{st}"
    );
    std::fs::write(&healthy, "").unwrap();
    let pid = sb.wait_running("flip", None);
    std::fs::remove_file(&healthy).unwrap();
    d.wait_log(&[
        "flip[",
        "health check failed 3 times in a row",
        "restarting",
    ]);
    let mut st = serde_json::Value::Null;
    assert!(wait_until(DEADLINE, || {
        st = sb.service_status("flip");
        st["pid"].as_i64().is_some_and(|p| p != pid)
    }));
    assert!(!alive(pid));
    assert_eq!(st["state"], "starting");
    assert_eq!(st["restarts"], 1);
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{st}"
    );
}

#[test]
fn exec_check_timeout_is_a_failure_and_kills_the_check() {
    let sb = Sandbox::new();
    let marker = sb.path("check-pids");
    sb.service("slowcheck", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"slowcheck": {"health_check": {"type": "exec",
            "command": ["sh", "-c", format!("echo $$ >> {}; exec sleep 100", marker.display())],
            "interval_ms": 50, "timeout_ms": 100}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let mut st = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            st = sb.service_status("slowcheck");
            st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out after 100 ms"))
        }),
        "{st}"
    );
    assert_eq!(st["state"], "starting");
    let pids: Vec<i64> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let first = pids[0];
    assert!(
        wait_until(Duration::from_secs(2), || !alive(first)),
        "the timed-out check was killed"
    );
}

#[test]
fn a_hundred_services_probing_every_100_ms_stay_bounded() {
    let sb = Sandbox::new();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepting = std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    drop(accepting);
    let mut services = serde_json::Map::new();
    for i in 0..100 {
        let name = format!("s{i:03}");
        sb.service(&name, "exec sleep 1000");
        services.insert(
            name,
            json!({"health_check": {"type": "tcp", "address": addr, "interval_ms": 100, "timeout_ms": 500}}),
        );
    }
    sb.config(
        json!({"services_dir": "services"}),
        serde_json::Value::Object(services),
    );
    let d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || sb
        .status()
        .iter()
        .filter(|s| s["state"] == "running")
        .count()
        == 100));
    // The loop answers promptly while 1000 probes a second go on.
    for _ in 0..10 {
        let t = std::time::Instant::now();
        assert_eq!(sb.cli(&["status", "s050"]).code, 0);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid))
        .unwrap()
        .count();
    // Three per service (waiter, two readers), at most one check thread in flight per
    // service (each tcp/http check has a short-lived thread of its own, so that a hung
    // check delays only its service), and the fixed few.
    assert!(
        threads <= 4 * 100 + 16,
        "{threads} threads for 100 services"
    );
}

#[test]
fn reload_that_drops_a_check_makes_a_starting_service_running() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    let never =
        json!({"svc": {"health_check": {"type": "exec", "command": ["false"], "interval_ms": 50}}});
    sb.config(json!({"services_dir": "services"}), never);
    let _d = Daemon::start(&sb, &[]);
    assert!(wait_until(DEADLINE, || sb.service_status("svc")["pid"]
        .as_i64()
        .is_some()));
    let pid = sb.service_status("svc")["pid"].as_i64().unwrap();
    assert_eq!(sb.service_status("svc")["state"], "starting");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let out = sb.cli(&["reload"]);
    assert!(out.stdout.contains("svc: update"), "{}", out.stdout);
    let st = sb.wait_state("svc", "running");
    assert_eq!(st["pid"], pid, "applied in place, same process");
}

/// An HTTP server on $PORT that answers each request as the file $MODE says at that
/// moment: `301` or `302` a redirect, `garbage` a first line that is no status line,
/// `hang` nothing at all (the connection stays open), `200` success.
const MODAL: &str = r#"
import os, socket, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
answers = {
    "301": b"HTTP/1.1 301 Moved Permanently\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "302": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "garbage": b"FOO 200 OK\r\n\r\n",
    "200": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
}
def serve(c):
    c.recv(4096)
    mode = open(os.environ["MODE"]).read().strip()
    if mode == "hang":
        time.sleep(5)
    else:
        c.sendall(answers[mode])
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn http_check_fails_redirects_and_non_http_answers_and_names_its_timeout() {
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let server = fixture(&sb, "modal.py", MODAL);
    let mode = sb.path("mode");
    std::fs::write(&mode, "301").unwrap();
    let port = free_port();
    sb.service("web", &format!("exec python3 {server}"));
    let url = format!("http://127.0.0.1:{port}/healthz");
    sb.config(
        json!({}),
        json!({"web": {
            "environment": {"PORT": port.to_string(), "MODE": mode.display().to_string()},
            "health_check": {"type": "http", "url": url, "interval_ms": 100,
                             "timeout_ms": 300, "failure_threshold": 1000},
        }}),
    );
    let _d = Daemon::start(&sb, &[]);
    let expect = |error: &str| {
        let mut last = serde_json::Value::Null;
        let seen = wait_until(DEADLINE, || {
            last = sb.service_status("web");
            last["last_error"]
                .as_str()
                .is_some_and(|e| e.ends_with(error))
        });
        assert!(seen, "never {error:?}: {last}");
        assert_eq!(last["state"], "starting", "{last}");
    };
    // Every answer below fails the check: the service never becomes ready.
    expect(&format!("GET {url}: status 301"));
    std::fs::write(&mode, "302").unwrap();
    expect(&format!("GET {url}: status 302"));
    std::fs::write(&mode, "garbage").unwrap();
    expect(&format!(
        "GET {url}: not an HTTP answer (no `HTTP/1.x NNN` status line)"
    ));
    std::fs::write(&mode, "hang").unwrap();
    expect(&format!("GET {url}: timed out after 300 ms"));
    // The other half: a 200 passes.
    std::fs::write(&mode, "200").unwrap();
    sb.wait_running("web", None);
    assert_eq!(
        sb.service_status("web")["last_error"],
        serde_json::Value::Null
    );
}
