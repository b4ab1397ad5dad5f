//! Unit tests of `sink`.

use super::*;

#[test]
fn a_batch_gives_its_lines_as_records() {
    let text = "one\ntwo".to_string();
    let lines = vec![
        Line {
            start: 0,
            end: 3,
            level: log::Level::Info,
            partial: true,
        },
        Line {
            start: 4,
            end: 7,
            level: log::Level::Warn,
            partial: false,
        },
    ];
    let mut batch = Batch {
        ts_ms: 1_795_758_797_123,
        service: "echo".into(),
        pid: 1234,
        stream: Stream::Stderr,
        unwritten: Arc::default(),
        text,
        lines: lines.clone(),
        event: None,
    };
    let mut s = Vec::new();
    for line in &lines {
        batch.record(line).write(&mut s, false);
    }
    assert_eq!(
        String::from_utf8_lossy(&s),
        "2026-11-27T05:53:17.123Z INFO  echo[1234] stderr: one [...]\n\
         2026-11-27T05:53:17.123Z WARN  echo[1234] stderr: two\n"
    );
    // A lifecycle record kept for `logs`: no stream, and no pid for no process.
    batch.event = Some(RecordKind::Stopped);
    batch.pid = 0;
    let r = batch.record(&lines[1]);
    assert_eq!((r.stream, r.pid, r.event), (None, None, batch.event));
    let v = batch.log_line(&lines[1]);
    assert_eq!(v.event.as_deref(), Some("stopped"));
    assert_eq!(v.level, "warn");
    assert!(v.pid.is_none() && v.stream.is_none());
}

#[test]
fn an_event_record_is_a_record_without_a_stream() {
    let rec = EventRecord {
        ts_ms: 0,
        level: log::Level::Warn,
        service: None,
        pid: None,
        event: None,
        msg: "services directory /srv/a\nb\u{1b}[2J: gone".into(),
        file: None,
    };
    let mut e = Vec::new();
    rec.record().write(&mut e, false);
    assert_eq!(
        String::from_utf8_lossy(&e),
        "1970-01-01T00:00:00.000Z WARN  orchestrator: services directory /srv/a\\nb\\x1b[2J: gone\n",
    );
    let rec = EventRecord {
        ts_ms: 0,
        level: log::Level::Error,
        service: Some("web".into()),
        pid: Some(7),
        event: Some(RecordKind::Exited),
        msg: "exited with code 1".into(),
        file: None,
    };
    e.clear();
    rec.record().write(&mut e, true);
    assert_eq!(
        String::from_utf8_lossy(&e),
        "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"error\",\"service\":\"web\",\"pid\":7,\"event\":\"exited\",\"msg\":\"exited with code 1\"}\n"
    );
    assert_eq!(crate::output::escape::escaped("plain"), "plain");
    assert_eq!(crate::output::escape::escaped("a\u{0}b"), "a\\x00b");
}
