//! Unit tests of `record`: the bytes of both formats, pinned.

use super::*;

fn line<'a>(msg: &'a str, pid: i32, partial: bool) -> Record<'a> {
    Record {
        ts_ms: 1_795_758_797_123,
        level: log::Level::Info,
        service: Some("echo"),
        pid: Some(pid),
        stream: Some(Stream::Stdout),
        event: None,
        msg,
        partial,
    }
}

fn both(r: &Record) -> (String, String) {
    let (mut text, mut json) = (Vec::new(), Vec::new());
    r.write(&mut text, false);
    r.write(&mut json, true);
    let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
    (s(text), s(json))
}

#[test]
fn a_line_in_both_formats() {
    let (text, json) = both(&line("hello \"x\"", 1234, false));
    assert_eq!(
        text,
        "2026-11-27T05:53:17.123Z INFO  echo[1234] stdout: hello \"x\"\n"
    );
    assert_eq!(
        json,
        "{\"ts\":\"2026-11-27T05:53:17.123Z\",\"level\":\"info\",\"service\":\"echo\",\"pid\":1234,\"stream\":\"stdout\",\"msg\":\"hello \\\"x\\\"\"}\n"
    );
    let (text, json) = both(&line("cut", -1, true));
    assert_eq!(
        text,
        "2026-11-27T05:53:17.123Z INFO  echo[-1] stdout: cut [...]\n"
    );
    assert!(json.ends_with(",\"pid\":-1,\"stream\":\"stdout\",\"msg\":\"cut\",\"partial\":true}\n"));
}

#[test]
fn control_characters_keep_their_escapes() {
    let msg = "a\u{0}\u{8}\t\n\u{c}\r\u{1b}\u{1f}\"\\/é\u{7f}\u{9b}\u{2028}";
    let (text, json) = both(&line(msg, 1, false));
    // Text: visible escapes, tab kept; so a line cannot forge another record.
    assert_eq!(
        text,
        "2026-11-27T05:53:17.123Z INFO  echo[1] stdout: a\\x00\\x08\t\\n\\x0c\\r\\x1b\\x1f\"\\/é\\x7f\\u{9b}\u{2028}\n"
    );
    // JSON: backspace and form feed as \u00XX like the other controls, not \b and \f.
    assert!(
        json.contains(
            ",\"msg\":\"a\\u0000\\u0008\\t\\n\\u000c\\r\\u001b\\u001f\\\"\\\\/é\u{7f}\u{9b}\u{2028}\"}\n"
        ),
        "{json}"
    );
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["msg"], msg);
}

#[test]
fn an_orchestrator_record_in_each_shape() {
    let rec = |service, pid, event| Record {
        ts_ms: 0,
        level: log::Level::Warn,
        service,
        pid,
        stream: None,
        event,
        msg: "m",
        partial: false,
    };
    let cases = [
        (
            rec(Some("web"), Some(7), Some(RecordKind::Exited)),
            "1970-01-01T00:00:00.000Z WARN  web[7] m\n",
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"service\":\"web\",\"pid\":7,\"event\":\"exited\",\"msg\":\"m\"}\n",
        ),
        (
            rec(Some("web"), None, Some(RecordKind::RolledBack)),
            "1970-01-01T00:00:00.000Z WARN  web: m\n",
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"service\":\"web\",\"event\":\"rolled back\",\"msg\":\"m\"}\n",
        ),
        (
            rec(None, Some(3), None),
            "1970-01-01T00:00:00.000Z WARN  orchestrator: m\n",
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"service\":\"orchestrator\",\"pid\":3,\"msg\":\"m\"}\n",
        ),
        (
            rec(Some("a\u{1b}b"), None, Some(RecordKind::LogDropped)),
            "1970-01-01T00:00:00.000Z WARN  a\\x1bb: m\n",
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"service\":\"a\\u001bb\",\"event\":\"log_dropped\",\"msg\":\"m\"}\n",
        ),
    ];
    for (r, text, json) in cases {
        assert_eq!(both(&r), (text.to_string(), json.to_string()));
    }
}

#[test]
fn every_kind_is_found_by_its_name() {
    let mut names = std::collections::HashSet::new();
    for k in RecordKind::ALL {
        assert_eq!(RecordKind::from_name(k.as_str()), Some(k));
        assert!(names.insert(k.as_str()), "{k:?} shares its name");
    }
    assert_eq!(
        RecordKind::from_name("rolled back"),
        Some(RecordKind::RolledBack)
    );
    assert_eq!(RecordKind::from_name("no such kind"), None);
}
