//! Unit tests of `discovery`.

use super::*;

fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
    let s = Settings::default();
    let c = ServiceConfig {
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    };
    build_spec(
        name,
        true,
        &c,
        &s,
        Path::new("/bin/true"),
        PathBuf::from("/bin/true"),
        None,
        None,
        &base_environment(),
    )
}

#[test]
fn finds_cycles_and_names_them() {
    let mut m = BTreeMap::new();
    for (n, d) in [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ] {
        m.insert(n.to_string(), spec(n, &d));
    }
    assert_eq!(find_cycle(&m).unwrap(), ["a", "b", "c", "a"]);
    m.insert("c".into(), spec("c", &["d"]));
    assert_eq!(find_cycle(&m), None);
    // A self-dependency and a cycle reached from another service.
    m.insert("e".into(), spec("e", &["f"]));
    m.insert("f".into(), spec("f", &["f"]));
    assert_eq!(find_cycle(&m).unwrap(), ["f", "f"]);
}

/// Regression: the search recursed once per link, so a file with a chain of 200,000
/// dependencies overflowed the main thread's stack and aborted `check` and `run`
/// (found beside the config fuzz target: a fuzzer's short inputs cannot be that deep).
#[test]
fn long_dependency_chain_does_not_overflow_the_stack() {
    const N: usize = 20_000;
    let mut m = BTreeMap::new();
    let proto = spec("x", &[]);
    for i in 0..N {
        let mut sp = proto.clone();
        sp.depends_on = vec![format!("s{}", i + 1)];
        m.insert(format!("s{i}"), sp);
    }
    m.insert(format!("s{N}"), proto.clone());
    // A small stack, as the daemon's own threads have, makes the old recursion fail
    // at once.
    let found = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let none = find_cycle(&m);
            let mut sp = proto;
            sp.depends_on = vec!["s0".into()];
            m.insert(format!("s{N}"), sp);
            (none, find_cycle(&m).map(|c| c.len()))
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(found, (None, Some(N + 2)));
}

#[test]
fn argv_and_environment() {
    let s = Settings::default();
    let mut c = ServiceConfig {
        args: vec!["-x".into()],
        memory_limit: 64,
        ..Default::default()
    };
    c.environment.insert("HOME".into(), "/srv".into());
    let sp = build_spec(
        "web",
        true,
        &c,
        &s,
        Path::new("/bin/true"),
        PathBuf::from("/bin/true"),
        None,
        None,
        &base_environment(),
    );
    assert_eq!(
        sp.process.argv,
        ["/bin/true", "--service", "web", "--log-level", "info", "-x"]
    );
    let keys: Vec<&str> = sp.process.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["GOMEMLIMIT", "HOME", "PATH", "TEMP", "TMP"]);
    assert!(sp.process.env.contains(&("HOME".into(), "/srv".into())));
    assert!(sp
        .process
        .env
        .contains(&("GOMEMLIMIT".into(), "64MiB".into())));
    c.pass_service_args = Some(false);
    let sp = build_spec(
        "web",
        true,
        &c,
        &s,
        Path::new("/bin/true"),
        PathBuf::from("/bin/true"),
        None,
        None,
        &base_environment(),
    );
    assert_eq!(sp.process.argv, ["/bin/true", "-x"]);
}

/// docs/lifecycle.md: a symlink decides what runs, but argv[0] stays the configured path,
/// for both a discovered binary and a `binary_path`.
#[test]
fn symlinked_binary_runs_its_target_with_the_configured_path_as_argv0() {
    let dir = std::env::temp_dir().join(format!("orch-argv0-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("services/applet")).unwrap();
    let link = dir.join("services/applet/applet");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let other = dir.join("other");
    std::os::unix::fs::symlink("/bin/true", &other).unwrap();
    let cfg = Config::of_file(
        None,
        Settings {
            services_dir: dir.join("services"),
            ..Default::default()
        },
        BTreeMap::from([(
            "byconfig".to_string(),
            ServiceConfig {
                binary_path: Some(other.clone()),
                pass_service_args: Some(false),
                ..Default::default()
            },
        )]),
    );
    let plan = plan(&cfg);
    std::fs::remove_dir_all(&dir).unwrap();
    let plan = plan.unwrap();
    let target = std::fs::canonicalize("/bin/true").unwrap();
    let applet = &plan.services["applet"];
    assert_eq!(applet.process.binary, target);
    assert_eq!(applet.process.argv[0], link.to_str().unwrap());
    let byconfig = &plan.services["byconfig"];
    assert_eq!(byconfig.process.binary, target);
    assert_eq!(byconfig.process.argv, [other.to_str().unwrap()]);
}

#[test]
fn restart_differs_only_on_process_fields() {
    let a = spec("a", &[]);
    let mut b = a.clone();
    b.max_restart_attempts = 99;
    b.policy = RestartPolicy::Never;
    assert!(!a.process_differs(&b));
    b.process.argv.push("x".into());
    assert!(a.process_differs(&b));
    // docs/lifecycle.md: ready and watchdog_ms change what the process is told
    // (NOTIFY_SOCKET, WATCHDOG_USEC), so they restart it.
    let mut c = a.clone();
    c.process.ready_notify = true;
    assert!(a.process_differs(&c));
    let mut d = a.clone();
    d.process.watchdog = Some(Duration::from_secs(1));
    assert!(a.process_differs(&d));
    let mut e = a.clone();
    e.process.hardening.private_tmp = true;
    assert!(
        a.process_differs(&e),
        "a hardening change restarts the service"
    );
}

#[test]
fn notify_and_watchdog_environment() {
    let c = ServiceConfig {
        ready: Some(crate::config::ReadyMode::Notify),
        watchdog_ms: Some(2500),
        environment: [("WATCHDOG_PID".to_string(), "7".to_string())].into(),
        ..Default::default()
    };
    let s = Settings {
        control_socket: Some(PathBuf::from("/run/o.sock")),
        ..Settings::default()
    };
    let sp = build_spec(
        "n",
        true,
        &c,
        &s,
        Path::new("/bin/true"),
        "/bin/true".into(),
        None,
        None,
        &[],
    );
    let get = |k: &str| {
        sp.process
            .env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("NOTIFY_SOCKET"), Some("/run/o.sock.notify"));
    assert_eq!(get("WATCHDOG_USEC"), Some("2500000"));
    assert_eq!(get("WATCHDOG_PID"), None, "the child writes its own");
    assert!(sp.process.ready_notify);
    assert_eq!(sp.process.watchdog, Some(Duration::from_millis(2500)));
}
