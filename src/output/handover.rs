//! Stopping every output reader at a line boundary for `upgrade-self`
//! (docs/unattended.md), and carrying the kept lines over. Each reader waits in poll() on
//! its pipe and on one eventfd shared by all; a handover sets a flag and makes the eventfd
//! readable, and every reader, once done with what it read (its lines delivered to the
//! ring and the sink), hands back its pipe, its context and the unfinished end of its last
//! line. Nothing is read twice or dropped: what is still in a pipe stays there for the new
//! image's reader, what was read is either delivered or travels as `carry`.
//!
//! If some reader does not stop in time (its sink is blocked), the handover is called
//! off and every reader that stopped is started again where it was. This file never
//! touches a pipe's contents and never closes one.

use crate::output::reader::ReaderCtx;
use crate::output::reader::{spawn_reader_with, Ring};
use crate::output::sink::{Batch, Line, Stream};
use crate::process::wake;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A reader that stopped for a handover.
pub struct Report {
    pub fd: OwnedFd,
    pub ctx: ReaderCtx,
    pub carry: Vec<u8>,
}

/// The readers' count and reports; the ask itself is `wake::handover()`.
struct Shared {
    inner: Mutex<Inner>,
    cond: Condvar,
}

#[derive(Default)]
struct Inner {
    live: usize,
    reports: Vec<Report>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        inner: Mutex::default(),
        cond: Condvar::new(),
    })
}

/// A reader thread counted as live until this is dropped.
pub struct Live(());

impl Drop for Live {
    fn drop(&mut self) {
        let s = shared();
        if let Ok(mut i) = s.inner.lock() {
            i.live = i.live.saturating_sub(1);
            s.cond.notify_all();
        }
    }
}

pub fn enter() -> Live {
    if let Ok(mut i) = shared().inner.lock() {
        i.live += 1;
    }
    Live(())
}

/// A handover is asked for: a reader stops at its next line boundary.
pub fn asked() -> bool {
    wake::handover().is_up()
}

/// A stopped reader's report. `Some` gives it back when the handover was called off
/// meanwhile: the reader carries on.
pub fn report(
    fd: OwnedFd,
    ctx: ReaderCtx,
    carry: Vec<u8>,
) -> Option<(OwnedFd, ReaderCtx, Vec<u8>)> {
    let s = shared();
    let Ok(mut i) = s.inner.lock() else {
        return Some((fd, ctx, carry));
    };
    if !asked() {
        return Some((fd, ctx, carry));
    }
    i.reports.push(Report { fd, ctx, carry });
    None
}

/// Asks every reader to stop and waits (at most `bound`) for all of them. `Err` holds
/// the ones that stopped when some did not: give them to `resume`.
pub fn stop_readers(bound: Duration) -> Result<Vec<Report>, Vec<Report>> {
    let s = shared();
    wake::handover().raise();
    let end = Instant::now() + bound;
    let Ok(mut i) = s.inner.lock() else {
        return Err(Vec::new());
    };
    while i.live > 0 {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::mem::take(&mut i.reports));
        }
        i = match s.cond.wait_timeout(i, left) {
            Ok((g, _)) => g,
            Err(_) => return Err(Vec::new()),
        };
    }
    Ok(std::mem::take(&mut i.reports))
}

/// Calls a handover off: every reader stopped for it reads on where it was, including
/// one that reported after `stop_readers` gave up waiting (dropping its report would
/// close its pipe).
pub fn resume(reports: Vec<Report>) {
    let s = shared();
    let late = match s.inner.lock() {
        Ok(mut i) => {
            wake::handover().lower();
            std::mem::take(&mut i.reports)
        }
        Err(_) => Vec::new(),
    };
    for r in reports.into_iter().chain(late) {
        restart(r.fd, r.ctx, r.carry);
    }
}

/// Starts a reader on a pipe handed over; without a thread, the pipe is closed and the
/// service sees EPIPE, as it would at any reader's failure.
pub fn restart(fd: OwnedFd, ctx: ReaderCtx, carry: Vec<u8>) {
    let service = ctx.service.clone();
    if let Err(e) = spawn_reader_with(fd, ctx, carry) {
        log::error!("{service}: cannot restart an output thread: {e}");
    }
}

/// A reader's pipe as the new image finds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedReader {
    pub service: String,
    pub pid: i32,
    pub stderr: bool,
    pub fd: RawFd,
    pub carry: Vec<u8>,
}

impl Report {
    /// The pipe as the new image will find it (the caller leaves it open across exec).
    pub fn describe(&self) -> CarriedReader {
        let fd = self.fd.as_raw_fd();
        CarriedReader {
            service: self.ctx.service.to_string(),
            pid: self.ctx.pid.load(Ordering::Relaxed),
            stderr: self.ctx.stream == Stream::Stderr,
            fd,
            carry: self.carry.clone(),
        }
    }
}

impl CarriedReader {
    /// The pipe, owned again (close-on-exec again).
    pub fn take_fd(&self) -> Option<OwnedFd> {
        crate::process::inherit::adopt(self.fd)
    }
}

/// One batch of a service's kept lines, as carried.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedBatch {
    pid: i32,
    stderr: bool,
    ts_ms: u64,
    text: String,
    /// (start, end, level 1-5, partial)
    lines: Vec<(usize, usize, u8, bool)>,
    event: Option<String>,
}

impl Ring {
    pub fn carry(&self) -> Vec<CarriedBatch> {
        self.batches()
            .map(|b| CarriedBatch {
                pid: b.pid,
                stderr: b.stream == Stream::Stderr,
                ts_ms: b.ts_ms,
                text: b.text.clone(),
                lines: b
                    .lines
                    .iter()
                    .map(|l| (l.start, l.end, l.level as u8, l.partial))
                    .collect(),
                event: b.event.map(str::to_string),
            })
            .collect()
    }

    /// The kept lines as carried, pushed in order; lines whose ranges do not fit
    /// their text are left out.
    pub fn restore(
        &mut self,
        service: &Arc<str>,
        unwritten: &Arc<AtomicU64>,
        carried: Vec<CarriedBatch>,
    ) {
        for c in carried {
            let lines: Vec<Line> = c
                .lines
                .iter()
                .filter(|&&(s, e, _, _)| s <= e && c.text.get(s..e).is_some())
                .map(|&(start, end, level, partial)| Line {
                    start,
                    end,
                    level: level_of(level),
                    partial,
                })
                .collect();
            self.push(Arc::new(Batch {
                service: service.clone(),
                pid: c.pid,
                stream: if c.stderr {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                ts_ms: c.ts_ms,
                unwritten: unwritten.clone(),
                text: c.text,
                lines,
                event: c.event.as_deref().map(intern),
            }));
        }
    }
}

fn level_of(n: u8) -> log::Level {
    match n {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        4 => log::Level::Debug,
        5 => log::Level::Trace,
        _ => log::Level::Info,
    }
}

/// An event name as the `&'static str` batches hold: the names are few, so each is
/// leaked once.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let Ok(mut names) = NAMES.lock() else {
        return "event";
    };
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    if names.len() >= 64 {
        return "event";
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    leaked
}
