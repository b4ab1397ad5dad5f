//! Syslog messages (docs/logs.md, `log_forward`): one record as RFC 5424 or RFC 3164,
//! its text escaped as in the text log format, cut to `max_message_bytes` and marked
//! ` [...]`; and the framings a transport needs (RFC 6587 octet counting over TCP).
//!
//! Pure: no clock, no socket. What a message says is decided by the caller.

use crate::config::forward::SyslogFormat;
use crate::output::escape::push_escaped;
use crate::output::timefmt;

/// What marks a message that was cut, or a line continued in the next message.
const CUT: &[u8] = b" [...]";

/// One record as a syslog message sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub ts_ms: u64,
    pub level: log::Level,
    /// APP-NAME: the service, or `orchestrator` for the daemon's own records.
    pub app: &'a str,
    /// PROCID.
    pub pid: Option<i32>,
    /// MSGID: the stream, the record's kind, or `None` for none.
    pub msgid: Option<&'a str>,
    pub text: &'a str,
    /// More of the same line follows in the next message.
    pub partial: bool,
}

/// The severity of a record's level: error 3, warning 4, info 6, debug 7.
pub fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Encodes messages for one target: its format, facility, size limit, and the host
/// name (none for a local socket, where syslog(3) writes none either).
pub struct Encoder {
    format: SyslogFormat,
    facility: u8,
    max: usize,
    hostname: Option<Vec<u8>>,
    /// The local time of the last second formatted (RFC 3164): (second, `Mmm dd hh:mm:ss`).
    local: (u64, [u8; 15]),
    /// What follows the time for the last (APP-NAME, PROCID, MSGID) encoded: the lines
    /// of one read share it, so it is written once for them.
    who: (String, Option<i32>, String),
    tail: Vec<u8>,
}

impl Encoder {
    pub fn new(
        format: SyslogFormat,
        facility: u8,
        max_message_bytes: usize,
        hostname: Option<String>,
    ) -> Encoder {
        Encoder {
            format,
            facility,
            max: max_message_bytes.max(32),
            hostname: hostname.filter(|h| !h.is_empty()).map(|h| {
                let mut field = Vec::new();
                push_field(&mut field, &h, 255);
                field
            }),
            local: (u64::MAX, [b' '; 15]),
            who: (String::new(), None, String::new()),
            tail: Vec::new(),
        }
    }

    /// Appends one message, at most `max_message_bytes` long, to `out`.
    pub fn encode(&mut self, m: &Message, out: &mut Vec<u8>) {
        let start = out.len();
        let pri = u32::from(self.facility) * 8 + u32::from(severity(m.level));
        out.push(b'<');
        out.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
        out.push(b'>');
        match self.format {
            SyslogFormat::Rfc5424 => {
                out.extend_from_slice(b"1 ");
                timefmt::push_rfc3339(out, m.ts_ms);
            }
            SyslogFormat::Rfc3164 => {
                let secs = m.ts_ms / 1000;
                if self.local.0 != secs {
                    self.local = (secs, local_stamp(secs));
                }
                out.extend_from_slice(&self.local.1);
            }
        }
        let msgid = m.msgid.unwrap_or("-");
        if self.who.0 != m.app || self.who.1 != m.pid || self.who.2 != msgid || self.tail.is_empty()
        {
            self.who.0.clear();
            self.who.0.push_str(m.app);
            self.who.1 = m.pid;
            self.who.2.clear();
            self.who.2.push_str(msgid);
            self.tail.clear();
            match self.format {
                SyslogFormat::Rfc5424 => self.tail_5424(m, msgid),
                SyslogFormat::Rfc3164 => self.tail_3164(m),
            }
        }
        out.extend_from_slice(&self.tail);
        push_escaped(out, m.text);
        let cut = out.len() - start > self.max;
        if cut {
            let mut end = start + self.max - CUT.len();
            // Never split a character: back up to the start of the one cut through.
            while end > start && (out[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            out.truncate(end);
        }
        if cut || m.partial {
            out.extend_from_slice(CUT);
        }
    }

    /// After `1 TIMESTAMP`: ` HOSTNAME APP-NAME PROCID MSGID - `, no structured data.
    fn tail_5424(&mut self, m: &Message, msgid: &str) {
        let out = &mut self.tail;
        out.push(b' ');
        out.extend_from_slice(self.hostname.as_deref().unwrap_or(b"-"));
        out.push(b' ');
        push_field(out, m.app, 48);
        out.push(b' ');
        match m.pid {
            Some(pid) => out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b' ');
        push_field(out, msgid, 32);
        out.extend_from_slice(b" - ");
    }

    /// After `Mmm dd hh:mm:ss` (the time local, as syslog(3) writes it):
    /// ` [HOSTNAME ]TAG[PID]: `.
    fn tail_3164(&mut self, m: &Message) {
        let out = &mut self.tail;
        out.push(b' ');
        if let Some(h) = &self.hostname {
            out.extend_from_slice(h);
            out.push(b' ');
        }
        push_field(out, m.app, 48);
        if let Some(pid) = m.pid {
            out.push(b'[');
            out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
            out.push(b']');
        }
        out.extend_from_slice(b": ");
    }
}

/// A header field: printable ASCII without spaces (others become `_`), at most `max`
/// bytes, `-` when empty.
fn push_field(out: &mut Vec<u8>, s: &str, max: usize) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    out.extend(
        s.bytes()
            .take(max)
            .map(|b| if b.is_ascii_graphic() { b } else { b'_' }),
    );
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Dec  7 12:03:04` for `secs` since the epoch, in the local time zone.
fn local_stamp(secs: u64) -> [u8; 15] {
    let t = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return *b"Jan  1 00:00:00";
    }
    let two = |n: i32| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let mut s = [b' '; 15];
    s[..3].copy_from_slice(MONTHS[tm.tm_mon.clamp(0, 11) as usize]);
    let day = two(tm.tm_mday);
    s[4] = if day[0] == b'0' { b' ' } else { day[0] };
    s[5] = day[1];
    s[7..9].copy_from_slice(&two(tm.tm_hour));
    s[9] = b':';
    s[10..12].copy_from_slice(&two(tm.tm_min));
    s[12] = b':';
    s[13..15].copy_from_slice(&two(tm.tm_sec));
    s
}

/// How a stream transport separates messages; a datagram needs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    /// `LEN SP MSG` (RFC 6587 octet counting): TCP.
    OctetCount,
    /// MSG then NUL, as syslog(3) writes to a stream socket.
    Nul,
}

impl Framing {
    /// Appends `msg` framed.
    pub fn push(self, out: &mut Vec<u8>, msg: &[u8]) {
        if self == Framing::OctetCount {
            out.extend_from_slice(itoa::Buffer::new().format(msg.len()).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(msg);
        if self == Framing::Nul {
            out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: u64 = 1_796_644_984_123; // 2026-12-07T12:03:04.123Z

    fn msg<'a>(text: &'a str) -> Message<'a> {
        Message {
            ts_ms: TS,
            level: log::Level::Info,
            app: "web",
            pid: Some(1234),
            msgid: Some("stdout"),
            text,
            partial: false,
        }
    }

    fn enc(e: &mut Encoder, m: &Message) -> String {
        let mut out = Vec::new();
        e.encode(m, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc5424_has_every_field() {
        let mut e = Encoder::new(SyslogFormat::Rfc5424, 3, 2048, Some("box 1".into()));
        assert_eq!(
            enc(&mut e, &msg("hello")),
            "<30>1 2026-12-07T12:03:04.123Z box_1 web 1234 stdout - hello"
        );
        let m = Message {
            level: log::Level::Error,
            app: "orchestrator",
            pid: None,
            msgid: Some("rolled back"),
            ..msg("tab\there\x1b[2J\nnext")
        };
        assert_eq!(
            enc(&mut e, &m),
            "<27>1 2026-12-07T12:03:04.123Z box_1 orchestrator - rolled_back - tab\there\\x1b[2J\\nnext"
        );
        // The header kept for a run of one service's lines follows a change of pid.
        let next_run = Message {
            pid: Some(1300),
            ..msg("again")
        };
        assert!(enc(&mut e, &msg("x")).contains(" web 1234 stdout - x"));
        assert!(enc(&mut e, &next_run).contains(" web 1300 stdout - again"));
        let mut bare = Encoder::new(SyslogFormat::Rfc5424, 16, 2048, None);
        let m = Message {
            level: log::Level::Warn,
            msgid: None,
            ..msg("x")
        };
        assert_eq!(
            enc(&mut bare, &m),
            "<132>1 2026-12-07T12:03:04.123Z - web 1234 - - x"
        );
    }

    #[test]
    fn rfc3164_local_time_with_and_without_host() {
        let mut e = Encoder::new(SyslogFormat::Rfc3164, 3, 2048, None);
        let out = enc(&mut e, &msg("hello"));
        let stamp = String::from_utf8(local_stamp(TS / 1000).to_vec()).unwrap();
        assert_eq!(out, format!("<30>{stamp} web[1234]: hello"));
        assert_eq!(&stamp[..4], "Dec ");
        assert_eq!(stamp.len(), 15);
        let mut e = Encoder::new(SyslogFormat::Rfc3164, 3, 2048, Some("gw".into()));
        let m = Message {
            pid: None,
            ..msg("up")
        };
        assert_eq!(enc(&mut e, &m), format!("<30>{stamp} gw web: up"));
    }

    #[test]
    fn long_messages_are_cut_and_marked_on_a_character_boundary() {
        let mut e = Encoder::new(SyslogFormat::Rfc5424, 3, 128, None);
        let head = enc(&mut e, &msg("")).len();
        let fits = "a".repeat(128 - head);
        assert_eq!(enc(&mut e, &msg(&fits)).len(), 128);
        assert!(!enc(&mut e, &msg(&fits)).ends_with(" [...]"));
        let long = "é".repeat(200);
        let out = enc(&mut e, &msg(&long));
        assert!(out.len() <= 128, "{}", out.len());
        assert!(out.len() >= 126, "{}", out.len());
        assert!(out.ends_with("é [...]"), "{out}");
        let partial = Message {
            partial: true,
            ..msg("first part")
        };
        assert!(enc(&mut e, &partial).ends_with("first part [...]"));
    }

    #[test]
    fn octet_counting_and_nul_framing() {
        let mut out = Vec::new();
        Framing::OctetCount.push(&mut out, b"<30>1 hello");
        Framing::OctetCount.push(&mut out, b"");
        assert_eq!(out, b"11 <30>1 hello0 ");
        let mut out = Vec::new();
        Framing::Nul.push(&mut out, b"ab");
        Framing::Datagram.push(&mut out, b"cd");
        assert_eq!(out, b"ab\0cd");
    }

    #[test]
    fn severities_follow_levels() {
        assert_eq!(severity(log::Level::Error), 3);
        assert_eq!(severity(log::Level::Warn), 4);
        assert_eq!(severity(log::Level::Info), 6);
        assert_eq!(severity(log::Level::Trace), 7);
    }
}
