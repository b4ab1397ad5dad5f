//! The words every layer describes a service in: the five states a user sees
//! (docs/lifecycle.md) and how a process ended. Plain data only.

use super::decode::{self, unknown, variant, Decode};
use serde_json::Value;

/// The states shown to users, exactly the five of docs/lifecycle.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum State {
    Stopped,
    Starting,
    Running,
    Failed,
    Restarting,
}

impl State {
    /// Every state, in the order the protocol lists them (`protocol::STATES`, which a
    /// test holds to this).
    #[cfg(test)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
            Exit::Unknown => UNKNOWN_EXIT.to_string(),
        }
    }
}

/// How an exit whose status is not ours to read is described (in the log and in a
/// run's history).
pub const UNKNOWN_EXIT: &str = "exited with an unknown status (not the orchestrator's child)";

impl Decode for State {
    fn decode(v: &Value) -> decode::Result<Self> {
        match variant(v)?.0 {
            "Stopped" => Ok(State::Stopped),
            "Starting" => Ok(State::Starting),
            "Running" => Ok(State::Running),
            "Failed" => Ok(State::Failed),
            "Restarting" => Ok(State::Restarting),
            name => unknown("state", name),
        }
    }
}

impl Decode for Exit {
    fn decode(v: &Value) -> decode::Result<Self> {
        match variant(v)? {
            ("Code", n) => i32::decode(n).map(Exit::Code),
            ("Signal", n) => i32::decode(n).map(Exit::Signal),
            ("Unknown", _) => Ok(Exit::Unknown),
            (name, _) => unknown("exit", name),
        }
    }
}

/// `SIGTERM` for 15; the number itself for a signal nix does not know.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::decode::round_trip;

    #[test]
    fn states_and_exits_are_read_back_as_written() {
        for s in State::ALL {
            let (a, b) = round_trip(&s);
            assert_eq!(a, b);
        }
        for e in [
            Exit::Code(0),
            Exit::Code(-1),
            Exit::Signal(9),
            Exit::Unknown,
        ] {
            let (a, b) = round_trip(&e);
            assert_eq!(a, b);
        }
        assert!(State::decode(&Value::from("Sleeping")).is_err());
    }
}
