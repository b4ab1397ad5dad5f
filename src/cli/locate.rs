//! Which control socket a client talks to (docs/cli.md), and why: `--socket`, else
//! `$ORCHESTRATOR_SOCKET`, else the `control_socket` of the config found by the
//! lookup order, else the default path. The reason travels with the path, so that an
//! unreachable daemon is reported with the socket tried and how it was chosen.
//!
//! A config that was found or named but cannot be read or parsed is an error, never a
//! silent fall-back to the default socket: that fall-back is how a typo in the file
//! used to hide a running daemon. Validation is not applied (see
//! `config::load_unvalidated`). Nothing here connects to anything.

use crate::config::paths;
use crate::config::{self, ConfigError, Overrides};
use std::path::PathBuf;

/// A socket and the reason it was chosen, e.g. "control_socket in /etc/o.json".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub socket: PathBuf,
    pub how: String,
}

pub fn locate(ov: &Overrides) -> Result<Target, ConfigError> {
    if let Some(s) = &ov.socket {
        return Ok(Target {
            socket: s.clone(),
            how: "from --socket".into(),
        });
    }
    if let Some(s) = std::env::var_os("ORCHESTRATOR_SOCKET").filter(|v| !v.is_empty()) {
        return Ok(Target {
            socket: PathBuf::from(s),
            how: "from $ORCHESTRATOR_SOCKET".into(),
        });
    }
    let cfg = config::load_unvalidated(ov).map_err(|e| {
        ConfigError(
            e.0.into_iter()
                .map(|l| format!("{l} (needed to find the control socket; or pass --socket)"))
                .collect(),
        )
    })?;
    Ok(match (cfg.settings.control_socket, cfg.path) {
        (Some(socket), Some(file)) => Target {
            socket,
            how: format!("control_socket in {}", file.display()),
        },
        (_, Some(file)) => Target {
            socket: paths::default_socket(),
            how: format!("the default: {} sets no control_socket", file.display()),
        },
        (_, None) => Target {
            socket: paths::default_socket(),
            how: "the default: no config file found".into(),
        },
    })
}
