//! `orchestrator`: entry point. Parses the command line, and for `run` does the start-up
//! in the one order that is safe: configuration (exit 2 on error, nothing started), the
//! instance lock and socket (exit 1 if another instance runs), `--daemon`'s fork while
//! still single-threaded, signal registration before any thread, then the threads and
//! the main loop. Only this file chooses exit codes and prints errors for the user.

mod backoff;
mod cgroup;
mod cli;
mod client;
mod config;
mod control;
mod discovery;
mod event;
mod http;
mod instance;
mod log;
mod logfiles;
mod metrics;
mod output;
mod probe;
mod procfs;
mod service;
mod sha256;
mod signals;
mod spawn;
mod state;
mod supervisor;
mod timefmt;
mod waiter;

use cli::{Cli, Command};
use client::{ClientError, Connection};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    // Descriptors 0-2 must be open so that no pipe of ours is ever given one of them.
    spawn::ensure_std_fds();
    // One malloc arena for every thread: with a thread per stream, per-thread arenas
    // would cost far more than the threads themselves.
    // SAFETY: mallopt has no memory preconditions and runs before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match cli::parse(&args) {
        Ok(cli) => dispatch(cli),
        Err(e) => {
            eprintln!("orchestrator: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> i32 {
    let Some(command) = cli.command.clone() else {
        eprintln!("orchestrator: missing command (try `orchestrator --help`)");
        return 2;
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            0
        }
        Command::Version => {
            println!("orchestrator {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Run { daemon, pidfile } => run(&cli, daemon, pidfile),
        Command::Check => check(&cli),
        Command::Discover => discover(&cli),
        other => client_command(&cli, other),
    }
}

/// Prints configuration errors, one per line, and returns exit code 2.
fn config_failed(lines: &[String]) -> i32 {
    for l in lines {
        eprintln!("orchestrator: {l}");
    }
    2
}

fn load(cli: &Cli) -> Result<(config::Config, discovery::Plan), i32> {
    let cfg = config::load(&cli.overrides).map_err(|e| config_failed(&e.0))?;
    let plan = discovery::plan(&cfg).map_err(|e| config_failed(&e))?;
    Ok((cfg, plan))
}

fn print_notices(plan: &discovery::Plan, min: ::log::Level) {
    for n in &plan.notices {
        if n.level <= min {
            eprintln!(
                "orchestrator: {}: {}",
                n.level.as_str().to_ascii_lowercase(),
                n.msg
            );
        }
    }
}

fn run(cli: &Cli, daemon: bool, pidfile: Option<PathBuf>) -> i32 {
    let reserve = control::open_reserve();
    let (cfg, plan) = match load(cli) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let s = cfg.settings.clone();
    if daemon && s.log_dir.is_none() {
        return config_failed(&[format!(
            "{}: --daemon needs orchestrator.log_dir: the daemon's log goes to log_dir/orchestrator.log",
            cfg.path.as_ref().map_or("(defaults)".into(), |p| p.display().to_string())
        )]);
    }
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(instance::default_socket);
    let (mut inst, listener) = match instance::Instance::acquire(&socket, pidfile.as_deref()) {
        Ok(v) => v,
        Err(instance::InstanceError::AlreadyRunning(pid)) => {
            match pid {
                Some(pid) => eprintln!("orchestrator: already running (pid {pid})"),
                None => eprintln!("orchestrator: already running"),
            }
            return 1;
        }
        Err(instance::InstanceError::Io(e)) => {
            eprintln!("orchestrator: {e}");
            return 1;
        }
    };
    if daemon {
        let dir = s.log_dir.clone().unwrap_or_default();
        let path = dir.join("orchestrator.log");
        let opened = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                eprintln!("orchestrator: cannot open {}: {e}", path.display());
                return 1;
            }
        };
        if let Err(e) = instance::daemonize(file) {
            eprintln!("orchestrator: cannot detach: {e}");
            return 1;
        }
        inst.record_pid();
    }
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let reap_orphans = s.subreaper || pid1;
    let signals = match signals::register(reap_orphans) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchestrator: cannot install signal handlers: {e}");
            return 1;
        }
    };
    if reap_orphans {
        // SAFETY: prctl with these arguments has no memory preconditions.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            eprintln!(
                "orchestrator: cannot become a subreaper: {}",
                std::io::Error::last_os_error()
            );
            return 1;
        }
    }
    let (sink, _sink_thread) = match log::Sink::start(
        Box::new(std::io::stderr()),
        s.log_level,
        s.log_format,
        s.log_files(),
    ) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("orchestrator: cannot start the log writer: {e}");
            return 1;
        }
    };
    log::install_logger(&sink, s.log_level);
    for n in &plan.notices {
        ::log::log!(n.level, "{}", n.msg);
    }
    let cgroups = cgroup::Cgroups::detect(&socket);
    match &cgroups.tracker {
        Some(h) => ::log::debug!("service cgroups under {}", h.base.display()),
        None => {
            ::log::debug!("no writable cgroup hierarchy: services are tracked by process group")
        }
    }
    let leftovers = cgroups.clean_up_predecessor();
    if leftovers > 0 {
        ::log::warn!("killed {leftovers} processes left in service cgroups by a previous instance");
    }
    // What a predecessor recorded: its live process groups go (before anything starts,
    // so nothing of ours can be mistaken for them), its counts and history carry on. A
    // state_dir that cannot be used is reported; supervision goes on without it.
    let (state_dir, saved) = match s.state_dir.as_deref().map(state::StateDir::open) {
        Some(Ok(sd)) => {
            let saved = sd.load();
            if let Some(saved) = &saved {
                let killed = state::kill_survivors(saved, sd.boot_id());
                if killed > 0 {
                    ::log::warn!("killed {killed} processes left by a previous instance");
                }
            }
            (Some(sd), saved)
        }
        Some(Err(e)) => {
            ::log::error!("{e}: run history and restart counts will not be kept");
            (None, None)
        }
        None => (None, None),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    if let Err(e) = signals::forward(signals, tx.clone())
        .and_then(|()| control::serve(listener, tx.clone(), reserve))
    {
        eprintln!("orchestrator: cannot start: {e}");
        return 1;
    }
    if let Some(addr) = &s.metrics_listen {
        // Validated as host:port by config; a port in use is reported, not fatal:
        // supervision matters more than the scrape endpoint.
        match addr
            .parse()
            .map_err(|e| format!("{e}"))
            .and_then(|a| http::serve(a, tx.clone()).map_err(|e| e.to_string()))
        {
            Ok(bound) => ::log::info!("metrics on http://{bound}/metrics"),
            Err(e) => ::log::error!("metrics_listen {addr}: {e}"),
        }
    }
    ::log::info!(
        "orchestrator {} started (pid {}, {} services, control socket {}{})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        plan.services.len(),
        socket.display(),
        if reap_orphans {
            ", reaping orphans"
        } else {
            ""
        }
    );
    let mut sup = supervisor::Supervisor::new(
        cli.overrides.clone(),
        cfg,
        plan,
        tx,
        rx,
        sink.clone(),
        reap_orphans,
        cgroups,
        state_dir,
    );
    if let Some(saved) = saved {
        sup.restore(saved);
    }
    sup.start_all();
    instance::notify_ready();
    let outcome = sup.run();
    control::drain(Duration::from_secs(1));
    inst.release();
    let code = match outcome {
        supervisor::Outcome::Clean => {
            ::log::info!("all services stopped: exiting");
            0
        }
        supervisor::Outcome::Forced => 1,
    };
    // Give the writer a moment to drain what the readers still hold; never hang on it.
    sink.flush(Duration::from_secs(2));
    code
}

fn check(cli: &Cli) -> i32 {
    let (cfg, plan) = match load(cli) {
        Ok(v) => v,
        Err(code) => return code,
    };
    print_notices(&plan, ::log::Level::Warn);
    let s = &cfg.settings;
    println!(
        "config: {}",
        cfg.path
            .as_ref()
            .map_or("(none found: defaults)".into(), |p| p.display().to_string())
    );
    println!("services_dir: {}", s.services_dir.display());
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(instance::default_socket);
    println!("control_socket: {}", socket.display());
    let cgroups = cgroup::Cgroups::inspect(&socket);
    match &cgroups.tracker {
        Some(h) => println!("cgroups: {}", h.base.display()),
        None => println!("cgroups: none writable (services are tracked by process group)"),
    }
    println!("services: {}", plan.services.len());
    for spec in plan.services.values() {
        let what = if !spec.enabled {
            "disabled".to_string()
        } else if let Some(e) = spec.binary_error() {
            format!("will fail: {e}")
        } else if spec.autostart {
            "will start".to_string()
        } else {
            "not started (unconfigured and run_unconfigured is false)".to_string()
        };
        println!();
        println!("{}: {what}", spec.name);
        println!("  binary: {}", spec.binary.display());
        let argv: Vec<String> = std::iter::once(spec.binary.display().to_string())
            .chain(spec.args.iter().map(|a| shell_quote(a)))
            .collect();
        println!("  argv: {}", argv.join(" "));
        let env: Vec<&str> = spec.env.iter().map(|(k, _)| k.as_str()).collect();
        println!("  environment: {}", env.join(" "));
        if let Some(dir) = &spec.cwd {
            println!("  data_dir: {}", dir.display());
        }
        if let Some(id) = &spec.identity {
            println!(
                "  identity: uid {} gid {} groups {:?}{}",
                id.uid,
                id.gid,
                id.groups,
                id.user
                    .as_ref()
                    .map_or(String::new(), |u| format!(" ({u})"))
            );
        }
        println!(
            "  restart: {}, max {} attempts{}, backoff {}..{} ms, jitter {}",
            spec.policy.as_str(),
            spec.max_restart_attempts,
            if spec.max_restart_attempts == 0 {
                " (forever)"
            } else {
                ""
            },
            spec.backoff.initial_ms,
            spec.backoff.max_ms,
            spec.backoff.jitter
        );
        println!(
            "  stop: {}, then SIGKILL after {} ms",
            service::signal_name(spec.stop_signal),
            spec.stop_timeout.as_millis()
        );
        for line in limit_lines(spec, &cgroups) {
            println!("  limit: {line}");
        }
        if !spec.depends_on.is_empty() {
            println!("  depends_on: {}", spec.depends_on.join(", "));
        }
        if let Some(hc) = &spec.health_check {
            let target = match hc.kind {
                config::CheckType::Exec => hc.command.join(" "),
                config::CheckType::Tcp => format!("tcp {}", hc.address.as_deref().unwrap_or("")),
                config::CheckType::Http => format!("GET {}", hc.url.as_deref().unwrap_or("")),
            };
            println!(
                "  health_check: {target}, first after {} ms, every {} ms, timeout {} ms, restart after {} failures",
                hc.initial_delay_ms, hc.interval_ms, hc.timeout_ms, hc.failure_threshold
            );
        }
        if !spec.sockets.is_empty() {
            println!("  sockets: configured, not passed by this version");
        }
    }
    0
}

/// How each configured limit is enforced, for `check`.
fn limit_lines(spec: &discovery::ServiceSpec, cgroups: &cgroup::Cgroups) -> Vec<String> {
    cgroups
        .enforcement(spec)
        .into_iter()
        .map(|(name, value, how)| match name {
            "nofile" | "nproc" | "core" => format!("{name} = {value}: enforced with {how}"),
            "memory_limit" => format!("{name} = {value}: GOMEMLIMIT set; {how}"),
            _ => format!("{name} = {value}: {how}"),
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn discover(cli: &Cli) -> i32 {
    let cfg = match config::load(&cli.overrides) {
        Ok(c) => c,
        Err(e) => return config_failed(&e.0),
    };
    let mut notices = Vec::new();
    let found = discovery::discover(&cfg.settings.services_dir, &mut notices);
    for n in &notices {
        if n.level <= ::log::Level::Warn {
            eprintln!(
                "orchestrator: {}: {}",
                n.level.as_str().to_ascii_lowercase(),
                n.msg
            );
        }
    }
    for f in found {
        let configured = if cfg.services.contains_key(&f.name) {
            "configured"
        } else {
            "unconfigured"
        };
        println!("{}\t{}\t{configured}", f.name, f.binary.display());
    }
    0
}

/// The control socket a client talks to: `--socket`, `$ORCHESTRATOR_SOCKET`, the config
/// found by the usual lookup, else the default.
fn client_socket(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.overrides.socket {
        return s.clone();
    }
    if let Some(s) = std::env::var_os("ORCHESTRATOR_SOCKET").filter(|v| !v.is_empty()) {
        return PathBuf::from(s);
    }
    config::load(&cli.overrides)
        .ok()
        .and_then(|c| c.settings.control_socket)
        .unwrap_or_else(instance::default_socket)
}

fn client_command(cli: &Cli, command: Command) -> i32 {
    let socket = client_socket(cli);
    let result = Connection::open(&socket)
        .and_then(|mut conn| run_client(&mut conn, command).map(|wait| (conn, wait)));
    match result {
        Ok((conn, wait_for_exit)) => {
            if wait_for_exit && !conn.wait_closed(Duration::from_secs(600)) {
                eprintln!(
                    "orchestrator: shutdown requested, but the orchestrator has not exited yet"
                );
                return 1;
            }
            0
        }
        Err(ClientError::Unreachable(e)) => {
            eprintln!("orchestrator: {e}");
            3
        }
        Err(ClientError::Refused(e)) => {
            eprintln!("orchestrator: {e}");
            1
        }
    }
}

/// Runs one client command and prints its result. `Ok(true)`: wait for the daemon to exit.
fn run_client(conn: &mut Connection, command: Command) -> Result<bool, ClientError> {
    match command {
        Command::Status { name, json } => {
            let reply = conn.call(&json!({"cmd": "status", "service": name}))?;
            let services = reply["services"].as_array().cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&services).unwrap_or_default()
                );
            } else {
                print!("{}", status_table(&services));
            }
        }
        Command::Start(ref n) | Command::Stop(ref n) | Command::Restart(ref n) => {
            let cmd = match command {
                Command::Start(_) => "start",
                Command::Stop(_) => "stop",
                _ => "restart",
            };
            let reply = conn.call(&json!({"cmd": cmd, "service": n}))?;
            if let Some(s) = reply["services"].get(0) {
                println!("{}: {}", n, describe_state(s));
            }
        }
        Command::Reload { dry_run } => {
            let reply = conn.call(&json!({"cmd": "reload", "dry_run": dry_run}))?;
            for p in reply["plan"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}: {}",
                    p["service"].as_str().unwrap_or("?"),
                    p["action"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Logs { name, lines } => {
            let reply = conn.call(&json!({"cmd": "logs", "service": name, "lines": lines}))?;
            for l in reply["lines"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{} {}[{}] {}: {}{}",
                    l["ts"].as_str().unwrap_or(""),
                    name,
                    l["pid"],
                    l["stream"].as_str().unwrap_or(""),
                    l["msg"].as_str().unwrap_or(""),
                    if l["partial"] == Value::Bool(true) {
                        " [...]"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Metrics => {
            let reply = conn.call(&json!({"cmd": "metrics"}))?;
            print!("{}", reply["metrics"].as_str().unwrap_or(""));
        }
        Command::Shutdown => {
            conn.call(&json!({"cmd": "shutdown"}))?;
            return Ok(true);
        }
        Command::Upgrade { name, path } => {
            conn.call(&json!({"cmd": "upgrade", "service": name, "path": path}))?;
        }
        Command::Rollback(name) => {
            conn.call(&json!({"cmd": "rollback", "service": name}))?;
        }
        Command::UpgradeSelf(path) => {
            conn.call(&json!({"cmd": "upgrade-self", "path": path}))?;
        }
        Command::Run { .. }
        | Command::Check
        | Command::Discover
        | Command::Help
        | Command::Version => {}
    }
    Ok(false)
}

fn describe_state(s: &Value) -> String {
    let state = s["state"].as_str().unwrap_or("?");
    match s["pid"].as_i64() {
        Some(pid) => format!("{state} (pid {pid})"),
        None => state.to_string(),
    }
}

/// Nanoseconds as `1d2h`, `3h4m`, `5m6s` or `7s`.
fn human_duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn status_table(services: &[Value]) -> String {
    let header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "INFO"];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for s in services {
        let pid = s["pid"].as_i64().map_or("-".into(), |p| p.to_string());
        let uptime = if s["pid"].is_null() {
            "-".into()
        } else {
            human_duration(s["uptime"].as_u64().unwrap_or(0))
        };
        let exit = s["last_exit_code"]
            .as_i64()
            .map_or("-".into(), |c| c.to_string());
        let mut info = s["last_error"].as_str().unwrap_or("").to_string();
        if let Some(ms) = s["next_restart_ms"].as_u64() {
            let next = format!("next restart in {:.1}s", ms as f64 / 1000.0);
            info = if info.is_empty() {
                next
            } else {
                format!("{next}; {info}")
            };
        }
        if s["enabled"] == Value::Bool(false) {
            info = if info.is_empty() {
                "disabled".into()
            } else {
                format!("disabled; {info}")
            };
        }
        rows.push([
            s["name"].as_str().unwrap_or("?").to_string(),
            s["state"].as_str().unwrap_or("?").to_string(),
            pid,
            uptime,
            s["restarts"].to_string(),
            exit,
            info,
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}
