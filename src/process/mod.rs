//! Processes: the one audited spawn path, waiting, signals, cgroups, /proc readings and
//! hardening. (The file-system rules they follow are `common::safe_fs`.)
pub mod cgroup;
pub mod hardening;
pub mod helper;
pub mod inherit;
pub mod install;
pub mod pidfile;
pub mod procfs;
pub mod signals;
pub mod sockets;
pub mod spawn;
#[cfg(test)]
mod spawn_tests;
pub mod waiter;
pub mod wake;
