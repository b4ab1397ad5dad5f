//! An upgrade's grace window (docs/sockets-and-upgrades.md), as a pure judge fed by the
//! loop: after each batch of events, and at the window's deadline, the loop shows it what
//! the service's machine says (state, run generation, whether a stop is under way, why it
//! last failed) and it answers wait, passed or failed. It also owns the version history
//! (`upgrades` in status, the last 10) and its file format for `state_dir`.
//!
//! No clock, no file, no thread here: the loop passes `now`, does the file work
//! (`process/install.rs`) and feeds the machine. The window never keeps the machine
//! from acting on its own (restarts, backoff); it only watches what the run does.

use crate::common::decode::{self, field, Decode};
use crate::supervise::machine::carry;
use crate::supervise::state::State;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Upgrades and rollbacks kept per service.
pub const KEPT: usize = 10;

/// What the window needs to know of the service, read from its machine.
#[derive(Debug, Clone)]
pub struct View {
    pub state: State,
    /// The live run's generation, if there is one.
    pub gen: Option<u64>,
    /// A stop of that run is under way (an operator's, a reload's or a liveness one).
    pub stopping: bool,
    /// Why it last failed or exited, for the verdict.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Passed,
    Failed(String),
}

/// One upgrade in its grace window: from the restart onto the new binary until its
/// first run has lasted `grace` and is `running`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Watch {
    /// The run that was live when the upgrade restarted the service (None: none was).
    old_gen: Option<u64>,
    /// The first run of the new binary, once it exists.
    new_gen: Option<u64>,
    grace: Duration,
    #[serde(with = "crate::supervise::machine::carry::mono_opt")]
    deadline: Option<Instant>,
}

impl Decode for Watch {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Watch {
            old_gen: field(v, "old_gen")?,
            new_gen: field(v, "new_gen")?,
            grace: field(v, "grace")?,
            deadline: carry::instant_opt(v, "deadline")?,
        })
    }
}

impl Watch {
    pub fn new(old_gen: Option<u64>, grace: Duration) -> Watch {
        Watch {
            old_gen,
            new_gen: None,
            grace,
            deadline: None,
        }
    }

    /// When the loop must look again even if nothing happens.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The new binary passes when its first run lasts the whole window and is `running`
    /// at its end (health check passed or READY=1, where the service has them). It
    /// fails when that run exits or is stopped within the window, when it cannot be
    /// started, or when it is not ready by the end.
    pub fn judge(&mut self, v: &View, now: Instant) -> Verdict {
        let Some(gen) = self.new_gen else {
            if let Some(g) = v.gen.filter(|g| Some(*g) != self.old_gen) {
                if v.stopping {
                    let why = format!("stopped within the grace window: {}", v.reason);
                    return Verdict::Failed(why);
                }
                self.new_gen = Some(g);
                self.deadline = Some(now + self.grace);
                return Verdict::Wait;
            }
            return match v.state {
                State::Failed | State::Restarting => Verdict::Failed(v.reason.clone()),
                State::Stopped => Verdict::Failed("stopped before the new binary ran".into()),
                // Still stopping the old run, or spawning the new one.
                State::Starting | State::Running => Verdict::Wait,
            };
        };
        if v.gen != Some(gen) {
            return Verdict::Failed(v.reason.clone());
        }
        if v.stopping {
            return Verdict::Failed(format!("stopped within the grace window: {}", v.reason));
        }
        match self.deadline {
            Some(d) if now >= d => {
                if v.state == State::Running {
                    Verdict::Passed
                } else {
                    Verdict::Failed(format!(
                        "not ready within upgrade_grace_ms ({} ms): {}",
                        self.grace.as_millis(),
                        v.reason
                    ))
                }
            }
            _ => Verdict::Wait,
        }
    }
}

/// One line of the version history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at_ms: u64,
    pub from: String,
    pub to: String,
    /// "ok", "rolled back: <reason>" or "rollback".
    pub result: String,
}

impl Record {
    pub fn to_json(&self) -> Value {
        json!({"at": self.at_ms, "from": self.from, "to": self.to, "result": self.result})
    }

    pub fn from_json(v: &Value) -> Option<Record> {
        Some(Record {
            at_ms: v["at"].as_u64()?,
            from: v["from"].as_str()?.to_string(),
            to: v["to"].as_str()?.to_string(),
            result: v["result"].as_str()?.to_string(),
        })
    }
}

/// The last `KEPT` records, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History(VecDeque<Record>);

impl History {
    pub fn push(&mut self, r: Record) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back(r);
    }

    pub fn to_json(&self) -> Value {
        Value::Array(self.0.iter().map(Record::to_json).collect())
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.0.iter()
    }

    pub fn from_json(v: &Value) -> History {
        let mut h = History::default();
        for r in v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Record::from_json)
        {
            h.push(r);
        }
        h
    }
}

/// An upgrade under way, as written to `state_dir` before the binary is replaced: if
/// the orchestrator dies before the window is over, the next one finds it and puts
/// the old binary back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub binary: String,
    pub from: String,
    pub to: String,
    pub at_ms: u64,
}

impl Pending {
    pub fn to_text(&self) -> String {
        let v = json!({"binary": self.binary, "from": self.from, "to": self.to, "at": self.at_ms});
        format!("{v}\n")
    }

    pub fn from_text(text: &str) -> Option<Pending> {
        let v: Value = serde_json::from_str(text).ok()?;
        Some(Pending {
            binary: v["binary"].as_str()?.to_string(),
            from: v["from"].as_str()?.to_string(),
            to: v["to"].as_str()?.to_string(),
            at_ms: v["at"].as_u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_under_way_reads_back_as_written() {
        let mut w = Watch::new(Some(3), Duration::from_millis(1500));
        w.new_gen = Some(4);
        let (written, again) = crate::common::decode::round_trip(&w);
        assert_eq!(written, again);
        w.deadline = Some(Instant::now() + Duration::from_secs(1));
        let read = Watch::decode(&serde_json::to_value(&w).unwrap()).unwrap();
        let (a, b) = (read.deadline.unwrap(), w.deadline.unwrap());
        assert!(a.max(b) - a.min(b) < Duration::from_millis(1));
        assert_eq!(
            (read.old_gen, read.new_gen, read.grace),
            (w.old_gen, w.new_gen, w.grace)
        );
    }

    fn view(state: State, gen: Option<u64>, stopping: bool) -> View {
        View {
            state,
            gen,
            stopping,
            reason: "exited with code 3".into(),
        }
    }

    const GRACE: Duration = Duration::from_millis(500);

    #[test]
    fn passes_when_the_first_run_lasts_the_window_and_is_ready() {
        let t0 = Instant::now();
        let mut w = Watch::new(Some(1), GRACE);
        // The old run is stopping: wait.
        assert_eq!(
            w.judge(&view(State::Running, Some(1), true), t0),
            Verdict::Wait
        );
        assert_eq!(
            w.judge(&view(State::Starting, None, false), t0),
            Verdict::Wait
        );
        assert_eq!(
            w.judge(&view(State::Starting, Some(2), false), t0),
            Verdict::Wait
        );
        assert_eq!(w.deadline(), Some(t0 + GRACE));
        assert_eq!(
            w.judge(&view(State::Running, Some(2), false), t0 + GRACE / 2),
            Verdict::Wait
        );
        assert_eq!(
            w.judge(&view(State::Running, Some(2), false), t0 + GRACE),
            Verdict::Passed
        );
    }

    #[test]
    fn fails_on_an_exit_a_stop_a_failed_start_or_no_readiness() {
        let t0 = Instant::now();
        let reason = Verdict::Failed("exited with code 3".into());
        let mut w = Watch::new(Some(1), GRACE);
        w.judge(&view(State::Running, Some(2), false), t0);
        assert_eq!(w.judge(&view(State::Restarting, None, false), t0), reason);
        let mut w = Watch::new(Some(1), GRACE);
        w.judge(&view(State::Running, Some(2), false), t0);
        let stopped = Verdict::Failed("stopped within the grace window: exited with code 3".into());
        assert_eq!(w.judge(&view(State::Running, Some(2), true), t0), stopped);
        let mut w = Watch::new(None, GRACE);
        assert_eq!(w.judge(&view(State::Failed, None, false), t0), reason);
        let mut w = Watch::new(None, GRACE);
        assert!(matches!(
            w.judge(&view(State::Stopped, None, false), t0),
            Verdict::Failed(_)
        ));
        let mut w = Watch::new(None, GRACE);
        w.judge(&view(State::Starting, Some(5), false), t0);
        let v = w.judge(&view(State::Starting, Some(5), false), t0 + GRACE);
        assert!(matches!(v, Verdict::Failed(m) if m.starts_with("not ready within")));
    }

    #[test]
    fn history_keeps_the_last_ten_and_reads_back() {
        let mut h = History::default();
        for i in 0..12 {
            h.push(Record {
                at_ms: i,
                from: "a".into(),
                to: "b".into(),
                result: "ok".into(),
            });
        }
        let v = h.to_json();
        assert_eq!(v.as_array().unwrap().len(), KEPT);
        assert_eq!(v[0]["at"], 2);
        assert_eq!(History::from_json(&v), h);
        let p = Pending {
            binary: "/x".into(),
            from: "a".into(),
            to: "b".into(),
            at_ms: 7,
        };
        assert_eq!(Pending::from_text(&p.to_text()), Some(p));
    }
}
