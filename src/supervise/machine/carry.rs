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

use super::{AfterStop, Health, Origin, Phase, Run, Service, Stop, Watch};
use crate::common::decode::{self, field, field_or_default, unknown, variant, within, Decode};
use crate::config::discovery::ServiceSpec;
use crate::supervise::state::{HistoryEntry, LastExit};
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Everything of a `Service` but its spec.
#[derive(Debug, Serialize)]
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

/// CLOCK_MONOTONIC in nanoseconds.
// The casts are no-ops only where time_t and c_long are 64 bits.
#[allow(clippy::unnecessary_cast)]
fn mono_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

/// One moment as an `Instant` and as a CLOCK_MONOTONIC reading in nanoseconds, taken
/// once per process: `Instant` is that clock, so one pair converts every deadline both
/// ways, and reading a deadline back gives exactly the `Instant` that was written.
///
/// The `Instant` is taken between two readings of the clock and paired with their
/// middle; a preemption between them (milliseconds on a busy machine) would shift every
/// carried deadline by its length, so the pair is taken again, at most 8 times, until
/// the readings are within 20 µs, else the closest pair is used.
fn clock() -> (Instant, i64) {
    static PAIR: std::sync::OnceLock<(Instant, i64)> = std::sync::OnceLock::new();
    *PAIR.get_or_init(|| {
        let mut best: Option<(i64, (Instant, i64))> = None;
        for _ in 0..8 {
            let before = mono_ns();
            let now = Instant::now();
            let gap = mono_ns() - before;
            let pair = (now, before + gap / 2);
            if gap < 20_000 {
                return pair;
            }
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, pair));
            }
        }
        best.map_or_else(|| (Instant::now(), mono_ns()), |(_, pair)| pair)
    })
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

/// Field `key`: an `Instant` written by `mono`.
fn instant(v: &Value, key: &str) -> decode::Result<Instant> {
    field(v, key).map(from_ns)
}

/// Field `key`: an `Option<Instant>` written by `mono_opt`.
pub fn instant_opt(v: &Value, key: &str) -> decode::Result<Option<Instant>> {
    Ok(field::<Option<i64>>(v, key)?.map(from_ns))
}

impl Decode for Carried {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Carried {
            phase: field(v, "phase")?,
            attempts: field(v, "attempts")?,
            restarts: field(v, "restarts")?,
            last_exit: field(v, "last_exit")?,
            last_error: field(v, "last_error")?,
            notify_status: field(v, "notify_status")?,
            history: field(v, "history")?,
            since_ms: field(v, "since_ms")?,
            ending: field(v, "ending")?,
        })
    }
}

impl Decode for Phase {
    fn decode(v: &Value) -> decode::Result<Self> {
        let (name, c) = variant(v)?;
        let phase = match name {
            "Stopped" => Phase::Stopped {
                held: field(c, "held")?,
            },
            "Failed" => Phase::Failed {
                retry_at: instant_opt(c, "retry_at")?,
            },
            "WaitingDeps" => Phase::WaitingDeps,
            "Backoff" => Phase::Backoff {
                until: instant(c, "until")?,
            },
            "BusyRetry" => Phase::BusyRetry {
                until: instant(c, "until")?,
                tries: field(c, "tries")?,
            },
            "Spawning" => Phase::Spawning {
                tries: field(c, "tries")?,
                stop: field(c, "stop")?,
            },
            "Up" => Phase::Up {
                run: field(c, "run")?,
                ready: field(c, "ready")?,
                health: field(c, "health")?,
                watch: field(c, "watch")?,
            },
            "Stopping" => Phase::Stopping {
                run: field(c, "run")?,
                stop: field(c, "stop")?,
            },
            "Draining" => Phase::Draining {
                run: field(c, "run")?,
                stop: field(c, "stop")?,
            },
            "AwaitPidFile" => Phase::AwaitPidFile {
                gen: field(c, "gen")?,
                launcher: field_or_default(c, "launcher")?,
                why: field(c, "why")?,
                started: instant(c, "started")?,
                deadline: instant(c, "deadline")?,
                retry_at: instant_opt(c, "retry_at")?,
            },
            name => return unknown("phase", name),
        };
        Ok(phase)
    }
}

impl Decode for Run {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Run {
            pid: field(v, "pid")?,
            gen: field(v, "gen")?,
            started: instant(v, "started")?,
            launcher: field(v, "launcher")?,
        })
    }
}

impl Decode for Health {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Health {
            failures: field(v, "failures")?,
            passed: field(v, "passed")?,
            next_probe: instant_opt(v, "next_probe")?,
            in_flight: field(v, "in_flight")?,
        })
    }
}

impl Decode for Watch {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Watch {
            notified: field(v, "notified")?,
            deadline: instant_opt(v, "deadline")?,
        })
    }
}

impl Decode for Stop {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Stop {
            deadline: instant(v, "deadline")?,
            killed: field(v, "killed")?,
            then: field(v, "then")?,
            origin: field(v, "origin")?,
            shown: field(v, "shown")?,
            poll_at: instant_opt(v, "poll_at")?,
        })
    }
}

impl Decode for AfterStop {
    fn decode(v: &Value) -> decode::Result<Self> {
        match variant(v)? {
            ("Stay", _) => Ok(AfterStop::Stay),
            ("Start", _) => Ok(AfterStop::Start),
            ("Remove", _) => Ok(AfterStop::Remove),
            ("Recover", delay) => within(Decode::decode(delay), "Recover").map(AfterStop::Recover),
            (name, _) => unknown("step after a stop", name),
        }
    }
}

impl Decode for Origin {
    fn decode(v: &Value) -> decode::Result<Self> {
        match variant(v)?.0 {
            "Operator" => Ok(Origin::Operator),
            "Reload" => Ok(Origin::Reload),
            "Shutdown" => Ok(Origin::Shutdown),
            "Liveness" => Ok(Origin::Liveness),
            name => unknown("stop origin", name),
        }
    }
}

/// An `Instant` as a CLOCK_MONOTONIC reading in nanoseconds.
pub mod mono {
    use serde::Serializer;
    use std::time::Instant;

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_ns(*t))
    }
}

/// `mono` for an `Option<Instant>`.
pub mod mono_opt {
    use serde::Serializer;
    use std::time::Instant;

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::to_ns(*t)),
            None => s.serialize_none(),
        }
    }
}

/// Checks that `svc`'s carried state reads back exactly as it was written.
#[cfg(test)]
pub fn assert_reads_back(svc: &Service) {
    let (written, again) = decode::round_trip(&svc.carry());
    assert_eq!(written, again);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_trip() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_millis(700),
            now - Duration::from_millis(300),
        ] {
            assert_eq!(from_ns(to_ns(t)), t);
        }
        // And is a CLOCK_MONOTONIC reading, which the exec does not reset.
        let before = Instant::now();
        let ns = mono_ns();
        assert!(
            (to_ns(before) - ns).abs() < 1_000_000_000,
            "{} vs {ns}",
            to_ns(before)
        );
    }
}
