//! Observability: log files with rotation and caps, write failures counted, binary
//! identity, metrics over HTTP, and /proc figures against a child of known size.

use crate::util::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The numbers logged by `svc` (`... stdout: N`) across NAME.log.K .. NAME.log, oldest
/// file first.
fn numbers_in_files(dir: &Path, svc: &str) -> (Vec<u64>, usize) {
    // Files rotate while we read: retry until one listing reads through.
    for _ in 0..100 {
        if let Some(v) = try_numbers_in_files(dir, svc) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("log files of {svc} never settled (a line split across files, or one ending mid-line)");
}

fn try_numbers_in_files(dir: &Path, svc: &str) -> Option<(Vec<u64>, usize)> {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = if name == format!("{svc}.log") {
                0
            } else {
                name.strip_prefix(&format!("{svc}.log."))?.parse().ok()?
            };
            Some((n, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut nums = Vec::new();
    for (_, f) in &files {
        let text = std::fs::read_to_string(f).ok()?;
        // A reader may catch a large write half done; a line split for good never
        // settles, and the caller gives up on it.
        if !text.is_empty() && !text.ends_with('\n') {
            return None;
        }
        // Lifecycle records (started, exited...) stand among the service's lines.
        for line in text.lines().filter(|l| !is_event(l)) {
            let n = line
                .split_once("] stdout: ")
                .unwrap_or_else(|| panic!("not a whole record: {line:?}"))
                .1;
            nums.push(n.parse().unwrap());
        }
    }
    Some((nums, files.len()))
}

/// A lifecycle record of the orchestrator's, not a line of the service's output.
fn is_event(line: &str) -> bool {
    !line.contains("] stdout: ") && !line.contains("] stderr: ")
}

/// The numbers logged by `svc` once its files have settled: the last line is `last`
/// and two reads in a row agree (no write or rotation is under way any more).
fn settled(dir: &Path, svc: &str, last: u64) -> (Vec<u64>, usize) {
    let mut prev: Option<(Vec<u64>, usize)> = None;
    let mut done = None;
    let ok = wait_until(DEADLINE, || {
        let now = numbers_in_files(dir, svc);
        let stable = now.0.last() == Some(&last) && prev.as_ref() == Some(&now);
        if stable {
            done = Some(now.clone());
        }
        prev = Some(now);
        stable
    });
    assert!(ok, "the log files of {svc} never settled on line {last}");
    done.unwrap_or_default()
}

/// Asserts `nums` is exactly `first..=last`, naming the first difference.
fn assert_run(nums: &[u64], first: u64, last: u64) {
    let expected = last + 1 - first;
    if let Some(i) = (0..nums.len()).find(|&i| nums[i] != first + i as u64) {
        panic!(
            "position {i}: found {} where {} belongs ({} lines)",
            nums[i],
            first + i as u64,
            nums.len()
        );
    }
    assert_eq!(
        nums.len() as u64,
        expected,
        "{} lines where {expected} belong",
        nums.len()
    );
}

#[test]
fn rotation_under_fast_output_keeps_every_line_once_in_order() {
    let sb = Sandbox::new();
    sb.service("fast", "seq 1 50000; exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 65536, "log_max_files": 100, "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let logs = sb.path("logs");
    let got = settled(&logs, "fast", 50000);
    assert_run(&got.0, 1, 50000);
    assert!(got.1 > 20, "rotated into {} files", got.1);
    for e in std::fs::read_dir(&logs).unwrap().flatten() {
        assert!(e.metadata().unwrap().len() <= 65536, "{:?}", e.path());
    }
}

#[test]
fn only_log_max_files_are_kept_with_the_newest_lines() {
    let sb = Sandbox::new();
    sb.service("fast", "seq 1 20000; exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 16384, "log_max_files": 2, "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let logs = sb.path("logs");
    let got = settled(&logs, "fast", 20000);
    assert_eq!(got.1, 3, "fast.log, fast.log.1, fast.log.2");
    let n = got.0.len() as u64;
    assert_run(&got.0, 20001 - n, 20000);
}

#[test]
fn total_cap_bounds_all_services_files_together() {
    let sb = Sandbox::new();
    for s in ["a", "b", "c"] {
        sb.service(s, "seq 1 30000; exec sleep 1000");
    }
    let cap = 200 * 1024;
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 32768, "log_max_files": 50,
               "log_max_total_bytes": cap, "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let logs = sb.path("logs");
    for s in ["a", "b", "c"] {
        settled(&logs, s, 30000);
    }
    let total: u64 = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= cap, "{total} > {cap}");
    // No more than needed went: with log_max_files never reached, only the cap deletes,
    // and its last deletion (one file, at most log_max_bytes) took the total just under
    // the cap, which only grew from there.
    assert!(
        total > cap - 32768,
        "{total}: deleted more than the cap asks"
    );
    // Each service keeps a contiguous run of its newest lines (a service that finished
    // early may keep only its active file: its rotated ones were the oldest).
    for s in ["a", "b", "c"] {
        let nums = numbers_in_files(&logs, s).0;
        let n = nums.len() as u64;
        assert!(n > 0);
        assert_run(&nums, 30001 - n, 30000);
    }
}

/// The other half of the cap: files that fit under it are all kept. Each rotation drops
/// the oldest file; a running total that forgot those bytes grew past the cap and
/// deleted logs that still fit.
#[test]
fn total_cap_keeps_every_file_that_fits_after_many_rotations() {
    let sb = Sandbox::new();
    for s in ["a", "b"] {
        sb.service(s, "seq 1 3000; exec sleep 1000");
    }
    // Each service keeps at most its active file and two rotated ones, each at most
    // max_bytes: 6 files of 2000 bytes fit under the cap exactly.
    let (max_bytes, cap) = (2000u64, 12_000u64);
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": max_bytes,
               "log_max_files": 2, "log_max_total_bytes": cap, "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let logs = sb.path("logs");
    for s in ["a", "b"] {
        let (nums, files) = settled(&logs, s, 3000);
        assert_eq!(files, 3, "{s}: {s}.log, {s}.log.1, {s}.log.2");
        let n = nums.len() as u64;
        // Some 50 rotations each: only the newest lines are left, in one run.
        assert!(n < 200, "{s}: {n} lines: never rotated");
        assert_run(&nums, 3001 - n, 3000);
    }
    let mut names = Vec::new();
    let mut total = 0;
    for e in std::fs::read_dir(&logs).unwrap().flatten() {
        let len = e.metadata().unwrap().len();
        let name = e.file_name().to_string_lossy().into_owned();
        // The rotated files were full: a line more would have passed max_bytes.
        if name.contains(".log.") {
            assert!(len > max_bytes - 100, "{name}: {len} bytes");
        }
        total += len;
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        ["a.log", "a.log.1", "a.log.2", "b.log", "b.log.1", "b.log.2"]
    );
    assert!(total <= cap, "{total} > {cap}");
}

/// Start and reload: a cap a reload sets applies to the files already there and to
/// what comes next.
#[test]
fn a_total_cap_set_by_reload_applies_to_the_next_lines() {
    let sb = Sandbox::new();
    let more = sb.path("more");
    sb.service(
        "talk",
        &format!(
            "seq 1 1000; while [ ! -e {} ]; do sleep 0.05; done; seq 1001 2000; exec sleep 1000",
            more.display()
        ),
    );
    let settings = |cap: Option<u64>| {
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 2000,
               "log_max_files": 2, "log_max_total_bytes": cap, "log_level": "error"})
    };
    sb.config(settings(None), json!({}));
    let _d = Daemon::start(&sb, &[]);
    let logs = sb.path("logs");
    let total = || -> u64 {
        std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    assert_eq!(settled(&logs, "talk", 1000).1, 3);
    // Two full rotated files alone pass this cap.
    let cap = 3500;
    assert!(total() > cap, "{}", total());

    sb.config(settings(Some(cap)), json!({}));
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::write(&more, "").unwrap();
    let (nums, _) = settled(&logs, "talk", 2000);
    let n = nums.len() as u64;
    assert_run(&nums, 2001 - n, 2000);
    assert!(total() <= cap, "{} > {cap}", total());
}

#[test]
fn unwritable_log_dir_is_counted_and_survived() {
    let sb = Sandbox::new();
    sb.service("talk", "seq 1 100; exec sleep 1000");
    std::fs::write(sb.path("notadir"), "x").unwrap();
    sb.config(
        json!({"services_dir": "services", "log_dir": "notadir"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["talk[", "stdout: 100"]);
    // The 100 lines and the `started` record the file would have held.
    let mut st = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            st = sb.service_status("talk");
            st["log_lines_unwritten"] == 101
        }),
        "{st}"
    );
    assert_eq!(st["state"], "running");
    let m = sb.cli(&["metrics"]).stdout;
    assert!(
        m.contains("orchestrator_log_lines_unwritten_total{service=\"talk\"} 101"),
        "{m}"
    );
}

#[test]
fn full_disk_is_counted_and_survived() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let sb = Sandbox::new();
    let logs = sb.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&logs)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(logs.clone());
    sb.service("big", "seq 1 20000; exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs", "log_max_bytes": 10485760, "log_level": "error"}),
        json!({}),
    );
    let _d = Daemon::start(&sb, &[]);
    let mut st = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            st = sb.service_status("big");
            let written = numbers_in_files(&logs, "big").0.len() as u64;
            let lost = st["log_lines_unwritten"].as_u64().unwrap_or(0);
            lost > 0 && written + lost == 20000
        }),
        "{st}"
    );
    assert_eq!(st["state"], "running");
}

#[test]
fn status_shows_the_binary_identity() {
    let sb = Sandbox::new();
    let bin = sb.service("idsvc", "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("idsvc", None);
    let st = sb.service_status("idsvc");
    let out = std::process::Command::new("sha256sum")
        .arg(&bin)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(st["binary"]["sha256"], expected);
    assert_eq!(st["binary"]["path"], bin.to_str().unwrap());
    assert_eq!(st["binary"]["size"], std::fs::metadata(&bin).unwrap().len());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        st["binary"]["mtime"],
        std::fs::metadata(&bin).unwrap().mtime()
    );
    // A new version of the file gets a new hash.
    sb.service("idsvc", "exec sleep 999");
    let st2 = sb.service_status("idsvc");
    assert_ne!(st2["binary"]["sha256"], st["binary"]["sha256"]);
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// A strict reading of the text exposition format: every sample belongs to a family
/// announced by HELP and TYPE, counters end in _total, values parse, labels are quoted.
fn check_exposition(text: &str) -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(["counter", "gauge"].contains(&kind));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            types.insert(name.to_string(), kind.to_string());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "sample before TYPE: {line}");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!v.trim_end_matches('"').contains('\n'));
                }
            }
        }
    }
    types
}

#[test]
fn metrics_endpoint_serves_valid_exposition() {
    let sb = Sandbox::new();
    sb.service("web", "echo hi; exec sleep 1000");
    sb.service("down", "exit 0");
    sb.config(
        json!({"services_dir": "services", "metrics_listen": "127.0.0.1:0"}),
        json!({"down": {"restart": "never"}}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("web", None);
    sb.wait_state("down", "stopped");
    // Counted by its reader before the sink writes it: once logged, it is counted.
    d.wait_log(&["web[", "stdout: hi"]);
    let line = d.wait_log(&["metrics on http://"]);
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();
    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4\r\n")
            || head.ends_with("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let types = check_exposition(&body);
    for fam in [
        "orchestrator_service_up",
        "orchestrator_service_restarts_total",
        "orchestrator_service_state",
        "orchestrator_service_uptime_seconds",
        "orchestrator_service_memory_rss_bytes",
        "orchestrator_service_cpu_seconds_total",
        "orchestrator_log_lines_total",
    ] {
        assert!(types.contains_key(fam), "{fam} missing");
        for svc in ["web", "down"] {
            assert!(
                body.contains(&format!("{fam}{{service=\"{svc}\"")),
                "{fam} lacks {svc}"
            );
        }
    }
    assert!(body.contains("orchestrator_service_up{service=\"web\"} 1"));
    assert!(body.contains("orchestrator_service_up{service=\"down\"} 0"));
    assert!(body.contains("orchestrator_log_lines_total{service=\"web\",stream=\"stdout\"} 1"));
    let (head, _) = http_get(&addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // The CLI gives the same families.
    check_exposition(&sb.cli(&["metrics"]).stdout);
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours),
/// so that one test can be several peers.
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("{to}: not IPv4");
    };
    let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own, with valid addresses.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = addr(from, 0);
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = addr(to.ip().octets(), to.port());
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0
        );
        stream
    }
}

/// Whether the server closed `s` (end of file or a reset), without waiting.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = s.read(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn idle_connections_never_starve_metrics_scrapes() {
    let sb = Sandbox::new();
    sb.service("web", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "metrics_listen": "127.0.0.1:0"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    let line = d.wait_log(&["metrics on http://"]);
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    // One peer opening 16 connections and sending nothing keeps its 4 newest: each new
    // one beyond that closes its own oldest idle one.
    let mut one_peer: Vec<_> = (0..16)
        .map(|_| connect_from([127, 0, 0, 2], addr))
        .collect();
    let mut state = Vec::new();
    let settled = wait_until(DEADLINE, || {
        state = one_peer.iter_mut().map(closed_by_server).collect();
        state[..12].iter().all(|&c| c)
    });
    assert!(settled, "closed by the server: {state:?}");
    assert!(
        state[12..].iter().all(|&c| !c),
        "the newest stay: {state:?}"
    );
    // Sixteen more idle connections from four other peers (4 each): every slot is
    // taken by an idle connection, now and after each scrape.
    let _others: Vec<_> = (3..7u8)
        .flat_map(|p| (0..4).map(move |_| connect_from([127, 0, 0, p], addr)))
        .collect();
    // Each real scrape still gets its answer, evicting the oldest idle connection.
    for i in 0..20 {
        let (head, body) = http_get(&addr.to_string(), "/metrics");
        assert!(head.starts_with("HTTP/1.1 200"), "scrape {i}: {head}");
        assert!(body.contains("orchestrator_service_up{service=\"web\"}"));
    }
    drop(one_peer);
}

/// A peer at its limit of idle connections makes room among its own: another peer's
/// idle connections, older than all of them, stay open.
#[test]
fn a_peer_at_its_limit_evicts_only_its_own_idle_connections() {
    let sb = Sandbox::new();
    sb.service("web", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "metrics_listen": "127.0.0.1:0"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    let line = d.wait_log(&["metrics on http://"]);
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let mut b: Vec<_> = (0..4).map(|_| connect_from([127, 0, 0, 3], addr)).collect();
    let mut a: Vec<_> = (0..16)
        .map(|_| connect_from([127, 0, 0, 2], addr))
        .collect();
    let mut state = Vec::new();
    let settled = wait_until(DEADLINE, || {
        state = a.iter_mut().map(closed_by_server).collect();
        state[..12].iter().all(|&c| c)
    });
    let b_state: Vec<_> = b.iter_mut().map(closed_by_server).collect();
    assert!(
        settled,
        "A's closed by the server: {state:?}; B's: {b_state:?}"
    );
    assert!(
        state[12..].iter().all(|&c| !c),
        "A's newest stay: {state:?}"
    );
    assert!(b_state.iter().all(|&c| !c), "B's stay: {b_state:?}");
    // B's are still served.
    for s in &mut b {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
}

#[test]
fn log_line_counts_are_kept_per_stream() {
    let sb = Sandbox::new();
    // 3 lines on stdout and 5 on stderr, the last without a newline (read at exit).
    sb.service(
        "mixed",
        "echo o1; echo o2; echo o3\n\
         for i in 1 2 3 4; do echo e$i >&2; done; printf e5 >&2\n\
         exec sleep 1000",
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("mixed", None);
    d.wait_log(&["mixed[", "stderr: e4"]);
    let value = |stream: &str| -> Option<u64> {
        let series =
            format!("orchestrator_log_lines_total{{service=\"mixed\",stream=\"{stream}\"}} ");
        sb.cli(&["metrics"])
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
    };
    // Lines are counted when read, before they are logged.
    let mut last = (None, None);
    let counted = wait_until(DEADLINE, || {
        last = (value("stdout"), value("stderr"));
        last == (Some(3), Some(4))
    });
    assert!(counted, "stdout and stderr lines: {last:?}");
    // The last stderr line, without its newline, is counted once the service ends.
    assert_eq!(sb.cli(&["stop", "mixed"]).code, 0);
    let counted = wait_until(DEADLINE, || {
        last = (value("stdout"), value("stderr"));
        last == (Some(3), Some(5))
    });
    assert!(counted, "after the stop: {last:?}");
}

#[test]
fn rss_and_cpu_come_from_proc_for_the_whole_service() {
    let sb = Sandbox::new();
    // dd fills a 48 MiB buffer, then blocks writing it into a pipe nobody reads: a child
    // in the service's group with a known resident size.
    sb.service(
        "mem",
        "dd if=/dev/zero bs=48M count=1 2>/dev/null | sleep 1000",
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("mem", None);
    let mut st = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            st = sb.service_status("mem");
            st["rss_bytes"].as_u64().unwrap_or(0) >= 48 << 20
        }),
        "{st}"
    );
    assert!(st["rss_bytes"].as_u64().unwrap() < 80 << 20, "{st}");
    assert!(st["cpu_seconds"].as_f64().unwrap() >= 0.0);
    let m = sb.cli(&["metrics"]).stdout;
    let rss: u64 = m
        .lines()
        .find(|l| l.starts_with("orchestrator_service_memory_rss_bytes{service=\"mem\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(rss >= 48 << 20);
}
