//! The configuration file: serde types documented in docs/configuration.md, the lookup
//! order, the precedence of flags and environment over the file, and validation.
//!
//! Everything a user can get wrong is reported here, before anything starts, as one line
//! per problem naming the file, the key and (for JSON errors) line:column. This module
//! never touches processes; discovery and the plan are built on what it returns.

pub mod accounts;
pub mod capabilities;
pub mod discovery;
pub mod forward;
pub mod hardening;
mod json;
pub mod layers;
pub mod paths;
mod service_files;
pub mod sockets;
pub mod syscalls;
mod types;

pub use json::nearest;
use json::{parse, parse_as};
pub use service_files::{is_drop_in, DROP_INS, SIDECAR};
pub use types::*;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where `lookup` looks when neither `--config` nor `$ORCHESTRATOR_CONFIG` names a file.
pub const SYSTEM_CONFIG: &str = "/etc/orchestrator/orchestrator.json";

/// The file as written, before flags and environment are applied.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, deserialize_with = "json::orchestrator_section")]
    orchestrator: Settings,
    #[serde(default, deserialize_with = "json::services_section")]
    services: BTreeMap<String, ServiceConfig>,
}

/// Every problem found, one line each, already naming file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl ConfigError {
    fn one(msg: String) -> ConfigError {
        ConfigError::new(vec![msg])
    }

    fn new(msgs: Vec<String>) -> ConfigError {
        ConfigError(msgs.into_iter().map(one_line).collect())
    }
}

/// A message as one line: a control character quoted from the file (a newline in a key
/// or a value, say) is shown escaped, so that every problem stays on a line of its own.
pub fn one_line(msg: String) -> String {
    if !msg.contains(char::is_control) {
        return msg;
    }
    msg.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The config file to read, by the lookup order of docs/configuration.md. `Ok(None)`: no
/// file anywhere, so the defaults apply. A file named explicitly (flag or environment)
/// must exist.
pub fn lookup(flag: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    let explicit = flag.map(|p| (p.to_path_buf(), "--config")).or_else(|| {
        std::env::var_os("ORCHESTRATOR_CONFIG")
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), "$ORCHESTRATOR_CONFIG"))
    });
    if let Some((path, from)) = explicit {
        if path.is_file() {
            return Ok(Some(path));
        }
        return Err(ConfigError::one(format!(
            "{}: config file not found (from {from})",
            path.display()
        )));
    }
    for candidate in ["orchestrator.json", SYSTEM_CONFIG] {
        let p = PathBuf::from(candidate);
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

impl Config {
    /// A configuration whose services are all the file's: no drop-in, no sidecar.
    #[cfg(test)]
    pub fn of_file(
        path: Option<PathBuf>,
        settings: Settings,
        services: BTreeMap<String, ServiceConfig>,
    ) -> Config {
        let sources = layers::Sources {
            configured: services.keys().cloned().collect(),
            ..Default::default()
        };
        Config {
            path,
            settings,
            services,
            sources,
        }
    }
}

impl Overrides {
    /// Fixes what every later reload reads to what `run` found at start: the file (or
    /// that there was none), and the environment's relative paths made absolute against
    /// the directory it started in, since `--daemon` moves to / and a reload must not
    /// find another file, or none, there.
    pub fn pin(&mut self, found: Option<&Path>) {
        self.pinned = Some(match found {
            Some(p) => Pinned::File(absolute(p)),
            None => Pinned::Defaults,
        });
        let from_env = |name| env_value(name).map(|v| absolute(Path::new(&v)));
        if self.services_dir.is_none() {
            self.services_dir = from_env("ORCHESTRATOR_SERVICES_DIR");
        }
        if self.socket.is_none() {
            self.socket = from_env("ORCHESTRATOR_SOCKET");
        }
    }
}

/// A config file is read up to this size: anything larger is not one.
const MAX_CONFIG: u64 = 4 << 20;

/// The most rotated files a service may keep (`log_max_files`).
const MAX_LOG_FILES: u32 = 1000;

/// Looks the file up, reads, parses, applies precedence and validates it; then reads
/// the drop-ins beside it and the sidecars in `services_dir` and layers each service's
/// entry (`layers`). An error in the file or a drop-in is an error of the whole
/// configuration; one in a sidecar fails only its service (`Sources::broken`).
pub fn load(ov: &Overrides) -> Result<Config, ConfigError> {
    let (path, file, base, text) = read(ov)?;
    let label = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(defaults)".to_string());
    let mut settings = file.orchestrator;
    let mut errors = Vec::new();
    apply_overrides(&mut settings, ov, &label, &mut errors);
    resolve_paths(&mut settings, &mut BTreeMap::new(), &base);
    validate_settings(&settings, &file.services, &label, &mut errors);
    let path = path.map(|p| absolute(&p));
    let (services, sources) =
        service_files::layered(path.as_deref(), &text, &settings, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigError::new(errors));
    }
    Ok(Config {
        path,
        settings,
        services,
        sources,
    })
}

/// The file as a client sees it: looked up, read and parsed (so a broken file is an
/// error, never a silent fall-back to defaults), its paths made absolute, but neither
/// flags, environment nor validation applied. A client only needs `control_socket`,
/// and must not refuse to talk to a daemon over a problem only the daemon cares about
/// (a dependency cycle, a user that does not exist on this box).
pub fn load_unvalidated(ov: &Overrides) -> Result<Config, ConfigError> {
    let (path, file, base, _) = read(ov)?;
    let (mut settings, mut services) = (file.orchestrator, file.services);
    resolve_paths(&mut settings, &mut services, &base);
    Ok(Config {
        path: path.map(|p| absolute(&p)),
        settings,
        services,
        sources: Default::default(),
    })
}

/// Lookup, read and parse: the file (if any), its contents parsed and as text, and the
/// directory its relative paths start from.
fn read(ov: &Overrides) -> Result<(Option<PathBuf>, ConfigFile, PathBuf, String), ConfigError> {
    let path = match &ov.pinned {
        Some(Pinned::File(p)) => Some(p.clone()),
        Some(Pinned::Defaults) => None,
        None => lookup(ov.config.as_deref())?,
    };
    let (file, base, text) = match &path {
        Some(p) => {
            let text = read_judged(p, "config file").map_err(ConfigError::one)?;
            let file =
                parse(&text).map_err(|e| ConfigError::one(format!("{}:{e}", p.display())))?;
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            (file, absolute(&dir), text)
        }
        None => (
            ConfigFile::default(),
            absolute(Path::new(".")),
            String::new(),
        ),
    };
    Ok((path, file, base, text))
}

/// Reads a file that decides what root runs (the config file, a drop-in, a sidecar):
/// judged by StrictModes first, then a regular file only (a FIFO would hang the start)
/// and bounded. `what` names it in the error, which names the file.
fn read_judged(p: &Path, what: &str) -> Result<String, String> {
    refuse_if_untrusted(p, what)?;
    crate::common::safe_fs::open_regular(p, true)
        .and_then(|(f, _)| {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_CONFIG), &mut t)
                .map(|_| t)
        })
        .map_err(|e| format!("{}: cannot read: {e}", p.display()))
}

/// Precedence, paths and validation on a parsed file: everything `load` does but the
/// file system.
fn settle(
    file: ConfigFile,
    ov: &Overrides,
    label: &str,
    base: &Path,
) -> Result<(Settings, BTreeMap<String, ServiceConfig>), ConfigError> {
    let mut settings = file.orchestrator;
    let mut services = file.services;
    let mut errors = Vec::new();
    apply_overrides(&mut settings, ov, label, &mut errors);
    resolve_paths(&mut settings, &mut services, base);
    validate_settings(&settings, &services, label, &mut errors);
    for (name, svc) in &services {
        if !valid_service_name(name) {
            errors.push(format!("{label}: services.{name}: {INVALID_NAME}"));
        }
        validate_service(&settings, name, svc, &mut |key, msg| {
            errors.push(format!("{label}: services.{name}.{key}: {msg}"))
        });
    }
    if !errors.is_empty() {
        return Err(ConfigError::new(errors));
    }
    Ok((settings, services))
}

/// Parses and validates a file's text as `load` would (no lookup, no environment, no
/// file system): the fuzz target's entry.
pub fn parse_and_validate(text: &str) -> Result<(), ConfigError> {
    let file = parse(text).map_err(|e| ConfigError::one(format!("fuzz:{e}")))?;
    settle(file, &Overrides::default(), "fuzz", Path::new("/")).map(|_| ())
}

/// As root, a config file (or a drop-in, or a sidecar) another user can change would
/// let them run anything as root: it must pass sshd's StrictModes rule
/// (`safe_fs::untrusted`), relative paths such as `./orchestrator.json` included. (Not
/// a setting: the file itself cannot be trusted to turn this off.)
fn refuse_if_untrusted(p: &Path, what: &str) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    match crate::common::safe_fs::untrusted(p) {
        Some(u) => Err(format!(
            "{}: refusing a {what} that another user could change: {u} ({})",
            p.display(),
            crate::common::safe_fs::RULE
        )),
        None => Ok(()),
    }
}

fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    normalize(&joined)
}

/// Removes `.` components and trailing separators without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn resolve_paths(
    settings: &mut Settings,
    services: &mut BTreeMap<String, ServiceConfig>,
    base: &Path,
) {
    let fix = |p: &mut PathBuf| *p = normalize(&base.join(&*p));
    fix(&mut settings.services_dir);
    for p in [
        &mut settings.control_socket,
        &mut settings.log_dir,
        &mut settings.state_dir,
    ]
    .into_iter()
    .flatten()
    {
        fix(p);
    }
    if let Some(w) = &mut settings.watchdog {
        fix(&mut w.device);
    }
    for svc in services.values_mut() {
        for (_, p) in service_paths(svc) {
            if let Some(p) = p {
                fix(p);
            }
        }
    }
}

/// A service's paths, by key, that are relative to the directory of the file that
/// sets them.
fn service_paths(svc: &mut ServiceConfig) -> [(&'static str, &mut Option<PathBuf>); 3] {
    [
        ("binary_path", &mut svc.binary_path),
        ("data_dir", &mut svc.data_dir),
        ("pid_file", &mut svc.pid_file),
    ]
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Flag, then environment, then the file. Flag and environment paths are relative to the
/// current directory, like any command-line path; so they are made absolute here.
fn apply_overrides(s: &mut Settings, ov: &Overrides, label: &str, errors: &mut Vec<String>) {
    let cwd = std::env::current_dir().unwrap_or_default();
    if let Some(dir) = ov
        .services_dir
        .clone()
        .or_else(|| env_value("ORCHESTRATOR_SERVICES_DIR").map(PathBuf::from))
    {
        s.services_dir = normalize(&cwd.join(dir));
    }
    if let Some(sock) = ov
        .socket
        .clone()
        .or_else(|| env_value("ORCHESTRATOR_SOCKET").map(PathBuf::from))
    {
        s.control_socket = Some(normalize(&cwd.join(sock)));
    }
    let level = ov
        .log_level
        .clone()
        .map(|v| (v, "--log-level"))
        .or_else(|| env_value("ORCHESTRATOR_LOG_LEVEL").map(|v| (v, "ORCHESTRATOR_LOG_LEVEL")));
    if let Some((v, from)) = level {
        match LogLevel::parse(&v) {
            Some(l) => s.log_level = l,
            None => errors.push(format!(
                "{label}: {from}: unknown log level `{v}` (expected error, warn, info, debug or trace)"
            )),
        }
    }
    let format = ov
        .log_format
        .clone()
        .map(|v| (v, "--log-format"))
        .or_else(|| env_value("ORCHESTRATOR_LOG_FORMAT").map(|v| (v, "ORCHESTRATOR_LOG_FORMAT")));
    if let Some((v, from)) = format {
        match LogFormat::parse(&v) {
            Some(f) => s.log_format = f,
            None => errors.push(format!(
                "{label}: {from}: unknown log format `{v}` (expected text or json)"
            )),
        }
    }
}

/// What is wrong with a name `valid_service_name` refuses.
const INVALID_NAME: &str =
    "invalid service name: use 1-64 characters of A-Z a-z 0-9 . _ -, not starting with `.`";

/// docs/configuration.md: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or a number into a signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The `orchestrator` section (`services`: the file's, for the watchdog's names).
fn validate_settings(
    s: &Settings,
    services: &BTreeMap<String, ServiceConfig>,
    label: &str,
    errors: &mut Vec<String>,
) {
    let mut err = |key: &str, msg: String| errors.push(format!("{label}: {key}: {msg}"));
    if !(0.0..=1.0).contains(&s.backoff_jitter) || s.backoff_jitter.is_nan() {
        err(
            "orchestrator.backoff_jitter",
            format!("must be between 0 and 1, not {}", s.backoff_jitter),
        );
    }
    if s.max_line_bytes == 0 {
        err("orchestrator.max_line_bytes", "must be at least 1".into());
    }
    // Each rotation renames every kept file on the log writer's thread: a huge count
    // would stall every service's output there.
    if s.log_max_files > MAX_LOG_FILES {
        err(
            "orchestrator.log_max_files",
            format!("must be at most {MAX_LOG_FILES}, not {}", s.log_max_files),
        );
    }
    if s.initial_backoff_ms > s.max_backoff_ms {
        err(
            "orchestrator.initial_backoff_ms",
            format!(
                "{} is above max_backoff_ms ({})",
                s.initial_backoff_ms, s.max_backoff_ms
            ),
        );
    }
    if let Some(addr) = &s.metrics_listen {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            err(
                "orchestrator.metrics_listen",
                format!("`{addr}` is not host:port (for example 127.0.0.1:9100)"),
            );
        }
    }
    if let Some(w) = &s.watchdog {
        // The device's timeout is set from it in whole seconds (an int): a day is far
        // beyond any driver's range and keeps every deadline computable.
        if !(1..=86_400_000).contains(&w.interval_ms) {
            err(
                "orchestrator.watchdog.interval_ms",
                format!("must be between 1 and 86400000, not {}", w.interval_ms),
            );
        }
        for c in &w.critical {
            if !services.contains_key(c) && !valid_service_name(c) {
                err(
                    "orchestrator.watchdog.critical",
                    format!("invalid service name `{c}`"),
                );
            }
        }
    }
}

/// One service's entry: `err` gets each problem's key (below `services.NAME`) and
/// message, so that the caller can say which file the key came from.
fn validate_service(
    s: &Settings,
    name: &str,
    svc: &ServiceConfig,
    err: &mut dyn FnMut(&str, String),
) {
    if parse_signal(&svc.stop_signal).is_none() {
        err(
            "stop_signal",
            format!("unknown signal `{}`", svc.stop_signal),
        );
    }
    for (k, v) in &svc.environment {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            err("environment", format!("invalid variable name `{k}`"));
        }
        if v.contains('\0') {
            err("environment", format!("value of `{k}` contains a NUL byte"));
        }
    }
    if svc.args.iter().any(|a| a.contains('\0')) {
        err("args", "an argument contains a NUL byte".into());
    }
    let init = svc.initial_backoff_ms.unwrap_or(s.initial_backoff_ms);
    let max = svc.max_backoff_ms.unwrap_or(s.max_backoff_ms);
    if init > max {
        err(
            "initial_backoff_ms",
            format!("{init} is above max_backoff_ms ({max})"),
        );
    }
    if svc.watchdog_ms == Some(0) {
        err("watchdog_ms", "must be at least 1".into());
    }
    if svc.limits.cpu_percent == Some(0) {
        err("limits.cpu_percent", "must be at least 1".into());
    }
    if let Some(hc) = &svc.health_check {
        match hc.kind {
            CheckType::Exec if hc.command.is_empty() => {
                err("health_check.command", "required for type exec".into())
            }
            CheckType::Tcp if hc.address.is_none() => {
                err("health_check.address", "required for type tcp".into())
            }
            CheckType::Grpc if hc.address.is_none() => {
                err("health_check.address", "required for type grpc".into())
            }
            CheckType::Http if hc.url.is_none() => {
                err("health_check.url", "required for type http".into())
            }
            _ => {}
        }
        if hc.failure_threshold == 0 {
            err(
                "health_check.failure_threshold",
                "must be at least 1".into(),
            );
        }
    }
    hardening::validate(svc, &mut |k, msg| err(k, msg));
    for dep in &svc.depends_on {
        if dep == name {
            err("depends_on", format!("`{name}` depends on itself"));
        }
    }
    for s in &svc.sockets {
        if let Err(e) = sockets::check(s) {
            err("sockets", e);
        }
    }
}

#[cfg(test)]
mod tests;
