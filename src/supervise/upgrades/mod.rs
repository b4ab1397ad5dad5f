//! `upgrade` and `rollback` of a service's binary (docs/sockets-and-upgrades.md), and
//! the upgrades the watched `services_dir` makes of a binary renamed over the one a
//! service runs (docs/watching.md):
//!
//! - `window.rs`: the grace window as a pure judge, and the version history;
//! - `steps.rs`: the loop's side, from the checks to the restart onto the new binary
//!   and the rollback when it fails;
//! - `files.rs`: the file work (hashing, copying, renaming) on a thread of its own.
//!
//! `upgrade-self`, which replaces the orchestrator's own binary, is another matter, in
//! `upgrade_self/`.

pub mod files;
pub mod steps;
pub mod window;
