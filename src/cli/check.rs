//! `check` and `discover`: what the configuration and discovery make of this box,
//! printed without starting anything or talking to a daemon. `check` builds a `Report`
//! first and prints it after (`print`), so that what it says can be read by a test
//! without capturing output. It exits 1 when the config is valid but its plan says a
//! service will fail (docs/cli.md), so that a script that checks before it reloads
//! stops there.

use crate::cli::Cli;
use crate::config::{self, discovery, layers::Kind, paths, Config};
use crate::process::{cgroup, hardening};
use crate::supervise::state as service;
use std::fmt;

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

/// What `check` found. Each text field is what `print` shows after its label.
#[derive(Debug)]
pub(crate) struct Report {
    /// Discovery's notices at warning level or worse, printed first, on stderr.
    pub notices: Vec<(log::Level, String)>,
    pub config: String,
    pub services_dir: String,
    pub control_socket: String,
    pub cgroups: String,
    pub watchdog: Option<String>,
    pub services: Vec<ServiceReport>,
}

/// One service's plan.
#[derive(Debug)]
pub(crate) struct ServiceReport {
    pub name: String,
    pub verdict: Verdict,
    /// Whether the plan says the service will fail: its binary, or a hardening key that
    /// cannot be applied to an enabled service.
    pub fails: bool,
    /// A warning about its configuration, printed on stderr before its block.
    pub warning: Option<String>,
    pub binary: String,
    pub argv: String,
    pub environment: String,
    pub data_dir: Option<String>,
    pub identity: Option<String>,
    pub restart: String,
    pub stop: String,
    pub limits: Vec<String>,
    pub oom_detection: String,
    /// `key = value: how` for each hardening key that is on.
    pub hardening: Vec<String>,
    pub hardening_off: Vec<&'static str>,
    pub depends_on: Vec<String>,
    pub health_check: Option<String>,
    pub ready_notify: bool,
    pub watchdog: Option<String>,
    pub sockets: Vec<String>,
    /// Where each key that is not a default came from: `key: KIND FILE`.
    pub sources: Vec<String>,
}

/// What the daemon would do with a service at start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Disabled,
    WillFail(String),
    WillStart,
    /// Unconfigured, and run_unconfigured is false.
    NotStarted,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Disabled => f.write_str("disabled"),
            Verdict::WillFail(e) => write!(f, "will fail: {e}"),
            Verdict::WillStart => f.write_str("will start"),
            Verdict::NotStarted => {
                f.write_str("not started (unconfigured and run_unconfigured is false)")
            }
        }
    }
}

impl Report {
    /// The services the plan says will fail, in the plan's order.
    pub fn failing(&self) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.fails)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// 1 when the plan says a service will fail, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.services.iter().any(|s| s.fails))
    }
}

/// `check`: the report on the configuration found, or its errors, one line each.
pub(crate) fn check(cli: &Cli) -> Result<Report, Vec<String>> {
    let (cfg, plan) = crate::load(cli)?;
    Ok(report(&cfg, &plan))
}

fn report(cfg: &Config, plan: &discovery::Plan) -> Report {
    let s = &cfg.settings;
    let socket = s
        .control_socket
        .clone()
        .unwrap_or_else(paths::default_socket);
    let cgroups = cgroup::Cgroups::inspect(&socket);
    Report {
        notices: plan
            .notices
            .iter()
            .filter(|n| n.level <= log::Level::Warn)
            .map(|n| (n.level, n.msg.clone()))
            .collect(),
        config: cfg
            .path
            .as_ref()
            .map_or("(none found: defaults)".into(), |p| p.display().to_string()),
        services_dir: s.services_dir.display().to_string(),
        control_socket: socket.display().to_string(),
        cgroups: match &cgroups.tracker {
            Some(h) => h.base.display().to_string(),
            None => "none writable (services are tracked by process group)".into(),
        },
        watchdog: s.watchdog.as_ref().map(watchdog_line),
        services: plan
            .services
            .values()
            .map(|spec| service_report(spec, cfg, &cgroups))
            .collect(),
    }
}

fn watchdog_line(w: &config::Watchdog) -> String {
    format!(
        "{} fed every {} ms while running: {}",
        w.device.display(),
        w.interval_ms,
        if w.critical.is_empty() {
            "(no critical service: always)".to_string()
        } else {
            w.critical.join(", ")
        }
    )
}

fn service_report(
    spec: &discovery::ServiceSpec,
    cfg: &Config,
    cgroups: &cgroup::Cgroups,
) -> ServiceReport {
    let verdict = verdict(spec);
    let (hardening, hardening_off, unappliable) = hardening_lines(spec, cgroups);
    let p = &spec.process;
    ServiceReport {
        name: spec.name.clone(),
        fails: matches!(verdict, Verdict::WillFail(_)) || (spec.enabled && unappliable),
        verdict,
        warning: service_args_warning(spec, cfg),
        binary: p.binary.display().to_string(),
        argv: p
            .argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        environment: p
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        data_dir: p.cwd.as_ref().map(|d| d.display().to_string()),
        identity: p.identity.as_ref().map(identity_line),
        restart: restart_line(spec),
        stop: format!(
            "{}, then SIGKILL after {} ms",
            service::signal_name(spec.stop_signal),
            spec.stop_timeout.as_millis()
        ),
        limits: limit_lines(spec, cgroups),
        oom_detection: oom_line(cgroups, p.memory_limit_mib > 0),
        hardening,
        hardening_off,
        depends_on: spec.depends_on.clone(),
        health_check: spec.health_check.as_ref().map(health_line),
        ready_notify: p.ready_notify,
        watchdog: p.watchdog.map(|w| {
            format!(
                "restart without WATCHDOG=1 for {} ms once running",
                w.as_millis()
            )
        }),
        sockets: socket_lines(spec),
        sources: cfg
            .sources
            .of(&spec.name)
            .into_iter()
            .flatten()
            .map(|(key, origin)| format!("{key}: {origin}"))
            .collect(),
    }
}

fn verdict(spec: &discovery::ServiceSpec) -> Verdict {
    if !spec.enabled {
        Verdict::Disabled
    } else if let Some(e) = spec.binary_error() {
        Verdict::WillFail(e)
    } else if spec.autostart {
        Verdict::WillStart
    } else {
        Verdict::NotStarted
    }
}

/// Our own flags given to a program named by `binary_path`, which is rarely ours.
fn service_args_warning(spec: &discovery::ServiceSpec, cfg: &Config) -> Option<String> {
    let configured = cfg.services.get(&spec.name)?;
    (configured.binary_path.is_some() && configured.pass_service_args == Some(true)).then(|| {
        format!(
            "{}: `--service {} --log-level {}` is prepended to the arguments of {}; third-party programs usually reject them: set pass_service_args to false",
            spec.name,
            spec.name,
            cfg.settings.log_level.as_str(),
            spec.process.binary.display()
        )
    })
}

fn identity_line(id: &discovery::Identity) -> String {
    let user = id
        .user
        .as_ref()
        .map_or(String::new(), |u| format!(" ({u})"));
    format!("uid {} gid {} groups {:?}{user}", id.uid, id.gid, id.groups)
}

/// Where an OOM kill is read from, or why it cannot be told from a SIGKILL.
fn oom_line(cgroups: &cgroup::Cgroups, memory_limited: bool) -> String {
    match cgroups.oom_detection(memory_limited) {
        Ok(how) => format!("from {how}"),
        Err(why) => {
            format!("unavailable ({why}): a kill by the OOM killer reads as killed by SIGKILL")
        }
    }
}

fn restart_line(spec: &discovery::ServiceSpec) -> String {
    format!(
        "{}, max {} attempts{}, backoff {}..{} ms, jitter {}",
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
    )
}

/// The hardening keys that are on (`key = value: how`), those that are off, and
/// whether one of them cannot be applied here.
fn hardening_lines(
    spec: &discovery::ServiceSpec,
    cgroups: &cgroup::Cgroups,
) -> (Vec<String>, Vec<&'static str>, bool) {
    let (mut on, mut off, mut unappliable) = (Vec::new(), Vec::new(), false);
    for l in hardening::describe::lines(spec, cgroups) {
        match l.how {
            Some(how) => {
                unappliable |= how.starts_with("cannot be applied");
                on.push(format!("{} = {}: {how}", l.key, l.value));
            }
            None => off.push(l.key),
        }
    }
    (on, off, unappliable)
}

fn health_line(hc: &config::HealthCheck) -> String {
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
    format!(
        "{target}, first after {} ms, every {} ms, timeout {} ms, restart after {} failures",
        hc.initial_delay_ms, hc.interval_ms, hc.timeout_ms, hc.failure_threshold
    )
}

/// Each socket with the descriptor it arrives on (3 onwards, in order).
fn socket_lines(spec: &discovery::ServiceSpec) -> Vec<String> {
    let sockets = spec.process.sockets.iter().enumerate();
    sockets
        .map(|(i, sock)| {
            let name = sock.name.as_deref().unwrap_or(&spec.name);
            let mut line = format!("fd {} {} name {name}", 3 + i, sock.listen);
            if let Some(mode) = &sock.mode {
                line.push_str(&format!(" mode {mode}"));
            }
            line
        })
        .collect()
}

/// Prints `report` as `check` shows it: the plan on stdout; notices, warnings and the
/// services that will fail on stderr.
pub(crate) fn print(report: &Report) {
    for (level, msg) in &report.notices {
        eprintln!(
            "orchestrator: {}: {}",
            crate::common::level::name(*level),
            crate::output::escape::escaped(msg)
        );
    }
    say!("config: {}", report.config);
    say!("services_dir: {}", report.services_dir);
    say!("control_socket: {}", report.control_socket);
    say!("cgroups: {}", report.cgroups);
    if let Some(w) = &report.watchdog {
        say!("watchdog: {w}");
    }
    say!("services: {}", report.services.len());
    for s in &report.services {
        print_service(s);
    }
    let failing = report.failing();
    if !failing.is_empty() {
        say_err!(
            "orchestrator: the plan says {} will fail: {}",
            if failing.len() == 1 {
                "1 service"
            } else {
                "these services"
            },
            failing.join(", ")
        );
    }
}

fn print_service(s: &ServiceReport) {
    if let Some(w) = &s.warning {
        say_err!("orchestrator: warning: {w}");
    }
    say!();
    say!("{}: {}", s.name, s.verdict);
    say!("  binary: {}", s.binary);
    say!("  argv: {}", s.argv);
    say!("  environment: {}", s.environment);
    if let Some(dir) = &s.data_dir {
        say!("  data_dir: {dir}");
    }
    if let Some(id) = &s.identity {
        say!("  identity: {id}");
    }
    say!("  restart: {}", s.restart);
    say!("  stop: {}", s.stop);
    for line in &s.limits {
        say!("  limit: {line}");
    }
    say!("  oom detection: {}", s.oom_detection);
    for line in &s.hardening {
        say!("  hardening: {line}");
    }
    if !s.hardening_off.is_empty() {
        say!("  hardening off: {}", s.hardening_off.join(", "));
    }
    if !s.depends_on.is_empty() {
        say!("  depends_on: {}", s.depends_on.join(", "));
    }
    if let Some(hc) = &s.health_check {
        say!("  health_check: {hc}");
    }
    if s.ready_notify {
        say!("  ready: on READY=1 over NOTIFY_SOCKET");
    }
    if let Some(w) = &s.watchdog {
        say!("  watchdog: {w}");
    }
    for line in &s.sockets {
        say!("  socket: {line}");
    }
    for line in &s.sources {
        say!("  from {line}");
    }
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

/// `discover`: the binaries found in services_dir, or the config's errors.
pub(crate) fn discover(cli: &Cli) -> Result<i32, Vec<String>> {
    let cfg = config::load(&cli.overrides).map_err(|e| e.0)?;
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
    // A directory whose sidecar names the binary is a service without NAME/NAME.
    let mut all = found;
    for (name, svc) in &cfg.services {
        let Some(o) = cfg.sources.origin(name, "binary_path") else {
            continue;
        };
        let at = all.partition_point(|a| a.name < *name);
        if o.kind == Kind::Sidecar && all.get(at).is_none_or(|a| a.name != *name) {
            let binary = svc.binary_path.clone().unwrap_or_default();
            let name = name.clone();
            all.insert(at, discovery::Found { name, binary });
        }
    }
    for f in all {
        let configured = if cfg.sources.is_configured(&f.name) {
            "configured"
        } else {
            "unconfigured"
        };
        say!("{}\t{}\t{configured}", f.name, f.binary.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{discovery::BinaryProblem, ServiceConfig, Settings};

    fn plan_of(specs: Vec<discovery::ServiceSpec>) -> discovery::Plan {
        discovery::Plan {
            services: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
            notices: Vec::new(),
        }
    }

    fn config_of(services: Vec<(&str, ServiceConfig)>) -> Config {
        Config::of_file(
            None,
            Settings::default(),
            services
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect(),
        )
    }

    #[test]
    fn a_plan_that_starts_everything_exits_zero() {
        let plan = plan_of(vec![discovery::test_spec("web")]);
        let r = report(&config_of(Vec::new()), &plan);
        assert_eq!(r.config, "(none found: defaults)");
        assert_eq!(r.services.len(), 1);
        let web = &r.services[0];
        assert_eq!(web.verdict, Verdict::WillStart);
        assert_eq!(web.verdict.to_string(), "will start");
        assert!(!web.fails);
        assert_eq!(web.binary, "/bin/true");
        assert!(web.warning.is_none());
        assert!(
            web.oom_detection.starts_with("from ")
                || web.oom_detection.starts_with("unavailable ("),
            "{}",
            web.oom_detection
        );
        assert!(r.failing().is_empty());
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn a_missing_binary_fails_an_enabled_service_only() {
        let mut missing = discovery::test_spec("db");
        missing.binary_problem = Some(BinaryProblem::Missing);
        let mut off = discovery::test_spec("old");
        off.enabled = false;
        off.binary_problem = Some(BinaryProblem::Missing);
        let plan = plan_of(vec![missing, off, discovery::test_spec("web")]);
        let r = report(&config_of(Vec::new()), &plan);
        let db = &r.services[0];
        assert!(
            matches!(db.verdict, Verdict::WillFail(_)),
            "{:?}",
            db.verdict
        );
        assert!(db.verdict.to_string().starts_with("will fail: "));
        assert_eq!(r.services[1].verdict, Verdict::Disabled);
        assert!(!r.services[1].fails);
        assert_eq!(r.failing(), vec!["db"]);
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn service_args_for_a_foreign_binary_are_warned_about() {
        let foreign = ServiceConfig {
            binary_path: Some("/bin/true".into()),
            pass_service_args: Some(true),
            ..ServiceConfig::default()
        };
        let cfg = config_of(vec![("web", foreign), ("api", ServiceConfig::default())]);
        let plan = plan_of(vec![
            discovery::test_spec("web"),
            discovery::test_spec("api"),
        ]);
        let r = report(&cfg, &plan);
        let api = &r.services[0];
        assert!(api.warning.is_none());
        let web = &r.services[1];
        let w = web.warning.as_deref().unwrap_or_default();
        assert!(w.starts_with("web: `--service web --log-level "), "{w}");
        assert!(w.ends_with("set pass_service_args to false"), "{w}");
        // A warning is not a failure.
        assert_eq!(r.exit_code(), 0);
    }
}
