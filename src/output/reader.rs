//! The per-stream reader threads (docs/logs.md): each reads one pipe of one run, cuts it
//! into lines, keeps them in the service's ring for `logs`, counts them and hands them to
//! the sink. A reader never decides liveness: the run ends when the waiter says so, and a
//! reader whose pipe a descendant keeps open simply stays blocked in read().
//!
//! Memory per reader is bounded by `max_line_bytes` plus one read, and an idle reader
//! holds no buffer at all: it waits in poll() and allocates only when data arrives.

use crate::output::handover;
use crate::output::sink::{Batch, Line, Sink, Stream};
use crate::output::timefmt;
use crate::process::waiter::Drain;
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
/// How much one read() takes at most: a full pipe (64 KiB by default) in one go.
const READ_CHUNK: usize = 64 * 1024;
/// Under a flood, how long a reader lets the pipe fill before it reads again.
///
/// The kernel wakes a pipe's reader each time the pipe goes from empty to non-empty, so
/// a reader that keeps up is woken for almost every write, and a wake-up (poll, read,
/// scheduling, one batch to the log writer) costs far more than a line. When reads come
/// back to back, pausing this long lets a few hundred lines gather, read in one go. A
/// service that writes now and then is never delayed: the pause applies only while the
/// previous read was less than FLOOD ago.
const COALESCE: std::time::Duration = std::time::Duration::from_micros(200);
const FLOOD: std::time::Duration = std::time::Duration::from_millis(2);
const READER_STACK: usize = 128 * 1024;

/// The last lines of one service, shared by its readers and the control plane. It
/// keeps whole batches (the ones the log writer got, shared, not copied) and drops the
/// oldest batch once the others hold RING_LINES lines, or once it holds more than
/// RING_BYTES; so it holds at least the last RING_LINES lines (within the byte cap).
#[derive(Default)]
pub struct Ring {
    batches: VecDeque<Arc<Batch>>,
    lines: usize,
    bytes: usize,
    /// `logs -f` clients: each gets every new batch, or counts what it could not take.
    followers: Vec<Follower>,
}

/// Bytes of output a `logs -f` client may have waiting before it loses lines: the
/// service never waits for a follower, and a stalled one costs at most this.
const FOLLOW_BYTES: usize = 1024 * 1024;

struct Follower {
    tx: crossbeam_channel::Sender<Arc<Batch>>,
    dropped: Arc<AtomicU64>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// What a new follower gets: the kept lines, then every new batch on `rx`; lines it
/// was too slow for are counted in `dropped`. Whoever takes a batch from `rx` gives
/// its bytes back with `taken`.
pub struct Follow {
    pub tail: Vec<(Arc<Batch>, Line)>,
    pub rx: crossbeam_channel::Receiver<Arc<Batch>>,
    pub dropped: Arc<AtomicU64>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Follow {
    /// A batch from `rx` has been dealt with: its bytes no longer count as waiting.
    pub fn taken(&self, batch: &Batch) {
        self.queued.fetch_sub(batch.text.len(), Ordering::Relaxed);
    }
}

impl Ring {
    /// The last `n` lines and, in the same step, a subscription to every later batch:
    /// nothing is lost or repeated between the two.
    pub fn follow(&mut self, n: usize) -> Follow {
        let (tx, rx) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.followers.push(Follower {
            tx,
            dropped: dropped.clone(),
            queued: queued.clone(),
        });
        Follow {
            tail: self.tail(n),
            rx,
            dropped,
            queued,
        }
    }

    pub fn push(&mut self, batch: Arc<Batch>) {
        if !self.followers.is_empty() {
            let size = batch.text.len();
            self.followers.retain(|f| {
                if Arc::strong_count(&f.queued) == 1 {
                    return false; // Its client is gone (the Follow was dropped).
                }
                if f.queued.load(Ordering::Relaxed) + size > FOLLOW_BYTES {
                    f.dropped
                        .fetch_add(batch.lines.len() as u64, Ordering::Relaxed);
                    return true;
                }
                f.queued.fetch_add(size, Ordering::Relaxed);
                f.tx.send(batch.clone()).is_ok()
            });
        }
        self.lines += batch.lines.len();
        self.bytes += batch.text.len();
        self.batches.push_back(batch);
        while let Some(front) = self.batches.front() {
            let rest = self.lines - front.lines.len();
            let too_many = rest >= RING_LINES;
            let too_big = self.bytes > RING_BYTES && self.batches.len() > 1;
            if !(too_many || too_big) {
                break;
            }
            self.lines = rest;
            self.bytes -= front.text.len();
            self.batches.pop_front();
        }
    }

    /// The last `n` lines (at most RING_LINES), oldest first, with their batch.
    /// Lets every `logs -f` client go: its stream ends once it has taken what it had.
    pub fn end_followers(&mut self) {
        self.followers.clear();
    }

    /// The kept batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &Arc<Batch>> {
        self.batches.iter()
    }

    pub fn tail(&self, n: usize) -> Vec<(Arc<Batch>, Line)> {
        let n = n.min(RING_LINES);
        let mut out = Vec::with_capacity(n.min(self.lines));
        for b in self.batches.iter().rev() {
            for line in b.lines.iter().rev() {
                if out.len() == n {
                    out.reverse();
                    return out;
                }
                out.push((b.clone(), *line));
            }
        }
        out.reverse();
        out
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
    /// The pid the run's lines are tagged with: its main process, which a `pid_file`
    /// hand-over changes while the readers run.
    pub pid: Arc<std::sync::atomic::AtomicI32>,
    pub stream: Stream,
    pub max_line: usize,
    pub sink: Sink,
    pub ring: Arc<Mutex<Ring>>,
    pub counters: Arc<Counters>,
    pub drain: Arc<Drain>,
}

pub fn spawn_reader(fd: OwnedFd, ctx: ReaderCtx) -> io::Result<()> {
    spawn_reader_with(fd, ctx, Vec::new())
}

/// `spawn_reader` for a pipe whose first bytes (`carry`, the unfinished end of a line)
/// were read before a handover.
pub fn spawn_reader_with(fd: OwnedFd, ctx: ReaderCtx, carry: Vec<u8>) -> io::Result<()> {
    let live = handover::enter();
    std::thread::Builder::new()
        .name(format!("out-{}", ctx.pid.load(Ordering::Relaxed)))
        .stack_size(READER_STACK)
        .spawn(move || {
            let _live = live;
            let (mut fd, mut ctx, mut carry) = (fd, ctx, carry);
            loop {
                match read_loop(&fd, &ctx, carry) {
                    Ended::Eof => return ctx.drain.finished(),
                    Ended::Handover(rest) => match handover::report(fd, ctx, rest) {
                        None => return,
                        // Called off meanwhile: read on.
                        Some(back) => (fd, ctx, carry) = back,
                    },
                }
            }
        })
        .map(|_| ())
}

/// Why a reader stopped.
enum Ended {
    /// The pipe reached its end (or the sink is gone).
    Eof,
    /// A handover asked it to stop, at a line boundary: the bytes after the last
    /// complete line, read but not delivered.
    Handover(Vec<u8>),
}

fn read_loop(fd: &OwnedFd, ctx: &ReaderCtx, mut carry: Vec<u8>) -> Ended {
    // A full read suggests more is waiting: read again without asking poll first.
    let mut more = false;
    let mut last_read: Option<std::time::Instant> = None;
    loop {
        if !more && last_read.is_some_and(|t| t.elapsed() < FLOOD) {
            std::thread::sleep(COALESCE);
        }
        if handover::asked() {
            return Ended::Handover(carry);
        }
        // Wait before allocating: an idle reader holds no buffer at all.
        if !more {
            match wait_readable(fd) {
                Readable::Yes => {}
                Readable::Handover => return Ended::Handover(carry),
                Readable::Error => break,
            }
        }
        // Read straight into the buffer that becomes the batch's text: no copy.
        let mut buf: Vec<u8> = Vec::with_capacity(carry.len() + READ_CHUNK);
        buf.extend_from_slice(&carry);
        let n = loop {
            // SAFETY: the pointer and length describe buf's spare capacity, which read()
            // may fill; set_len below covers only the bytes it reported.
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().add(buf.len()).cast(),
                    buf.capacity() - buf.len(),
                )
            };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n <= 0 {
            break;
        }
        more = n as usize == READ_CHUNK;
        last_read = Some(std::time::Instant::now());
        // SAFETY: read() initialised n more bytes after the carried ones.
        unsafe { buf.set_len(buf.len() + n as usize) };
        let mut ranges = Vec::with_capacity(n as usize / 48 + 1);
        carry = split(&mut buf, ctx.max_line, false, &mut ranges);
        if !deliver(ctx, make_batch(&ctx.head(), buf, &ranges)) {
            return Ended::Eof;
        }
    }
    // End of stream: the unfinished line is the last one.
    let mut ranges = Vec::new();
    split(&mut carry, ctx.max_line, true, &mut ranges);
    deliver(ctx, make_batch(&ctx.head(), carry, &ranges));
    Ended::Eof
}

enum Readable {
    Yes,
    Handover,
    Error,
}

/// Blocks until the pipe has data or is closed, or a handover begins. No timeout: this
/// is a wait, not a poll.
fn wait_readable(fd: &OwnedFd) -> Readable {
    loop {
        match crate::process::wake::wait(fd.as_raw_fd(), crate::process::wake::handover().fd()) {
            Ok((_, true)) if handover::asked() => return Readable::Handover,
            Ok((true, _)) => return Readable::Yes,
            // The wake descriptor of a handover being called off: wait again.
            Ok(_) => continue,
            Err(_) => return Readable::Error,
        }
    }
}

/// Hands the lines of one read to the ring, the counters and the sink, in one go.
/// False when the sink is gone.
fn deliver(ctx: &ReaderCtx, batch: Batch) -> bool {
    if batch.lines.is_empty() {
        return true;
    }
    match ctx.stream {
        Stream::Stdout => &ctx.counters.stdout_lines,
        Stream::Stderr => &ctx.counters.stderr_lines,
    }
    .fetch_add(batch.lines.len() as u64, Ordering::Relaxed);
    let batch = Arc::new(batch);
    if let Ok(mut ring) = ctx.ring.lock() {
        ring.push(batch.clone());
    }
    ctx.sink.lines(batch)
}

/// The batch for `buf`, whose lines are `ranges` (start, end, partial). Valid UTF-8
/// (the usual case) is taken as it is; otherwise each line is rebuilt with invalid
/// sequences replaced.
fn make_batch(head: &Head, mut buf: Vec<u8>, ranges: &[(usize, usize, bool)]) -> Batch {
    let default = match head.stream {
        Stream::Stdout => log::Level::Info,
        Stream::Stderr => log::Level::Warn,
    };
    if buf.capacity() - buf.len() > 1024 {
        // The ring may keep this batch a while: keep what it holds, not what it might.
        buf.shrink_to_fit();
    }
    let (text, ranges): (String, Vec<(usize, usize, bool)>) = match String::from_utf8(buf) {
        Ok(text) => (text, ranges.to_vec()),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut text = String::with_capacity(bytes.len());
            let mut fixed = Vec::with_capacity(ranges.len());
            for &(s, e, partial) in ranges {
                let start = text.len();
                text.push_str(&String::from_utf8_lossy(&bytes[s..e]));
                fixed.push((start, text.len(), partial));
            }
            (text, fixed)
        }
    };
    let lines = ranges
        .iter()
        .map(|&(start, end, partial)| Line {
            start,
            end,
            level: json_level(&text[start..end]).unwrap_or(default),
            partial,
        })
        .collect();
    Batch {
        service: head.service.clone(),
        pid: head.pid,
        stream: head.stream,
        ts_ms: timefmt::unix_ms(SystemTime::now()),
        unwritten: head.unwritten.clone(),
        text,
        lines,
        event: None,
    }
}

/// What every batch of one reader shares.
struct Head {
    service: Arc<str>,
    pid: i32,
    stream: Stream,
    unwritten: Arc<AtomicU64>,
}

impl ReaderCtx {
    fn head(&self) -> Head {
        Head {
            service: self.service.clone(),
            pid: self.pid.load(Ordering::Relaxed),
            stream: self.stream,
            unwritten: self.counters.file_unwritten.clone(),
        }
    }
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

/// Cuts `buf` (an unfinished line carried from before, then fresh data) into lines of
/// at most `max` bytes, pushing `(start, end, partial)` ranges (newlines excluded). A
/// longer line becomes chunks, each but the last marked partial; a chunk ends on a
/// UTF-8 character boundary when one lies in its last 3 bytes, so a character is not
/// cut in two. Unless `eof`, an unfinished tail (at most `max` bytes) is cut off `buf`
/// and returned, to start the next buffer; memory stays bounded by `max` plus one read.
pub fn split(
    buf: &mut Vec<u8>,
    max: usize,
    eof: bool,
    out: &mut Vec<(usize, usize, bool)>,
) -> Vec<u8> {
    let max = max.max(1);
    let mut start = 0;
    while let Some(nl) = find_newline(&buf[start..]) {
        let end = start + nl;
        chunks(buf, start, end, max, true, out);
        start = end + 1;
    }
    if eof {
        if start < buf.len() {
            chunks(buf, start, buf.len(), max, true, out);
        }
        return Vec::new();
    }
    // Unfinished: what exceeds the limit already goes out as partial chunks.
    start = chunks(buf, start, buf.len(), max, false, out);
    let tail = buf[start..].to_vec();
    buf.truncate(start);
    tail
}

/// The first `\n` in `s`, eight bytes at a time (a zero byte in `word ^ 0x0a0a..`
/// sets that byte's high bit in `(x - 0x0101..) & !x & 0x8080..`).
fn find_newline(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&s[i..i + 8]);
        let x = u64::from_le_bytes(word) ^ NL;
        if x.wrapping_sub(ONES) & !x & HIGH != 0 {
            break;
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

/// Pushes `buf[start..end]` as chunks of at most `max` bytes. With `last`, the final
/// chunk is pushed as the end of the line; without, the final piece (at most `max`
/// bytes, or one character that is wider) is left: its start is returned.
fn chunks(
    buf: &[u8],
    mut start: usize,
    end: usize,
    max: usize,
    last: bool,
    out: &mut Vec<(usize, usize, bool)>,
) -> usize {
    while end - start > max {
        let Some(cut) = cut_at(&buf[start..end], max) else {
            break;
        };
        if last && start + cut == end {
            break;
        }
        out.push((start, start + cut, true));
        start += cut;
    }
    if last {
        out.push((start, end, false));
        return end;
    }
    start
}

/// Where to cut a too-long piece (`piece.len() > max`): at the last character boundary
/// at or before `max`, so that no UTF-8 character is cut in two. When `max` is smaller
/// than the piece's first character (a limit of 1 to 3 bytes), that whole character is
/// the chunk: a chunk is then at most 3 bytes over the limit, never invalid UTF-8 that
/// we made. `None`: the first character is not complete yet (wait for more bytes).
/// Bytes that are not UTF-8 at all are cut at `max`, as before (they are replaced).
fn cut_at(piece: &[u8], max: usize) -> Option<usize> {
    let continuation = |b: u8| (b & 0xC0) == 0x80;
    let mut cut = max;
    while cut > 0 && cut + 3 > max && continuation(piece[cut]) {
        cut -= 1;
    }
    if cut > 0 && !continuation(piece[cut]) {
        return Some(cut);
    }
    // The character at the start is wider than `max`: take it whole.
    let width = match piece[0] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return Some(max),
    };
    let well_formed = piece.iter().take(width).skip(1).all(|&b| continuation(b));
    if !well_formed {
        return Some(max);
    }
    (piece.len() >= width).then_some(width)
}

#[cfg(test)]
mod tests;
