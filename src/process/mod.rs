//! Processes: the one audited spawn path, waiting, signals, cgroups, /proc readings.
pub mod cgroup;
pub mod procfs;
pub mod signals;
pub mod spawn;
#[cfg(test)]
mod spawn_tests;
pub mod waiter;
