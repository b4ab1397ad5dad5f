//! What `status`, `metrics` and `logs` show (docs/status-and-metrics.md). The loop takes a
//! snapshot of its own state (cheap: copies of a few fields per service) and leaves the
//! slow part, the /proc readings and the binaries' SHA-256, to the thread of the
//! connection that asked (`Reply::Finish`): a slow disk or a large binary never holds up
//! supervision. Answers are the protocol's types (`common/protocol.rs`), never JSON: the
//! socket encodes them.

use super::supervisor::{Entry, Supervisor};
use crate::common::protocol::{
    self, Binary, LogLine, Metrics, Orchestrator, Response, ServiceMetrics, StatusRow,
};
use crate::control::metrics;
use crate::control::socket::{error_reply, Reply};
use crate::output::sink::{Batch, Line};
use crate::process::cgroup::Cgroups;
use crate::process::hardening;
use crate::process::procfs::{self, Usage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// (size, mtime seconds, mtime nanoseconds, inode): a file changed if any differs.
type FileVersion = (u64, i64, i64, u64);

/// SHA-256 of each binary, keyed by path, valid while size, mtime and inode match.
/// Shared by the connection threads that finish `status` replies.
#[derive(Clone, Default)]
pub(super) struct BinaryIds(Arc<Mutex<HashMap<PathBuf, (FileVersion, String)>>>);

impl BinaryIds {
    /// Path, size, mtime and SHA-256; the hash is computed once per version of the
    /// file, and only for a regular file.
    fn identity(&self, path: &Path) -> Option<Binary> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let key = (m.len(), m.mtime(), m.mtime_nsec(), m.ino());
        let cached = self.0.lock().ok().and_then(|c| {
            c.get(path)
                .filter(|(k, _)| *k == key)
                .map(|(_, h)| h.clone())
        });
        let hash = cached.or_else(|| {
            let h = crate::control::sha256::file_hex(path).ok()?;
            if let Ok(mut c) = self.0.lock() {
                c.insert(path.to_path_buf(), (key, h.clone()));
            }
            Some(h)
        });
        Some(Binary {
            mtime: m.mtime(),
            path: path.display().to_string(),
            sha256: hash,
            size: m.len(),
        })
    }
}

/// Where a service's memory and CPU are read from.
enum Source {
    None,
    Cgroup(String),
    Group(i32),
}

fn source(cgroups: &Cgroups, e: &Entry) -> Source {
    match e.svc.pid() {
        None => Source::None,
        Some(_) if cgroups.available() => Source::Cgroup(e.name.to_string()),
        Some(pid) => Source::Group(pid),
    }
}

/// Memory and CPU for each source: cgroup members where there is a cgroup, else the
/// process group, from one /proc scan.
fn usage(cgroups: &Cgroups, sources: &[Source]) -> Vec<Option<Usage>> {
    let pgids: Vec<i32> = sources
        .iter()
        .filter_map(|s| match s {
            Source::Group(p) => Some(*p),
            _ => None,
        })
        .collect();
    let by_group = if pgids.is_empty() {
        HashMap::new()
    } else {
        procfs::usage_by_group(&pgids)
    };
    sources
        .iter()
        .map(|s| match s {
            Source::None => None,
            Source::Cgroup(name) => Some(procfs::usage_of(&cgroups.members(name))),
            Source::Group(p) => Some(by_group.get(p).copied().unwrap_or_default()),
        })
        .collect()
}

impl Supervisor {
    pub(super) fn status(&self, name: Option<&str>) -> Reply {
        let now = Instant::now();
        let selected: Vec<&Entry> = match name {
            Some(n) => match self.services.get(n) {
                Some(e) => vec![e],
                None => return error_reply("service not found").into(),
            },
            None => self.services.values().collect(),
        };
        let mut rows = Vec::with_capacity(selected.len());
        let forward = self.sink.forward().dropped();
        for e in selected {
            let mut row = status_row(e, now);
            row.log_forward_dropped = forward
                .iter()
                .flat_map(|(_, d)| d.iter().filter(|(s, _)| **s == *e.name))
                .map(|(_, n)| n)
                .sum();
            row.notify_dropped = self.notify.as_ref().map_or(0, |n| n.dropped(&e.name));
            row.cgroup = self
                .cgroups
                .tracker_dir(&e.name)
                .filter(|_| e.svc.has_process())
                .map(|d| d.display().to_string());
            // Inserted one by one: collecting into a map would compile a sort for it.
            for (name, _, how) in self.cgroups.enforcement(e.svc.spec()) {
                row.limits.insert(name.to_string(), how);
            }
            row.hardening = hardening::describe::summary(e.svc.spec(), &self.cgroups);
            rows.push((
                row,
                e.svc.spec().process.binary.clone(),
                source(&self.cgroups, e),
            ));
        }
        let orchestrator = Orchestrator {
            pid: std::process::id(),
            uptime: self.started.elapsed().as_nanos() as u64,
            log_records_dropped: self.sink.dropped(),
            log_write_errors: self.sink.write_errors(),
            notify_rejected: self.notify.as_ref().map_or(0, |n| n.rejected()),
        };
        let (cgroups, ids) = (self.cgroups.clone(), self.binary_ids.clone());
        Reply::Finish(Box::new(move || {
            let sources: Vec<Source> = rows
                .iter_mut()
                .map(|r| std::mem::replace(&mut r.2, Source::None))
                .collect();
            let usage = usage(&cgroups, &sources);
            let list: Vec<StatusRow> = rows
                .into_iter()
                .zip(usage)
                .map(|((mut row, binary, _), u)| {
                    row.rss_bytes = u.map(|u| u.rss_bytes);
                    row.cpu_seconds = u.map(|u| u.cpu_seconds);
                    row.binary = ids.identity(&binary);
                    row
                })
                .collect();
            Response {
                services: Some(list),
                orchestrator: Some(orchestrator),
                ..Response::ok()
            }
        }))
    }

    pub(super) fn metrics(&self) -> Reply {
        let now = Instant::now();
        let forward = self.sink.forward().dropped();
        let mut snaps: Vec<(ServiceMetrics, Source, PathBuf)> = self
            .services
            .values()
            .map(|e| {
                let row = ServiceMetrics {
                    name: e.name.to_string(),
                    state: e.svc.state().as_str(),
                    restarts: e.svc.restarts(),
                    uptime_seconds: e.svc.uptime(now).as_secs_f64(),
                    stdout_lines: e.counters.stdout_lines.load(Ordering::Relaxed),
                    stderr_lines: e.counters.stderr_lines.load(Ordering::Relaxed),
                    unwritten: e.counters.file_unwritten.load(Ordering::Relaxed),
                    notify_dropped: self.notify.as_ref().map_or(0, |n| n.dropped(&e.name)),
                    forward_dropped: forward
                        .iter()
                        .map(|(target, d)| {
                            let n = d.iter().find(|(s, _)| **s == *e.name);
                            (target.clone(), n.map_or(0, |n| n.1))
                        })
                        .collect(),
                    ..ServiceMetrics::default()
                };
                let binary = e.svc.spec().process.binary.clone();
                (row, source(&self.cgroups, e), binary)
            })
            .collect();
        let mut m = Metrics {
            services: Vec::with_capacity(snaps.len()),
            log_records_dropped: self.sink.dropped(),
            log_write_errors: self.sink.write_errors(),
            notify_rejected: self.notify.as_ref().map_or(0, |n| n.rejected()),
        };
        let (cgroups, ids) = (self.cgroups.clone(), self.binary_ids.clone());
        Reply::Finish(Box::new(move || {
            let sources: Vec<Source> = snaps
                .iter_mut()
                .map(|s| std::mem::replace(&mut s.1, Source::None))
                .collect();
            let usage = usage(&cgroups, &sources);
            for ((mut row, _, binary), u) in snaps.into_iter().zip(usage) {
                let u = u.unwrap_or_default();
                (row.rss_bytes, row.cpu_seconds) = (u.rss_bytes, u.cpu_seconds);
                row.sha256 = ids.identity(&binary).and_then(|b| b.sha256);
                m.services.push(row);
            }
            Response {
                metrics: Some(metrics::render(&m)),
                ..Response::ok()
            }
        }))
    }

    /// The last `n` kept lines of a service; with `follow`, every later one too (the
    /// connection's thread streams them, the loop is done after this).
    pub(super) fn logs(&self, name: Option<&str>, n: usize, follow: bool) -> Reply {
        let Some(name) = name else {
            return error_reply("missing service name").into();
        };
        let Some(e) = self.services.get(name) else {
            return error_reply("service not found").into();
        };
        let Ok(mut ring) = e.ring.lock() else {
            return error_reply("log ring unavailable").into();
        };
        let lines = |tail: &[(Arc<Batch>, Line)]| -> Response {
            let lines: Vec<LogLine> = tail.iter().map(|(b, l)| b.log_line(l)).collect();
            Response {
                lines: Some(lines),
                ..Response::ok()
            }
        };
        if follow {
            let f = ring.follow(n);
            return Reply::Follow(lines(&f.tail), f);
        }
        lines(&ring.tail(n)).into()
    }
}

/// The seed's fields and ours, without the parts read from outside the loop.
fn status_row(e: &Entry, now: Instant) -> StatusRow {
    let svc = &e.svc;
    let history = svc
        .history()
        .iter()
        .map(|h| protocol::Run {
            exit_code: h.exit_code,
            exited: h.exited_ms,
            reason: h.reason.clone(),
            started: h.started_ms,
        })
        .collect();
    let last_exit = svc.last_exit().map(|l| {
        let (code, signal) = match l.exit {
            super::state::Exit::Code(c) => (Some(c), None),
            super::state::Exit::Signal(s) => (None, Some(super::state::signal_name(s))),
            super::state::Exit::Unknown => (None, None),
        };
        protocol::LastExit {
            at: Some(l.at_ms),
            by_operator: l.by_operator,
            code,
            signal,
        }
    });
    let sockets = &svc.spec().process.sockets;
    let sockets = (!sockets.is_empty()).then(|| {
        let bound = e.sockets.as_ref().is_some_and(|b| b.matches(sockets));
        sockets
            .iter()
            .map(|s| protocol::Socket {
                bound,
                listen: s.listen.clone(),
                name: s.name.clone().unwrap_or_else(|| e.name.to_string()),
            })
            .collect()
    });
    StatusRow {
        name: e.name.to_string(),
        configured: svc.spec().configured,
        enabled: svc.spec().enabled,
        state: svc.state().as_str().to_string(),
        since: Some(svc.since_ms()),
        pid: svc.pid(),
        uptime: svc.uptime(now).as_nanos() as u64,
        restarts: svc.restarts(),
        last_exit_code: svc.last_exit_code(),
        last_exit,
        last_error: svc.last_error().map(str::to_string),
        notify_status: svc.notify_status().map(str::to_string),
        log_lines_unwritten: e.counters.file_unwritten.load(Ordering::Relaxed),
        history,
        upgrades: super::upgrades::steps::history_rows(&e.upgrade),
        waiting_for: svc.awaiting_ready().then(|| "READY=1".to_string()),
        sockets,
        next_restart_ms: svc
            .next_restart()
            .map(|t| t.saturating_duration_since(now).as_millis() as u64),
        ..StatusRow::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::common::protocol::STATES;
    use crate::supervise::state::State;

    /// The protocol names the states without knowing the machine: the two lists must
    /// agree, in order (the metrics list them so).
    #[test]
    fn the_protocol_names_every_state() {
        assert_eq!(State::ALL.map(State::as_str), STATES);
    }
}
