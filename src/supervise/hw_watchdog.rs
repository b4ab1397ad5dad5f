//! The hardware watchdog (docs/unattended.md): the device is opened once at start-up, and
//! fed (one byte) every `interval_ms` only while every critical service is `running`, so
//! that a box whose essential services cannot recover is reset by the hardware. A clean
//! shutdown disarms it with the magic close (`V`, then close).
//!
//! Feeding is a deadline of the main loop, not a thread: `Feeder` is the pure part
//! (given who blocks and the time, feed or not, and when next), `Watchdog` adds the
//! device. While feeding is stopped there is no deadline at all: only a state change,
//! which wakes the loop anyway, can make feeding resume. This file must never feed on
//! its own initiative, nor disarm the device anywhere but in `disarm`: dropping a
//! `Watchdog` (a fatal error, a forced exit) leaves the device armed, so the hardware
//! resets a box whose supervisor has given up.

use super::state::State;
use crate::config;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `_IOWR('W', 6, int)` and `_IOR('W', 7, int)` from linux/watchdog.h.
const WDIOC_SETTIMEOUT: u64 = 0xC004_5706;
const WDIOC_GETTIMEOUT: u64 = 0x8004_5707;

/// Where feeding stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Opened, not yet looked at: the first step decides at once.
    Armed,
    /// Fed; the next feed is due at this instant.
    Feeding(Instant),
    /// Not fed, for this reason ("web is restarting").
    Stopped(String),
}

/// What a step asks of the device and of the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub feed: bool,
    pub change: Option<Change>,
}

/// A change worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Not fed since start-up, and why (a critical service is still starting).
    Waiting(String),
    /// Feeding stopped, and why.
    Stopped(String),
    /// Every critical service is running again: feeding resumes.
    Resumed,
}

/// The pure decision: when to feed, given the critical services' states.
#[derive(Debug)]
pub struct Feeder {
    interval: Duration,
    critical: Vec<String>,
    phase: Phase,
}

impl Feeder {
    pub fn new(interval: Duration, critical: Vec<String>) -> Feeder {
        Feeder {
            interval,
            critical,
            phase: Phase::Armed,
        }
    }

    /// Takes a reloaded configuration's interval and critical list; the next feed
    /// keeps its time (a shorter interval applies from the feed after).
    pub fn reconfigure(&mut self, interval: Duration, critical: Vec<String>) {
        self.interval = interval;
        self.critical = critical;
    }

    /// The first critical service that is not running, as the reason not to feed;
    /// `state_of` gives None for a service the map does not hold.
    pub fn blocker(&self, state_of: impl Fn(&str) -> Option<State>) -> Option<String> {
        self.critical.iter().find_map(|name| match state_of(name) {
            Some(State::Running) => None,
            Some(s) => Some(format!("{name} is {}", s.as_str())),
            None => Some(format!("{name} is not configured")),
        })
    }

    /// One step at `now`, with `blocker` from `blocker()`.
    pub fn step(&mut self, blocker: Option<String>, now: Instant) -> Step {
        let next = now.checked_add(self.interval).unwrap_or(now);
        match (blocker, &self.phase) {
            (Some(why), Phase::Stopped(old)) if *old == why => Step {
                feed: false,
                change: None,
            },
            (Some(why), phase) => {
                let change = match phase {
                    Phase::Armed => Change::Waiting(why.clone()),
                    _ => Change::Stopped(why.clone()),
                };
                self.phase = Phase::Stopped(why);
                Step {
                    feed: false,
                    change: Some(change),
                }
            }
            (None, Phase::Feeding(due)) if now < *due => Step {
                feed: false,
                change: None,
            },
            (None, Phase::Feeding(_)) => {
                self.phase = Phase::Feeding(next);
                Step {
                    feed: true,
                    change: None,
                }
            }
            (None, Phase::Armed | Phase::Stopped(_)) => {
                self.phase = Phase::Feeding(next);
                Step {
                    feed: true,
                    change: Some(Change::Resumed),
                }
            }
        }
    }

    /// When the loop must wake for the next step: at once after opening, at the next
    /// feed while feeding, never while stopped.
    pub fn deadline(&self, opened: Instant) -> Option<Instant> {
        match &self.phase {
            Phase::Armed => Some(opened),
            Phase::Feeding(due) => Some(*due),
            Phase::Stopped(_) => None,
        }
    }
}

/// The opened device and its feeder.
pub struct Watchdog {
    file: File,
    path: PathBuf,
    opened: Instant,
    feeder: Feeder,
    /// The last feed failed: the error was logged, and is logged again only once a
    /// feed has worked in between.
    failing: bool,
}

impl Watchdog {
    /// Opens the device for writing (close-on-exec; non-blocking, so that a FIFO with
    /// no reader is an error now and a full one never blocks the loop) and, on a
    /// character device, sets its timeout to twice the interval, rounded up to whole
    /// seconds. Anything but a character device, a FIFO or a regular file is refused.
    pub fn open(cfg: &config::Watchdog) -> io::Result<Watchdog> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&cfg.device)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => io::Error::other("a FIFO with no reader"),
                _ => e,
            })?;
        let kind = file.metadata()?.file_type();
        if kind.is_char_device() {
            set_timeout(&file, &cfg.device, cfg.interval_ms);
        } else if !kind.is_fifo() && !kind.is_file() {
            return Err(io::Error::other(
                "neither a character device, a FIFO nor a regular file",
            ));
        }
        Ok(Watchdog {
            file,
            path: cfg.device.clone(),
            opened: Instant::now(),
            feeder: Feeder::new(Duration::from_millis(cfg.interval_ms), cfg.critical.clone()),
            failing: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.feeder.deadline(self.opened)
    }

    /// A reload's new settings. The device itself stays the one opened at start-up.
    pub fn reconfigure(&mut self, cfg: &config::Watchdog) {
        if cfg.device != self.path {
            log::warn!(
                "watchdog: the device change to {} takes effect at the next start",
                cfg.device.display()
            );
        }
        self.feeder
            .reconfigure(Duration::from_millis(cfg.interval_ms), cfg.critical.clone());
    }

    /// One step of the loop: feeds when due and every critical service runs, and logs
    /// when feeding stops and why, and when it resumes. Bound: one non-blocking write.
    pub fn tick(&mut self, state_of: impl Fn(&str) -> Option<State>, now: Instant) {
        let blocker = self.feeder.blocker(state_of);
        let step = self.feeder.step(blocker, now);
        match step.change {
            Some(Change::Waiting(why)) => log::info!(
                "watchdog: {} not fed until every critical service is running ({why})",
                self.path.display()
            ),
            Some(Change::Stopped(why)) => {
                log::warn!("watchdog: not feeding {}: {why}", self.path.display())
            }
            Some(Change::Resumed) => log::info!(
                "watchdog: feeding {}: every critical service is running",
                self.path.display()
            ),
            None => {}
        }
        if step.feed {
            match self.write_byte(0) {
                Ok(_) => self.failing = false,
                Err(e) if !self.failing => {
                    self.failing = true;
                    log::error!("watchdog: cannot feed {}: {e}", self.path.display());
                }
                Err(_) => {}
            }
        }
    }

    /// One byte, in one non-blocking write: a full FIFO is an error, never a wait.
    fn write_byte(&mut self, byte: u8) -> io::Result<()> {
        match self.file.write(&[byte])? {
            0 => Err(io::ErrorKind::WriteZero.into()),
            _ => Ok(()),
        }
    }

    /// The magic close: `V`, then close, so that the driver stops the timer. Only for a
    /// clean shutdown.
    pub fn disarm(mut self) {
        match self.write_byte(b'V') {
            Ok(_) => log::info!("watchdog: {} disarmed", self.path.display()),
            Err(e) => log::error!(
                "watchdog: cannot disarm {}: {e}; the box may be reset",
                self.path.display()
            ),
        }
    }
}

/// WDIOC_SETTIMEOUT where the device takes it; the timeout it ends up with is logged,
/// and a warning given when it is not above the interval (the box would be reset
/// between two feeds).
fn set_timeout(file: &File, path: &Path, interval_ms: u64) {
    let wanted =
        i32::try_from(interval_ms.saturating_mul(2).div_ceil(1000).max(1)).unwrap_or(i32::MAX);
    let mut secs = wanted;
    // SAFETY: the descriptor is open and `secs` is a valid int the call reads and writes.
    let set = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs) };
    if set != 0 {
        let err = io::Error::last_os_error();
        secs = 0;
        // SAFETY: as above; the call only writes `secs`.
        if unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_GETTIMEOUT as _, &mut secs) } != 0 {
            secs = 0;
        }
        log::warn!(
            "watchdog: {} does not take a {wanted} s timeout ({err}); it keeps {}",
            path.display(),
            if secs > 0 {
                format!("its own {secs} s")
            } else {
                "its own".to_string()
            }
        );
    }
    if secs > 0 && u64::try_from(secs).unwrap_or(0) * 1000 <= interval_ms {
        log::warn!(
            "watchdog: {}'s timeout ({secs} s) is not above interval_ms ({interval_ms}): the box will be reset between feeds",
            path.display()
        );
    } else if secs > 0 {
        log::info!("watchdog: {} timeout {secs} s", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeder() -> Feeder {
        Feeder::new(Duration::from_secs(10), vec!["db".into(), "web".into()])
    }

    #[test]
    fn feeds_at_once_then_at_the_interval() {
        let mut f = feeder();
        let t0 = Instant::now();
        assert_eq!(f.deadline(t0), Some(t0));
        let s = f.step(None, t0);
        assert!(s.feed);
        assert_eq!(s.change, Some(Change::Resumed));
        assert_eq!(f.deadline(t0), Some(t0 + Duration::from_secs(10)));
        let early = f.step(None, t0 + Duration::from_secs(9));
        assert_eq!(
            early,
            Step {
                feed: false,
                change: None
            }
        );
        let due = f.step(None, t0 + Duration::from_secs(10));
        assert_eq!(
            due,
            Step {
                feed: true,
                change: None
            }
        );
        assert_eq!(f.deadline(t0), Some(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn stops_without_a_deadline_and_resumes_at_once() {
        let mut f = feeder();
        let t0 = Instant::now();
        f.step(None, t0);
        let s = f.step(
            Some("web is restarting".into()),
            t0 + Duration::from_secs(1),
        );
        assert!(!s.feed);
        assert_eq!(s.change, Some(Change::Stopped("web is restarting".into())));
        assert_eq!(f.deadline(t0), None, "no wake-up while nothing is due");
        let again = f.step(
            Some("web is restarting".into()),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(again.change, None, "one log line per reason");
        assert!(!again.feed);
        let other = f.step(Some("web is failed".into()), t0 + Duration::from_secs(31));
        assert_eq!(other.change, Some(Change::Stopped("web is failed".into())));
        let back = f.step(None, t0 + Duration::from_secs(32));
        assert!(back.feed);
        assert_eq!(back.change, Some(Change::Resumed));
        assert_eq!(f.deadline(t0), Some(t0 + Duration::from_secs(42)));
    }

    #[test]
    fn never_fed_while_a_critical_service_is_not_running_from_the_start() {
        let mut f = feeder();
        let t0 = Instant::now();
        let s = f.step(Some("db is starting".into()), t0);
        assert!(!s.feed);
        assert_eq!(s.change, Some(Change::Waiting("db is starting".into())));
    }

    #[test]
    fn the_blocker_is_the_first_critical_service_not_running() {
        let f = feeder();
        let all = |_: &str| Some(State::Running);
        assert_eq!(f.blocker(all), None);
        let web_down = |n: &str| {
            Some(if n == "web" {
                State::Restarting
            } else {
                State::Running
            })
        };
        assert_eq!(f.blocker(web_down).as_deref(), Some("web is restarting"));
        let gone = |n: &str| (n != "db").then_some(State::Running);
        assert_eq!(f.blocker(gone).as_deref(), Some("db is not configured"));
        let none = Feeder::new(Duration::from_secs(1), Vec::new());
        assert_eq!(
            none.blocker(|_| None),
            None,
            "no critical service: always fed"
        );
    }
}
