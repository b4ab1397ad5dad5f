//! `upgrade-self PATH` (docs/unattended.md): the running daemon replaces its own binary
//! without letting go of a single child, descriptor or kept line.
//!
//! - `old_image.rs`, the old image's side: check the new binary off the loop, then hand
//!   everything over and exec it in place, keeping the pid. Until the exec nothing has
//!   changed that cannot be put back: a refusal or a failed exec leaves the daemon
//!   running as it was, and the client gets the reason.
//! - `new_binary.rs`: how the new binary is checked (it must say it is an orchestrator
//!   and accept the config in force) and started, always through the one descriptor
//!   it was opened as, so that what was checked is what runs.
//! - `new_image.rs`, the new image's side: take the state over and carry on from it.
//!
//! What crosses the exec is `Carried` (this file), JSON in a memfd whose number the new
//! image finds in `ORCHESTRATOR_RESUME_FD`: each machine with its deadlines, counters,
//! history, kept lines, cgroups and sockets; the ordered stops under way; every output
//! pipe with the unfinished end of its last line (`output::handover` stops the readers
//! at a line boundary); and the instance's lock and control socket. Waiters, readers and
//! the other threads are started anew by the new image.

use super::machine;
use crate::common::decode::{self, field, Decode};
use crate::control::instance::InstanceFds;
use crate::output::handover::{CarriedBatch, CarriedReader};
use serde::Serialize;
use serde_json::Value;
use std::os::fd::RawFd;
use std::path::PathBuf;

mod new_binary;
pub mod new_image;
mod old_image;

pub use old_image::{answer_on, took_over, SelfChecked};

/// The variable that tells a new image where the state is.
pub const RESUME_ENV: &str = "ORCHESTRATOR_RESUME_FD";
/// The format of `Carried`. A binary prints the one it reads with `--resume-format`;
/// one that does not (too old to take over) or reads another is refused.
pub const FORMAT: u32 = 1;

/// Everything the new image takes over.
#[derive(Serialize)]
pub struct Carried {
    pub format: u32,
    pub from_version: String,
    pub gen: u64,
    pub unreaped: Vec<i32>,
    pub stops: Vec<String>,
    pub services: Vec<CarriedService>,
    pub readers: Vec<CarriedReader>,
    pub instance: InstanceFds,
    /// The sd_notify socket, if open: what services send during the exec waits in it.
    pub notify: Option<RawFd>,
    /// A duplicate of the `upgrade-self` client's connection: the new image answers it
    /// once it has taken over, so the client's exit says whether it did.
    pub reply: Option<RawFd>,
}

#[derive(Serialize)]
pub struct CarriedService {
    pub name: String,
    pub machine: machine::carry::Carried,
    pub ring: Vec<CarriedBatch>,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    pub file_unwritten: u64,
    pub cgroup_dirs: Vec<PathBuf>,
    pub output_pid: i32,
    pub group: Option<(i32, u64)>,
    pub sockets: Option<Vec<RawFd>>,
    pub upgrade: Option<serde_json::Value>,
}

impl Decode for Carried {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(Carried {
            format: field(v, "format")?,
            from_version: field(v, "from_version")?,
            gen: field(v, "gen")?,
            unreaped: field(v, "unreaped")?,
            stops: field(v, "stops")?,
            services: field(v, "services")?,
            readers: field(v, "readers")?,
            instance: field(v, "instance")?,
            notify: field(v, "notify")?,
            reply: field(v, "reply")?,
        })
    }
}

impl Decode for CarriedService {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(CarriedService {
            name: field(v, "name")?,
            machine: field(v, "machine")?,
            ring: field(v, "ring")?,
            stdout_lines: field(v, "stdout_lines")?,
            stderr_lines: field(v, "stderr_lines")?,
            file_unwritten: field(v, "file_unwritten")?,
            cgroup_dirs: field(v, "cgroup_dirs")?,
            output_pid: field(v, "output_pid")?,
            group: field(v, "group")?,
            sockets: field(v, "sockets")?,
            upgrade: field(v, "upgrade")?,
        })
    }
}
