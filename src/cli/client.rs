//! The client commands (SPEC 1): find the daemon's socket, send one request, print the
//! answer (the status table among them). Exit codes: 0 success, 1 refused or failed,
//! 3 unreachable.

use crate::cli::{Cli, Command};
use crate::config;
use crate::control::client::{ClientError, Connection};
use crate::control::instance;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The control socket a client talks to: `--socket`, `$ORCHESTRATOR_SOCKET`, the config
/// found by the usual lookup, else the default.
fn client_socket(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.overrides.socket {
        return s.clone();
    }
    if let Some(s) = std::env::var_os("ORCHESTRATOR_SOCKET").filter(|v| !v.is_empty()) {
        return PathBuf::from(s);
    }
    config::load(&cli.overrides)
        .ok()
        .and_then(|c| c.settings.control_socket)
        .unwrap_or_else(instance::default_socket)
}

pub(crate) fn client_command(cli: &Cli, command: Command) -> i32 {
    let socket = client_socket(cli);
    let result = Connection::open(&socket)
        .and_then(|mut conn| run_client(&mut conn, command).map(|wait| (conn, wait)));
    match result {
        Ok((conn, wait_for_exit)) => {
            if wait_for_exit && !conn.wait_closed(Duration::from_secs(600)) {
                eprintln!(
                    "orchestrator: shutdown requested, but the orchestrator has not exited yet"
                );
                return 1;
            }
            0
        }
        Err(ClientError::Unreachable(e)) => {
            eprintln!("orchestrator: {e}");
            3
        }
        Err(ClientError::Refused(e)) => {
            eprintln!("orchestrator: {e}");
            1
        }
    }
}

/// Runs one client command and prints its result. `Ok(true)`: wait for the daemon to exit.
fn run_client(conn: &mut Connection, command: Command) -> Result<bool, ClientError> {
    match command {
        Command::Status { name, json } => {
            let reply = conn.call(&json!({"cmd": "status", "service": name}))?;
            let services = reply["services"].as_array().cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&services).unwrap_or_default()
                );
            } else {
                print!("{}", status_table(&services));
            }
        }
        Command::Start(ref n) | Command::Stop(ref n) | Command::Restart(ref n) => {
            let cmd = match command {
                Command::Start(_) => "start",
                Command::Stop(_) => "stop",
                _ => "restart",
            };
            let reply = conn.call(&json!({"cmd": cmd, "service": n}))?;
            if let Some(s) = reply["services"].get(0) {
                println!("{}: {}", n, describe_state(s));
            }
        }
        Command::Reload { dry_run } => {
            let reply = conn.call(&json!({"cmd": "reload", "dry_run": dry_run}))?;
            for p in reply["plan"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}: {}",
                    p["service"].as_str().unwrap_or("?"),
                    p["action"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Logs { name, lines } => {
            let reply = conn.call(&json!({"cmd": "logs", "service": name, "lines": lines}))?;
            for l in reply["lines"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{} {}[{}] {}: {}{}",
                    l["ts"].as_str().unwrap_or(""),
                    name,
                    l["pid"],
                    l["stream"].as_str().unwrap_or(""),
                    // A service's bytes must not drive the reader's terminal.
                    crate::output::escape::escaped(l["msg"].as_str().unwrap_or("")),
                    if l["partial"] == Value::Bool(true) {
                        " [...]"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Metrics => {
            let reply = conn.call(&json!({"cmd": "metrics"}))?;
            print!("{}", reply["metrics"].as_str().unwrap_or(""));
        }
        Command::Shutdown => {
            conn.call(&json!({"cmd": "shutdown"}))?;
            return Ok(true);
        }
        Command::Upgrade { name, path } => {
            conn.call(&json!({"cmd": "upgrade", "service": name, "path": path}))?;
        }
        Command::Rollback(name) => {
            conn.call(&json!({"cmd": "rollback", "service": name}))?;
        }
        Command::UpgradeSelf(path) => {
            conn.call(&json!({"cmd": "upgrade-self", "path": path}))?;
        }
        Command::Run { .. }
        | Command::Check
        | Command::Discover
        | Command::Help
        | Command::Version => {}
    }
    Ok(false)
}

fn describe_state(s: &Value) -> String {
    let state = s["state"].as_str().unwrap_or("?");
    match s["pid"].as_i64() {
        Some(pid) => format!("{state} (pid {pid})"),
        None => state.to_string(),
    }
}

/// Nanoseconds as `1d2h`, `3h4m`, `5m6s` or `7s`.
fn human_duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn status_table(services: &[Value]) -> String {
    let header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "INFO"];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for s in services {
        let pid = s["pid"].as_i64().map_or("-".into(), |p| p.to_string());
        let uptime = if s["pid"].is_null() {
            "-".into()
        } else {
            human_duration(s["uptime"].as_u64().unwrap_or(0))
        };
        let exit = s["last_exit_code"]
            .as_i64()
            .map_or("-".into(), |c| c.to_string());
        let mut info = s["last_error"].as_str().unwrap_or("").to_string();
        if let Some(ms) = s["next_restart_ms"].as_u64() {
            let next = format!("next restart in {:.1}s", ms as f64 / 1000.0);
            info = if info.is_empty() {
                next
            } else {
                format!("{next}; {info}")
            };
        }
        if s["enabled"] == Value::Bool(false) {
            info = if info.is_empty() {
                "disabled".into()
            } else {
                format!("disabled; {info}")
            };
        }
        rows.push([
            s["name"].as_str().unwrap_or("?").to_string(),
            s["state"].as_str().unwrap_or("?").to_string(),
            pid,
            uptime,
            s["restarts"].to_string(),
            exit,
            info,
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}
