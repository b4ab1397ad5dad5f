//! Chaos: a randomized, seeded black-box run of the real binary. Random
//! operations (start, stop, restart, reload edits valid and invalid, SIGHUP, `kill -9`
//! of services and their children, SIGSTOP/SIGCONT, bursts of concurrent clients) over
//! services of every kind, with the lifecycle's invariants checked after every step
//! (see `checks.rs`). A failure prints the seed and the last operations; the same seed
//! draws the same services and the same operations.
//!
//! `short_run` (part of `cargo test`) runs fixed seeds for about a minute in all.
//! `long_run` runs only when `ORCH_CHAOS_SECONDS` is set (`make chaos`): that many
//! seconds over consecutive seeds from `ORCH_CHAOS_SEED` (default: from the clock).

mod checks;
mod model;
mod procs;

use crate::util::*;
use model::{Kind, Model};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Operations remembered for the failure report.
const REMEMBERED: usize = 40;
/// The bound on a read-only client command; a lifecycle command waits for stops of
/// at most 500 ms each along a dependency chain, and kills at the stop timeout.
const READ_BOUND: Duration = Duration::from_secs(3);
const LIFECYCLE_BOUND: Duration = Duration::from_secs(10);
/// One seed's share of a long run.
const SEED_SECONDS: u64 = 180;

pub struct Chaos {
    seed: u64,
    rng: fastrand::Rng,
    sb: Sandbox,
    daemon: Daemon,
    model: Model,
    /// Stopped by an operator's `stop` (or its cascade) and not started since.
    held: BTreeSet<String>,
    ops: VecDeque<String>,
    steps: usize,
    /// Zombie children of the daemon, by (pid, start time), when first seen.
    zombies: HashMap<(i32, u64), Instant>,
    sigstopped: Vec<i32>,
    /// Descriptors and threads of the idle daemon (every service stopped).
    baseline: Option<(usize, usize)>,
    cgroup_id: String,
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        let mut rng = fastrand::Rng::with_seed(seed);
        let sb = Sandbox::new();
        let ports = (accepting_port(), closed_port());
        let model = Model::new(&mut rng, &sb.dir, sb.socket(), ports);
        std::fs::create_dir_all(&model.progs).unwrap();
        for s in &model.svcs {
            sb.script(&model.program(&s.name), &model.script(s));
            if s.kind == Kind::ExecCheck {
                std::fs::write(model.health_file(&s.name), "").unwrap();
            }
        }
        sb.write_config(&serde_json::to_string_pretty(&model.config()).unwrap());
        let daemon = Daemon::start(&sb, &[]);
        let cgroup_id = cgroup_id(&sb.socket());
        Chaos {
            seed,
            rng,
            sb,
            daemon,
            model,
            held: BTreeSet::new(),
            ops: VecDeque::new(),
            steps: 0,
            zombies: HashMap::new(),
            sigstopped: Vec::new(),
            baseline: None,
            cgroup_id,
        }
    }

    /// Panics with everything needed to replay: the seed, the step, the last
    /// operations and the end of the daemon's log.
    pub fn fail(&self, what: &str) -> ! {
        let ops: Vec<String> = self.ops.iter().cloned().collect();
        let log = self.daemon.log_lines();
        // Flood lines are cut: the report must stay readable.
        let tail: Vec<String> = log[log.len().saturating_sub(60)..]
            .iter()
            .map(|l| l.chars().take(200).collect())
            .collect();
        panic!(
            "chaos violation at seed {} step {}: {what}\n\
             replay: make chaos CHAOS_SEED={} CHAOS_SECONDS=<as long>\n\
             last operations:\n  {}\ndaemon log (end):\n{}",
            self.seed,
            self.steps,
            self.seed,
            ops.join("\n  "),
            tail.join("\n")
        );
    }

    fn note(&mut self, op: String) {
        if self.ops.len() == REMEMBERED {
            self.ops.pop_front();
        }
        self.ops.push_back(format!("#{} {op}", self.steps));
    }

    /// A client command, bounded; a command that outlives its bound is a violation.
    fn client(&self, args: &[&str], bound: Duration) -> Output {
        match run_client(&self.sb, args, bound) {
            Ok(out) => out,
            Err(took) => self.fail(&format!(
                "`{}` did not return within {took:?}",
                args.join(" ")
            )),
        }
    }

    /// `status` over the socket: the daemon must answer within 1 s.
    pub fn ping(&self) -> Vec<serde_json::Value> {
        let t = Instant::now();
        let reply = socket_call(
            &self.sb.socket(),
            r#"{"cmd":"status"}"#,
            Duration::from_secs(1),
        );
        let took = t.elapsed();
        match reply {
            Some(v) if took <= Duration::from_secs(1) && v["ok"] == true => {
                v["services"].as_array().cloned().unwrap_or_default()
            }
            Some(v) if took <= Duration::from_secs(1) => self.fail(&format!("status refused: {v}")),
            _ => self.fail(&format!(
                "the daemon did not answer status within 1 s ({took:?})"
            )),
        }
    }

    fn pick(&mut self) -> String {
        let i = self.rng.usize(..self.model.svcs.len());
        self.model.svcs[i].name.clone()
    }

    fn step(&mut self) {
        self.steps += 1;
        let roll = self.rng.u32(..100);
        match roll {
            0..=14 => self.lifecycle("start"),
            15..=29 => self.lifecycle("stop"),
            30..=36 => self.lifecycle("restart"),
            37..=44 => self.reload(true),
            45..=48 => self.reload(false),
            49..=56 => self.kill_main(),
            57..=63 => self.kill_child(),
            64..=68 => self.sigstop(),
            69..=72 => self.sigcont(),
            73..=78 => self.burst(),
            79..=82 => self.toggle_health(),
            83..=84 => self.idle_check(),
            _ => {
                let ms = self.rng.u64(0..300);
                self.note(format!("pause {ms} ms"));
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        self.check();
    }

    fn lifecycle(&mut self, cmd: &str) {
        let name = self.pick();
        let before = self.ping();
        let out = self.client(&[cmd, &name], LIFECYCLE_BOUND);
        self.note(format!(
            "{cmd} {name} -> {} {}",
            out.code,
            out.stderr.trim()
        ));
        if cmd != "stop" {
            self.held.remove(&name);
            return;
        }
        if out.code != 0 {
            return;
        }
        // The stop and its cascade: whatever was active before is stopped and held.
        let active = |n: &str| {
            before.iter().any(|s| {
                s["name"] == n
                    && matches!(
                        s["state"].as_str(),
                        Some("starting" | "running" | "restarting")
                    )
            })
        };
        self.held.insert(name.clone());
        for d in self.model.dependents(&name) {
            if active(&d) {
                self.held.insert(d);
            }
        }
    }

    /// A reload edit through `reload` (`via_client`) or SIGHUP; one in four is invalid.
    fn reload(&mut self, via_client: bool) {
        let how = if via_client { "reload" } else { "SIGHUP" };
        if self.rng.u32(..4) == 0 {
            let (what, text) = self.model.invalid_config(&mut self.rng);
            self.sb.write_config(&text);
            let code = self.send_reload(via_client);
            self.note(format!("{how} invalid: {what} -> {code:?}"));
            if via_client && code != Some(1) {
                self.fail(&format!(
                    "an invalid reload ({what}) exited {code:?}, not 1"
                ));
            }
            self.write_model_config();
            return;
        }
        let (what, forgotten) = self.model.valid_edit(&mut self.rng);
        for n in forgotten {
            self.held.remove(&n);
        }
        self.write_model_config();
        let code = self.send_reload(via_client);
        self.note(format!("{how}: {what} -> {code:?}"));
        if via_client && code != Some(0) {
            self.fail(&format!("a valid reload ({what}) exited {code:?}"));
        }
    }

    fn write_model_config(&self) {
        let text = serde_json::to_string_pretty(&self.model.config()).unwrap();
        self.sb.write_config(&text);
    }

    fn send_reload(&mut self, via_client: bool) -> Option<i32> {
        if via_client {
            return Some(self.client(&["reload"], LIFECYCLE_BOUND).code);
        }
        self.daemon.signal(libc::SIGHUP);
        None
    }

    /// Processes of `name` now, live ones only.
    fn processes_of(&self, name: &str) -> Vec<procs::Proc> {
        procs::scan(&self.model.progs, &self.cgroup_id)
            .into_iter()
            .filter(|p| !p.zombie && p.owner.as_deref() == Some(name))
            .collect()
    }

    fn kill_main(&mut self) {
        let name = self.pick();
        let st = self.ping();
        let pid = st
            .iter()
            .find(|s| s["name"] == name.as_str())
            .and_then(|s| s["pid"].as_i64());
        self.note(format!("kill -9 {name} main {pid:?}"));
        if let Some(pid) = pid {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    fn kill_child(&mut self) {
        let name = self.pick();
        let children: Vec<i32> = self
            .processes_of(&name)
            .iter()
            .filter(|p| p.pid != p.pgid)
            .map(|p| p.pid)
            .collect();
        if children.is_empty() {
            self.note(format!("kill -9 {name} child: none"));
            return;
        }
        let pid = children[self.rng.usize(..children.len())];
        self.note(format!("kill -9 {name} child {pid}"));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    fn sigstop(&mut self) {
        let name = self.pick();
        let mine = self.processes_of(&name);
        if mine.is_empty() {
            self.note(format!("SIGSTOP {name}: none"));
            return;
        }
        let pid = mine[self.rng.usize(..mine.len())].pid;
        self.note(format!("SIGSTOP {name} {pid}"));
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        self.sigstopped.push(pid);
    }

    fn sigcont(&mut self) {
        self.note(format!("SIGCONT {:?}", self.sigstopped));
        for pid in self.sigstopped.drain(..) {
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    /// Clients at once: status, logs, metrics, a dry-run reload.
    fn burst(&mut self) {
        let n = self.rng.usize(4..=16);
        let mut cmds: Vec<Vec<String>> = Vec::new();
        for _ in 0..n {
            let name = self.pick();
            let c: Vec<&str> = match self.rng.u32(..5) {
                0 => vec!["status"],
                1 => vec!["status", &name],
                2 => vec!["logs", &name, "-n", "50"],
                3 => vec!["metrics"],
                _ => vec!["reload", "--dry-run"],
            };
            cmds.push(c.into_iter().map(String::from).collect());
        }
        self.note(format!("burst of {n} clients"));
        let handles: Vec<_> = cmds
            .into_iter()
            .map(|c| {
                let sb_dir = self.sb.dir.clone();
                std::thread::spawn(move || {
                    let args: Vec<&str> = c.iter().map(String::as_str).collect();
                    (c.join(" "), run_client_in(&sb_dir, &args, READ_BOUND))
                })
            })
            .collect();
        for h in handles {
            let (cmd, res) = h.join().expect("a burst client");
            match res {
                Err(took) => self.fail(&format!("`{cmd}` (burst) did not return within {took:?}")),
                // `status NAME` exits 3 for a service that is not running.
                Ok(out) if out.code == 3 && cmd.starts_with("status ") => {}
                Ok(out) if out.code != 0 && !out.stderr.contains("not found") => {
                    self.fail(&format!("`{cmd}` (burst) failed: {}", out.stderr))
                }
                Ok(_) => {}
            }
        }
    }

    fn toggle_health(&mut self) {
        let checked: Vec<String> = self
            .model
            .svcs
            .iter()
            .filter(|s| s.kind == Kind::ExecCheck)
            .map(|s| s.name.clone())
            .collect();
        if checked.is_empty() {
            return self.note("toggle health: no exec check".into());
        }
        let name = checked[self.rng.usize(..checked.len())].clone();
        let f = self.model.health_file(&name);
        if f.exists() {
            let _ = std::fs::remove_file(&f);
        } else {
            let _ = std::fs::write(&f, "");
        }
        self.note(format!("health of {name}: {}", f.exists()));
    }

    /// Everything stopped: the daemon's descriptors and threads come back to the
    /// idle baseline; then everything is started again.
    fn idle_check(&mut self) {
        self.note("idle check: stop everything".into());
        self.sigcont();
        self.stop_everything();
        let (fds, threads) = self.wait_idle();
        match self.baseline {
            None => self.baseline = Some((fds, threads)),
            Some((bf, bt)) if fds > bf || threads > bt => self.fail(&format!(
                "idle daemon has {fds} descriptors and {threads} threads; baseline {bf} and {bt}"
            )),
            Some(_) => {}
        }
        self.note(format!(
            "idle: {fds} descriptors, {threads} threads; start everything"
        ));
        let names: Vec<String> = self
            .model
            .svcs
            .iter()
            .filter(|s| s.present)
            .map(|s| s.name.clone())
            .collect();
        for n in names {
            self.client(&["start", &n], LIFECYCLE_BOUND);
            self.held.remove(&n);
        }
    }

    fn stop_everything(&mut self) {
        for s in self.ping() {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            if s["state"] != "stopped" && s["state"] != "failed" {
                let out = self.client(&["stop", &name], LIFECYCLE_BOUND);
                if out.code == 0 {
                    self.held.insert(name);
                }
            }
        }
        // Failed services may still have a retry due; stopped ones are done.
        let ok = wait_until(Duration::from_secs(5), || {
            self.ping()
                .iter()
                .all(|s| matches!(s["state"].as_str(), Some("stopped" | "failed")))
        });
        if !ok {
            self.fail("services did not all stop");
        }
    }

    /// The daemon's descriptors and threads once they stop falling (at most 5 s).
    fn wait_idle(&self) -> (usize, usize) {
        let mut last = procs::fds_and_threads(self.daemon.pid);
        let end = Instant::now() + Duration::from_secs(5);
        let mut stable_since = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            let now = procs::fds_and_threads(self.daemon.pid);
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(1000) {
                break;
            }
        }
        last
    }

    /// `shutdown`: exit 0, and nothing of any service left.
    fn shutdown(mut self) {
        self.sigcont();
        self.note("shutdown".into());
        let out = self.client(&["shutdown"], READ_BOUND);
        if out.code != 0 {
            self.fail(&format!("shutdown refused: {}", out.stderr));
        }
        let code = self.daemon.wait_exit(Duration::from_secs(10));
        if code != Some(0) {
            self.fail(&format!("the daemon exited {code:?} after shutdown"));
        }
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_secs(1), || {
            left = procs::scan(&self.model.progs, &self.cgroup_id)
                .into_iter()
                .filter(|p| p.owner.is_some() && !p.zombie)
                .collect();
            left.is_empty()
        });
        if !gone {
            self.fail(&format!("processes left after shutdown: {left:?}"));
        }
        let cgroups: Vec<String> = find_cgroup_dirs(&self.cgroup_id)
            .into_iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .map(|p| {
                let procs = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
                format!(
                    "{} (procs: {})",
                    p.display(),
                    procs.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
            .collect();
        if !cgroups.is_empty() {
            self.fail(&format!("service cgroups left after shutdown: {cgroups:?}"));
        }
    }
}

/// Runs one seed for `seconds`; returns the number of operations.
fn run_seed(seed: u64, seconds: u64) -> usize {
    let mut c = Chaos::new(seed);
    let kinds: Vec<String> = c
        .model
        .svcs
        .iter()
        .map(|s| {
            format!(
                "{}:{:?}{}",
                s.name,
                s.kind,
                s.deps.first().map(|d| format!("->{d}")).unwrap_or_default()
            )
        })
        .collect();
    eprintln!(
        "chaos seed {seed}: {} (subreaper {})",
        kinds.join(" "),
        c.model.subreaper
    );
    // Let the services come up, then take the idle baseline.
    std::thread::sleep(Duration::from_millis(500));
    c.check();
    c.idle_check();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        c.step();
    }
    c.idle_check();
    let steps = c.steps;
    c.shutdown();
    eprintln!("chaos seed {seed}: {steps} operations, no violation");
    steps
}

#[test]
fn short_run() {
    let mut total = 0;
    for seed in [1, 2, 3] {
        total += run_seed(seed, 15);
    }
    eprintln!("chaos short run: {total} operations");
}

#[test]
fn long_run() {
    let Some(seconds) = std::env::var("ORCH_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        eprintln!("skipped: set ORCH_CHAOS_SECONDS (make chaos) for a long chaos run");
        return;
    };
    let first = std::env::var("ORCH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut seed, mut seeds, mut total) = (first, 0, 0);
    loop {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        if left == 0 {
            break;
        }
        total += run_seed(seed, left.min(SEED_SECONDS));
        seeds += 1;
        seed += 1;
    }
    eprintln!("chaos long run: {total} operations over {seeds} seeds from {first}, no violation");
}

/// A port where the test accepts and drops every connection (a healthy tcp check).
fn accepting_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

/// A port where nothing listens (an unhealthy tcp check).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run_client(sb: &Sandbox, args: &[&str], bound: Duration) -> Result<Output, Duration> {
    run_client_in(&sb.dir, args, bound)
}

/// A client command against the sandbox in `dir`; Err(elapsed) if it outlived `bound`
/// (it is killed then).
fn run_client_in(
    dir: &std::path::Path,
    args: &[&str],
    bound: Duration,
) -> Result<Output, Duration> {
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(dir.join("ctl.sock"))
        .arg("--config")
        .arg(dir.join("orchestrator.json"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let child = spawn_when_not_busy(&mut cmd).expect("spawn a client");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(out)) => Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        _ => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(t.elapsed())
        }
    }
}

/// One request on the control socket; None when there is no answer within `bound`.
fn socket_call(socket: &std::path::Path, req: &str, bound: Duration) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(bound)).ok()?;
    s.set_write_timeout(Some(bound)).ok()?;
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}
