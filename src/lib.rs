//! `orchestrator`: a process supervisor for small Linux machines.
//!
//! The tree draws the architecture:
//! - `cli/`: arguments into a typed command, and the commands that do not need the
//!   daemon (`check`, `discover`) or talk to it (the client side and its tables);
//! - `daemon.rs`: the start-up of `run`, in the one order that is safe;
//! - `config/`: the file, its validation, discovery and the plan that merges them;
//! - `supervise/`: the pure per-service machine, backoff, and the main loop that owns
//!   the service map and only receives events and carries out actions;
//! - `process/`: spawning (the one audited child set-up), waiting, signals, cgroups and
//!   /proc readings;
//! - `health/`: health-check clients;
//! - `output/`: pipe readers, the log sink thread, log files, time formats;
//! - `control/`: the control socket, the client connection, metrics, the instance lock.
//!
//! Only this file prints errors for the user and chooses exit codes: the commands
//! return what went wrong as values (`StartError`, configuration lines, `check`'s
//! report), and `dispatch` turns each into its lines on stderr and its exit code.

mod cli;
mod common;
mod config;
mod control;
mod daemon;
mod health;
mod output;
mod process;
mod supervise;

pub mod fuzz;

use cli::{Cli, Command};
use config::discovery;

/// Runs the command line and returns the process's exit code (docs/cli.md).
pub fn main() -> i32 {
    // Descriptors 0-2 must be open so that no pipe of ours is ever given one of them.
    process::spawn::ensure_std_fds();
    // One malloc arena for every thread: with a thread per stream, per-thread arenas
    // would cost far more than the threads themselves. (glibc only: musl's malloc has
    // no per-thread arenas, and no mallopt.)
    // SAFETY: mallopt has no memory preconditions and runs before any thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match cli::parse(&args) {
        Ok(cli) => dispatch(cli),
        Err(e) => {
            eprintln!("orchestrator: {e}");
            2
        }
    }
}

fn dispatch(cli: Cli) -> i32 {
    let Some(command) = cli.command.clone() else {
        eprintln!("orchestrator: missing command (try `orchestrator --help`)");
        return 2;
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            0
        }
        Command::ResumeFormat => {
            println!("{}", supervise::upgrade_self::FORMAT);
            0
        }
        Command::Completion(shell) => {
            print!("{}", cli::completion::script(shell));
            0
        }
        Command::Version => {
            println!("orchestrator {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Run { daemon, pidfile } => match daemon::run(&cli, daemon, pidfile) {
            Ok(code) => code,
            Err(failure) => start_failed(failure),
        },
        Command::Check => match cli::check::check(&cli) {
            Ok(report) => {
                cli::check::print(&report);
                report.exit_code()
            }
            Err(lines) => config_failed(&lines),
        },
        Command::Discover => cli::check::discover(&cli).unwrap_or_else(|e| config_failed(&e)),
        other => cli::client::client_command(&cli, other).unwrap_or_else(client_failed),
    }
}

/// Prints why `run` could not start and returns its exit code: 2 for the
/// configuration, 1 for anything else. A daemon that had detached already tells the
/// caller's process the same code once the lines are out: that process relays our
/// stderr until then.
fn start_failed(failure: daemon::StartFailure) -> i32 {
    let code = match &failure.error {
        daemon::StartError::Config(lines) => config_failed(lines),
        e => {
            eprintln!("orchestrator: {e}");
            1
        }
    };
    if let Some(caller) = failure.caller {
        caller.failed(code);
    }
    code
}

/// Prints why a client command failed and returns its exit code.
fn client_failed(failure: cli::client::ClientFailure) -> i32 {
    use cli::client::ClientFailure;
    match failure {
        ClientFailure::Config(lines) => config_failed(&lines),
        ClientFailure::Unreachable { error, code } => {
            eprintln!("orchestrator: {error}");
            code
        }
        ClientFailure::Refused { error, service } => {
            // Both come from the caller or the daemon and may carry control characters.
            let e = output::escape::escaped(&error);
            match service.map(|n| output::escape::escaped(&n).into_owned()) {
                // The daemon's message may already start with the name.
                Some(n) if !e.starts_with(&format!("{n}:")) => eprintln!("orchestrator: {n}: {e}"),
                _ => eprintln!("orchestrator: {e}"),
            }
            1
        }
        ClientFailure::StillRunning => {
            eprintln!("orchestrator: shutdown requested, but the orchestrator has not exited yet");
            1
        }
    }
}

/// Prints configuration errors, one per line, and returns exit code 2.
pub(crate) fn config_failed(lines: &[String]) -> i32 {
    for l in lines {
        // A path or key from the file may carry control characters: escaped, so that
        // none reaches the terminal.
        eprintln!("orchestrator: {}", output::escape::escaped(l));
    }
    2
}

/// The configuration and the plan made of it, or why not: one line per problem.
pub(crate) fn load(cli: &Cli) -> Result<(config::Config, discovery::Plan), Vec<String>> {
    let cfg = config::load(&cli.overrides).map_err(|e| e.0)?;
    let plan = discovery::plan(&cfg)?;
    Ok((cfg, plan))
}
