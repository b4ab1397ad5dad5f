//! Unit tests of `config`.

use super::json::levenshtein;
use super::*;

fn parse_err(text: &str) -> String {
    parse(text).unwrap_err()
}

#[test]
fn empty_object_gives_defaults() {
    let f = parse("{}").unwrap();
    assert_eq!(f.orchestrator, Settings::default());
    assert!(f.services.is_empty());
}

#[test]
fn unknown_key_suggests_nearest() {
    let e = parse_err("{\"orchestrator\": {\"max_restart_attemps\": 3}}");
    assert!(
        e.contains("unknown key `max_restart_attemps` (did you mean `max_restart_attempts`?)"),
        "{e}"
    );
    assert!(e.starts_with("1:"), "{e}");
    assert!(e.contains("in orchestrator"), "{e}");
}

#[test]
fn unknown_service_key_names_the_service_and_position() {
    let e = parse_err("{\n \"services\": {\n  \"web\": {\n   \"enabeld\": false}}}");
    assert!(e.starts_with("4:"), "{e}");
    assert!(e.contains("did you mean `enabled`"), "{e}");
    assert!(e.contains("in services.web"), "{e}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = parse_err("{\n  \"orchestrator\": {,}\n}");
    assert!(e.starts_with("2:"), "{e}");
}

#[test]
fn bad_enum_value_suggests() {
    let e = parse_err("{\"services\": {\"a\": {\"restart\": \"on-falure\"}}}");
    assert!(e.contains("did you mean `on-failure`"), "{e}");
}

#[test]
fn wrong_type_is_reported() {
    let e = parse_err("{\"orchestrator\": {\"log_dir\": 5}}");
    assert!(e.contains("got the number 5"), "{e}");
}

#[test]
fn pid_file_is_relative_to_the_config_dir() {
    let f = parse(r#"{"services": {"a": {"pid_file": "run/a.pid"}, "b": {}}}"#).unwrap();
    let (_, services) = settle(
        f,
        &Overrides::default(),
        "t",
        Path::new("/etc/orchestrator"),
    )
    .unwrap();
    assert_eq!(
        services["a"].pid_file.as_deref(),
        Some(Path::new("/etc/orchestrator/run/a.pid"))
    );
    assert_eq!(services["b"].pid_file, None);
}

#[test]
fn names() {
    assert!(valid_service_name("web-1.api_x"));
    assert!(!valid_service_name(".hidden"));
    assert!(!valid_service_name("a/b"));
    assert!(!valid_service_name(""));
    assert!(!valid_service_name(&"x".repeat(65)));
    assert!(valid_service_name(&"x".repeat(64)));
}

#[test]
fn signals() {
    assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
    assert_eq!(parse_signal("int"), Some(libc::SIGINT));
    assert_eq!(parse_signal("9"), Some(9));
    assert_eq!(parse_signal("SIGFOO"), None);
}

/// Every check of `load`, the file's services charged to the file.
fn validate(
    s: &Settings,
    services: &BTreeMap<String, ServiceConfig>,
    label: &str,
    errors: &mut Vec<String>,
) {
    validate_settings(s, services, label, errors);
    for (name, svc) in services {
        if !valid_service_name(name) {
            errors.push(format!("{label}: services.{name}: {INVALID_NAME}"));
        }
        validate_service(s, name, svc, &mut |key, msg| {
            errors.push(format!("{label}: services.{name}.{key}: {msg}"))
        });
    }
}

#[test]
fn validation_reports_every_error() {
    let f = parse(
        "{\"orchestrator\": {\"backoff_jitter\": 2}, \"services\": {\"bad/name\": {\"stop_signal\": \"NOPE\"}}}",
    )
    .unwrap();
    let mut errors = Vec::new();
    validate(&f.orchestrator, &f.services, "x.json", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("x.json: orchestrator.backoff_jitter:"));
}

#[test]
fn sockets_are_checked() {
    let f = parse(
        r#"{"services": {"a": {"sockets": [{"listen": "127.0.0.1:8080"}, {"listen": "unix:/run/a.sock"},
                                           {"listen": "localhost"}, {"listen": "unix:rel"},
                                           {"listen": "udp:127.0.0.1:53", "name": "dns"}]}}}"#,
    )
    .unwrap();
    let mut errors = Vec::new();
    validate(&f.orchestrator, &f.services, "x.json", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("`localhost` is neither"));
}

/// Regression (fuzz target `config`): a key or value holding a newline, quoted in
/// the message, split one problem over several lines.
#[test]
fn every_problem_is_on_one_line() {
    let found_by_fuzzing = "{\"nix:/\\\"0\u{fffd}ix:/#\\n{ \"01\\\"\"ujix:/n ";
    let e = parse_and_validate(found_by_fuzzing).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(
        e.0[0].contains("unknown key `nix:/\"0\u{fffd}ix:/#\\n{ `"),
        "{e}"
    );
    let e = parse_and_validate(
        r#"{"services": {"a\nb": {"stop_signal": "TERM\r", "environment": {"X\n=": ""}}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    assert_eq!(e.to_string().lines().count(), 3, "{e}");
    assert!(e.0[0].contains("services.a\\nb"), "{e}");
    assert!(e.0[1].contains("`TERM\\r`"), "{e}");
}

/// Regression: a backtick in an unknown key or value cut the name short and turned
/// the list of valid names into debris.
#[test]
fn backticks_in_unknown_names_are_kept_whole() {
    let e = parse_err(r#"{"orchestrator": {"max`restart_attempts": 3}}"#);
    assert!(
        e.contains("unknown key `max`restart_attempts` (did you mean `max_restart_attempts`?)"),
        "{e}"
    );
    let e = parse_err(r#"{"services": {"a": {"restart": "on`failure"}}}"#);
    assert!(
        e.contains("unknown value `on`failure` (did you mean `on-failure`?)"),
        "{e}"
    );
    let e = parse_err(r#"{"services": {"a": {"limits": {"`": 1}}}}"#);
    assert!(
        e.contains("unknown key ``` (expected one of `nofile`, "),
        "{e}"
    );
}

#[test]
fn levenshtein_distances() {
    assert_eq!(levenshtein("kitten", "sitting"), 3);
    assert_eq!(levenshtein("", "abc"), 3);
    assert_eq!(
        nearest("servces", ["services", "orchestrator"].into_iter()),
        Some("services")
    );
    assert_eq!(nearest("zzzzzz", ["services"].into_iter()), None);
    assert_eq!(levenshtein("stauts", "status"), 1);
    assert_eq!(
        nearest("stauts", ["start", "status"].into_iter()),
        Some("status")
    );
}

#[test]
fn log_max_files_is_bounded() {
    let text = r#"{"orchestrator": {"log_max_files": 4294967295}}"#;
    let e = parse_and_validate(text).unwrap_err().to_string();
    assert!(
        e.contains("log_max_files") && e.contains("at most 1000"),
        "{e}"
    );
    assert!(parse_and_validate(r#"{"orchestrator": {"log_max_files": 1000}}"#).is_ok());
}

#[test]
fn pass_service_args_defaults_by_where_the_binary_comes_from() {
    let f = parse(
        r#"{"services": {"found": {}, "third": {"binary_path": "/bin/sleep"},
            "forced": {"binary_path": "/bin/sleep", "pass_service_args": true},
            "bare": {"pass_service_args": false}}}"#,
    )
    .unwrap();
    let passes = |n: &str| f.services[n].passes_service_args();
    assert!(passes("found"));
    assert!(!passes("third"));
    assert!(passes("forced"));
    assert!(!passes("bare"));
}

#[test]
fn a_wrong_type_says_what_was_expected() {
    let e = parse_err("{\"services\": {\"a\": {\"restart\": true}}}");
    assert!(
        e.contains("expected one of always, on-failure, never, got a boolean"),
        "{e}"
    );
    assert!(e.starts_with("1:") && e.contains("in services.a"), "{e}");
    let e = parse_err("{\"orchestrator\": {\n \"stop_timeout_ms\": \"1s\"}}");
    assert!(
        e.contains("expected a number of milliseconds, got the string \"1s\""),
        "{e}"
    );
    assert!(e.starts_with("2:"), "{e}");
    let e = parse_err("{\"services\": {\"a\": {\"stop_timeout_ms\": -5}}}");
    assert!(e.contains("expected a number of milliseconds"), "{e}");
    let e = parse_err("{\"orchestrator\": {\"max_restart_attempts\": \"3\"}}");
    assert!(e.contains("expected a whole number"), "{e}");
    // The right values still pass.
    let f =
        parse(r#"{"services": {"a": {"restart": "on-failure", "stop_timeout_ms": 100}}}"#).unwrap();
    assert_eq!(f.services["a"].restart, Some(RestartPolicy::OnFailure));
    assert_eq!(f.services["a"].stop_timeout_ms, Some(100));
}

#[test]
fn a_key_in_the_wrong_section_says_where_it_belongs() {
    let e = parse_err("{\n  \"services_dir\": \"/srv\"}");
    assert!(e.starts_with("2:"), "{e}");
    assert!(
        e.contains("unknown key `services_dir`: it belongs in the `orchestrator` section"),
        "{e}"
    );
    let e = parse_err("{\"binary_path\": \"/bin/true\"}");
    assert!(
        e.contains("belongs in a service's entry under `services`"),
        "{e}"
    );
    let e = parse_err("{\"services\": {\"a\": {\"log_dir\": \"/var/log\"}}}");
    assert!(e.contains("belongs in the `orchestrator` section"), "{e}");
    let e = parse_err("{\"orchestrator\": {\"restart\": \"always\"}}");
    assert!(
        e.contains("unknown key `restart`: it belongs in a service's entry under `services`"),
        "{e}"
    );
    // A typo is still a typo.
    let e = parse_err("{\"orchestratr\": {}}");
    assert!(e.contains("did you mean `orchestrator`"), "{e}");
}

/// Every key of a service may be null, which counts as absent: the file's layer must
/// parse with a null where the key has no null of its own.
#[test]
fn every_service_key_accepts_null() {
    let keys = [
        "enabled",
        "args",
        "environment",
        "memory_limit",
        "stop_signal",
        "limits",
        "depends_on",
        "sockets",
        "upgrade_grace_ms",
        "syscall_filter_action",
        "private_network",
        "private_tmp",
        "read_only_paths",
        "private_users",
        "log_forward",
    ];
    for key in keys {
        let text = format!(r#"{{"services": {{"a": {{"{key}": null}}}}}}"#);
        assert!(parse(&text).is_ok(), "{key}: {:?}", parse(&text).err());
    }
}
