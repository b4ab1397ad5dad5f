//! A service is a directory: its sidecar (`services/NAME/service.json`) and the
//! drop-ins of `conf.d` layered under the config file, per key; a broken sidecar fails
//! its service only, a broken drop-in the whole configuration.

use crate::util::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

const NOBODY: u32 = 65534;

fn write(sb: &Sandbox, rel: &str, text: &str) -> std::path::PathBuf {
    let path = sb.path(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// A service that writes its arguments, environment and directory, then sleeps.
fn reporting(sb: &Sandbox, name: &str) {
    sb.service(
        name,
        &format!(
            "echo \"$@\" > {dir}/{name}.args; env > {dir}/{name}.env; pwd > {dir}/{name}.pwd; exec sleep 1000",
            dir = sb.dir.display()
        ),
    );
}

fn read_when_written(sb: &Sandbox, rel: &str) -> String {
    let path = sb.path(rel);
    let mut text = String::new();
    let ok = wait_until(DEADLINE, || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.ends_with('\n')
    });
    assert!(ok, "{rel} never written");
    text
}

#[test]
fn layers_take_each_key_whole_from_the_highest_file_that_sets_it() {
    let sb = Sandbox::new();
    reporting(&sb, "web");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"web": {"environment": {"FROM": "file"}, "args": null}}),
    );
    let drop_in = write(
        &sb,
        "conf.d/10-web.json",
        r#"{"services": {"web": {"environment": {"FROM": "drop-in", "D": "1"}, "args": ["drop-in"]}}}"#,
    );
    let sidecar = write(
        &sb,
        "services/web/service.json",
        r#"{"environment": {"FROM": "sidecar", "S": "1"}, "args": ["sidecar"],
            "data_dir": "data", "stop_signal": "SIGINT", "restart": null}"#,
    );
    // A directory with only a sidecar naming its binary elsewhere.
    sb.script(&sb.path("tool.sh"), "exec sleep 1000");
    write(
        &sb,
        "services/tool/service.json",
        r#"{"binary_path": "../../tool.sh"}"#,
    );

    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for line in [
        format!("  from args: drop-in {}", drop_in.display()),
        format!("  from data_dir: sidecar {}", sidecar.display()),
        format!(
            "  from environment: config file {}",
            sb.path("orchestrator.json").display()
        ),
        format!("  from stop_signal: sidecar {}", sidecar.display()),
        "tool: will start".to_string(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no `{line}` in:\n{}",
            out.stdout
        );
    }
    let out = sb.cli(&["discover"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("tool\t") && l.ends_with("tool.sh\tunconfigured")),
        "{}",
        out.stdout
    );

    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("web", None);
    sb.wait_running("tool", None);
    // Whole replacement: the file's environment, not merged with the lower ones; the
    // file's null args left the drop-in's; the sidecar's path is its directory's.
    let env = read_when_written(&sb, "web.env");
    assert!(env.lines().any(|l| l == "FROM=file"), "{env}");
    assert!(
        !env.lines()
            .any(|l| l.starts_with("D=") || l.starts_with("S=")),
        "{env}"
    );
    let args = read_when_written(&sb, "web.args");
    assert_eq!(args.trim_end(), "--service web --log-level info drop-in");
    let pwd = read_when_written(&sb, "web.pwd");
    assert_eq!(
        pwd.trim_end(),
        sb.path("services/web/data").display().to_string()
    );
    // A sidecar alone does not make a service configured.
    assert_eq!(sb.service_status("web")["configured"], true);
    assert_eq!(sb.service_status("tool")["configured"], false);
}

#[test]
fn a_broken_sidecar_fails_its_service_only() {
    let sb = Sandbox::new();
    sb.service("good", "exec sleep 1000");
    sb.service("bad", "exec sleep 1000");
    write(&sb, "services/good/service.json", r#"{"args": ["x"]}"#);
    let sidecar = write(
        &sb,
        "services/bad/service.json",
        "{\n  \"stop_sigal\": \"SIGINT\"\n}\n",
    );
    // A sidecar alone, naming a binary it cannot be read for: still a service.
    let ghost = write(&sb, "services/ghost/service.json", "{\"binary_path\": 5}");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let at = format!("{}:2:", sidecar.display());
    for line in [
        format!("bad: will fail: {at}"),
        format!("ghost: will fail: {}:1:", ghost.display()),
    ] {
        assert!(
            out.stdout.contains(&line),
            "no `{line}` in:\n{}",
            out.stdout
        );
    }

    let d = Daemon::start(&sb, &[]);
    sb.wait_running("good", None);
    let bad = sb.wait_state("bad", "failed");
    let err = bad["last_error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with(&at) && err.contains("did you mean `stop_signal`"),
        "{err}"
    );
    d.wait_log(&["bad: ", &at]);
    // Starting it again does not start it without its sidecar.
    let out = sb.cli(&["start", "bad"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains(&at), "{}", out.stderr);
    assert_eq!(sb.service_status("bad")["state"], "failed");
}

#[test]
fn a_sidecars_unknown_dependency_or_account_fails_its_service_only() {
    let sb = Sandbox::new();
    sb.service("good", "exec sleep 1000");
    sb.service("lost", "exec sleep 1000");
    sb.service("who", "exec sleep 1000");
    let lost = write(
        &sb,
        "services/lost/service.json",
        r#"{"depends_on": ["nowhere"]}"#,
    );
    let who = write(
        &sb,
        "services/who/service.json",
        r#"{"user": "no-such-user-here"}"#,
    );
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("good", None);
    for (name, file, why) in [
        ("lost", &lost, "unknown service `nowhere`"),
        ("who", &who, "no-such-user-here"),
    ] {
        let s = sb.wait_state(name, "failed");
        let err = s["last_error"].as_str().unwrap_or_default();
        let at = file.display().to_string();
        assert!(err.starts_with(&at) && err.contains(why), "{err}");
    }
}

#[test]
fn a_reload_with_a_broken_sidecar_keeps_the_running_service_and_applies_the_rest() {
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    sb.service("other", "exec sleep 1000");
    let sidecar = write(&sb, "services/svc/service.json", r#"{"args": ["one"]}"#);
    sb.config(json!({"services_dir": "services"}), json!({"other": {}}));
    let _d = Daemon::start(&sb, &[]);
    let svc = sb.wait_running("svc", None);
    let other = sb.wait_running("other", None);

    write(&sb, "services/svc/service.json", "{\"args\": 5}");
    sb.config(
        json!({"services_dir": "services"}),
        json!({"other": {"args": ["two"]}}),
    );
    // A service the reload adds, with a broken sidecar of its own: failed, saying why.
    sb.service("fresh", "exec sleep 1000");
    write(&sb, "services/fresh/service.json", "{\"nice\": \"low\"}");
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("{}:1:", sidecar.display())),
        "{}",
        out.stderr
    );
    // Everything else applied: `other` restarted onto its new args.
    sb.wait_running("other", Some(other));
    let s = sb.service_status("svc");
    assert_eq!(s["pid"], svc, "{s}");
    assert_eq!(s["state"], "running");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("service.json:1:"),
        "{s}"
    );
    let fresh = sb.wait_state("fresh", "failed");
    assert!(
        fresh["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("fresh/service.json:1:"),
        "{fresh}"
    );
    // Kept, not forgotten: a second reload with the sidecar still broken changes nothing.
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(sb.service_status("svc")["pid"], svc);
}

#[test]
fn drop_ins_add_services_and_a_broken_one_is_the_whole_configurations_error() {
    let sb = Sandbox::new();
    sb.script(&sb.path("extra.sh"), "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let first = write(
        &sb,
        "conf.d/10-extra.json",
        r#"{"services": {"extra": {"binary_path": "../extra.sh"}}}"#,
    );
    let d = Daemon::start(&sb, &[]);
    let pid = sb.wait_running("extra", None);
    assert_eq!(sb.service_status("extra")["configured"], true);

    // Defined twice: an error naming both files; nothing changes.
    let second = write(
        &sb,
        "conf.d/20-again.json",
        r#"{"services": {"extra": {"args": ["x"]}}}"#,
    );
    let out = sb.cli(&["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    // Read in name order: the later file is the one charged.
    let twice = format!(
        "{}: services.extra: defined in {} too",
        second.display(),
        first.display()
    );
    assert!(out.stderr.contains(&twice), "{}", out.stderr);
    std::fs::remove_file(&second).unwrap();
    // Unknown key, unparsable: the same.
    for text in [
        r#"{"orchestrator": {}, "services": {}}"#,
        r#"{"services": {"extra": {"arsg": []}}}"#,
        "{\"services\": {\"extra\": {\"args\": [}}}",
    ] {
        let broken = write(&sb, "conf.d/30-broken.json", text);
        let out = sb.cli(&["reload"]);
        assert_eq!(out.code, 1, "{text}: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!("{}:", broken.display())),
            "{}",
            out.stderr
        );
        assert_eq!(sb.service_status("extra")["pid"], pid);
    }
    drop(d);
    // And at start: run exits 2, nothing started.
    let mut d = Daemon::spawn(&sb, &[], &[]);
    assert_eq!(d.wait_exit(DEADLINE), Some(2), "{}", d.log_text());
    assert!(
        d.log_text().contains("30-broken.json:1:"),
        "{}",
        d.log_text()
    );
}

#[test]
fn as_root_a_sidecar_another_user_could_change_is_refused() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    let sb = Sandbox::new();
    sb.service("svc", "exec sleep 1000");
    let sidecar = write(&sb, "services/svc/service.json", r#"{"args": ["x"]}"#);
    sb.config(json!({"services_dir": "services"}), json!({}));
    std::fs::set_permissions(&sidecar, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("svc: will fail: ")
            && out
                .stdout
                .contains("refusing a sidecar that another user could change"),
        "{}",
        out.stdout
    );
    std::fs::set_permissions(&sidecar, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&sidecar, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = sb.cli(&["check"]);
    assert!(
        out.stdout.contains("is owned by uid 65534"),
        "{}",
        out.stdout
    );
    std::os::unix::fs::chown(&sidecar, Some(0), Some(0)).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn as_root_a_drop_in_another_user_could_change_is_refused() {
    if !is_root() {
        eprintln!("skipped: StrictModes applies when running as root");
        return;
    }
    let sb = Sandbox::new();
    sb.script(&sb.path("extra.sh"), "exec sleep 1000");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let drop_in = write(
        &sb,
        "conf.d/10-extra.json",
        r#"{"services": {"extra": {"binary_path": "../extra.sh"}}}"#,
    );
    std::fs::set_permissions(&drop_in, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = sb.cli(&["check"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    let refused = format!(
        "{}: refusing a drop-in that another user could change",
        drop_in.display()
    );
    assert!(
        out.stderr.contains(&refused),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
