//! The default paths a configuration leaves out (docs/configuration.md): the control
//! socket's, and the notify socket's beside it. Here, not with the code that opens
//! them, because the plan writes them into services' environments and the client looks
//! for the daemon at them: one definition for the daemon, its services and its client.

use std::path::{Path, PathBuf};

/// The socket path when neither flag, environment nor config names one.
pub fn default_socket() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/orchestrator.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("orchestrator.sock"),
        None => PathBuf::from(format!("/tmp/orchestrator-{uid}.sock")),
    }
}

/// Where a daemon with control socket `socket` listens for notifications
/// (`NOTIFY_SOCKET`).
pub fn notify_socket(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".notify");
    PathBuf::from(p)
}
