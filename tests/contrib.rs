//! The files of contrib/ that init systems use as they are: the systemd unit passes
//! `systemd-analyze verify`, the shell scripts pass shellcheck, and the sysvinit script
//! starts, reports, reloads and stops a real daemon through start-stop-daemon.

use crate::util::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn contrib(name: &str) -> String {
    let path = Path::new(REPO).join("contrib").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The unit says what the daemon needs of systemd, and systemd accepts it.
#[test]
fn systemd_unit_verifies() {
    let unit = contrib("orchestrator.service");
    for line in [
        "Type=notify",
        "Delegate=yes",
        "KillMode=mixed",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecReload=/usr/local/bin/orchestrator reload")),
        "a refused reload must fail the unit's reload: ExecReload goes through the client"
    );
    packages::with("systemd", "/usr/bin/systemd-analyze", |analyze| {
        // Verified as installed: the binary where ExecStart names it (this build), the
        // man pages not looked up (they are not installed here).
        let sb = Sandbox::new();
        let file = sb.path("orchestrator.service");
        std::fs::write(&file, unit.replace("/usr/local/bin/orchestrator", BIN)).unwrap();
        let mut cmd = Command::new(analyze);
        cmd.args(["verify", "--man=no"]).arg(&file);
        let out = run_with_timeout(cmd, DEADLINE);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let ours: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("orchestrator.service"))
            .collect();
        assert!(ours.is_empty(), "{}", ours.join("\n"));
    });
}

#[test]
fn init_scripts_are_shellcheck_clean() {
    packages::with("shellcheck", "/usr/bin/shellcheck", |shellcheck| {
        for script in ["orchestrator.init", "orchestrator.openrc"] {
            let mut cmd = Command::new(&shellcheck);
            cmd.arg(Path::new(REPO).join("contrib").join(script));
            let out = run_with_timeout(cmd, DEADLINE);
            assert_eq!(out.code, 0, "{script}:\n{}{}", out.stdout, out.stderr);
        }
    });
}

/// Runs the sysvinit script with `action`, pointed at the sandbox's daemon.
fn lsb(sb: &Sandbox, action: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(Path::new(REPO).join("contrib/orchestrator.init"))
        .arg(action)
        .env("ORCHESTRATOR", BIN)
        .env("CONFIG", sb.path("orchestrator.json"))
        .env("PIDFILE", sb.path("orchestrator.pid"))
        .env("STOP_TIMEOUT", "20")
        .env("DEFAULTS", sb.path("no-defaults"))
        .env_remove("ORCHESTRATOR_CONFIG")
        .env_remove("ORCHESTRATOR_SOCKET");
    run_with_timeout(cmd, DEADLINE)
}

fn pid_in(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// start-stop-daemon can trust the pidfile the moment `run --daemon` returns: start,
/// status, reload (accepted and refused) and stop all work on the real daemon.
#[test]
fn lsb_script_starts_reports_reloads_and_stops_the_daemon() {
    packages::with("dpkg", "/usr/sbin/start-stop-daemon", |_| {
        let sb = Sandbox::new();
        sb.service("one", "exec sleep 100");
        sb.service("two", "exec sleep 100");
        let only_one = json!({"two": {"enabled": false}});
        sb.config(
            json!({"services_dir": "services", "log_dir": "logs"}),
            only_one.clone(),
        );
        let pidfile = sb.path("orchestrator.pid");

        let out = lsb(&sb, "start");
        assert_eq!(out.code, 0, "start: {}{}", out.stdout, out.stderr);
        let pid = pid_in(&pidfile).expect("the pidfile holds the daemon's pid");
        assert!(
            alive(pid) && cmdline(pid).contains(" run "),
            "{}",
            cmdline(pid)
        );
        let one = sb.wait_running("one", None);

        let out = lsb(&sb, "status");
        assert_eq!(out.code, 0, "status: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("running (pid {pid})")),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("one"), "{}", out.stdout);

        // A second start finds it running and changes nothing.
        let out = lsb(&sb, "start");
        assert_eq!(out.code, 0, "start again: {}{}", out.stdout, out.stderr);
        assert_eq!(pid_in(&pidfile), Some(pid));

        // An accepted reload starts what the new config enables; a refused one fails.
        sb.config(
            json!({"services_dir": "services", "log_dir": "logs"}),
            json!({}),
        );
        let out = lsb(&sb, "reload");
        assert_eq!(out.code, 0, "reload: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("two: start"), "{}", out.stdout);
        sb.wait_running("two", None);
        // Parsed by the client (it finds the socket there), refused by the daemon.
        sb.config(
            json!({"services_dir": "services", "log_dir": "logs"}),
            json!({"one": {"depends_on": ["nowhere"]}}),
        );
        let out = lsb(&sb, "reload");
        assert_eq!(out.code, 1, "refused reload: {}{}", out.stdout, out.stderr);
        assert!(alive(pid));
        sb.config(
            json!({"services_dir": "services", "log_dir": "logs"}),
            only_one,
        );

        let out = lsb(&sb, "stop");
        assert_eq!(out.code, 0, "stop: {}{}", out.stdout, out.stderr);
        assert!(!alive(pid), "the daemon is still there");
        assert!(!alive(one), "its service is still there");
        assert!(!pidfile.exists());

        let out = lsb(&sb, "status");
        assert_eq!(
            out.code, 3,
            "status when stopped: {}{}",
            out.stdout, out.stderr
        );
        let out = lsb(&sb, "stop");
        assert_eq!(
            out.code, 0,
            "stop when stopped: {}{}",
            out.stdout, out.stderr
        );
    });
}

/// `make install` never runs the binary it installs for the man pages, so a binary
/// built for another machine installs: here a file that cannot run at all.
#[test]
fn make_install_works_with_a_binary_that_cannot_run_here() {
    let sb = Sandbox::new();
    let foreign = sb.path("orchestrator-foreign");
    std::fs::write(&foreign, b"\x7fELF not for this machine").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
    let prefix = sb.path("prefix");
    let mut cmd = Command::new("make");
    cmd.args(["-s", "-C", REPO, "install"])
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("BIN={}", foreign.display()))
        .arg("CARGO=false");
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no completion scripts installed"),
        "{}",
        out.stderr
    );
    for (page, first) in [
        ("share/man/man1/orchestrator.1", ".TH ORCHESTRATOR 1"),
        (
            "share/man/man5/orchestrator.json.5",
            ".TH ORCHESTRATOR.JSON 5",
        ),
    ] {
        let text = std::fs::read_to_string(prefix.join(page)).unwrap_or_default();
        assert!(text.starts_with(first), "{page}: {text}");
    }
}

/// logrotate accepts the snippet as it is (a dry run: nothing is rotated).
#[test]
fn logrotate_snippet_parses() {
    packages::with("logrotate", "/usr/sbin/logrotate", |logrotate| {
        let sb = Sandbox::new();
        let conf = sb.path("orchestrator.logrotate");
        std::fs::write(&conf, contrib("logrotate")).unwrap();
        let mut cmd = Command::new(logrotate);
        cmd.arg("--debug")
            .arg("--state")
            .arg(sb.path("logrotate.state"))
            .arg(&conf);
        let out = run_with_timeout(cmd, DEADLINE);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(!said.contains("error"), "{said}");
        assert!(said.contains("/var/log/orchestrator/*.log"), "{said}");
    });
}
