//! `check` and `discover`: what the configuration and discovery make of this box,
//! printed without starting anything or talking to a daemon. `check` exits 1 when the
//! config is valid but its plan says a service will fail (docs/cli.md), so that a script
//! that checks before it reloads stops there.

use crate::cli::Cli;
use crate::config::{self, discovery};
use crate::control::instance;
use crate::process::{cgroup, hardening};
use crate::supervise::state as service;
use crate::{config_failed, load, print_notices};

/// One line of output. Paths, names and messages here come from the config file and
/// from directory names in services_dir: escaped as the text log escapes a service's
/// output, so that none can drive the terminal or forge another line.
macro_rules! say {
    () => { println!() };
    ($($t:tt)*) => { println!("{}", crate::output::escape::escaped(&format!($($t)*))) };
}

/// `say!` on stderr.
macro_rules! say_err {
    ($($t:tt)*) => { eprintln!("{}", crate::output::escape::escaped(&format!($($t)*))) };
}

pub(crate) fn check(cli: &Cli) -> i32 {
    let (cfg, plan) = match load(cli) {
        Ok(v) => v,
        Err(code) => return code,
    };
    print_notices(&plan, log::Level::Warn);
    let s = &cfg.settings;
    say!(
        "config: {}",
        cfg.path
            .as_ref()
            .map_or("(none found: defaults)".into(), |p| p.display().to_string())
    );
    say!("services_dir: {}", s.services_dir.display());
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(instance::default_socket);
    say!("control_socket: {}", socket.display());
    let cgroups = cgroup::Cgroups::inspect(&socket);
    match &cgroups.tracker {
        Some(h) => say!("cgroups: {}", h.base.display()),
        None => say!("cgroups: none writable (services are tracked by process group)"),
    }
    if let Some(w) = &s.watchdog {
        say!(
            "watchdog: {} fed every {} ms while running: {}",
            w.device.display(),
            w.interval_ms,
            if w.critical.is_empty() {
                "(no critical service: always)".to_string()
            } else {
                w.critical.join(", ")
            }
        );
    }
    say!("services: {}", plan.services.len());
    let mut failing = Vec::new();
    for spec in plan.services.values() {
        if cfg
            .services
            .get(&spec.name)
            .is_some_and(|c| c.binary_path.is_some() && c.pass_service_args == Some(true))
        {
            say_err!(
                "orchestrator: warning: {}: `--service {} --log-level {}` is prepended to the arguments of {}; third-party programs usually reject them: set pass_service_args to false",
                spec.name,
                spec.name,
                s.log_level.as_str(),
                spec.process.binary.display()
            );
        }
        let what = if !spec.enabled {
            "disabled".to_string()
        } else if let Some(e) = spec.binary_error() {
            failing.push(spec.name.as_str());
            format!("will fail: {e}")
        } else if spec.autostart {
            "will start".to_string()
        } else {
            "not started (unconfigured and run_unconfigured is false)".to_string()
        };
        say!();
        say!("{}: {what}", spec.name);
        say!("  binary: {}", spec.process.binary.display());
        let argv: Vec<String> = spec.process.argv.iter().map(|a| shell_quote(a)).collect();
        say!("  argv: {}", argv.join(" "));
        let env: Vec<&str> = spec.process.env.iter().map(|(k, _)| k.as_str()).collect();
        say!("  environment: {}", env.join(" "));
        if let Some(dir) = &spec.process.cwd {
            say!("  data_dir: {}", dir.display());
        }
        if let Some(id) = &spec.process.identity {
            say!(
                "  identity: uid {} gid {} groups {:?}{}",
                id.uid,
                id.gid,
                id.groups,
                id.user
                    .as_ref()
                    .map_or(String::new(), |u| format!(" ({u})"))
            );
        }
        say!(
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
        say!(
            "  stop: {}, then SIGKILL after {} ms",
            service::signal_name(spec.stop_signal),
            spec.stop_timeout.as_millis()
        );
        for line in limit_lines(spec, &cgroups) {
            say!("  limit: {line}");
        }
        match cgroups.oom_detection(spec.process.memory_limit_mib > 0) {
            Ok(how) => say!("  oom detection: from {how}"),
            Err(why) => say!(
                "  oom detection: unavailable ({why}): a kill by the OOM killer reads as killed by SIGKILL"
            ),
        }
        let mut off = Vec::new();
        for l in hardening::describe::lines(spec, &cgroups) {
            match l.how {
                Some(how) => {
                    if how.starts_with("cannot be applied")
                        && spec.enabled
                        && !failing.contains(&spec.name.as_str())
                    {
                        failing.push(spec.name.as_str());
                    }
                    say!("  hardening: {} = {}: {how}", l.key, l.value);
                }
                None => off.push(l.key),
            }
        }
        if !off.is_empty() {
            say!("  hardening off: {}", off.join(", "));
        }
        if !spec.depends_on.is_empty() {
            say!("  depends_on: {}", spec.depends_on.join(", "));
        }
        if let Some(hc) = &spec.health_check {
            let target = match hc.kind {
                config::CheckType::Exec => hc.command.join(" "),
                config::CheckType::Tcp => format!("tcp {}", hc.address.as_deref().unwrap_or("")),
                config::CheckType::Http => format!("GET {}", hc.url.as_deref().unwrap_or("")),
                config::CheckType::Grpc => format!(
                    "grpc {} {:?}",
                    hc.address.as_deref().unwrap_or(""),
                    hc.grpc_service
                ),
            };
            say!(
                "  health_check: {target}, first after {} ms, every {} ms, timeout {} ms, restart after {} failures",
                hc.initial_delay_ms, hc.interval_ms, hc.timeout_ms, hc.failure_threshold
            );
        }
        if spec.process.ready_notify {
            say!("  ready: on READY=1 over NOTIFY_SOCKET");
        }
        if let Some(w) = spec.process.watchdog {
            say!(
                "  watchdog: restart without WATCHDOG=1 for {} ms once running",
                w.as_millis()
            );
        }
        for (i, sock) in spec.process.sockets.iter().enumerate() {
            let mut line = format!("  socket: fd {} {}", 3 + i, sock.listen);
            line.push_str(&format!(
                " name {}",
                sock.name.as_deref().unwrap_or(&spec.name)
            ));
            if let Some(mode) = &sock.mode {
                line.push_str(&format!(" mode {mode}"));
            }
            say!("{line}");
        }
    }
    if failing.is_empty() {
        return 0;
    }
    say_err!(
        "orchestrator: the plan says {} will fail: {}",
        if failing.len() == 1 {
            "1 service"
        } else {
            "these services"
        },
        failing.join(", ")
    );
    1
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

pub(crate) fn discover(cli: &Cli) -> i32 {
    let cfg = match config::load(&cli.overrides) {
        Ok(c) => c,
        Err(e) => return config_failed(&e.0),
    };
    let mut notices = Vec::new();
    let found = discovery::discover(&cfg.settings.services_dir, &mut notices);
    for n in &notices {
        if n.level <= log::Level::Warn {
            say_err!(
                "orchestrator: {}: {}",
                crate::common::level::name(n.level),
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
        say!("{}\t{}\t{configured}", f.name, f.binary.display());
    }
    0
}
