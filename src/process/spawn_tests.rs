//! Unit tests of the spawn path with real children: what a service is given, read back
//! from /proc. Only tests live here; each child is killed and reaped before its test
//! ends, pass or fail.

use crate::config::{Config, ServiceConfig, Settings};
use crate::process::spawn::{reap, spawn, Child};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Kills and reaps the child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.0.pid, libc::SIGKILL) };
        reap(self.0.pid);
    }
}

/// `sleep 1000` planned as service `svc` with `environment`, and spawned.
fn spawn_sleep(environment: &[(&str, &str)]) -> Reaped {
    let svc = ServiceConfig {
        binary_path: Some(PathBuf::from("/bin/sleep")),
        args: vec!["1000".into()],
        pass_service_args: Some(false),
        environment: environment
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let cfg = Config::of_file(
        None,
        Settings {
            services_dir: PathBuf::from("/nonexistent/orchestrator-spawn-tests"),
            ..Default::default()
        },
        BTreeMap::from([("svc".to_string(), svc)]),
    );
    let plan = crate::config::discovery::plan(&cfg).expect("a valid plan");
    Reaped(spawn(&plan.services["svc"], &[], &Default::default()).expect("spawn /bin/sleep"))
}

/// The child's environment once its new image has it: the vfork parent resumes when
/// exec has swapped the memory, a moment before the kernel records where the
/// environment lies, and /proc reads it as empty in between.
fn environ(pid: i32) -> BTreeMap<String, String> {
    let path = format!("/proc/{pid}/environ");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut raw = std::fs::read(&path).unwrap();
    while raw.is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(1));
        raw = std::fs::read(&path).unwrap();
    }
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// docs/lifecycle.md: exactly PATH, HOME, TEMP and TMP, then the service's own variables;
/// nothing else of the orchestrator's environment.
#[test]
fn the_environment_is_exactly_the_base_four_and_the_configured() {
    let child = spawn_sleep(&[("MINE", "1"), ("TMP", "/var/tmp/svc")]);
    let env = environ(child.0.pid);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["HOME", "MINE", "PATH", "TEMP", "TMP"], "{env:?}");
    assert_eq!(env["MINE"], "1");
    assert_eq!(env["TMP"], "/var/tmp/svc", "configured values override");
    assert_eq!(Some(&env["PATH"]), std::env::var("PATH").ok().as_ref());
    // Whatever else this process has (cargo gives a test CARGO_*, RUST_*...) stays here.
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !["PATH", "HOME", "TMPDIR", "TEMP", "TMP", "MINE"].contains(&k.as_str()))
        .collect();
    assert!(
        !ours.is_empty(),
        "this test needs a variable in its own environment to check for leaks"
    );
    for k in &ours {
        assert!(!env.contains_key(k), "{k} leaked into the service: {env:?}");
    }
}
