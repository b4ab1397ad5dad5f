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

use crate::common::decode::{self, field, Decode};
use crate::common::level;
use crate::output::reader::ReaderCtx;
use crate::output::reader::{spawn_reader_with, Ring};
use crate::output::record::RecordKind;
use crate::output::sink::{Batch, Line, Stream};
use crate::process::wake;
use serde::Serialize;
use serde_json::Value;
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
#[derive(Debug, Serialize)]
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

impl Decode for CarriedReader {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(CarriedReader {
            service: field(v, "service")?,
            pid: field(v, "pid")?,
            stderr: field(v, "stderr")?,
            fd: field(v, "fd")?,
            carry: field(v, "carry")?,
        })
    }
}

impl Decode for CarriedBatch {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(CarriedBatch {
            pid: field(v, "pid")?,
            stderr: field(v, "stderr")?,
            ts_ms: field(v, "ts_ms")?,
            text: field(v, "text")?,
            lines: field(v, "lines")?,
            event: field(v, "event")?,
        })
    }
}

impl CarriedReader {
    /// The pipe, owned again (close-on-exec again).
    pub fn take_fd(&self) -> Option<OwnedFd> {
        crate::process::inherit::adopt(self.fd)
    }
}

/// One batch of a service's kept lines, as carried.
#[derive(Debug, Serialize)]
pub struct CarriedBatch {
    pid: i32,
    stderr: bool,
    ts_ms: u64,
    text: String,
    /// (start, end, level 1-5, partial)
    lines: Vec<(usize, usize, u8, bool)>,
    /// A lifecycle record's kind, by name.
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
                event: b.event.map(|k| k.as_str().to_string()),
            })
            .collect()
    }

    /// The kept lines as carried, pushed in order; lines whose ranges do not fit
    /// their text are left out, and so is a lifecycle record of a kind this image does
    /// not know (from another version), rather than shown as something it is not.
    pub fn restore(
        &mut self,
        service: &Arc<str>,
        unwritten: &Arc<AtomicU64>,
        carried: Vec<CarriedBatch>,
    ) {
        for c in carried {
            let event = match c.event.as_deref().map(RecordKind::from_name) {
                None => None,
                Some(Some(kind)) => Some(kind),
                Some(None) => continue,
            };
            let lines: Vec<Line> = c
                .lines
                .iter()
                .filter(|&&(s, e, _, _)| s <= e && c.text.get(s..e).is_some())
                .map(|&(start, end, level, partial)| Line {
                    start,
                    end,
                    level: level::from_rank(level),
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
                event,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_reader_reads_back_as_written() {
        let r = CarriedReader {
            service: "web".into(),
            pid: 42,
            stderr: true,
            fd: 7,
            carry: b"half a li".to_vec(),
        };
        let (written, again) = crate::common::decode::round_trip(&r);
        assert_eq!(written, again);
        assert_eq!(CarriedReader::decode(&written).unwrap().carry, r.carry);
    }

    fn batch(event: Option<RecordKind>, level: log::Level) -> Arc<Batch> {
        Arc::new(Batch {
            service: "web".into(),
            pid: 0,
            stream: Stream::Stderr,
            ts_ms: 1_795_758_797_123,
            unwritten: Arc::default(),
            text: "said".into(),
            lines: vec![Line {
                start: 0,
                end: 4,
                level,
                partial: false,
            }],
            event,
        })
    }

    #[test]
    fn kept_lines_and_records_come_back_as_they_were() {
        let mut old = Ring::default();
        old.push(batch(None, log::Level::Warn));
        old.push(batch(Some(RecordKind::RolledBack), log::Level::Error));
        old.push(batch(Some(RecordKind::Started), log::Level::Trace));
        let mut carried = old.carry();
        // Written by the image handing over; a kind from another version is left out.
        assert_eq!(carried[1].event.as_deref(), Some("rolled back"));
        carried.insert(
            1,
            CarriedBatch::decode(
                &serde_json::from_str(
                    &serde_json::to_string(&carried[0])
                        .unwrap()
                        .replace("\"event\":null", "\"event\":\"renamed\""),
                )
                .unwrap(),
            )
            .unwrap(),
        );
        let mut new = Ring::default();
        new.restore(&"web".into(), &Arc::default(), carried);
        let shown = |r: &Ring| -> Vec<crate::common::protocol::LogLine> {
            r.tail(10).iter().map(|(b, l)| b.log_line(l)).collect()
        };
        assert_eq!(shown(&new), shown(&old));
        assert_eq!(shown(&new)[1].event.as_deref(), Some("rolled back"));
        assert_eq!(shown(&new)[2].level, "trace");
    }
}
