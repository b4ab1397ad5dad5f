//! Visible escapes for the text log format (SPEC 9): control characters a service (or
//! a directory name in a daemon message) carries are written as `\r`, `\n`, `\x1b`,
//! `\u{9b}`, so that a line can never forge another record, hide one, or drive the
//! terminal of whoever reads the log. Used by the sink's text format and by the
//! `logs` client. Never used for JSON, which has its own escapes.

use std::fmt::Write as _;

/// True for what the text format must not pass through raw (SPEC 9): the C0 controls
/// but tab (CR, LF, ESC, BEL, ...), DEL, and the C1 controls (U+0080-U+009F, which
/// some terminals obey like ESC sequences).
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

/// Appends `s` for the text format with every control character escaped visibly:
/// `\n`, `\r`, `\xNN` for the other C0 controls and DEL (`\x1b` for ESC), `\u{NN}` for
/// C1. So no line can forge another record, hide one, or drive a terminal. Runs
/// without controls (nearly every line) are copied in one go.
pub fn push_escaped(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, c) in s.char_indices() {
        if !is_control(c) {
            continue;
        }
        out.push_str(&s[run..i]);
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        run = i + c.len_utf8();
    }
    out.push_str(&s[run..]);
}

/// `s` with control characters escaped as `push_escaped` does (for the client).
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    std::borrow::Cow::Owned(out)
}
