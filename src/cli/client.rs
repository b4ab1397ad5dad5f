//! The client commands (docs/cli.md): find the daemon's socket (`locate.rs`), send the
//! request, print the answer (tables in `status.rs`), and follow a log stream. Exit
//! codes: 0 success, 1 refused or failed, 2 a config that cannot be read, 3 unreachable;
//! `status NAME` answers LSB-style: 0 running, 3 any other state, 4 unreachable. The
//! failures come back as `ClientFailure`, which `lib.rs` prints.
//! An error about one service names it: `orchestrator: web: service not found`.

use crate::cli::{locate, status, Cli, Command};
use crate::control::client::{ClientError, Connection};
use serde_json::{json, Value};
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

/// Runs one client command and prints its result.
fn run_client(conn: &mut Connection, command: Command) -> Result<Done, ClientError> {
    match command {
        Command::Status { name, json } => {
            let reply = conn.call(&json!({"cmd": "status", "service": name}))?;
            let services = reply["services"].as_array().cloned().unwrap_or_default();
            // `status NAME`: 0 only while the service is running, 3 in any other state.
            let code = match &name {
                Some(_) if services.first().is_none_or(|s| s["state"] != "running") => 3,
                _ => 0,
            };
            if json {
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&services).unwrap_or_default()
                ));
            } else if let (Some(name), Some(s)) = (&name, services.first()) {
                // The last lines are a nicety: a daemon that cannot give them still
                // gets its detailed status shown.
                let lines = conn
                    .call(&json!({"cmd": "logs", "service": name, "lines": 10}))
                    .map(|r| r["lines"].as_array().cloned().unwrap_or_default())
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
                Command::Start(_) => "start",
                Command::Stop(_) => "stop",
                _ => "restart",
            };
            let reply = conn.call(&json!({"cmd": cmd, "service": n}))?;
            if let Some(m) = reply["message"].as_str() {
                emit(&format!("{n}: {m}\n"));
            } else if let Some(s) = reply["services"].get(0) {
                emit(&format!("{}: {}\n", n, describe_state(s)));
            }
        }
        Command::Reload { dry_run } => {
            let reply = conn.call(&json!({"cmd": "reload", "dry_run": dry_run}))?;
            for p in reply["plan"].as_array().cloned().unwrap_or_default() {
                emit(&format!(
                    "{}: {}\n",
                    crate::output::escape::escaped(p["service"].as_str().unwrap_or("?")),
                    p["action"].as_str().unwrap_or("?")
                ));
            }
        }
        Command::Logs {
            name,
            lines,
            follow,
        } => {
            let mut req = json!({"cmd": "logs", "service": name, "lines": lines});
            if follow {
                req["follow"] = json!(true);
            }
            let reply = conn.call(&req)?;
            for l in reply["lines"].as_array().cloned().unwrap_or_default() {
                if !emit(&format!("{}\n", status::log_line(&name, &l))) {
                    return Ok(Done::Exit(0));
                }
            }
            if follow {
                follow_stream(conn, &name)?;
            }
        }
        Command::Metrics => {
            let reply = conn.call(&json!({"cmd": "metrics"}))?;
            emit(reply["metrics"].as_str().unwrap_or(""));
        }
        Command::Shutdown => {
            conn.call(&json!({"cmd": "shutdown"}))?;
            return Ok(Done::AwaitExit);
        }
        Command::Upgrade { name, path } => {
            // The daemon has another working directory: a relative PATH is ours.
            let path = std::path::absolute(path.as_str()).unwrap_or_else(|_| path.into());
            let reply = conn.call(&json!({"cmd": "upgrade", "service": name, "path": path}))?;
            let sha = reply["sha256"].as_str().unwrap_or("");
            match reply["result"].as_str() {
                Some("unchanged") => println!("{name}: already runs this binary (sha256 {sha})"),
                _ => println!("{name}: upgraded to sha256 {sha}"),
            }
        }
        Command::Rollback(name) => {
            let reply = conn.call(&json!({"cmd": "rollback", "service": name}))?;
            let sha = reply["sha256"].as_str().unwrap_or("");
            println!("{name}: rolled back to sha256 {sha}");
        }
        Command::UpgradeSelf(path) => {
            // The daemon has another working directory: a relative PATH is ours.
            let path = std::path::absolute(path.as_str()).unwrap_or_else(|_| path.into());
            let reply = conn.call(&json!({"cmd": "upgrade-self", "path": path}))?;
            println!(
                "orchestrator {} took over (pid {})",
                reply["version"].as_str().unwrap_or("?"),
                reply["pid"]
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

fn describe_state(s: &Value) -> String {
    let state = s["state"].as_str().unwrap_or("?");
    match s["pid"].as_i64() {
        Some(pid) => format!("{state} (pid {pid})"),
        None => state.to_string(),
    }
}

/// `logs -f` after the kept lines: one JSON object per line until the daemon closes
/// the stream (or SIGINT ends us). `{"line": {...}}` is a new line, `{"dropped": N}`
/// says the daemon had to skip N lines because we read too slowly, an `ok: false`
/// object ends the stream with its error.
fn follow_stream(conn: &mut Connection, name: &str) -> Result<(), ClientError> {
    while let Some(msg) = conn.next()? {
        if let Some(l) = msg.get("line") {
            if !emit(&format!("{}\n", status::log_line(name, l))) {
                return Ok(());
            }
        } else if let Some(n) = msg.get("dropped").and_then(Value::as_u64) {
            eprintln!("-- {n} lines dropped (follower too slow) --");
        } else if msg["ok"] == Value::Bool(false) {
            return Err(ClientError::Refused(
                msg["error"]
                    .as_str()
                    .unwrap_or("log stream ended")
                    .to_string(),
            ));
        }
    }
    Ok(())
}
