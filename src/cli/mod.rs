//! Arguments into a typed command (SPEC 1). Hand-written: the grammar is small and a
//! parser crate would weigh more than the whole supervisor. A usage error is one line.

pub mod check;
pub mod client;

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
    },
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
}

#[derive(Debug, Clone, Default)]
pub struct Cli {
    pub command: Option<Command>,
    pub overrides: Overrides,
}

pub const USAGE: &str = "\
usage: orchestrator <command> [options]

commands:
  run       [--config FILE] [--services-dir DIR] [--log-level LEVEL]
            [--log-format text|json] [--daemon] [--pidfile FILE]
  check     [--config FILE]                validate config and discovery, print the plan
  discover  [--config FILE] [--services-dir DIR]   list the service binaries found
  status    [NAME] [--json]                 state of the services
  start|stop|restart NAME
  reload    [--dry-run]                     re-read the config (as SIGHUP)
  logs      NAME [-n LINES]                 last output lines kept in memory (default 100)
  metrics                                   Prometheus text exposition
  upgrade   NAME PATH                       install a new binary, roll back if it fails
  rollback  NAME                            put the previous binary back
  upgrade-self PATH                         re-execute onto a new orchestrator binary
  shutdown                                  stop everything and exit (as SIGTERM)

options for every command:
  --config FILE    config file (else $ORCHESTRATOR_CONFIG, ./orchestrator.json,
                   /etc/orchestrator/orchestrator.json)
  --socket PATH    control socket (else $ORCHESTRATOR_SOCKET, the config, the default)
  -h, --help       this text
  -V, --version    the version
";

/// Parses argv (without argv[0]). The error is the one-line usage message.
pub fn parse(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli::default();
    let mut words: Vec<String> = Vec::new();
    let (mut daemon, mut pidfile, mut json, mut dry_run, mut lines) =
        (false, None, false, false, None);
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
            "-V" | "--version" => {
                return Ok(Cli {
                    command: Some(Command::Version),
                    ..cli
                })
            }
            "--config" => cli.overrides.config = Some(PathBuf::from(value("--config")?)),
            "--socket" => cli.overrides.socket = Some(PathBuf::from(value("--socket")?)),
            "--services-dir" => {
                cli.overrides.services_dir = Some(PathBuf::from(value("--services-dir")?))
            }
            "--log-level" => cli.overrides.log_level = Some(value("--log-level")?),
            "--log-format" => cli.overrides.log_format = Some(value("--log-format")?),
            "--pidfile" => pidfile = Some(PathBuf::from(value("--pidfile")?)),
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
            only(&["-n"])?;
            args_exact(1, "one service name")?;
            Command::Logs {
                name: name(),
                lines: lines.unwrap_or(100),
            }
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
            return Err(format!(
                "unknown command `{other}` (try `orchestrator --help`)"
            ))
        }
    };
    cli.command = Some(command);
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cli, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    /// `--help` names every command that parses (SPEC 1), upgrades included.
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
        assert_eq!(c.overrides.config, Some(PathBuf::from("a.json")));
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
                lines: 5
            })
        );
    }
}
