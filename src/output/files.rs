//! Per-service log files (docs/logs.md): `log_dir/NAME.log`, rotated by rename into
//! `NAME.log.1` (newest) .. `NAME.log.<log_max_files>` before a line would take the
//! active file past `log_max_bytes`, with `log_max_total_bytes` capping all services'
//! files together (the oldest rotated files go first), so small flash never fills.
//!
//! Owned by the log writer thread alone. A line is written whole to one file or counted
//! as unwritten (disk full, directory gone): never split, never silently dropped. The
//! orchestrator's own `orchestrator.log` is not counted against the cap.

use crate::common::safe_fs::Dir;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Flush a service's buffered lines once this much is waiting.
const FLUSH_AT: usize = 32 * 1024;
/// Mode of the files we create: the service's lines are not for every local user.
const FILE_MODE: u32 = 0o640;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
    pub max_total: Option<u64>,
}

impl FileConfig {
    /// The per-service log file settings of `s`, when `log_dir` is set.
    pub fn of(s: &crate::config::Settings) -> Option<FileConfig> {
        s.log_dir.as_ref().map(|dir| FileConfig {
            dir: dir.clone(),
            max_bytes: s.log_max_bytes,
            max_files: s.log_max_files,
            max_total: s.log_max_total_bytes,
        })
    }
}

struct Active {
    file: Option<File>,
    /// Bytes in the active file, including what is buffered for it.
    size: u64,
    pending: Vec<u8>,
    pending_lines: u64,
    /// Where unwritten lines are counted (the service's counters).
    unwritten: Arc<AtomicU64>,
    /// Why the file could not be opened was said once (until it opens again).
    warned: bool,
}

pub struct LogFiles {
    cfg: FileConfig,
    /// log_dir, opened once: every file is reached through it (`safe_fs`), so neither a
    /// symlink planted in it nor a directory swapped for it redirects root's writes.
    dir: Option<Dir>,
    active: HashMap<Arc<str>, Active>,
    /// Bytes in every service's files, active and rotated.
    total: u64,
}

fn name_of(service: &str, n: u32) -> String {
    if n == 0 {
        format!("{service}.log")
    } else {
        format!("{service}.log.{n}")
    }
}

/// `NAME.log` or `NAME.log.N` of a service (not the orchestrator's own log): its number.
fn log_file_number(name: &str) -> Option<u32> {
    if name.starts_with("orchestrator.log") {
        return None;
    }
    if name.ends_with(".log") {
        return Some(0);
    }
    let (stem, n) = name.rsplit_once('.')?;
    stem.ends_with(".log").then_some(())?;
    n.parse().ok().filter(|n| *n > 0)
}

fn size_of(dir: Option<&Dir>, name: &str) -> u64 {
    dir.and_then(|d| d.regular(name))
        .map_or(0, |st| st.st_size as u64)
}

/// Bytes in every service's `NAME.log` and `NAME.log.<n>` in `dir`.
fn count_total(dir: &Dir) -> u64 {
    dir.names()
        .iter()
        .filter(|n| log_file_number(n).is_some())
        .map(|n| size_of(Some(dir), n))
        .sum()
}

/// Opens log_dir (creating it), or `None` when it cannot be used now.
fn open_dir(path: &std::path::Path) -> Option<Dir> {
    Dir::create(path, 0o755).ok()
}

impl LogFiles {
    pub fn new(cfg: FileConfig) -> LogFiles {
        // log_dir itself may belong to a service's user (its files are safe from them),
        // but a directory above it that another user controls could swap it for a link
        // before we open it: said, not refused, since the files stay safe from the rest.
        if let Some(u) = cfg.dir.parent().and_then(crate::common::safe_fs::untrusted) {
            log::warn!(
                "log_dir {}: {u}: another user could replace log_dir before it is opened",
                cfg.dir.display()
            );
        }
        let dir = open_dir(&cfg.dir);
        let total = dir.as_ref().map_or(0, count_total);
        LogFiles {
            cfg,
            dir,
            active: HashMap::new(),
            total,
        }
    }

    pub fn config(&self) -> &FileConfig {
        &self.cfg
    }

    /// Queues one formatted line (ending in a newline) for `service`'s file.
    pub fn write(&mut self, service: &Arc<str>, line: &[u8], unwritten: &Arc<AtomicU64>) {
        let len = line.len() as u64;
        let max_bytes = self.cfg.max_bytes;
        let needs_rotation = {
            let a = self.entry(service, unwritten);
            max_bytes > 0 && a.size > 0 && a.size + len > max_bytes
        };
        if needs_rotation {
            self.flush_one(service);
            self.rotate(service);
        }
        let a = self.entry(service, unwritten);
        a.pending.extend_from_slice(line);
        a.pending_lines += 1;
        a.size += len;
        let full = a.pending.len() >= FLUSH_AT;
        self.total += len;
        if full {
            self.flush_one(service);
        }
        if self.cfg.max_total.is_some_and(|cap| self.total > cap) {
            self.enforce_total(service);
        }
    }

    fn entry(&mut self, service: &Arc<str>, unwritten: &Arc<AtomicU64>) -> &mut Active {
        let dir = self.dir.as_ref();
        self.active
            .entry(service.clone())
            .or_insert_with(|| Active {
                size: size_of(dir, &name_of(service, 0)),
                file: None,
                pending: Vec::new(),
                pending_lines: 0,
                unwritten: unwritten.clone(),
                warned: false,
            })
    }

    /// Writes out what is buffered for every service.
    pub fn flush(&mut self) {
        let names: Vec<Arc<str>> = self
            .active
            .iter()
            .filter(|(_, a)| !a.pending.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.flush_one(&n);
        }
    }

    /// Opens `service`'s active file through log_dir's descriptor: never a symlink,
    /// a FIFO, a device or a hard link (`safe_fs`), and never blocking.
    fn open_active(&mut self, service: &str) -> io::Result<File> {
        if self.dir.as_ref().is_none_or(Dir::removed) {
            self.dir = open_dir(&self.cfg.dir);
        }
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| io::Error::other("log_dir cannot be opened"))?;
        dir.open_append(&name_of(service, 0), FILE_MODE)
    }

    fn flush_one(&mut self, service: &str) {
        let needs_open = self
            .active
            .get(service)
            .is_some_and(|a| !a.pending.is_empty() && a.file.is_none());
        if needs_open {
            let opened = self.open_active(service);
            let path = self.cfg.dir.join(name_of(service, 0));
            if let Some(a) = self.active.get_mut(service) {
                match opened {
                    Ok(f) => {
                        a.file = Some(f);
                        a.warned = false;
                    }
                    Err(e) if !a.warned => {
                        a.warned = true;
                        log::warn!("{service}: cannot write {}: {e}", path.display());
                    }
                    Err(_) => {}
                }
            }
        }
        let Some(a) = self.active.get_mut(service) else {
            return;
        };
        if a.pending.is_empty() {
            return;
        }
        let before = a.size.saturating_sub(a.pending.len() as u64);
        let ok = match &mut a.file {
            Some(f) => {
                // Reserve the space first: on a full disk nothing is written at all, so
                // no reader ever sees half a line. (Filesystems without fallocate get
                // the write-and-cut-back below.)
                // SAFETY: f is an open file; the range is plain numbers.
                let reserved = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_KEEP_SIZE,
                        before as libc::off_t,
                        a.pending.len() as libc::off_t,
                    )
                };
                let no_space = reserved != 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC);
                let written = !no_space && f.write_all(&a.pending).is_ok();
                if !written {
                    // A write cut short (disk full) must not leave half a line behind:
                    // cut the file back to where this flush began.
                    let _ = f.set_len(before);
                }
                written
            }
            None => false,
        };
        if !ok {
            // Disk full or directory gone: count the lines, forget the bytes, and open
            // the file afresh next time (the directory may come back).
            a.unwritten.fetch_add(a.pending_lines, Ordering::Relaxed);
            let lost = a.pending.len() as u64;
            a.size = a.size.saturating_sub(lost);
            self.total = self.total.saturating_sub(lost);
            a.file = None;
        }
        a.pending.clear();
        a.pending_lines = 0;
        if a.pending.capacity() > 4 * FLUSH_AT {
            a.pending = Vec::new();
        }
    }

    /// NAME.log -> NAME.log.1 -> ... -> NAME.log.<max_files> (dropped beyond).
    fn rotate(&mut self, service: &str) {
        let max = self.cfg.max_files;
        if let Some(a) = self.active.get_mut(service) {
            a.file = None;
        }
        if let Some(dir) = &self.dir {
            let oldest = name_of(service, max);
            self.total = self.total.saturating_sub(size_of(Some(dir), &oldest));
            let _ = dir.unlink(&oldest);
            for n in (0..max).rev() {
                let _ = dir.rename(&name_of(service, n), &name_of(service, n + 1));
            }
        }
        if let Some(a) = self.active.get_mut(service) {
            a.size = 0;
        }
    }

    /// SIGUSR1, after logrotate renamed the files: what is buffered goes to the file it
    /// was meant for, then every service's `NAME.log` is opened afresh by name (append,
    /// created 0640 if missing, never truncated), its size taken from the opened file,
    /// and the total recounted over `NAME.log` and `NAME.log.<n>` alone (logrotate's
    /// compressed or dated files are its business).
    pub fn reopen(&mut self) {
        self.flush();
        if self.dir.as_ref().is_none_or(Dir::removed) {
            self.dir = open_dir(&self.cfg.dir);
        }
        let names: Vec<Arc<str>> = self.active.keys().cloned().collect();
        for service in names {
            let opened = self.open_active(&service);
            let Some(a) = self.active.get_mut(&service) else {
                continue;
            };
            a.file = None;
            a.size = 0;
            match opened.and_then(|f| f.metadata().map(|m| (m.len(), f))) {
                Ok((size, f)) => {
                    a.size = size;
                    a.file = Some(f);
                    a.warned = false;
                }
                Err(e) => {
                    a.warned = true;
                    log::warn!(
                        "{service}: cannot reopen {}: {e}",
                        self.cfg.dir.join(name_of(&service, 0)).display()
                    );
                }
            }
        }
        self.total = self.dir.as_ref().map_or(0, count_total);
    }

    /// Deletes the oldest rotated files (of any service) until the total fits; if only
    /// active files are left, the writing service's file is started afresh.
    fn enforce_total(&mut self, writing: &str) {
        let Some(cap) = self.cfg.max_total else {
            return;
        };
        self.flush();
        let Some(dir) = &self.dir else {
            return;
        };
        let mut rotated: Vec<((i64, i64), u32, String, u64)> = dir
            .names()
            .into_iter()
            .filter_map(|name| {
                let n = log_file_number(&name).filter(|n| *n > 0)?;
                let st = dir.regular(&name)?;
                Some(((st.st_mtime, st.st_mtime_nsec), n, name, st.st_size as u64))
            })
            .collect();
        // Oldest first; among equal times, the highest number is the oldest.
        rotated.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        for (_, _, name, len) in rotated {
            if self.total <= cap {
                return;
            }
            if dir.unlink(&name).is_ok() {
                self.total = self.total.saturating_sub(len);
            }
        }
        if self.total > cap {
            if let Some(a) = self.active.get_mut(writing) {
                a.file = None;
                self.total = self.total.saturating_sub(a.size);
                a.size = 0;
            }
            let _ = dir.unlink(&name_of(writing, 0));
        }
    }
}

/// With `--daemon`, the daemon's own log, `log_dir/orchestrator.log` (docs/cli.md): every
/// record the daemon writes to stderr otherwise, services' lines included. Opened like
/// a service's file (no symlink, no FIFO, mode 0640 even if it existed wider), rotated
/// the same way at `log_max_bytes` into `orchestrator.log.1` .. `.<log_max_files>`, but
/// not counted against `log_max_total_bytes` (docs/logs.md). Descriptor 2 follows each new
/// file, so that whatever else reaches stderr lands there too.
pub struct DaemonLog {
    path: PathBuf,
    dir: Dir,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

const DAEMON_LOG: &str = "orchestrator.log";

/// Where the daemon's own records go: stderr, or with `--daemon` its `DaemonLog`.
pub trait Destination: Write + Send {
    /// Opens the file afresh by name (SIGUSR1); stderr has nothing to reopen.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Destination for io::Stderr {}

/// `--daemon` logging to syslog only: nothing is written locally.
impl Destination for io::Sink {}

impl Destination for DaemonLog {
    fn reopen(&mut self) -> io::Result<()> {
        DaemonLog::reopen(self)
    }
}

impl DaemonLog {
    pub fn open(cfg: &FileConfig) -> io::Result<DaemonLog> {
        let dir = Dir::create(&cfg.dir, 0o755)?;
        let file = dir.open_append(DAEMON_LOG, FILE_MODE)?;
        // A file left by an older version may be wider: narrow it.
        // SAFETY: fchmod on a descriptor we own.
        unsafe { libc::fchmod(file.as_raw_fd(), FILE_MODE) };
        let size = file.metadata()?.len();
        Ok(DaemonLog {
            path: cfg.dir.clone(),
            dir,
            file,
            size,
            max_bytes: cfg.max_bytes,
            max_files: cfg.max_files,
        })
    }

    /// The open file (for descriptor 2 when detaching).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Opens `orchestrator.log` afresh by name (SIGUSR1, after logrotate renamed it).
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.dir.removed() {
            self.dir = Dir::create(&self.path, 0o755)?;
        }
        self.file = self.dir.open_append(DAEMON_LOG, FILE_MODE)?;
        self.size = self.file.metadata()?.len();
        // SAFETY: dup2 of a descriptor we own onto stderr.
        unsafe { libc::dup2(self.file.as_raw_fd(), 2) };
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let _ = self.dir.unlink(&name_of("orchestrator", self.max_files));
        for n in (0..self.max_files).rev() {
            let _ = self
                .dir
                .rename(&name_of("orchestrator", n), &name_of("orchestrator", n + 1));
        }
        self.file = self.dir.open_append(DAEMON_LOG, FILE_MODE)?;
        self.size = 0;
        // SAFETY: dup2 of a descriptor we own onto stderr.
        unsafe { libc::dup2(self.file.as_raw_fd(), 2) };
        Ok(())
    }
}

impl Write for DaemonLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// The sink hands over many records at once (a busy service's batch formats to
    /// megabytes), so the cap is kept line by line: the whole lines that fit go to this
    /// file, the rest to the next one, and a file outgrows `log_max_bytes` only by a
    /// single line longer than that. 0 turns rotation off (logrotate's job then).
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size);
            let take = if self.max_bytes == 0 || buf.len() as u64 <= room {
                buf.len()
            } else {
                let fits = usize::try_from(room).unwrap_or(usize::MAX);
                match buf[..fits].iter().rposition(|b| *b == b'\n') {
                    Some(end) => end + 1,
                    None if self.size > 0 => {
                        self.rotate()?;
                        continue;
                    }
                    // A line longer than the cap, alone in its file.
                    None => buf
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(buf.len(), |end| end + 1),
                }
            };
            self.file.write_all(&buf[..take])?;
            self.size += take as u64;
            buf = &buf[take..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests;
