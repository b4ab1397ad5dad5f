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
pub mod layers;
pub mod paths;
mod service_files;
pub mod sockets;
pub mod syscalls;
mod types;

pub use types::*;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where `lookup` looks when neither `--config` nor `$ORCHESTRATOR_CONFIG` names a file.
pub const SYSTEM_CONFIG: &str = "/etc/orchestrator/orchestrator.json";

/// The file as written, before flags and environment are applied.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, deserialize_with = "orchestrator_section")]
    orchestrator: Settings,
    #[serde(default, deserialize_with = "services_section")]
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
        for p in [&mut svc.binary_path, &mut svc.data_dir, &mut svc.pid_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    }
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

thread_local! {
    /// The key path being deserialized, so that serde's errors can say where they are.
    static CONTEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_context(s: &str) {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.push_str(s);
    });
}

fn orchestrator_section<'de, D: Deserializer<'de>>(d: D) -> Result<Settings, D::Error> {
    set_context("orchestrator");
    let s = Settings::deserialize(d)?;
    set_context("");
    Ok(s)
}

fn services_section<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ServiceConfig>, D::Error> {
    struct ServicesVisitor;
    impl<'de> Visitor<'de> for ServicesVisitor {
        type Value = BTreeMap<String, ServiceConfig>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of services by name")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                set_context(&format!("services.{name}"));
                let svc: ServiceConfig = map.next_value()?;
                if out.insert(name.clone(), svc).is_some() {
                    return Err(de::Error::custom(format!("duplicate service `{name}`")));
                }
            }
            set_context("");
            Ok(out)
        }
    }
    d.deserialize_map(ServicesVisitor)
}

/// Parses the text; the error is `LINE:COL: [in KEY: ]message`, ready to follow the file
/// name.
fn parse(text: &str) -> Result<ConfigFile, String> {
    parse_as(text, "")
}

/// Parses the text as a `T` whose keys are those of `context` (`""`: a whole file;
/// `services.NAME`: a sidecar); the error is `LINE:COL: message`, with ` in KEY` when
/// the error lies deeper than `context`.
fn parse_as<T: serde::de::DeserializeOwned>(text: &str, context: &str) -> Result<T, String> {
    set_context(context);
    serde_json::from_str::<T>(text).map_err(|e| located(&e, context))
}

/// A parse error as `LINE:COL: message`, where the message says what was expected and
/// what was written, and (below `top`) in which key. Not generic: one copy for every
/// type parsed.
fn located(e: &serde_json::Error, top: &str) -> String {
    let context = CONTEXT.with(|c| c.borrow().clone());
    set_context("");
    let raw = e.to_string();
    // serde_json appends " at line L column C"; we put the position first instead.
    let msg = match raw.rfind(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw,
    };
    let msg = with_section(with_suggestion(&expected_got(&msg)), &context);
    let place = if context.is_empty() || context == top || e.is_syntax() || e.is_eof() {
        String::new()
    } else {
        format!(" in {context}")
    };
    format!("{}:{}: {msg}{place}", e.line(), e.column())
}

/// Rewrites serde's "invalid type: boolean `true`, expected X" (and "invalid value")
/// into "expected X, got a boolean": what to write first, then what was written.
fn expected_got(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    else {
        return msg.to_string();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else {
        return msg.to_string();
    };
    let quoted = |kind: &str| got.strip_prefix(kind).map(|v| v.trim_matches('`'));
    let got = if got.starts_with("boolean") {
        "a boolean".to_string()
    } else if let Some(v) = got.strip_prefix("string ") {
        format!("the string {v}")
    } else if let Some(v) = quoted("integer ").or_else(|| quoted("floating point ")) {
        format!("the number {v}")
    } else {
        match got {
            "map" => "an object".to_string(),
            "sequence" => "an array".to_string(),
            "unit value" | "null" => "null".to_string(),
            other => other.to_string(),
        }
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "a string" | "a boolean" => expected,
        e if e.starts_with("struct ") || e.starts_with("a map") => "an object",
        other => other,
    };
    format!("expected {expected}, got {got}")
}

/// A key unknown where it stands but valid in another section says where it belongs
/// (`services_dir` written at the top level belongs in `orchestrator`).
fn with_section(msg: String, context: &str) -> String {
    let Some(key) = msg
        .strip_prefix("unknown key `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k)
    else {
        return msg;
    };
    // A key is a field of a section when a null for it is not "unknown there". Parsed
    // from text, as the file is: no other deserializer is compiled in for this.
    let probe = format!("{{{}:null}}", serde_json::Value::String(key.to_string()));
    let known_in = |err: Option<serde_json::Error>| {
        err.is_none_or(|e| !e.to_string().starts_with("unknown field"))
    };
    let settings = known_in(serde_json::from_str::<Settings>(&probe).err());
    let service = known_in(serde_json::from_str::<ServiceConfig>(&probe).err());
    let home = match (context, settings, service) {
        ("", true, _) => "the `orchestrator` section",
        ("", false, true) => {
            "a service's entry under `services` (`\"services\": {\"NAME\": {...}}`)"
        }
        (c, true, false) if c.starts_with("services.") => "the `orchestrator` section",
        ("orchestrator", false, true) => "a service's entry under `services`",
        _ => return msg,
    };
    format!("unknown key `{key}`: it belongs in {home}")
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and unknown variant)
/// into "unknown key `x` (did you mean `a`?)", so that a typo points at its fix. The
/// name `x` is the file's and may hold backticks itself; the valid names are ours and
/// never do, so `x` ends where serde's list of them begins.
fn with_suggestion(msg: &str) -> String {
    let (noun, rest) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        ("key", rest)
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        ("value", rest)
    } else {
        return msg.to_string();
    };
    let (bad, list) = match rest.rfind("`, expected ") {
        Some(i) => (&rest[..i], &rest[i..]),
        None => match rest.rfind("`, there are no ") {
            Some(i) => (&rest[..i], ""),
            None => return msg.to_string(),
        },
    };
    let valid: Vec<&str> = list.split('`').skip(2).step_by(2).collect();
    match nearest(bad, valid.iter().copied()) {
        Some(best) => format!("unknown {noun} `{bad}` (did you mean `{best}`?)"),
        None if valid.is_empty() => format!("unknown {noun} `{bad}`"),
        None => format!(
            "unknown {noun} `{bad}` (expected one of {})",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance where swapping two adjacent characters counts as one edit (optimal
/// string alignment), so that `stauts` is nearer `status` than `start`.
fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, row);
    }
    prev[b.len()]
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
