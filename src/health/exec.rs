//! An `exec` health check in progress (docs/health.md): a process of the service's
//! identity, environment and cgroup, in its own process group, bounded by `timeout_ms`.
//! The main loop spawns it, its waiter reports the exit like a run's, and the loop reaps
//! it. This holds only the check's bookkeeping; it never spawns or signals.

use std::time::Instant;

pub struct ExecProbe {
    pub pid: i32,
    /// The run it checks.
    pub run_gen: u64,
    pub deadline: Instant,
    /// SIGKILL went out at the deadline; the exit that follows means "timed out".
    pub timed_out: bool,
}

impl ExecProbe {
    /// When the loop must look at it: its timeout, until it was killed for it.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.timed_out).then_some(self.deadline)
    }
}
