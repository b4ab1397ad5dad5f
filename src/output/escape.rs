//! Visible escapes for the text log format (docs/logs.md): control characters a service (or
//! a directory name in a daemon message) carries are written as `\r`, `\n`, `\x1b`,
//! `\u{9b}`, so that a line can never forge another record, hide one, or drive the
//! terminal of whoever reads the log. Used by the sink's text format and by the
//! `logs` client. Never used for JSON, which has its own escapes.

/// True for what the text format must not pass through raw (docs/logs.md): the C0 controls
/// but tab (CR, LF, ESC, BEL, ...), DEL, and the C1 controls (U+0080-U+009F, which
/// some terminals obey like ESC sequences).
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

/// Appends `s` for the text format with every control character escaped visibly:
/// `\n`, `\r`, `\xNN` for the other C0 controls and DEL (`\x1b` for ESC), `\u{NN}` for
/// C1. So no line can forge another record, hide one, or drive a terminal. Runs
/// without controls (nearly every line) are copied in one go.
pub fn push_escaped(out: &mut Vec<u8>, s: &str) {
    // Scanned as bytes, on the log path's every line: a C0 control or DEL is one
    // byte, a C1 control is 0xC2 then 0x80-0x9F (a 0xC2 is never a continuation byte,
    // so this cannot match inside another character).
    let bytes = s.as_bytes();
    // Nearly every line is printable ASCII: that is found eight bytes at a time, and
    // the line copied in one go.
    if printable_ascii(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let width = match b {
            b'\t' => 0,
            0..=0x1f | 0x7f => 1,
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => 2,
            _ => 0,
        };
        if width == 0 {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0xc2 => {
                out.extend_from_slice(b"\\u{");
                push_hex(out, bytes[i + 1]);
                out.push(b'}');
            }
            b => {
                out.extend_from_slice(b"\\x");
                push_hex(out, b);
            }
        }
        i += width;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Two lowercase hex digits.
fn push_hex(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

/// Whether every byte is in 0x20..0x7f (printable ASCII; tab, controls and anything
/// not ASCII take the careful path). Eight bytes at a time, with the classic
/// "has a byte less than n" word trick: the log path formats every line through here.
fn printable_ascii(bytes: &[u8]) -> bool {
    printable_ascii_without(bytes, b"")
}

/// `printable_ascii`, and none of the bytes `but`: for JSON, whose strings escape `"`
/// and `\` too.
pub(crate) fn printable_ascii_without(bytes: &[u8], but: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` that equals `b` (exact as to whether any does).
    let equal = |x: u64, b: u8| {
        let d = x ^ (ONES * u64::from(b));
        d.wrapping_sub(ONES) & !d & HIGH
    };
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_ne_bytes(b);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let mut bad = below_space | equal(x, 0x7f) | (x & HIGH);
        for &c in but {
            bad |= equal(x, c);
        }
        if bad != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|b| (0x20..0x7f).contains(b) && !but.contains(b))
}

/// `s` with control characters escaped as `push_escaped` does (for the client).
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    // Runs of `s` and ASCII escapes, cut only before and after ASCII bytes: UTF-8.
    std::borrow::Cow::Owned(
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_agrees_with_the_careful_one() {
        // Every byte value, at every position of a 17-byte line: the word scan must
        // flag exactly what is not printable ASCII.
        for b in 0u8..=255 {
            for at in 0..17 {
                let mut line = vec![b'a'; 17];
                line[at] = b;
                let plain = (0x20..0x7f).contains(&b);
                assert_eq!(printable_ascii(&line), plain, "byte {b:#x} at {at}");
            }
        }
        let mut out = Vec::new();
        push_escaped(
            &mut out,
            "tab\there, bell\u{7}, é, csi\u{9b}, del\u{7f}, nl\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "tab\there, bell\\x07, é, csi\\u{9b}, del\\x7f, nl\\n"
        );
    }
}
