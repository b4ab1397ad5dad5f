//! The file work of `upgrade`, `rollback` and the watcher's upgrades
//! (docs/sockets-and-upgrades.md, docs/watching.md), on a thread of its own: hashing
//! and copying a binary takes as long as the binary is large, and the loop never waits
//! on anything but its channel. One kind of thread for all of them; the result comes
//! back to the loop as `Installed` (`steps.rs` goes on from there).
//!
//! Nothing here decides anything about a service or touches the loop's state: it
//! checks, hashes, records the marker in `state_dir` and renames, in that order, so
//! that a crash at any point leaves a state the next start can settle.

use super::steps::pending_file;
use super::window::Pending;
use crate::control::socket::Reply;
use crate::output::timefmt;
use crate::process::install::{self, Ident};
use crate::supervise::supervisor::Supervisor;
use crossbeam_channel::Sender;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the upgrade thread does: install a file (`upgrade`), put the previous binary
/// back (`rollback`), or take the file the watcher saw in place.
pub(in crate::supervise) enum Work {
    Install(PathBuf, std::fs::File),
    PutBack,
    Watched { in_place: bool },
}

/// The file work's result, back on the loop.
pub struct Installed {
    pub(in crate::supervise) service: String,
    pub(in crate::supervise) rollback: bool,
    /// The watcher saw the new binary in place (docs/watching.md): it has no client,
    /// and a stopped service is not started by it.
    pub(in crate::supervise) watched: bool,
    pub(in crate::supervise) result: Result<Done, String>,
    pub(in crate::supervise) reply: Sender<Reply>,
}

impl Done {
    /// A binary replaced by another, with a previous version to go back to.
    fn replaced(from: String, to: String, installed: Option<Ident>) -> Done {
        Done {
            from,
            to,
            unchanged: false,
            installed,
            no_prev: false,
        }
    }
}

pub(in crate::supervise) struct Done {
    pub(in crate::supervise) from: String,
    pub(in crate::supervise) to: String,
    /// The new binary is the one installed already: nothing was done.
    pub(in crate::supervise) unchanged: bool,
    /// The file now at the binary's path, as installed.
    pub(in crate::supervise) installed: Option<install::Ident>,
    /// Rewritten in place: no previous binary.
    pub(in crate::supervise) no_prev: bool,
}

/// The file work's buffers are on the heap (`sha256`, `install`): a small stack will do.
const UPGRADE_STACK: usize = 64 * 1024;

pub(in crate::supervise) fn now_ms() -> u64 {
    timefmt::unix_ms(SystemTime::now())
}

pub(in crate::supervise) fn sha(path: &Path) -> Result<String, String> {
    crate::control::sha256::file_hex(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl Supervisor {
    /// Starts the file work of an upgrade or a rollback on a thread of its own (one
    /// kind of thread for all of them); the result comes back as `Installed`.
    pub(in crate::supervise) fn start_file_work(
        &mut self,
        name: &str,
        binary: PathBuf,
        work: Work,
        reply: Sender<Reply>,
    ) -> Result<(), String> {
        let dir = self.persist.as_ref().map(|p| p.dir());
        let tx = self.tx.clone();
        let service = name.to_string();
        let rollback = matches!(work, Work::PutBack);
        let watched = matches!(work, Work::Watched { .. });
        let job = move || {
            let dir = dir.as_deref();
            let result = match work {
                Work::Install(p, mut file) => install_new(&service, &binary, &p, &mut file, dir),
                Work::PutBack => put_back(&binary),
                Work::Watched { in_place } => watched_install(&service, &binary, in_place, dir),
            };
            let done = Installed {
                service,
                rollback,
                watched,
                result,
                reply,
            };
            let _ = tx.send(crate::supervise::event::Event::Above(
                crate::supervise::event::Above::Installed(done),
            ));
        };
        std::thread::Builder::new()
            .name("upgrade".into())
            .stack_size(UPGRADE_STACK)
            .spawn(job)
            .map_err(|e| format!("cannot create a thread: {e}"))?;
        if let Some(e) = self.services.get_mut(name) {
            e.upgrade.set_busy();
        }
        Ok(())
    }
}

/// The thread's part of an upgrade: both hashes, the marker in `state_dir`, then the
/// binary in place. `file` is `new` as opened and checked: what is hashed and copied.
fn install_new(
    service: &str,
    binary: &Path,
    new: &Path,
    file: &mut std::fs::File,
    dir: Option<&crate::supervise::persist::StateDir>,
) -> Result<Done, String> {
    let from = sha(binary).map_err(|e| format!("service binary {e}"))?;
    let to = crate::control::sha256::open_file_hex(file)
        .map_err(|e| format!("{}: {e}", new.display()))?;
    if from == to {
        return Ok(Done {
            from,
            to,
            unchanged: true,
            installed: None,
            no_prev: false,
        });
    }
    write_pending(service, binary, &from, &to, dir)?;
    install::install(binary, new, file).inspect_err(|_| {
        if let Some(d) = dir {
            let _ = d.remove_file(&pending_file(service));
        }
    })?;
    Ok(Done::replaced(from, to, install::Ident::at(binary)))
}

/// The marker of an upgrade under way, written to `state_dir` (if there is one) before
/// the binary is replaced.
pub(in crate::supervise) fn write_pending(
    service: &str,
    binary: &Path,
    from: &str,
    to: &str,
    dir: Option<&crate::supervise::persist::StateDir>,
) -> Result<(), String> {
    let Some(d) = dir else { return Ok(()) };
    let p = Pending {
        binary: binary.display().to_string(),
        from: from.to_string(),
        to: to.to_string(),
        at_ms: now_ms(),
    };
    d.write_file(&pending_file(service), &p.to_text())
        .map_err(|e| format!("state_dir: cannot record the upgrade: {e}"))
}

/// The thread's part of a rollback by hand.
fn put_back(binary: &Path) -> Result<Done, String> {
    let from = sha(binary).unwrap_or_default();
    let to = sha(&install::prev_path(binary))?;
    install::restore_prev(binary)?;
    Ok(Done::replaced(from, to, install::Ident::at(binary)))
}

/// The thread's part: the new file checked as `upgrade` checks one (as root, planted by
/// another user is refused), both hashed, the marker in `state_dir`, the link that held
/// the old bytes kept as `NAME.prev`, the link made to the new file.
pub(in crate::supervise) fn watched_install(
    service: &str,
    bin: &Path,
    in_place: bool,
    dir: Option<&crate::supervise::persist::StateDir>,
) -> Result<Done, String> {
    let mut file = install::open_checked(bin)?;
    let installed = file.metadata().ok().map(|m| Ident::of(&m));
    let to = crate::control::sha256::open_file_hex(&mut file)
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let running = install::running_path(bin);
    // No link kept (a file system without hard links, a directory switched by a
    // symlink): nothing to go back to, as for a file rewritten in place.
    let in_place = in_place || std::fs::symlink_metadata(&running).is_err();
    let from = if in_place {
        String::new()
    } else {
        sha(&running)?
    };
    if !in_place && from == to {
        install::link_running(bin).map_err(|e| format!("{}: {e}", running.display()))?;
        return Ok(Done {
            from,
            to,
            unchanged: true,
            installed,
            no_prev: false,
        });
    }
    // Rewritten in place, there is nothing a next start could put back: no marker
    // (an older `NAME.prev` is no previous version of this file).
    if !in_place {
        write_pending(service, bin, &from, &to, dir)?;
        install::running_becomes_prev(bin)?;
    }
    install::link_running(bin).map_err(|e| format!("{}: {e}", running.display()))?;
    Ok(Done {
        from,
        to,
        unchanged: false,
        installed,
        no_prev: in_place,
    })
}
