//! `run`: the daemon's start-up in the one order that is safe: configuration (exit 2 on
//! error, nothing started), the instance lock and socket (exit 1 if another instance
//! runs), `--daemon`'s fork while still single-threaded, signal registration before any
//! thread, then the threads and the main loop.

use crate::cli::Cli;
use crate::config::paths;
use crate::control::{instance, socket as control};
use crate::output::{files, sink as logsink};
use crate::process::{cgroup, signals};
use crate::supervise::{persist, resume, supervisor, watchdog};
use crate::{config_failed, load};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn run(cli: &Cli, daemon: bool, pidfile: Option<PathBuf>) -> i32 {
    let mut starting = None;
    let code = serve(cli, daemon, pidfile, &mut starting);
    // Detached, and failed before it served: the caller's process exits with this.
    if let Some(s) = starting {
        s.failed(code);
    }
    code
}

/// `run` itself; `starting` holds the detached daemon's promise to the caller's
/// process until it is kept.
fn serve(
    cli: &Cli,
    daemon: bool,
    pidfile: Option<PathBuf>,
    starting: &mut Option<instance::Starting>,
) -> i32 {
    // A previous image of this process handed its state over (`upgrade-self`).
    let carried = match resume::take_carried() {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("orchestrator: upgrade-self: {e}");
            return 1;
        }
    };
    let reserve = control::open_reserve();
    let (cfg, plan) = match load(cli) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let s = cfg.settings.clone();
    // Reloads read the file found now, wherever the daemon's directory is by then.
    let mut overrides = cli.overrides.clone();
    overrides.pin(cfg.path.as_deref());
    if daemon && s.log_dir.is_none() {
        return config_failed(&[format!(
            "{}: --daemon needs orchestrator.log_dir: the daemon's log goes to log_dir/orchestrator.log",
            cfg.path.as_ref().map_or("(defaults)".into(), |p| p.display().to_string())
        )]);
    }
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(paths::default_socket);
    let acquired = match &carried {
        Some(c) => {
            let i = &c.instance;
            instance::Instance::adopt(&i.socket, i.lock, i.pidfile.clone(), i.listener)
                .map_err(instance::InstanceError::Io)
        }
        None => instance::Instance::acquire(&socket, pidfile.as_deref()),
    };
    let (mut inst, listener) = match acquired {
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
    // With --daemon, the daemon's log is log_dir/orchestrator.log, opened and rotated
    // like a service's file (`files::DaemonLog`); otherwise stderr.
    let mut out: Box<dyn files::Destination> = Box::new(std::io::stderr());
    if daemon {
        let files = files::FileConfig::of(&s).unwrap_or_else(|| files::FileConfig {
            dir: s.log_dir.clone().unwrap_or_default(),
            max_bytes: u64::MAX,
            max_files: 0,
            max_total: None,
        });
        let log = match files::DaemonLog::open(&files) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "orchestrator: cannot open {}: {e}",
                    files.dir.join("orchestrator.log").display()
                );
                return 1;
            }
        };
        // A successor is detached already, and keeps the pid.
        if carried.is_none() {
            match instance::daemonize(log.file()) {
                Ok(s) => *starting = Some(s),
                Err(e) => {
                    eprintln!("orchestrator: cannot detach: {e}");
                    return 1;
                }
            }
            inst.record_pid();
        }
        out = Box::new(log);
    }
    let pid1 = std::process::id() == 1;
    // A service with `pid_file` daemonizes: its daemon must be reparented to us, so
    // that its exit is seen and it is reaped.
    let daemonizing = plan
        .services
        .values()
        .any(|sp| sp.process.pid_file.is_some());
    let reap_orphans = s.subreaper || pid1 || daemonizing;
    let signals = match signals::register(reap_orphans) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchestrator: cannot install signal handlers: {e}");
            return 1;
        }
    };
    // After a handover, what came during the exec waited, blocked: deliver it now.
    signals::unblock_handled();
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
    let (sink, _sink_thread) =
        match logsink::Sink::start(out, s.log_level, s.log_format, files::FileConfig::of(&s)) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("orchestrator: cannot start the log writer: {e}");
                return 1;
            }
        };
    logsink::install_logger(&sink, s.log_level);
    for n in &plan.notices {
        log::log!(n.level, "{}", n.msg);
    }
    let cgroups = cgroup::Cgroups::detect(&socket);
    match &cgroups.tracker {
        Some(h) => log::debug!("service cgroups under {}", h.base.display()),
        None => {
            log::debug!("no writable cgroup hierarchy: services are tracked by process group")
        }
    }
    // A successor's cgroups hold its own services.
    let leftovers = match carried {
        Some(_) => 0,
        None => cgroups.clean_up_predecessor(),
    };
    if leftovers > 0 {
        log::warn!("killed {leftovers} processes left in service cgroups by a previous instance");
    }
    // What a predecessor recorded: its live process groups go (before anything starts,
    // so nothing of ours can be mistaken for them), its counts and history carry on. A
    // state_dir that cannot be used is reported; supervision goes on without it.
    let (state_dir, saved) = match s.state_dir.as_deref().map(persist::StateDir::open) {
        Some(Ok(sd)) => {
            let saved = if carried.is_some() { None } else { sd.load() };
            if let Some(saved) = &saved {
                // Only processes that carry the environment our plan gives the service
                // are proven ours (see persist's opening note).
                let env_of = |name: &str| plan.services.get(name).map(|s| s.process.env.clone());
                let killed = persist::kill_survivors(saved, sd.boot_id(), &env_of);
                if killed > 0 {
                    log::warn!("killed {killed} processes left by a previous instance");
                }
            }
            (Some(sd), saved)
        }
        Some(Err(e)) => {
            log::error!("{e}: run history and restart counts will not be kept");
            (None, None)
        }
        None => (None, None),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut instance_fds = inst.fds(std::os::fd::AsRawFd::as_raw_fd(&listener));
    instance_fds.argv = successor_argv(&overrides, cfg.path.as_deref(), daemon, pidfile.as_deref());
    if let Err(e) = signals::forward(signals, tx.clone())
        .and_then(|()| control::serve(listener, tx.clone(), reserve))
    {
        eprintln!("orchestrator: cannot start: {e}");
        return 1;
    }
    if let Some(addr) = &s.metrics_listen {
        // Validated as host:port by config; a port in use is reported, not fatal:
        // supervision matters more than the scrape endpoint.
        match addr.parse().map_err(|e| format!("{e}")).and_then(|a| {
            crate::control::metrics_http::serve(a, tx.clone()).map_err(|e| e.to_string())
        }) {
            Ok(bound) => log::info!("metrics on http://{bound}/metrics"),
            Err(e) => log::error!("metrics_listen {addr}: {e}"),
        }
    }
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
    let mut sup = supervisor::Supervisor::new(
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
    sup.set_instance_fds(instance_fds);
    if let Some(saved) = saved {
        sup.restore(saved);
    }
    // A device that cannot be opened is reported and supervision goes on without it:
    // on a box nobody can reach, services running unwatched beat no services at all.
    if let Some(w) = &s.watchdog {
        match watchdog::Watchdog::open(w) {
            Ok(wd) => sup.arm_watchdog(wd),
            Err(e) => log::error!(
                "watchdog: cannot open {}: {e}; running without it",
                w.device.display()
            ),
        }
    }
    match carried {
        Some(c) => sup.resume(c),
        None => sup.start_all(),
    }
    instance::notify_ready();
    if let Some(s) = starting.take() {
        s.ready();
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
    // Give the writer a moment to drain what the readers still hold; never hang on it.
    sink.flush(Duration::from_secs(2));
    code
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
