//! The words the lifecycle is described in, outside the machine that moves through it:
//! the two clocks an event happens on, the run history, and the refusals a client can
//! get. Plain data only. The five states a user sees and how a process ended are
//! shared by every layer, so they live on the ground floor (`common::state`).

use crate::common::decode::{self, field, Decode};
pub use crate::common::state::{signal_name, Exit, State};
use serde_json::Value;

/// The time an event happens, on both clocks: monotonic for decisions, wall for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: std::time::Instant,
    pub wall_ms: u64,
}

/// One run in `status`'s history (docs/status-and-metrics.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub started_ms: u64,
    pub exited_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why the run ended (one of `reason`'s words); None while it runs. Absent from
    /// what an older image handed over or saved.
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

    pub use crate::common::state::UNKNOWN_EXIT;
}

/// The last exit, for `status NAME`: what ended the run, when, and whether an
/// operator's stop asked for it (so that 143 after `stop` does not read as a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LastExit {
    pub exit: Exit,
    pub at_ms: u64,
    pub by_operator: bool,
}

impl Decode for HistoryEntry {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(HistoryEntry {
            started_ms: field(v, "started_ms")?,
            exited_ms: field(v, "exited_ms")?,
            exit_code: field(v, "exit_code")?,
            reason: field(v, "reason")?,
        })
    }
}

impl Decode for LastExit {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(LastExit {
            exit: field(v, "exit")?,
            at_ms: field(v, "at_ms")?,
            by_operator: field(v, "by_operator")?,
        })
    }
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
        let h = HistoryEntry::decode(&serde_json::json!({
            "started_ms": 1, "exited_ms": 2, "exit_code": 0
        }))
        .unwrap();
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
