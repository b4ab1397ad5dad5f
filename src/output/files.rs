//! Per-service log files (SPEC 9): `log_dir/NAME.log`, rotated by rename into
//! `NAME.log.1` (newest) .. `NAME.log.<log_max_files>` before a line would take the
//! active file past `log_max_bytes`, with `log_max_total_bytes` capping all services'
//! files together (the oldest rotated files go first), so small flash never fills.
//!
//! Owned by the log writer thread alone. A line is written whole to one file or counted
//! as unwritten (disk full, directory gone): never split, never silently dropped. The
//! orchestrator's own `orchestrator.log` is not counted against the cap.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Flush a service's buffered lines once this much is waiting.
const FLUSH_AT: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
    pub max_total: Option<u64>,
}

struct Active {
    file: Option<File>,
    /// Bytes in the active file, including what is buffered for it.
    size: u64,
    pending: Vec<u8>,
    pending_lines: u64,
    /// Where unwritten lines are counted (the service's counters).
    unwritten: Arc<AtomicU64>,
}

pub struct LogFiles {
    cfg: FileConfig,
    active: HashMap<Arc<str>, Active>,
    /// Bytes in every service's files, active and rotated.
    total: u64,
}

fn path_of(dir: &Path, service: &str, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(format!("{service}.log"))
    } else {
        dir.join(format!("{service}.log.{n}"))
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

fn size_of(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl LogFiles {
    pub fn new(cfg: FileConfig) -> LogFiles {
        let _ = fs::create_dir_all(&cfg.dir);
        let total = fs::read_dir(&cfg.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_str().and_then(log_file_number).is_some())
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        LogFiles {
            cfg,
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
        let needs_rotation = {
            let a = self.entry(service, unwritten);
            a.size > 0 && a.size + len > self.cfg.max_bytes
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
        let dir = &self.cfg.dir;
        self.active.entry(service.clone()).or_insert_with(|| {
            let path = path_of(dir, service, 0);
            Active {
                size: size_of(&path),
                file: None,
                pending: Vec::new(),
                pending_lines: 0,
                unwritten: unwritten.clone(),
            }
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

    fn flush_one(&mut self, service: &str) {
        let dir = self.cfg.dir.clone();
        let Some(a) = self.active.get_mut(service) else {
            return;
        };
        if a.pending.is_empty() {
            return;
        }
        if a.file.is_none() {
            a.file = open_append(&path_of(&dir, service, 0)).ok();
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
        let dir = self.cfg.dir.clone();
        let max = self.cfg.max_files;
        if let Some(a) = self.active.get_mut(service) {
            a.file = None;
        }
        let oldest = path_of(&dir, service, max);
        self.total = self.total.saturating_sub(size_of(&oldest));
        let _ = fs::remove_file(&oldest);
        for n in (0..max).rev() {
            let _ = fs::rename(path_of(&dir, service, n), path_of(&dir, service, n + 1));
        }
        if let Some(a) = self.active.get_mut(service) {
            a.size = 0;
        }
    }

    /// Deletes the oldest rotated files (of any service) until the total fits; if only
    /// active files are left, the writing service's file is started afresh.
    fn enforce_total(&mut self, writing: &str) {
        let Some(cap) = self.cfg.max_total else {
            return;
        };
        self.flush();
        let mut rotated: Vec<(std::time::SystemTime, u32, PathBuf, u64)> =
            fs::read_dir(&self.cfg.dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| {
                            let n = e
                                .file_name()
                                .to_str()
                                .and_then(log_file_number)
                                .filter(|n| *n > 0)?;
                            let m = e.metadata().ok()?;
                            Some((m.modified().ok()?, n, e.path(), m.len()))
                        })
                        .collect()
                })
                .unwrap_or_default();
        // Oldest first; among equal times, the highest number is the oldest.
        rotated.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        for (_, _, path, len) in rotated {
            if self.total <= cap {
                return;
            }
            if fs::remove_file(&path).is_ok() {
                self.total = self.total.saturating_sub(len);
            }
        }
        if self.total > cap {
            let dir = self.cfg.dir.clone();
            if let Some(a) = self.active.get_mut(writing) {
                a.file = None;
                self.total = self.total.saturating_sub(a.size);
                a.size = 0;
            }
            let _ = fs::remove_file(path_of(&dir, writing, 0));
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("orch-logfiles-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn lines_in(dir: &Path, service: &str, max: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for n in (0..=max).rev() {
            if let Ok(s) = fs::read_to_string(path_of(dir, service, n)) {
                out.extend(s.lines().map(|l| l.parse::<u64>().unwrap()));
            }
        }
        out
    }

    #[test]
    fn file_numbers() {
        assert_eq!(log_file_number("web.log"), Some(0));
        assert_eq!(log_file_number("web.log.3"), Some(3));
        assert_eq!(log_file_number("web.log.x"), None);
        assert_eq!(log_file_number("orchestrator.log"), None);
        assert_eq!(log_file_number("orchestrator.log.1"), None);
        assert_eq!(log_file_number("notes.txt"), None);
    }

    #[test]
    fn rotates_without_splitting_losing_or_duplicating() {
        let dir = tmpdir("rotate");
        let mut lf = LogFiles::new(FileConfig {
            dir: dir.clone(),
            max_bytes: 1000,
            max_files: 100,
            max_total: None,
        });
        let svc: Arc<str> = "svc".into();
        let lost = Arc::new(AtomicU64::new(0));
        for i in 0..5000u64 {
            lf.write(&svc, format!("{i}\n").as_bytes(), &lost);
        }
        lf.flush();
        assert_eq!(lines_in(&dir, "svc", 100), (0..5000).collect::<Vec<_>>());
        for n in 0..=100 {
            let p = path_of(&dir, "svc", n);
            if p.exists() {
                assert!(size_of(&p) <= 1000);
                assert!(fs::read_to_string(&p).unwrap().ends_with('\n'));
            }
        }
        assert_eq!(lost.load(Ordering::Relaxed), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keeps_only_max_files_and_the_newest_lines() {
        // 5-byte lines, 100-byte files: each file holds exactly 20 lines, and 1000
        // lines fill 50 files, of which the active one and `max_files` rotated stay.
        for max_files in [1u32, 2, 5] {
            let dir = tmpdir(&format!("keep{max_files}"));
            let mut lf = LogFiles::new(FileConfig {
                dir: dir.clone(),
                max_bytes: 100,
                max_files,
                max_total: None,
            });
            let svc: Arc<str> = "svc".into();
            let lost = Arc::new(AtomicU64::new(0));
            for i in 0..1000u64 {
                lf.write(&svc, format!("{i:04}\n").as_bytes(), &lost);
            }
            lf.flush();
            for n in 0..=max_files {
                assert_eq!(size_of(&path_of(&dir, "svc", n)), 100, "svc.log.{n}");
            }
            assert!(!path_of(&dir, "svc", max_files + 1).exists());
            let kept = 20 * (u64::from(max_files) + 1);
            assert_eq!(
                lines_in(&dir, "svc", max_files + 1),
                (1000 - kept..1000).collect::<Vec<_>>(),
                "max_files {max_files}: the newest {kept} lines"
            );
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn total_cap_deletes_oldest_rotated_first() {
        let dir = tmpdir("cap");
        let mut lf = LogFiles::new(FileConfig {
            dir: dir.clone(),
            max_bytes: 1000,
            max_files: 50,
            max_total: Some(5000),
        });
        let lost = Arc::new(AtomicU64::new(0));
        for i in 0..20_000u64 {
            let svc: Arc<str> = if i % 2 == 0 { "a".into() } else { "b".into() };
            lf.write(&svc, format!("{i:08}\n").as_bytes(), &lost);
        }
        lf.flush();
        let total: u64 = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(total <= 5000, "{total}");
        // The newest lines of each service are still there.
        assert_eq!(*lines_in(&dir, "a", 50).last().unwrap(), 19_998);
        assert_eq!(*lines_in(&dir, "b", 50).last().unwrap(), 19_999);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_directory_counts_lines() {
        let dir = tmpdir("unwritable");
        fs::write(&dir, "a file where the directory should be").unwrap();
        let mut lf = LogFiles::new(FileConfig {
            dir: dir.clone(),
            max_bytes: 1000,
            max_files: 2,
            max_total: None,
        });
        let svc: Arc<str> = "svc".into();
        let lost = Arc::new(AtomicU64::new(0));
        for i in 0..10u64 {
            lf.write(&svc, format!("{i}\n").as_bytes(), &lost);
        }
        lf.flush();
        assert_eq!(lost.load(Ordering::Relaxed), 10);
        let _ = fs::remove_file(&dir);
    }
}
