//! `run`: the daemon's start-up as named steps, in the one order that is safe. The
//! configuration is read first (nothing is started when it is wrong); then the instance
//! lock and socket are taken (another instance running stops us); `--daemon` forks while
//! still single-threaded; signals are registered before any thread; what a predecessor
//! left is cleared before anything of ours starts; then the threads, the supervisor and
//! its services. Each step that can fail says why with a `StartError`; nothing here
//! prints it or picks an exit code (`lib.rs` does both), so that a detached daemon's
//! caller hears the same line and code a run in the foreground would print.

use crate::cli::Cli;
use crate::config::forward::ForwardTarget;
use crate::config::{discovery::Plan, paths, Config, Overrides, Settings};
use crate::control::{instance, socket as control};
use crate::output::{files, forward, sink as logsink};
use crate::process::{cgroup, signals};
use crate::supervise::upgrade_self::new_image as resume;
use crate::supervise::upgrade_self::Carried;
use crate::supervise::{hw_watchdog, persist, supervisor};
use std::fmt;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why `run` could not start: the line the user reads (after `orchestrator: `). Every
/// variant but `Config` ends the process with exit code 1; `Config` with 2 (`lib.rs`).
#[derive(Debug)]
pub(crate) enum StartError {
    /// The configuration cannot be read, is invalid, or does not suit `--daemon`: one
    /// line per problem.
    Config(Vec<String>),
    /// The state a previous image handed over (`upgrade-self`) cannot be used.
    Carried(String),
    /// Another live orchestrator holds the lock (or the pidfile), with its pid if known.
    AlreadyRunning(Option<i32>),
    /// The lock, the pidfile or the socket cannot be had for another reason.
    Instance(String),
    /// `--daemon`'s log file cannot be opened.
    DaemonLog(PathBuf, io::Error),
    /// `--daemon` cannot fork away from the caller.
    Detach(io::Error),
    Signals(io::Error),
    Subreaper(io::Error),
    LogWriter(io::Error),
    /// The signal forwarder or the control socket's thread cannot be started.
    Threads(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(lines) => f.write_str(&lines.join("\n")),
            StartError::Carried(e) => write!(f, "upgrade-self: {e}"),
            StartError::AlreadyRunning(Some(pid)) => write!(f, "already running (pid {pid})"),
            StartError::AlreadyRunning(None) => f.write_str("already running"),
            StartError::Instance(e) => f.write_str(e),
            StartError::DaemonLog(path, e) => write!(f, "cannot open {}: {e}", path.display()),
            StartError::Detach(e) => write!(f, "cannot detach: {e}"),
            StartError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            StartError::Subreaper(e) => write!(f, "cannot become a subreaper: {e}"),
            StartError::LogWriter(e) => write!(f, "cannot start the log writer: {e}"),
            StartError::Threads(e) => write!(f, "cannot start: {e}"),
        }
    }
}

/// A start-up that failed, with the caller's process of `run --daemon` if the daemon
/// had detached already: that process relays our stderr until it is told the exit code
/// (`instance::Starting::failed`), so the error is printed before it is told.
pub(crate) struct StartFailure {
    pub error: StartError,
    pub caller: Option<instance::Starting>,
}

/// Starts the daemon and supervises until it stops; the exit code once it has served.
pub(crate) fn run(cli: &Cli, daemon: bool, pidfile: Option<PathBuf>) -> Result<i32, StartFailure> {
    let mut caller = None;
    match start(cli, daemon, pidfile, &mut caller) {
        Ok(started) => Ok(serve(started, caller)),
        Err(error) => Err(StartFailure { error, caller }),
    }
}

/// What start-up hands to the main loop.
struct Started {
    sup: supervisor::Supervisor,
    inst: instance::Instance,
    sink: logsink::Sink,
}

/// Every step up to the services started (or resumed). `caller` receives the promise
/// to the caller's process once `--daemon` has detached.
fn start(
    cli: &Cli,
    daemon: bool,
    pidfile: Option<PathBuf>,
    caller: &mut Option<instance::Starting>,
) -> Result<Started, StartError> {
    let carried = take_carried()?;
    let reserve = control::open_reserve();
    let (cfg, plan, overrides) = read_config(cli)?;
    let syslog = daemon_syslog(&cfg, daemon)?;
    let s = cfg.settings.clone();
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(paths::default_socket);
    let (mut inst, listener) = acquire_instance(carried.as_ref(), &socket, pidfile.as_deref())?;
    let out: Box<dyn files::Destination> = if daemon {
        detach(&s, carried.is_none(), &mut inst, caller)?
    } else {
        Box::new(io::stderr())
    };
    let reap_orphans = reaps_orphans(&s, &plan);
    let signals = install_signals(reap_orphans)?;
    let sink = start_log_writer(out, &cfg, &plan, syslog)?;
    let cgroups = detect_cgroups(&socket);
    let (state_dir, saved) = clear_predecessor(&s, &plan, &cgroups, carried.is_some());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut instance_fds = inst.fds(std::os::fd::AsRawFd::as_raw_fd(&listener));
    instance_fds.argv = successor_argv(&overrides, cfg.path.as_deref(), daemon, pidfile.as_deref());
    start_threads(signals, listener, reserve, &tx, &s)?;
    start_watcher(&cfg, &tx);
    log_started(&plan, &socket, reap_orphans);
    let sup = supervisor::Supervisor::new(
        overrides,
        cfg,
        plan,
        tx,
        rx,
        sink.clone(),
        reap_orphans,
        cgroups,
        state_dir,
    );
    let mut sup = build_supervisor(sup, instance_fds, saved, &s);
    match carried {
        Some(c) => sup.resume(c),
        None => sup.start_all(),
    }
    Ok(Started { sup, inst, sink })
}

/// Says the daemon serves (to systemd, and to `run --daemon`'s caller), runs the main
/// loop, and lets go of the instance once it ends.
fn serve(started: Started, caller: Option<instance::Starting>) -> i32 {
    let Started { sup, inst, sink } = started;
    instance::notify_ready();
    if let Some(c) = caller {
        c.ready();
    }
    let outcome = sup.run();
    control::drain(Duration::from_secs(1));
    inst.release();
    let code = match outcome {
        supervisor::Outcome::Clean => {
            log::info!("all services stopped: exiting");
            0
        }
        supervisor::Outcome::Forced => 1,
    };
    // Give the writer a moment to drain what the readers still hold, and the
    // collectors what waits for them; never hang on it.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    sink.flush(Duration::from_secs(2));
    sink.forward().drain(deadline);
    code
}

/// The state a previous image of this process handed over (`upgrade-self`), if any.
fn take_carried() -> Result<Option<Carried>, StartError> {
    resume::take_carried()
        .transpose()
        .map_err(StartError::Carried)
}

/// The configuration and its plan, and the overrides reloads will use: they read the
/// file found now, wherever the daemon's directory is by then.
fn read_config(cli: &Cli) -> Result<(Config, Plan, Overrides), StartError> {
    let (cfg, plan) = crate::load(cli).map_err(StartError::Config)?;
    let mut overrides = cli.overrides.clone();
    overrides.pin(cfg.path.as_deref());
    Ok((cfg, plan, overrides))
}

/// `--daemon` without `log_dir`: the daemon's log goes to the local syslog when one
/// answers at `/dev/log` (or `$ORCHESTRATOR_DEV_LOG`) now; with none, the
/// `log_forward` targets must take it, or there is nowhere to log.
fn daemon_syslog(cfg: &Config, daemon: bool) -> Result<Option<ForwardTarget>, StartError> {
    if !daemon || cfg.settings.log_dir.is_some() {
        return Ok(None);
    }
    let path = std::env::var_os("ORCHESTRATOR_DEV_LOG")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
    if forward::answers(&path) {
        return Ok(Some(ForwardTarget::dev_log(path)));
    }
    if !cfg.settings.log_forward.0.is_empty() {
        return Ok(None);
    }
    Err(StartError::Config(vec![format!(
        "{}: --daemon needs orchestrator.log_dir, a syslog daemon answering at {}, or a log_forward target: the daemon's log has nowhere to go",
        cfg.path.as_ref().map_or("(defaults)".into(), |p| p.display().to_string()),
        path.display()
    )]))
}

/// The instance lock, the pidfile and the listening socket: taken, or adopted from the
/// previous image without ever being let go.
fn acquire_instance(
    carried: Option<&Carried>,
    socket: &Path,
    pidfile: Option<&Path>,
) -> Result<(instance::Instance, UnixListener), StartError> {
    let acquired = match carried {
        Some(c) => {
            let i = &c.instance;
            instance::Instance::adopt(&i.socket, i.lock, i.pidfile.clone(), i.listener)
                .map_err(instance::InstanceError::Io)
        }
        None => instance::Instance::acquire(socket, pidfile),
    };
    acquired.map_err(|e| match e {
        instance::InstanceError::AlreadyRunning(pid) => StartError::AlreadyRunning(pid),
        instance::InstanceError::Io(e) => StartError::Instance(e),
    })
}

/// `--daemon`: opens the daemon's log (log_dir/orchestrator.log, opened and rotated like
/// a service's file; without log_dir, nothing: its records go to syslog) and, unless this
/// is a successor (detached already, and keeping the pid), forks away from the caller
/// and records the daemon's pid.
fn detach(
    s: &Settings,
    fork: bool,
    inst: &mut instance::Instance,
    caller: &mut Option<instance::Starting>,
) -> Result<Box<dyn files::Destination>, StartError> {
    let log = match &s.log_dir {
        Some(dir) => {
            let files = files::FileConfig::of(s).unwrap_or_else(|| files::FileConfig {
                dir: dir.clone(),
                max_bytes: u64::MAX,
                max_files: 0,
                max_total: None,
            });
            let log = files::DaemonLog::open(&files)
                .map_err(|e| StartError::DaemonLog(files.dir.join("orchestrator.log"), e))?;
            Some(log)
        }
        None => None,
    };
    if fork {
        // Descriptor 2 becomes the log file, or /dev/null when syslog has the log.
        let null;
        let stderr = match &log {
            Some(l) => l.file(),
            None => {
                null = std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .map_err(|e| StartError::DaemonLog("/dev/null".into(), e))?;
                &null
            }
        };
        *caller = Some(instance::daemonize(stderr).map_err(StartError::Detach)?);
        inst.record_pid();
    }
    Ok(match log {
        Some(l) => Box::new(l),
        None => Box::new(io::sink()),
    })
}

/// Whether orphans are ours to reap: as PID 1, when asked to, or when a service with
/// `pid_file` daemonizes (its daemon must be reparented to us, so that its exit is seen
/// and it is reaped).
fn reaps_orphans(s: &Settings, plan: &Plan) -> bool {
    let daemonizing = plan
        .services
        .values()
        .any(|sp| sp.process.pid_file.is_some());
    s.subreaper || std::process::id() == 1 || daemonizing
}

/// Registers every signal we handle (before any thread exists), delivers what a
/// handover kept blocked, and becomes a subreaper when orphans are ours.
fn install_signals(reap_orphans: bool) -> Result<signals::Signals, StartError> {
    let signals = signals::register(reap_orphans).map_err(StartError::Signals)?;
    // After a handover, what came during the exec waited, blocked: deliver it now.
    signals::unblock_handled();
    // SAFETY: prctl with these arguments has no memory preconditions.
    if reap_orphans && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(StartError::Subreaper(io::Error::last_os_error()));
    }
    Ok(signals)
}

/// Starts the log writer on `out`, makes it the `log` crate's logger, and logs the
/// plan's notices through it.
fn start_log_writer(
    out: Box<dyn files::Destination>,
    cfg: &Config,
    plan: &Plan,
    syslog: Option<ForwardTarget>,
) -> Result<logsink::Sink, StartError> {
    let s = &cfg.settings;
    let (sink, _thread) =
        logsink::Sink::start(out, s.log_level, s.log_format, files::FileConfig::of(s))
            .map_err(StartError::LogWriter)?;
    if let Some(target) = syslog {
        sink.set_forward_fallback(target);
    }
    sink.set_forward(forward::ForwardConfig::of(s, &cfg.services));
    logsink::install_logger(&sink, s.log_level);
    for n in &plan.notices {
        log::log!(n.level, "{}", n.msg);
    }
    Ok(sink)
}

fn detect_cgroups(socket: &Path) -> cgroup::Cgroups {
    let cgroups = cgroup::Cgroups::detect(socket);
    match &cgroups.tracker {
        Some(h) => log::debug!("service cgroups under {}", h.base.display()),
        None => {
            log::debug!("no writable cgroup hierarchy: services are tracked by process group")
        }
    }
    cgroups
}

/// Kills what a predecessor left running, before anything of ours starts (so that
/// nothing of ours can be mistaken for it), and opens the state_dir, whose counts and
/// history carry on. A successor's cgroups and processes are its own services. A
/// state_dir that cannot be used is reported; supervision goes on without it.
fn clear_predecessor(
    s: &Settings,
    plan: &Plan,
    cgroups: &cgroup::Cgroups,
    successor: bool,
) -> (Option<persist::StateDir>, Option<persist::Saved>) {
    let leftovers = if successor {
        0
    } else {
        cgroups.clean_up_predecessor()
    };
    if leftovers > 0 {
        log::warn!("killed {leftovers} processes left in service cgroups by a previous instance");
    }
    match s.state_dir.as_deref().map(persist::StateDir::open) {
        Some(Ok(sd)) => {
            let saved = if successor { None } else { sd.load() };
            if let Some(saved) = &saved {
                kill_survivors(&sd, saved, plan);
            }
            (Some(sd), saved)
        }
        Some(Err(e)) => {
            log::error!("{e}: run history and restart counts will not be kept");
            (None, None)
        }
        None => (None, None),
    }
}

/// Kills the live process groups a predecessor recorded. Only processes that carry the
/// environment our plan gives the service are proven ours (see persist's opening note).
fn kill_survivors(sd: &persist::StateDir, saved: &persist::Saved, plan: &Plan) {
    let env_of = |name: &str| plan.services.get(name).map(|s| s.process.env.clone());
    let killed = persist::kill_survivors(saved, sd.boot_id(), &env_of);
    if killed > 0 {
        log::warn!("killed {killed} processes left by a previous instance");
    }
}

/// The signal forwarder, the control socket's accept thread and, if configured, the
/// metrics listener (a port in use is reported, not fatal: supervision matters more
/// than the scrape endpoint).
fn start_threads(
    signals: signals::Signals,
    listener: UnixListener,
    reserve: Option<std::fs::File>,
    tx: &crossbeam_channel::Sender<crate::supervise::event::Event>,
    s: &Settings,
) -> Result<(), StartError> {
    signals::forward(signals, tx.clone())
        .and_then(|()| control::serve(listener, tx.clone(), reserve))
        .map_err(StartError::Threads)?;
    if let Some(addr) = &s.metrics_listen {
        // Validated as host:port by config.
        match addr.parse().map_err(|e| format!("{e}")).and_then(|a| {
            crate::control::metrics_http::serve(a, tx.clone()).map_err(|e| e.to_string())
        }) {
            Ok(bound) => log::info!("metrics on http://{bound}/metrics"),
            Err(e) => log::error!("metrics_listen {addr}: {e}"),
        }
    }
    Ok(())
}

/// With `watch_services_dir`, the watcher of `services_dir` and `conf.d`. One that
/// cannot be started is reported, not fatal: the services run, unwatched.
fn start_watcher(cfg: &Config, tx: &crossbeam_channel::Sender<crate::supervise::event::Event>) {
    let s = &cfg.settings;
    if !s.watch_services_dir {
        return;
    }
    let confd = cfg
        .path
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join(crate::config::DROP_INS));
    let settle = Duration::from_millis(s.watch_settle_ms);
    match crate::supervise::watcher::spawn(s.services_dir.clone(), confd, settle, tx.clone()) {
        Ok(()) => log::info!("watching {}", s.services_dir.display()),
        Err(e) => log::error!(
            "watch_services_dir: cannot watch {}: {e}; running unwatched",
            s.services_dir.display()
        ),
    }
}

fn log_started(plan: &Plan, socket: &Path, reap_orphans: bool) {
    log::info!(
        "orchestrator {} started (pid {}, {}, control socket {}{})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        crate::output::count(plan.services.len(), "service", "services"),
        socket.display(),
        if reap_orphans {
            ", reaping orphans"
        } else {
            ""
        }
    );
}

/// The supervisor with what it carries on from: the instance's descriptors for
/// `upgrade-self`, a predecessor's saved counts and history, the hardware watchdog. A
/// watchdog device that cannot be opened is reported and supervision goes on without
/// it: on a box nobody can reach, services running unwatched beat no services at all.
fn build_supervisor(
    mut sup: supervisor::Supervisor,
    instance_fds: instance::InstanceFds,
    saved: Option<persist::Saved>,
    s: &Settings,
) -> supervisor::Supervisor {
    sup.set_instance_fds(instance_fds);
    if let Some(saved) = saved {
        sup.restore(saved);
    }
    if let Some(w) = &s.watchdog {
        match hw_watchdog::Watchdog::open(w) {
            Ok(wd) => sup.arm_watchdog(wd),
            Err(e) => log::error!(
                "watchdog: cannot open {}: {e}; running without it",
                w.device.display()
            ),
        }
    }
    sup
}

/// The argv `upgrade-self` starts the new image with: `run` and this daemon's flags, its
/// paths absolute (the CLI made them so, against the directory we were started in:
/// `--daemon` has moved to / since) and the config file named even when it was looked
/// up, so that the new image reads exactly the files this one does.
fn successor_argv(
    ov: &crate::config::Overrides,
    config: Option<&std::path::Path>,
    daemon: bool,
    pidfile: Option<&std::path::Path>,
) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        std::env::args_os()
            .next()
            .unwrap_or_else(|| "orchestrator".into()),
        "run".into(),
    ];
    let mut flag = |name: &str, value: std::ffi::OsString| {
        argv.push(name.into());
        argv.push(value);
    };
    if let Some(c) = config {
        flag("--config", c.into());
    }
    if let Some(d) = &ov.services_dir {
        flag("--services-dir", d.into());
    }
    if let Some(s) = &ov.socket {
        flag("--socket", s.into());
    }
    if let Some(l) = &ov.log_level {
        flag("--log-level", l.into());
    }
    if let Some(f) = &ov.log_format {
        flag("--log-format", f.into());
    }
    if let Some(p) = pidfile {
        flag("--pidfile", p.into());
    }
    if daemon {
        argv.push("--daemon".into());
    }
    argv
}
