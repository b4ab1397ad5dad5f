//! Unit tests of `reader`.

use super::*;

/// Feeds `parts` as successive reads; the lines as (text, partial).
fn split(max: usize, parts: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
    let mut carry = Vec::new();
    let mut out = Vec::new();
    for p in parts {
        let mut buf = carry.clone();
        buf.extend_from_slice(p);
        let mut ranges = Vec::new();
        carry = super::split(&mut buf, max, false, &mut ranges);
        assert!(carry.len() <= max.max(1) + 3);
        for (s, e, partial) in ranges {
            out.push((String::from_utf8_lossy(&buf[s..e]).into_owned(), partial));
        }
    }
    if finish {
        let mut ranges = Vec::new();
        super::split(&mut carry, max, true, &mut ranges);
        for (s, e, partial) in ranges {
            out.push((String::from_utf8_lossy(&carry[s..e]).into_owned(), partial));
        }
    }
    out
}

fn full(v: &[&str]) -> Vec<(String, bool)> {
    v.iter().map(|s| (s.to_string(), false)).collect()
}

#[test]
fn newline_search_matches_the_naive_one() {
    let mut data = vec![b'a'; 200];
    assert_eq!(find_newline(&data), None);
    for pos in [0, 1, 7, 8, 9, 63, 64, 199] {
        data[pos] = b'\n';
        for start in 0..=pos {
            let naive = data[start..].iter().position(|&b| b == b'\n');
            assert_eq!(find_newline(&data[start..]), naive, "{pos} {start}");
        }
        data[pos] = 0x8a; // high bit set, not a newline
        assert_eq!(find_newline(&data), None);
        data[pos] = b'a';
    }
}

#[test]
fn lines_across_reads() {
    assert_eq!(
        split(100, &[b"a\nb", b"c\n\nd"], false),
        full(&["a", "bc", ""])
    );
    assert_eq!(
        split(100, &[b"a\nb", b"c\n\nd"], true),
        full(&["a", "bc", "", "d"])
    );
}

#[test]
fn long_lines_are_chunked_and_marked() {
    let out = split(4, &[b"abcdefghij\nxy\n"], false);
    assert_eq!(
        out,
        vec![
            ("abcd".into(), true),
            ("efgh".into(), true),
            ("ij".into(), false),
            ("xy".into(), false)
        ]
    );
    // Exactly max is one unmarked line.
    assert_eq!(split(4, &[b"abcd\n"], false), full(&["abcd"]));
}

#[test]
fn unterminated_long_line_is_bounded() {
    let parts: Vec<Vec<u8>> = (0..1000).map(|_| vec![b'x'; 100]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let out = split(8, &refs, true);
    assert!(out.iter().all(|(c, _)| c.len() <= 8));
    assert!(out[..out.len() - 1].iter().all(|(_, partial)| *partial));
    assert!(!out.last().unwrap().1);
    assert_eq!(out.iter().map(|(c, _)| c.len()).sum::<usize>(), 100_000);
}

#[test]
fn chunks_do_not_cut_characters() {
    // "é" is two bytes; with max 3, "aé" fits, "aéé" must cut before the second é.
    let out = split(3, &["aééb\n".as_bytes()], false);
    assert_eq!(out, vec![("aé".into(), true), ("éb".into(), false)]);
}

#[test]
fn tiny_limits_never_cut_a_character() {
    // A limit below a character's width gives that character whole, as one chunk
    // (it used to cut it, or panic), whether it arrives in one read or byte by byte.
    let text = "aé€😀b\n";
    let bytes = text.as_bytes();
    let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    for max in 1..=5 {
        for parts in [vec![bytes], one_by_one.clone()] {
            let out = split(max, &parts, true);
            let joined: String = out.iter().map(|(c, _)| c.as_str()).collect();
            assert_eq!(joined, "aé€😀b", "max {max}");
            for (chunk, _) in &out {
                assert!(!chunk.contains('\u{fffd}'), "max {max}: {out:?}");
                assert!(chunk.len() <= max || chunk.chars().count() == 1, "{out:?}");
            }
            assert!(!out.last().unwrap().1);
            assert!(out[..out.len() - 1].iter().all(|(_, p)| *p), "{out:?}");
        }
    }
    assert_eq!(
        split(1, &[text.as_bytes()], true),
        vec![
            ("a".into(), true),
            ("é".into(), true),
            ("€".into(), true),
            ("😀".into(), true),
            ("b".into(), false)
        ]
    );
}

#[test]
fn invalid_utf8_is_replaced() {
    let out = split(100, &[b"a\xffb\n"], false);
    assert_eq!(out, full(&["a\u{fffd}b"]));
}

#[test]
fn json_levels() {
    assert_eq!(
        json_level(r#"{"level":"error","msg":"x"}"#),
        Some(log::Level::Error)
    );
    assert_eq!(json_level(r#"{"level":"DEBUG"}"#), Some(log::Level::Debug));
    assert_eq!(json_level(r#"{"msg":"no level"}"#), None);
    assert_eq!(json_level(r#"{"level":"weird"}"#), None);
    assert_eq!(json_level("not json"), None);
    assert_eq!(json_level("{broken"), None);
}

fn batch(lines: &[&str]) -> Arc<Batch> {
    let head = Head {
        service: "s".into(),
        pid: 1,
        stream: Stream::Stdout,
        unwritten: Arc::default(),
    };
    let mut buf = lines.join("\n").into_bytes();
    let mut ranges = Vec::new();
    super::split(&mut buf, 1 << 20, true, &mut ranges);
    Arc::new(make_batch(&head, buf, &ranges))
}

#[test]
fn invalid_utf8_in_a_batch_is_replaced_line_by_line() {
    let head = Head {
        service: "s".into(),
        pid: 1,
        stream: Stream::Stderr,
        unwritten: Arc::default(),
    };
    let mut buf = b"ok\na\xffb\nend".to_vec();
    let mut ranges = Vec::new();
    super::split(&mut buf, 100, true, &mut ranges);
    let b = make_batch(&head, buf, &ranges);
    let msgs: Vec<&str> = b.lines.iter().map(|l| b.msg(l)).collect();
    assert_eq!(msgs, ["ok", "a\u{fffd}b", "end"]);
    assert!(b.lines.iter().all(|l| l.level == log::Level::Warn));
}

#[test]
fn ring_keeps_the_last_lines_within_the_caps() {
    let mut r = Ring::default();
    for i in 0..500 {
        let a = format!("{}", 3 * i);
        let b = format!("{}", 3 * i + 1);
        let c = format!("{}", 3 * i + 2);
        r.push(batch(&[&a, &b, &c]));
    }
    assert!(
        r.lines >= RING_LINES && r.lines < RING_LINES + 3,
        "{}",
        r.lines
    );
    let all = r.tail(5000);
    assert_eq!(all.len(), RING_LINES);
    let msgs: Vec<String> = all.iter().map(|(b, l)| b.msg(l).to_string()).collect();
    assert_eq!(msgs.first().unwrap(), &(1500 - RING_LINES).to_string());
    assert_eq!(msgs.last().unwrap(), "1499");
    let two = r.tail(2);
    assert_eq!(two[0].0.msg(&two[0].1), "1498");
    r.push(batch(&[&"x".repeat(RING_BYTES)]));
    assert_eq!(r.batches.len(), 1, "the byte cap drops everything older");
    assert_eq!(r.tail(10).len(), 1);
}

#[test]
fn batch_levels_follow_stream_and_json() {
    let b = batch(&["plain", r#"{"level":"error"}"#]);
    assert_eq!(b.lines[0].level, log::Level::Info);
    assert_eq!(b.lines[1].level, log::Level::Error);
    assert_eq!(b.msg(&b.lines[1]), r#"{"level":"error"}"#);
}
