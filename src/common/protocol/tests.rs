use super::*;
use serde_json::{json, Value};

/// A row with every field set, as the daemon writes one.
fn full_row() -> StatusRow {
    StatusRow {
        binary: Some(Binary {
            mtime: 1_700_000_000,
            path: "/usr/bin/web".into(),
            sha256: Some("ab".repeat(32)),
            size: 4096,
        }),
        cgroup: Some("/sys/fs/cgroup/orchestrator/web".into()),
        configured: true,
        cpu_seconds: Some(0.25),
        enabled: true,
        hardening: [("no_new_privileges".to_string(), "off".to_string())].into(),
        history: vec![Run {
            exit_code: Some(1),
            exited: Some(2),
            reason: Some("exited with code 1".into()),
            started: 1,
        }],
        last_error: Some("exited with code 1".into()),
        last_exit: Some(LastExit {
            at: Some(2),
            by_operator: false,
            code: Some(1),
            signal: None,
        }),
        last_exit_code: Some(1),
        limits: [("nofile".to_string(), "setrlimit".to_string())].into(),
        log_forward_dropped: 5,
        log_lines_unwritten: 3,
        name: "web".into(),
        next_restart_ms: Some(900),
        notify_dropped: 0,
        notify_status: Some("serving".into()),
        pid: Some(42),
        restarts: 1,
        rss_bytes: Some(1 << 20),
        since: Some(5),
        sockets: Some(vec![Socket {
            bound: true,
            listen: "tcp://127.0.0.1:80".into(),
            name: "web".into(),
        }]),
        state: "restarting".into(),
        upgrades: vec![Upgrade {
            at: 3,
            from: "aa".into(),
            result: "ok".into(),
            to: "bb".into(),
        }],
        uptime: 7_000_000_000,
        waiting_for: Some("READY=1".into()),
    }
}

/// A kept line with every field set.
fn full_line() -> LogLine {
    LogLine {
        event: Some("exited".into()),
        level: "warn".into(),
        msg: "bye".into(),
        partial: true,
        pid: Some(9),
        stream: Some("stderr".into()),
        ts: "2026-11-27T05:53:17.123Z".into(),
    }
}

/// The wire was written through `serde_json::Value`, whose objects keep their keys
/// sorted: the typed form must write the very same bytes.
fn same_bytes_as_sorted(v: &impl Serialize) {
    let typed = serde_json::to_string(v).unwrap();
    let sorted = serde_json::to_value(v).unwrap().to_string();
    assert_eq!(typed, sorted);
}

#[test]
fn replies_are_written_in_the_wire_order() {
    let mut status = Response::ok();
    status.services = Some(vec![full_row(), StatusRow::default()]);
    status.orchestrator = Some(Orchestrator::default());
    same_bytes_as_sorted(&status);
    let mut logs = Response::ok();
    logs.lines = Some(vec![LogLine {
        event: Some("started".into()),
        ..LogLine::default()
    }]);
    same_bytes_as_sorted(&logs);
    let mut every = Response::error("x");
    every.message = Some("m".into());
    every.metrics = Some("t".into());
    every.pid = Some(1);
    every.plan = Some(vec![PlanStep::default()]);
    every.result = Some("ok".into());
    every.sha256 = Some("s".into());
    every.version = Some("v".into());
    same_bytes_as_sorted(&every);
    let mut req = Request::new(Cmd::Logs);
    (req.dry_run, req.follow, req.lines) = (true, true, Some(1));
    (req.path, req.service) = (Some("/p".into()), Some("s".into()));
    same_bytes_as_sorted(&req);
    same_bytes_as_sorted(&Streamed {
        dropped: Some(1),
        line: Some(LogLine::default()),
        ..Streamed::default()
    });
}

#[test]
fn envelopes_read_as_the_protocol_spells_them() {
    assert_eq!(
        Response::error("service not found").to_string(),
        r#"{"error":"service not found","ok":false}"#
    );
    assert_eq!(Response::ok().to_string(), r#"{"ok":true}"#);
    let mut r = Response::ok();
    r.services = Some(vec![]);
    assert_eq!(r.to_string(), r#"{"ok":true,"services":[]}"#);
    let s = Streamed {
        dropped: Some(3),
        ..Streamed::default()
    };
    assert_eq!(s.to_string(), r#"{"dropped":3}"#);
}

#[test]
fn null_and_absent_stay_as_they_were() {
    let v = serde_json::to_value(StatusRow::default()).unwrap();
    for null in [
        "pid",
        "rss_bytes",
        "cpu_seconds",
        "binary",
        "last_exit",
        "cgroup",
    ] {
        assert_eq!(v.get(null), Some(&Value::Null), "{null}");
    }
    for absent in ["next_restart_ms", "waiting_for", "sockets", "since"] {
        assert!(v.get(absent).is_none(), "{absent}");
    }
    let line = serde_json::to_value(LogLine::default()).unwrap();
    assert_eq!(line.get("pid"), Some(&Value::Null));
    assert_eq!(line.get("stream"), Some(&Value::Null));
    assert!(line.get("event").is_none());
}

#[test]
fn every_type_round_trips() {
    let mut r = Response::ok();
    r.services = Some(vec![full_row()]);
    r.orchestrator = Some(Orchestrator {
        log_records_dropped: 1,
        log_write_errors: 2,
        notify_rejected: 3,
        pid: 4,
        uptime: 5,
    });
    let back = Response::parse(&r.to_string()).unwrap();
    assert_eq!(back, r);
    let line = full_line();
    let every = Response {
        error: Some("e".into()),
        lines: Some(vec![line.clone()]),
        message: Some("already running".into()),
        metrics: Some("# HELP\n".into()),
        ok: true,
        pid: Some(8),
        plan: Some(vec![PlanStep {
            action: "restart".into(),
            service: "web".into(),
        }]),
        result: Some("ok".into()),
        sha256: Some("ab".into()),
        version: Some("0.1.0".into()),
        ..Response::default()
    };
    assert_eq!(Response::parse(&every.to_string()).unwrap(), every);
    let streamed = Streamed {
        dropped: Some(2),
        error: Some("gone".into()),
        line: Some(line),
        ok: Some(false),
    };
    assert_eq!(Streamed::parse(&streamed.to_string()).unwrap(), streamed);
    let mut req = Request::new(Cmd::Logs);
    req.service = Some("web".into());
    req.lines = Some(5);
    req.follow = true;
    let text = req.to_string();
    assert_eq!(
        text,
        r#"{"cmd":"logs","follow":true,"lines":5,"service":"web"}"#
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    let bare = Request::new(Cmd::UpgradeSelf).to_string();
    assert_eq!(bare, r#"{"cmd":"upgrade-self"}"#);
}

#[test]
fn requests_parse_strictly() {
    let r: Request = serde_json::from_str(r#"{"cmd":"status","service":"echo"}"#).unwrap();
    assert_eq!(r.service.as_deref(), Some("echo"));
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","bogus":1}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"service":"x"}"#).is_err());
    // What clients have always sent: nulls and `false` spelled out.
    let r: Request =
        serde_json::from_str(r#"{"cmd":"status","service":null,"dry_run":false}"#).unwrap();
    assert_eq!(r, Request::new(Cmd::Status));
}

/// A reply as an older daemon wrote it (before `since`, `last_exit`,
/// `notify_status`, `hardening`...) still reads, its missing fields defaulted; and
/// fields a newer daemon adds are ignored.
#[test]
fn replies_from_other_versions_still_parse() {
    let old = json!({"ok": true, "services": [{"name": "web", "configured": true,
        "enabled": true, "state": "running", "pid": 7, "uptime": 1_000_000_000u64,
        "restarts": 0, "last_exit_code": null, "last_error": null, "rss_bytes": 10,
        "cpu_seconds": 0.5, "binary": null,
        "history": [{"started": 1, "exited": null, "exit_code": null}]}]});
    let r = Response::from_json(&old);
    let row = &r.services.as_ref().unwrap()[0];
    assert_eq!(
        (row.pid, row.since, row.last_exit.is_none()),
        (Some(7), None, true)
    );
    assert_eq!(row.history[0].reason, None);
    assert!(r.orchestrator.is_none());
    let newer = json!({"ok": false, "error": "no", "hint": {"a": [1]},
        "lines": [{"ts": "t", "level": "info", "pid": 1, "stream": "stdout",
                   "msg": "m", "partial": false, "colour": "red"}]});
    let r = Response::from_json(&newer);
    assert_eq!(r.lines.as_ref().unwrap()[0].msg, "m");
    assert_eq!(r.into_result(), Err("no".to_string()));
}

/// Every key `v` writes is one its reader reads: `v` reads back as it was written, and
/// without any one of its keys it reads back differently. So a field written under a
/// wrong name, or read from a wrong key, is caught even when its value is the one a
/// missing key defaults to (`v` must set every field, away from its default).
fn every_key_is_read<T: FromJson + Serialize + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_value(v).unwrap();
    assert_eq!(&T::from_json(&json), v, "does not read back as written");
    for key in json.as_object().unwrap().keys() {
        let mut less = json.clone();
        less.as_object_mut().unwrap().remove(key);
        assert_ne!(&T::from_json(&less), v, "`{key}` is written but never read");
    }
}

#[test]
fn every_field_is_written_and_read_under_one_name() {
    let mut row = full_row();
    // Away from the defaults a missing key gives.
    (row.configured, row.enabled, row.notify_dropped) = (false, false, 2);
    let last_exit = LastExit {
        by_operator: true,
        signal: Some("SIGTERM".into()),
        ..row.last_exit.clone().unwrap()
    };
    row.last_exit = Some(last_exit.clone());
    every_key_is_read(&row);
    every_key_is_read(&last_exit);
    every_key_is_read(row.binary.as_ref().unwrap());
    every_key_is_read(&row.history[0]);
    every_key_is_read(&row.sockets.as_ref().unwrap()[0]);
    every_key_is_read(&row.upgrades[0]);
    let orchestrator = Orchestrator {
        log_records_dropped: 1,
        log_write_errors: 2,
        notify_rejected: 3,
        pid: 4,
        uptime: 5,
    };
    every_key_is_read(&orchestrator);
    let line = full_line();
    every_key_is_read(&line);
    let step = PlanStep {
        action: "restart".into(),
        service: "web".into(),
    };
    every_key_is_read(&step);
    every_key_is_read(&Streamed {
        dropped: Some(2),
        error: Some("gone".into()),
        line: Some(line.clone()),
        ok: Some(false),
    });
    every_key_is_read(&Response {
        error: Some("e".into()),
        lines: Some(vec![line]),
        message: Some("already running".into()),
        metrics: Some("# HELP\n".into()),
        ok: true,
        orchestrator: Some(orchestrator),
        pid: Some(8),
        plan: Some(vec![step]),
        result: Some("ok".into()),
        services: Some(vec![row]),
        sha256: Some("ab".into()),
        version: Some("0.1.0".into()),
    });
}
