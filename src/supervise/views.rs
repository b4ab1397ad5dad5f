//! What `status`, `metrics` and `logs` show (docs/status-and-metrics.md). The loop takes a
//! snapshot of its own state (cheap: copies of a few fields per service) and leaves the
//! slow part, the /proc readings and the binaries' SHA-256, to the thread of the
//! connection that asked (`Reply::Finish`): a slow disk or a large binary never holds up
//! supervision.

use super::state::State;
use super::supervisor::{Entry, Supervisor};
use crate::control::metrics;
use crate::control::socket::{error_reply, Reply};
use crate::output::sink::{Batch, Line};
use crate::process::cgroup::Cgroups;
use crate::process::hardening;
use crate::process::procfs::{self, Usage};
use serde_json::{json, Value};
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
    /// `{"path", "size", "mtime", "sha256"}`; the hash is computed once per version of
    /// the file, and only for a regular file.
    fn identity(&self, path: &Path) -> Value {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(path) else {
            return Value::Null;
        };
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
        json!({"path": path.display().to_string(), "size": m.len(), "mtime": m.mtime(), "sha256": hash})
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
        for e in selected {
            let mut v = status_json(e, now);
            v["notify_dropped"] = json!(self.notify.as_ref().map_or(0, |n| n.dropped(&e.name)));
            v["cgroup"] = json!(self
                .cgroups
                .tracker_dir(&e.name)
                .filter(|_| e.svc.has_process()));
            v["limits"] = limits_json(&self.cgroups, e);
            v["hardening"] = hardening::describe::json(e.svc.spec(), &self.cgroups);
            rows.push((
                v,
                e.svc.spec().process.binary.clone(),
                source(&self.cgroups, e),
            ));
        }
        let orchestrator = json!({
            "pid": std::process::id(),
            "uptime": self.started.elapsed().as_nanos() as u64,
            "log_records_dropped": self.sink.dropped(),
            "log_write_errors": self.sink.write_errors(),
            "notify_rejected": self.notify.as_ref().map_or(0, |n| n.rejected()),
        });
        let (cgroups, ids) = (self.cgroups.clone(), self.binary_ids.clone());
        Reply::Finish(Box::new(move || {
            let sources: Vec<Source> = rows
                .iter_mut()
                .map(|r| std::mem::replace(&mut r.2, Source::None))
                .collect();
            let usage = usage(&cgroups, &sources);
            let list: Vec<Value> = rows
                .into_iter()
                .zip(usage)
                .map(|((mut v, binary, _), u)| {
                    v["rss_bytes"] = json!(u.map(|u| u.rss_bytes));
                    v["cpu_seconds"] = json!(u.map(|u| u.cpu_seconds));
                    v["binary"] = ids.identity(&binary);
                    v
                })
                .collect();
            json!({"ok": true, "services": list, "orchestrator": orchestrator})
        }))
    }

    pub(super) fn metrics(&self) -> Reply {
        let now = Instant::now();
        struct Snap {
            name: String,
            state: State,
            restarts: u64,
            uptime: std::time::Duration,
            source: Source,
            lines: [u64; 3],
            notify_dropped: u64,
            binary: PathBuf,
        }
        let snaps: Vec<Snap> = self
            .services
            .values()
            .map(|e| Snap {
                name: e.name.to_string(),
                state: e.svc.state(),
                restarts: e.svc.restarts(),
                uptime: e.svc.uptime(now),
                source: source(&self.cgroups, e),
                lines: [
                    e.counters.stdout_lines.load(Ordering::Relaxed),
                    e.counters.stderr_lines.load(Ordering::Relaxed),
                    e.counters.file_unwritten.load(Ordering::Relaxed),
                ],
                notify_dropped: self.notify.as_ref().map_or(0, |n| n.dropped(&e.name)),
                binary: e.svc.spec().process.binary.clone(),
            })
            .collect();
        let (dropped, errors) = (self.sink.dropped(), self.sink.write_errors());
        let rejected = self.notify.as_ref().map_or(0, |n| n.rejected());
        let (cgroups, ids) = (self.cgroups.clone(), self.binary_ids.clone());
        Reply::Finish(Box::new(move || {
            let (sources, snaps): (Vec<Source>, Vec<Snap>) = snaps
                .into_iter()
                .map(|mut s| (std::mem::replace(&mut s.source, Source::None), s))
                .unzip();
            let usage = usage(&cgroups, &sources);
            let shas: Vec<Option<String>> = snaps
                .iter()
                .map(|s| {
                    ids.identity(&s.binary)["sha256"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            let rows: Vec<metrics::Row> = snaps
                .iter()
                .zip(usage)
                .zip(&shas)
                .map(|((s, u), sha)| metrics::Row {
                    name: &s.name,
                    state: s.state,
                    restarts: s.restarts,
                    uptime: s.uptime,
                    usage: u.unwrap_or_default(),
                    stdout_lines: s.lines[0],
                    stderr_lines: s.lines[1],
                    unwritten: s.lines[2],
                    notify_dropped: s.notify_dropped,
                    sha256: sha.as_deref(),
                })
                .collect();
            json!({"ok": true, "metrics": metrics::render(&rows, dropped, errors, rejected)})
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
        let lines_json = |tail: &[(Arc<Batch>, Line)]| -> Vec<Value> {
            tail.iter().map(|(b, l)| b.line_json(l)).collect()
        };
        if follow {
            let f = ring.follow(n);
            let first = json!({"ok": true, "lines": lines_json(&f.tail)});
            return Reply::Follow(first, f);
        }
        json!({"ok": true, "lines": lines_json(&ring.tail(n))}).into()
    }
}

/// How each configured limit is enforced: `{"nofile": "setrlimit", "memory_limit": ...}`.
fn limits_json(cgroups: &Cgroups, e: &Entry) -> Value {
    let mut m = serde_json::Map::new();
    for (name, _, how) in cgroups.enforcement(e.svc.spec()) {
        m.insert(name.into(), json!(how));
    }
    Value::Object(m)
}

/// The seed's fields and ours, without the parts read from outside the loop.
fn status_json(e: &Entry, now: Instant) -> Value {
    let svc = &e.svc;
    let history: Vec<Value> = svc
        .history()
        .iter()
        .map(|h| json!({"started": h.started_ms, "exited": h.exited_ms, "exit_code": h.exit_code, "reason": h.reason}))
        .collect();
    let last_exit = svc.last_exit().map(|l| {
        let (code, signal) = match l.exit {
            super::state::Exit::Code(c) => (Some(c), None),
            super::state::Exit::Signal(s) => (None, Some(super::state::signal_name(s))),
            super::state::Exit::Unknown => (None, None),
        };
        json!({"code": code, "signal": signal, "at": l.at_ms, "by_operator": l.by_operator})
    });
    let mut v = json!({
        "name": &*e.name,
        "configured": svc.spec().configured,
        "enabled": svc.spec().enabled,
        "state": svc.state().as_str(),
        "since": svc.since_ms(),
        "pid": svc.pid(),
        "uptime": svc.uptime(now).as_nanos() as u64,
        "restarts": svc.restarts(),
        "last_exit_code": svc.last_exit_code(),
        "last_exit": last_exit,
        "last_error": svc.last_error(),
        "notify_status": svc.notify_status(),
        "rss_bytes": null,
        "cpu_seconds": null,
        "binary": null,
        "log_lines_unwritten": e.counters.file_unwritten.load(Ordering::Relaxed),
        "history": history,
        "upgrades": super::upgrading::history_json(&e.upgrade),
    });
    if svc.awaiting_ready() {
        v["waiting_for"] = json!("READY=1");
    }
    if !svc.spec().process.sockets.is_empty() {
        let bound = e
            .sockets
            .as_ref()
            .is_some_and(|b| b.matches(&svc.spec().process.sockets));
        let list: Vec<Value> = svc
            .spec()
            .process.sockets
            .iter()
            .map(|s| json!({"listen": s.listen, "name": s.name.as_deref().unwrap_or(&e.name), "bound": bound}))
            .collect();
        v["sockets"] = json!(list);
    }
    if let Some(t) = svc.next_restart() {
        v["next_restart_ms"] = json!(t.saturating_duration_since(now).as_millis() as u64);
    }
    v
}
