//! The machine, one (phase, event) pair at a time. `TABLE` is the whole phase x event
//! table: one row per pair, in phase order, so that a reader can check by eye that
//! none is missing; the test also counts them.

use super::harness::{check, kinds, spec, T};
use super::*;

/// Puts a fresh service in the named phase, through events only.
fn reach(phase: &str) -> T {
    let with_check = || {
        let mut s = spec(RestartPolicy::Always, 3);
        s.health_check = Some(check(2));
        T::with(s)
    };
    let mut t = match phase {
        "failed" => T::new(RestartPolicy::Never, 3),
        "failed-retry" => {
            let mut s = spec(RestartPolicy::Always, 1);
            s.retry_failed = Some(Duration::from_secs(30));
            T::with(s)
        }
        "starting" | "stopping" | "draining" => with_check(),
        "launching" | "await-pid" => {
            let mut s = spec(RestartPolicy::Always, 3);
            s.process.pid_file = Some("/run/svc.pid".into());
            T::with(s)
        }
        _ => T::new(RestartPolicy::Always, 3),
    };
    let ok = "reaching a phase is never refused";
    match phase {
        "stopped" => {}
        "held" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.op_stop().expect(ok);
            t.exit(Exit::Signal(libc::SIGTERM));
            t.ev(Event::GroupEmpty);
        }
        "failed" | "backoff" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.exit(Exit::Code(1));
        }
        "failed-retry" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.exit(Exit::Code(1));
            t.fire();
            t.spawned();
            t.exit(Exit::Code(1));
        }
        "waiting" => {
            t.unmet = vec!["db (stopped)".into()];
            t.on(Event::Start).expect(ok);
            t.unmet.clear();
        }
        "busy" => {
            t.on(Event::Start).expect(ok);
            t.ev(Event::SpawnFailed {
                error: "Text file busy".into(),
                busy: true,
            });
        }
        "spawning" => {
            t.on(Event::Start).expect(ok);
        }
        "starting" | "running" | "launching" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
        }
        "await-pid" => {
            t.on(Event::Start).expect(ok);
            t.spawned();
            t.exit(Exit::Code(0));
        }
        "stopping" | "draining" => {
            // With a health check that has passed, so that a late result could matter.
            t.on(Event::Start).expect(ok);
            t.spawned();
            let gen = t.gen;
            t.ev(Event::Probe {
                gen,
                result: Ok(()),
            });
            t.op_stop().expect(ok);
            if phase == "draining" {
                t.exit(Exit::Signal(libc::SIGTERM));
            }
        }
        other => panic!("no way to reach phase {other}"),
    }
    assert_eq!(t.phase(), phase, "reached");
    t.ms += 10;
    t
}

/// Feeds the named event in the current phase.
fn apply(t: &mut T, event: &str) -> Result<Vec<Action>, Refusal> {
    let gen = t.gen;
    let ev = match event {
        "start" => Event::Start,
        "restart" => Event::Restart,
        "stop" => Event::Stop {
            then: AfterStop::Stay,
            origin: Origin::Operator,
        },
        "remove" => Event::Stop {
            then: AfterStop::Remove,
            origin: Origin::Reload,
        },
        "deps" => Event::DepsChanged,
        "spawned" => {
            t.gen += 1;
            Event::Spawned {
                pid: 100 + t.gen as i32,
                gen: t.gen,
            }
        }
        "spawnfail" => Event::SpawnFailed {
            error: "EMFILE".into(),
            busy: false,
        },
        "exited" => Event::Exited {
            gen,
            exit: Exit::Code(1),
        },
        "empty" => Event::GroupEmpty,
        "alive" => Event::GroupAlive,
        "timer" => {
            // Every deadline has passed an hour later.
            t.ms += 3_600_000;
            Event::Timer
        }
        "pass" => Event::Probe {
            gen,
            result: Ok(()),
        },
        "fail" => Event::Probe {
            gen,
            result: Err("refused".into()),
        },
        "skipped" => Event::ProbeSkipped,
        "pidfile" => Event::PidFile {
            gen,
            result: Ok(4242),
        },
        "recheck" => {
            // A reload adds a health check in place.
            let mut s = t.svc.spec().clone();
            s.health_check = Some(check(1));
            Event::Reconfigured(Box::new(s))
        }
        "ready" => Event::Notify(Notice::Ready),
        "status" => Event::Notify(Notice::Status("warming up".into())),
        "keepalive" => Event::Notify(Notice::KeepAlive(t.at(t.ms))),
        "trigger" => Event::Notify(Notice::Trigger),
        other => panic!("unknown event {other}"),
    };
    t.on(ev)
}

const PHASES: [&str; 14] = [
    "stopped",
    "held",
    "failed",
    "failed-retry",
    "waiting",
    "backoff",
    "busy",
    "spawning",
    "starting",
    "running",
    "launching",
    "await-pid",
    "stopping",
    "draining",
];

const EVENTS: [&str; 20] = [
    "start",
    "restart",
    "stop",
    "remove",
    "deps",
    "spawned",
    "spawnfail",
    "exited",
    "empty",
    "alive",
    "timer",
    "pass",
    "fail",
    "skipped",
    "recheck",
    "pidfile",
    "ready",
    "status",
    "keepalive",
    "trigger",
];

/// (phase, event) -> (phase after, actions or `refused: why`, deadline after, last_error).
/// `internal` is the warning record of an event that cannot happen in that phase.
#[rustfmt::skip]
const TABLE: &[(&str, &str, &str, &str, &str, &str)] = &[
    // phase, event, => phase, actions, deadline, last_error
    ("stopped", "start", "spawning", "spawn", "-", "-"),
    ("stopped", "restart", "spawning", "spawn", "-", "-"),
    ("stopped", "stop", "held", "", "-", "-"),
    ("stopped", "remove", "stopped", "remove", "-", "-"),
    ("stopped", "deps", "stopped", "", "-", "-"),
    ("stopped", "spawned", "stopped", "internal kill", "-", "-"),
    ("stopped", "spawnfail", "stopped", "internal", "-", "-"),
    ("stopped", "exited", "stopped", "internal", "-", "-"),
    ("stopped", "empty", "stopped", "internal", "-", "-"),
    ("stopped", "alive", "stopped", "internal", "-", "-"),
    ("stopped", "timer", "stopped", "", "-", "-"),
    ("stopped", "pass", "stopped", "", "-", "-"),
    ("stopped", "fail", "stopped", "", "-", "-"),
    ("stopped", "skipped", "stopped", "", "-", "-"),
    ("stopped", "recheck", "stopped", "", "-", "-"),
    ("stopped", "pidfile", "stopped", "internal", "-", "-"),
    ("stopped", "ready", "stopped", "", "-", "-"),
    ("stopped", "status", "stopped", "", "-", "-"),
    ("stopped", "keepalive", "stopped", "", "-", "-"),
    ("stopped", "trigger", "stopped", "", "-", "-"),

    ("held", "start", "spawning", "spawn", "-", "-"),
    ("held", "restart", "spawning", "spawn", "-", "-"),
    ("held", "stop", "held", "", "-", "-"),
    ("held", "remove", "held", "remove", "-", "-"),
    ("held", "deps", "held", "", "-", "-"),
    ("held", "spawned", "held", "internal kill", "-", "-"),
    ("held", "spawnfail", "held", "internal", "-", "-"),
    ("held", "exited", "held", "internal", "-", "-"),
    ("held", "empty", "held", "internal", "-", "-"),
    ("held", "alive", "held", "internal", "-", "-"),
    ("held", "timer", "held", "", "-", "-"),
    ("held", "pass", "held", "", "-", "-"),
    ("held", "fail", "held", "", "-", "-"),
    ("held", "skipped", "held", "", "-", "-"),
    ("held", "recheck", "held", "", "-", "-"),
    ("held", "pidfile", "held", "internal", "-", "-"),
    ("held", "ready", "held", "", "-", "-"),
    ("held", "status", "held", "", "-", "-"),
    ("held", "keepalive", "held", "", "-", "-"),
    ("held", "trigger", "held", "", "-", "-"),

    ("failed", "start", "spawning", "spawn", "-", "exited with code 1"),
    ("failed", "restart", "spawning", "spawn", "-", "exited with code 1"),
    ("failed", "stop", "held", "stopped", "-", "-"),
    ("failed", "remove", "failed", "remove", "-", "exited with code 1"),
    ("failed", "deps", "failed", "", "-", "exited with code 1"),
    ("failed", "spawned", "failed", "internal kill", "-", "exited with code 1"),
    ("failed", "spawnfail", "failed", "internal", "-", "exited with code 1"),
    ("failed", "exited", "failed", "internal", "-", "exited with code 1"),
    ("failed", "empty", "failed", "internal", "-", "exited with code 1"),
    ("failed", "alive", "failed", "internal", "-", "exited with code 1"),
    ("failed", "timer", "failed", "", "-", "exited with code 1"),
    ("failed", "pass", "failed", "", "-", "exited with code 1"),
    ("failed", "fail", "failed", "", "-", "exited with code 1"),
    ("failed", "skipped", "failed", "", "-", "exited with code 1"),
    ("failed", "recheck", "failed", "", "-", "exited with code 1"),
    ("failed", "pidfile", "failed", "internal", "-", "exited with code 1"),
    ("failed", "ready", "failed", "", "-", "exited with code 1"),
    ("failed", "status", "failed", "", "-", "exited with code 1"),
    ("failed", "keepalive", "failed", "", "-", "exited with code 1"),
    ("failed", "trigger", "failed", "", "-", "exited with code 1"),

    ("failed-retry", "start", "spawning", "spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "restart", "spawning", "spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "stop", "held", "stopped", "-", "-"),
    ("failed-retry", "remove", "failed-retry", "remove", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "deps", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "spawned", "failed-retry", "internal kill", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "spawnfail", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "exited", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "empty", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "alive", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "timer", "spawning", "retrying spawn", "-", "maximum restart attempts exceeded"),
    ("failed-retry", "pass", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "fail", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "skipped", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "recheck", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "pidfile", "failed-retry", "internal", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "ready", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "status", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "keepalive", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),
    ("failed-retry", "trigger", "failed-retry", "", "+29990", "maximum restart attempts exceeded"),

    ("waiting", "start", "spawning", "spawn", "-", "-"),
    ("waiting", "restart", "spawning", "spawn", "-", "-"),
    ("waiting", "stop", "held", "stopped", "-", "-"),
    ("waiting", "remove", "waiting", "remove", "-", "waiting for db (stopped)"),
    ("waiting", "deps", "spawning", "spawn", "-", "-"),
    ("waiting", "spawned", "waiting", "internal kill", "-", "waiting for db (stopped)"),
    ("waiting", "spawnfail", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "exited", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "empty", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "alive", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "timer", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "pass", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "fail", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "skipped", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "recheck", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "pidfile", "waiting", "internal", "-", "waiting for db (stopped)"),
    ("waiting", "ready", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "status", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "keepalive", "waiting", "", "-", "waiting for db (stopped)"),
    ("waiting", "trigger", "waiting", "", "-", "waiting for db (stopped)"),

    ("backoff", "start", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "restart", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "stop", "held", "stopped", "-", "-"),
    ("backoff", "remove", "backoff", "remove", "+90", "exited with code 1"),
    ("backoff", "deps", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "spawned", "backoff", "internal kill", "+90", "exited with code 1"),
    ("backoff", "spawnfail", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "exited", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "empty", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "alive", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "timer", "spawning", "spawn", "-", "exited with code 1"),
    ("backoff", "pass", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "fail", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "skipped", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "recheck", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "pidfile", "backoff", "internal", "+90", "exited with code 1"),
    ("backoff", "ready", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "status", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "keepalive", "backoff", "", "+90", "exited with code 1"),
    ("backoff", "trigger", "backoff", "", "+90", "exited with code 1"),

    ("busy", "start", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "restart", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "stop", "held", "stopped", "-", "-"),
    ("busy", "remove", "busy", "remove", "+90", "Text file busy"),
    ("busy", "deps", "busy", "", "+90", "Text file busy"),
    ("busy", "spawned", "busy", "internal kill", "+90", "Text file busy"),
    ("busy", "spawnfail", "busy", "internal", "+90", "Text file busy"),
    ("busy", "exited", "busy", "internal", "+90", "Text file busy"),
    ("busy", "empty", "busy", "internal", "+90", "Text file busy"),
    ("busy", "alive", "busy", "internal", "+90", "Text file busy"),
    ("busy", "timer", "spawning", "spawn", "-", "Text file busy"),
    ("busy", "pass", "busy", "", "+90", "Text file busy"),
    ("busy", "fail", "busy", "", "+90", "Text file busy"),
    ("busy", "skipped", "busy", "", "+90", "Text file busy"),
    ("busy", "recheck", "busy", "", "+90", "Text file busy"),
    ("busy", "pidfile", "busy", "internal", "+90", "Text file busy"),
    ("busy", "ready", "busy", "", "+90", "Text file busy"),
    ("busy", "status", "busy", "", "+90", "Text file busy"),
    ("busy", "keepalive", "busy", "", "+90", "Text file busy"),
    ("busy", "trigger", "busy", "", "+90", "Text file busy"),

    ("spawning", "start", "spawning", "refused: service is already running", "-", "-"),
    ("spawning", "restart", "spawning-stop+start", "", "-", "-"),
    ("spawning", "stop", "spawning-stop", "", "-", "-"),
    ("spawning", "remove", "spawning-stop+remove", "", "-", "-"),
    ("spawning", "deps", "spawning", "", "-", "-"),
    ("spawning", "spawned", "running", "started", "-", "-"),
    ("spawning", "spawnfail", "backoff", "failed restarting", "+100", "EMFILE"),
    ("spawning", "exited", "spawning", "internal", "-", "-"),
    ("spawning", "empty", "spawning", "internal", "-", "-"),
    ("spawning", "alive", "spawning", "internal", "-", "-"),
    ("spawning", "timer", "spawning", "", "-", "-"),
    ("spawning", "pass", "spawning", "", "-", "-"),
    ("spawning", "fail", "spawning", "", "-", "-"),
    ("spawning", "skipped", "spawning", "", "-", "-"),
    ("spawning", "recheck", "spawning", "", "-", "-"),
    ("spawning", "pidfile", "spawning", "internal", "-", "-"),
    ("spawning", "ready", "spawning", "", "-", "-"),
    ("spawning", "status", "spawning", "", "-", "-"),
    ("spawning", "keepalive", "spawning", "", "-", "-"),
    ("spawning", "trigger", "spawning", "", "-", "-"),

    ("starting", "start", "starting", "refused: service is already running", "+20", "-"),
    ("starting", "restart", "stopping+start", "stopping signal", "+5000", "-"),
    ("starting", "stop", "stopping", "stopping signal", "+5000", "-"),
    ("starting", "remove", "stopping+remove", "stopping signal", "+5000", "-"),
    ("starting", "deps", "starting", "", "+20", "-"),
    ("starting", "spawned", "starting", "internal kill", "+20", "-"),
    ("starting", "spawnfail", "starting", "internal", "+20", "-"),
    ("starting", "exited", "backoff", "exited kill reap restarting", "+100", "exited with code 1"),
    ("starting", "empty", "starting", "internal", "+20", "-"),
    ("starting", "alive", "starting", "internal", "+20", "-"),
    ("starting", "timer", "starting", "probe", "-", "-"),
    ("starting", "pass", "running", "ready", "+100", "-"),
    ("starting", "fail", "starting", "unhealthy", "+100", "health check failed (1 in a row): refused"),
    ("starting", "skipped", "starting", "", "+100", "-"),
    ("starting", "recheck", "starting", "", "+20", "-"),
    ("starting", "pidfile", "starting", "internal", "+20", "-"),
    ("starting", "ready", "starting", "", "+20", "-"),
    ("starting", "status", "starting", "", "+20", "-"),
    ("starting", "keepalive", "starting", "", "+20", "-"),
    ("starting", "trigger", "stopping+recover", "watchdog stopping signal", "+5000", "watchdog triggered by the service (WATCHDOG=trigger)"),

    ("running", "start", "running", "refused: service is already running", "-", "-"),
    ("running", "restart", "stopping+start", "stopping signal", "+5000", "-"),
    ("running", "stop", "stopping", "stopping signal", "+5000", "-"),
    ("running", "remove", "stopping+remove", "stopping signal", "+5000", "-"),
    ("running", "deps", "running", "", "-", "-"),
    ("running", "spawned", "running", "internal kill", "-", "-"),
    ("running", "spawnfail", "running", "internal", "-", "-"),
    ("running", "exited", "backoff", "exited kill reap restarting", "+100", "exited with code 1"),
    ("running", "empty", "running", "internal", "-", "-"),
    ("running", "alive", "running", "internal", "-", "-"),
    ("running", "timer", "running", "", "-", "-"),
    ("running", "pass", "running", "", "-", "-"),
    ("running", "fail", "running", "", "-", "-"),
    ("running", "skipped", "running", "", "-", "-"),
    ("running", "recheck", "running", "", "+30", "-"),
    ("running", "pidfile", "running", "internal", "-", "-"),
    ("running", "ready", "running", "", "-", "-"),
    ("running", "status", "running", "", "-", "-"),
    ("running", "keepalive", "running", "", "-", "-"),
    ("running", "trigger", "stopping+recover", "watchdog stopping signal", "+5000", "watchdog triggered by the service (WATCHDOG=trigger)"),

    ("launching", "start", "launching", "refused: service is already running", "+4990", "-"),
    ("launching", "restart", "stopping+start", "stopping signal", "+5000", "-"),
    ("launching", "stop", "stopping", "stopping signal", "+5000", "-"),
    ("launching", "remove", "stopping+remove", "stopping signal", "+5000", "-"),
    ("launching", "deps", "launching", "", "+4990", "-"),
    ("launching", "spawned", "launching", "internal kill", "+4990", "-"),
    ("launching", "spawnfail", "launching", "internal", "+4990", "-"),
    ("launching", "exited", "backoff", "exited kill reap restarting", "+100", "exited with code 1"),
    ("launching", "empty", "launching", "internal", "+4990", "-"),
    ("launching", "alive", "launching", "internal", "+4990", "-"),
    ("launching", "timer", "stopping+recover", "stopping signal", "+5000", "did not daemonize within 5000 ms (pid_file)"),
    ("launching", "pass", "launching", "", "+4990", "-"),
    ("launching", "fail", "launching", "", "+4990", "-"),
    ("launching", "skipped", "launching", "", "+4990", "-"),
    ("launching", "recheck", "launching", "", "+4990", "-"),
    ("launching", "pidfile", "launching", "internal", "+4990", "-"),
    ("launching", "ready", "launching", "ready", "+4990", "-"),
    ("launching", "status", "launching", "", "+4990", "-"),
    ("launching", "keepalive", "launching", "", "+4990", "-"),
    ("launching", "trigger", "stopping+recover", "watchdog stopping signal", "+5000", "watchdog triggered by the service (WATCHDOG=trigger)"),

    ("await-pid", "start", "await-pid", "refused: service is already running", "+4990", "-"),
    ("await-pid", "restart", "draining+start", "stopping signal", "+20", "-"),
    ("await-pid", "stop", "draining", "stopping signal", "+20", "-"),
    ("await-pid", "remove", "draining+remove", "stopping signal", "+20", "-"),
    ("await-pid", "deps", "await-pid", "", "+4990", "-"),
    ("await-pid", "spawned", "await-pid", "internal kill", "+4990", "-"),
    ("await-pid", "spawnfail", "await-pid", "internal", "+4990", "-"),
    ("await-pid", "exited", "await-pid", "internal", "+4990", "-"),
    ("await-pid", "empty", "await-pid", "internal", "+4990", "-"),
    ("await-pid", "alive", "await-pid", "internal", "+4990", "-"),
    ("await-pid", "timer", "backoff", "failed kill reap restarting", "+100", "the pid file /run/svc.pid names no live process of the service within 5000 ms"),
    ("await-pid", "pass", "await-pid", "", "+4990", "-"),
    ("await-pid", "fail", "await-pid", "", "+4990", "-"),
    ("await-pid", "skipped", "await-pid", "", "+4990", "-"),
    ("await-pid", "recheck", "await-pid", "", "+4990", "-"),
    ("await-pid", "pidfile", "running", "started reap", "-", "-"),
    ("await-pid", "ready", "await-pid", "", "+4990", "-"),
    ("await-pid", "status", "await-pid", "", "+4990", "-"),
    ("await-pid", "keepalive", "await-pid", "", "+4990", "-"),
    ("await-pid", "trigger", "await-pid", "", "+4990", "-"),

    ("stopping", "start", "stopping+start", "", "+4990", "-"),
    ("stopping", "restart", "stopping+start", "", "+4990", "-"),
    ("stopping", "stop", "stopping", "", "+4990", "-"),
    ("stopping", "remove", "stopping+remove", "", "+4990", "-"),
    ("stopping", "deps", "stopping", "", "+4990", "-"),
    ("stopping", "spawned", "stopping", "internal kill", "+4990", "-"),
    ("stopping", "spawnfail", "stopping", "internal", "+4990", "-"),
    ("stopping", "exited", "draining", "exited check", "+20", "-"),
    ("stopping", "empty", "stopping", "internal", "+4990", "-"),
    ("stopping", "alive", "stopping", "internal", "+4990", "-"),
    ("stopping", "timer", "killing", "killed kill", "-", "-"),
    ("stopping", "pass", "stopping", "", "+4990", "-"),
    ("stopping", "fail", "stopping", "", "+4990", "-"),
    ("stopping", "skipped", "stopping", "", "+4990", "-"),
    ("stopping", "recheck", "stopping", "", "+4990", "-"),
    ("stopping", "pidfile", "stopping", "internal", "+4990", "-"),
    ("stopping", "ready", "stopping", "", "+4990", "-"),
    ("stopping", "status", "stopping", "", "+4990", "-"),
    ("stopping", "keepalive", "stopping", "", "+4990", "-"),
    ("stopping", "trigger", "stopping", "", "+4990", "-"),

    ("draining", "start", "draining+start", "", "+10", "-"),
    ("draining", "restart", "draining+start", "", "+10", "-"),
    ("draining", "stop", "draining", "", "+10", "-"),
    ("draining", "remove", "draining+remove", "", "+10", "-"),
    ("draining", "deps", "draining", "", "+10", "-"),
    ("draining", "spawned", "draining", "internal kill", "+10", "-"),
    ("draining", "spawnfail", "draining", "internal", "+10", "-"),
    ("draining", "exited", "draining", "internal", "+10", "-"),
    ("draining", "empty", "held", "reap stopped", "-", "-"),
    ("draining", "alive", "draining", "", "+20", "-"),
    ("draining", "timer", "held", "killed kill reap stopped", "-", "-"),
    ("draining", "pass", "draining", "", "+10", "-"),
    ("draining", "fail", "draining", "", "+10", "-"),
    ("draining", "skipped", "draining", "", "+10", "-"),
    ("draining", "recheck", "draining", "", "+10", "-"),
    ("draining", "pidfile", "draining", "internal", "+10", "-"),
    ("draining", "ready", "draining", "", "+10", "-"),
    ("draining", "status", "draining", "", "+10", "-"),
    ("draining", "keepalive", "draining", "", "+10", "-"),
    ("draining", "trigger", "draining", "", "+10", "-"),
];

fn row(phase: &str, event: &str) -> (String, String, String, String) {
    let mut t = reach(phase);
    let out = match apply(&mut t, event) {
        Ok(a) => kinds(&a),
        Err(r) => format!("refused: {}", r.message()),
    };
    let err = t.svc.last_error().unwrap_or("-").to_string();
    (t.phase(), out, t.due(), err)
}

#[test]
fn every_phase_and_event_as_the_table_says() {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for phase in PHASES {
        for event in EVENTS {
            let got = row(phase, event);
            let line = format!(
                "    (\"{phase}\", \"{event}\", \"{}\", \"{}\", \"{}\", \"{}\"),",
                got.0, got.1, got.2, got.3
            );
            match TABLE.iter().find(|r| r.0 == phase && r.1 == event) {
                None => missing.push(line),
                Some(r) if (r.2, r.3, r.4, r.5) != (&*got.0, &*got.1, &*got.2, &*got.3) => {
                    wrong.push(line)
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "rows that differ:\n{}\nrows missing:\n{}",
        wrong.join("\n"),
        missing.join("\n")
    );
    assert_eq!(TABLE.len(), PHASES.len() * EVENTS.len(), "one row per pair");
}
