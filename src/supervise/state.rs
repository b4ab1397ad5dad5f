//! The words the lifecycle is described in, outside the machine that moves through it:
//! the five states a user sees (docs/lifecycle.md), how a process ended, the two clocks an
//! event happens on, the run history, and the refusals a client can get. Plain data only.

/// The states shown to users, exactly the five of docs/lifecycle.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    Stopped,
    Starting,
    Running,
    Failed,
    Restarting,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Failed,
        State::Restarting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Failed => "failed",
            State::Restarting => "restarting",
        }
    }
}

/// How a main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// A `pid_file` daemon that was not our child: its exit was seen, its status is
    /// its own parent's to read.
    Unknown,
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number; none for an
    /// unknown status.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(s) => Some(128 + s),
            Exit::Unknown => None,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// Not known to have failed: exit 0, or an unknown status (the restart policy
    /// takes that as a clean exit: a daemon with a parent of its own is that
    /// parent's to judge).
    pub fn clean(self) -> bool {
        matches!(self, Exit::Code(0) | Exit::Unknown)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by signal {}", signal_name(s)),
            Exit::Unknown => reason::UNKNOWN_EXIT.to_string(),
        }
    }
}

/// `SIGTERM` for 15; the number itself for a signal nix does not know.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("{sig}"))
}

/// The time an event happens, on both clocks: monotonic for decisions, wall for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: std::time::Instant,
    pub wall_ms: u64,
}

/// One run in `status`'s history (docs/status-and-metrics.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub started_ms: u64,
    pub exited_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why the run ended (one of `reason`'s words); None while it runs. Absent from
    /// what an older image handed over or saved.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Why a run ended, in the exact words `history` uses. Where several apply, the first
/// of the list in the status documentation wins: the OOM killer, then a liveness
/// failure, an upgrade, whoever asked for a stop, a start that failed, and last the
/// exit itself.
pub mod reason {
    use super::{signal_name, Exit};

    pub const OPERATOR_STOP: &str = "stopped by an operator";
    pub const OPERATOR_RESTART: &str = "restarted by an operator";
    pub const RELOAD_RESTART: &str = "restarted by reload";
    pub const RELOAD_STOP: &str = "stopped by reload";
    pub const SHUTDOWN: &str = "stopped by shutdown";
    pub const ORCHESTRATOR_GONE: &str = "ended with the orchestrator";
    pub const UPGRADE: &str = "replaced by an upgrade";
    pub const WATCHDOG_TRIGGER: &str = "watchdog trigger";

    pub fn oom(memory_limit_mib: u64) -> String {
        match memory_limit_mib {
            0 => "killed by the OOM killer (no memory_limit)".into(),
            n => format!("killed by the OOM killer (memory_limit {n} MiB)"),
        }
    }

    pub fn watchdog_timeout(ms: u128) -> String {
        format!("watchdog timeout (no keep-alive in {ms} ms)")
    }

    pub fn health(why: &str) -> String {
        format!("health check failed: {why}")
    }

    pub fn rolled_back(why: &str) -> String {
        format!("rolled back: {why}")
    }

    pub fn start_failed(why: &str) -> String {
        format!("start failed: {why}")
    }

    pub fn exit(exit: Exit) -> String {
        match exit {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(s)),
            Exit::Unknown => UNKNOWN_EXIT.to_string(),
        }
    }

    pub const UNKNOWN_EXIT: &str = "exited with an unknown status (not the orchestrator's child)";
}

/// The last exit, for `status NAME`: what ended the run, when, and whether an
/// operator's stop asked for it (so that 143 after `stop` does not read as a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastExit {
    pub exit: Exit,
    pub at_ms: u64,
    pub by_operator: bool,
}

/// Why a lifecycle request was refused (the refusals of docs/cli.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    AlreadyRunning,
    NotRunning,
    /// The binary cannot be run: the reason (`service binary not found: PATH`, ...).
    Binary(String),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Disabled => "service is disabled".into(),
            Refusal::AlreadyRunning => "service is already running".into(),
            Refusal::NotRunning => "service is not running".into(),
            Refusal::Binary(why) => why.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an older image hands over at `upgrade-self` has no reasons: read as none.
    #[test]
    fn a_history_entry_without_a_reason_is_read() {
        let h: HistoryEntry =
            serde_json::from_str(r#"{"started_ms":1,"exited_ms":2,"exit_code":0}"#).unwrap();
        assert_eq!(h.reason, None);
        assert_eq!(h.exit_code, Some(0));
    }

    #[test]
    fn reasons_read_as_documented() {
        assert_eq!(reason::exit(Exit::Code(3)), "exited with code 3");
        assert_eq!(
            reason::exit(Exit::Signal(libc::SIGKILL)),
            "killed by SIGKILL"
        );
        assert_eq!(
            reason::oom(16),
            "killed by the OOM killer (memory_limit 16 MiB)"
        );
        assert_eq!(reason::oom(0), "killed by the OOM killer (no memory_limit)");
    }
}
