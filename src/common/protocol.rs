//! The control protocol (docs/control-protocol.md), typed once for both ends: the daemon
//! fills these values and the client reads them back; JSON exists only on the socket,
//! where `Display` writes a value as one line and `FromJson` reads one back.
//!
//! The wire is older than these types, and it stays byte for byte what it was: every
//! object's fields are declared in the order the daemon has always written them (by
//! name), a field that was sometimes absent is skipped when empty, and one that was null
//! stays null. A client reads what an older or newer daemon sends (`upgrade-self` puts a
//! new client in front of an old daemon for a moment): fields it does not know are
//! ignored, fields it misses take their defaults. Only the request is strict, as the
//! daemon refuses what it does not understand.
//!
//! Replies are read back by hand from serde_json's one `Value` parser (`FromJson`):
//! serde's derived decoders compile every field's parser again for each type, and for
//! these types that cost some 78 KB of a binary counted in bytes. The round-trip tests
//! hold each reader to its writer.
//!
//! Metrics travel as Prometheus text, their one encoding; `Metrics` is the value that
//! text is rendered from (`control/metrics.rs`), on the daemon's side only.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The commands of the control protocol.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Cmd {
    Status,
    Start,
    Stop,
    Restart,
    Reload,
    Logs,
    Metrics,
    Shutdown,
    Upgrade,
    Rollback,
    UpgradeSelf,
}

/// One request line. Fields left at their defaults are not written, so that a request
/// reads as the few words it says (`{"cmd":"status"}`); the rest in name order, as
/// clients have always written them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub cmd: Cmd,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// `logs -f`: after the reply, keep the connection and stream new lines.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The connection's descriptor, set by its thread (never from the client):
    /// `upgrade-self` answers on it from the new image.
    #[serde(skip)]
    pub conn: Option<std::os::fd::RawFd>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    /// `cmd` with no arguments.
    pub fn new(cmd: Cmd) -> Request {
        Request {
            cmd,
            dry_run: false,
            follow: false,
            lines: None,
            path: None,
            service: None,
            conn: None,
        }
    }
}

/// One reply line: `{"ok":true,...}` with the fields of the command's answer, or
/// `{"error":"...","ok":false}`. Every field any answer carries is here, in wire order;
/// each answer sets its own and the rest are not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `logs`: the kept lines, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogLine>>,
    /// `start`, `stop`: nothing to do, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `metrics`: the Prometheus text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    pub ok: bool,
    /// `status`: the daemon itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<Orchestrator>,
    /// `upgrade-self`: the new image's pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `reload`: what it does to each service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlanStep>>,
    /// `upgrade`, `rollback`: `ok`, `unchanged` or `rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `status`, `start`, `stop`, `restart`: one row per service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<StatusRow>>,
    /// `upgrade`, `rollback`: the binary now installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `upgrade-self`: the new image's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Response {
    /// `{"ok":true}`, to which an answer adds its fields.
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            error: Some(msg.into()),
            ..Response::default()
        }
    }

    /// The answer when it is `ok`, else the daemon's reason.
    pub fn into_result(self) -> Result<Response, String> {
        if self.ok {
            Ok(self)
        } else {
            Err(self.error.unwrap_or_else(|| "request failed".into()))
        }
    }
}

/// One message of a `logs -f` stream after its first reply: `{"line":{...}}`, a
/// `{"dropped":N}` for lines the reader was too slow to get, or an error that ends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Streamed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<LogLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

/// A message as its one line of JSON. This is the only encoder of each type: anything
/// else that prints one (`status --json`'s pretty print) starts from this line, since
/// every other serde_json writer would compile each type's encoder again.
pub fn encode(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn line(v: &impl Serialize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&encode(v))
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        line(self, f)
    }
}

impl fmt::Display for Streamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        line(self, f)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        line(self, f)
    }
}

/// One kept line of output, or a lifecycle record among them (`event` set, `stream`
/// null, and `pid` null when there was no process).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub level: String,
    pub msg: String,
    /// More of the same line follows in the next one.
    pub partial: bool,
    pub pid: Option<i32>,
    pub stream: Option<String>,
    /// RFC 3339, milliseconds, UTC.
    pub ts: String,
}

/// One service in `status`. Times are Unix milliseconds, `uptime` nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusRow {
    /// The binary the service runs; null when it cannot be read.
    pub binary: Option<Binary>,
    /// The service's own cgroup, while it has a process there.
    pub cgroup: Option<String>,
    /// False for a service discovered without a config entry.
    pub configured: bool,
    pub cpu_seconds: Option<f64>,
    pub enabled: bool,
    /// Every hardening key: `"off"` or how it is applied.
    pub hardening: BTreeMap<String, String>,
    /// The last runs, oldest first.
    pub history: Vec<Run>,
    pub last_error: Option<String>,
    pub last_exit: Option<LastExit>,
    pub last_exit_code: Option<i32>,
    /// How each configured limit is enforced.
    pub limits: BTreeMap<String, String>,
    /// Records dropped from the `log_forward` buffers, every target together.
    pub log_forward_dropped: u64,
    pub log_lines_unwritten: u64,
    pub name: String,
    /// Only while restarting: milliseconds until the next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_restart_ms: Option<u64>,
    pub notify_dropped: u64,
    /// The service's last `STATUS=` text.
    pub notify_status: Option<String>,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub rss_bytes: Option<u64>,
    /// When the service entered its state (absent from older daemons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only for a service with sockets of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<Socket>>,
    /// One of `STATES`.
    pub state: String,
    /// The version history, oldest first.
    pub upgrades: Vec<Upgrade>,
    pub uptime: u64,
    /// Only while a start waits for the service's word (`READY=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// Every state a service can be in, as the protocol and the metrics name them.
pub const STATES: [&str; 5] = ["stopped", "starting", "running", "failed", "restarting"];

/// A binary's identity: a new version shows as a new hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Binary {
    pub mtime: i64,
    pub path: String,
    /// Null for a file that is not regular or cannot be read.
    pub sha256: Option<String>,
    pub size: u64,
}

/// One run of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Run {
    pub exit_code: Option<i32>,
    /// Null while it runs.
    pub exited: Option<u64>,
    /// Why it ended; null while it runs.
    pub reason: Option<String>,
    pub started: u64,
}

/// How the last run ended: a code or a signal's name, when, and whether an operator
/// asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LastExit {
    pub at: Option<u64>,
    pub by_operator: bool,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

/// A socket the orchestrator holds for a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub bound: bool,
    pub listen: String,
    pub name: String,
}

/// One line of a service's version history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    pub at: u64,
    pub from: String,
    /// `ok`, `rolled back: WHY` or `rollback`.
    pub result: String,
    pub to: String,
}

/// `status`'s word about the daemon itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Orchestrator {
    pub log_records_dropped: u64,
    pub log_write_errors: u64,
    pub notify_rejected: u64,
    pub pid: u32,
    pub uptime: u64,
}

/// One service's part of a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    pub action: String,
    pub service: String,
}

/// What `metrics` reports, rendered once into Prometheus text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub services: Vec<ServiceMetrics>,
    /// The daemon's own log records dropped while its log could not be written.
    pub log_records_dropped: u64,
    pub log_write_errors: u64,
    /// Notify datagrams from processes of no service.
    pub notify_rejected: u64,
}

/// One service's metrics: every service has each, whatever its state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceMetrics {
    pub name: String,
    /// One of `STATES`.
    pub state: &'static str,
    pub restarts: u64,
    pub uptime_seconds: f64,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    /// Lines that could not be written to the service's log file.
    pub unwritten: u64,
    /// Notify datagrams from the service that were too long or not text.
    pub notify_dropped: u64,
    /// Records dropped from each `log_forward` target's buffer: (target, count).
    pub forward_dropped: Vec<(String, u64)>,
    /// SHA-256 of the service's binary, when it can be read.
    pub sha256: Option<String>,
}

/// Reading a message back from JSON: what is missing takes its default, what is not
/// known is ignored, and a value of the wrong type counts as missing.
pub trait FromJson: Sized {
    fn from_json(v: &Value) -> Self;

    /// A message from its line.
    fn parse(line: &str) -> serde_json::Result<Self> {
        Ok(Self::from_json(&serde_json::from_str(line)?))
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

fn int(v: &Value) -> Option<i32> {
    v.as_i64().and_then(|n| i32::try_from(n).ok())
}

fn list<T: FromJson>(v: &Value) -> Option<Vec<T>> {
    v.as_array().map(|a| a.iter().map(T::from_json).collect())
}

fn object<T: FromJson>(v: &Value) -> Option<T> {
    v.is_object().then(|| T::from_json(v))
}

/// Inserted one by one: collecting into a map would compile a sort for it.
fn words(v: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, x) in v.as_object().into_iter().flatten() {
        if let Some(x) = x.as_str() {
            m.insert(k.clone(), x.to_string());
        }
    }
    m
}

impl FromJson for Response {
    fn from_json(v: &Value) -> Response {
        Response {
            error: text(&v["error"]),
            lines: list(&v["lines"]),
            message: text(&v["message"]),
            metrics: text(&v["metrics"]),
            ok: v["ok"].as_bool().unwrap_or_default(),
            orchestrator: object(&v["orchestrator"]),
            pid: v["pid"].as_u64().and_then(|n| u32::try_from(n).ok()),
            plan: list(&v["plan"]),
            result: text(&v["result"]),
            services: list(&v["services"]),
            sha256: text(&v["sha256"]),
            version: text(&v["version"]),
        }
    }
}

impl FromJson for Streamed {
    fn from_json(v: &Value) -> Streamed {
        Streamed {
            dropped: v["dropped"].as_u64(),
            error: text(&v["error"]),
            line: object(&v["line"]),
            ok: v["ok"].as_bool(),
        }
    }
}

impl FromJson for LogLine {
    fn from_json(v: &Value) -> LogLine {
        LogLine {
            event: text(&v["event"]),
            level: text(&v["level"]).unwrap_or_default(),
            msg: text(&v["msg"]).unwrap_or_default(),
            partial: v["partial"].as_bool().unwrap_or_default(),
            pid: int(&v["pid"]),
            stream: text(&v["stream"]),
            ts: text(&v["ts"]).unwrap_or_default(),
        }
    }
}

impl FromJson for StatusRow {
    fn from_json(v: &Value) -> StatusRow {
        StatusRow {
            binary: object(&v["binary"]),
            cgroup: text(&v["cgroup"]),
            // A row that does not say is of a configured, enabled service.
            configured: v["configured"].as_bool().unwrap_or(true),
            cpu_seconds: v["cpu_seconds"].as_f64(),
            enabled: v["enabled"].as_bool().unwrap_or(true),
            hardening: words(&v["hardening"]),
            history: list(&v["history"]).unwrap_or_default(),
            last_error: text(&v["last_error"]),
            last_exit: object(&v["last_exit"]),
            last_exit_code: int(&v["last_exit_code"]),
            limits: words(&v["limits"]),
            log_forward_dropped: num(&v["log_forward_dropped"]),
            log_lines_unwritten: num(&v["log_lines_unwritten"]),
            name: text(&v["name"]).unwrap_or_default(),
            next_restart_ms: v["next_restart_ms"].as_u64(),
            notify_dropped: num(&v["notify_dropped"]),
            notify_status: text(&v["notify_status"]),
            pid: int(&v["pid"]),
            restarts: num(&v["restarts"]),
            rss_bytes: v["rss_bytes"].as_u64(),
            since: v["since"].as_u64(),
            sockets: list(&v["sockets"]),
            state: text(&v["state"]).unwrap_or_default(),
            upgrades: list(&v["upgrades"]).unwrap_or_default(),
            uptime: num(&v["uptime"]),
            waiting_for: text(&v["waiting_for"]),
        }
    }
}

impl FromJson for Binary {
    fn from_json(v: &Value) -> Binary {
        Binary {
            mtime: v["mtime"].as_i64().unwrap_or_default(),
            path: text(&v["path"]).unwrap_or_default(),
            sha256: text(&v["sha256"]),
            size: num(&v["size"]),
        }
    }
}

impl FromJson for Run {
    fn from_json(v: &Value) -> Run {
        Run {
            exit_code: int(&v["exit_code"]),
            exited: v["exited"].as_u64(),
            reason: text(&v["reason"]),
            started: num(&v["started"]),
        }
    }
}

impl FromJson for LastExit {
    fn from_json(v: &Value) -> LastExit {
        LastExit {
            at: v["at"].as_u64(),
            by_operator: v["by_operator"].as_bool().unwrap_or_default(),
            code: int(&v["code"]),
            signal: text(&v["signal"]),
        }
    }
}

impl FromJson for Socket {
    fn from_json(v: &Value) -> Socket {
        Socket {
            bound: v["bound"].as_bool().unwrap_or_default(),
            listen: text(&v["listen"]).unwrap_or_default(),
            name: text(&v["name"]).unwrap_or_default(),
        }
    }
}

impl FromJson for Upgrade {
    fn from_json(v: &Value) -> Upgrade {
        Upgrade {
            at: num(&v["at"]),
            from: text(&v["from"]).unwrap_or_default(),
            result: text(&v["result"]).unwrap_or_default(),
            to: text(&v["to"]).unwrap_or_default(),
        }
    }
}

impl FromJson for Orchestrator {
    fn from_json(v: &Value) -> Orchestrator {
        Orchestrator {
            log_records_dropped: num(&v["log_records_dropped"]),
            log_write_errors: num(&v["log_write_errors"]),
            notify_rejected: num(&v["notify_rejected"]),
            pid: v["pid"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_default(),
            uptime: num(&v["uptime"]),
        }
    }
}

impl FromJson for PlanStep {
    fn from_json(v: &Value) -> PlanStep {
        PlanStep {
            action: text(&v["action"]).unwrap_or_default(),
            service: text(&v["service"]).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
