//! Entry points for the fuzz targets under `fuzz/`: each feeds untrusted bytes to one
//! parser the way the daemon does, and must return (never panic) whatever the input.
//! The checks here assert what the daemon relies on, so a fuzzer stops on a broken
//! promise, not only on a crash. Nothing in the daemon calls this module.

use crate::output::reader::{json_level, split};
use crate::output::sink::{Batch, Line, Stream};
use std::sync::Arc;

/// The configuration parser and validator, on a file's contents. Every problem must be
/// reported on a line of its own, whatever characters the file's keys and values hold.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = crate::config::parse_and_validate(&text) {
        assert!(!e.0.is_empty(), "an error without a message");
        for msg in &e.0 {
            assert!(
                !msg.contains(['\n', '\r']),
                "a message on several lines: {msg:?}"
            );
        }
    }
}

/// The HPACK decoder on a header block, decoded twice on one connection (as headers
/// and then trailers are). Checked: whatever the block's references to the dynamic
/// table, the fields handed out add up to no more than the bound, so one answer cannot
/// make the daemon allocate more than that.
pub fn hpack(data: &[u8]) {
    use crate::health::hpack::{Decoder, MAX_HEADER_LIST};
    let mut decoder = Decoder::default();
    let mut listed = 0;
    for _ in 0..2 {
        if let Ok(fields) = decoder.decode(data) {
            listed += fields
                .iter()
                .map(|(n, v)| n.len() + v.len() + 32)
                .sum::<usize>();
        }
    }
    assert!(listed <= MAX_HEADER_LIST, "{listed} bytes of header fields");
}

/// A gRPC health check reading `data` as the server's HTTP/2 answer: frames, padding,
/// CONTINUATION, SETTINGS and PING, HPACK, the verdict. Checked: the decoded header
/// list and the body stay within their bounds.
pub fn http2_answer(data: &[u8]) {
    use crate::health::{grpc, hpack::MAX_HEADER_LIST};
    if let Ok((listed, body)) = grpc::fuzz_answer(data) {
        assert!(listed <= MAX_HEADER_LIST, "{listed} bytes of header fields");
        assert!(body <= grpc::MAX_RESPONSE, "a body of {body} bytes");
    }
}

/// The control socket's request parser, on one request line.
pub fn control_request(data: &[u8]) {
    let _ = crate::control::socket::parse_request(data);
}

/// A service's output as the readers and the log writer treat it. The input is
/// `[limit, read size, timestamp (8 bytes), output...]`: the output is fed in reads of
/// the given size with `max_line_bytes` of at least 4 (below that, a character of four
/// bytes cannot fit in a chunk), cut into lines, and every line formatted as text and
/// as JSON. Checked: no chunk is over the limit, the chunks put back together are the
/// output, valid UTF-8 is never cut inside a character, and each JSON record parses
/// back to its line.
pub fn log_lines(data: &[u8]) {
    let Some((head, output)) = data.split_first_chunk::<10>() else {
        return;
    };
    let max = 4 + usize::from(head[0]);
    let read_size = 1 + usize::from(head[1]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&head[2..]);
    let ts_ms = u64::from_le_bytes(ts);
    let utf8 = std::str::from_utf8(output).is_ok();

    let mut rebuilt = Vec::with_capacity(output.len() + 1);
    let mut carry = Vec::new();
    for read in output.chunks(read_size).map(Some).chain([None]) {
        let eof = read.is_none();
        let mut buf = std::mem::take(&mut carry);
        buf.extend_from_slice(read.unwrap_or_default());
        let mut ranges = Vec::new();
        carry = split(&mut buf, max, eof, &mut ranges);
        assert!(carry.len() <= max, "carry of {} over {max}", carry.len());
        for &(start, end, partial) in &ranges {
            assert!(start <= end && end <= buf.len() && end - start <= max);
            let raw = &buf[start..end];
            assert!(!raw.contains(&b'\n'));
            assert!(
                !utf8 || std::str::from_utf8(raw).is_ok(),
                "cut inside a character"
            );
            rebuilt.extend_from_slice(raw);
            if !partial {
                rebuilt.push(b'\n');
            }
            check_format(raw, partial, ts_ms);
        }
    }
    let mut expected = output.to_vec();
    if expected.last().is_some_and(|&b| b != b'\n') {
        expected.push(b'\n');
    }
    assert!(rebuilt == expected, "lines do not add up to the output");
}

/// One line through both log formats, as the log writer formats it.
fn check_format(raw: &[u8], partial: bool, ts_ms: u64) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let line = Line {
        start: 0,
        end: text.len(),
        level: json_level(&text).unwrap_or(log::Level::Info),
        partial,
    };
    let batch = Batch {
        service: Arc::from("fuzz\"svc"),
        pid: 42,
        stream: Stream::Stdout,
        ts_ms,
        unwritten: Arc::default(),
        text,
        lines: Vec::new(),
        event: None,
    };
    let mut out = Vec::new();
    batch.record(&line).write(&mut out, false);
    assert!(out.ends_with(b"\n") && out.iter().filter(|&&b| b == b'\n').count() == 1);
    out.clear();
    batch.record(&line).write(&mut out, true);
    let record: serde_json::Value = serde_json::from_slice(&out).expect("a JSON record");
    assert_eq!(record["msg"].as_str(), Some(batch.text.as_str()));
    assert_eq!(record["service"].as_str(), Some("fuzz\"svc"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out
    }

    /// The committed seeds replayed through every target: the harness itself works, and
    /// none of them has started to panic.
    #[test]
    fn seeds_pass_every_target() {
        seeds("config").iter().for_each(|s| config(s));
        seeds("control").iter().for_each(|s| control_request(s));
        seeds("log_lines").iter().for_each(|s| log_lines(s));
        seeds("hpack").iter().for_each(|s| hpack(s));
        seeds("http2_answer").iter().for_each(|s| http2_answer(s));
    }

    /// The seed with every key of the file is a valid config, so the fuzzer starts from
    /// inputs that reach validation, not only the parser's errors.
    #[test]
    fn every_key_seed_is_valid() {
        let text = include_str!("../fuzz/corpus/config/every_key.json");
        let r = crate::config::parse_and_validate(text);
        assert!(r.is_ok(), "{r:?}");
    }
}
