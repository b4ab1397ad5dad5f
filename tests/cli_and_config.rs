//! Bad input of every kind exits 2 with one line naming the problem and its place, and
//! starts nothing; `check` and `discover` show the plan.

use crate::util::*;
use serde_json::json;

fn run_expect(sb: &Sandbox, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(&sb.dir)
        .env_remove("ORCHESTRATOR_CONFIG")
        // No local syslog, whatever this machine has: `--daemon` then needs log_dir.
        .env("ORCHESTRATOR_DEV_LOG", "/nonexistent/log");
    run_with_timeout(cmd, DEADLINE)
}

#[test]
fn unknown_key_is_rejected_with_position_and_suggestion() {
    let sb = Sandbox::new();
    sb.service("a", "sleep 100");
    let cfg = sb.write_config("{\n  \"orchestrator\": {\n    \"max_restart_attemps\": 3\n  }\n}\n");
    let out = run_expect(&sb, &["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("orchestrator.json:3:"), "{line}");
    assert!(
        line.contains("did you mean `max_restart_attempts`"),
        "{line}"
    );
    assert!(!line.contains("panicked"));
    // Nothing was started.
    assert!(group_of_sandbox_processes(&sb).is_empty());
}

/// `check` names what each key expected and where a misplaced key belongs, with the
/// file, line and column.
#[test]
fn check_says_what_was_expected() {
    let sb = Sandbox::new();
    let cases = [
        (
            "{\n  \"services\": {\n    \"web\": {\"restart\": true}\n  }\n}\n",
            ":3:",
            "expected one of always, on-failure, never, got a boolean",
        ),
        (
            "{\n  \"orchestrator\": {\n    \"stop_timeout_ms\": \"1s\"\n  }\n}\n",
            ":3:",
            "expected a number of milliseconds, got the string \"1s\"",
        ),
        (
            "{\n  \"services_dir\": \"services\"\n}\n",
            ":2:",
            "unknown key `services_dir`: it belongs in the `orchestrator` section",
        ),
    ];
    for (text, place, msg) in cases {
        let cfg = sb.write_config(text);
        let out = run_expect(&sb, &["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(&format!("orchestrator.json{place}")),
            "{line}"
        );
        assert!(line.contains(msg), "{line}");
    }
}

/// A directory name in services_dir reaches `discover` and `check` escaped: it cannot
/// drive the terminal or forge a line of its own.
#[test]
fn directory_names_cannot_drive_the_terminal() {
    let sb = Sandbox::new();
    sb.service("ok", "exec sleep 100");
    let evil = "ev\u{1b}]0;pwned\u{7}il\rname\nFORGED";
    std::fs::create_dir_all(sb.path("services").join(evil)).unwrap();
    let cfg = sb.config(json!({"services_dir": "services"}), json!({}));
    for cmd in ["discover", "check"] {
        let out = run_expect(&sb, &[cmd, "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{cmd}: {}", out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains(['\u{1b}', '\r', '\u{7}']), "{cmd}: {all:?}");
        assert!(
            !all.lines().any(|l| l.starts_with("FORGED")),
            "{cmd}: a line of its own: {all}"
        );
        let warning = out
            .stderr
            .lines()
            .find(|l| l.contains("invalid service name"))
            .unwrap_or_else(|| panic!("{cmd}: no warning: {}", out.stderr));
        assert!(
            warning.contains("ev\\x1b]0;pwned\\x07il\\rname\\nFORGED"),
            "{warning}"
        );
    }
}

fn group_of_sandbox_processes(sb: &Sandbox) -> Vec<i64> {
    let needle = sb.dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|p| cmdline(*p).contains(&needle))
        .collect()
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let sb = Sandbox::new();
    sb.write_config("{\n  \"services\": {\n    \"a\": {,}\n  }\n}\n");
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("orchestrator.json:3:11:"),
        "{}",
        out.stderr
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let sb = Sandbox::new();
    sb.config(
        json!({"backoff_jitter": 3.0}),
        json!({
            "bad name": {},
            "a": {"depends_on": ["b"], "stop_signal": "SIGNOPE"},
            "b": {"depends_on": ["a"]},
        }),
    );
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("orchestrator.backoff_jitter"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("services.bad name: invalid service name"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("services.a.stop_signal: unknown signal `SIGNOPE`"),
        "{}",
        out.stderr
    );
    // The cycle is reported once the rest is valid.
    sb.config(
        json!({}),
        json!({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}),
    );
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("dependency cycle: a -> b -> a"),
        "{}",
        out.stderr
    );
    sb.config(json!({}), json!({"a": {"depends_on": ["ghost"]}}));
    let out = run_expect(&sb, &["run", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("services.a.depends_on: unknown service `ghost`"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    for args in [
        vec!["frobnicate"],
        vec!["start"],
        vec!["run", "--bogus"],
        vec!["status", "--dry-run"],
        vec![],
    ] {
        let out = run_expect(&sb, &args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run_expect(&sb, &["--version"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("orchestrator "));
    let out = run_expect(&sb, &["--help"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("usage: orchestrator"));
}

#[test]
fn missing_explicit_config_and_bad_flags_exit_2() {
    let sb = Sandbox::new();
    let out = run_expect(&sb, &["run", "--config", "nope.json"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("nope.json: config file not found"),
        "{}",
        out.stderr
    );
    sb.config(json!({}), json!({}));
    let out = run_expect(
        &sb,
        &[
            "run",
            "--config",
            "orchestrator.json",
            "--log-level",
            "loud",
        ],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--log-level: unknown log level `loud`"),
        "{}",
        out.stderr
    );
    let out = run_expect(&sb, &["run", "--config", "orchestrator.json", "--daemon"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--daemon needs orchestrator.log_dir"),
        "{}",
        out.stderr
    );
}

#[test]
fn config_found_through_environment_and_current_directory() {
    let sb = Sandbox::new();
    sb.service("envsvc", "sleep 100");
    sb.config(json!({"services_dir": "services"}), json!({}));
    // ./orchestrator.json in the current directory.
    let out = run_expect(&sb, &["discover"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("envsvc"), "{}", out.stdout);
    // $ORCHESTRATOR_CONFIG from elsewhere; relative paths are relative to the file.
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("discover")
        .current_dir("/")
        .env("ORCHESTRATOR_CONFIG", sb.path("orchestrator.json"));
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out
        .stdout
        .contains(&format!("{}", sb.path("services/envsvc/envsvc").display())));
    // The environment overrides the file, the flag overrides the environment.
    std::fs::create_dir_all(sb.path("other/x")).unwrap();
    sb.script(&sb.path("other/x/x"), "sleep 1");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["discover", "--config", "orchestrator.json"])
        .current_dir(&sb.dir)
        .env("ORCHESTRATOR_SERVICES_DIR", sb.path("other"));
    let out = run_with_timeout(cmd, DEADLINE);
    assert!(
        out.stdout.contains("x\t") && !out.stdout.contains("envsvc"),
        "{}",
        out.stdout
    );
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "discover",
        "--config",
        "orchestrator.json",
        "--services-dir",
        "services",
    ])
    .current_dir(&sb.dir)
    .env("ORCHESTRATOR_SERVICES_DIR", sb.path("other"));
    let out = run_with_timeout(cmd, DEADLINE);
    assert!(
        out.stdout.contains("envsvc") && !out.stdout.contains("x\t"),
        "{}",
        out.stdout
    );
}

#[test]
fn discover_warns_about_non_executable_and_skips_bad_names() {
    let sb = Sandbox::new();
    sb.service("good", "sleep 1");
    let bad = sb.service("noexec", "sleep 1");
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(sb.path("services/.hidden")).unwrap();
    std::fs::create_dir_all(sb.path("services/empty")).unwrap();
    sb.config(json!({"services_dir": "services"}), json!({}));
    let out = run_expect(&sb, &["discover", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("good\t"));
    assert!(!out.stdout.contains("noexec"));
    assert!(
        out.stderr
            .contains("services/noexec/noexec is not executable"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(".hidden: invalid service name"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("empty"),
        "a directory without a binary is only a debug line"
    );
}

#[test]
fn check_leaves_cgroupfs_untouched() {
    // `check` reports how limits would be enforced; it must not create the daemon's
    // cgroups (on a v2 hierarchy, setting up controllers makes a directory).
    let sb = Sandbox::new();
    sb.service("web", "sleep 1");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {"memory_limit": 64, "limits": {"pids_max": 10}}}),
    );
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dirs = find_cgroup_dirs(&cgroup_id(&sb.socket()));
    assert!(dirs.is_empty(), "check created {dirs:?}");
}

#[test]
fn check_prints_the_plan() {
    let sb = Sandbox::new();
    sb.service("web", "sleep 1");
    sb.config(
        json!({"services_dir": "services"}),
        json!({
            "web": {"args": ["--port", "8080"], "environment": {"MODE": "prod"}, "memory_limit": 64,
                    "limits": {"nofile": 256, "pids_max": 10}},
            "ghost": {},
            "off": {"enabled": false, "binary_path": "/bin/true", "pass_service_args": false},
        }),
    );
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    // Valid, but the plan says `ghost` will fail: exit 1, naming it.
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("will fail: ghost"), "{}", out.stderr);
    let s = &out.stdout;
    assert!(s.contains("web: will start"), "{s}");
    assert!(
        s.contains("--service web --log-level info --port 8080"),
        "{s}"
    );
    assert!(
        s.contains("environment: GOMEMLIMIT HOME MODE PATH TEMP TMP"),
        "{s}"
    );
    assert!(s.contains("nofile = 256: enforced with setrlimit"), "{s}");
    // Enforced through a cgroup where one is writable (as root), else said not to be.
    assert!(
        s.contains("pids_max = 10: cgroup v") || s.contains("pids_max = 10: not enforced"),
        "{s}"
    );
    assert!(
        s.contains("ghost: will fail: service binary not found"),
        "{s}"
    );
    assert!(s.contains("off: disabled"), "{s}");
    assert!(!out.stderr.contains("pass_service_args"), "{}", out.stderr);
}

#[test]
fn check_exits_0_when_every_service_will_start() {
    let sb = Sandbox::new();
    sb.service("web", "sleep 1");
    sb.config(json!({"services_dir": "services"}), json!({"web": {}}));
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A binary that is there but not executable is a failure too.
    let bin = sb.path("services/web/web");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("web: will fail: service binary is not executable"),
        "{}",
        out.stdout
    );
}

#[test]
fn check_warns_when_a_third_party_binary_gets_service_args() {
    let sb = Sandbox::new();
    sb.config(
        json!({}),
        json!({
            "web": {"binary_path": "/bin/true", "args": ["-m", "http.server"], "pass_service_args": true},
            "plain": {"binary_path": "/bin/true"},
        }),
    );
    let out = run_expect(&sb, &["check", "--config", "orchestrator.json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The default for a binary_path passes nothing: no warning.
    assert!(!out.stderr.contains("plain:"), "{}", out.stderr);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("warning: web:"))
        .unwrap_or_else(|| panic!("no warning: {}", out.stderr));
    assert!(
        warning.contains("--service web --log-level info"),
        "{warning}"
    );
    assert!(
        warning
            .contains("third-party programs usually reject them: set pass_service_args to false"),
        "{warning}"
    );
}
