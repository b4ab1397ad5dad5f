//! Supervision: the pure per-service machine and the loop that drives it.
//!
//! `machine.rs` decides (pure, table-tested); `supervisor.rs` is the loop that feeds
//! it events and carries out its actions, with one file per job around it.
pub mod backoff;
pub mod event;
mod execute;
mod held;
pub mod hw_watchdog;
mod janitor;
mod launch;
pub mod machine;
mod notifying;
mod order;
pub mod persist;
mod probes;
mod reaper;
pub mod reload;
mod requests;
mod shutdown;
mod snapshot;
pub mod state;
pub mod supervisor;
pub mod upgrade_self;
pub mod upgrades;
mod views;
pub mod watcher;
mod watching;
mod work;
