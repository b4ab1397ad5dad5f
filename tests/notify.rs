//! sd_notify against real peers: `systemd-notify` (READY, STATUS), redis-server with
//! `--supervised systemd`, a fixture that stops sending keep-alives, a process of
//! another service (and one of no service) claiming readiness, and a flood of datagrams,
//! lasting as long as the measurement needs, while other services must stay on time.

use crate::util::*;
use serde_json::{json, Value};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `program` is on PATH; otherwise the test is skipped (or failed where
/// packages are required) naming the Debian package that has it.
fn have(program: &str, package: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        crate::util::packages::missing(&format!(
            "{program} is missing: install the Debian package {package}"
        ));
    }
    ok
}

fn python() -> bool {
    have("python3", "python3")
}

fn notify_socket(sb: &Sandbox) -> std::path::PathBuf {
    let mut p = sb.socket().into_os_string();
    p.push(".notify");
    p.into()
}

/// Waits until `name`'s status satisfies `cond`; returns it.
fn wait_status(sb: &Sandbox, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = sb.service_status(name);
        cond(&last)
    });
    assert!(ok, "{name}: never {what}; last status: {last}");
    last
}

fn metric(sb: &Sandbox, line_start: &str) -> u64 {
    let out = sb.cli(&["metrics"]);
    out.stdout
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in metrics: {}", out.stdout))
}

#[test]
fn systemd_notify_sends_status_then_ready() {
    if !have("systemd-notify", "systemd") {
        return;
    }
    let sb = Sandbox::new();
    let go = sb.path("go");
    sb.service(
        "web",
        &format!(
            "systemd-notify --status='warming up'\n\
             while [ ! -e {go} ]; do sleep 0.02; done\n\
             systemd-notify --ready --status=serving\n\
             exec sleep 1000",
            go = go.display()
        ),
    );
    sb.config(json!({}), json!({"web": {"ready": "notify"}}));
    let _d = Daemon::start(&sb, &[]);
    let s = wait_status(&sb, "web", "warming up", |s| {
        s["notify_status"] == "warming up"
    });
    assert_eq!(s["state"], "starting", "STATUS alone is not READY: {s}");
    // It stays starting however long READY=1 takes.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sb.service_status("web")["state"], "starting");
    std::fs::write(&go, "").unwrap();
    let s = wait_status(&sb, "web", "running", |s| s["state"] == "running");
    assert_eq!(s["notify_status"], "serving");
    let table = sb.cli(&["status"]).stdout;
    let row = table.lines().find(|l| l.starts_with("web")).unwrap_or("");
    assert!(row.contains("serving"), "INFO shows STATUS: {table}");
}

#[test]
fn redis_supervised_by_systemd_protocol_is_ready_when_it_accepts() {
    if !have("redis-server", "redis-server") {
        return;
    }
    let sb = Sandbox::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Through a script: redis-server is a multi-call binary that needs its own name
    // as argv[0].
    sb.service(
        "redis",
        &format!(
            "exec redis-server --port {port} --bind 127.0.0.1 --supervised systemd \\
             --save '' --appendonly no --dir {}",
            sb.dir.display()
        ),
    );
    sb.config(
        json!({}),
        json!({"redis": {"pass_service_args": false, "ready": "notify"}}),
    );
    let _d = Daemon::start(&sb, &[]);
    wait_status(&sb, "redis", "running", |s| s["state"] == "running");
    // Ready means it accepts: PING answers at once.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"PING\r\n").unwrap();
    let mut b = [0u8; 7];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"+PONG\r\n");
}

/// Sends WATCHDOG=1 every 100 ms `$BEATS` times, then hangs; writes its environment's
/// watchdog variables and its pid to $OUT first, and the time of its last keep-alive
/// (ms since the epoch) to $OUT.last.
const HEART: &str = r#"
import os, socket, time
with open(os.environ["OUT"], "a") as f:
    f.write("%s %s %s %d\n" % (os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"),
                               os.environ.get("WATCHDOG_PID"), os.getpid()))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in range(int(os.environ["BEATS"])):
    if i:
        time.sleep(0.1)
    s.sendto(b"WATCHDOG=1", os.environ["NOTIFY_SOCKET"])
with open(os.environ["OUT"] + ".last", "a") as f:
    f.write("%d\n" % (time.time() * 1000))
time.sleep(1000)
"#;

#[test]
fn a_service_that_stops_its_keep_alives_is_restarted() {
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let heart = sb.path("heart.py");
    std::fs::write(&heart, HEART).unwrap();
    let out = sb.path("env.txt");
    sb.service("hb", &format!("exec python3 {}", heart.display()));
    sb.config(
        json!({}),
        json!({"hb": {"watchdog_ms": 1000,
                      "environment": {"BEATS": "15", "OUT": out.display().to_string(),
                                      "WATCHDOG_PID": "1"}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let first = sb.wait_running("hb", None);
    let s = wait_status(&sb, "hb", "restarted", |s| {
        s["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(
        s["last_error"], "watchdog timeout (no keep-alive in 1000 ms)",
        "{s}"
    );
    // The first run ended about watchdog_ms after its last keep-alive, not before:
    // fifteen beats 100 ms apart kept it alive.
    let last: u64 = std::fs::read_to_string(sb.path("env.txt.last"))
        .expect("the first run stopped sending keep-alives")
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap();
    let ended = s["history"][0]["exited"].as_u64().unwrap();
    assert!(
        ended >= last + 950 && ended < last + 5000,
        "ended {} ms after the last keep-alive",
        ended as i64 - last as i64
    );
    sb.wait_running("hb", Some(first));
    let env = std::fs::read_to_string(&out).unwrap();
    let f: Vec<&str> = env.lines().next().unwrap().split(' ').collect();
    assert_eq!(f[0], notify_socket(&sb).display().to_string());
    assert_eq!(f[1], "1000000");
    assert_eq!(f[2], f[3], "WATCHDOG_PID is the service's own pid: {env}");
    assert_eq!(f[3], first.to_string());
}

#[test]
fn watchdog_trigger_restarts_at_once() {
    if !have("systemd-notify", "systemd") {
        return;
    }
    let sb = Sandbox::new();
    let runs = sb.path("runs");
    sb.service(
        "t",
        &format!(
            "echo run >> {runs}\n[ $(wc -l < {runs}) -gt 1 ] || systemd-notify WATCHDOG=trigger\nexec sleep 1000",
            runs = runs.display()
        ),
    );
    sb.config(json!({}), json!({"t": {"watchdog_ms": 60000}}));
    let _d = Daemon::start(&sb, &[]);
    let s = wait_status(&sb, "t", "restarted", |s| {
        s["restarts"] == 1 && s["state"] == "running"
    });
    assert_eq!(
        s["last_error"],
        "watchdog triggered by the service (WATCHDOG=trigger)"
    );
}

/// Sends what $MSG says to $TARGET, then writes $DONE.
const CLAIM: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(os.environ["MSG"].encode(), os.environ["TARGET"])
open(os.environ["DONE"], "w").close()
time.sleep(1000)
"#;

#[test]
fn another_services_process_claiming_readiness_is_ignored() {
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let claim = sb.path("claim.py");
    std::fs::write(&claim, CLAIM).unwrap();
    sb.service("victim", "exec sleep 1000");
    sb.service("other", &format!("exec python3 {}", claim.display()));
    let target = notify_socket(&sb);
    sb.config(
        json!({}),
        json!({
            "victim": {"ready": "notify"},
            "other": {"enabled": false},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    let victim = wait_status(&sb, "victim", "started", |s| s["pid"].as_i64().is_some());
    let pid = victim["pid"].as_i64().unwrap();
    let done = sb.path("done");
    sb.config(
        json!({}),
        json!({
            "victim": {"ready": "notify"},
            "other": {"environment": {
                "TARGET": target.display().to_string(),
                "DONE": done.display().to_string(),
                "MSG": format!("READY=1\nSTATUS=hijacked\nMAINPID={pid}"),
            }},
        }),
    );
    assert_eq!(sb.cli(&["reload"]).code, 0);
    // A process of no service sends the same.
    let rejected_before = metric(&sb, "orchestrator_notify_rejected_total");
    let me = UnixDatagram::unbound().unwrap();
    me.send_to(b"READY=1\nSTATUS=outsider", &target).unwrap();
    assert!(wait_until(DEADLINE, || done.exists()));
    // Attributed to its sender: "other" shows the status, the victim nothing.
    wait_status(&sb, "other", "got its status", |s| {
        s["notify_status"] == "hijacked"
    });
    assert!(wait_until(DEADLINE, || metric(
        &sb,
        "orchestrator_notify_rejected_total"
    ) > rejected_before));
    let v = sb.service_status("victim");
    assert_eq!(v["state"], "starting", "{v}");
    assert_eq!(v["notify_status"], Value::Null, "{v}");
    assert_eq!(v["pid"].as_i64(), Some(pid));
}

/// Sends datagrams as fast as the socket takes them, from when $GO exists until $STOP
/// exists (looked at every 1000 datagrams), at most $COUNT of them and for at most
/// $SECONDS: the flood lasts as long as the test measures through it, and no longer
/// than the bound if the test never says stop. Writes the time it began (ms since the
/// epoch) to $STARTED, ends with `STATUS=done` and writes how many it sent to $DONE.
const FLOOD: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
target = os.environ["NOTIFY_SOCKET"]
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.01)
s.sendto(b"WATCHDOG=1", target)
with open(os.environ["STARTED"] + ".tmp", "w") as f:
    f.write("%d\n" % (time.time() * 1000))
os.rename(os.environ["STARTED"] + ".tmp", os.environ["STARTED"])
end = time.monotonic() + float(os.environ["SECONDS"])
stop = os.environ["STOP"]
i = 1
while i < int(os.environ["COUNT"]):
    s.sendto(b"WATCHDOG=1\nSTATUS=%d" % i if i % 2 else b"WATCHDOG=1", target)
    i += 1
    if i % 1000 == 0 and (os.path.exists(stop) or time.monotonic() > end):
        break
s.sendto(b"STATUS=done", target)
with open(os.environ["DONE"] + ".tmp", "w") as f:
    f.write("%d\n" % (i + 1))
os.rename(os.environ["DONE"] + ".tmp", os.environ["DONE"])
time.sleep(1000)
"#;

/// The checks of another service that ran at or after `since` (ms since the epoch).
fn stamps_since(path: &std::path::Path, since: u64) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&t| t >= since)
        .collect()
}

#[test]
fn a_flood_of_datagrams_delays_neither_the_loop_nor_other_services() {
    if !python() || !have("systemd-notify", "systemd") {
        return;
    }
    let sb = Sandbox::new();
    let flood = sb.path("flood.py");
    std::fs::write(&flood, FLOOD).unwrap();
    let (done, go, stamps) = (sb.path("done"), sb.path("go"), sb.path("stamps"));
    let (started, stop) = (sb.path("started"), sb.path("stop"));
    sb.service("flood", &format!("exec python3 {}", flood.display()));
    sb.service(
        "steady",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.01; done\nsystemd-notify --ready\nexec sleep 1000",
            go = go.display()
        ),
    );
    sb.service("pinger", "exec sleep 1000");
    let path = |p: &std::path::Path| p.display().to_string();
    sb.config(
        json!({}),
        json!({
            "flood": {"watchdog_ms": 60000,
                      "environment": {"COUNT": "5000000", "SECONDS": "30",
                                      "GO": path(&go), "STOP": path(&stop),
                                      "STARTED": path(&started), "DONE": path(&done)}},
            "steady": {"ready": "notify"},
            "pinger": {"health_check": {"type": "exec", "interval_ms": 100,
                "command": ["sh", "-c", format!("date +%s%3N >> {}", stamps.display())]}},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("pinger", None);
    sb.wait_running("flood", None);
    // Mid-flood: status answers quickly, another service's READY=1 gets through, and
    // the other service's checks keep their rhythm. The flood goes on until a dozen
    // checks ran during it, however slow the machine: a loop held up by the flood
    // shows as a long gap between them, never as a flood that ended too soon.
    std::fs::write(&go, "").unwrap();
    let sent = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut steady_ready = None;
    let mut began = None;
    while !done.exists() {
        let t = Instant::now();
        let all = sb.status();
        slowest = slowest.max(t.elapsed());
        let steady = all.iter().find(|s| s["name"] == "steady").cloned();
        if steady_ready.is_none() && steady.is_some_and(|s| s["state"] == "running") {
            steady_ready = Some(sent.elapsed());
        }
        let pinger = all
            .iter()
            .find(|s| s["name"] == "pinger")
            .cloned()
            .unwrap_or_default();
        assert_eq!(pinger["state"], "running", "{pinger}");
        if began.is_none() {
            began = std::fs::read_to_string(&started)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
        }
        let during = began.map_or(0, |b| stamps_since(&stamps, b).len());
        if steady_ready.is_some() && during >= 12 && !stop.exists() {
            std::fs::write(&stop, "").unwrap();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "flood never ended"
        );
    }
    let count = std::fs::read_to_string(&done).unwrap();
    eprintln!(
        "flood of {} datagrams over {:?}; slowest status {slowest:?}; another service's READY=1 after {:?}",
        count.trim(),
        sent.elapsed(),
        steady_ready
    );
    let steady_ready = steady_ready.expect("READY=1 of another service got through");
    assert!(
        stop.exists(),
        "the flood hit its bound before a dozen checks ran"
    );
    // The bounds are far above what a busy 2-core machine adds (status answers in a
    // few ms when idle) and far below what a loop held up by the flood shows: its
    // queue grows for as long as the flood lasts, so its delays reach the flood's
    // length (seconds), not a fraction of a second more.
    assert!(slowest < Duration::from_secs(2), "status took {slowest:?}");
    assert!(
        steady_ready < Duration::from_secs(5),
        "READY=1 took {steady_ready:?}"
    );
    // The other service's checks kept their 100 ms rhythm through the flood.
    let times = stamps_since(&stamps, began.unwrap());
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let worst = gaps.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{} checks of another service during the flood, longest gap {worst} ms",
        times.len()
    );
    assert!(times.len() >= 10, "{times:?}");
    assert!(worst < 2000, "a check was {worst} ms late: {gaps:?}");
    let f = wait_status(&sb, "flood", "coalesced", |s| s["notify_status"] == "done");
    assert_eq!(f["state"], "running");
    assert_eq!(f["restarts"], 0);
}

/// A service's STATUS= text reaches the operator's terminal escaped, in the table and
/// in `status NAME`: no escape sequence, no carriage return that overwrites the line.
#[test]
fn status_text_cannot_drive_the_terminal() {
    if !have("systemd-notify", "systemd") {
        return;
    }
    let sb = Sandbox::new();
    sb.service(
        "web",
        "systemd-notify --ready --status=\"$(printf 'up\\033[2J\\rFORGED\\302\\233')\"\nexec sleep 1000",
    );
    sb.config(json!({}), json!({"web": {"ready": "notify"}}));
    let _d = Daemon::start(&sb, &[]);
    let s = wait_status(&sb, "web", "its status", |s| {
        s["notify_status"]
            .as_str()
            .is_some_and(|t| t.contains("FORGED"))
    });
    assert_eq!(
        s["notify_status"], "up\u{1b}[2J\rFORGED\u{9b}",
        "kept as sent"
    );
    for args in [&["status"][..], &["status", "web"]] {
        let out = sb.cli(args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            !out.stdout.contains(['\u{1b}', '\r', '\u{9b}']),
            "{args:?}: {:?}",
            out.stdout
        );
        assert!(
            out.stdout.contains("up\\x1b[2J\\rFORGED\\u{9b}"),
            "{args:?}: {}",
            out.stdout
        );
    }
}

/// Joins the cgroups whose `cgroup.procs` files $JOIN lists (colon-separated), sends
/// $MSG to $TARGET, then writes $DONE.
const JOIN_AND_CLAIM: &str = r#"
import os, socket, time
for procs in filter(None, os.environ["JOIN"].split(":")):
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(os.environ["MSG"].encode(), os.environ["TARGET"])
open(os.environ["DONE"], "w").close()
time.sleep(1000)
"#;

/// Cgroups a test made, and the processes it put in them: killed, then removed.
struct LookAlikes {
    children: Vec<std::process::Child>,
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for LookAlikes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A cgroup whose last process just died may stay busy for a moment.
        for d in self.dirs.iter().rev() {
            wait_until(Duration::from_secs(2), || {
                std::fs::remove_dir(d).is_ok() || !d.exists()
            });
        }
    }
}

/// The cgroup mount points.
fn cgroup_mounts() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            matches!(right.split(' ').next()?, "cgroup2" | "cgroup").then(|| point.into())
        })
        .collect()
}

/// A helper process of a service: sends argv[1] (`\n` for a newline) to its
/// NOTIFY_SOCKET from a group of its own (setsid), or from the service's group with
/// $STAY, and writes $LEFT if set. It lives on until its parent (the service's main
/// process) is gone, so that the daemon can always look at the sender.
const HELPER: &str = r#"
import os, socket, sys, time
parent = os.getppid()
if not os.environ.get("STAY"):
    os.setsid()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(sys.argv[1].replace("\\n", "\n").encode(), os.environ["NOTIFY_SOCKET"])
if os.environ.get("LEFT"):
    open(os.environ["LEFT"], "w").close()
while os.getppid() == parent:
    time.sleep(0.1)
"#;

#[test]
fn a_look_alike_cgroup_outside_the_daemons_own_speaks_for_no_service() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making cgroups elsewhere in the hierarchy needs root");
        return;
    }
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    let claim = sb.path("claim.py");
    std::fs::write(&claim, JOIN_AND_CLAIM).unwrap();
    let go = sb.path("go");
    let helper = sb.path("helper.py");
    std::fs::write(&helper, HELPER).unwrap();
    // Its helper leaves the service's process group (setsid) but stays in its cgroup.
    sb.service(
        "probe",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.02; done\n\
             python3 {helper} 'READY=1\nSTATUS=helper in its own group' &\n\
             exec sleep 1000",
            go = go.display(),
            helper = helper.display()
        ),
    );
    sb.service("victim", "exec sleep 1000");
    sb.config(
        json!({}),
        json!({"probe": {"ready": "notify"}, "victim": {"watchdog_ms": 60000}}),
    );
    let _d = Daemon::start(&sb, &[]);
    let probe = wait_status(&sb, "probe", "started", |s| s["pid"].as_i64().is_some());
    let Some(own) = probe["cgroup"].as_str().map(std::path::PathBuf::from) else {
        eprintln!("skipped: the daemon found no cgroup hierarchy: {probe}");
        return;
    };
    sb.wait_running("victim", None);
    // own = <mount>/<daemon's own path>/orchestrator-<id>/probe.
    let id = own.parent().unwrap().file_name().unwrap().to_owned();
    let mounts = cgroup_mounts();
    let tracker_mount = mounts
        .iter()
        .filter(|m| own.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .cloned()
        .unwrap();
    let relative = own.strip_prefix(&tracker_mount).unwrap().to_owned();
    let mut made = LookAlikes {
        children: Vec::new(),
        dirs: Vec::new(),
    };
    let mut make = |dir: std::path::PathBuf| -> String {
        let mut at = std::path::PathBuf::new();
        for c in dir.components() {
            at.push(c);
            if !at.exists() {
                std::fs::create_dir(&at).unwrap();
                made.dirs.push(at.clone());
            }
        }
        dir.join("cgroup.procs").display().to_string()
    };
    // Same hierarchy, same names, another place: <mount>/<unique>/orchestrator-<id>/NAME.
    let unique = sb.dir.file_name().unwrap().to_owned();
    let elsewhere = |name: &str| tracker_mount.join(&unique).join(&id).join(name);
    // Another hierarchy, the very path of the daemon's cgroup there.
    // (name=systemd where it is mounted: nothing of the daemon's is ever there.)
    let mut others: Vec<_> = mounts.iter().filter(|m| **m != tracker_mount).collect();
    others.sort_by_key(|m| !m.ends_with("systemd"));
    let other = others.first();
    let mut join_probe = make(elsewhere("probe"));
    let mut join_victim = make(elsewhere("victim"));
    if let Some(m) = &other {
        join_probe = format!("{join_probe}:{}", make(m.join(&relative)));
        let victim = m.join(relative.parent().unwrap()).join("victim");
        join_victim = format!("{join_victim}:{}", make(victim));
    }
    eprintln!("look-alikes: {join_probe} and {join_victim}");
    let target = notify_socket(&sb);
    for (i, (join, msg)) in [
        (join_probe, "READY=1\nSTATUS=hijacked"),
        (join_victim, "WATCHDOG=trigger"),
    ]
    .into_iter()
    .enumerate()
    {
        let child = Command::new("python3")
            .arg(&claim)
            .env("JOIN", join)
            .env("MSG", msg)
            .env("TARGET", &target)
            .env("DONE", sb.path(&format!("done{i}")))
            .process_group(0)
            .spawn()
            .unwrap();
        made.children.push(child);
    }
    // Both were heard and refused.
    assert!(wait_until(DEADLINE, || metric(
        &sb,
        "orchestrator_notify_rejected_total"
    ) >= 2));
    let p = sb.service_status("probe");
    assert_eq!(p["state"], "starting", "{p}");
    assert_eq!(p["notify_status"], Value::Null, "{p}");
    let v = sb.service_status("victim");
    assert_eq!(v["restarts"], 0, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    // The other half: the service's own helper, out of its process group but in its
    // cgroup, speaks for it.
    std::fs::write(&go, "").unwrap();
    let p = wait_status(&sb, "probe", "ready", |s| s["state"] == "running");
    assert_eq!(p["notify_status"], "helper in its own group", "{p}");
}

#[test]
fn without_cgroups_a_services_process_group_speaks_for_it_and_no_other() {
    // As root, the daemon runs as nobody so that it has no cgroups: the process group
    // is then all that tells a service's processes.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the daemon without cgroups needs root (to be nobody)");
        return;
    }
    if !python() {
        return;
    }
    let sb = Sandbox::new();
    for d in [sb.dir.clone(), sb.path("services")] {
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let (go, left) = (sb.path("go"), sb.path("left"));
    let helper = sb.path("helper.py");
    std::fs::write(&helper, HELPER).unwrap();
    // A helper that leaves the group (setsid) speaks first; then, once told, a child
    // that stays in the group (not the main process: its pid is no group's id).
    sb.service(
        "svc",
        &format!(
            "LEFT={left} python3 {helper} 'READY=1\nSTATUS=from another group' &\n\
             while [ ! -e {go} ]; do sleep 0.02; done\n\
             STAY=1 python3 {helper} 'READY=1\nSTATUS=from its group' &\n\
             exec sleep 1000",
            go = go.display(),
            left = left.display(),
            helper = helper.display()
        ),
    );
    sb.config(json!({}), json!({"svc": {"ready": "notify"}}));
    let mut d = Daemon::spawn_as(&sb, &[], &[], Some(65534));
    assert!(
        wait_until(DEADLINE, || sb.cli(&["status", "--json"]).code == 0),
        "{}",
        d.log_text()
    );
    let s = wait_status(&sb, "svc", "started", |s| s["pid"].as_i64().is_some());
    assert_eq!(s["cgroup"], Value::Null, "no cgroups as nobody: {s}");
    assert!(wait_until(DEADLINE, || left.exists()));
    assert!(wait_until(DEADLINE, || metric(
        &sb,
        "orchestrator_notify_rejected_total"
    ) >= 1));
    let s = sb.service_status("svc");
    assert_eq!(s["state"], "starting", "{s}");
    assert_eq!(s["notify_status"], Value::Null, "{s}");
    std::fs::write(&go, "").unwrap();
    let s = wait_status(&sb, "svc", "ready", |s| s["state"] == "running");
    assert_eq!(s["notify_status"], "from its group", "{s}");
    d.signal(libc::SIGTERM);
    d.wait_exit(DEADLINE);
}

/// A run that waits for READY=1 says so, in the table and in `status NAME`; one that
/// does not wait for it says nothing of the kind.
#[test]
fn a_service_waiting_for_ready_says_so() {
    let sb = Sandbox::new();
    sb.service("slow", "exec sleep 1000");
    sb.service("plain", "exec sleep 1000");
    sb.config(json!({}), json!({"slow": {"ready": "notify"}}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("plain", None);
    let s = wait_status(&sb, "slow", "a pid", |s| s["pid"].as_i64().is_some());
    assert_eq!(s["state"], "starting", "{s}");
    assert_eq!(s["waiting_for"], "READY=1", "{s}");
    let table = sb.cli(&["status"]).stdout;
    let row = |n: &str| {
        table
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or("")
            .to_string()
    };
    assert!(row("slow").ends_with("waiting for READY=1"), "{table}");
    assert!(!row("plain").contains("waiting"), "{table}");
    let out = sb.cli(&["status", "slow"]);
    assert_eq!(out.code, 3, "starting is not running: {}", out.stderr);
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with("slow: starting since ") && first.ends_with(", waiting for READY=1"),
        "{}",
        out.stdout
    );
}

/// Sends WATCHDOG=1 every 100 ms; from when $GO exists, times each send for $BEATS
/// beats and writes the times (ms, one a line) to $OUT, and beats on.
const TIMED_HEART: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
target, go, out = os.environ["NOTIFY_SOCKET"], os.environ["GO"], os.environ["OUT"]
times = []
while True:
    t = time.monotonic()
    s.sendto(b"WATCHDOG=1", target)
    if os.path.exists(go) and len(times) < int(os.environ["BEATS"]):
        times.append((time.monotonic() - t) * 1000)
        if len(times) == int(os.environ["BEATS"]):
            with open(out + ".tmp", "w") as f:
                f.write("".join("%.3f\n" % x for x in times))
            os.rename(out + ".tmp", out)
    time.sleep(0.1)
"#;

/// Sends WATCHDOG=1 to $TARGET as fast as it can until $STOP exists (looked at every
/// 200 datagrams) or 60 s have passed.
const OUTSIDER: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
target, stop, end = os.environ["TARGET"], os.environ["STOP"], time.monotonic() + 60
i = 0
while True:
    try:
        s.sendto(b"WATCHDOG=1", target)
    except OSError:
        pass
    i += 1
    if i % 200 == 0 and (os.path.exists(stop) or time.monotonic() > end):
        break
"#;

#[test]
fn a_flood_by_unrelated_processes_keeps_a_services_keep_alives_flowing() {
    if !python() {
        return;
    }
    // Eight, for two seconds: enough to fill the socket's queue many times over, and
    // short enough not to disturb the tests that run beside this one.
    const FLOODERS: usize = 8;
    let sb = Sandbox::new();
    let (heart, outsider) = (sb.path("heart.py"), sb.path("outsider.py"));
    std::fs::write(&heart, TIMED_HEART).unwrap();
    std::fs::write(&outsider, OUTSIDER).unwrap();
    let (go, out, stop) = (sb.path("go"), sb.path("times"), sb.path("stop"));
    sb.service("hb", &format!("exec python3 {}", heart.display()));
    sb.config(
        json!({}),
        json!({"hb": {"watchdog_ms": 2000, "environment": {
            "GO": go.display().to_string(), "OUT": out.display().to_string(), "BEATS": "20"}}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("hb", None);
    let target = notify_socket(&sb);
    struct Flood(Vec<std::process::Child>);
    impl Drop for Flood {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut flood = Flood(Vec::new());
    for _ in 0..FLOODERS {
        flood.0.push(
            Command::new("python3")
                .arg(&outsider)
                .env("TARGET", &target)
                .env("STOP", &stop)
                .process_group(0)
                .spawn()
                .unwrap(),
        );
    }
    // The flood is on once the daemon has refused some of it.
    assert!(wait_until(DEADLINE, || metric(
        &sb,
        "orchestrator_notify_rejected_total"
    ) >= 1000));
    std::fs::write(&go, "").unwrap();
    let written = wait_until(Duration::from_secs(60), || out.exists());
    assert!(written, "no times: {}", sb.service_status("hb"));
    let refused = metric(&sb, "orchestrator_notify_rejected_total");
    std::fs::write(&stop, "").unwrap();
    drop(flood);
    let mut times: Vec<f64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "{FLOODERS} processes flooding ({refused} datagrams refused): a keep-alive's send took \
         {:.2} ms at the median, {:.2} ms at most ({} beats)",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    // A measurement first: the numbers above are what the flood costs a service on this
    // machine. What must hold whatever the machine's load: the flood was refused (above)
    // and the service's keep-alives kept going through it, so it is still running.
    let s = sb.service_status("hb");
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(times.len(), 20);
}
