//! Behaviours of the machine that take a few steps to show.

use super::harness::{check, kinds, spec, T};
use super::*;

#[test]
fn a_binary_that_cannot_run_fails_a_configured_service_at_once() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.binary_problem = Some(BinaryProblem::Missing);
    s.autostart = false;
    let svc = Service::new(s.clone(), 0);
    assert_eq!(svc.state(), State::Failed, "configured: failed");
    assert_eq!(
        svc.last_error(),
        Some("service binary not found: /bin/true")
    );
    s.configured = false;
    assert_eq!(
        Service::new(s, 0).state(),
        State::Stopped,
        "neither: stopped"
    );
}

#[test]
fn crashes_back_off_doubling_then_give_up_after_exactly_max() {
    let mut t = T::new(RestartPolicy::Always, 2);
    t.on(Event::Start).unwrap();
    let mut delays = Vec::new();
    for _ in 0..3 {
        t.spawned();
        let a = t.exit(Exit::Code(1));
        if t.svc.state() == State::Restarting {
            delays.push(t.due());
            t.fire();
        } else {
            assert_eq!(kinds(&a), "exited kill reap failed");
        }
    }
    assert_eq!(delays, ["+100", "+200"]);
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.svc.restarts(), 2);
    assert_eq!(t.svc.history().len(), 3);
    t.on(Event::Start).unwrap();
    assert_eq!(t.svc.attempts(), 0, "start resets the counter");
}

#[test]
fn zero_max_retries_forever_at_the_capped_delay() {
    let mut t = T::new(RestartPolicy::Always, 0);
    t.on(Event::Start).unwrap();
    for _ in 0..40 {
        t.spawned();
        t.exit(Exit::Code(1));
        assert_eq!(t.svc.state(), State::Restarting);
        let due = t.due();
        t.fire();
        if t.svc.restarts() > 10 {
            assert_eq!(due, "+1000");
        }
    }
}

#[test]
fn a_long_run_resets_the_counter() {
    let mut t = T::new(RestartPolicy::Always, 10);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    t.ms += 60_000;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.attempts(), 1, "reset before counting this restart");
    assert_eq!(t.due(), "+100");
}

#[test]
fn policies_decide_what_an_exit_leads_to() {
    for (policy, exit, state) in [
        (RestartPolicy::Never, Exit::Code(0), State::Stopped),
        (RestartPolicy::Never, Exit::Code(3), State::Failed),
        (RestartPolicy::OnFailure, Exit::Code(0), State::Stopped),
        (RestartPolicy::OnFailure, Exit::Code(3), State::Restarting),
        (RestartPolicy::OnFailure, Exit::Signal(9), State::Restarting),
        // A daemon that was not our child: its parent judges it, not the policy.
        (RestartPolicy::OnFailure, Exit::Unknown, State::Stopped),
        (RestartPolicy::Never, Exit::Unknown, State::Stopped),
        (RestartPolicy::Always, Exit::Code(0), State::Restarting),
        (RestartPolicy::Always, Exit::Unknown, State::Restarting),
    ] {
        let mut t = T::new(policy, 5);
        t.on(Event::Start).unwrap();
        t.spawned();
        t.exit(exit);
        assert_eq!(t.svc.state(), state, "{policy:?} {exit:?}");
        assert_eq!(t.svc.pid(), None);
    }
}

#[test]
fn nothing_restarts_or_starts_during_shutdown() {
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.shutting_down = true;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.on(Event::Start), Ok(vec![]));
    assert_eq!(t.svc.state(), State::Stopped);
}

#[test]
fn an_operator_stop_stays_a_stop_whatever_a_reload_or_a_check_asks() {
    for origin in [Origin::Reload, Origin::Liveness] {
        let mut t = T::new(RestartPolicy::Always, 5);
        t.on(Event::Start).unwrap();
        t.spawned();
        t.op_stop().unwrap();
        let restart = Event::Stop {
            then: AfterStop::Start,
            origin,
        };
        assert_eq!(t.on(restart), Ok(vec![]));
        t.exit(Exit::Signal(libc::SIGTERM));
        assert_eq!(kinds(&t.ev(Event::GroupEmpty)), "reap stopped");
        assert_eq!(t.phase(), "held", "{origin:?}");
    }
    // The operator's own restart, and removal, do override it.
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.op_stop().unwrap();
    t.on(Event::Restart).unwrap();
    assert_eq!(t.phase(), "stopping+start");
    let remove = Event::Stop {
        then: AfterStop::Remove,
        origin: Origin::Reload,
    };
    t.on(remove).unwrap();
    t.on(Event::Restart).unwrap();
    assert_eq!(t.phase(), "stopping+remove", "removal wins");
}

#[test]
fn a_stop_past_its_timeout_is_killed_and_ends_stopped() {
    let mut t = T::new(RestartPolicy::Always, 5);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.op_stop().unwrap();
    assert_eq!(
        t.svc.state(),
        State::Running,
        "the state stays until the group is empty"
    );
    assert_eq!(kinds(&t.fire()), "killed kill");
    assert_eq!(t.svc.deadline(), None);
    let a = t.exit(Exit::Signal(9));
    assert_eq!(kinds(&a), "exited reap stopped");
    let last = t.svc.last_exit().unwrap();
    assert!(last.by_operator, "an operator's stop caused this exit");
}

#[test]
fn retry_failed_tries_again_and_keeps_failing_fast() {
    let mut s = spec(RestartPolicy::Always, 1);
    s.retry_failed = Some(Duration::from_secs(30));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.due(), "+30000", "next_restart shown while failed");
    assert_eq!(kinds(&t.fire()), "retrying spawn");
    t.spawned();
    t.exit(Exit::Code(1));
    assert_eq!(
        t.phase(),
        "failed-retry",
        "straight back: the attempts stay used up"
    );
    // A retry that runs long enough recovers the normal backoff.
    t.fire();
    t.spawned();
    t.ms += 60_000;
    t.exit(Exit::Code(1));
    assert_eq!(t.svc.state(), State::Restarting);
}

#[test]
fn a_reload_reschedules_or_cancels_a_pending_retry() {
    let mut s = spec(RestartPolicy::Always, 1);
    s.retry_failed = Some(Duration::from_secs(600));
    let mut t = T::with(s.clone());
    t.on(Event::Start).unwrap();
    t.spawned();
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    t.exit(Exit::Code(1));
    assert_eq!(t.due(), "+600000");
    t.ms += 1000;
    // Unchanged: the retry keeps its time.
    t.ev(Event::Reconfigured(Box::new(s.clone())));
    assert_eq!(t.due(), "+599000");
    // Lowered: counted from the reload.
    s.retry_failed = Some(Duration::from_secs(1));
    t.ev(Event::Reconfigured(Box::new(s.clone())));
    assert_eq!(t.due(), "+1000");
    // Null: cancelled; still failed, nothing pending.
    s.retry_failed = None;
    t.ev(Event::Reconfigured(Box::new(s)));
    assert_eq!((t.svc.state(), t.due().as_str()), (State::Failed, "-"));
}

#[test]
fn a_wall_clock_jump_changes_no_decision() {
    // The same runs, with the wall clock steady or jumping: backoff, attempts and
    // reset-after follow the monotonic clock; the wall clock only stamps the history.
    let run = |jump: bool| {
        let mut t = T::new(RestartPolicy::Always, 10);
        t.on(Event::Start).unwrap();
        let mut seen = Vec::new();
        for (start, end) in [(0, 10), (200, 210), (600, 70_600), (70_800, 70_810)] {
            t.on_at(start, Event::Timer).unwrap();
            t.spawned();
            t.ms = end;
            let gen = t.gen;
            let mut ctx = Ctx {
                now: Now {
                    mono: t.at(end),
                    wall_ms: if jump { 5 } else { 1_000_000 + end },
                },
                rng: &mut t.rng,
                unmet: Vec::new(),
                shutting_down: false,
            };
            let exit = Event::Exited {
                gen,
                exit: Exit::Code(1),
            };
            t.svc.on(exit, &mut ctx).unwrap();
            seen.push((t.svc.attempts(), t.due(), t.svc.state()));
        }
        seen
    };
    let steady = run(false);
    assert_eq!(run(true), steady);
    let attempts: Vec<u32> = steady.iter().map(|s| s.0).collect();
    assert_eq!(attempts, [1, 2, 1, 2], "the 70 s run reset the counter");
}

#[test]
fn health_checks_gate_readiness_then_restart_a_dead_service() {
    let mut s = spec(RestartPolicy::Always, 5);
    s.health_check = Some(check(2));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert_eq!(t.svc.state(), State::Starting);
    let gen = t.gen;
    let fail = |t: &mut T| {
        t.fire();
        t.ev(Event::Probe {
            gen,
            result: Err("503".into()),
        })
    };
    for _ in 0..5 {
        assert_eq!(kinds(&fail(&mut t)), "unhealthy", "no restart before ready");
    }
    t.fire();
    t.ev(Event::Probe {
        gen,
        result: Ok(()),
    });
    assert_eq!(t.svc.state(), State::Running);
    assert_eq!(kinds(&fail(&mut t)), "unhealthy");
    assert_eq!(kinds(&fail(&mut t)), "unhealthy stopping signal");
    t.exit(Exit::Signal(libc::SIGTERM));
    assert_eq!(kinds(&t.ev(Event::GroupEmpty)), "reap stopped restarting");
    assert!(t.svc.last_error().unwrap().contains("(2 in a row): 503"));
    assert_eq!(t.phase(), "backoff", "a liveness restart is not held");
}

#[test]
fn a_late_probe_result_touches_nothing() {
    let mut s = spec(RestartPolicy::Always, 5);
    s.health_check = Some(check(1));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    let old = t.gen;
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    let a = t.ev(Event::Probe {
        gen: old,
        result: Err("x".into()),
    });
    assert!(a.is_empty());
    assert_eq!(t.svc.last_error(), Some("exited with code 1"));
}

#[test]
fn a_busy_binary_is_retried_without_counting_a_restart() {
    let mut t = T::new(RestartPolicy::Never, 5);
    t.on(Event::Start).unwrap();
    let busy = || Event::SpawnFailed {
        error: "Text file busy".into(),
        busy: true,
    };
    for _ in 0..BUSY_RETRIES {
        assert_eq!(kinds(&t.ev(busy())), "retrying");
        assert_eq!(t.svc.state(), State::Starting);
        assert_eq!(kinds(&t.fire()), "spawn");
    }
    assert_eq!(t.svc.restarts(), 0);
    assert!(t.svc.history().is_empty(), "a retry is not a run");
    assert_eq!(kinds(&t.ev(busy())), "failed");
    assert_eq!(t.svc.state(), State::Failed);
}

#[test]
fn history_keeps_the_last_ten_runs() {
    let mut t = T::new(RestartPolicy::Always, 0);
    t.on(Event::Start).unwrap();
    for _ in 0..15 {
        t.spawned();
        t.exit(Exit::Code(1));
        t.fire();
    }
    assert_eq!(t.svc.history().len(), HISTORY_LEN);
}

#[test]
fn ready_notify_holds_starting_until_ready_1_and_shows_status() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.ready_notify = true;
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert_eq!(t.phase(), "starting");
    t.ev(Event::Notify(Notice::Status("loading 3/10".into())));
    assert_eq!(t.svc.notify_status(), Some("loading 3/10"));
    assert_eq!(t.phase(), "starting", "STATUS is not READY");
    let a = t.ev(Event::Notify(Notice::Ready));
    assert_eq!(kinds(&a), "ready");
    assert_eq!(t.phase(), "running");
    assert_eq!(kinds(&t.ev(Event::Notify(Notice::Ready))), "", "once");
    // A new run starts without the old run's status or readiness.
    t.exit(Exit::Code(1));
    t.fire();
    t.spawned();
    assert_eq!(
        (t.phase().as_str(), t.svc.notify_status()),
        ("starting", None)
    );
}

#[test]
fn ready_notify_with_a_health_check_needs_both_in_either_order() {
    for ready_first in [true, false] {
        let mut s = spec(RestartPolicy::Always, 3);
        s.process.ready_notify = true;
        s.health_check = Some(check(2));
        let mut t = T::with(s);
        t.on(Event::Start).unwrap();
        t.spawned();
        let gen = t.gen;
        let pass = Event::Probe {
            gen,
            result: Ok(()),
        };
        let (first, second) = if ready_first {
            (Event::Notify(Notice::Ready), pass)
        } else {
            (pass, Event::Notify(Notice::Ready))
        };
        t.ev(first);
        assert_eq!(t.phase(), "starting", "ready_first={ready_first}");
        assert_eq!(kinds(&t.ev(second)), "ready");
        assert_eq!(t.phase(), "running");
    }
}

#[test]
fn a_missed_keep_alive_restarts_through_backoff() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.watchdog = Some(Duration::from_millis(1000));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert_eq!((t.phase().as_str(), t.due()), ("running", "+1000".into()));
    // A keep-alive at 600 ms moves the deadline; the loop reads it when the old one
    // comes, and the timer then finds nothing due.
    let at = t.at(600);
    t.ms = 1000;
    t.ev(Event::Notify(Notice::KeepAlive(at)));
    assert_eq!(t.due(), "+600");
    // An older keep-alive never moves it back.
    let early = t.at(100);
    t.ev(Event::Notify(Notice::KeepAlive(early)));
    assert_eq!(t.due(), "+600");
    let a = t.fire();
    assert_eq!(kinds(&a), "watchdog stopping signal");
    assert_eq!(
        t.svc.last_error(),
        Some("watchdog timeout (no keep-alive in 1000 ms)")
    );
    t.exit(Exit::Signal(libc::SIGTERM));
    t.ev(Event::GroupEmpty);
    assert_eq!(t.phase(), "backoff");
    assert_eq!(
        t.svc.last_error(),
        Some("watchdog timeout (no keep-alive in 1000 ms)")
    );
}

#[test]
fn the_watchdog_is_armed_only_once_running() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.watchdog = Some(Duration::from_millis(1000));
    s.process.ready_notify = true;
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert_eq!(t.due(), "-", "starting: no watchdog yet");
    t.ms = 5000;
    t.ev(Event::Notify(Notice::Ready));
    assert_eq!(t.due(), "+1000");
}

#[test]
fn watchdog_trigger_restarts_at_once() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.watchdog = Some(Duration::from_millis(1000));
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    let a = t.ev(Event::Notify(Notice::Trigger));
    assert_eq!(kinds(&a), "watchdog stopping signal");
    assert_eq!(t.phase(), "stopping+recover");
}

#[test]
fn a_hang_after_reset_after_gets_a_fresh_backoff() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.watchdog = Some(Duration::from_millis(1000));
    s.reset_after = Duration::from_secs(10);
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    // Two quick crashes: the next delay would be the third (400 ms).
    for _ in 0..2 {
        t.spawned();
        t.exit(Exit::Code(1));
        t.fire();
    }
    t.spawned();
    // Alive and well for a minute, then silent.
    let mut ms = t.ms;
    for _ in 0..60 {
        ms += 1000;
        let at = t.at(ms);
        t.on_at(ms, Event::Notify(Notice::KeepAlive(at))).unwrap();
    }
    t.fire();
    t.exit(Exit::Signal(libc::SIGTERM));
    t.ev(Event::GroupEmpty);
    assert_eq!((t.phase().as_str(), t.due()), ("backoff", "+100".into()));
}

#[test]
fn a_launchers_exit_0_is_no_runs_end_the_daemons_exit_is() {
    let mut s = spec(RestartPolicy::Always, 3);
    s.process.pid_file = Some("/run/svc.pid".into());
    let mut t = T::with(s);
    t.on(Event::Start).unwrap();
    t.spawned();
    let gen = t.gen;
    t.exit(Exit::Code(0));
    assert_eq!(t.svc.last_exit_code(), None, "no run has ended");
    assert_eq!(t.svc.history().back().map(|h| h.exit_code), Some(None));
    let missing = Err("pid file /run/svc.pid: No such file or directory".into());
    t.ev(Event::PidFile {
        gen,
        result: missing,
    });
    assert_eq!(t.svc.last_error(), None, "a read too early is no error");
    t.ev(Event::PidFile {
        gen,
        result: Ok(4242),
    });
    assert_eq!(t.svc.state(), State::Running);
    assert_eq!(t.svc.last_error(), None);
    assert_eq!(t.svc.history().back().map(|h| h.exited_ms), Some(None));
    t.exit(Exit::Signal(libc::SIGKILL));
    assert_eq!(t.svc.last_exit_code(), Some(137));
    t.fire();
    t.spawned();
    t.exit(Exit::Code(0));
    assert_eq!(t.svc.last_exit_code(), Some(137), "the crash stays shown");
    let codes: Vec<_> = t.svc.history().iter().map(|h| h.exit_code).collect();
    assert_eq!(codes, [Some(137), None]);
}

#[test]
fn an_upgrade_with_no_previous_binary_fails_the_service_only_at_rest() {
    let mut t = T::new(RestartPolicy::Always, 3);
    t.on(Event::Start).unwrap();
    t.spawned();
    assert!(!t.svc.fail_at_rest("no previous binary".into()), "running");
    assert_eq!(t.svc.state(), State::Running);
    t.on(Event::Stop {
        then: AfterStop::Stay,
        origin: Origin::Reload,
    })
    .unwrap();
    t.exit(Exit::Signal(libc::SIGTERM));
    assert!(!t.svc.fail_at_rest("no previous binary".into()), "draining");
    t.ev(Event::GroupEmpty);
    assert_eq!(t.svc.state(), State::Stopped);
    assert!(t.svc.fail_at_rest("no previous binary".into()));
    assert_eq!(t.svc.state(), State::Failed);
    assert_eq!(t.svc.last_error(), Some("no previous binary"));
    t.on(Event::Start).unwrap();
    assert_eq!(t.svc.state(), State::Starting, "a start goes on from there");
}
