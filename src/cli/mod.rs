//! Arguments into a typed command (docs/cli.md). Hand-written: the grammar is small and a
//! parser crate would weigh more than the whole supervisor. A usage error is one line.

pub mod check;
pub mod client;
pub mod completion;
pub mod locate;
pub mod status;

use crate::config::Overrides;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run {
        daemon: bool,
        pidfile: Option<PathBuf>,
    },
    Check,
    Discover,
    Status {
        name: Option<String>,
        json: bool,
    },
    Start(String),
    Stop(String),
    Restart(String),
    Reload {
        dry_run: bool,
    },
    Logs {
        name: String,
        lines: usize,
        follow: bool,
    },
    Completion(Shell),
    Metrics,
    Upgrade {
        name: String,
        path: String,
    },
    Rollback(String),
    UpgradeSelf(String),
    Shutdown,
    Help,
    Version,
    /// The format of the state this binary takes over from `upgrade-self` (hidden: the
    /// old image asks before it hands anything over).
    ResumeFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Every subcommand, for suggestions and completion.
pub const COMMANDS: &[&str] = &[
    "run",
    "check",
    "discover",
    "status",
    "start",
    "stop",
    "restart",
    "reload",
    "logs",
    "metrics",
    "completion",
    "shutdown",
    "upgrade",
    "rollback",
    "upgrade-self",
];

#[derive(Debug, Clone, Default)]
pub struct Cli {
    pub command: Option<Command>,
    pub overrides: Overrides,
}

/// The `--help` text: a summary. The whole reference is docs/cli.md, from which the
/// man page is generated.
pub const USAGE: &str = "\
usage: orchestrator <command> [options]

A process supervisor for small Linux machines. It finds service binaries in a
directory, starts them in a clean environment, logs their output line by line,
restarts them with backoff when they fail and stops them gracefully.

commands:
  run       [--config FILE] [--services-dir DIR] [--log-level LEVEL]
            [--log-format text|json] [--daemon] [--pidfile FILE]
                                            supervise the services (the daemon)
  check     [--config FILE]                 validate config and discovery, print the plan
  discover  [--config FILE] [--services-dir DIR]   list the service binaries found
  status    [NAME] [--json]                 state of the services; one in detail
  start|stop|restart NAME
  reload    [--dry-run]                     re-read the config (as SIGHUP)
  logs      NAME [-n LINES] [-f]            last output lines kept in memory (default
                                            100); -f keeps following, like tail -f
  metrics                                   Prometheus text exposition
  upgrade   NAME PATH                       install a new binary, roll back if it fails
  rollback  NAME                            put the previous binary back
  upgrade-self PATH                         re-execute onto a new orchestrator binary
  completion bash|zsh|fish                  a shell completion script on stdout
  shutdown                                  stop everything and exit (as SIGTERM)

options for every command:
  --config FILE    config file (else $ORCHESTRATOR_CONFIG, ./orchestrator.json,
                   /etc/orchestrator/orchestrator.json)
  --socket PATH    control socket (else $ORCHESTRATOR_SOCKET, the config's
                   control_socket, the default)
  -h, --help       this text
  -V, --version    the version

environment:
  ORCHESTRATOR_CONFIG, ORCHESTRATOR_SOCKET, ORCHESTRATOR_SERVICES_DIR,
  ORCHESTRATOR_LOG_LEVEL, ORCHESTRATOR_LOG_FORMAT
                   as the options; a flag beats the environment, which beats the file
  NO_COLOR         no colour in the status table

exit status:
  run              0 after a clean shutdown, 1 on a fatal error or when another
                   instance runs, 2 on a usage or configuration error
  check, discover  0; 1 when check's plan says a service will fail; 2 on a usage or
                   configuration error
  other commands   0 success, 1 the daemon refused or the operation failed, 2 usage
                   error, 3 the daemon cannot be reached

files:
  /etc/orchestrator/orchestrator.json   the system-wide config
  /run/orchestrator.sock                the default control socket as root (else
                   $XDG_RUNTIME_DIR/orchestrator.sock or /tmp/orchestrator-UID.sock)
";

/// Parses argv (without argv[0]). The error is the one-line usage message.
pub fn parse(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli::default();
    let mut words: Vec<String> = Vec::new();
    let (mut daemon, mut pidfile, mut json, mut dry_run, mut lines, mut follow) =
        (false, None, false, false, None, false);
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => {
                return Ok(Cli {
                    command: Some(Command::Help),
                    ..cli
                })
            }
            "--resume-format" => {
                return Ok(Cli {
                    command: Some(Command::ResumeFormat),
                    ..cli
                })
            }
            "-V" | "--version" => {
                return Ok(Cli {
                    command: Some(Command::Version),
                    ..cli
                })
            }
            // Paths are made absolute here, against the directory we were started in:
            // `--daemon` moves to /, and a reload or `upgrade-self` later must still
            // find the same files.
            "--config" => cli.overrides.config = Some(absolute(value("--config")?)),
            "--socket" => cli.overrides.socket = Some(absolute(value("--socket")?)),
            "--services-dir" => {
                cli.overrides.services_dir = Some(absolute(value("--services-dir")?))
            }
            "--log-level" => cli.overrides.log_level = Some(value("--log-level")?),
            "--log-format" => cli.overrides.log_format = Some(value("--log-format")?),
            "--pidfile" => pidfile = Some(absolute(value("--pidfile")?)),
            "-n" | "--lines" => {
                let v = value(flag)?;
                lines = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("{flag}: `{v}` is not a number of lines"))?,
                );
            }
            "--daemon" => daemon = true,
            "--json" => json = true,
            "--dry-run" => dry_run = true,
            "-f" | "--follow" => follow = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option `{f}`")),
            _ => words.push(arg.clone()),
        }
        i += 1;
    }
    let Some((cmd, rest)) = words.split_first() else {
        return Err("missing command (try `orchestrator --help`)".into());
    };
    let only = |allowed: &[&str]| -> Result<(), String> {
        let used = [
            ("--daemon", daemon),
            ("--pidfile", pidfile.is_some()),
            ("--json", json),
            ("--dry-run", dry_run),
            ("-n", lines.is_some()),
            ("-f", follow),
            ("--services-dir", cli.overrides.services_dir.is_some()),
            ("--log-level", cli.overrides.log_level.is_some()),
            ("--log-format", cli.overrides.log_format.is_some()),
        ];
        for (name, set) in used {
            if set && !allowed.contains(&name) {
                return Err(format!("`{name}` does not apply to `{cmd}`"));
            }
        }
        Ok(())
    };
    let args_exact = |n: usize, what: &str| -> Result<(), String> {
        if rest.len() != n {
            return Err(format!("`{cmd}` takes {what}"));
        }
        Ok(())
    };
    let name = || rest.first().cloned().unwrap_or_default();
    let command = match cmd.as_str() {
        "run" => {
            only(&[
                "--daemon",
                "--pidfile",
                "--services-dir",
                "--log-level",
                "--log-format",
            ])?;
            args_exact(0, "no arguments")?;
            Command::Run {
                daemon,
                pidfile: pidfile.clone(),
            }
        }
        "check" => {
            only(&["--services-dir", "--log-level", "--log-format"])?;
            args_exact(0, "no arguments")?;
            Command::Check
        }
        "discover" => {
            only(&["--services-dir"])?;
            args_exact(0, "no arguments")?;
            Command::Discover
        }
        "status" => {
            only(&["--json"])?;
            if rest.len() > 1 {
                return Err("`status` takes at most one service name".into());
            }
            Command::Status {
                name: rest.first().cloned(),
                json,
            }
        }
        "start" | "stop" | "restart" | "rollback" => {
            only(&[])?;
            args_exact(1, "one service name")?;
            match cmd.as_str() {
                "start" => Command::Start(name()),
                "stop" => Command::Stop(name()),
                "restart" => Command::Restart(name()),
                _ => Command::Rollback(name()),
            }
        }
        "reload" => {
            only(&["--dry-run"])?;
            args_exact(0, "no arguments")?;
            Command::Reload { dry_run }
        }
        "logs" => {
            only(&["-n", "-f"])?;
            args_exact(1, "one service name")?;
            Command::Logs {
                name: name(),
                lines: lines.unwrap_or(100),
                follow,
            }
        }
        "completion" => {
            only(&[])?;
            args_exact(1, "a shell: bash, zsh or fish")?;
            Command::Completion(match name().as_str() {
                "bash" => Shell::Bash,
                "zsh" => Shell::Zsh,
                "fish" => Shell::Fish,
                other => {
                    return Err(format!(
                        "completion: unknown shell `{other}` (expected bash, zsh or fish)"
                    ))
                }
            })
        }
        "metrics" | "shutdown" => {
            only(&[])?;
            args_exact(0, "no arguments")?;
            if cmd == "metrics" {
                Command::Metrics
            } else {
                Command::Shutdown
            }
        }
        "upgrade" => {
            only(&[])?;
            args_exact(2, "a service name and a path")?;
            Command::Upgrade {
                name: name(),
                path: rest[1].clone(),
            }
        }
        "upgrade-self" => {
            only(&[])?;
            args_exact(1, "a path")?;
            Command::UpgradeSelf(name())
        }
        other => {
            return Err(
                match crate::config::nearest(other, COMMANDS.iter().copied()) {
                    Some(best) => format!("unknown command `{other}` (did you mean `{best}`?)"),
                    None => format!("unknown command `{other}` (try `orchestrator --help`)"),
                },
            )
        }
    };
    cli.command = Some(command);
    Ok(cli)
}

/// `path` against the current directory (unchanged if that cannot be read).
fn absolute(path: String) -> PathBuf {
    std::path::absolute(&path).unwrap_or_else(|_| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cli, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    /// `--help` names every command that parses (docs/cli.md), upgrades included.
    #[test]
    fn usage_lists_the_upgrade_commands() {
        for (line, cmd) in [
            ("upgrade web /tmp/new", "upgrade   NAME PATH"),
            ("rollback web", "rollback  NAME"),
            ("upgrade-self /tmp/new", "upgrade-self PATH"),
        ] {
            assert!(p(line).is_ok(), "{line}");
            assert!(
                USAGE.contains(&format!("\n  {cmd} ")),
                "{cmd} missing from USAGE"
            );
        }
    }

    #[test]
    fn global_flags_before_or_after() {
        let c = p("--config a.json status web --json").unwrap();
        assert_eq!(
            c.command,
            Some(Command::Status {
                name: Some("web".into()),
                json: true
            })
        );
        // Made absolute against where we run (`--daemon` moves to /).
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.overrides.config, Some(cwd.join("a.json")));
        let c = p("stop web --socket=/tmp/s").unwrap();
        assert_eq!(c.command, Some(Command::Stop("web".into())));
        assert_eq!(c.overrides.socket, Some(PathBuf::from("/tmp/s")));
    }

    #[test]
    fn run_flags() {
        let c = p("run --daemon --pidfile /run/o.pid --log-level debug").unwrap();
        assert_eq!(
            c.command,
            Some(Command::Run {
                daemon: true,
                pidfile: Some("/run/o.pid".into())
            })
        );
        assert_eq!(c.overrides.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn usage_errors() {
        assert!(p("").is_err());
        assert!(p("frobnicate").is_err());
        assert!(p("start").is_err());
        assert!(p("start a b").is_err());
        assert!(p("status --daemon").is_err());
        assert!(p("run --bogus").is_err());
        assert!(p("logs web -n x").is_err());
        assert!(p("run --config").is_err());
        assert_eq!(
            p("logs web -n 5").unwrap().command,
            Some(Command::Logs {
                name: "web".into(),
                lines: 5,
                follow: false
            })
        );
        assert!(p("status -f").is_err());
        assert!(p("completion tcsh").is_err());
        assert_eq!(
            p("completion zsh").unwrap().command,
            Some(Command::Completion(Shell::Zsh))
        );
    }

    #[test]
    fn follow_flag_goes_anywhere() {
        for line in [
            "logs web -n 5 -f",
            "-f logs web -n 5",
            "logs -f web --lines=5",
        ] {
            assert_eq!(
                p(line).unwrap().command,
                Some(Command::Logs {
                    name: "web".into(),
                    lines: 5,
                    follow: true
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn mistyped_command_gets_a_suggestion() {
        let e = p("stauts").unwrap_err();
        assert!(e.contains("did you mean `status`"), "{e}");
        let e = p("xyzzy").unwrap_err();
        assert!(e.contains("--help"), "{e}");
    }
}
