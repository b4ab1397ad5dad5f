//! `log_forward` against a real collector (docs/logs.md): rsyslog from the distribution,
//! run unprivileged in the sandbox with its own configuration, receiving over TCP and a
//! unix socket and writing what it parsed (APP-NAME, PROCID, MSGID, severity, the
//! reported time) to a file. And a collector that never reads, to see that the daemon's
//! memory stays within the buffer and that SIGUSR1 reconnects.

use crate::util::*;
use serde_json::json;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// An rsyslogd of the test's own: TCP on `port` (0: any, read back), a unix socket, and
/// `out.log` with one `app|procid|msgid|severity|time|msg` line per message.
struct Collector {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// One message as the collector parsed it.
#[derive(Debug, Clone)]
struct Got {
    app: String,
    procid: String,
    msgid: String,
    severity: u8,
    time: String,
    msg: String,
}

impl Collector {
    fn start(bin: &Path, dir: &Path, port: u16) -> Collector {
        std::fs::create_dir_all(dir).unwrap();
        let port_file = dir.join("tcp.port");
        let _ = std::fs::remove_file(&port_file);
        let conf = format!(
            r#"global(workDirectory="{d}")
main_queue(queue.workerThreads="1")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imtcp" port="{port}" listenPortFileName="{d}/tcp.port")
input(type="imuxsock" Socket="{d}/log.sock")
template(name="t" type="string" string="%app-name%|%procid%|%msgid%|%syslogseverity%|%timereported:::date-rfc3339%|%msg%\n")
action(type="omfile" file="{d}/out.log" template="t")
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let mut c = Collector {
            child: Some(child),
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            port,
        };
        // The port file is written only for a port rsyslog chose.
        let up = wait_until(DEADLINE, || {
            if port == 0 {
                let p = std::fs::read_to_string(&port_file).unwrap_or_default();
                c.port = p.trim().parse().unwrap_or(0);
            }
            c.port != 0
                && dir.join("log.sock").exists()
                && std::net::TcpStream::connect(("127.0.0.1", c.port)).is_ok()
        });
        assert!(up, "rsyslogd did not come up in {}", dir.display());
        c
    }

    fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("log.sock")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Started again on the same port, appending to the same file.
    fn restart(&mut self) {
        self.stop();
        let again = Collector::start(&self.bin.clone(), &self.dir.clone(), self.port);
        *self = again;
    }

    fn got(&self) -> Vec<Got> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(6, '|').collect();
                (f.len() == 6).then(|| Got {
                    app: f[0].into(),
                    procid: f[1].into(),
                    msgid: f[2].into(),
                    severity: f[3].parse().unwrap_or(99),
                    time: f[4].into(),
                    // rsyslog keeps the space that separates the header.
                    msg: f[5].strip_prefix(' ').unwrap_or(f[5]).into(),
                })
            })
            .collect()
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&Got) -> bool) -> Vec<Got> {
        let ok = wait_until(DEADLINE, || self.got().iter().any(&cond));
        let got = self.got();
        assert!(
            ok,
            "collector never got {what}; it has {} messages, last: {:?}",
            got.len(),
            got.last()
        );
        got
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The numbers of `prefix N` lines from `app`, in the order they arrived.
fn numbered(got: &[Got], app: &str, prefix: &str) -> Vec<u64> {
    got.iter()
        .filter(|g| g.app == app)
        .filter_map(|g| g.msg.strip_prefix(prefix)?.parse().ok())
        .collect()
}

fn dropped(sb: &Sandbox, name: &str) -> u64 {
    sb.service_status(name)["log_forward_dropped"]
        .as_u64()
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A service that, for each of `rounds`, waits for `goN` in the sandbox, writes that
/// many numbered lines as fast as it can, says `doneN`, and writes `end of round N` in
/// a line at level warn (the daemon's log shows it once its writer has taken every line
/// before it: the same stream, so the same order); then stays.
fn burst_on_go(sb: &Sandbox, name: &str, rounds: &[u32], prefix: &str) {
    let mut body = String::new();
    for (n, lines) in (1..).zip(rounds) {
        let go = sb.path(&format!("go{n}"));
        let done = sb.path(&format!("done{n}"));
        body += &format!(
            "while [ ! -e {go} ]; do sleep 0.02; done\nseq 1 {lines} | sed 's/^/{prefix}/'\ntouch {done}\necho '{{\"level\":\"warn\",\"msg\":\"end of round {n}\"}}'\n",
            go = go.display(),
            done = done.display()
        );
    }
    sb.service(name, &(body + "exec sleep 1000"));
}

#[test]
fn a_burst_arrives_whole_and_in_order_over_tcp_with_its_service_and_pid() {
    packages::with("rsyslog", RSYSLOGD, |bin| {
        let sb = Sandbox::new();
        let collector = Collector::start(&bin, &sb.path("collector"), 0);
        sb.service(
            "burst",
            "seq 1 100000 | sed 's/^/burst line /'\nexec sleep 1000",
        );
        sb.service("quiet", "echo not for the collector\nexec sleep 1000");
        sb.config(
            // Room for the whole burst: a collector slower than the service for a
            // moment must not cost a line here.
            json!({"services_dir": "services", "log_level": "warn",
                   "log_forward": {"address": collector.address(), "buffer_bytes": 32 << 20}}),
            json!({"quiet": {"log_forward": false}}),
        );
        let _d = Daemon::start(&sb, &[]);
        let pid = sb.wait_running("burst", None).to_string();
        let got = collector.wait_for("the burst's last line", |g| {
            g.app == "burst" && g.msg == "burst line 100000"
        });
        let lines: Vec<&Got> = got
            .iter()
            .filter(|g| g.app == "burst" && g.msgid == "stdout")
            .collect();
        let numbers = numbered(&got, "burst", "burst line ");
        assert_eq!(numbers.len(), 100_000, "every line exactly once");
        let first_wrong = numbers
            .iter()
            .enumerate()
            .position(|(i, n)| *n != i as u64 + 1);
        assert!(
            first_wrong.is_none(),
            "in order: {:?}",
            first_wrong.map(|i| &numbers[i.saturating_sub(3)..i + 3])
        );
        for g in &lines {
            assert_eq!(g.procid, pid, "{g:?}");
            assert_eq!(g.severity, 6, "{g:?}");
        }
        // The time is the one sent (UTC, milliseconds), parsed; rsyslog's own time of
        // receipt would be written `+00:00` with microseconds.
        let t = &lines[0].time;
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.starts_with("20"),
            "{t}"
        );
        // Lifecycle records carry their kind.
        assert!(
            got.iter().any(|g| g.app == "burst" && g.msgid == "started"),
            "{:?}",
            &got[..3]
        );
        assert!(!got
            .iter()
            .any(|g| g.app == "quiet" || g.msg.contains("not for the collector")));
        assert_eq!(dropped(&sb, "burst"), 0);
    });
}

#[test]
fn a_collector_away_costs_the_oldest_lines_counted_and_blocks_nobody() {
    packages::with("rsyslog", RSYSLOGD, |bin| {
        let sb = Sandbox::new();
        let mut collector = Collector::start(&bin, &sb.path("collector"), 0);
        let total = 200_000u64;
        burst_on_go(&sb, "outage", &[total as u32], "outage line ");
        sb.config(
            json!({"services_dir": "services", "log_level": "warn",
                   "log_forward": {"address": collector.address(), "buffer_bytes": 100_000}}),
            json!({}),
        );
        let d = Daemon::start(&sb, &[]);
        collector.wait_for("the start", |g| g.app == "outage" && g.msgid == "started");
        collector.stop();
        // The whole burst (some 4 MB) is written while nothing takes it.
        std::fs::write(sb.path("go1"), "").unwrap();
        assert!(
            wait_until(DEADLINE, || sb.path("done1").exists()),
            "the service waited for the collector"
        );
        d.wait_log(&["end of round 1"]);
        collector.restart();
        let got = collector.wait_for("the record of the drops", |g| {
            g.app == "orchestrator" && g.msg.contains("dropped while the collector was away")
        });
        let lost = dropped(&sb, "outage");
        let numbers = numbered(&got, "outage", "outage line ");
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "in order, each once"
        );
        assert_eq!(numbers.last(), Some(&total), "the newest lines are kept");
        // The closing line too: it may be kept or dropped like the others.
        let others = got
            .iter()
            .filter(|g| g.app == "outage" && g.msgid == "stdout")
            .count()
            - numbers.len();
        assert_eq!(
            (numbers.len() + others) as u64 + lost,
            total + 1,
            "every line arrived or was counted"
        );
        // What waited: the buffer, and what the forwarder held when the collector went
        // (some 2,400 lines).
        assert!(numbers.len() <= 3000, "{} arrived", numbers.len());
        let metrics = sb.cli(&["metrics"]).stdout;
        let series = format!(
            "orchestrator_log_forward_dropped_total{{service=\"outage\",target=\"{}\"}} {lost}",
            collector.address()
        );
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    });
}

#[test]
fn a_collector_that_never_reads_costs_the_buffer_and_sigusr1_reconnects() {
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // Accepts and holds every connection, reading nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let rounds = [300_000, 900_000];
    burst_on_go(
        &sb,
        "stalled",
        &rounds,
        "a line padded to some sixty bytes, number ",
    );
    sb.config(
        json!({"services_dir": "services", "log_level": "warn",
               "log_forward": {"address": address, "buffer_bytes": 1_048_576}}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_running("stalled", None);
    assert!(wait_until(DEADLINE, || accepted.load(Ordering::SeqCst) == 1));
    // Some 18 MB, then 54 MB, for a collector that takes none of it: the first fills
    // the buffer and the log path's own (its queue of batches varies by some MB with
    // the timing); the second must not grow the daemon by what it sends.
    let (mut rss, mut lost) = (Vec::new(), Vec::new());
    for round in 1..=2u64 {
        std::fs::write(sb.path(&format!("go{round}")), "").unwrap();
        assert!(
            wait_until(DEADLINE, || sb.path(&format!("done{round}")).exists()),
            "the service waited for the collector"
        );
        d.wait_log(&[&format!("end of round {round}")]);
        rss.push(rss_kib(d.pid));
        lost.push(dropped(&sb, "stalled"));
    }
    // With the buffer full, every new line costs an old one.
    assert!(lost[1] - lost[0] >= u64::from(rounds[1]), "{lost:?}");
    assert!(
        rss[1] < rss[0] + 16 * 1024,
        "the daemon grew from {} KiB to {} KiB with its 1 MiB buffer full",
        rss[0],
        rss[1]
    );
    // The forwarder, blocked writing, lets go and connects again.
    d.signal(libc::SIGUSR1);
    assert!(
        wait_until(DEADLINE, || accepted.load(Ordering::SeqCst) == 2),
        "no new connection after SIGUSR1; log:\n{}",
        d.log_text()
    );
}

#[test]
fn a_daemon_without_log_dir_logs_to_the_local_syslog() {
    packages::with("rsyslog", RSYSLOGD, |bin| {
        let sb = Sandbox::new();
        let collector = Collector::start(&bin, &sb.path("collector"), 0);
        // A line below the log level stays out of the daemon's log, so out of syslog.
        sb.service(
            "local",
            "echo '{\"level\":\"debug\",\"msg\":\"below the log level\"}'\necho kept local but logged\nexec sleep 1000",
        );
        sb.config(
            json!({"services_dir": "services"}),
            json!({"local": {"log_forward": false}}),
        );
        let pidfile = sb.path("orchestrator.pid");
        let _d = start_detached_with_dev_log(&sb, &pidfile, &collector.socket());
        let pid = sb.wait_running("local", None).to_string();
        let got = collector.wait_for("the service's line", |g| {
            g.app == "local" && g.msg == "kept local but logged"
        });
        let line = got
            .iter()
            .find(|g| g.msg == "kept local but logged")
            .unwrap();
        assert_eq!(line.procid, pid);
        assert!(!got.iter().any(|g| g.msg.contains("below the log level")));
        assert!(got
            .iter()
            .any(|g| g.app == "orchestrator" && g.msg.contains("started")));
    });
}

#[test]
fn a_daemon_without_log_dir_or_local_syslog_logs_to_its_targets() {
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    sb.service("remote", "echo sent to the target\nexec sleep 1000");
    sb.config(
        json!({"services_dir": "services", "log_forward": {"address": address}}),
        json!({}),
    );
    let pidfile = sb.path("orchestrator.pid");
    let d = start_detached_with_dev_log(&sb, &pidfile, Path::new("/nonexistent/log"));
    let mut conn = None;
    assert!(
        wait_until(DEADLINE, || {
            conn = listener.accept().ok().map(|(s, _)| s);
            conn.is_some()
        }),
        "the daemon never connected to its target"
    );
    let mut conn = conn.unwrap();
    conn.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    // Reads what has come; true at the end of the stream.
    let mut read = |got: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(&mut conn, &mut buf) {
            Ok(0) => true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                false
            }
            Err(_) => false,
        }
    };
    let arrived = wait_until(DEADLINE, || {
        read(&mut got);
        let text = String::from_utf8_lossy(&got);
        text.contains("sent to the target") && text.contains(" orchestrator ")
    });
    assert!(arrived, "got: {}", String::from_utf8_lossy(&got));
    // What the daemon says as it exits is sent before it goes.
    unsafe { libc::kill(d.pid, libc::SIGTERM) };
    assert!(
        wait_until(DEADLINE, || !d.alive()),
        "the daemon did not stop"
    );
    assert!(
        wait_until(DEADLINE, || read(&mut got)),
        "the stream never ended"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("all services stopped: exiting"),
        "got: {text}"
    );
}

#[test]
fn what_waits_for_a_slow_collector_is_sent_before_the_daemon_exits() {
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let lines = 150_000u32;
    burst_on_go(&sb, "tail", &[lines], "tail line ");
    sb.config(
        json!({"services_dir": "services", "log_level": "warn",
               "log_forward": {"address": address, "buffer_bytes": 32 << 20}}),
        json!({}),
    );
    let mut d = Daemon::start(&sb, &[]);
    sb.wait_running("tail", None);
    let (mut conn, _) = listener.accept().unwrap();
    // Some 9 MB, more than the sockets hold: most waits in the target's buffer.
    std::fs::write(sb.path("go1"), "").unwrap();
    d.wait_log(&["end of round 1"]);
    d.signal(libc::SIGTERM);
    // Read slowly (at most 64 KiB a millisecond): what the sockets do not hold arrives
    // only if the daemon waits for it as it exits.
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = std::io::Read::read(&mut conn, &mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    let text = String::from_utf8_lossy(&got);
    let last = format!("tail line {lines}");
    assert!(
        text.contains(&last),
        "{last} missing; {} bytes arrived",
        got.len()
    );
}
