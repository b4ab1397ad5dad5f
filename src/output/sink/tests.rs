//! Unit tests of `sink`.

use super::*;

#[test]
fn text_and_json_lines() {
    let text = "hello \"x\"".to_string();
    let line = Line {
        start: 0,
        end: text.len(),
        level: log::Level::Info,
        partial: false,
    };
    let rec = Batch {
        ts_ms: 1_795_758_797_123,
        service: "echo".into(),
        pid: 1234,
        stream: Stream::Stdout,
        unwritten: Arc::default(),
        text,
        lines: vec![line],
        event: None,
    };
    let mut s = String::new();
    format_line(&mut s, &rec, &line, false);
    assert_eq!(
        s,
        "2026-11-27T05:53:17.123Z INFO  echo[1234] stdout: hello \"x\"\n"
    );
    s.clear();
    format_line(&mut s, &rec, &line, true);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["msg"], "hello \"x\"");
    assert_eq!(v["service"], "echo");
    assert_eq!(v["pid"], 1234);
    assert_eq!(v["stream"], "stdout");
    assert_eq!(v["level"], "info");
    assert!(v.get("partial").is_none());
}

#[test]
fn text_escapes_control_characters_visibly() {
    let text =
        "ok\r2026-11-27T00:00:00.000Z ERROR orchestrator: forged\n\u{1b}]0;t\u{7}\u{9b}x\ty\u{7f}é"
            .to_string();
    let line = Line {
        start: 0,
        end: text.len(),
        level: log::Level::Info,
        partial: false,
    };
    let rec = Batch {
        ts_ms: 0,
        service: "svc".into(),
        pid: 1,
        stream: Stream::Stdout,
        unwritten: Arc::default(),
        text,
        lines: vec![line],
        event: None,
    };
    let mut s = String::new();
    format_line(&mut s, &rec, &line, false);
    assert_eq!(
        s,
        "1970-01-01T00:00:00.000Z INFO  svc[1] stdout: ok\\r2026-11-27T00:00:00.000Z ERROR orchestrator: forged\\n\\x1b]0;t\\x07\\u{9b}x\ty\\x7fé\n"
    );
    assert_eq!(s.matches('\n').count(), 1, "one record, one line");
    let mut e = String::new();
    format_event(
        &mut e,
        &EventRecord {
            ts_ms: 0,
            level: log::Level::Warn,
            service: None,
            pid: None,
            event: None,
            msg: "services directory /srv/a\nb\u{1b}[2J: gone".into(),
            file: None,
        },
        false,
    );
    assert!(
        e.ends_with("orchestrator: services directory /srv/a\\nb\\x1b[2J: gone\n"),
        "{e}"
    );
    assert_eq!(crate::output::escape::escaped("plain"), "plain");
    assert_eq!(crate::output::escape::escaped("a\u{0}b"), "a\\x00b");
}

#[test]
fn json_escapes_control_characters() {
    let mut s = String::new();
    push_json_str(&mut s, "a\u{1}\tb\u{fffd}");
    assert_eq!(s, "\"a\\u0001\\tb\u{fffd}\"");
    let back: String = serde_json::from_str(&s).unwrap();
    assert_eq!(back, "a\u{1}\tb\u{fffd}");
}
