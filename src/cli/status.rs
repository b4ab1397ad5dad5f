//! How `status` looks to a person (docs/cli.md, docs/status-and-metrics.md): the aligned
//! table of every service, and the detailed view of one (`status NAME`). Both are rendered
//! from the protocol's status rows; fields an older daemon does not send (`since`,
//! `last_exit`, `notify_status`) are optional, with a fallback on the older fields.
//!
//! A row shows the current run only: the last exit and the last error belong to a
//! service that is not running, so a fresh start never shows a stale failure. This file
//! formats; it never talks to the daemon.

use crate::common::protocol::{LogLine, StatusRow};
use crate::output::escape::escaped;
use crate::output::timefmt;
use std::fmt::Write as _;

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
pub fn colour_wanted() -> bool {
    // SAFETY: isatty has no memory preconditions.
    let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When the service entered its state: `since`, else derived from the uptime of a
/// running process or the end of the last run.
fn since_ms(s: &StatusRow, now: u64) -> Option<u64> {
    if let Some(t) = s.since {
        return Some(t);
    }
    if s.pid.is_some() {
        return Some(now.saturating_sub(s.uptime / 1_000_000));
    }
    s.history.last().and_then(|r| r.exited)
}

/// The last exit as `(what, at_ms, by_operator)`: `("code 1", ..)`, `("SIGKILL", ..)`.
fn last_exit(s: &StatusRow) -> Option<(String, Option<u64>, bool)> {
    if let Some(e) = &s.last_exit {
        let what = match (&e.signal, e.code) {
            (Some(sig), _) => sig.clone(),
            (None, Some(code)) => format!("code {code}"),
            (None, None) => "unknown".to_string(),
        };
        return Some((what, e.at, e.by_operator));
    }
    let code = s.last_exit_code?;
    let at = s.history.last().and_then(|r| r.exited);
    Some((format!("code {code}"), at, false))
}

/// Nanoseconds as `1d2h`, `3h4m`, `5m6s` or `7s`.
fn human_duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn ago(at_ms: u64, now: u64) -> String {
    format!(
        "{} ago",
        human_duration(now.saturating_sub(at_ms).saturating_mul(1_000_000))
    )
}

pub fn table(services: &[StatusRow], colour: bool, now: u64) -> String {
    let header = ["NAME", "STATE", "SINCE", "PID", "RESTARTS", "EXIT", "INFO"];
    let mut rows: Vec<([String; 7], Option<&str>)> = Vec::new();
    for s in services {
        let state = s.state.as_str();
        let pid = s.pid.map_or("-".into(), |p| p.to_string());
        let since = since_ms(s, now).map_or("-".into(), |t| ago(t, now));
        let mut info: Vec<String> = Vec::new();
        let mut exit = "-".to_string();
        if s.pid.is_some() {
            if let Some(w) = &s.waiting_for {
                info.push(format!("waiting for {w}"));
            }
            if let Some(st) = s.notify_status.as_ref().filter(|v| !v.is_empty()) {
                info.push(st.clone());
            }
        } else {
            match last_exit(s) {
                Some((_, _, true)) => info.push("stopped by operator".into()),
                Some((what, _, false)) => exit = what.trim_start_matches("code ").to_string(),
                None => {}
            }
            if let Some(ms) = s.next_restart_ms {
                info.push(format!("next restart in {:.1}s", ms as f64 / 1000.0));
            }
            if let Some(e) = s.last_error.as_ref().filter(|e| !e.is_empty()) {
                info.push(e.clone());
            }
        }
        if !s.enabled {
            info.insert(0, "disabled".into());
        }
        let paint = match state {
            "failed" => Some(RED),
            "restarting" => Some(YELLOW),
            _ => None,
        };
        // STATUS= text, last_error (a peer's grpc-message, a child's words) and the
        // rest are escaped as the text log is: none may drive the terminal.
        let cells = [
            s.name.clone(),
            state.to_string(),
            since,
            pid,
            s.restarts.to_string(),
            exit,
            info.join("; "),
        ]
        .map(|c| escaped(&c).into_owned());
        rows.push((cells, paint.filter(|_| colour)));
    }
    let mut widths = header.map(str::len);
    for (r, _) in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    for (r, paint) in &rows {
        match paint {
            Some(p) => {
                let _ = writeln!(out, "{p}{}{RESET}", line(r));
            }
            None => {
                let _ = writeln!(out, "{}", line(r));
            }
        }
    }
    out
}

/// `status NAME`: one service in detail, then its last lines of output.
pub fn detail(s: &StatusRow, lines: &[LogLine], now: u64) -> String {
    let name = escaped(&s.name);
    let state = escaped(&s.state);
    let mut out = String::new();
    let waiting = s
        .waiting_for
        .as_ref()
        .map_or(String::new(), |w| format!(", waiting for {}", escaped(w)));
    let _ = match since_ms(s, now) {
        Some(t) => writeln!(
            out,
            "{name}: {state} since {} ({}){waiting}",
            timefmt::rfc3339(t),
            ago(t, now)
        ),
        None => writeln!(out, "{name}: {state}{waiting}"),
    };
    // Every value is escaped: STATUS= text and last_error come from the service or a
    // health-check peer.
    let mut field = |key: &str, value: String| {
        let _ = writeln!(out, "  {:<12}{}", format!("{key}:"), escaped(&value));
    };
    if !s.enabled {
        field("enabled", "no (disabled in the config)".into());
    }
    if !s.configured {
        field(
            "configured",
            "no (discovered, run with the defaults)".into(),
        );
    }
    if let Some(pid) = s.pid {
        let mut v = pid.to_string();
        if let Some(rss) = s.rss_bytes {
            let _ = write!(v, ", rss {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
        }
        if let Some(cpu) = s.cpu_seconds {
            let _ = write!(v, ", cpu {cpu:.2} s");
        }
        field("pid", v);
    }
    if let Some(st) = s.notify_status.as_ref().filter(|v| !v.is_empty()) {
        field("status", st.clone());
    }
    if let Some((what, at, by_operator)) = last_exit(s) {
        let mut v = what;
        if let Some(t) = at {
            let _ = write!(v, " at {} ({})", timefmt::rfc3339(t), ago(t, now));
        }
        if by_operator {
            v.push_str(", stopped by the operator");
        }
        field("last exit", v);
    }
    if let Some(e) = s.last_error.as_ref().filter(|e| !e.is_empty()) {
        field("last error", e.clone());
    }
    let mut restarts = s.restarts.to_string();
    if let Some(ms) = s.next_restart_ms {
        let _ = write!(restarts, ", next attempt in {:.1}s", ms as f64 / 1000.0);
    }
    field("restarts", restarts);
    if let Some(b) = &s.binary {
        let mut v = format!("{} ({} bytes", b.path, b.size);
        if let Some(h) = &b.sha256 {
            let _ = write!(v, ", sha256 {}", h.get(..12).unwrap_or(h));
        }
        v.push(')');
        field("binary", v);
    }
    if !s.limits.is_empty() {
        let v: Vec<String> = s
            .limits
            .iter()
            .map(|(k, how)| format!("{k}: {how}"))
            .collect();
        field("limits", v.join("; "));
    }
    if let Some(cg) = &s.cgroup {
        field("cgroup", cg.clone());
    }
    if !s.history.is_empty() {
        let _ = writeln!(out);
        let _ = match s.history.len() {
            1 => writeln!(out, "last run:"),
            n => writeln!(out, "last {n} runs:"),
        };
        for r in &s.history {
            let started = timefmt::rfc3339(r.started);
            let _ = match (r.exited, &r.reason) {
                (None, _) => writeln!(out, "  {started}  running"),
                (Some(t), why) => writeln!(
                    out,
                    "  {started}  to {}  {}",
                    timefmt::rfc3339(t),
                    escaped(why.as_deref().unwrap_or("ended"))
                ),
            };
        }
    }
    let _ = writeln!(out);
    if lines.is_empty() {
        let _ = writeln!(out, "no output kept");
    } else {
        let _ = match lines.len() {
            1 => writeln!(out, "last line:"),
            n => writeln!(out, "last {n} lines:"),
        };
        for l in lines {
            let _ = writeln!(out, "  {}", log_line(&name, l));
        }
    }
    out
}

/// One kept line (`logs`), as the daemon's text log shows it: `TS NAME[PID] STREAM: MSG`,
/// a lifecycle event as `TS NAME[PID] EVENT: MSG`.
pub fn log_line(name: &str, l: &LogLine) -> String {
    let source = l.event.as_ref().or(l.stream.as_ref()).map_or("", |s| s);
    let pid = l.pid.map_or("-".into(), |p| p.to_string());
    format!(
        "{} {name}[{pid}] {source}: {}{}",
        l.ts,
        // A service's bytes must not drive the reader's terminal.
        escaped(&l.msg),
        if l.partial { " [...]" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::protocol::FromJson;
    use serde_json::json;

    fn row(v: serde_json::Value) -> StatusRow {
        StatusRow::from_json(&v)
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_running_row_shows_no_stale_failure() {
        let s = row(
            json!({"name": "web", "state": "running", "pid": 42, "uptime": 5_000_000_000u64,
            "restarts": 3, "last_exit_code": 1, "last_error": "maximum restart attempts exceeded",
            "enabled": true}),
        );
        let t = table(&[s], false, NOW);
        assert!(!t.contains("maximum"), "{t}");
        let row = t.lines().nth(1).unwrap();
        assert!(row.contains("5s ago") && !row.contains(" 1 "), "{row}");
    }

    #[test]
    fn an_operator_stop_is_not_a_crash() {
        let s = row(
            json!({"name": "web", "state": "stopped", "pid": null, "restarts": 0,
            "last_exit_code": 143, "last_error": null, "since": NOW - 60_000,
            "last_exit": {"code": null, "signal": "SIGTERM", "at": NOW - 60_000, "by_operator": true}}),
        );
        let t = table(std::slice::from_ref(&s), false, NOW);
        assert!(
            t.contains("stopped by operator") && !t.contains("143"),
            "{t}"
        );
        assert!(t.contains("1m0s ago"), "{t}");
        let d = detail(&s, &[], NOW);
        assert!(d.contains("last exit:  SIGTERM at"), "{d}");
        assert!(d.contains("stopped by the operator"), "{d}");
    }

    #[test]
    fn a_peers_words_are_escaped() {
        let s = row(
            json!({"name": "api", "state": "starting", "pid": null, "restarts": 0,
            "last_exit_code": null,
            "last_error": "health check failed: grpc-message: bad\u{1b}[2J\r\nFORGED"}),
        );
        let t = table(std::slice::from_ref(&s), false, NOW);
        let d = detail(&s, &[], NOW);
        for out in [t, d] {
            assert!(!out.contains(['\u{1b}', '\r']), "{out:?}");
            assert!(out.contains("bad\\x1b[2J\\r\\nFORGED"), "{out}");
        }
    }

    #[test]
    fn labels_read_as_english() {
        let s = row(
            json!({"name": "web", "state": "failed", "pid": null, "restarts": 1,
            "last_exit_code": 1, "last_error": "exited with code 1"}),
        );
        let d = detail(&s, &[], NOW);
        assert!(d.contains("  last error: exited with code 1\n"), "{d}");
        let s = row(
            json!({"name": "web", "state": "starting", "pid": 7, "restarts": 0,
            "uptime": 1_000_000_000u64, "waiting_for": "READY=1"}),
        );
        let t = table(std::slice::from_ref(&s), false, NOW);
        assert!(t.contains("waiting for READY=1"), "{t}");
        let d = detail(&s, &[], NOW);
        assert!(d.starts_with("web: starting since "), "{d}");
        assert!(
            d.lines().next().unwrap().ends_with(", waiting for READY=1"),
            "{d}"
        );
    }

    #[test]
    fn failed_rows_are_red_only_with_colour() {
        let s = row(
            json!({"name": "bad", "state": "failed", "pid": null, "restarts": 10,
            "last_exit_code": 1, "last_error": "maximum restart attempts exceeded"}),
        );
        let t = table(std::slice::from_ref(&s), true, NOW);
        assert!(t.lines().nth(1).unwrap().starts_with(RED), "{t:?}");
        assert!(!table(&[s], false, NOW).contains('\x1b'));
    }
}
