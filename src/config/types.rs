//! The configuration file's types, documented in docs/configuration.md: what each key
//! holds and its default. Deserializing checks shapes and names; `validate` (in `mod.rs`)
//! checks values.

use serde::{de, Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        crate::common::level::name(self.level())
    }

    /// The `log` crate's level of the same name.
    pub fn level(self) -> log::Level {
        match self {
            LogLevel::Error => log::Level::Error,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Info => log::Level::Info,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Trace => log::Level::Trace,
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    pub fn to_filter(self) -> log::LevelFilter {
        self.level().to_level_filter()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl<'de> Deserialize<'de> for RestartPolicy {
    /// A string, so that `"restart": true` is told which strings there are.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["always", "on-failure", "never"];
        struct Policy;
        impl de::Visitor<'_> for Policy {
            type Value = RestartPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one of always, on-failure, never")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RestartPolicy, E> {
                match v {
                    "always" => Ok(RestartPolicy::Always),
                    "on-failure" => Ok(RestartPolicy::OnFailure),
                    "never" => Ok(RestartPolicy::Never),
                    _ => Err(E::unknown_variant(v, NAMES)),
                }
            }
        }
        d.deserialize_str(Policy)
    }
}

/// Durations are plain numbers of milliseconds: `"1s"` is refused saying so.
pub(crate) mod millis {
    use serde::{de, Deserialize, Deserializer};

    struct Millis(u64);

    impl<'de> Deserialize<'de> for Millis {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl de::Visitor<'_> for V {
                type Value = Millis;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number of milliseconds")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                    Ok(Millis(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                    u64::try_from(v)
                        .map(Millis)
                        .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                }
            }
            d.deserialize_u64(V)
        }
    }

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Millis::deserialize(d).map(|m| m.0)
    }

    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Millis>::deserialize(d).map(|m| m.map(|m| m.0))
    }

    /// `one` where `null` counts as absent (see `nullable`).
    pub fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        opt(d).map(Option::unwrap_or_default)
    }
}

/// `ready`: how a service says it is up, besides its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ReadyMode {
    /// `READY=1` on `NOTIFY_SOCKET` (sd_notify).
    #[serde(rename = "notify")]
    Notify,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// The `orchestrator` section. Field names are the contract; defaults are those of
/// docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub services_dir: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub auto_restart: bool,
    pub max_restart_attempts: u32,
    #[serde(deserialize_with = "millis::one")]
    pub initial_backoff_ms: u64,
    #[serde(deserialize_with = "millis::one")]
    pub max_backoff_ms: u64,
    pub backoff_jitter: f64,
    #[serde(deserialize_with = "millis::one")]
    pub reset_after_ms: u64,
    #[serde(deserialize_with = "millis::one")]
    pub stop_timeout_ms: u64,
    #[serde(deserialize_with = "millis::one")]
    pub shutdown_timeout_ms: u64,
    pub control_socket: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    pub log_max_total_bytes: Option<u64>,
    pub max_line_bytes: usize,
    pub run_unconfigured: bool,
    pub subreaper: bool,
    pub metrics_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub watchdog: Option<Watchdog>,
    /// As root, refuse service binaries that others can write to (sshd's StrictModes).
    pub strict_modes: bool,
    /// Retry a service left `failed` by its restart attempts this often
    /// (docs/lifecycle.md).
    #[serde(deserialize_with = "millis::opt")]
    pub retry_failed_ms: Option<u64>,
    /// Act on changes in `services_dir` and `conf.d` (docs/watching.md).
    pub watch_services_dir: bool,
    /// How long a service's files must be quiet before the watcher acts on them.
    #[serde(deserialize_with = "millis::one")]
    pub watch_settle_ms: u64,
    /// Syslog collectors every record also goes to (docs/logs.md).
    pub log_forward: super::forward::LogForward,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            services_dir: PathBuf::from("services"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            auto_restart: true,
            max_restart_attempts: 10,
            initial_backoff_ms: 1000,
            max_backoff_ms: 30_000,
            backoff_jitter: 0.2,
            reset_after_ms: 60_000,
            stop_timeout_ms: 5000,
            shutdown_timeout_ms: 30_000,
            control_socket: None,
            log_dir: None,
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 5,
            log_max_total_bytes: None,
            max_line_bytes: 65_536,
            run_unconfigured: true,
            subreaper: false,
            metrics_listen: None,
            state_dir: None,
            watchdog: None,
            strict_modes: true,
            retry_failed_ms: None,
            watch_services_dir: false,
            watch_settle_ms: 500,
            log_forward: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    pub device: PathBuf,
    #[serde(
        default = "default_watchdog_interval",
        deserialize_with = "millis::one"
    )]
    pub interval_ms: u64,
    #[serde(default)]
    pub critical: Vec<String>,
}

fn default_watchdog_interval() -> u64 {
    10_000
}

/// A `null` where a service's key has no null of its own: the key counts as absent
/// (`layers::merge` leaves it out), so the value here is never used.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// One entry of `services`. Every key may be `null`, which counts as absent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    #[serde(deserialize_with = "nullable")]
    pub enabled: bool,
    pub binary_path: Option<PathBuf>,
    #[serde(deserialize_with = "nullable")]
    pub args: Vec<String>,
    /// Prepend `--service NAME --log-level LEVEL`; unset: only for a binary found in
    /// `services_dir` (no `binary_path`), since third-party programs reject them.
    pub pass_service_args: Option<bool>,
    #[serde(deserialize_with = "nullable")]
    pub environment: BTreeMap<String, String>,
    pub data_dir: Option<PathBuf>,
    #[serde(deserialize_with = "nullable")]
    pub memory_limit: u64,
    pub restart: Option<RestartPolicy>,
    pub max_restart_attempts: Option<u32>,
    #[serde(deserialize_with = "millis::opt")]
    pub initial_backoff_ms: Option<u64>,
    #[serde(deserialize_with = "millis::opt")]
    pub max_backoff_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub stop_signal: String,
    #[serde(deserialize_with = "millis::opt")]
    pub stop_timeout_ms: Option<u64>,
    pub user: Option<String>,
    pub group: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub limits: Limits,
    #[serde(deserialize_with = "nullable")]
    pub depends_on: Vec<String>,
    pub health_check: Option<HealthCheck>,
    pub ready: Option<ReadyMode>,
    #[serde(deserialize_with = "millis::opt")]
    pub watchdog_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub sockets: Vec<SocketConfig>,
    #[serde(deserialize_with = "millis::nullable")]
    pub upgrade_grace_ms: u64,
    #[serde(deserialize_with = "millis::opt")]
    pub retry_failed_ms: Option<u64>,
    /// For a service that daemonizes itself (docs/lifecycle.md): where it writes its pid.
    pub pid_file: Option<PathBuf>,
    // Hardening (docs/hardening.md); checked by `hardening::validate`.
    pub capabilities: Option<Vec<String>>,
    pub syscall_filter: Option<Vec<String>>,
    pub syscall_allow: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub syscall_filter_action: FilterAction,
    #[serde(deserialize_with = "nullable")]
    pub private_network: bool,
    #[serde(deserialize_with = "nullable")]
    pub private_tmp: bool,
    #[serde(deserialize_with = "nullable")]
    pub read_only_paths: Vec<PathBuf>,
    #[serde(deserialize_with = "nullable")]
    pub private_users: bool,
    pub nice: Option<i32>,
    pub io_class: Option<IoClass>,
    pub io_priority: Option<u8>,
    pub io_weight: Option<u32>,
    /// False keeps this service's lines off the `log_forward` targets.
    #[serde(deserialize_with = "nullable")]
    pub log_forward: bool,
}

/// What a syscall the filter denies gets (docs/hardening.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// The call fails with EPERM.
    #[default]
    Errno,
    /// The process is killed by SIGSYS.
    Kill,
}

/// The I/O scheduling class for ioprio_set (docs/hardening.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoClass {
    Realtime,
    BestEffort,
    Idle,
}

impl ServiceConfig {
    /// Whether argv gets `--service NAME --log-level LEVEL`: as set, else only when the
    /// binary is the one found in `services_dir` (a `binary_path`, wherever it points,
    /// is taken for a third-party program).
    pub fn passes_service_args(&self) -> bool {
        self.pass_service_args.unwrap_or(self.binary_path.is_none())
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            enabled: true,
            binary_path: None,
            args: Vec::new(),
            pass_service_args: None,
            environment: BTreeMap::new(),
            data_dir: None,
            memory_limit: 0,
            restart: None,
            max_restart_attempts: None,
            initial_backoff_ms: None,
            max_backoff_ms: None,
            stop_signal: "SIGTERM".to_string(),
            stop_timeout_ms: None,
            user: None,
            group: None,
            limits: Limits::default(),
            depends_on: Vec::new(),
            health_check: None,
            ready: None,
            watchdog_ms: None,
            sockets: Vec::new(),
            upgrade_grace_ms: 10_000,
            retry_failed_ms: None,
            pid_file: None,
            capabilities: None,
            syscall_filter: None,
            syscall_allow: None,
            syscall_filter_action: FilterAction::Errno,
            private_network: false,
            private_tmp: false,
            read_only_paths: Vec::new(),
            private_users: false,
            nice: None,
            io_class: None,
            io_priority: None,
            io_weight: None,
            log_forward: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub core: Option<u64>,
    pub cpu_percent: Option<u32>,
    pub pids_max: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Exec,
    Tcp,
    Http,
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// The service name asked about by a `grpc` check; empty = the whole server.
    #[serde(default)]
    pub grpc_service: String,
    #[serde(default = "default_check_interval", deserialize_with = "millis::one")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout", deserialize_with = "millis::one")]
    pub timeout_ms: u64,
    #[serde(default = "default_check_threshold")]
    pub failure_threshold: u32,
    #[serde(default, deserialize_with = "millis::one")]
    pub initial_delay_ms: u64,
}

fn default_check_interval() -> u64 {
    10_000
}
fn default_check_timeout() -> u64 {
    2000
}
fn default_check_threshold() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    pub listen: String,
    /// Its `LISTEN_FDNAMES` entry (default: the service's name).
    #[serde(default)]
    pub name: Option<String>,
    /// A Unix socket file's permissions, octal (default "0666", as systemd's).
    #[serde(default)]
    pub mode: Option<String>,
}

/// Command-line values that take precedence over the environment and the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    /// Set by `run` once it has looked the file up at start: what every reload reads,
    /// whatever the current directory or the environment say by then.
    pub pinned: Option<Pinned>,
    pub services_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub socket: Option<PathBuf>,
}

/// The config file a running daemon reads on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// The absolute path of the file found at start.
    File(PathBuf),
    /// No file existed at start: the built-in defaults, always.
    Defaults,
}

/// The configuration in force: every relative path made absolute against the file's
/// directory, flags and environment applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from; `None` when no file was found and defaults apply.
    pub path: Option<PathBuf>,
    pub settings: Settings,
    pub services: BTreeMap<String, ServiceConfig>,
    /// Where each service's keys came from, and the sidecars that could not be used.
    pub sources: super::layers::Sources,
}
