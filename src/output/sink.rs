//! The log sink: the one thread that writes log records (docs/logs.md).
//!
//! Service lines arrive from the output readers over a bounded channel with a blocking
//! send: when the destination is slow or blocked, readers stop reading and children block
//! in write(), so no line is ever dropped and memory stays bounded. The daemon's own
//! records (events, and `log` macros through env_logger) are offered with `try_send` and
//! counted when the channel is full, so the main loop never blocks on its log; the count
//! is written as soon as writing works again.
//!
//! This module formats; it never decides anything about services.

use crate::common::level;
use crate::common::protocol::LogLine;
use crate::config::{LogFormat, LogLevel};
use crate::output::files::{Destination, FileConfig, LogFiles};
use crate::output::forward::{ForwardConfig, ForwardSetting, Forwarding};
use crate::output::record::{Record, RecordKind};
use crate::output::timefmt;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Records in flight between producers and the writer. With lines of at most
/// `max_line_bytes`, this bounds the sink's memory.
const QUEUE: usize = 128;
/// Formatted output is written in pieces of about this size (and whenever the queue
/// runs empty).
const OUT_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The lines (or chunks of long lines) one read() of one stream produced. What they
/// share is stored once; their text sits in one buffer: the per-line cost of the log
/// path is a copy and an index entry, not allocations.
#[derive(Debug)]
pub struct Batch {
    pub service: Arc<str>,
    pub pid: i32,
    pub stream: Stream,
    /// When the read returned.
    pub ts_ms: u64,
    /// Counts lines of this service that could not be written to its log file.
    pub unwritten: Arc<AtomicU64>,
    pub text: String,
    pub lines: Vec<Line>,
    /// A lifecycle record kept among the service's lines (`logs`), not output.
    pub event: Option<RecordKind>,
}

/// One line of a batch: `text[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    pub level: log::Level,
    /// More of the same line follows in the next line.
    pub partial: bool,
}

impl Batch {
    pub fn msg(&self, line: &Line) -> &str {
        self.text.get(line.start..line.end).unwrap_or("")
    }

    /// One line as `logs` shows it: `{ts, level, pid, stream, msg, partial}`, and
    /// `event` (with `stream` and, for no process, `pid` null) for a lifecycle record.
    pub fn log_line(&self, line: &Line) -> LogLine {
        let event = self.event.map(|e| e.as_str().to_string());
        LogLine {
            ts: timefmt::rfc3339(self.ts_ms),
            level: level::name(line.level).to_string(),
            pid: (event.is_none() || self.pid != 0).then_some(self.pid),
            stream: event.is_none().then(|| self.stream.as_str().to_string()),
            msg: self.msg(line).to_string(),
            partial: line.partial,
            event,
        }
    }

    /// One line as the log writes it.
    pub fn record(&self, line: &Line) -> Record<'_> {
        let mut rec = Record {
            ts_ms: self.ts_ms,
            level: line.level,
            service: Some(&self.service),
            pid: Some(self.pid),
            stream: Some(self.stream),
            event: None,
            msg: self.msg(line),
            partial: line.partial,
        };
        // A lifecycle record kept for `logs` has no stream, and pid 0 for no process.
        if self.event.is_some() {
            rec.event = self.event;
            rec.stream = None;
            rec.pid = rec.pid.filter(|&pid| pid != 0);
        }
        rec
    }
}

/// Something the orchestrator did to a service, or said about itself.
#[derive(Debug)]
pub struct EventRecord {
    pub ts_ms: u64,
    pub level: log::Level,
    pub service: Option<String>,
    pub pid: Option<i32>,
    pub event: Option<RecordKind>,
    pub msg: String,
    /// The service's log file also gets this record (docs/cli.md: lifecycle events among
    /// its lines), with the service's count of unwritten lines.
    pub file: Option<(Arc<str>, Arc<AtomicU64>)>,
}

impl EventRecord {
    pub fn record(&self) -> Record<'_> {
        Record {
            ts_ms: self.ts_ms,
            level: self.level,
            service: self.service.as_deref(),
            pid: self.pid,
            stream: None,
            event: self.event,
            msg: &self.msg,
            partial: false,
        }
    }
}

pub enum SinkMsg {
    /// The lines one read() of one stream produced, in order.
    Lines(Arc<Batch>),
    Event(EventRecord),
    /// A daemon record from the `log` macros, already filtered (by env_logger).
    Own(EventRecord),
    /// Wakes the writer so that it flushes, and answers when done.
    Flush(Sender<()>),
    /// Other slow file work the main loop must not wait for (the state_dir file):
    /// this thread is the one that does I/O.
    Job(Box<dyn FnOnce() + Send>),
    /// Wakes the writer for a reopen (`Sink::reopen`).
    Reopen,
}

/// What the writer applies to every record; changed in place by a reload.
#[derive(Debug)]
struct Filter {
    level: AtomicU8,
    format: AtomicU8,
    /// `RUST_LOG` is set: it, not `log_level`, filters the daemon's own records.
    rust_log: std::sync::atomic::AtomicBool,
}

/// A cheap handle to the sink, cloned into every producer.
#[derive(Clone)]
pub struct Sink {
    tx: Sender<SinkMsg>,
    dropped: Arc<AtomicU64>,
    filter: Arc<Filter>,
    files: Arc<FilesSetting>,
    write_errors: Arc<AtomicU64>,
    /// Set by `reopen`, taken by the writer.
    reopen: Arc<std::sync::atomic::AtomicBool>,
    forward: Arc<ForwardSetting>,
}

/// The per-service log file settings, replaced by a reload; the writer picks a new one
/// up when `generation` moves.
#[derive(Default)]
struct FilesSetting {
    generation: AtomicU64,
    config: Mutex<Option<FileConfig>>,
}

impl Sink {
    /// Starts the writer thread on `out`.
    pub fn start(
        out: Box<dyn Destination>,
        level: LogLevel,
        format: LogFormat,
        files: Option<FileConfig>,
    ) -> io::Result<(Sink, std::thread::JoinHandle<()>)> {
        let (tx, rx) = bounded(QUEUE);
        let setting = FilesSetting::default();
        if let Ok(mut c) = setting.config.lock() {
            *c = files;
        }
        setting.generation.store(1, Ordering::Relaxed);
        let sink = Sink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            filter: Arc::new(Filter {
                level: AtomicU8::new(level::rank(level.level())),
                format: AtomicU8::new(format as u8),
                rust_log: std::sync::atomic::AtomicBool::new(false),
            }),
            files: Arc::new(setting),
            write_errors: Arc::new(AtomicU64::new(0)),
            reopen: Arc::default(),
            forward: Arc::default(),
        };
        let writer = Writer {
            out,
            filter: sink.filter.clone(),
            dropped: sink.dropped.clone(),
            buf: Vec::with_capacity(256),
            files: None,
            files_setting: sink.files.clone(),
            files_generation: 0,
            write_errors: sink.write_errors.clone(),
            head: Vec::with_capacity(96),
            reopen: sink.reopen.clone(),
            forwarding: Forwarding::default(),
            forward_setting: sink.forward.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("log-sink".into())
            .stack_size(128 * 1024)
            .spawn(move || writer.run(rx))?;
        Ok((sink, handle))
    }

    pub fn set_filter(&self, level: LogLevel, format: LogFormat) {
        self.filter
            .level
            .store(level::rank(level.level()), Ordering::Relaxed);
        self.filter.format.store(format as u8, Ordering::Relaxed);
        if !self.filter.rust_log.load(Ordering::Relaxed) {
            log::set_max_level(level.to_filter());
        }
    }

    /// New per-service log file settings (a reload); `None` turns the files off.
    pub fn set_files(&self, files: Option<FileConfig>) {
        if let Ok(mut c) = self.files.config.lock() {
            if *c != files {
                *c = files;
                self.files.generation.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Has the writer open every log file afresh by name (SIGUSR1, after logrotate):
    /// once it has written what it holds. Never blocks; a full queue means the writer
    /// is busy and sees the request with its next record.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(SinkMsg::Reopen);
        self.forward.reconnect();
    }

    /// New `log_forward` settings (at start, and by a reload); the writer starts and
    /// ends forwarders with its next record (the start's or the reload's own).
    pub fn set_forward(&self, config: ForwardConfig) {
        self.forward.set(config);
    }

    /// Makes the local syslog at `target` the daemon's log (set once, at start).
    pub fn set_forward_fallback(&self, target: crate::config::forward::ForwardTarget) {
        self.forward.set_fallback(target);
    }

    /// The `log_forward` targets, for counts and the drain at exit.
    pub fn forward(&self) -> &ForwardSetting {
        &self.forward
    }

    /// Writes to the daemon's own log (stderr or orchestrator.log) that failed.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Service lines: blocks while the queue is full (back-pressure).
    /// Returns false once the writer has gone.
    pub fn lines(&self, batch: Arc<Batch>) -> bool {
        self.tx.send(SinkMsg::Lines(batch)).is_ok()
    }

    /// A daemon record: never blocks; counted when it cannot be queued.
    pub fn event(&self, rec: EventRecord) {
        self.offer(SinkMsg::Event(rec));
    }

    fn offer(&self, msg: SinkMsg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues `job` for the writer thread if there is room; false if there was none.
    pub fn offer_job(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.tx.try_send(SinkMsg::Job(job)).is_ok()
    }

    /// Queues `job`, waiting (at most `timeout`) for room.
    pub fn send_job(&self, job: Box<dyn FnOnce() + Send>, timeout: std::time::Duration) -> bool {
        self.tx.send_timeout(SinkMsg::Job(job), timeout).is_ok()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until everything queued so far is written and flushed.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (tx, rx) = bounded(1);
        if self.tx.send_timeout(SinkMsg::Flush(tx), timeout).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

struct Writer {
    /// Unbuffered: `buf` is the buffer, written out when large or when the queue idles.
    out: Box<dyn Destination>,
    filter: Arc<Filter>,
    dropped: Arc<AtomicU64>,
    buf: Vec<u8>,
    files: Option<LogFiles>,
    files_setting: Arc<FilesSetting>,
    files_generation: u64,
    write_errors: Arc<AtomicU64>,
    /// The text form's `svc[pid] stream: `, the same for every line of the batch
    /// being written.
    head: Vec<u8>,
    reopen: Arc<std::sync::atomic::AtomicBool>,
    forwarding: Forwarding,
    forward_setting: Arc<ForwardSetting>,
}

impl Writer {
    fn run(mut self, rx: Receiver<SinkMsg>) {
        let mut reported_drops = 0u64;
        loop {
            // Flush only when the queue is momentarily empty: one write per burst.
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    // A request whose wake-up found the queue full is taken now.
                    if self.reopen.swap(false, Ordering::AcqRel) {
                        self.reopen_all();
                    }
                    self.flush_all();
                    match rx.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.refresh_files();
            self.forwarding.refresh(&self.forward_setting);
            let max = self.filter.level.load(Ordering::Relaxed);
            let json = self.filter.format.load(Ordering::Relaxed) == LogFormat::Json as u8;
            match msg {
                SinkMsg::Lines(batch) => {
                    self.forwarding.batch(&batch, max);
                    self.head.clear();
                    for line in &batch.lines {
                        let shown = level::rank(line.level) <= max;
                        if !shown && self.files.is_none() {
                            continue;
                        }
                        let start = self.buf.len();
                        let rec = batch.record(line);
                        if json {
                            rec.push_json(&mut self.buf);
                        } else {
                            if self.head.is_empty() {
                                rec.push_head(&mut self.head);
                            }
                            rec.push_text(&mut self.buf, &self.head);
                        }
                        // The service's file gets every line, whatever the level filter.
                        if let Some(files) = &mut self.files {
                            files.write(&batch.service, &self.buf[start..], &batch.unwritten);
                        }
                        if !shown {
                            self.buf.truncate(start);
                        }
                    }
                }
                SinkMsg::Event(rec) => {
                    let start = self.buf.len();
                    let shown = level::rank(rec.level) <= max;
                    let to_file = rec.file.as_ref().filter(|_| self.files.is_some());
                    if shown || to_file.is_some() {
                        rec.record().write(&mut self.buf, json);
                    }
                    self.forwarding.record(&rec.record(), shown);
                    // The service's file gets its lifecycle records, whatever the filter;
                    // one it cannot take is counted with the service's unwritten lines.
                    if let (Some(files), Some((service, unwritten))) = (&mut self.files, to_file) {
                        files.write(service, &self.buf[start..], unwritten);
                    }
                    if !shown {
                        self.buf.truncate(start);
                    }
                }
                SinkMsg::Own(rec) => {
                    rec.record().write(&mut self.buf, json);
                    self.forwarding.record(&rec.record(), true);
                }
                SinkMsg::Flush(done) => {
                    self.flush_all();
                    let _ = done.send(());
                    continue;
                }
                SinkMsg::Job(job) => {
                    job();
                    continue;
                }
                // In its place in the queue: what came before goes to the old files.
                SinkMsg::Reopen => {
                    if self.reopen.swap(false, Ordering::AcqRel) {
                        self.reopen_all();
                    }
                    continue;
                }
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > reported_drops {
                let rec = EventRecord {
                    ts_ms: timefmt::unix_ms(SystemTime::now()),
                    level: log::Level::Warn,
                    service: None,
                    pid: None,
                    event: Some(RecordKind::LogDropped),
                    msg: format!(
                        "{} orchestrator log records dropped while the log could not be written",
                        dropped - reported_drops
                    ),
                    file: None,
                };
                reported_drops = dropped;
                rec.record().write(&mut self.buf, json);
                self.forwarding.record(&rec.record(), true);
            }
            if self.buf.len() >= OUT_CHUNK {
                self.write_out();
            }
        }
        self.flush_all();
    }

    /// Writes what is formatted. A failed write (stderr closed, disk full) must not stop
    /// the writer, or readers would block forever: it is counted, and the per-service
    /// log files (when set) keep their own copy.
    fn write_out(&mut self) {
        if !self.buf.is_empty() && self.out.write_all(&self.buf).is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buf.clear();
        if self.buf.capacity() > 4 * OUT_CHUNK {
            self.buf.shrink_to(OUT_CHUNK);
        }
    }

    fn flush_all(&mut self) {
        self.forwarding.ring();
        self.write_out();
        if self.out.flush().is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(files) = &mut self.files {
            files.flush();
        }
    }

    /// What was formatted goes where it was meant to, then every file is opened anew.
    fn reopen_all(&mut self) {
        self.flush_all();
        match self.out.reopen() {
            Ok(()) => {}
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("cannot reopen the orchestrator's log: {e}");
            }
        }
        if let Some(files) = &mut self.files {
            files.reopen();
        }
        log::info!("log files reopened");
    }

    /// Picks up new per-service file settings after a reload.
    fn refresh_files(&mut self) {
        let generation = self.files_setting.generation.load(Ordering::Relaxed);
        if generation == self.files_generation {
            return;
        }
        self.files_generation = generation;
        if let Some(files) = &mut self.files {
            files.flush();
        }
        let cfg = self
            .files_setting
            .config
            .lock()
            .ok()
            .and_then(|c| c.clone());
        self.files = match (self.files.take(), cfg) {
            (Some(f), Some(c)) if *f.config() == c => Some(f),
            (_, Some(c)) => Some(LogFiles::new(c)),
            (_, None) => None,
        };
    }
}

/// Routes the `log` macros through env_logger (for `RUST_LOG`-style filtering) into the
/// sink, without ever blocking the caller.
pub fn install_logger(sink: &Sink, level: LogLevel) {
    let mut builder = env_logger::Builder::new();
    let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    match &rust_log {
        Some(spec) => {
            builder.parse_filters(spec);
        }
        // Everything passes env_logger; `log::set_max_level` applies `log_level`, so that
        // a reload can change it.
        None => {
            builder.filter_level(log::LevelFilter::Trace);
        }
    }
    sink.filter
        .rust_log
        .store(rust_log.is_some(), Ordering::Relaxed);
    let fmt_sink = sink.clone();
    builder.format(move |buf, record| {
        // Handed over whole, not as text: the writer formats it for the log and
        // encodes it for each `log_forward` target; env_logger gets nothing to write.
        fmt_sink.offer(SinkMsg::Own(EventRecord {
            ts_ms: timefmt::unix_ms(SystemTime::now()),
            level: record.level(),
            service: None,
            pid: None,
            event: None,
            msg: record.args().to_string(),
            file: None,
        }));
        let _ = buf;
        Ok(())
    });
    builder.target(env_logger::Target::Pipe(Box::new(io::sink())));
    // Only fails if a logger is already installed (a second call); then the first stays.
    let _ = builder.try_init();
    if rust_log.is_none() {
        log::set_max_level(level.to_filter());
    }
}

#[cfg(test)]
mod tests;
