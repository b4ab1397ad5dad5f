//! What the operator sees in a real terminal and a real shell: colour in the status
//! table (through tmux), a double Ctrl-C under `make run`, `make install` with its man
//! page and completion scripts, and the completion scripts at work in bash, zsh, fish.

use crate::util::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tmux server of our own, its socket in the sandbox, killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
}

static TMUX_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Tmux {
    /// A 200x50 pane running `sh` in `dir`, or None (with the reason printed) when tmux
    /// is missing.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Option<Tmux> {
        if !have("tmux") {
            crate::util::packages::missing("tmux is missing: install the Debian package tmux");
            return None;
        }
        let t = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(&t.socket)
            .args(["-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "200", "-y", "50", "sh"])
            .current_dir(dir)
            .env("PS1", "$ ")
            .env_remove("NO_COLOR")
            .env_remove("ORCHESTRATOR_CONFIG")
            .env_remove("ORCHESTRATOR_SOCKET")
            .envs(env.iter().copied());
        assert!(cmd.status().unwrap().success(), "tmux new-session failed");
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", "0"][..], keys].concat());
    }

    /// The pane's text, with colour escapes when `escapes`.
    fn screen(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "0", "-S", "-1000"];
        if escapes {
            args.push("-e");
        }
        self.tmux(&args)
    }

    /// Types `line` and waits until the shell has run it: the line ends by echoing a
    /// marker, spelled so that the typed text itself does not contain it.
    fn run(&self, line: &str) -> String {
        let n = TMUX_COUNTER.fetch_add(1, Ordering::SeqCst);
        self.keys(&[&format!("{line}; echo __DO''NE{n}__"), "Enter"]);
        let marker = format!("__DONE{n}__");
        let ok = wait_until(DEADLINE, || self.screen(false).contains(&marker));
        assert!(ok, "`{line}` did not finish:\n{}", self.screen(false));
        self.screen(true)
    }

    fn wait_screen(&self, text: &str) {
        let ok = wait_until(DEADLINE, || self.screen(false).contains(text));
        assert!(ok, "no `{text}` on screen:\n{}", self.screen(false));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn failed_and_restarting_rows_are_coloured_on_a_terminal_only() {
    let sb = Sandbox::new();
    sb.service("good", "exec sleep 100");
    sb.service("crashy", "exit 1");
    sb.config(
        json!({"services_dir": "services", "initial_backoff_ms": 60000, "max_backoff_ms": 60000}),
        json!({"ghost": {}}),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("good", None);
    sb.wait_state("crashy", "restarting");
    sb.wait_state("ghost", "failed");
    let Some(t) = Tmux::start(&sb.dir, &[]) else {
        return;
    };
    let status = format!("{BIN} --socket {} status", sb.socket().display());
    let screen = t.run(&status);
    let row = |name: &str, screen: &str| -> String {
        screen
            .lines()
            .rev()
            .find(|l| l.contains(&format!("{name} ")) && !l.contains("status"))
            .unwrap_or_else(|| panic!("no {name} row:\n{screen}"))
            .to_string()
    };
    assert!(row("ghost", &screen).contains("\x1b[31m"), "{screen:?}");
    assert!(row("crashy", &screen).contains("\x1b[33m"), "{screen:?}");
    let good = row("good", &screen);
    assert!(
        !good.contains("\x1b[31m") && !good.contains("\x1b[33m"),
        "{screen:?}"
    );
    // NO_COLOR set: none.
    let screen = t.run(&format!("NO_COLOR=1 {status}"));
    assert!(!row("ghost", &screen).contains('\x1b'), "{screen:?}");
    // NO_COLOR set but empty counts as unset (no-color.org): colour stays. Rows are
    // looked for below the command, so that an earlier command's cannot answer.
    let screen = t.run(&format!("NO_COLOR= {status}"));
    let below = &screen[screen.rfind("NO_COLOR= ").unwrap()..];
    assert!(row("ghost", below).contains("\x1b[31m"), "{screen:?}");
    assert!(row("crashy", below).contains("\x1b[33m"), "{screen:?}");
    // Not a terminal: none.
    let out = sb.cli(&["status"]);
    assert!(out.stdout.contains("ghost") && !out.stdout.contains('\x1b'));
}

#[test]
fn a_double_ctrl_c_under_make_run_is_not_reported_as_a_make_error() {
    if !have("make") {
        eprintln!("skipped: make is not installed");
        return;
    }
    let sb = Sandbox::new();
    sb.service("ticker", "while :; do echo tick; sleep 0.2; done");
    // Ignores SIGTERM, so the first Ctrl-C leaves it stopping until the second one.
    sb.service("stubborn", "trap '' TERM; while :; do sleep 0.1; done");
    let cfg = sb.config(
        json!({"services_dir": "services", "stop_timeout_ms": 30000}),
        json!({}),
    );
    let Some(t) = Tmux::start(&sb.dir, &[]) else {
        return;
    };
    // CARGO=: skips the build: the binary under test is the one to run.
    t.keys(&[
        &format!(
            "make -s -C {REPO} run CARGO=: BIN={BIN} CONFIG={}",
            cfg.display()
        ),
        "Enter",
    ]);
    t.wait_screen("stdout: tick");
    t.keys(&["C-c"]);
    t.wait_screen("shutting down");
    t.keys(&["C-c"]);
    t.wait_screen("second SIGINT");
    // make has exited once nothing mentions the config (make and the orchestrator
    // do); then a marker makes sure the pane shows all it printed.
    let needle = cfg.display().to_string();
    let gone = wait_until(DEADLINE, || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
            .all(|p| !cmdline(p).contains(&needle))
    });
    assert!(gone, "make run did not end:\n{}", t.screen(false));
    let screen = t.run("true");
    assert!(!screen.contains("make: ***"), "{screen}");
}

#[test]
fn make_install_puts_binary_man_page_and_completions_under_prefix() {
    if !have("make") {
        eprintln!("skipped: make is not installed");
        return;
    }
    let sb = Sandbox::new();
    let prefix = sb.path("prefix");
    let mut cmd = Command::new("make");
    cmd.args(["-s", "-C", REPO, "install"])
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("BIN={BIN}"))
        .arg("CARGO=false"); // the binary exists: nothing may be built
    let out = run_with_timeout(cmd, DEADLINE);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    use std::os::unix::fs::PermissionsExt;
    let bin = prefix.join("bin/orchestrator");
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    for (path, first) in [
        ("share/man/man1/orchestrator.1", ".TH ORCHESTRATOR 1"),
        (
            "share/man/man5/orchestrator.json.5",
            ".TH ORCHESTRATOR.JSON 5",
        ),
        ("share/doc/orchestrator/configuration.md", "# Configuration"),
        ("lib/systemd/system/orchestrator.service", "# systemd unit"),
        ("share/orchestrator/contrib/orchestrator.init", "#!/bin/sh"),
        (
            "share/orchestrator/contrib/orchestrator.openrc",
            "#!/sbin/openrc-run",
        ),
        (
            "share/bash-completion/completions/orchestrator",
            "# bash completion",
        ),
        (
            "share/zsh/site-functions/_orchestrator",
            "#compdef orchestrator",
        ),
        (
            "share/fish/vendor_completions.d/orchestrator.fish",
            "# fish completion",
        ),
    ] {
        let text = std::fs::read_to_string(prefix.join(path)).unwrap_or_default();
        assert!(text.starts_with(first), "{path}: {text}");
    }
    // The init files name the binary where it was installed.
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/orchestrator.service"))
        .unwrap_or_default();
    let installed = format!("ExecStart={}/bin/orchestrator run", prefix.display());
    assert!(unit.contains(&installed), "{unit}");
    if !have("man") {
        eprintln!("skipped: man is not installed; the pages were not rendered");
        return;
    }
    // Both pages render without a warning, and the commands' page names every command.
    for page in [
        "share/man/man1/orchestrator.1",
        "share/man/man5/orchestrator.json.5",
    ] {
        let rendered = Command::new("man")
            .arg("-l")
            .arg(prefix.join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(rendered.status.success(), "{page}");
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(warnings.is_empty(), "{page}: {warnings}");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("SYNOPSIS"), "{page}: {text}");
        if page.ends_with(".1") {
            let help = Command::new(BIN).arg("--help").output().unwrap().stdout;
            let help = String::from_utf8_lossy(&help);
            let commands = help
                .lines()
                .skip_while(|l| *l != "commands:")
                .skip(1)
                .take_while(|l| !l.is_empty())
                .filter(|l| !l.starts_with("   "))
                .filter_map(|l| l.split_whitespace().next());
            for command in commands.flat_map(|c| c.split('|')) {
                assert!(text.contains(command), "{page} lacks `{command}`");
            }
        } else {
            assert!(text.contains("max_restart_attempts"), "{page}: {text}");
        }
    }
}

/// Runs `script` with `program -c`; returns its stdout.
fn shell(program: &str, script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(["-c", script])
        .env_remove("ORCHESTRATOR_CONFIG")
        .env_remove("ORCHESTRATOR_SOCKET")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn completion_offers_commands_flags_and_the_daemons_services() {
    let sb = Sandbox::new();
    sb.service("alpha", "exec sleep 100");
    sb.service("beta", "exec sleep 100");
    sb.config(json!({"services_dir": "services"}), json!({}));
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("alpha", None);
    let sock = sb.socket().display().to_string();
    let env = [("ORCHESTRATOR_SOCKET", sock.as_str())];
    let bash_with = |words: &str, env: &[(&str, &str)]| {
        shell(
            "bash",
            &format!(
                "source <({BIN} completion bash); COMP_WORDS=({BIN} {words}); \
                 COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _orchestrator; echo \"${{COMPREPLY[*]}}\""
            ),
            env,
        )
    };
    let bash = |words: &str| bash_with(words, &env);
    // The socket named on the line is the one asked.
    assert_eq!(
        bash_with(&format!("--socket {sock} stop ''"), &[]).trim(),
        "alpha beta"
    );
    assert_eq!(bash_with("--socket=/nope stop ''", &[]).trim(), "");
    assert_eq!(bash("sta").trim(), "status start");
    assert_eq!(bash("stat").trim(), "status");
    assert_eq!(bash("logs ''").trim(), "alpha beta");
    assert_eq!(bash("--config x restart ''").trim(), "alpha beta");
    assert!(bash("logs -").split(' ').any(|w| w.trim() == "-f"));
    assert_eq!(bash("completion ''").trim(), "bash zsh fish");

    if have("zsh") {
        // compdef and compadd stand-ins: print what would be offered.
        let zsh = |words: &str| {
            shell(
                "zsh",
                &format!(
                    "compdef() {{ }}; compadd() {{ if [[ $1 == -a ]]; then print -l -- ${{(P)2}}; \
                     else [[ $1 == -- ]] && shift; print -l -- \"$@\"; fi }}; \
                     source <({BIN} completion zsh); words=({BIN} {words}); CURRENT=${{#words}}; \
                     _orchestrator"
                ),
                &env,
            )
        };
        assert!(zsh("sta").lines().any(|l| l == "status"));
        assert_eq!(zsh("logs ''").trim(), "alpha\nbeta");
        assert_eq!(zsh("--socket /nope logs ''").trim(), "");
    } else {
        eprintln!("skipped: zsh is not installed");
    }
    if have("fish") {
        let dir = sb.path("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(BIN, dir.join("orchestrator")).unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let fish = |line: &str| {
            shell(
                "fish",
                &format!("{BIN} completion fish | source; complete -C '{line}'"),
                &[env[0], ("PATH", &path)],
            )
        };
        assert!(fish("orchestrator sta").lines().any(|l| l == "status"));
        let names: Vec<String> = fish("orchestrator stop ")
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect();
        assert!(
            names.contains(&"alpha".into()) && names.contains(&"beta".into()),
            "{names:?}"
        );
        assert!(!fish("orchestrator --socket /nope stop ").contains("alpha"));
    } else {
        eprintln!("skipped: fish is not installed");
    }
}
