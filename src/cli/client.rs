//! The client commands (docs/cli.md): find the daemon's socket (`locate.rs`), send the
//! request, print the answer (tables in `status.rs`), and follow a log stream. Exit
//! codes: 0 success, 1 refused or failed, 2 a config that cannot be read, 3 unreachable;
//! `status NAME` answers LSB-style: 0 running, 3 any other state, 4 unreachable. The
//! failures come back as `ClientFailure`, which `lib.rs` prints.
//! An error about one service names it: `orchestrator: web: service not found`.

use crate::cli::{locate, status, Cli, Command};
use crate::common::protocol::{self, Cmd, Request, StatusRow};
use crate::control::client::{ClientError, Connection};
use std::io::Write;
use std::time::Duration;

/// Why a client command failed: `lib.rs` prints it and maps it to the exit code.
#[derive(Debug)]
pub(crate) enum ClientFailure {
    /// The config that names the socket cannot be read: one line each (exit 2).
    Config(Vec<String>),
    /// No daemon answers: exit `code`, 3, or 4 for `status NAME` (LSB's "unknown").
    Unreachable { error: String, code: i32 },
    /// The daemon refused, or the request failed (exit 1). The reason may quote a
    /// service or a peer (a health check's answer); `service` is the one asked about.
    Refused {
        error: String,
        service: Option<String>,
    },
    /// `shutdown` was accepted, but the daemon has not exited in time (exit 1).
    StillRunning,
}

/// Runs a client command; its exit code once answered (`status NAME`: 0 running, 3
/// any other state).
pub(crate) fn client_command(cli: &Cli, command: Command) -> Result<i32, ClientFailure> {
    let target = locate::locate(&cli.overrides).map_err(|e| ClientFailure::Config(e.0))?;
    let service = match &command {
        Command::Start(n) | Command::Stop(n) | Command::Restart(n) => Some(n.clone()),
        Command::Status { name, .. } => name.clone(),
        Command::Logs { name, .. } => Some(name.clone()),
        Command::Upgrade { name, .. } | Command::Rollback(name) => Some(name.clone()),
        _ => None,
    };
    // `status NAME` follows LSB's status convention: 4 ("unknown") when the daemon
    // cannot be reached, so that 3 always means "not running".
    let unreachable = match &command {
        Command::Status { name: Some(_), .. } => 4,
        _ => 3,
    };
    let result = Connection::open(&target.socket, &target.how)
        .and_then(|mut conn| run_client(&mut conn, command).map(|done| (conn, done)));
    match result {
        Ok((conn, Done::AwaitExit)) => {
            if conn.wait_closed(Duration::from_secs(600)) {
                Ok(0)
            } else {
                Err(ClientFailure::StillRunning)
            }
        }
        Ok((_, Done::Exit(code))) => Ok(code),
        Err(ClientError::Unreachable(error)) => Err(ClientFailure::Unreachable {
            error,
            code: unreachable,
        }),
        Err(ClientError::Refused(error)) => Err(ClientFailure::Refused { error, service }),
    }
}

/// Writes to stdout; a closed stdout (`| head`) is not an error worth a panic. Returns
/// false once stdout is gone.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

/// How a client command that got its answer ends.
enum Done {
    /// With this exit code.
    Exit(i32),
    /// Once the daemon has exited (`shutdown`).
    AwaitExit,
}

/// A request for `cmd` about `service`.
fn about(cmd: Cmd, service: &str) -> Request {
    Request {
        service: Some(service.to_string()),
        ..Request::new(cmd)
    }
}

/// Runs one client command and prints its result.
fn run_client(conn: &mut Connection, command: Command) -> Result<Done, ClientError> {
    match command {
        Command::Status { name, json } => {
            let req = Request {
                service: name.clone(),
                ..Request::new(Cmd::Status)
            };
            let services = conn.call(&req)?.services.unwrap_or_default();
            // `status NAME`: 0 only while the service is running, 3 in any other state.
            let code = match &name {
                Some(_) if services.first().is_none_or(|s| s.state != "running") => 3,
                _ => 0,
            };
            if json {
                // Pretty-printed from the one encoding of the rows (see `encode`).
                let rows: serde_json::Value =
                    serde_json::from_str(&protocol::encode(&services)).unwrap_or_default();
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                ));
            } else if let (Some(name), Some(s)) = (&name, services.first()) {
                // The last lines are a nicety: a daemon that cannot give them still
                // gets its detailed status shown.
                let req = Request {
                    lines: Some(10),
                    ..about(Cmd::Logs, name)
                };
                let lines = conn
                    .call(&req)
                    .map(|r| r.lines.unwrap_or_default())
                    .unwrap_or_default();
                emit(&status::detail(s, &lines, status::now_ms()));
            } else {
                emit(&status::table(
                    &services,
                    status::colour_wanted(),
                    status::now_ms(),
                ));
            }
            return Ok(Done::Exit(code));
        }
        Command::Start(ref n) | Command::Stop(ref n) | Command::Restart(ref n) => {
            let cmd = match command {
                Command::Start(_) => Cmd::Start,
                Command::Stop(_) => Cmd::Stop,
                _ => Cmd::Restart,
            };
            let reply = conn.call(&about(cmd, n))?;
            if let Some(m) = &reply.message {
                emit(&format!("{n}: {m}\n"));
            } else if let Some(s) = reply.services.as_ref().and_then(|s| s.first()) {
                emit(&format!("{}: {}\n", n, describe_state(s)));
            }
        }
        Command::Reload { dry_run } => {
            let req = Request {
                dry_run,
                ..Request::new(Cmd::Reload)
            };
            for p in conn.call(&req)?.plan.unwrap_or_default() {
                emit(&format!(
                    "{}: {}\n",
                    crate::output::escape::escaped(&p.service),
                    p.action
                ));
            }
        }
        Command::Logs {
            name,
            lines,
            follow,
        } => {
            let req = Request {
                lines: Some(lines),
                follow,
                ..about(Cmd::Logs, &name)
            };
            let reply = conn.call(&req)?;
            for l in reply.lines.unwrap_or_default() {
                if !emit(&format!("{}\n", status::log_line(&name, &l))) {
                    return Ok(Done::Exit(0));
                }
            }
            if follow {
                follow_stream(conn, &name)?;
            }
        }
        Command::Metrics => {
            let reply = conn.call(&Request::new(Cmd::Metrics))?;
            emit(reply.metrics.as_deref().unwrap_or(""));
        }
        Command::Shutdown => {
            conn.call(&Request::new(Cmd::Shutdown))?;
            return Ok(Done::AwaitExit);
        }
        Command::Upgrade { name, path } => {
            // The daemon has another working directory: a relative PATH is ours.
            let path = std::path::absolute(path.as_str()).unwrap_or_else(|_| path.into());
            let req = Request {
                path: Some(path.to_string_lossy().into_owned()),
                ..about(Cmd::Upgrade, &name)
            };
            let reply = conn.call(&req)?;
            let sha = reply.sha256.as_deref().unwrap_or("");
            match reply.result.as_deref() {
                Some("unchanged") => println!("{name}: already runs this binary (sha256 {sha})"),
                _ => println!("{name}: upgraded to sha256 {sha}"),
            }
        }
        Command::Rollback(name) => {
            let reply = conn.call(&about(Cmd::Rollback, &name))?;
            let sha = reply.sha256.as_deref().unwrap_or("");
            println!("{name}: rolled back to sha256 {sha}");
        }
        Command::UpgradeSelf(path) => {
            // The daemon has another working directory: a relative PATH is ours.
            let path = std::path::absolute(path.as_str()).unwrap_or_else(|_| path.into());
            let req = Request {
                path: Some(path.to_string_lossy().into_owned()),
                ..Request::new(Cmd::UpgradeSelf)
            };
            let reply = conn.call(&req)?;
            println!(
                "orchestrator {} took over (pid {})",
                reply.version.as_deref().unwrap_or("?"),
                reply.pid.map_or("null".into(), |p| p.to_string())
            );
        }
        Command::Run { .. }
        | Command::Check
        | Command::Discover
        | Command::Completion(_)
        | Command::Help
        | Command::ResumeFormat
        | Command::Version => {}
    }
    Ok(Done::Exit(0))
}

fn describe_state(s: &StatusRow) -> String {
    match s.pid {
        Some(pid) => format!("{} (pid {pid})", s.state),
        None => s.state.clone(),
    }
}

/// `logs -f` after the kept lines: one JSON object per line until the daemon closes
/// the stream (or SIGINT ends us). `{"line": {...}}` is a new line, `{"dropped": N}`
/// says the daemon had to skip N lines because we read too slowly, an `ok: false`
/// object ends the stream with its error.
fn follow_stream(conn: &mut Connection, name: &str) -> Result<(), ClientError> {
    while let Some(msg) = conn.next()? {
        if let Some(l) = &msg.line {
            if !emit(&format!("{}\n", status::log_line(name, l))) {
                return Ok(());
            }
        } else if let Some(n) = msg.dropped {
            eprintln!("-- {n} lines dropped (follower too slow) --");
        } else if msg.ok == Some(false) {
            return Err(ClientError::Refused(
                msg.error.unwrap_or_else(|| "log stream ended".into()),
            ));
        }
    }
    Ok(())
}
