//! Output: every line becomes one record with service, pid and stream; levels; long
//! lines split; garbage replaced; nothing lost or reordered; the in-memory ring.

use crate::util::*;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn lines_become_records_with_levels_in_text_format() {
    let sb = Sandbox::new();
    sb.service(
        "talker",
        r#"echo "hello out"
echo "hello err" >&2
echo '{"level":"error","msg":"structured"}'
printf 'no newline at the end'
exec sleep 1000 >/dev/null 2>&1"#,
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("talker", None);
    let out = d.wait_log(&["talker[", "stdout: hello out"]);
    // `2026-11-27T05:53:17.123Z INFO  echo[1234] stdout: hello`
    let (ts, rest) = out.split_once(' ').unwrap();
    assert_eq!(ts.len(), 24, "{out}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{out}");
    assert_eq!(rest, format!("INFO  talker[{pid}] stdout: hello out"));
    assert!(d
        .wait_log(&["stderr: hello err"])
        .contains(&format!(" WARN  talker[{pid}] stderr")));
    assert!(d.wait_log(&["structured"]).contains(" ERROR talker"));
    // The child exec'd sleep with its output elsewhere: the pipes closed, so the last
    // unterminated line was flushed.
    d.wait_log(&["stdout: no newline at the end"]);
}

#[test]
fn json_format_records_and_events() {
    let sb = Sandbox::new();
    sb.service("j", "echo 'tab\there \"quoted\"'; exit 3");
    sb.config(
        json!({"services_dir": "services", "log_format": "json"}),
        json!({"j": {"restart": "never"}}),
    );
    let d = Daemon::start(&sb, &[]);
    sb.wait_state("j", "failed");
    let line = d.wait_log(&["\"stream\":\"stdout\""]);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["service"], "j");
    assert_eq!(v["level"], "info");
    assert_eq!(v["msg"], "tab\there \"quoted\"");
    assert!(v["pid"].as_i64().unwrap() > 0);
    assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    let ev = d.wait_log(&["\"event\":\"exited\""]);
    let v: Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(v["service"], "j");
    assert_eq!(v["level"], "warn");
    // Every line the daemon wrote is a JSON object.
    for l in d.log_lines() {
        assert!(serde_json::from_str::<Value>(&l).is_ok(), "not JSON: {l}");
    }
}

#[test]
fn huge_line_is_split_into_marked_chunks() {
    let sb = Sandbox::new();
    // A 10 MiB line, then a short one.
    sb.service(
        "big",
        "head -c 10485760 /dev/zero | tr '\\0' 'a'; echo; echo after; exec sleep 1000",
    );
    sb.config(
        json!({"services_dir": "services", "max_line_bytes": 65536}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["stdout: after"]);
    let lines = d.log_lines();
    let chunks: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("stdout: aaaa"))
        .collect();
    assert_eq!(chunks.len(), 160, "10 MiB / 64 KiB");
    let payload = |l: &str| l.split_once("stdout: ").unwrap().1.to_string();
    for c in &chunks[..159] {
        assert!(c.ends_with(" [...]"));
        assert_eq!(payload(c).trim_end_matches(" [...]").len(), 65536);
    }
    assert!(!chunks[159].ends_with(" [...]"));
    assert_eq!(payload(chunks[159]).len(), 65536);
    // The daemon stayed small while doing it.
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.pid))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    assert!(rss_kb < 64 * 1024, "peak RSS {rss_kb} kB");
}

#[test]
fn binary_garbage_is_replaced_not_fatal() {
    let sb = Sandbox::new();
    sb.service(
        "garbage",
        "head -c 65536 /dev/urandom; printf '\\nok \\377\\376 end\\n'; exec sleep 1000",
    );
    sb.config(
        json!({"services_dir": "services", "log_format": "json"}),
        json!({}),
    );
    let d = Daemon::start(&sb, &[]);
    let line = d.wait_log(&["ok \u{fffd}\u{fffd} end"]);
    assert!(serde_json::from_str::<Value>(&line).is_ok());
    assert_eq!(sb.service_status("garbage")["state"], "running");
}

#[test]
fn a_hundred_thousand_fast_lines_arrive_complete_and_in_order() {
    let sb = Sandbox::new();
    sb.service("fast", "seq 1 100000; seq 1 50000 >&2; exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let d = Daemon::start(&sb, &[]);
    d.wait_log(&["stdout: 100000"]);
    d.wait_log(&["stderr: 50000"]);
    let lines = d.log_lines();
    let nums = |stream: &str| -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| l.split_once(&format!("] {stream}: "))?.1.parse().ok())
            .collect()
    };
    assert_eq!(nums("stdout"), (1..=100_000).collect::<Vec<u64>>());
    assert_eq!(nums("stderr"), (1..=50_000).collect::<Vec<u64>>());
    // The ring keeps the last 1000 of them for `logs`, each stream in order and
    // complete up to its last line. (Which stream's last batch came in last is up to
    // the scheduler: they are two pipes.)
    let out = sb.cli(&["logs", "fast", "-n", "5000"]);
    assert_eq!(out.code, 0);
    let ring: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ring.len(), 1000);
    for (stream, last) in [("stdout", 100_000), ("stderr", 50_000)] {
        let got: Vec<u64> = ring
            .iter()
            .filter_map(|l| l.split_once(&format!("] {stream}: "))?.1.parse().ok())
            .collect();
        let first = last + 1 - got.len() as u64;
        assert_eq!(got, (first..=last).collect::<Vec<u64>>(), "{stream}");
    }
    let last = ring[999];
    assert!(
        last.ends_with("stdout: 100000") || last.ends_with("stderr: 50000"),
        "{last}"
    );
    let out = sb.cli(&["logs", "fast", "-n", "3"]);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ring[997..]);
}

#[test]
fn writer_is_slowed_not_dropped_when_the_log_is_blocked() {
    // The daemon's stderr is a pipe nobody reads for a while; the service writes far
    // more than the pipe holds. Control keeps answering, and once the pipe is read again
    // every line arrives.
    let sb = Sandbox::new();
    sb.service("flood", "seq 1 30000; exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let mut cmd = std::process::Command::new(BIN);
    let (read_end, write_end) = nix_pipe();
    cmd.args(["run", "--config"])
        .arg(sb.path("orchestrator.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(write_end);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let _guard = KillOnDrop(child.id() as i32, sb.dir.clone());
    // Control works while the log is stuck.
    assert!(wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0));
    std::thread::sleep(Duration::from_millis(300));
    let st = sb.service_status("flood");
    assert_eq!(st["state"], "running");
    // Now drain: every line is there, in order.
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let r = std::io::BufReader::new(read_end);
        let mut nums = Vec::new();
        for l in r.lines() {
            let Ok(l) = l else { break };
            if let Some(n) = l
                .split_once("stdout: ")
                .and_then(|(_, n)| n.parse::<u64>().ok())
            {
                nums.push(n);
                if n == 30000 {
                    break;
                }
            }
        }
        nums
    });
    let nums = reader.join().unwrap();
    assert_eq!(nums, (1..=30000).collect::<Vec<u64>>());
    let _ = child.kill();
    let _ = child.wait();
}

fn nix_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

struct KillOnDrop(i32, std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.1);
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

/// docs/logs.md: a last line without a newline is logged when the service exits, whole and
/// after its earlier lines, in the ring `logs` reads and in the service's log file.
#[test]
fn a_last_line_without_newline_is_kept_when_the_service_exits() {
    let sb = Sandbox::new();
    sb.service("quitter", "echo first; printf 'last words'; exit 3");
    sb.config(
        json!({"services_dir": "services", "log_dir": "logs"}),
        json!({"quitter": {"restart": "never"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_state("quitter", "failed");
    let (mut ring, mut file) = (String::new(), String::new());
    assert!(
        wait_until(DEADLINE, || {
            ring = sb.cli(&["logs", "quitter"]).stdout;
            file = std::fs::read_to_string(sb.path("logs/quitter.log")).unwrap_or_default();
            ring.contains("last words") && file.contains("last words")
        }),
        "logs:\n{ring}\nlog file:\n{file}"
    );
    for (what, text) in [("logs", &ring), ("log file", &file)] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" stdout: ")).collect();
        assert_eq!(lines.len(), 2, "{what}:\n{text}");
        assert!(lines[0].ends_with("stdout: first"), "{what}:\n{text}");
        assert!(lines[1].ends_with("stdout: last words"), "{what}:\n{text}");
    }
}
