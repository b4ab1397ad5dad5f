//! The one log record type and its two encodings (docs/logs.md). A line a service wrote
//! and a record the orchestrator makes (a lifecycle event, a message of its own) are
//! both a `Record`, written either as text for people or as one JSON object per line;
//! nothing else in the program writes a log record (the lines `logs` answers with are
//! the control protocol's).
//!
//! This file only formats; what a record says is decided by whoever makes it.

use crate::common::level;
use crate::output::escape::push_escaped;
use crate::output::sink::Stream;
use crate::output::timefmt;
use serde::Serializer as _;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use std::io;

/// What a lifecycle record is about: the `event` of the JSON form, the word `logs`
/// shows in place of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Started,
    Daemonized,
    Ready,
    Unhealthy,
    Watchdog,
    Stopping,
    Killed,
    Exited,
    Stopped,
    Restarting,
    Retrying,
    Failed,
    Upgrading,
    Upgraded,
    RolledBack,
    Rollback,
    /// The daemon's own records that the log could not take, counted.
    LogDropped,
    /// Something the machine was asked that cannot happen in its phase: ignored.
    Internal,
}

impl RecordKind {
    const ALL: [RecordKind; 18] = [
        RecordKind::Started,
        RecordKind::Daemonized,
        RecordKind::Ready,
        RecordKind::Unhealthy,
        RecordKind::Watchdog,
        RecordKind::Stopping,
        RecordKind::Killed,
        RecordKind::Exited,
        RecordKind::Stopped,
        RecordKind::Restarting,
        RecordKind::Retrying,
        RecordKind::Failed,
        RecordKind::Upgrading,
        RecordKind::Upgraded,
        RecordKind::RolledBack,
        RecordKind::Rollback,
        RecordKind::LogDropped,
        RecordKind::Internal,
    ];

    /// The name as the JSON form, `logs` and an image handing over its kept lines
    /// write it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Started => "started",
            RecordKind::Daemonized => "daemonized",
            RecordKind::Ready => "ready",
            RecordKind::Unhealthy => "unhealthy",
            RecordKind::Watchdog => "watchdog",
            RecordKind::Stopping => "stopping",
            RecordKind::Killed => "killed",
            RecordKind::Exited => "exited",
            RecordKind::Stopped => "stopped",
            RecordKind::Restarting => "restarting",
            RecordKind::Retrying => "retrying",
            RecordKind::Failed => "failed",
            RecordKind::Upgrading => "upgrading",
            RecordKind::Upgraded => "upgraded",
            RecordKind::RolledBack => "rolled back",
            RecordKind::Rollback => "rollback",
            RecordKind::LogDropped => "log_dropped",
            RecordKind::Internal => "internal",
        }
    }

    /// The kind `as_str` names; `None` for a name this image does not know.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One log record. A service's line has its `stream` (and a `pid`); the orchestrator's
/// records have an `event` when they are about a service's lifecycle, and `service`
/// `None` when they are the daemon's own.
#[derive(Debug)]
pub struct Record<'a> {
    pub ts_ms: u64,
    pub level: log::Level,
    pub service: Option<&'a str>,
    pub pid: Option<i32>,
    pub stream: Option<Stream>,
    pub event: Option<RecordKind>,
    pub msg: &'a str,
    /// More of the same line follows in the next record.
    pub partial: bool,
}

impl Record<'_> {
    /// Appends the record in the text or the JSON format, with its newline.
    pub fn write(&self, out: &mut Vec<u8>, json: bool) {
        if json {
            self.push_json(out);
        } else {
            let mut head = Vec::with_capacity(64);
            self.push_head(&mut head);
            self.push_text(out, &head);
        }
    }

    /// `{"ts":"..","level":"info","service":"echo","pid":1234,"stream":"stdout","msg":".."}`
    /// and a newline: the fields in this order, absent ones left out, `"partial":true`
    /// at the end of a partial line. The field names and the values that are ours are
    /// plain ASCII and written as they are; only the strings that come from outside
    /// (service names, messages) go through serde_json's escaper. A derived `Serialize`
    /// was tried and rejected: it escapes every key and writes every comma and quote on
    /// its own, about a third more CPU for each line on the log's hottest path.
    pub fn push_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        timefmt::push_rfc3339(out, self.ts_ms);
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(level::name(self.level).as_bytes());
        out.extend_from_slice(b"\",\"service\":");
        push_json_str(out, self.service.unwrap_or("orchestrator"));
        if let Some(pid) = self.pid {
            out.extend_from_slice(b",\"pid\":");
            out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
        }
        if let Some(stream) = self.stream {
            out.extend_from_slice(b",\"stream\":\"");
            out.extend_from_slice(stream.as_str().as_bytes());
            out.push(b'"');
        }
        if let Some(event) = self.event {
            out.extend_from_slice(b",\"event\":\"");
            out.extend_from_slice(event.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"msg\":");
        push_json_str(out, self.msg);
        if self.partial {
            out.extend_from_slice(b",\"partial\":true");
        }
        out.extend_from_slice(b"}\n");
    }

    /// The middle of the text form, what all lines of one read share: `echo[1234]
    /// stdout: ` for a line, `echo[1234] ` or `echo: ` for a service's lifecycle record,
    /// `orchestrator: ` for the daemon's own.
    pub fn push_head(&self, out: &mut Vec<u8>) {
        let Some(service) = self.service else {
            out.extend_from_slice(b"orchestrator: ");
            return;
        };
        push_escaped(out, service);
        match self.pid {
            Some(pid) => {
                out.push(b'[');
                out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
                out.extend_from_slice(b"] ");
            }
            None => out.extend_from_slice(b": "),
        }
        if let Some(stream) = self.stream {
            out.extend_from_slice(stream.as_str().as_bytes());
            out.extend_from_slice(b": ");
        }
    }

    /// `2026-11-27T05:53:17.123Z INFO  HEAD MSG` and a newline, with ` [...]` after a
    /// partial line; `head` is what `push_head` wrote (the sink renders it once for a
    /// whole batch of lines). Control characters are escaped visibly, so that no
    /// record can forge another or drive a terminal.
    pub fn push_text(&self, out: &mut Vec<u8>, head: &[u8]) {
        timefmt::push_rfc3339(out, self.ts_ms);
        out.push(b' ');
        out.extend_from_slice(level::padded(self.level).as_bytes());
        out.push(b' ');
        out.extend_from_slice(head);
        push_escaped(out, self.msg);
        if self.partial {
            out.extend_from_slice(b" [...]");
        }
        out.push(b'\n');
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Most lines are printable ASCII without a quote or a backslash: found eight bytes
    // at a time and copied whole, they skip the escaper's calls per run of plain bytes,
    // which a binary built for size does not inline.
    if super::escape::printable_ascii_without(s.as_bytes(), b"\"\\") {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = serde_json::Serializer::with_formatter(out, LogJson).serialize_str(s);
}

/// serde_json's compact form but for two escapes: the JSON log has always written
/// backspace and form feed as `\u0008` and `\u000c`, like every other control character
/// but tab, LF and CR, and a reader that compares lines keeps seeing the same bytes.
struct LogJson;

impl Formatter for LogJson {
    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        out: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => out.write_all(b"\\u0008"),
            CharEscape::FormFeed => out.write_all(b"\\u000c"),
            other => CompactFormatter.write_char_escape(out, other),
        }
    }
}

#[cfg(test)]
mod tests;
