//! The words every layer describes a service in: the five states a user sees
//! (docs/lifecycle.md) and how a process ended. Plain data only.

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
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by signal {}", signal_name(s)),
        }
    }
}

/// `SIGTERM` for 15; the number itself for a signal nix does not know.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("{sig}"))
}
