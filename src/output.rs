//! The per-stream reader threads (SPEC 9): each reads one pipe of one run, cuts it into
//! lines, keeps them in the service's ring for `logs`, counts them and hands them to the
//! sink. A reader never decides liveness: the run ends when the waiter says so, and a
//! reader whose pipe a descendant keeps open simply stays blocked in read().
//!
//! Memory per reader is bounded by `max_line_bytes` plus one read, and an idle reader
//! holds no buffer at all: it waits in poll() and allocates only when data arrives.

use crate::log::{LineRecord, Sink, Stream};
use crate::timefmt;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Lines kept per service for `logs`.
pub const RING_LINES: usize = 1000;
/// Bytes kept per service for `logs`, whatever the line lengths: the ring never holds more
/// than this, so a service writing huge lines cannot make the daemon big.
pub const RING_BYTES: usize = 1024 * 1024;
/// How much one read() takes at most.
const READ_CHUNK: usize = 16 * 1024;
const READER_STACK: usize = 128 * 1024;

/// The last lines of one service, shared by its readers and the control plane.
#[derive(Default)]
pub struct Ring {
    lines: VecDeque<Arc<LineRecord>>,
    bytes: usize,
}

impl Ring {
    pub fn push(&mut self, rec: Arc<LineRecord>) {
        self.bytes += rec.msg.len();
        self.lines.push_back(rec);
        while self.lines.len() > RING_LINES || (self.bytes > RING_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.msg.len();
            }
        }
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Arc<LineRecord>> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }
}

/// Per-service output counters (for `status` and `metrics`).
#[derive(Default)]
pub struct Counters {
    pub stdout_lines: AtomicU64,
    pub stderr_lines: AtomicU64,
    /// Lines that could not be written to the service's log file.
    pub file_unwritten: Arc<AtomicU64>,
}

/// What a reader needs to know about the run it serves.
pub struct ReaderCtx {
    pub service: Arc<str>,
    pub pid: i32,
    pub stream: Stream,
    pub max_line: usize,
    pub sink: Sink,
    pub ring: Arc<Mutex<Ring>>,
    pub counters: Arc<Counters>,
}

pub fn spawn_reader(fd: OwnedFd, ctx: ReaderCtx) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("out-{}", ctx.pid))
        .stack_size(READER_STACK)
        .spawn(move || read_loop(fd, ctx))
        .map(|_| ())
}

fn read_loop(fd: OwnedFd, ctx: ReaderCtx) {
    let mut splitter = Splitter::new(ctx.max_line);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() == 0 && !wait_readable(&fd) {
            break;
        }
        if buf.capacity() < READ_CHUNK {
            buf.reserve_exact(READ_CHUNK);
        }
        buf.clear();
        // SAFETY: the pointer and length describe buf's spare capacity, which read()
        // may fill; set_len below covers only the bytes it reported.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.capacity()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        // SAFETY: read() initialised the first n bytes.
        unsafe { buf.set_len(n as usize) };
        let mut alive = true;
        splitter.feed(&buf, |chunk, partial| {
            alive &= emit(&ctx, chunk, partial);
        });
        if !alive {
            break;
        }
        if splitter.is_empty() {
            // Between bursts, hold no buffer: an idle service costs only the thread.
            buf = Vec::new();
        }
    }
    splitter.finish(|chunk, partial| {
        emit(&ctx, chunk, partial);
    });
}

/// Blocks until the pipe has data or is closed. No timeout: this is a wait, not a poll.
fn wait_readable(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r >= 0 {
            return true;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Hands one line to the ring, the counters and the sink. False when the sink is gone.
fn emit(ctx: &ReaderCtx, bytes: &[u8], partial: bool) -> bool {
    let msg = String::from_utf8_lossy(bytes).into_owned();
    let default = match ctx.stream {
        Stream::Stdout => log::Level::Info,
        Stream::Stderr => log::Level::Warn,
    };
    let level = json_level(&msg).unwrap_or(default);
    let rec = Arc::new(LineRecord {
        ts_ms: timefmt::unix_ms(SystemTime::now()),
        level,
        service: ctx.service.clone(),
        pid: ctx.pid,
        stream: ctx.stream,
        msg,
        partial,
        unwritten: ctx.counters.file_unwritten.clone(),
    });
    match ctx.stream {
        Stream::Stdout => &ctx.counters.stdout_lines,
        Stream::Stderr => &ctx.counters.stderr_lines,
    }
    .fetch_add(1, Ordering::Relaxed);
    if let Ok(mut ring) = ctx.ring.lock() {
        ring.push(rec.clone());
    }
    ctx.sink.line(rec)
}

/// The `level` of a line that is a JSON object with one, as a log level.
pub fn json_level(line: &str) -> Option<log::Level> {
    let t = line.trim_start();
    if !t.starts_with('{') {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        level: Option<std::borrow::Cow<'a, str>>,
    }
    let probe: Probe = serde_json::from_str(t).ok()?;
    let level = probe.level?;
    Some(match level.to_ascii_lowercase().as_str() {
        "trace" => log::Level::Trace,
        "debug" => log::Level::Debug,
        "info" | "notice" => log::Level::Info,
        "warn" | "warning" => log::Level::Warn,
        "error" | "err" | "fatal" | "critical" | "crit" | "panic" | "alert" | "emerg" => {
            log::Level::Error
        }
        _ => return None,
    })
}

/// Cuts a byte stream into lines of at most `max` bytes. A longer line becomes chunks,
/// each but the last marked partial; chunks end on a UTF-8 character boundary when one
/// lies in the last 3 bytes, so a character is not cut in two.
pub struct Splitter {
    max: usize,
    pending: Vec<u8>,
}

impl Splitter {
    pub fn new(max: usize) -> Splitter {
        Splitter {
            max: max.max(1),
            pending: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn feed(&mut self, mut data: &[u8], mut out: impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (line, rest) = (&data[..i], &data[i + 1..]);
                    if self.pending.is_empty() {
                        self.emit_full(line, &mut out);
                    } else {
                        self.pending.extend_from_slice(line);
                        let p = std::mem::take(&mut self.pending);
                        self.emit_full(&p, &mut out);
                        self.pending = p;
                        self.pending.clear();
                    }
                    data = rest;
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    self.drain_long(&mut out);
                }
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
    }

    /// The stream ended: whatever is pending is the last line.
    pub fn finish(&mut self, mut out: impl FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.emit_full(&p, &mut out);
        }
    }

    /// A complete line: in chunks if it is too long.
    fn emit_full(&self, mut line: &[u8], out: &mut impl FnMut(&[u8], bool)) {
        while line.len() > self.max {
            let cut = self.cut_at(line);
            out(&line[..cut], true);
            line = &line[cut..];
        }
        out(line, false);
    }

    /// An unterminated line that already exceeds the limit: emit full chunks now so that
    /// memory stays bounded.
    fn drain_long(&mut self, out: &mut impl FnMut(&[u8], bool)) {
        let mut start = 0;
        while self.pending.len() - start > self.max {
            let cut = self.cut_at(&self.pending[start..]);
            out(&self.pending[start..start + cut], true);
            start += cut;
        }
        if start > 0 {
            self.pending.drain(..start);
        }
    }

    fn cut_at(&self, line: &[u8]) -> usize {
        let mut cut = self.max;
        // Step back over UTF-8 continuation bytes (at most 3) to a character start.
        let mut back = 0;
        while back < 3 && cut > 1 && (line[cut] & 0xC0) == 0x80 {
            cut -= 1;
            back += 1;
        }
        if (line[cut] & 0xC0) == 0x80 {
            self.max
        } else {
            cut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, parts: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        for p in parts {
            s.feed(p, |c, partial| {
                out.push((String::from_utf8_lossy(c).into_owned(), partial))
            });
        }
        if finish {
            s.finish(|c, partial| out.push((String::from_utf8_lossy(c).into_owned(), partial)));
        }
        out
    }

    fn full(v: &[&str]) -> Vec<(String, bool)> {
        v.iter().map(|s| (s.to_string(), false)).collect()
    }

    #[test]
    fn lines_across_reads() {
        assert_eq!(
            split(100, &[b"a\nb", b"c\n\nd"], false),
            full(&["a", "bc", ""])
        );
        assert_eq!(
            split(100, &[b"a\nb", b"c\n\nd"], true),
            full(&["a", "bc", "", "d"])
        );
    }

    #[test]
    fn long_lines_are_chunked_and_marked() {
        let out = split(4, &[b"abcdefghij\nxy\n"], false);
        assert_eq!(
            out,
            vec![
                ("abcd".into(), true),
                ("efgh".into(), true),
                ("ij".into(), false),
                ("xy".into(), false)
            ]
        );
        // Exactly max is one unmarked line.
        assert_eq!(split(4, &[b"abcd\n"], false), full(&["abcd"]));
    }

    #[test]
    fn unterminated_long_line_is_bounded() {
        let mut s = Splitter::new(8);
        let mut n = 0;
        for _ in 0..1000 {
            s.feed(&[b'x'; 100], |c, partial| {
                assert!(c.len() <= 8 && partial);
                n += c.len();
            });
            assert!(s.pending.len() <= 8);
        }
        s.finish(|c, partial| {
            assert!(!partial);
            n += c.len();
        });
        assert_eq!(n, 100_000);
    }

    #[test]
    fn chunks_do_not_cut_characters() {
        // "é" is two bytes; with max 3, "aé" fits, "aéé" must cut before the second é.
        let out = split(3, &["aééb\n".as_bytes()], false);
        assert_eq!(out, vec![("aé".into(), true), ("éb".into(), false)]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let out = split(100, &[b"a\xffb\n"], false);
        assert_eq!(out, full(&["a\u{fffd}b"]));
    }

    #[test]
    fn json_levels() {
        assert_eq!(
            json_level(r#"{"level":"error","msg":"x"}"#),
            Some(log::Level::Error)
        );
        assert_eq!(json_level(r#"{"level":"DEBUG"}"#), Some(log::Level::Debug));
        assert_eq!(json_level(r#"{"msg":"no level"}"#), None);
        assert_eq!(json_level(r#"{"level":"weird"}"#), None);
        assert_eq!(json_level("not json"), None);
        assert_eq!(json_level("{broken"), None);
    }

    #[test]
    fn ring_bounds_lines_and_bytes() {
        let mut r = Ring::default();
        for i in 0..1500 {
            r.push(Arc::new(LineRecord {
                ts_ms: 0,
                level: log::Level::Info,
                service: "s".into(),
                pid: 1,
                stream: Stream::Stdout,
                msg: format!("{i}"),
                partial: false,
                unwritten: Arc::default(),
            }));
        }
        assert_eq!(r.lines.len(), RING_LINES);
        assert_eq!(r.tail(2)[1].msg, "1499");
        r.push(Arc::new(LineRecord {
            ts_ms: 0,
            level: log::Level::Info,
            service: "s".into(),
            pid: 1,
            stream: Stream::Stdout,
            msg: "x".repeat(RING_BYTES),
            partial: false,
            unwritten: Arc::default(),
        }));
        assert_eq!(r.lines.len(), 1);
    }
}
