//! A machine carried across `upgrade-self`'s exec (docs/unattended.md): the phase with
//! every deadline, the counters and the history, as data the new image reads back. The spec
//! is not carried: the new image plans it from the same config file, checked equal
//! before the handover.
//!
//! Deadlines travel as CLOCK_MONOTONIC readings, which the exec does not reset: a
//! backoff due in 700 ms before the handover is due at the same moment after it, the
//! pause included. What was in flight outside the machine is lost with the old
//! image's threads and is asked for again: a health check in flight is due at once,
//! and a run's watchdog window starts afresh (its keep-alives were kept by the old
//! notify reader).

use super::{Phase, Service};
use crate::config::discovery::ServiceSpec;
use crate::supervise::state::{HistoryEntry, LastExit};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Everything of a `Service` but its spec.
#[derive(Debug, Serialize, Deserialize)]
pub struct Carried {
    phase: Phase,
    attempts: u32,
    restarts: u64,
    last_exit: Option<LastExit>,
    last_error: Option<String>,
    notify_status: Option<String>,
    history: VecDeque<HistoryEntry>,
    since_ms: u64,
    /// Absent from what an older image hands over.
    #[serde(default)]
    ending: Option<String>,
}

impl Service {
    pub fn carry(&self) -> Carried {
        Carried {
            phase: self.phase.clone(),
            attempts: self.attempts,
            restarts: self.restarts,
            last_exit: self.last_exit,
            last_error: self.last_error.clone(),
            notify_status: self.notify_status.clone(),
            history: self.history.clone(),
            since_ms: self.since_ms,
            ending: self.ending.clone(),
        }
    }

    /// The machine as carried, under `spec` (planned anew from the same file).
    pub fn resume(spec: ServiceSpec, c: Carried, now: Instant) -> Service {
        let mut phase = c.phase;
        if let Phase::Up { health, watch, .. } = &mut phase {
            if health.in_flight {
                health.in_flight = false;
                health.next_probe = Some(now);
            }
            if watch.deadline.is_some() {
                watch.deadline = spec.process.watchdog.map(|w| now + w);
            }
        }
        Service {
            spec,
            phase,
            attempts: c.attempts,
            restarts: c.restarts,
            last_exit: c.last_exit,
            last_error: c.last_error,
            notify_status: c.notify_status,
            history: c.history,
            since_ms: c.since_ms,
            ending: c.ending,
        }
    }

    /// The current run's main pid, exited or not.
    pub fn run_pid(&self) -> Option<i32> {
        self.run().map(|r| r.pid)
    }

    /// The run whose main process has not been seen to exit: (pid, gen). Its waiter
    /// must be started again after the handover.
    pub fn unexited_run(&self) -> Option<(i32, u64)> {
        match &self.phase {
            Phase::Up { run, .. } | Phase::Stopping { run, .. } => Some((run.pid, run.gen)),
            _ => None,
        }
    }
}

/// Now on the monotonic clock, in nanoseconds, with the `Instant` it corresponds to.
// The casts are no-ops only where time_t and c_long are 64 bits.
#[allow(clippy::unnecessary_cast)]
fn clock() -> (Instant, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let now = Instant::now();
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (now, ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64)
}

fn to_ns(t: Instant) -> i64 {
    let (now, ns) = clock();
    match t.checked_duration_since(now) {
        Some(ahead) => ns.saturating_add(ahead.as_nanos() as i64),
        None => ns.saturating_sub(now.duration_since(t).as_nanos() as i64),
    }
}

fn from_ns(v: i64) -> Instant {
    let (now, ns) = clock();
    let d = v.saturating_sub(ns);
    if d >= 0 {
        now + Duration::from_nanos(d as u64)
    } else {
        now.checked_sub(Duration::from_nanos(d.unsigned_abs()))
            .unwrap_or(now)
    }
}

/// An `Instant` as a CLOCK_MONOTONIC reading in nanoseconds.
pub mod mono {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Instant;

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_ns(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        i64::deserialize(d).map(super::from_ns)
    }
}

/// `mono` for an `Option<Instant>`.
pub mod mono_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Instant;

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::to_ns(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Option::<i64>::deserialize(d).map(|v| v.map(super::from_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_trip_within_a_millisecond() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_millis(700),
            now - Duration::from_millis(300),
        ] {
            let back = from_ns(to_ns(t));
            let err = if back > t { back - t } else { t - back };
            assert!(err < Duration::from_millis(1), "{err:?}");
        }
    }
}
