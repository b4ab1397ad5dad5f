//! Dependencies: start order, stop order (dependents first, at `stop` and at shutdown),
//! and services held back by a dependency that does not run.

use crate::util::*;
use serde_json::json;

#[test]
fn dependencies_start_in_order_and_stop_in_reverse() {
    let sb = Sandbox::new();
    let stamp = sb.path("order");
    for n in ["db", "api", "web"] {
        sb.service(
            n,
            &format!(
                "echo start {n} >> {f}; trap 'echo stop {n} >> {f}; exit 0' TERM; while :; do sleep 0.02; done",
                f = stamp.display()
            ),
        );
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {"depends_on": ["api"]}, "api": {"depends_on": ["db"]}}),
    );
    let mut d = Daemon::start(&sb, &[]);
    for n in ["db", "api", "web"] {
        sb.wait_running(n, None);
    }
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&stamp)
        .unwrap_or_default()
        .lines()
        .count()
        == 3));
    // Spawn order, from the daemon's own events (without health checks a dependency
    // is up once it has exec'd, so the services' first lines may race each other).
    let log = d.log_lines();
    let pos = |n: &str| {
        log.iter()
            .position(|l| l.contains(&format!(" {n}[")) && l.ends_with("] started"))
            .unwrap_or_else(|| panic!("{n} never started"))
    };
    assert!(pos("db") < pos("api") && pos("api") < pos("web"), "{log:?}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(0));
    // Stop order is strict: a dependency gets its signal once its dependents are gone.
    let text = std::fs::read_to_string(&stamp).unwrap();
    let stops: Vec<&str> = text.lines().filter(|l| l.starts_with("stop")).collect();
    assert_eq!(stops, ["stop web", "stop api", "stop db"]);
}

#[test]
fn stop_of_a_dependency_stops_its_dependents_first() {
    let sb = Sandbox::new();
    let stamp = sb.path("order");
    for n in ["db", "api", "web", "other"] {
        sb.service(
            n,
            &format!(
                "trap 'sleep 0.2; echo stop {n} >> {f}; exit 0' TERM; while :; do sleep 0.02; done",
                f = stamp.display()
            ),
        );
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {"depends_on": ["api"]}, "api": {"depends_on": ["db"]}}),
    );
    let _d = Daemon::start(&sb, &[]);
    for n in ["db", "api", "web", "other"] {
        sb.wait_running(n, None);
    }
    let other = sb.service_status("other")["pid"].clone();
    // `stop db` returns once db has stopped, which is after web, then api.
    let out = sb.cli(&["stop", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&stamp).unwrap();
    let stops: Vec<&str> = text.lines().collect();
    assert_eq!(stops, ["stop web", "stop api", "stop db"]);
    for n in ["db", "api", "web"] {
        assert_eq!(sb.service_status(n)["state"], "stopped", "{n}");
    }
    assert_eq!(
        sb.service_status("other")["pid"],
        other,
        "unrelated service untouched"
    );
    // Nothing restarts by itself; `start db` starts db alone.
    assert_eq!(sb.cli(&["start", "db"]).code, 0);
    sb.wait_running("db", None);
    assert_eq!(sb.service_status("api")["state"], "stopped");
    assert_eq!(sb.cli(&["stop", "web"]).stdout, "web: already stopped\n");
}

/// A dependent waiting for its dependency (`starting`, no process) is stopped with it,
/// also when the dependency was stopped already: left waiting, it would start the
/// moment the dependency is started again, stop or no stop.
#[test]
fn stop_of_a_stopped_dependency_stops_a_dependent_waiting_for_it() {
    let sb = Sandbox::new();
    for n in ["db", "app"] {
        sb.service(n, "exec sleep 1000");
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({"app": {"depends_on": ["db"]}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("app", None);
    assert_eq!(sb.cli(&["stop", "db"]).code, 0);
    assert_eq!(sb.cli(&["start", "app"]).code, 0);
    let app = sb.service_status("app");
    assert_eq!(app["state"], "starting", "{app}");
    assert!(app["pid"].is_null(), "{app}");
    assert_eq!(app["last_error"], "waiting for db (stopped)", "{app}");

    let out = sb.cli(&["stop", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let app = sb.service_status("app");
    assert_eq!(app["state"], "stopped", "{app}");
    // With nothing left waiting, a stop of the stopped service changes nothing.
    assert_eq!(sb.cli(&["stop", "db"]).stdout, "db: already stopped\n");
    // Held: db running again does not bring app up.
    assert_eq!(sb.cli(&["start", "db"]).code, 0);
    sb.wait_running("db", None);
    assert_eq!(sb.service_status("app")["state"], "stopped");
    assert_eq!(sb.cli(&["start", "app"]).code, 0);
    sb.wait_running("app", None);
}

/// A service that fails for good while its `stop` waits for its dependents to stop is
/// left stopped (and held) all the same, not failed.
#[test]
fn a_dependency_that_fails_while_its_stop_waits_is_left_stopped() {
    let sb = Sandbox::new();
    let trigger = sb.path("fail-now");
    sb.service(
        "db",
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done; exit 3",
            trigger.display()
        ),
    );
    // app, asked to stop, makes db fail and stops only once the daemon has seen it.
    sb.service(
        "app",
        &format!(
            "trap 'touch {t}; while {bin} --socket {s} status db >/dev/null 2>&1; do sleep 0.02; done; exit 0' TERM; while :; do sleep 0.02; done",
            t = trigger.display(),
            bin = BIN,
            s = sb.socket().display()
        ),
    );
    sb.config(
        json!({"services_dir": "services"}),
        json!({"db": {"restart": "never"}, "app": {"depends_on": ["db"]}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("app", None);
    let out = sb.cli(&["stop", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let db = sb.service_status("db");
    assert_eq!(db["state"], "stopped", "{db}");
    assert_eq!(db["last_exit_code"], 3, "db did fail meanwhile: {db}");
    assert_eq!(sb.service_status("app")["state"], "stopped");
}

#[test]
fn a_failed_dependency_holds_its_dependents_back() {
    let sb = Sandbox::new();
    // db has no binary yet: it fails without ever running.
    sb.service("app", "exec sleep 1000");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"db": {}, "app": {"depends_on": ["db"]}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_state("db", "failed");
    let app = sb.service_status("app");
    assert_eq!(app["state"], "starting");
    assert!(app["pid"].is_null());
    assert_eq!(app["last_error"], "waiting for db (failed)");
    // Once the dependency runs, the dependent follows.
    sb.service("db", "exec sleep 1000");
    assert_eq!(sb.cli(&["start", "db"]).code, 0);
    sb.wait_running("app", None);
}

/// Shutdown stops a chain strictly in reverse: each service gets its signal only once
/// its dependent has exited, whatever the order the daemon keeps its services in.
#[test]
fn shutdown_stops_a_chain_of_five_one_after_the_other() {
    let sb = Sandbox::new();
    let stamp = sb.path("order");
    // Each takes a while to exit, so a signal sent too early shows in the file.
    for n in ["a", "b", "c", "d", "e"] {
        sb.service(
            n,
            &format!(
                "trap 'echo term {n} >> {f}; sleep 0.1; echo exit {n} >> {f}; exit 0' TERM\nsleep 1000 & wait",
                f = stamp.display()
            ),
        );
    }
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "e": {"depends_on": ["d"]},
            "d": {"depends_on": ["c"]},
            "c": {"depends_on": ["b"]},
            "b": {"depends_on": ["a"]},
        }),
    );
    let mut d = Daemon::start(&sb, &[]);
    for n in ["a", "b", "c", "d", "e"] {
        sb.wait_running(n, None);
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(0), "{}", d.log_text());
    let text = std::fs::read_to_string(&stamp).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let expected: Vec<String> = ["e", "d", "c", "b", "a"]
        .iter()
        .flat_map(|n| [format!("term {n}"), format!("exit {n}")])
        .collect();
    assert_eq!(lines, expected, "stop order");
}
